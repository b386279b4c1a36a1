"""The named colour vocabulary: the one place sameid turns pixels or answer words into colour names.

RetriBooru groups images of one character and artist by the answer to "List top two colors of the character's
cloths" and matches answers strictly, order included (RetriBooru, arXiv 2312.02521, appendix A.1,
"Clustering clothes"). For a strict match to mean anything, both sides must speak the same small vocabulary: the
eleven basic colour terms of English (Berlin & Kay, 1969), which are also what a VQA model answers when asked for
"colors". :func:`name_colors` names pixels with it (nearest reference colour in CIELAB, several references per
name so that dark and light shades keep their name) and :func:`normalize_color_word` maps the words a VQA model
uses ("grey", "navy", "light blue", "violet") onto it.
"""

from __future__ import annotations

import re

import cv2
import numpy as np

#: The vocabulary, in a fixed order: :func:`name_colors` returns indices into it.
COLOR_NAMES: tuple[str, ...] = (
    "black", "white", "gray", "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown",
)

# Reference colours (sRGB) per name. Several per name so that the shaded and the light variant of a colour keep
# its name; the boundaries between names are the midpoints between references in CIELAB.
_REFERENCES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "black": ((0, 0, 0), (35, 35, 40)),
    "white": ((255, 255, 255), (228, 228, 232)),
    "gray": ((128, 128, 128), (92, 92, 96), (165, 165, 170)),
    "red": ((220, 30, 40), (150, 20, 30), (255, 80, 80)),
    "orange": ((255, 140, 0), (230, 110, 40), (255, 175, 90)),
    "yellow": ((255, 225, 40), (225, 190, 40), (250, 240, 150)),
    "green": ((40, 170, 70), (20, 100, 40), (140, 210, 120), (100, 130, 40), (40, 160, 140)),
    "blue": ((30, 70, 200), (20, 30, 100), (100, 170, 240), (40, 130, 200)),
    "purple": ((130, 50, 180), (80, 30, 110), (180, 140, 220)),
    "pink": ((255, 150, 190), (240, 90, 160), (250, 200, 215)),
    "brown": ((120, 70, 30), (70, 40, 20), (170, 120, 70), (210, 180, 140)),
}

# Words a VQA model (or a tagger) uses for a colour, mapped onto the vocabulary.
_SYNONYMS: dict[str, str] = {
    "grey": "gray", "silver": "gray", "charcoal": "gray", "ash": "gray",
    "violet": "purple", "lavender": "purple", "lilac": "purple", "indigo": "purple", "plum": "purple",
    "mauve": "purple",
    "magenta": "pink", "fuchsia": "pink", "rose": "pink", "salmon": "pink",
    "crimson": "red", "scarlet": "red", "maroon": "red", "burgundy": "red", "wine": "red", "ruby": "red",
    "navy": "blue", "cyan": "blue", "azure": "blue", "turquoise": "blue", "aqua": "blue", "cobalt": "blue",
    "sapphire": "blue",
    "teal": "green", "olive": "green", "lime": "green", "emerald": "green", "mint": "green", "khaki": "green",
    "gold": "yellow", "golden": "yellow", "blond": "yellow", "blonde": "yellow", "lemon": "yellow",
    "amber": "orange", "tangerine": "orange", "peach": "orange",
    "beige": "brown", "tan": "brown", "chocolate": "brown", "bronze": "brown", "copper": "brown", "camel": "brown",
    "cream": "white", "ivory": "white", "snow": "white",
    "ebony": "black", "jet": "black",
}

# Modifiers that do not change the basic name ("light blue" is blue, "dark-green" is green).
_MODIFIERS = frozenset({"light", "dark", "pale", "bright", "deep", "pastel", "hot", "baby", "sky", "royal",
                        "neon", "dull", "muted", "vivid", "soft", "off"})

_REF_NAMES = np.array([COLOR_NAMES.index(name) for name, refs in _REFERENCES.items() for _ in refs], dtype=np.int64)


def rgb_to_lab(rgb_pixels: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 sRGB -> (N, 3) float32 CIELAB (L in 0..100), with OpenCV's D65 conversion."""
    rgb = np.asarray(rgb_pixels, dtype=np.uint8).reshape(-1, 1, 3)
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3)


_REF_LAB = rgb_to_lab(np.array([rgb for refs in _REFERENCES.values() for rgb in refs], dtype=np.uint8))


def name_colors(rgb_pixels: np.ndarray, competing: np.ndarray | None = None) -> np.ndarray:
    """Index into :data:`COLOR_NAMES` of each (N, 3) uint8 RGB pixel: the name of its nearest reference in CIELAB.

    ``competing`` (M, 3) RGB colours that are not clothing colours (a character's skin) take part in the
    nearest-reference search; a pixel nearest to one of them gets -1. Competing instead of a distance threshold
    keeps a white shirt white next to pale skin: it is nearer to white than to the skin.
    """
    pixels = np.asarray(rgb_pixels)
    if pixels.size == 0:
        return np.zeros(0, dtype=np.int64)
    references, names = _REF_LAB, _REF_NAMES
    if competing is not None and len(competing):
        references = np.concatenate([references, rgb_to_lab(np.asarray(competing, dtype=np.uint8))])
        names = np.concatenate([names, np.full(len(competing), -1, dtype=np.int64)])
    # Name each distinct colour once: a drawing has few, a JPEG some thousands, an image many more pixels.
    packed = pixels.reshape(-1, 3).astype(np.int32) @ np.array([65536, 256, 1], dtype=np.int32)
    colours, inverse = np.unique(packed, return_inverse=True)
    lab = rgb_to_lab(np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=1).astype(np.uint8))
    distances = ((lab[:, None, :] - references[None, :, :]) ** 2).sum(axis=2)
    return names[distances.argmin(axis=1)][inverse.reshape(-1)]


def color_name(rgb: tuple[int, int, int]) -> str:
    """The vocabulary name of one RGB colour."""
    return COLOR_NAMES[int(name_colors(np.array([rgb], dtype=np.uint8))[0])]


def is_color_modifier(token: str) -> bool:
    """True for a word that qualifies a colour without naming one ("light", "dark", "pale", ...)."""
    return token.lower() in _MODIFIERS


def normalize_color_word(word: str) -> str | None:
    """The vocabulary name of a colour word or phrase ("Grey" -> "gray", "light-blue" -> "blue"), or None."""
    tokens = [token for token in re.split(r"[^a-z]+", word.lower()) if token]
    for token in reversed(tokens):  # the head of an English colour phrase is its last word
        if token in COLOR_NAMES:
            return token
        if token in _SYNONYMS:
            return _SYNONYMS[token]
        if token.endswith("ish"):  # "reddish", "greyish", "bluish"
            stem = token[:-3]
            for candidate in (stem, stem + "e", stem[:-1] if stem[-1:] == stem[-2:-1] else stem):
                if candidate in COLOR_NAMES or candidate in _SYNONYMS:
                    return _SYNONYMS.get(candidate, candidate)
        if token not in _MODIFIERS:
            return None
    return None
