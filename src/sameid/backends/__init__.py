"""Model backends, one small interface per kind (scikit-learn style), chosen by a spec string.

Kinds and their verbs (see :mod:`sameid.backends.base`):

- ``head_detector``: ``detect(image) -> list[Detection]``
- ``segmenter``: ``segment(image) -> bool mask``
- ``face_embedder``: ``embed(image, box=None) -> vector | None``
- ``vqa``: ``answer(image, question, annotations) -> str``
- ``image_embedder``: ``embed_images(images) -> (N, D) unit rows``; ``text_embedder``: ``embed_texts(texts)``

A spec is ``name`` or ``name:argument`` (``transformers:Salesforce/blip-vqa-base``, ``arcface-onnx:/models/w600k_r50.onnx``).
"""

from .base import (
    Annotations,
    Detection,
    FaceEmbedder,
    HeadDetector,
    ImageEmbedder,
    Segmenter,
    TextEmbedder,
    VQABackend,
)
from .registry import available_backends, create_backend, register_backend

__all__ = [
    "Annotations", "Detection", "FaceEmbedder", "HeadDetector", "ImageEmbedder", "Segmenter", "TextEmbedder",
    "VQABackend",
    "available_backends", "create_backend", "register_backend",
]
