"""CLIP image and text embeddings (transformers ``CLIPModel``), for CLIP-I and CLIP-T.

CLIP-I (cosine of generated vs reference image embeddings) and CLIP-T (cosine of generated image vs prompt) are
the scores of RetriBooru's protocol (RetriBooru, arXiv 2312.02521, section 3.1) and of PairHuman
(PairHuman, arXiv 2511.16712). Default model ``openai/clip-vit-large-patch14``; any CLIP checkpoint id or folder
works (spec ``clip:<id or path>``). Nothing is downloaded unless ``SAMEID_ALLOW_DOWNLOAD=1``
(:mod:`sameid.backends.pretrained`). Image and text vectors are the projected embeddings, L2-normalised, so a dot
product is the cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import MissingModelError
from .base import ImageEmbedder, TextEmbedder, l2_normalise
from .pretrained import BatchedImageForward, PixelPreparer, load_pretrained, torch_device

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
_WHAT = "CLIP model"


def _transformers() -> Any:
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as error:
        raise MissingModelError(f"CLIP needs torch and transformers: `pip install sameid[ml]` ({error})") from error
    return transformers


def _features(output: Any) -> Any:
    # transformers 5 returns an output object whose pooler_output is the projected embedding; 4.x a tensor.
    return getattr(output, "pooler_output", output)


class CLIPEmbedder(BatchedImageForward, ImageEmbedder, TextEmbedder):
    """Both towers of one CLIP model: ``embed_images`` and ``embed_texts`` share an embedding space."""

    kind = "image_embedder"

    def __init__(self, source: str = DEFAULT_CLIP, device: str | None = None, batch_size: int = 32):
        transformers = _transformers()
        self.source = source or DEFAULT_CLIP
        self.identity = f"clip:{self.source}"
        self.device = torch_device(device)
        self.batch_size = int(batch_size)
        self.model = load_pretrained(transformers.CLIPModel, self.source, what=_WHAT).to(self.device).eval()
        self.image_processor = load_pretrained(transformers.CLIPImageProcessor, self.source, what=f"{_WHAT} image processor")
        self.tokenizer = load_pretrained(transformers.AutoTokenizer, self.source, what=f"{_WHAT} tokenizer")
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        # picklable: an evaluation's decode worker process prepares pixels while this process runs the model
        self.pixel_preparer = PixelPreparer(self.image_processor)
        self.embedding_dim = int(self.model.config.projection_dim)

    def _image_forward(self, pixels):
        return _features(self.model.get_image_features(pixel_values=pixels))


    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            # CLIP's text tower sees at most 77 tokens; longer prompts are truncated, as in torchmetrics' CLIPScore.
            tokens = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                features = self.model.get_text_features(input_ids=tokens["input_ids"],
                                                        attention_mask=tokens["attention_mask"])
            out.append(_features(features).float().cpu().numpy())
        return l2_normalise(np.concatenate(out)) if out else np.zeros((0, self.model.config.projection_dim), np.float32)
