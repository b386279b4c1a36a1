"""Image backbones that can be fine-tuned with LoRA (peft) and saved as an adapter on a base loaded by id or path.

Personalized representations (Personalized Representation from Personalized Generation, arXiv 2412.16156, method)
adapt a general-purpose backbone to one instance with LoRA and a contrastive loss. A :class:`Backbone` names its
base by a spec, as the image embedders do:

- ``efficientnet-lite0`` (or ``efficientnet-lite0:<weights.pth>``): the offline ImageNet EfficientNet-Lite0 whose
  weights ship in pip (:mod:`sameid.backends.efficientnet`); the embedding is the global average of the last
  feature map (1280 values), as :class:`~sameid.backends.efficientnet.EfficientNetLiteEmbedder`'s.
- ``dino:<id or path>``: any ViT that ``AutoModel`` loads (DINOv2 by default); the embedding is the class token.
- ``clip:<id or path>``: the vision tower of a CLIP model (``CLIPVisionModelWithProjection``); the embedding is the
  projected image embedding.

Each backbone is split into a **trunk** that LoRA leaves frozen and a **head** that carries the LoRA layers. For
EfficientNet-Lite0 the LoRA layers sit on the pointwise (1 x 1) convolutions of the last two stages (blocks 11-15,
the 7 x 7 stages: ``_expand_conv`` and ``_project_conv``) and on ``_conv_head``; the depthwise convolutions, the
batch norms (kept at their ImageNet statistics: the model stays in eval mode) and the earlier blocks stay frozen.
peft targets Linear and Conv2d layers; EfficientNet-PyTorch's ``Conv2dStaticSamePadding`` cannot be rebuilt by
peft (its constructor needs an image size), so those 1 x 1 convolutions, which pad nothing, are first replaced by
plain ``nn.Conv2d`` layers sharing the same weights (outputs unchanged). Because the trunk is frozen, its output
is a pure function of the image: fine-tuning and evaluation compute it once per image (:meth:`Backbone.trunk`) and
run only the head per step. For the ViTs the trunk is the identity and LoRA sits on the attention's query and
value projections (the usual LoRA recipe for ViTs).

A saved adapter is a peft folder (``adapter_config.json``, ``adapter_model.safetensors``) whose
``base_model_name_or_path`` is the backbone spec, plus ``backbone.json``; :func:`load_personalized` rebuilds the
base from the spec and loads the adapter with ``peft.PeftModel.from_pretrained``. :class:`PersonalizedEmbedder`
is the image embedder ``personalized:<adapter dir>``, usable wherever an image embedder is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import MissingModelError, SameIdError
from .base import ImageEmbedder, l2_normalise

BACKBONE_FILE = "backbone.json"
BACKBONE_KINDS = ("efficientnet-lite0", "dino", "clip")
#: EfficientNet-Lite0 blocks from here on carry LoRA (the two 7 x 7 stages: 11-14 at 192 channels, 15 at 320).
EFFICIENTNET_FIRST_TUNED_BLOCK = 11
EFFICIENTNET_LORA_TARGETS = r".*(_blocks\.(1[1-5])\.(_expand_conv|_project_conv)|_conv_head)$"


def _torch():
    try:
        import torch
    except ImportError as error:  # pragma: no cover - torch is a core dependency of the ml extra
        raise MissingModelError(f"backbones need torch: `pip install sameid[ml]` ({error})") from error
    return torch


class Backbone:
    """A base image model by spec, with a frozen :meth:`trunk` and a LoRA-carrying :meth:`head`.

    ``module`` is the ``nn.Module`` peft wraps; ``pixel_preparer`` turns PIL images into the model's input array;
    ``lora_targets`` is peft's ``target_modules`` for this model; ``dim`` is the embedding size.
    """

    spec: str
    module: Any
    pixel_preparer: Callable[[Sequence[Image.Image]], np.ndarray]
    lora_targets: str | list[str]
    dim: int

    def trunk(self, pixels):
        """The frozen part: (B, C, H, W) pixels -> what :meth:`head` takes (no graph kept)."""
        return pixels

    def head(self, features):
        """The part that carries LoRA: trunk output -> (B, dim) embeddings (not normalised)."""
        raise NotImplementedError

    def forward(self, pixels):
        return self.head(self.trunk(pixels))

    def eval(self) -> Backbone:
        self.module.eval()
        return self

    @property
    def device(self):
        return next(self.module.parameters()).device

    def trunk_features(self, images: Sequence[Image.Image], batch_size: int = 32):
        """Trunk outputs of ``images`` as one CPU tensor, in batches (what fine-tuning and evaluation cache)."""
        torch = _torch()
        out = []
        for start in range(0, len(images), batch_size):
            pixels = torch.as_tensor(self.pixel_preparer(list(images[start:start + batch_size]))).to(self.device)
            with torch.inference_mode():
                out.append(self.trunk(pixels).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def embed_features(self, features, batch_size: int = 64) -> np.ndarray:
        """L2-normalised float32 embeddings of cached trunk outputs."""
        torch = _torch()
        out = []
        with torch.inference_mode():
            for start in range(0, len(features), batch_size):
                out.append(self.head(features[start:start + batch_size].to(self.device)).float().cpu().numpy())
        return l2_normalise(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        return self.embed_features(self.trunk_features(images, batch_size), batch_size)


def _plain_pointwise(conv):
    """A plain ``nn.Conv2d`` sharing the weights of a 1 x 1, stride-1, unpadded EfficientNet-PyTorch convolution."""
    from torch import nn

    if tuple(conv.kernel_size) != (1, 1) or tuple(conv.stride) != (1, 1) or conv.groups != 1:
        raise ValueError(f"not a pointwise convolution: {conv}")
    padding = getattr(conv, "static_padding", None)
    if padding is not None and type(padding).__name__ != "Identity":
        raise ValueError(f"a pointwise convolution that pads: {conv}")
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None)
    plain.weight = conv.weight
    if conv.bias is not None:
        plain.bias = conv.bias
    return plain


class EfficientNetBackbone(Backbone):
    """EfficientNet-Lite0 from the weights in pip (or a ``.pth`` of the same architecture); see the module doc."""

    def __init__(self, weights: str = ""):
        from .efficientnet import EMBEDDING_DIM, MODEL_NAME, EfficientNetLitePixels, load_efficientnet_lite0

        self.spec = f"{MODEL_NAME}:{weights}" if weights else MODEL_NAME
        model = load_efficientnet_lite0(weights or None)
        for block in model._blocks[EFFICIENTNET_FIRST_TUNED_BLOCK:]:
            for name in ("_expand_conv", "_project_conv"):
                if hasattr(block, name):
                    setattr(block, name, _plain_pointwise(getattr(block, name)))
        model._conv_head = _plain_pointwise(model._conv_head)
        self.module = model.eval().requires_grad_(False)
        self.pixel_preparer = EfficientNetLitePixels()
        self.lora_targets = EFFICIENTNET_LORA_TARGETS
        self.dim = EMBEDDING_DIM

    def _drop_rate(self, index: int) -> float:
        rate = self.module._global_params.drop_connect_rate
        return rate * float(index) / len(self.module._blocks) if rate else rate

    def trunk(self, pixels):
        torch = _torch()
        model = self.module
        with torch.no_grad():
            x = model._swish(model._bn0(model._conv_stem(pixels)))
            for index, block in enumerate(model._blocks[:EFFICIENTNET_FIRST_TUNED_BLOCK]):
                x = block(x, drop_connect_rate=self._drop_rate(index))
        return x

    def head(self, features):
        model = self.module
        x = features
        for index, block in enumerate(model._blocks):
            if index >= EFFICIENTNET_FIRST_TUNED_BLOCK:
                x = block(x, drop_connect_rate=self._drop_rate(index))
        x = model._swish(model._bn1(model._conv_head(x)))
        return x.mean(dim=(2, 3))


class DinoBackbone(Backbone):
    """A ViT (``AutoModel``; DINOv2 by default) by id or folder; the embedding is the last layer's class token."""

    def __init__(self, source: str = ""):
        import transformers

        from .dino import DEFAULT_DINO
        from .pretrained import PixelPreparer, load_pretrained

        source = source or DEFAULT_DINO
        self.spec = f"dino:{source}"
        self.module = load_pretrained(transformers.AutoModel, source, what="DINO model").eval().requires_grad_(False)
        processor = load_pretrained(transformers.AutoImageProcessor, source, what="DINO model image processor")
        self.pixel_preparer = PixelPreparer(processor)
        # transformers 5 names them q_proj / v_proj, 4.x query / value; peft needs only one to match
        self.lora_targets = ["q_proj", "v_proj", "query", "value"]
        self.dim = int(self.module.config.hidden_size)

    def head(self, features):
        return self.module(pixel_values=features).last_hidden_state[:, 0]


