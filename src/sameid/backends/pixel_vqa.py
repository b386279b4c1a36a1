"""A VQA backend that answers one question, the colours of the character's clothes, from pixels.

RetriBooru asks Instruct-BLIP "List top two colors of the character's cloths" for every image of a character and
artist, and groups images whose answers match exactly, order included ("black and pink" is not "pink and
black"): RetriBooru, arXiv 2312.02521, appendix A.1 "Clustering clothes". :class:`PixelColorVQA`
(``pixel-colors``) gives the same kind of answer without a model, for drawn figures on plain backgrounds:

1. the clothes are the figure mask below the lower border of the head box (both from ``annotations``, else from
   :class:`~sameid.backends.figure.GrabCutSegmenter` and :class:`~sameid.backends.figure.MaskTopHeadDetector`);
2. hair is left out: pixels of the hair colour (read from the top of the head box) that hang down from the head
   below its box;
3. skin is left out: the skin colour is read from the face (the middle of the head box, hair left out) and
   competes with the named reference colours, so a pixel nearer the skin than to any named colour is skin;
4. outlines and anti-aliased edges are left out: each colour's region is opened morphologically, so only areas
   wider than a line count;
5. the answer is the two colour names (:mod:`sameid.backends.colors`) with the largest areas, largest first:
   ``"<first> and <second>"``, or one name when no second colour covers a noticeable part of the clothes.

Any other question raises :class:`SameIdError`: use a VQA model (``--vqa transformers:<model id>``).
"""

from __future__ import annotations

import re

import cv2
import numpy as np
from PIL import Image

from ..errors import SameIdError
from .base import Annotations, VQABackend
from .colors import COLOR_NAMES, name_colors, rgb_to_lab
from .figure import MaskTopHeadDetector
from .registry import create_backend

_COLOR_WORDS = re.compile(r"\bcolou?rs?\b")
_CLOTHES_WORDS = re.compile(r"\b(cloth|clothes|clothing|cloths|outfits?|garments?|attire|costumes?|dress(es)?|"
                            r"wear(ing|s)?|apparel|uniforms?)\b")

# Shares of the face's skin colour that still count as skin (shadowed skin).
_SKIN_SHADES = (1.0, 0.88)
# A second colour must cover at least this share of the counted clothes pixels to be named.
_MIN_SECOND_SHARE = 0.06
# Pixels within this CIELAB distance of the hair colour may be hair.
_HAIR_DELTA_E = 14.0


def is_clothing_color_question(question: str) -> bool:
    """True for "List top two colors of the character's clothes" and its close variants."""
    text = question.lower()
    return bool(_COLOR_WORDS.search(text) and _CLOTHES_WORDS.search(text))


def _dominant_rgb(pixels: np.ndarray, radius: float = 8.0, max_colours: int = 800) -> np.ndarray | None:
    """The most common colour of (N, 3) uint8 pixels, or None when there are none.

    The densest point in CIELAB (most pixels within ``radius``) and the mean of its neighbours: unlike a
    histogram bin, a colour that JPEG noise spreads across a bin border is not split in two.
    """
    if len(pixels) == 0:
        return None
    colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    if len(colours) > max_colours:  # keep the most frequent colours (stable order: deterministic)
        keep = np.sort(np.argsort(-counts, kind="stable")[:max_colours])
        colours, counts = colours[keep], counts[keep]
    lab = rgb_to_lab(colours)
    near = ((lab[:, None, :] - lab[None, :, :]) ** 2).sum(axis=2) < radius**2
    densest = int(np.argmax(near.astype(np.int64) @ counts))
    weights = counts * near[densest]
    return (colours.astype(np.float64) * weights[:, None]).sum(axis=0) / weights.sum()


