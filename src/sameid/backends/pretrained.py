"""Loading transformers models by hub id or local folder, offline unless the user allows downloads.

A backend never reaches the network on its own: ``from_pretrained`` gets ``local_files_only=True`` unless the
environment sets ``SAMEID_ALLOW_DOWNLOAD=1``. A model that is not on the machine becomes a
:class:`~sameid.errors.MissingModelError` whose one line says which model and how to fetch it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingModelError, SameIdError

ALLOW_DOWNLOAD_ENV = "SAMEID_ALLOW_DOWNLOAD"


def downloads_allowed() -> bool:
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip() == "1"


def _looks_like_path(source: str) -> bool:
    # A hub id is "name" or "owner/name"; anything rooted, relative-dotted or with a backslash is a folder.
    return source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1


def missing_model_message(what: str, source: str, cause: BaseException | None = None) -> str:
    if _looks_like_path(source) or Path(source).expanduser().exists():
        how = f"no usable model folder at {source}: pass a folder written by save_pretrained or hf download"
    else:
        how = (
            f"{source!r} is not in the local Hugging Face cache: run `hf download {source}` on a "
            f"connected machine and pass the local folder, or set {ALLOW_DOWNLOAD_ENV}=1 to let transformers download it"
        )
    reason = f" ({str(cause).splitlines()[0][:200]})" if cause is not None and str(cause) else ""
    return f"{what}: {how}{reason}"


def load_pretrained(loader: Any, source: str, *, what: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(source, **kwargs)`` offline (see module doc); absence -> MissingModelError.

    ``what`` names the model's role in the error message ("VQA model", "head detector").
    """
    if not source:
        raise MissingModelError(f"{what}: no model id or folder given (spec `transformers:<id or path>`)")
    local = Path(source).expanduser()
    if _looks_like_path(source) and not local.exists():
        raise MissingModelError(missing_model_message(what, source))
    try:
        return loader.from_pretrained(
            str(local) if local.exists() else source, local_files_only=not downloads_allowed(), **kwargs
        )
    except OSError as error:  # transformers reports every absent/unreachable file as OSError (EnvironmentError)
        raise MissingModelError(missing_model_message(what, source, error)) from error


