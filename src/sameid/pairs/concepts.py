"""Concept crops of a reference image: "face", "clothes" or "figure" (RetriBooru, arXiv 2312.02521, §5, A.4).

"face" is the head box. "clothes" is the region below the head box's lower horizontal border (the paper crops out
everything above it). The paper keeps the whole image, captioned "figure", when the head box covers most of the
image or the character is upside-down (then nothing, or almost nothing, lies below the head); we also fall back
when there is no usable head box. Each fallback carries a reason, so ``sameid audit`` can count them.

Figure masks (``PairsConfig.concept_masks``, on by default): the paper separates the concepts of a figure with its
segmentation mask and head box (A.1 "Vision annotations": masks and boxes "separate different concepts of an anime
character into whole figure, clothes, and face"; A.4: "cloth images and masks"). So where a reference has a figure
mask, its "figure" and "clothes" crops keep only the figure's pixels; the rest becomes the padding colour
(:func:`apply_figure_mask`). A "face" crop stays the head-box rectangle, hair and background included: the head box
alone separates the face, and A.4 calls cropping it "straightforward". A "figure" fallback is masked like any
"figure" reference. A reference without a mask keeps its rectangle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..references import PADDING_VALUE

CONCEPTS = ("face", "clothes", "figure")
#: The concepts whose crops keep only the figure's pixels when a figure mask is known.
MASKED_CONCEPTS = ("clothes", "figure")
#: Head-box area over image area above which "clothes" falls back to "figure" (a face close-up).
DEFAULT_MAX_HEAD_FRACTION = 0.5
#: The clothes crop must keep at least this fraction of the image height (and 8 pixels), else "figure".
DEFAULT_MIN_CLOTHES_FRACTION = 0.2
_MIN_CROP_PIXELS = 8

NO_HEAD_BOX = "no head box"
DEGENERATE_HEAD_BOX = "head box outside the image or empty"
HEAD_COVERS_IMAGE = "head box covers most of the image"
CLOTHES_DEGENERATE = "clothes crop degenerate (head at the bottom: upside-down or cropped body)"


@dataclass(frozen=True)
class ConceptCrop:
    """The crop to take: ``concept`` is what the reference is captioned; ``requested`` what the task asked for.

    ``box`` is (x0, y0, x1, y1) in integer pixels, x1/y1 exclusive; ``fallback`` says why ``concept`` differs
    from ``requested`` (None when it does not).
    """

    requested: str
    concept: str
    box: tuple[int, int, int, int]
    fallback: str | None = None


def concept_crop(requested: str, head_box, width: int, height: int,
                 max_head_fraction: float = DEFAULT_MAX_HEAD_FRACTION,
                 min_clothes_fraction: float = DEFAULT_MIN_CLOTHES_FRACTION) -> ConceptCrop:
    """Where to crop an image of ``width`` x ``height`` for ``requested`` given its ``head_box`` (or None)."""
    if requested not in CONCEPTS:
        raise ValueError(f"unknown concept {requested!r}; choose one of: {', '.join(CONCEPTS)}")
    whole = (0, 0, int(width), int(height))
    if requested == "figure":
        return ConceptCrop(requested, "figure", whole)
    if head_box is None:
        return ConceptCrop(requested, "figure", whole, NO_HEAD_BOX)
    x0, y0, x1, y1 = head_box
    # Floor the start and ceil the end so the crop holds the whole head box.
    left, top = max(0, int(x0)), max(0, int(y0))
    right, bottom = min(int(width), -int(-x1 // 1)), min(int(height), -int(-y1 // 1))
    if right - left < 1 or bottom - top < 1:
        return ConceptCrop(requested, "figure", whole, DEGENERATE_HEAD_BOX)
    if requested == "face":
        return ConceptCrop(requested, "face", (left, top, right, bottom))
    if (right - left) * (bottom - top) > max_head_fraction * width * height:
        return ConceptCrop(requested, "figure", whole, HEAD_COVERS_IMAGE)
    if height - bottom < max(_MIN_CROP_PIXELS, min_clothes_fraction * height):
        return ConceptCrop(requested, "figure", whole, CLOTHES_DEGENERATE)
    return ConceptCrop(requested, "clothes", (0, bottom, int(width), int(height)))



def apply_figure_mask(image: np.ndarray, mask: np.ndarray, padding: int = PADDING_VALUE) -> np.ndarray:
    """A copy of the (H, W, 3) uint8 ``image`` whose pixels outside the boolean (H, W) figure ``mask`` are
    ``padding`` (the letterbox's white, so a masked-out pixel looks like padding)."""
    if mask.shape != image.shape[:2]:
        raise ValueError(f"figure mask of shape {mask.shape} for an image of shape {image.shape[:2]}")
    return np.where(mask[:, :, None], image, np.uint8(padding))
