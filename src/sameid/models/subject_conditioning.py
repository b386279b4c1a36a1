"""Subject-augmented conditioning: each reference's local identity feature and global image feature, projected
to tokens for the multi-subject denoiser (PairHuman, arXiv 2511.16712, DHumanDiff's method: a local facial
feature from a face recogniser plus a global CLIP image feature, "each through its own projector").

* **Global feature**: a frozen, torch-native image encoder held inside the denoiser (as the IP-Adapter baseline
  holds its CLIP encoder): CLIP's projected image embedding (``CLIPVisionModelWithProjection`` by id or folder,
  the paper's choice), or EfficientNet-Lite0's pooled 1280-d features (:mod:`sameid.backends.efficientnet`,
  weights shipped in a pip package: the offline choice, what tiny runs and tests use). Computed from the
  reference pixels inside the forward, without gradient.
* **Local feature**: a face embedding per reference, from a face-embedder backend by spec (``dlib``: 128-d,
  offline; ``arcface-onnx:<model.onnx>``: 512-d, InsightFace's ArcFace models by path). Face detection and
  alignment are not torch operations, so the embedding is computed once per batch, outside the forward
  (:func:`reference_face_features`), and carried in ``ReferenceInputs.face_embeds``; a reference without a
  detected face gets a zero vector.
* **Projectors**: diffusers' ``ImageProjection`` (a linear map to T tokens of the U-Net's cross-attention width,
  then LayerNorm, IP-Adapter's projector), one for the global feature and one for the local feature; a
  reference's tokens are the global tokens followed by the local ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SameIdError

GLOBAL_ENCODERS = ("clip", "efficientnet-lite0")
EFFICIENTNET = "efficientnet-lite0"
# EfficientNet-Lite0's input side and pixel normalisation (sameid.backends.efficientnet: TF-Lite's (x - 127) / 128)
EFFICIENTNET_SIZE, EFFICIENTNET_MEAN, EFFICIENTNET_STD, EFFICIENTNET_DIM = 224, 127.0, 128.0, 1280
# Face-embedder spec -> embedding width, for the ones sameid ships; another backend's width is given explicitly.
FACE_FEATURE_DIMS = {"dlib": 128, "arcface-onnx": 512}


# -- global encoders -----------------------------------------------------------------------------------------------
def build_global_encoder(kind: str, config: dict | None = None) -> nn.Module:
    """A global image encoder of ``kind`` with random weights (``from_pretrained`` fills them): CLIP from its
    vision config, EfficientNet-Lite0 from its architecture name."""
    if kind == "clip":
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        if config is None:
            raise SameIdError("a CLIP global encoder needs its vision config")
        return CLIPVisionModelWithProjection(CLIPVisionConfig.from_dict(config))
    if kind == EFFICIENTNET:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            from ..errors import MissingModelError

            raise MissingModelError(f"global encoder {EFFICIENTNET} needs efficientnet-lite-pytorch ({error})") from error
        return EfficientNet.from_name(EFFICIENTNET)
    raise SameIdError(f"unknown global encoder {kind!r}; choose one of {', '.join(GLOBAL_ENCODERS)}")


def global_feature_dim(kind: str, encoder: nn.Module) -> int:
    return int(encoder.config.projection_dim) if kind == "clip" else EFFICIENTNET_DIM


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)


def clip_image_embeds(encoder, pixels: torch.Tensor) -> torch.Tensor:
    """(M, 3, H, W) pixels in [-1, 1] -> (M, D) projected CLIP image embeddings, no gradient: resized to the
    encoder's image size and normalised with CLIP's mean and std, all in torch."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    images = _resize((pixels.to(encoder.dtype) + 1.0) / 2.0, int(encoder.config.image_size))
    mean = images.new_tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return encoder(pixel_values=(images.clamp(0.0, 1.0) - mean) / std).image_embeds


