"""Name -> backend class, per kind. ``create_backend("vqa", "pixel-colors")`` builds one from its spec."""

from __future__ import annotations

import functools
import importlib

from ..errors import SameIdError
from .base import Backend

# kind -> name -> "module:Class"; modules are imported only when a backend is asked for, so a missing optional
# package (mediapipe, onnxruntime, transformers) only matters to the user who picked that backend.
_REGISTRY: dict[str, dict[str, str]] = {
    "head_detector": {
        "dlib": "sameid.backends.face_dlib:DlibHeadDetector",
        "mediapipe": "sameid.backends.mediapipe:MediaPipeHeadDetector",
        "mask-top": "sameid.backends.figure:MaskTopHeadDetector",
        "transformers": "sameid.backends.detection:TransformersHeadDetector",
    },
    "segmenter": {
        "mediapipe-selfie": "sameid.backends.mediapipe:MediaPipeSelfieSegmenter",
        "border-colors": "sameid.backends.figure:BorderColorSegmenter",
        "grabcut": "sameid.backends.figure:GrabCutSegmenter",
    },
    "face_embedder": {
        "dlib": "sameid.backends.face_dlib:DlibFaceEmbedder",
        "arcface-onnx": "sameid.backends.arcface_onnx:ArcFaceOnnxEmbedder",
    },
    "vqa": {
        "pixel-colors": "sameid.backends.pixel_vqa:PixelColorVQA",
        "offline": "sameid.backends.offline_vqa:OfflineVQA",
        "transformers": "sameid.backends.vqa:TransformersVQA",
    },
    "image_embedder": {
        "clip": "sameid.backends.clip:CLIPEmbedder",
        "dino": "sameid.backends.dino:DinoEmbedder",
        "efficientnet-lite0": "sameid.backends.efficientnet:EfficientNetLiteEmbedder",
        "personalized": "sameid.backends.backbone:PersonalizedEmbedder",
    },
    "judge": {
        "openai": "sameid.backends.judge_openai:OpenAIJudge",
        "transformers": "sameid.backends.judge_transformers:TransformersJudge",
        "consensus": "sameid.backends.judge_consensus:ConsensusJudge",
    },
    "text_embedder": {
        "clip": "sameid.backends.clip:CLIPEmbedder",
        "minilm": "sameid.backends.text:MiniLMTextEmbedder",
    },
}


def register_backend(kind: str, name: str, target: str) -> None:
    """Add a backend: ``target`` is ``"package.module:Class"``; the class takes the spec's argument, if any."""
    _REGISTRY.setdefault(kind, {})[name] = target


def available_backends(kind: str) -> list[str]:
    return sorted(_REGISTRY.get(kind, {}))


def backend_class(kind: str, spec: str) -> type:
    """The class a spec names, imported but not built (to ask what it can do before loading a model)."""
    name = spec.partition(":")[0]
    names = _REGISTRY.get(kind, {})
    if name not in names:
        raise SameIdError(f"unknown {kind} backend {name!r}; choose one of: {', '.join(sorted(names))}")
    module_name, _, class_name = names[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


@functools.cache
def create_backend(kind: str, spec: str) -> Backend:
    """Build (once per process) the backend named by ``spec`` = ``name`` or ``name:argument``."""
    name, _, argument = spec.partition(":")
    names = _REGISTRY.get(kind)
    if names is None:
        raise SameIdError(f"unknown backend kind {kind!r}; kinds: {', '.join(sorted(_REGISTRY))}")
    if name not in names:
        raise SameIdError(f"unknown {kind} backend {name!r}; choose one of: {', '.join(sorted(names))}")
    module_name, _, class_name = names[name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend = cls(argument) if argument else cls()
    backend.spec = spec
    return backend
