"""Reference preparation, once: the pixels of a reference and what a denoiser reads of it.

RetriBooru (arXiv 2312.02521, §5.2) prepares references for generation "the same way as training our tasks"; this
module is that one way, used by the training dataset (:mod:`sameid.pairs.dataset`), the training loop, the
reference pipeline, generation from a run and the training-step benchmark:

* **pixels**: the reference's concept crop (RetriBooru, arXiv 2312.02521, A.4: face, clothes or whole figure),
  clipped to the image actually on disk, then letterboxed onto a white square (:func:`reference_pixels`,
  :func:`letterbox_array`); uint8, channel-first, mapped to [-1, 1] by :func:`normalize_pixels`.
* **latents**: the VAE posterior's mode times the VAE scaling factor (:func:`encode_reference_latents`).
* **concept embeddings**: the text encoder's last hidden states of each reference's concept caption ("face",
  "clothes", "figure"), each distinct caption encoded once (:func:`embed_concepts`); on an SDXL base (two text
  encoders) what its U-Net reads as text instead (:func:`encode_texts_sdxl`).

:class:`ReferenceInputs` carries the three to a denoiser. This is the ground floor: it imports no sameid stage
(pairs, models, train, generate), only numpy, PIL and torch; the VAE and
the text encoder are passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

PADDING_VALUE = 255  # figure datasets have white backgrounds; the valid-area mask keeps padding out of the loss
DEFAULT_CONCEPT = "figure"

Box = tuple[int, int, int, int]


@dataclass
class ReferenceInputs:
    """The references of a batch, already on the model's device.

    ``pixels``: (B, N, 3, H, W) in [-1, 1] (ControlNet and image-encoder baselines read pixels);
    ``latents``: (B, N, C, h, w) VAE latents, already multiplied by the VAE scaling factor (RetriNet reads latents;
    None for a denoiser whose ``uses_reference_latents`` is False, so nobody pays for a VAE pass it does not read);
    ``concept_embeds``: (B, N, L, D) text-encoder hidden states of each reference's concept caption
    ("face", "clothes", "figure"); ``valid``: (B, N) bool, False for a padded slot (a batch whose examples have
    fewer references than the widest one); None means all slots are real.
    """

    pixels: torch.Tensor
    latents: torch.Tensor | None
    concept_embeds: torch.Tensor
    valid: torch.Tensor | None = None
    #: Multi-subject batches: (B, N) long, the subject index of each reference slot, and (B, K, 1, h, w) float
    #: region masks of the K subjects (None for single-subject batches: every reference is of the one subject).
    subjects: torch.Tensor | None = None
    subject_masks: torch.Tensor | None = None
    #: (B, N, D) local identity feature of each reference (a face embedding, e.g. dlib's 128-d one), computed
    #: outside the torch forward by a denoiser that reads it (``add_reference_features``); None when not used.
    face_embeds: torch.Tensor | None = None
    #: (B,) bool, True where the example's references are dropped: an image drop in training, the unconditional
    #: branch of guidance for a denoiser whose ``unconditional_references`` is "zero". Each denoiser gives such an
    #: example its own unconditional image input (``ReferenceConditionedDenoiser.reference_drop``). None: none.
    dropped: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return int(self.pixels.shape[1])


# -- pixels ----------------------------------------------------------------------------------------------------------
def crop_clipped(image: np.ndarray, box: Box) -> np.ndarray:
    """``image`` (H, W, 3) cut to ``box`` (x0, y0, x1, y1; x1, y1 exclusive) clipped to the image.

    Crops are planned on the manifest's width and height; the file on disk may disagree, so the box is clipped.
    A box that leaves nothing after clipping gives the whole image (as the figure fallback would).
    """
    height, width = image.shape[:2]
    x0, y0, x1, y1 = box
    x1, y1 = min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return image
    return image[y0:y1, x0:x1]


def _letterbox_geometry(width: int, height: int, resolution: int) -> tuple[float, int, int, int, int]:
    scale = resolution / max(width, height)
    new_w, new_h = max(1, min(resolution, round(width * scale))), max(1, min(resolution, round(height * scale)))
    return scale, new_w, new_h, (resolution - new_w) // 2, (resolution - new_h) // 2


def letterbox_array(image: np.ndarray, resolution: int) -> tuple[np.ndarray, Box, float]:
    """Resize an (H, W, 3) uint8 ``image`` so its longer side is ``resolution``; centre it on a white square canvas.

    Returns the uint8 (R, R, 3) array, the valid box (x0, y0, x1, y1) of the image on the canvas (x1, y1
    exclusive), and the scale from source pixels to canvas pixels.
    """
    import cv2

    height, width = image.shape[:2]
    scale, new_w, new_h, x0, y0 = _letterbox_geometry(width, height, resolution)
    canvas = np.full((resolution, resolution, 3), PADDING_VALUE, dtype=np.uint8)
    if (new_w, new_h) != (width, height):
        # Area averaging when shrinking avoids aliasing; bilinear when enlarging.
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=interpolation)
    canvas[y0:y0 + new_h, x0:x0 + new_w] = image
    return canvas, (x0, y0, x0 + new_w, y0 + new_h), scale


def letterbox_into(image: np.ndarray, out: np.ndarray) -> tuple[Box, float]:
    """:func:`letterbox_array` written channel-first into ``out``, a uint8 (3, R, R) array: the same pixels.

    Each byte of ``out`` is written once, by OpenCV: when enlarging, the image's channels are split and each is
    resized straight into its window of ``out``; when shrinking, the image is resized and the (smaller) result
    split into the windows. Either way the temporary is the smaller side and there is no (R, R, 3) canvas to
    fill, copy and transpose: writing fresh output memory is most of the cost at 384 px. Resizing the channels
    one by one gives the same values as resizing them together. Returns the valid box and the scale, as
    :func:`letterbox_array` does.
    """
    import cv2

    resolution = out.shape[-1]
    height, width = image.shape[:2]
    scale, new_w, new_h, x0, y0 = _letterbox_geometry(width, height, resolution)
    x1, y1 = x0 + new_w, y0 + new_h
    out[:, :y0] = PADDING_VALUE
    out[:, y1:] = PADDING_VALUE
    out[:, y0:y1, :x0] = PADDING_VALUE
    out[:, y0:y1, x1:] = PADDING_VALUE
    windows = [out[channel, y0:y1, x0:x1] for channel in range(3)]
    if (new_w, new_h) == (width, height):
        planes = cv2.split(image, mv=windows)
    elif scale > 1:
        planes = [cv2.resize(plane, (new_w, new_h), dst=window, interpolation=cv2.INTER_LINEAR)
                  for plane, window in zip(cv2.split(image), windows)]
    else:
        # Area averaging when shrinking avoids aliasing (as in letterbox_array).
        resized = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=cv2.INTER_AREA)
        planes = cv2.split(resized, mv=windows)
    for window, plane in zip(windows, planes):
        if plane is not window:  # OpenCV allocated a new array instead of writing into the window
            window[...] = plane
    return (x0, y0, x1, y1), scale


def _as_array(image: np.ndarray | Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else image


def reference_pixels(image: np.ndarray | Image.Image, box: Box | None, out: np.ndarray, transform=None) -> Box:
    """One reference: ``image`` (an (H, W, 3) uint8 array or a PIL image) cut to ``box`` clipped to the image
    (None: the whole image), then ``transform`` (an array -> array callable, e.g. training's augmentation), then
    letterboxed channel-first into ``out`` (uint8 (3, R, R)). Returns the image's box on the canvas."""
    piece = _as_array(image)
    if box is not None:
        piece = crop_clipped(piece, box)
    if transform is not None:
        piece = transform(piece)
    return letterbox_into(piece, out)[0]


def reference_batch(references: Sequence[Sequence[np.ndarray | Image.Image]], resolution: int,
                    boxes: Sequence[Sequence[Box | None]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (B, N, 3, R, R) pixels of one list of references per row (N: the longest row; shorter rows padded
    white) and the (B, N) bool mask of real slots. ``boxes``: one crop box (or None) per reference."""
    if isinstance(references, Image.Image | np.ndarray) or not references or any(
            isinstance(row, Image.Image | np.ndarray) for row in references):
        raise ValueError("references: give one list of images per prompt, e.g. [[image_a, image_b]]")
    if any(len(row) == 0 for row in references):
        raise ValueError("references: every prompt needs at least one reference image")
    batch, count = len(references), max(len(row) for row in references)
    pixels = np.full((batch, count, 3, resolution, resolution), PADDING_VALUE, dtype=np.uint8)
    valid = np.zeros((batch, count), dtype=bool)
    for b, images in enumerate(references):
        for n, image in enumerate(images):
            reference_pixels(image, boxes[b][n] if boxes is not None else None, pixels[b, n])
        valid[b, :len(images)] = True
    return pixels, valid


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255] to float in [-1, 1] (the range of a Stable Diffusion VAE)."""
    return pixels.float() / 127.5 - 1.0


# -- what the denoiser reads -----------------------------------------------------------------------------------------
def _device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


@torch.no_grad()
def encode_reference_latents(vae, pixels: torch.Tensor) -> torch.Tensor:
    """(B, N, C, h, w) latents of (B, N, 3, H, W) reference pixels in [-1, 1]: the VAE posterior's mode times the
    scaling factor, on the VAE's device and in its dtype (the mode, not a sample: a reference is a condition)."""
    device, dtype = _device_dtype(vae)
    batch, count = pixels.shape[:2]
    latents = vae.encode(pixels.flatten(0, 1).to(device, dtype)).latent_dist.mode()
    return (latents * vae.config.scaling_factor).unflatten(0, (batch, count))


@torch.no_grad()
def encode_texts(text_encoder, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """(len(texts), L, D) last hidden states of ``text_encoder``, padded to the tokenizer's maximum length."""
    tokens = tokenizer(list(texts), padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                       return_tensors="pt")
    return text_encoder(tokens.input_ids.to(text_encoder.device))[0]


@torch.no_grad()
def encode_texts_sdxl(text_encoders, tokenizers, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """An SDXL base's text conditioning, as diffusers' ``StableDiffusionXLPipeline.encode_prompt`` computes it:
    (len(texts), L, D1 + D2) penultimate hidden states of both text encoders side by side, and (len(texts), P) the
    pooled (projected) embedding of the second (a ``CLIPTextModelWithProjection``). Each tokenizer pads to its
    maximum length."""
    states, pooled = [], None
    for text_encoder, tokenizer in zip(text_encoders, tokenizers):
        tokens = tokenizer(list(texts), padding="max_length", truncation=True,
                           max_length=tokenizer.model_max_length, return_tensors="pt")
        output = text_encoder(tokens.input_ids.to(text_encoder.device), output_hidden_states=True)
        pooled = output[0]
        states.append(output.hidden_states[-2])
    return torch.cat(states, dim=-1), pooled


@torch.no_grad()
def embed_concepts(text_encoder, tokenizer, concepts: Sequence[Sequence[str]],
                   cache: dict[str, torch.Tensor] | None = None, *, text_encoder_2=None,
                   tokenizer_2=None) -> torch.Tensor:
    """(B, N, L, D) text-encoder states of each reference's concept caption; each distinct caption encoded once.

    ``cache`` (caption -> (L, D)) is read and filled, so a training run encodes "face" only once. With
    ``text_encoder_2`` and ``tokenizer_2`` (an SDXL base) the states are :func:`encode_texts_sdxl`'s, the width the
    U-Net's cross-attention reads.
    """
    cache = {} if cache is None else cache
    missing = sorted({concept for row in concepts for concept in row} - set(cache))
    if missing and text_encoder_2 is not None:
        cache.update(zip(missing, encode_texts_sdxl((text_encoder, text_encoder_2), (tokenizer, tokenizer_2),
                                                    missing)[0]))
    elif missing:
        cache.update(zip(missing, encode_texts(text_encoder, tokenizer, missing)))
    return torch.stack([torch.stack([cache[concept] for concept in row]) for row in concepts])


def reference_inputs(pixels: torch.Tensor, concepts: Sequence[Sequence[str]], *, vae, text_encoder, tokenizer,
                     with_latents: bool, device=None, dtype=None, valid: torch.Tensor | None = None,
                     concept_cache: dict[str, torch.Tensor] | None = None, text_encoder_2=None,
                     tokenizer_2=None) -> ReferenceInputs:
    """:class:`ReferenceInputs` of uint8 (B, N, 3, H, W) reference ``pixels`` and their concept captions.

    ``with_latents``: whether to VAE-encode them (a denoiser's ``uses_reference_latents``). Everything ends on
    ``device`` in ``dtype`` (default: the VAE's). ``valid`` (B, N) marks real slots; all-true becomes None.
    ``text_encoder_2`` / ``tokenizer_2``: an SDXL base's second text encoder (see :func:`embed_concepts`).
    """
    vae_device, vae_dtype = _device_dtype(vae)
    device, dtype = device or vae_device, dtype or vae_dtype
    normalized = normalize_pixels(pixels)
    latents = encode_reference_latents(vae, normalized).to(device, dtype) if with_latents else None
    embeds = embed_concepts(text_encoder, tokenizer, concepts, concept_cache, text_encoder_2=text_encoder_2,
                            tokenizer_2=tokenizer_2).to(device, dtype)
    if valid is not None:
        valid = None if bool(valid.all()) else valid.to(device=device, dtype=torch.bool)
    return ReferenceInputs(pixels=normalized.to(device, dtype), latents=latents, concept_embeds=embeds, valid=valid)
