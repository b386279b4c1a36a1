"""One name per reference-conditioned denoiser, so training, generation and benchmarks choose a variant by config.

``retrinet`` (RetriBooru, arXiv 2312.02521, §5), ``controlnet`` and ``ip-adapter`` (the baselines of
RetriBooru, arXiv 2312.02521, A.3), ``multi-subject`` (a separate cross-attention per subject; PairHuman, arXiv
2511.16712) and ``multi-subject-shared`` (the same class with one cross-attention shared by all subjects: the
paper's ablation). Every saved denoiser folder is a diffusers model folder whose config
(``denoiser.json``) names its class, which is how :func:`load_denoiser` knows what to build.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MissingModelError, SameIdError
from .conditioning import DENOISER_CONFIG, ReferenceConditionedDenoiser

KINDS = ("retrinet", "controlnet", "ip-adapter", "multi-subject", "multi-subject-shared")
# Kinds that are one class with a switch: kind -> (class kind, config field, value).
_VARIANTS = {"multi-subject-shared": ("multi-subject", "shared_attention", True)}


def _classes() -> dict[str, type]:
    from .controlnet_denoiser import ControlNetDenoiser
    from .ip_adapter_denoiser import IPAdapterDenoiser
    from .multi_subject_denoiser import MultiSubjectDenoiser
    from .retrinet import RetriNetDenoiser

    return {"retrinet": RetriNetDenoiser, "controlnet": ControlNetDenoiser, "ip-adapter": IPAdapterDenoiser,
            "multi-subject": MultiSubjectDenoiser, "multi-subject-shared": MultiSubjectDenoiser}


def tiny_image_encoder(seed: int = 0, image_size: int = 32):
    """A random tiny ``CLIPVisionModelWithProjection`` (the IP-Adapter baseline's encoder in tiny runs)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=image_size, patch_size=8, projection_dim=32)
    return CLIPVisionModelWithProjection(config).eval()


def create_denoiser(kind: str, unet, *, image_encoder=None, tiny: bool = False,
                    vae_scale_factor: int | None = None,
                    face_embedder: str | None = None) -> ReferenceConditionedDenoiser:
    """A fresh, untrained denoiser of ``kind`` around ``unet``.

    ``image_encoder`` (ip-adapter): a ``CLIPVisionModelWithProjection``, or its hub id or folder; with
    ``tiny`` and no encoder, a random tiny one. (multi-subject kinds): the same, or "efficientnet-lite0"
    (offline; the default with ``tiny``); ``face_embedder`` (multi-subject kinds): the local feature's backend
    spec, "" for none, None for the model's default (dlib). ``vae_scale_factor`` (controlnet only): the base VAE's
    (``DiffusionComponents.vae_scale_factor``); default the tiny base's with ``tiny``, else Stable Diffusion's 8.
    """
    from .components import SD_VAE_SCALE_FACTOR, TINY_VAE_SCALE_FACTOR

    classes = _classes()
    if kind not in classes:
        raise SameIdError(f"unknown model {kind!r}; choose one of: {', '.join(KINDS)}")
    if kind == "ip-adapter":
        if image_encoder is None:
            if not tiny:
                raise MissingModelError("model ip-adapter needs an image encoder: a CLIPVisionModelWithProjection id "
                                        "or folder, e.g. openai/clip-vit-large-patch14 (the paper's)")
            image_encoder = tiny_image_encoder()
        return classes[kind].from_unet(unet, image_encoder=image_encoder)
    if kind in ("multi-subject", "multi-subject-shared"):
        if image_encoder is None and not tiny:
            raise MissingModelError(f"model {kind} needs a global image encoder: a CLIPVisionModelWithProjection "
                                    "id or folder (e.g. openai/clip-vit-large-patch14, the paper's), or "
                                    "efficientnet-lite0 (offline)")
        options = {} if face_embedder is None else {"face_embedder": face_embedder}
        return classes[kind].from_unet(unet, image_encoder=image_encoder or "efficientnet-lite0",
                                       shared_attention=kind == "multi-subject-shared", **options)
    if kind == "controlnet":
        factor = vae_scale_factor or (TINY_VAE_SCALE_FACTOR if tiny else SD_VAE_SCALE_FACTOR)
        return classes[kind].from_unet(unet, vae_scale_factor=factor)
    return classes[kind].from_unet(unet)


def works_on_sdxl(kind: str) -> bool:
    """Whether a denoiser of ``kind`` passes an SDXL U-Net its ``added_cond_kwargs`` (so it trains and generates
    on an SDXL base); False for an unknown kind."""
    cls = _classes().get(kind)
    return bool(cls is not None and cls.accepts_added_conditions)


def sdxl_kinds() -> list[str]:
    """The kinds that work on an SDXL base (:func:`works_on_sdxl`)."""
    return [kind for kind in KINDS if works_on_sdxl(kind)]


def denoiser_kind(directory: str | Path) -> str:
    """The kind of the denoiser saved in ``directory`` (from the class its ``denoiser.json`` names)."""
    path = Path(directory) / DENOISER_CONFIG
    if not path.is_file():
        raise MissingModelError(f"{path} not found: {directory} is not a denoiser written by save_pretrained "
                                "(a training run's model/ folder)")
    config = json.loads(path.read_text())
    class_name = config.get("_class_name")
    kinds = {cls.__name__: kind for kind, cls in _classes().items() if kind not in _VARIANTS}
    if class_name not in kinds:
        raise SameIdError(f"{path} names class {class_name!r}; known: {', '.join(kinds)}")
    for variant, (base, field, value) in _VARIANTS.items():
        if kinds[class_name] == base and config.get(field) == value:
            return variant
    return kinds[class_name]


def load_denoiser(directory: str | Path, *, torch_dtype=None) -> ReferenceConditionedDenoiser:
    """The denoiser saved in ``directory`` (``save_pretrained``), with its own U-Net; ``torch_dtype`` casts it."""
    cls = _classes()[denoiser_kind(directory)]
    return cls.from_pretrained(directory, **({"torch_dtype": torch_dtype} if torch_dtype is not None else {}))