class PixelColorVQA(VQABackend):
    """Answers "List top two colors of the character's clothes" from pixels (003, appendix A.1).

    ``segmenter`` (the spec argument, ``pixel-colors:mediapipe-selfie``) is used only when no mask is given.
    """

    def __init__(self, segmenter: str = "grabcut", min_second_share: float = _MIN_SECOND_SHARE):
        self.segmenter_spec = segmenter
        self.min_second_share = float(min_second_share)
        self.head_detector = MaskTopHeadDetector(segmenter)

    def answer(self, image: Image.Image, question: str, annotations: Annotations | None = None) -> str:
        if not is_clothing_color_question(question):
            raise SameIdError(f"the pixel-colors VQA backend only answers questions about the colours of the "
                              f"character's clothes, not {question!r}; use a VQA model: --vqa "
                              "transformers:<model id> (for example transformers:Salesforce/blip-vqa-base)")
        names = self.clothing_colors(image, annotations)
        return " and ".join(names[:2])

    def clothing_colors(self, image: Image.Image, annotations: Annotations | None = None) -> list[str]:
        """Colour names of the clothes, largest area first: the first, and the others that cover a noticeable
        share (``min_second_share``) of the counted clothes pixels."""
        areas = self.clothing_color_areas(image, annotations)
        total = sum(area for _, area in areas)
        return [name for rank, (name, area) in enumerate(areas) if rank == 0 or area >= self.min_second_share * total]

    def clothing_color_areas(self, image: Image.Image, annotations: Annotations | None = None
                             ) -> list[tuple[str, int]]:
        """(colour name, pixel count) of every colour found on the clothes, largest first; [] when none."""
        pixels = np.asarray(image.convert("RGB"))
        height, width = pixels.shape[:2]
        mask = annotations.mask if annotations is not None else None
        if mask is None:
            mask = create_backend("segmenter", self.segmenter_spec).segment(image)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (height, width):
            mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        head_box = annotations.head_box if annotations is not None else None
        if head_box is None:
            detections = self.head_detector.detect_in_mask(mask)
            head_box = detections[0].box if detections else None
        if not mask.any() or head_box is None:
            return []
        x0, y0, x1, y1 = (int(round(v)) for v in head_box)
        x0, x1 = max(0, min(x0, width - 1)), max(1, min(x1, width))
        y0, y1 = max(0, min(y0, height - 1)), max(1, min(y1, height))
        if x1 <= x0 or y1 <= y0:
            return []

        box = (x0, y0, x1, y1)
        top_band = np.zeros_like(mask)
        top_band[y0:y0 + max(1, int(0.3 * (y1 - y0))), x0:x1] = True
        hair = _dominant_rgb(pixels[top_band & mask])
        hair_like = _similar_to(pixels, hair, _HAIR_DELTA_E) & mask if hair is not None else np.zeros_like(mask)
        clothes = mask.copy()
        clothes[:y1] = False
        clothes &= ~_connected_below(hair_like, top_band, y1)
        if not clothes.any():
            return []
        skin = self._skin_rgb(pixels, mask & ~hair_like, box)
        skin_shades = None if skin is None else np.array([skin * share for share in _SKIN_SHADES]).round()
        labels = np.full((height, width), -1, dtype=np.int64)
        labels[clothes] = name_colors(pixels[clothes], competing=skin_shades)

        # Opening drops regions thinner than the kernel: outlines, anti-aliased and JPEG-blurred edges. Line
        # widths grow with the drawing, so the kernel grows with the head (3 px for a 40 px head).
        kernel_size = 2 * max(1, int(round((y1 - y0) / 30))) + 1
        kernel = np.ones((kernel_size, kernel_size), np.uint8)
        areas = []
        for index in np.unique(labels[labels >= 0]):
            region = (labels == index).astype(np.uint8)
            area = int(np.count_nonzero(cv2.morphologyEx(region, cv2.MORPH_OPEN, kernel)))
            if area:
                areas.append((COLOR_NAMES[int(index)], area))
        return sorted(areas, key=lambda item: (-item[1], COLOR_NAMES.index(item[0])))

    @staticmethod
    def _skin_rgb(pixels: np.ndarray, not_hair: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray | None:
        """The face's colour: the dominant colour of the middle of the head box below the hairline, hair left out."""
        x0, y0, x1, y1 = box
        head_height, head_width = y1 - y0, x1 - x0
        face = np.zeros_like(not_hair)
        face[y0 + int(0.3 * head_height):y1, x0 + int(0.2 * head_width):x1 - int(0.2 * head_width)] = True
        return _dominant_rgb(pixels[face & not_hair])


def _similar_to(pixels: np.ndarray, rgb: np.ndarray, delta_e: float) -> np.ndarray:
    """Pixels of an (H, W, 3) image within ``delta_e`` (CIELAB) of one colour."""
    lab = rgb_to_lab(pixels.reshape(-1, 3)).reshape(pixels.shape)
    target = rgb_to_lab(np.clip(rgb, 0, 255).round().astype(np.uint8)[None])[0]
    return ((lab - target) ** 2).sum(axis=2) < delta_e**2


def _connected_below(hair_like: np.ndarray, head_top: np.ndarray, head_bottom: int) -> np.ndarray:
    """Hair-coloured pixels below row ``head_bottom`` that hang from the hair at the top of the head box."""
    below = np.zeros_like(hair_like)
    # Opening first: thin outlines of a similar colour must not link the hair to a garment.
    opened = cv2.morphologyEx(hair_like.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, components = cv2.connectedComponents(opened, connectivity=8)
    if count <= 1:
        return below
    hair_components = np.unique(components[head_top & (components > 0)])
    below[head_bottom:] = np.isin(components[head_bottom:], hair_components)
    return below
