"""The one way sameid opens an image file: safely, completely, as 8-bit RGB, or with a reason why not.

Every stage that reads pixels (build, pairs, evaluate) goes through :func:`load_image`, so a corrupt, truncated,
zero-byte, CMYK, RGBA, 16-bit or over-large file is handled the same everywhere, and the reason string it gives
is what ``rejected.parquet`` records.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

# Decoded pixels above this are refused before decoding (a decompression bomb costs memory on every worker).
DEFAULT_MAX_PIXELS = 64_000_000

# Reason codes, shared by rejected.parquet and the tests.
MISSING = "missing file"
EMPTY = "empty file"
OUTSIDE_ROOT = "path outside image root"
UNREADABLE = "unreadable image"
TRUNCATED = "truncated image"
TOO_LARGE = "image too large"


def resolve_inside(root: str | os.PathLike, relative: str) -> Path:
    """Join ``relative`` to ``root`` and refuse a result that escapes ``root`` (``..``, absolute paths, symlinks)."""
    root_path = Path(root).resolve()
    candidate = (root_path / relative).resolve()
    if candidate != root_path and root_path not in candidate.parents:
        raise ImageError(OUTSIDE_ROOT, f"{relative!r} resolves to {candidate}, outside {root_path}")
    return candidate


@dataclass(frozen=True)
class ImageInfo:
    """What was true of the file before conversion to RGB."""

    mode: str
    width: int
    height: int


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, ImageInfo]:
    """Open ``path`` fully and return it as 8-bit RGB with EXIF orientation applied.

    Transparent images are composited on white (the convention of figure datasets, whose backgrounds are
    white); 16-bit and float images are rescaled to their own range; CMYK and palette images are converted.
    Raises :class:`ImageError` with one of the reason codes of this module.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(MISSING, str(path)) from None
    except OSError as exc:
        raise ImageError(UNREADABLE, f"{path}: {exc}") from None
    if not path.is_file():
        raise ImageError(MISSING, f"{path} is not a file")
    if size == 0:
        raise ImageError(EMPTY, str(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise ImageError(TOO_LARGE, f"{path}: {width}x{height} exceeds {max_pixels} pixels")
                opened.load()
                info = ImageInfo(mode=opened.mode, width=width, height=height)
                image = _to_rgb(ImageOps.exif_transpose(opened))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(TOO_LARGE, f"{path}: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(UNREADABLE, f"{path} is not an image PIL can identify") from None
    except OSError as exc:
        reason = TRUNCATED if "truncated" in str(exc).lower() or "broken data stream" in str(exc).lower() else UNREADABLE
        raise ImageError(reason, f"{path}: {exc}") from None
    except (ValueError, SyntaxError) as exc:  # malformed headers surface as these in some PIL plugins
        raise ImageError(UNREADABLE, f"{path}: {exc}") from None
    return image, info


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = np.zeros_like(array) if high <= low else (array - low) / (high - low) * 255.0
        return Image.fromarray(scaled.round().astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_mask(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """A single-channel figure mask as a boolean array (pixel > 127), resized to ``size`` (w, h) if given."""
    image, _ = load_image(path)
    mask = image.convert("L")
    if size is not None and mask.size != tuple(size):
        mask = mask.resize(tuple(size), Image.NEAREST)
    return np.asarray(mask) > 127


def save_mask(mask: np.ndarray, path: str | os.PathLike) -> None:
    """Write a boolean mask as an 8-bit PNG atomically (a killed run never leaves half a mask)."""
    from .atomic import write_atomic

    image = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"), suffix=".png")


def perceptual_hash(image: Image.Image) -> str:
    """64-bit DCT perceptual hash as 16 hex digits (imagehash.phash)."""
    import imagehash

    return str(imagehash.phash(image))


def hamming_distance(hash_a: str, hash_b: str) -> int:
    """Bits that differ between two hex perceptual hashes."""
    return (int(hash_a, 16) ^ int(hash_b, 16)).bit_count()


def is_monochrome(image: Image.Image, saturation_threshold: float = 0.08, colored_fraction: float = 0.02) -> bool:
    """True when (almost) no pixel carries color: greyscale, sketches and single-ink drawings."""
    small = image.copy()
    small.thumbnail((128, 128))
    hsv = np.asarray(small.convert("HSV"), dtype=np.float32) / 255.0
    colored = (hsv[..., 1] > saturation_threshold) & (hsv[..., 2] > 0.15)
    return float(colored.mean()) < colored_fraction