def torch_device(device: str | None = None) -> str:
    """``device`` as given, else cuda when available, else cpu."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(dtype: Any, device: str) -> Any:
    """A torch dtype from a name ("float16", "bfloat16", "float32") or a dtype; None -> half on cuda, else float32."""
    import torch

    if dtype is None or dtype == "":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise SameIdError(f"unknown dtype {dtype!r}; use float16, bfloat16 or float32")
    return resolved


class PixelPreparer:
    """Images -> the ``pixel_values`` array (float32, N x C x H x W) that ``image_processor(images=...)`` returns.

    For the PIL backend's usual recipe (resize the shortest edge, centre crop, rescale, normalise: CLIP's and
    DINO's processors) it gives the same numbers for far less work: the resize is the same PIL call (skipped
    when the image already has the target size, where PIL would return a copy), the crop is a slice, and
    rescale + normalise, which transformers runs per image in float64 then float32, is one look-up per channel
    into a 256-entry table built with those same float operations (``cv2.LUT``), so every value is bit-identical. Any other
    processor (the torchvision backend, padding, other size rules) goes through ``image_processor`` itself.
    Picklable (it holds only the processor's settings), so a decode worker process can run it.
    """

    def __init__(self, image_processor: Any):
        self.image_processor = image_processor
        self.fast = _pil_recipe(image_processor)
        if not self.fast:
            return
        self.shortest_edge = int(image_processor.size.shortest_edge)
        self.crop = (int(image_processor.crop_size.height), int(image_processor.crop_size.width))
        self.resample = image_processor.resample if image_processor.resample is not None else 2  # BILINEAR
        values = np.arange(256)
        if image_processor.do_rescale:  # transformers: uint8 -> float64, times the factor, -> float32
            values = values.astype(np.float64) * image_processor.rescale_factor
        values = values.astype(np.float32)
        table = np.stack([values] * 3)
        if image_processor.do_normalize:  # transformers: (x - mean) / std in float32
            mean = np.broadcast_to(np.asarray(image_processor.image_mean, dtype=np.float32), (3,))
            std = np.broadcast_to(np.asarray(image_processor.image_std, dtype=np.float32), (3,))
            table = (table - mean[:, None]) / std[:, None]
        self.table = np.ascontiguousarray(table.astype(np.float32).T.reshape(1, 256, 3))  # cv2.LUT's layout

    def batch_nbytes(self, count: int) -> int | None:
        """Bytes of the array for ``count`` images (None when the size is not known in advance)."""
        return count * 3 * self.crop[0] * self.crop[1] * 4 if self.fast else None

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        # transformers' get_resize_output_image_size(default_to_square=False): the short edge becomes the size,
        # the long edge int(size * long / short); (width, height) here
        size = self.shortest_edge
        if width <= height:
            return size, int(size * height / width)
        return int(size * width / height), size

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        images = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        if not self.fast or not images:
            return self.image_processor(images=images, return_tensors="np")["pixel_values"]
        crop_height, crop_width = self.crop
        pixels = np.empty((len(images), crop_height, crop_width, 3), np.uint8)
        for index, image in enumerate(images):
            target = self._resized_size(*image.size)
            if image.size != target:
                image = image.resize(target, resample=self.resample)
            top, left = (target[1] - crop_height) // 2, (target[0] - crop_width) // 2
            if top < 0 or left < 0:  # crop larger than the resized image: transformers pads; let it
                return self.image_processor(images=images, return_tensors="np")["pixel_values"]
            # frombuffer(tobytes()) is a quarter of np.asarray(image)'s cost (one copy, no array interface)
            array = np.frombuffer(image.tobytes(), np.uint8).reshape(target[1], target[0], 3)
            pixels[index] = array[top:top + crop_height, left:left + crop_width]
        import cv2

        # one table look-up per pixel and channel (cv2.LUT: a plain copy of table entries, so exact, and ~5x
        # faster than numpy's take, which first widens the uint8 indexes)
        values = cv2.LUT(pixels.reshape(len(images) * crop_height, crop_width, 3), self.table)
        return np.ascontiguousarray(values.reshape(len(images), crop_height, crop_width, 3).transpose(0, 3, 1, 2))


def _pil_recipe(image_processor: Any) -> bool:
    """Whether ``image_processor`` runs PilBackend's own shortest-edge / centre-crop / rescale / normalise steps."""
    try:
        from transformers.image_processing_backends import PilBackend
    except ImportError:
        return False
    if not isinstance(image_processor, PilBackend) or getattr(image_processor, "backend", None) != "pil":
        return False
    cls = type(image_processor)
    own_steps = all(getattr(cls, name) is getattr(PilBackend, name)
                    for name in ("_preprocess", "process_image", "resize", "center_crop", "rescale", "normalize"))
    size, crop = getattr(image_processor, "size", None), getattr(image_processor, "crop_size", None)
    return bool(
        own_steps and image_processor.do_resize and image_processor.do_center_crop
        and not getattr(image_processor, "do_pad", False)
        and size is not None and size.shortest_edge and not size.longest_edge and not size.height
        and crop is not None and crop.height and crop.width
        and all(len(np.atleast_1d(v)) in (1, 3) for v in (image_processor.image_mean, image_processor.image_std))
    )


def embed_pixel_batches(pixel_values, forward, batch_size: int, device, dim: int):
    """Run ``forward(pixel_values tensor) -> (B, D) tensor`` over a prepared (N, C, H, W) array in batches;
    L2-normalised float32 rows."""
    import torch

    from .base import l2_normalise

    out = []
    for start in range(0, len(pixel_values), batch_size):
        pixels = torch.as_tensor(np.ascontiguousarray(pixel_values[start:start + batch_size])).to(device)
        with torch.inference_mode():
            out.append(forward(pixels).float().cpu().numpy())
    return l2_normalise(np.concatenate(out)) if out else np.zeros((0, dim), np.float32)


def embed_image_batches(images, prepare, forward, batch_size: int, device, dim: int):
    """Prepare (a :class:`PixelPreparer`) and embed ``images`` batch by batch: the one batching loop of the
    transformers image embedders (CLIP, DINO), which differ only in ``forward``."""
    out = [embed_pixel_batches(prepare(images[start:start + batch_size]), forward, batch_size, device, dim)
           for start in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


class BatchedImageForward:
    """``embed_images`` / ``embed_pixels`` of a transformers image embedder (CLIP, DINO) from its ``_image_forward``
    (pixels -> (B, D) features), ``pixel_preparer``, ``batch_size``, ``device`` and ``embedding_dim``."""

    pixel_preparer: PixelPreparer
    batch_size: int
    device: Any
    embedding_dim: int

    def _image_forward(self, pixels):
        raise NotImplementedError

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        return embed_image_batches(images, self.pixel_preparer, self._image_forward, self.batch_size, self.device,
                                   self.embedding_dim)

    def embed_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        """``embed_images`` after ``pixel_preparer``: rows for an (N, C, H, W) array it returned."""
        return embed_pixel_batches(pixel_values, self._image_forward, self.batch_size, self.device,
                                   self.embedding_dim)