def efficientnet_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """(M, 3, H, W) pixels in [-1, 1] -> (M, 1280) EfficientNet-Lite0 features (global average of the last feature
    map, as :class:`sameid.backends.efficientnet.EfficientNetLiteEmbedder`, not normalised), no gradient. The
    whole letterboxed square is resized to 224 (no centre crop: the reference is already square)."""
    dtype = next(model.parameters()).dtype
    images = _resize(((pixels.to(dtype) + 1.0) * 127.5).clamp(0.0, 255.0), EFFICIENTNET_SIZE)
    with torch.no_grad():
        return model.extract_features((images - EFFICIENTNET_MEAN) / EFFICIENTNET_STD).mean(dim=(2, 3))


def global_features(kind: str, encoder, pixels: torch.Tensor) -> torch.Tensor:
    return clip_image_embeds(encoder, pixels) if kind == "clip" else efficientnet_features(encoder, pixels)


# -- local (face) features -----------------------------------------------------------------------------------------
def face_feature_dim(spec: str) -> int:
    name = spec.partition(":")[0]
    if name not in FACE_FEATURE_DIMS:
        raise SameIdError(f"face embedder {spec!r}: give its embedding width (face_feature_dim); known widths: "
                          + ", ".join(f"{k} {v}" for k, v in FACE_FEATURE_DIMS.items()))
    return FACE_FEATURE_DIMS[name]


def reference_face_features(spec: str, pixels: torch.Tensor, dim: int) -> torch.Tensor:
    """(M, dim) float32 face embeddings (L2-normalised, as every FaceEmbedder returns them) of (M, 3, H, W)
    reference pixels in [-1, 1], by the face-embedder backend ``spec``; zeros where no face is found. On the
    CPU, without gradient; the caller moves the result."""
    import numpy as np
    from PIL import Image

    from ..backends.registry import create_backend

    embedder = create_backend("face_embedder", spec)
    images = ((pixels.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    features = torch.zeros(len(images), dim)
    for index, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        vector = embedder.embed(Image.fromarray(np.ascontiguousarray(image)))
        if vector is None:
            continue
        if vector.shape != (dim,):
            raise SameIdError(f"face embedder {spec!r} gives {vector.shape[-1]}-d embeddings; the model expects "
                              f"{dim} (face_feature_dim)")
        features[index] = torch.from_numpy(np.asarray(vector, dtype=np.float32))
    return features


# -- projectors ------------------------------------------------------------------------------------------------------
class SubjectProjector(nn.Module):
    """Global feature -> ``global_tokens`` tokens, local feature -> ``face_tokens`` tokens (each its own diffusers
    ``ImageProjection``: linear, then LayerNorm), concatenated: (M, global_tokens + face_tokens, width).
    ``face_dim`` 0: no local projector (the ablation without subject-augmented conditioning)."""

    def __init__(self, global_dim: int, face_dim: int, width: int, global_tokens: int = 4, face_tokens: int = 4):
        from diffusers.models.embeddings import ImageProjection

        super().__init__()
        if global_tokens < 1 or (face_dim > 0 and face_tokens < 1):
            raise SameIdError("subject projector: global_tokens (and face_tokens with a face embedder) must be >= 1")
        self.global_projection = ImageProjection(image_embed_dim=global_dim, cross_attention_dim=width,
                                                 num_image_text_embeds=global_tokens)
        self.face_projection = (ImageProjection(image_embed_dim=face_dim, cross_attention_dim=width,
                                                num_image_text_embeds=face_tokens) if face_dim > 0 else None)

    @property
    def tokens(self) -> int:
        count = self.global_projection.num_image_text_embeds
        return count + (self.face_projection.num_image_text_embeds if self.face_projection is not None else 0)

    def forward(self, global_features: torch.Tensor, face_features: torch.Tensor | None) -> torch.Tensor:
        dtype = self.global_projection.image_embeds.weight.dtype
        tokens = self.global_projection(global_features.to(dtype))
        if self.face_projection is None:
            return tokens
        if face_features is None:
            raise SameIdError("the multi-subject denoiser reads face embeddings (ReferenceInputs.face_embeds): "
                              "call denoiser.add_reference_features(references) first")
        return torch.cat([tokens, self.face_projection(face_features.to(dtype))], dim=1)
