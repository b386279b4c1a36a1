"""The interface of each kind of backend. Every backend of a kind can replace another by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Detection:
    """A box (x0, y0, x1, y1) in pixels of the image it was found in, with the detector's confidence."""

    box: tuple[float, float, float, float]
    score: float = 1.0


@dataclass
class Annotations:
    """What is already known about an image when a VQA backend is asked about it."""

    head_box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None  # bool (H, W), True on the figure


class Backend(ABC):  # noqa: B024 - the abstract verbs live on each kind below
    """Common part: a ``spec`` that recreates the backend (so worker processes build their own copy)."""

    kind: str = ""
    spec: str = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r})"


class HeadDetector(Backend):
    kind = "head_detector"

    @abstractmethod
    def detect(self, image: Image.Image) -> list[Detection]:
        """Head (or face) boxes, best first. An empty list when nothing is found: never an exception."""


class Segmenter(Backend):
    kind = "segmenter"

    @abstractmethod
    def segment(self, image: Image.Image) -> np.ndarray:
        """A bool (H, W) mask, True on the figure (person or character)."""


class FaceEmbedder(Backend):
    kind = "face_embedder"
    dim: int = 0

    @abstractmethod
    def embed(self, image: Image.Image, box: tuple[float, float, float, float] | None = None) -> np.ndarray | None:
        """An L2-normalised identity embedding of the most prominent face (inside ``box`` if given), or None."""


class VQABackend(Backend):
    kind = "vqa"

    @abstractmethod
    def answer(self, image: Image.Image, question: str, annotations: Annotations | None = None) -> str:
        """A short free-text answer, as the model gives it (normalisation is the caller's job)."""


def grow_box(box: tuple[float, float, float, float], width: int, height: int, *, top: float, sides: float,
             bottom: float) -> tuple[float, float, float, float]:
    """Grow a box by fractions of its own height (``top``, ``bottom``) and width (``sides``), clipped to the image.

    Face detectors return the face; RetriBooru's head box also covers hair, so each detector grows its face box by
    factors fitted to how tight its boxes are.
    """
    x0, y0, x1, y1 = box
    box_w, box_h = x1 - x0, y1 - y0
    return (
        float(max(0.0, x0 - sides * box_w)),
        float(max(0.0, y0 - top * box_h)),
        float(min(float(width), x1 + sides * box_w)),
        float(min(float(height), y1 + bottom * box_h)),
    )


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class ImageEmbedder(Backend):
    """Images in, L2-normalised float32 rows out. ``identity`` names the weights, for caches: two embedders with
    the same identity give the same vectors."""

    kind = "image_embedder"
    identity: str = ""

    @abstractmethod
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, D) float32, each row L2-normalised."""


class TextEmbedder(Backend):
    """Texts in, L2-normalised float32 rows out (``identity`` as for :class:`ImageEmbedder`)."""

    kind = "text_embedder"
    identity: str = ""

    @abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32, each row L2-normalised."""
