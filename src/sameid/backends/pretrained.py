"""Loading transformers models by hub id or local folder, offline unless the user allows downloads.

A backend never reaches the network on its own: ``from_pretrained`` gets ``local_files_only=True`` unless the
environment sets ``SAMEID_ALLOW_DOWNLOAD=1``. A model that is not on the machine becomes a
:class:`~sameid.errors.MissingModelError` whose one line says which model and how to fetch it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import MissingModelError, SameIdError

ALLOW_DOWNLOAD_ENV = "SAMEID_ALLOW_DOWNLOAD"


def downloads_allowed() -> bool:
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip() == "1"


def _looks_like_path(source: str) -> bool:
    # A hub id is "name" or "owner/name"; anything rooted, relative-dotted or with a backslash is a folder.
    return source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1


def missing_model_message(what: str, source: str, cause: BaseException | None = None) -> str:
    if _looks_like_path(source) or Path(source).expanduser().exists():
        how = f"no usable model folder at {source}: pass a folder written by save_pretrained or huggingface-cli download"
    else:
        how = (
            f"{source!r} is not in the local Hugging Face cache: run `huggingface-cli download {source}` on a "
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


def embed_image_batches(images, image_processor, forward, batch_size: int, device, dim: int):
    """Run ``forward(pixel_values) -> (B, D) tensor`` over ``images`` in batches; L2-normalised float32 rows.

    The one batching loop of the transformers image embedders (CLIP, DINO): they differ only in ``forward``.
    """
    import numpy as np
    import torch

    from .base import l2_normalise

    out = []
    for start in range(0, len(images), batch_size):
        batch = [image.convert("RGB") for image in images[start:start + batch_size]]
        pixels = image_processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
        with torch.inference_mode():
            out.append(forward(pixels).float().cpu().numpy())
    return l2_normalise(np.concatenate(out)) if out else np.zeros((0, dim), np.float32)
