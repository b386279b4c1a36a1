"""The VQA score: how differently a VQA model describes a generation and its reference, a diversity measurement.

RetriBooru, arXiv 2312.02521, appendix A.2 (and RetriBooru, arXiv 2312.02521, section 4,
"Measuring implicit diversity"): ask a VQA model (InstructBLIP Vicuna-7B in the paper) descriptive questions about
each generated image and each reference (facial expression, hairstyle, gesture, clothing), embed the answers with a
text encoder (CLIP's in the paper) and compare the generation's answers with the reference's by cosine.

Decisions where the papers leave room:

- The value is the cosine *distance* ``1 - cos(embed(answer_g), embed(answer_r))``, averaged over the questions and
  the generation's references: appendix A.2 says "pairwise cosine distance", and the score enters SWD as ``div``
  (SWD(VQA, CLIP-I)), where larger must mean more diverse. (Section 4 of the ICLR text says "cosine similarity";
  a user who wants that reads ``1 - vqa``.)
- Answers run to the VQA model's ``max_new_tokens`` (128 by default for ``transformers:<id>``, enough for the
  40-80-word answers of Table 4; ``transformers:<id>?max_new_tokens=N`` sets it), and the answer cache is keyed by
  it (:func:`answer_cache_key`).
- Figure 8's questions are not in the paper's text; :data:`DEFAULT_QUESTIONS` paraphrase the two the paper uses
  from the example answers of its Table 4 (expression and hairstyle; pose, gesture and clothing). Pass your own.

Each distinct (image content, question) is asked once per run, and answers are kept in a JSON cache per VQA model
beside the embedding cache, so a re-run asks nothing; answers are embedded through an
:class:`~sameid.evaluate.embeddings.EmbeddingStore` (each distinct answer once).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import write_text_atomic
from ..backends.base import VQABackend
from ..errors import SameIdError
from ..images import load_image
from .embeddings import EmbeddingStore, file_digest, file_lock
from .metrics import ReferenceMetric

DEFAULT_QUESTIONS = (
    "Describe the facial expression and the hairstyle of the character in the image.",
    "Describe the pose, the gesture and the clothing of the character in the image.",
)
logger = logging.getLogger(__name__)


def answer_cache_key(vqa: VQABackend) -> str:
    """What names a VQA model's answers in the cache: its spec, and its answer length where it has one (answers
    cut at 10 tokens are not the answers of the same model at 128, RetriBooru Table 4's length)."""
    key = f"vqa:{vqa.spec or type(vqa).__name__}"
    length = getattr(vqa, "max_new_tokens", None)
    if length is not None and "max_new_tokens=" not in key:
        key += f"?max_new_tokens={int(length)}"
    return key


class AnswerStore:
    """Answers of one VQA model by (question, image content hash); ``folder`` keeps them in a JSON file.

    New answers are written every ``flush_every`` answers and at the end of each :meth:`get` (a killed run keeps
    what it asked), merged under a ``flock`` with what other runs sharing the folder wrote meanwhile, through a
    unique temporary file. An unreadable answers file is reported in one warning line and replaced.
    """

    def __init__(self, vqa: VQABackend, *, model: str | None = None, folder: str | os.PathLike | None = None,
                 flush_every: int = 32, progress: bool = False):
        self.vqa = vqa
        self.model = model or answer_cache_key(vqa)
        self.path = None
        if folder is not None:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model)[-60:]
            self.path = Path(folder) / f"{slug}-{hashlib.sha256(self.model.encode()).hexdigest()[:12]}.answers.json"
        self.flush_every = max(1, int(flush_every))
        self.progress = progress
        self.answers: dict[str, str] = {}
        self._new: dict[str, str] = {}
        if self.path is not None and self.path.is_file():
            with file_lock(self.path.with_suffix(".lock"), exclusive=False):
                self.answers = self._read()
        self._digests: dict[str, str] = {}
        self.questions_asked = 0

    def _read(self) -> dict[str, str]:
        try:
            answers = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(answers, dict):
                raise ValueError(f"a JSON {type(answers).__name__}, not an object")
            return {str(k): str(v) for k, v in answers.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            logger.warning("VQA answer cache %s is unreadable (%s); ignoring it, it will be replaced",
                           self.path, reason)
            return {}

    def flush(self) -> None:
        """Write the answers asked since the last flush, merged with the file's current content."""
        if self.path is None or not self._new:
            return
        with file_lock(self.path.with_suffix(".lock"), exclusive=True):
            merged = {**self._read(), **self._new}
            write_text_atomic(self.path, json.dumps(merged, ensure_ascii=False))
        self.answers.update(merged)
        self._new = {}

    def get(self, images: Sequence[str], question: str) -> list[str]:
        from tqdm.auto import tqdm

        keys = []
        try:
            for image in tqdm(images, desc=f"ask {self.model[-40:]}", unit="image", leave=False,
                              disable=not self.progress or not images):
                if image not in self._digests:
                    self._digests[image] = file_digest(image)
                digest = self._digests[image]
                key = f"{question}\0{digest}"
                if key not in self.answers:
                    self.answers[key] = self._new[key] = self.vqa.answer(load_image(image)[0], question)
                    self.questions_asked += 1
                    if len(self._new) >= self.flush_every:
                        self.flush()
                keys.append(key)
        finally:
            self.flush()
        return [self.answers[key] for key in keys]


class VQAScore(ReferenceMetric):
    """Per generation: mean over questions and references of the cosine distance of the answers' embeddings."""

    def __init__(self, answers: AnswerStore, texts: EmbeddingStore, questions: Sequence[str] = DEFAULT_QUESTIONS,
                 name: str = "vqa"):
        if not questions:
            raise ValueError("the VQA score needs at least one question")
        self.answers, self.texts, self.questions, self.name = answers, texts, tuple(questions), name
        self.reset()


    def compute(self) -> np.ndarray:
        distances = np.zeros(len(self._images))
        counts = np.zeros(len(self._images))
        references = sorted({path for refs in self._references for path in refs})
        for question in self.questions:
            generated = self.texts.get(self.answers.get(self._images, question)) if self._images else None
            if generated is None:
                break
            reference_vectors = dict(zip(references, self.texts.get(self.answers.get(references, question)),
                                         strict=True)) if references else {}
            for i, refs in enumerate(self._references):
                for path in refs:
                    distances[i] += 1.0 - float(generated[i] @ reference_vectors[path])
                    counts[i] += 1
        with np.errstate(invalid="ignore"):
            return np.where(counts > 0, distances / np.maximum(counts, 1), np.nan)


def check_vqa_config(config) -> None:
    if not config.vqa:
        raise SameIdError("the vqa metric needs a VQA model: --vqa offline (bundled, no download) or "
                          "--vqa transformers:<id or path> (the paper uses an InstructBLIP model)")


def vqa_metric(context) -> VQAScore:
    """The registry's factory (:mod:`sameid.evaluate.registry`): the config's VQA model; its answers embedded by
    the config's ``vqa_text`` ("clip": the CLIP of ``clip``, as the paper, sharing its model and text store)."""
    config = context.config
    check_vqa_config(config)
    text = (context.backend("image_embedder", config.clip) if config.vqa_text == "clip"
            else context.backend("text_embedder", config.vqa_text))
    answers = AnswerStore(context.backend("vqa", config.vqa), folder=config.cache_dir, progress=context.progress)
    return VQAScore(answers, context.text_store(text), config.vqa_questions)