class ClipBackbone(Backbone):
    """The vision tower of a CLIP model by id or folder; the embedding is the projected image embedding."""

    def __init__(self, source: str = ""):
        import transformers

        from .clip import DEFAULT_CLIP
        from .pretrained import PixelPreparer, load_pretrained

        source = source or DEFAULT_CLIP
        self.spec = f"clip:{source}"
        # A full CLIP checkpoint keeps projection_dim on the outer config; the vision config alone would default it
        # (512), and the projection's weights would not fit: give the vision tower its real projection size.
        config = load_pretrained(transformers.AutoConfig, source, what="CLIP vision model config")
        options = {}
        if getattr(config, "vision_config", None) is not None:
            vision = config.vision_config
            vision.projection_dim = config.projection_dim
            options["config"] = vision
        self.module = load_pretrained(transformers.CLIPVisionModelWithProjection, source,
                                      what="CLIP vision model", **options).eval().requires_grad_(False)
        processor = load_pretrained(transformers.CLIPImageProcessor, source, what="CLIP model image processor")
        self.pixel_preparer = PixelPreparer(processor)
        self.lora_targets = ["q_proj", "v_proj"]
        self.dim = int(self.module.config.projection_dim)

    def head(self, features):
        return self.module(pixel_values=features).image_embeds


def load_backbone(spec: str) -> Backbone:
    """``efficientnet-lite0[:<weights.pth>]`` | ``dino:<id or path>`` | ``clip:<id or path>`` -> a frozen base."""
    name, _, argument = str(spec).partition(":")
    if name == "efficientnet-lite0":
        return EfficientNetBackbone(argument)
    if name == "dino":
        return DinoBackbone(argument)
    if name == "clip":
        return ClipBackbone(argument)
    raise SameIdError(f"unknown backbone {spec!r}: use efficientnet-lite0, dino:<id or path> or clip:<id or path>")


def add_lora(backbone: Backbone, *, rank: int = 4, alpha: float | None = None, seed: int = 0,
             targets: str | list[str] | None = None):
    """Wrap ``backbone.module`` in a peft ``PeftModel`` with LoRA (``rank``, ``alpha`` default = rank) on its
    targets, in place (``backbone.module`` stays the same object, now holding LoRA layers); the LoRA initialisation
    is seeded. Returns the ``PeftModel``, whose trainable parameters are the LoRA matrices only."""
    torch = _torch()
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank), lora_dropout=0.0,
                        target_modules=targets if targets is not None else backbone.lora_targets, bias="none")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        peft_model = get_peft_model(backbone.module, config)
    finally:
        torch.random.set_rng_state(state)
    peft_model.peft_config["default"].base_model_name_or_path = backbone.spec
    peft_model.eval()  # batch norms keep their statistics, dropout stays off; LoRA trains in eval mode
    return peft_model


def save_adapter(peft_model, backbone: Backbone, folder: str | Path, extra: dict | None = None) -> Path:
    """``peft_model.save_pretrained(folder)`` plus ``backbone.json`` (the base spec and ``extra``)."""
    from ..atomic import write_json_atomic

    folder = Path(folder)
    peft_model.peft_config["default"].base_model_name_or_path = backbone.spec
    # save_embedding_layers=False: peft would otherwise look the base up on the hub (it is a spec, not a hub id)
    peft_model.save_pretrained(str(folder), save_embedding_layers=False)
    write_json_atomic(folder / BACKBONE_FILE, {"backbone": backbone.spec, **(extra or {})})
    return folder


def adapter_base_spec(folder: str | Path) -> str:
    """The backbone spec an adapter folder was trained on; SameIdError naming the folder when it is not one."""
    folder = Path(folder)
    config = folder / "adapter_config.json"
    if not config.is_file():
        raise SameIdError(f"{folder} is not a personalized adapter (no adapter_config.json): pass the adapter/ "
                          "folder written by `sameid personalize`")
    info = folder / BACKBONE_FILE
    if info.is_file():
        return str(json.loads(info.read_text(encoding="utf-8"))["backbone"])
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise SameIdError(f"{config} names no base model (base_model_name_or_path)")
    return str(base)


def load_personalized(folder: str | Path, base: str | None = None) -> Backbone:
    """The base backbone (``base``, default the spec saved with the adapter) with the peft adapter in ``folder``."""
    from peft import PeftModel

    backbone = load_backbone(base or adapter_base_spec(folder))
    PeftModel.from_pretrained(backbone.module, str(folder)).eval()  # injects the LoRA layers into backbone.module
    return backbone


class PersonalizedEmbedder(ImageEmbedder):
    """Image embedder ``personalized:<adapter dir>``: a base backbone with a personalized LoRA adapter."""

    kind = "image_embedder"

    def __init__(self, folder: str, batch_size: int = 32):
        self.folder = Path(folder).expanduser()
        self.backbone = load_personalized(self.folder)
        self.batch_size = int(batch_size)
        weights = self.folder / "adapter_model.safetensors"
        tag = hashlib.sha256(weights.read_bytes()).hexdigest()[:8] if weights.is_file() else "?"
        self.identity = f"personalized:{self.backbone.spec}:{tag}"
        self.dim = self.backbone.dim

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.backbone.embed_images(images, self.batch_size)
