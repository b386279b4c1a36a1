"""The bundled sample collection: a small Danbooru-style collection, drawn on demand, with its ground truth.

It stands in for Danbooru 2019 Figures, the source RetriBooru is built from (RetriBooru, arXiv 2312.02521, section 3 "RetriBooru Dataset" and appendix A.1), so that the whole flow (filter,
annotate, group by the answer to "List top two colors of the character's clothes", write) can run and be checked
on any machine, offline, without shipping images in git. Everything is generated from a seed with PIL:

- simple anime-like standing figures (head with hair in the character's colour, top garment with sleeves, lower
  garment or dress, legs, shoes) in varied poses, positions and scales, on plain, gradient or low-contrast
  patterned backgrounds;
- 12 characters, 4 artists (each with their own outline width and colour, shading and head proportion), each
  character drawn by 2 artists in 2 outfits; an identity is (character, artist, outfit), with 4 images each.
  One character wears the same two colours in both outfits in the opposite order of area (mostly black with pink,
  mostly pink with black): RetriBooru's answer matching is order sensitive, so these must not be merged;
- Danbooru metadata (``metadata.jsonl``) with tags as strings or JSON lists, images named by md5 or by id, png
  and jpg, precomputed ``head_box`` and ``mask`` on about a third of the good rows;
- planted bad inputs (a missing, a corrupt and a zero-byte file, two characters, a monochrome image, no clothing
  tag, a path that escapes the image root, an explicit rating) and near-duplicates (a re-encoded, a slightly
  resized or a slightly brightened copy of another image of the same identity);
- ``ground_truth.csv``: the identity of every row and what was planted.

The same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from ..backends.colors import rgb_to_lab
from ..errors import SameIdError
from ..images import save_mask
from ..records import SAMPLE_README_MARKER as README_MARKER
from ..records import is_generated_sample
from ..sources.world import PALETTE

#: What :func:`make_sample` writes at the top of its directory (and removes when it regenerates).
SAMPLE_ENTRIES = ("README.md", "metadata.jsonl", "ground_truth.csv", "images", "outside.png")

#: Values of the ``plant`` column of ``ground_truth.csv``.
PLANTS = ("missing", "corrupt", "empty", "two_characters", "monochrome", "no_clothing", "outside_root",
          "unsafe_rating", "near_duplicate", "two_subjects", "same_character_twice", "three_figures")
#: The multi-subject images (appended after every other row, so the rest of the sample is byte-identical to a
#: sample made before they existed): ``two_subjects`` shows two characters of one artist side by side, each with
#: its outfit (``ground_truth.csv`` names them left to right in ``character`` and ``outfit``, space-separated);
#: ``same_character_twice`` is tagged with two characters but shows the first one twice, ``three_figures`` is
#: tagged with two characters but shows three figures: a build must reject both rather than guess.
MULTI_SUBJECT_PLANTS = ("two_subjects", "same_character_twice", "three_figures")
TWO_SUBJECT_IMAGES_PER_ARTIST = 6
#: Clothing tags the sample uses (all in the clothing vocabulary).
CLOTHING_TAGS = frozenset({"shirt", "skirt", "dress", "jacket", "pants", "hoodie", "sweater", "shorts", "coat",
                           "t-shirt", "blouse", "vest", "school_uniform", "serafuku", "kimono"})
GROUND_TRUTH_COLUMNS = ("id", "character", "artist", "outfit", "identity", "plant", "near_duplicate_of")
IMAGES_PER_IDENTITY = 4


@dataclass(frozen=True)
class SamplePaths:
    """Where a generated sample lies."""

    root: Path
    metadata: Path  # metadata.jsonl (Danbooru-style JSON lines)
    image_root: Path  # images/ (and images/masks/)
    ground_truth: Path  # ground_truth.csv


# --- the cast ---------------------------------------------------------------------------------------------

# Garment colours, one per vocabulary name; chosen so that the colour, its shade and its JPEG-compressed edges
# keep their vocabulary name (tests/test_figure_backends.py checks it).
GARMENT_RGB: dict[str, tuple[int, int, int]] = {
    "black": (38, 36, 42), "white": (244, 244, 240), "gray": (128, 128, 134), **PALETTE, "brown": (125, 78, 45),
}
HAIR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (40, 36, 48), "brown": (120, 80, 50), "blonde": (246, 216, 120), "red": (196, 52, 52),
    "blue": (70, 110, 205), "pink": (246, 160, 196), "white": (236, 236, 244), "green": (80, 168, 110),
    "purple": (150, 100, 200), "orange": (240, 140, 60), "grey": (160, 160, 170),
}
SKIN_RGB = ((255, 226, 206), (246, 208, 180), (214, 168, 130))
EYE_RGB = {"blue": (50, 90, 200), "green": (40, 140, 70), "red": (190, 30, 40), "brown": (110, 60, 30),
           "purple": (120, 60, 170)}


@dataclass(frozen=True)
class GarmentStyle:
    """How an outfit is cut: which parts are in the main colour and which in the second, and its tags."""

    tags: tuple[str, ...]
    top_length: str  # waist | hip | long | knee
    sleeves: str  # long | short | wide
    lower: str  # skirt | pants | shorts | dress_skirt | kimono_skirt
    extras: tuple[str, ...] = ()  # hood | sailor_collar | bolero | obi


GARMENT_STYLES: dict[str, GarmentStyle] = {
    "shirt_skirt": GarmentStyle(("shirt", "skirt"), "waist", "long", "skirt"),
    "blouse_skirt": GarmentStyle(("blouse", "skirt"), "hip", "long", "short_skirt"),
    "sweater_skirt": GarmentStyle(("sweater", "skirt"), "hip", "long", "skirt"),
    "tshirt_shorts": GarmentStyle(("t-shirt", "shorts"), "long", "short", "shorts"),
    "hoodie_shorts": GarmentStyle(("hoodie", "shorts"), "long", "long", "shorts", ("hood",)),
    "hoodie_pants": GarmentStyle(("hoodie", "pants"), "long", "long", "pants", ("hood",)),
    "jacket_pants": GarmentStyle(("jacket", "pants"), "long", "long", "pants"),
    "coat_pants": GarmentStyle(("coat", "pants"), "knee", "long", "pants"),
    "school_uniform": GarmentStyle(("school_uniform", "jacket", "skirt"), "hip", "long", "short_skirt"),
    "serafuku": GarmentStyle(("serafuku", "school_uniform", "skirt"), "hip", "long", "short_skirt",
                             ("sailor_collar",)),
    "dress": GarmentStyle(("dress", "jacket"), "waist", "second_long", "dress_skirt", ("bolero",)),
    "kimono": GarmentStyle(("kimono",), "waist", "wide", "kimono_skirt", ("obi",)),
}


@dataclass(frozen=True)
class Outfit:
    style: str
    main: str  # the colour of the larger area
    second: str
    shoes: str  # a garment colour name

    @property
    def label(self) -> str:
        return f"{self.main}_{self.second}_{self.style}"


@dataclass(frozen=True)
class Character:
    name: str
    gender: str  # girl | boy
    hair: str
    hairstyle: str  # short | bob | spiky | buns | ponytail
    skin: int
    eyes: str
    outfits: tuple[Outfit, Outfit]


CHARACTERS: tuple[Character, ...] = (
    Character("akane_(sample)", "girl", "red", "bob", 0, "brown",
              (Outfit("serafuku", "white", "blue", "brown"), Outfit("sweater_skirt", "yellow", "brown", "brown"))),
    # The order-sensitive pair: the same two colours, in the opposite order of area.
    Character("mio_(sample)", "girl", "blonde", "short", 0, "blue",
              (Outfit("shirt_skirt", "black", "pink", "black"), Outfit("dress", "pink", "black", "black"))),
    Character("rin_(sample)", "girl", "blue", "ponytail", 1, "green",
              (Outfit("school_uniform", "brown", "gray", "brown"), Outfit("tshirt_shorts", "white", "green",
                                                                          "green"))),
    Character("haru_(sample)", "boy", "brown", "spiky", 1, "brown",
              (Outfit("hoodie_pants", "green", "black", "brown"), Outfit("jacket_pants", "blue", "gray", "gray"))),
    Character("yuki_(sample)", "girl", "white", "bob", 0, "red",
              (Outfit("kimono", "red", "yellow", "yellow"), Outfit("coat_pants", "purple", "black", "black"))),
    Character("sora_(sample)", "boy", "black", "short", 2, "blue",
              (Outfit("tshirt_shorts", "orange", "blue", "blue"), Outfit("coat_pants", "gray", "brown", "brown"))),
    Character("nana_(sample)", "girl", "pink", "buns", 0, "purple",
              (Outfit("blouse_skirt", "white", "purple", "purple"), Outfit("hoodie_shorts", "yellow", "blue",
                                                                           "blue"))),
    Character("kaito_(sample)", "boy", "green", "short", 1, "red",
              (Outfit("jacket_pants", "black", "white", "black"), Outfit("hoodie_pants", "red", "gray", "brown"))),
    Character("emi_(sample)", "girl", "purple", "ponytail", 2, "blue",
              (Outfit("dress", "blue", "white", "white"), Outfit("serafuku", "white", "red", "red"))),
    Character("riko_(sample)", "girl", "orange", "short", 1, "green",
              (Outfit("sweater_skirt", "green", "white", "white"), Outfit("kimono", "pink", "green", "green"))),
    Character("taro_(sample)", "boy", "grey", "spiky", 0, "brown",
              (Outfit("coat_pants", "brown", "black", "black"), Outfit("hoodie_shorts", "blue", "white", "blue"))),
    Character("hina_(sample)", "girl", "brown", "bob", 2, "purple",
              (Outfit("school_uniform", "black", "red", "black"), Outfit("blouse_skirt", "pink", "blue", "blue"))),
)


@dataclass(frozen=True)
class ArtistStyle:
    name: str
    outline_px: int  # outline width at twice the output size
    outline_rgb: tuple[int, int, int]
    shade: float  # 1.0 = flat colours
    shade_side: int  # +1: shadow on the figure's left (viewer's right), -1: the other side
    head_count: float  # figure height in heads


ARTISTS: tuple[ArtistStyle, ...] = (
    ArtistStyle("kumo_pen_(sample)", 3, (28, 24, 30), 0.84, 1, 5.6),
    ArtistStyle("mizu_ink_(sample)", 2, (72, 48, 40), 1.0, 1, 6.3),
    ArtistStyle("sora_brush_(sample)", 4, (40, 36, 70), 0.82, -1, 5.2),
    ArtistStyle("hoshi_paint_(sample)", 3, (20, 20, 24), 0.88, 1, 6.8),
)

HAIRSTYLE_TAGS = {"short": "short_hair", "bob": "bob_cut", "spiky": "spiked_hair", "buns": "double_bun",
                  "ponytail": "ponytail"}

# Light backgrounds (name, RGB); each image takes those far in CIELAB from every colour of its figure.
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250), "pale_blue": (208, 226, 246), "mint": (212, 240, 220), "lavender": (228, 218, 246),
    "pale_yellow": (248, 244, 210), "light_gray": (224, 224, 228), "rose": (246, 224, 232),
    "sky": (176, 204, 234), "sage": (186, 214, 186), "lilac": (206, 190, 230), "aqua": (190, 230, 232),
}
BACKGROUND_TAGS = {"white": "white_background", "pale_blue": "blue_background", "sky": "blue_background",
                   "mint": "green_background", "sage": "green_background", "lavender": "purple_background",
                   "lilac": "purple_background", "pale_yellow": "yellow_background", "light_gray": "grey_background",
                   "rose": "pink_background", "aqua": "aqua_background"}
_MIN_BACKGROUND_DELTA_E = 20.0

# Part labels of the figure drawing (index into a per-figure colour table).
_BG, _OUTLINE, _SKIN, _HAIR, _EYE_WHITE, _IRIS, _MOUTH, _MAIN, _SECOND, _SHOES = range(10)
_SHADED = (_HAIR, _MAIN, _SECOND, _SHOES)
_SHADE_OFFSET = 128


# --- drawing ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pose:
    arm_angles: tuple[float, float]  # upper arm, degrees outward from vertical (left, right)
    elbow_bends: tuple[float, float]  # forearm relative to upper arm, degrees outward
    leg_angles: tuple[float, float]  # degrees outward from vertical
    lean: float  # degrees, rotation of the whole figure


@dataclass
class _Canvas:
    """Two drawings at twice the output size: part labels, and the silhouette of the head alone."""

    unit: float
    origin: tuple[float, float]
    outline: int
    labels: Image.Image
    head: Image.Image
    draw: ImageDraw.ImageDraw = field(init=False)
    head_draw: ImageDraw.ImageDraw = field(init=False)

    def __post_init__(self):
        self.draw = ImageDraw.Draw(self.labels)
        self.head_draw = ImageDraw.Draw(self.head)

    def point(self, x: float, y: float) -> tuple[float, float]:
        return (self.origin[0] + x * self.unit, self.origin[1] + y * self.unit)

    def polygon(self, points, label: int, head: bool = False) -> None:
        xy = [self.point(x, y) for x, y in points]
        self.draw.polygon(xy, fill=label, outline=_OUTLINE, width=self.outline)
        if head:
            self.head_draw.polygon(xy, fill=255, outline=255, width=self.outline)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, label: int, head: bool = False,
                outline: bool = True) -> None:
        box = [self.point(cx - rx, cy - ry), self.point(cx + rx, cy + ry)]
        self.draw.ellipse(box, fill=label, outline=_OUTLINE if outline else None, width=self.outline)
        if head:
            self.head_draw.ellipse(box, fill=255, outline=255, width=self.outline)

    def limb(self, start, end, half_start: float, half_end: float, label: int) -> None:
        """A tapered quad from ``start`` to ``end`` (head units), rounded at the far end."""
        (x0, y0), (x1, y1) = start, end
        length = math.hypot(x1 - x0, y1 - y0) or 1.0
        nx, ny = -(y1 - y0) / length, (x1 - x0) / length
        self.ellipse(x1, y1, half_end, half_end, label)
        self.polygon([(x0 + nx * half_start, y0 + ny * half_start), (x1 + nx * half_end, y1 + ny * half_end),
                      (x1 - nx * half_end, y1 - ny * half_end), (x0 - nx * half_start, y0 - ny * half_start)],
                     label)


@dataclass(frozen=True)
class _Body:
    """Landmarks in head units: x from the body's centre line, y down from the top of the head."""

    head_count: float
    gender: str

    @property
    def ankle(self) -> float:
        return self.head_count - 0.34

    def at(self, fraction: float) -> float:
        return 1.15 + fraction * (self.ankle - 1.15)

    @property
    def shoulder(self) -> float:
        return 1.15

    @property
    def waist(self) -> float:
        return self.at(0.29)

    @property
    def hip(self) -> float:
        return self.at(0.40)

    @property
    def crotch(self) -> float:
        return self.at(0.47)

    @property
    def knee(self) -> float:
        return self.at(0.73)

    @property
    def shoulder_half(self) -> float:
        return 0.58 if self.gender == "boy" else 0.50

    @property
    def waist_half(self) -> float:
        return 0.42 if self.gender == "boy" else 0.33

    @property
    def hip_half(self) -> float:
        return 0.44


def _arm_points(body: _Body, pose: Pose, side: int):
    index = 0 if side < 0 else 1
    shoulder = (side * (body.shoulder_half - 0.09), body.shoulder + 0.12)
    upper = 0.21 * (body.ankle - 1.15)
    fore = 0.19 * (body.ankle - 1.15)
    angle = math.radians(pose.arm_angles[index])
    elbow = (shoulder[0] + side * upper * math.sin(angle), shoulder[1] + upper * math.cos(angle))
    angle2 = math.radians(pose.arm_angles[index] + pose.elbow_bends[index])
    wrist = (elbow[0] + side * fore * math.sin(angle2), elbow[1] + fore * math.cos(angle2))
    return shoulder, elbow, wrist


def _leg_points(body: _Body, pose: Pose, side: int):
    hip = (side * 0.2, body.crotch - 0.05)
    length = body.ankle - hip[1]
    angle = math.radians(pose.leg_angles[0 if side < 0 else 1])
    return hip, (hip[0] + side * length * math.sin(angle), hip[1] + length * math.cos(angle))


def _top_bottom(body: _Body, length: str) -> tuple[float, float]:
    """(y, half width) of the hem of the top garment."""
    return {
        "waist": (body.waist + 0.08, body.waist_half + 0.06),
        "hip": (body.hip, body.hip_half + 0.05),
        "long": (body.crotch + 0.2, body.hip_half + 0.1),
        "knee": (body.knee - 0.15, body.hip_half + 0.2),
    }[length]


def _torso(canvas: _Canvas, body: _Body, hem_y: float, hem_half: float, label: int) -> None:
    s, w = body.shoulder, body.shoulder_half
    canvas.polygon([(-w + 0.05, s), (-0.16, s - 0.03), (0.16, s - 0.03), (w - 0.05, s), (w, s + 0.2),
                    (body.waist_half + 0.04, body.waist), (hem_half, hem_y), (-hem_half, hem_y),
                    (-body.waist_half - 0.04, body.waist), (-w, s + 0.2)], label)


def _draw_hair_back(canvas: _Canvas, character: Character) -> None:
    style = character.hairstyle
    if style == "bob":
        arc = [(0.53 * math.cos(t), 0.42 + 0.46 * math.sin(t)) for t in np.linspace(math.pi, 2 * math.pi, 14)]
        canvas.polygon(arc + [(0.55, 0.97), (-0.55, 0.97)], _HAIR, head=True)
    else:
        canvas.ellipse(0.0, 0.42, 0.5, 0.46, _HAIR, head=True)
    if style == "ponytail":
        canvas.ellipse(0.5, 0.52, 0.17, 0.34, _HAIR, head=True)
    if style == "buns":
        for side in (-1, 1):
            canvas.ellipse(side * 0.38, 0.02, 0.17, 0.16, _HAIR, head=True)
    if style == "spiky":
        for x, y, tip in ((-0.45, 0.25, (-0.72, 0.02)), (0.45, 0.25, (0.72, 0.02)), (-0.2, -0.02, (-0.3, -0.26)),
                          (0.15, -0.03, (0.28, -0.28))):
            canvas.polygon([(x - 0.14, y + 0.1), tip, (x + 0.14, y - 0.04)], _HAIR, head=True)


def _draw_face(canvas: _Canvas, character: Character) -> None:
    canvas.ellipse(0.0, 0.55, 0.4, 0.46, _SKIN, head=True)
    for side in (-1, 1):
        canvas.ellipse(side * 0.17, 0.62, 0.08, 0.1, _IRIS, outline=False)
        canvas.ellipse(side * 0.17 - 0.025, 0.58, 0.03, 0.035, _EYE_WHITE, outline=False)
    canvas.ellipse(0.0, 0.84, 0.05, 0.02, _MOUTH, outline=False)
    arc = [(0.47 * math.cos(t), 0.42 + 0.45 * math.sin(t)) for t in np.linspace(math.pi * 1.02, 2 * math.pi * 0.99, 12)]
    fringe = [(0.42, 0.42), (0.3, 0.3), (0.18, 0.44), (0.02, 0.3), (-0.14, 0.44), (-0.28, 0.3), (-0.42, 0.42)]
    canvas.polygon(arc + fringe, _HAIR, head=True)


def _draw_figure(canvas: _Canvas, character: Character, outfit: Outfit, body: _Body, pose: Pose) -> None:
    style = GARMENT_STYLES[outfit.style]
    _draw_hair_back(canvas, character)
    if "hood" in style.extras:
        canvas.ellipse(0.0, body.shoulder - 0.02, 0.44, 0.2, _MAIN)
    canvas.polygon([(-0.12, 0.85), (0.12, 0.85), (0.12, body.shoulder + 0.05), (-0.12, body.shoulder + 0.05)],
                   _SKIN)

    legs = [_leg_points(body, pose, side) for side in (-1, 1)]
    for hip, ankle in legs:
        canvas.limb(hip, ankle, 0.17, 0.1, _SKIN)
    shoe_label = _SECOND if outfit.shoes == outfit.second else _MAIN if outfit.shoes == outfit.main else _SHOES
    for side, (_, ankle) in zip((-1, 1), legs, strict=True):
        canvas.ellipse(ankle[0] + side * 0.07, ankle[1] + 0.17, 0.19, 0.15, shoe_label)

    if style.lower in ("pants", "shorts"):
        reach = 1.0 if style.lower != "shorts" else 0.36
        canvas.polygon([(-body.waist_half - 0.03, body.waist), (body.waist_half + 0.03, body.waist),
                        (body.hip_half + 0.03, body.hip), (body.hip_half, body.crotch + 0.1),
                        (-body.hip_half, body.crotch + 0.1), (-body.hip_half - 0.03, body.hip)], _SECOND)
        for hip, ankle in legs:
            end = (hip[0] + reach * (ankle[0] - hip[0]), hip[1] + reach * (ankle[1] - hip[1]) - 0.02)
            canvas.limb(hip, end, 0.2, 0.13 if reach == 1.0 else 0.18, _SECOND)
    elif style.lower in ("skirt", "short_skirt"):
        hem = body.crotch + (0.25 if style.lower == "skirt" else 0.08)
        flare = 0.78 if style.lower == "skirt" else 0.66
        canvas.polygon([(-body.waist_half - 0.03, body.waist), (body.waist_half + 0.03, body.waist),
                        (flare, hem), (-flare, hem)], _SECOND)
    elif style.lower == "dress_skirt":
        canvas.polygon([(-body.waist_half - 0.03, body.waist), (body.waist_half + 0.03, body.waist),
                        (0.86, body.knee - 0.2), (-0.86, body.knee - 0.2)], _MAIN)
    elif style.lower == "kimono_skirt":
        canvas.polygon([(-body.waist_half - 0.04, body.waist), (body.waist_half + 0.04, body.waist),
                        (0.5, body.ankle - 0.02), (-0.5, body.ankle - 0.02)], _MAIN)

    hem_y, hem_half = _top_bottom(body, style.top_length)
    _torso(canvas, body, hem_y, hem_half, _MAIN)
    s, w = body.shoulder, body.shoulder_half
    if "sailor_collar" in style.extras:
        for side in (-1, 1):
            canvas.polygon([(side * (w - 0.04), s + 0.01), (side * 0.15, s - 0.03), (0.0, s + 0.36),
                            (side * (w - 0.1), s + 0.24)], _SECOND)
        canvas.polygon([(-0.1, s + 0.3), (0.1, s + 0.3), (0.0, s + 0.5)], _SECOND)
    if "bolero" in style.extras:
        for side in (-1, 1):
            canvas.polygon([(side * (w + 0.01), s - 0.01), (side * 0.17, s - 0.04), (side * 0.21, s + 0.55),
                            (side * (w - 0.04), s + 0.62)], _SECOND)
    if "obi" in style.extras:
        canvas.polygon([(-body.waist_half - 0.08, body.waist - 0.34), (body.waist_half + 0.08, body.waist - 0.34),
                        (body.waist_half + 0.08, body.waist + 0.26), (-body.waist_half - 0.08, body.waist + 0.26)],
                       _SECOND)

    sleeve_label = _SECOND if style.sleeves == "second_long" else _MAIN
    for side in (-1, 1):
        shoulder, elbow, wrist = _arm_points(body, pose, side)
        if style.sleeves == "short":
            canvas.limb(shoulder, elbow, 0.11, 0.095, _SKIN)
            canvas.limb(elbow, wrist, 0.095, 0.085, _SKIN)
            cuff = (shoulder[0] + 0.5 * (elbow[0] - shoulder[0]), shoulder[1] + 0.5 * (elbow[1] - shoulder[1]))
            canvas.limb(shoulder, cuff, 0.15, 0.14, sleeve_label)
        elif style.sleeves == "wide":
            canvas.limb(shoulder, elbow, 0.15, 0.2, sleeve_label)
            canvas.limb(elbow, wrist, 0.2, 0.24, sleeve_label)
        else:
            canvas.limb(shoulder, elbow, 0.14, 0.125, sleeve_label)
            canvas.limb(elbow, wrist, 0.125, 0.115, sleeve_label)
        canvas.ellipse(wrist[0], wrist[1] + 0.08, 0.1, 0.12, _SKIN)
    _draw_face(canvas, character)


def _shade_factors(rgb: np.ndarray, shade: float) -> np.ndarray:
    """Per-pixel darkening: light colours (white) get half the shadow, as a cel-shading artist gives them."""
    light = rgb.min(axis=-1, keepdims=True) > 200
    return np.where(light, 1.0 - 0.5 * (1.0 - shade), shade).astype(np.float32)


def _colour_table(character: Character, outfit: Outfit, artist: ArtistStyle) -> np.ndarray:
    table = np.zeros((256, 3), dtype=np.float32)
    table[_OUTLINE] = artist.outline_rgb
    table[_SKIN] = SKIN_RGB[character.skin]
    table[_HAIR] = HAIR_RGB[character.hair]
    table[_EYE_WHITE] = (255, 255, 255)
    table[_IRIS] = EYE_RGB[character.eyes]
    table[_MOUTH] = (170, 60, 70)
    table[_MAIN] = GARMENT_RGB[outfit.main]
    table[_SECOND] = GARMENT_RGB[outfit.second]
    table[_SHOES] = GARMENT_RGB[outfit.shoes]
    return table


@dataclass
class _Figure:
    rgba: Image.Image  # output size, transparent around the figure
    head: np.ndarray  # bool, the head's silhouette, same size


def _render_figure(character: Character, outfit: Outfit, artist: ArtistStyle, pose: Pose,
                   height_px: float) -> _Figure:
    body = _Body(artist.head_count, character.gender)
    unit = 2.0 * height_px / artist.head_count
    # Room around the figure (arms out, spiky hair) so that leaning it never clips it.
    width, height = int(math.ceil(4.4 * unit)), int(math.ceil((artist.head_count + 1.1) * unit))
    width += width % 2
    height += height % 2
    origin = (width / 2.0, 0.55 * unit)
    canvas = _Canvas(unit, origin, artist.outline_px, Image.new("L", (width, height), _BG),
                     Image.new("L", (width, height), 0))
    _draw_figure(canvas, character, outfit, body, pose)

    labels = np.asarray(canvas.labels)
    table = _colour_table(character, outfit, artist)
    if artist.shade < 1.0:
        # Shaded parts look their colour up in the upper half of the table.
        table[_SHADE_OFFSET:_SHADE_OFFSET * 2] = table[:_SHADE_OFFSET] * _shade_factors(table[:_SHADE_OFFSET],
                                                                                        artist.shade)
        columns = np.arange(width, dtype=np.float32)[None, :]
        shadow_side = artist.shade_side * (columns - origin[0]) > 0.14 * unit
        labels = labels + (_SHADE_OFFSET * (np.isin(labels, _SHADED) & shadow_side)).astype(np.uint8)
    pixels = np.empty(labels.shape + (4,), dtype=np.uint8)
    pixels[..., :3] = np.clip(table, 0, 255).round().astype(np.uint8)[labels]
    pixels[..., 3] = np.where(labels != _BG, 255, 0)
    rgba = Image.fromarray(pixels, "RGBA")
    head = canvas.head
    if pose.lean:
        centre = (origin[0], origin[1] + 0.5 * artist.head_count * unit)
        rgba = rgba.rotate(pose.lean, resample=Image.NEAREST, center=centre)
        head = head.rotate(pose.lean, resample=Image.NEAREST, center=centre)
    rgba = rgba.reduce(2)
    head = head.reduce(2)
    return _Figure(rgba, np.asarray(head) > 127)


def _background(rng: np.random.Generator, size: tuple[int, int], choices: list[str]) -> tuple[np.ndarray, list[str]]:
    width, height = size
    kind = ("plain", "gradient", "pattern")[int(rng.integers(3))]
    first = choices[int(rng.integers(len(choices)))]
    base = np.array(BACKGROUND_RGB[first], dtype=np.float32)
    image = np.broadcast_to(base, (height, width, 3)).copy()
    tags = ["simple_background", BACKGROUND_TAGS[first]]
    if kind == "gradient" and len(choices) > 1:
        second = choices[int(rng.integers(len(choices)))]
        if second == first:
            second = choices[(choices.index(first) + 1) % len(choices)]
        other = np.array(BACKGROUND_RGB[second], dtype=np.float32)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        slope = float(rng.uniform(-0.5, 0.5))
        t = (yy / height + slope * xx / width)
        t = (t - t.min()) / (t.max() - t.min())
        image = base * (1 - t[..., None]) + other * t[..., None]
        tags = ["gradient_background", BACKGROUND_TAGS[first]]
    elif kind == "pattern":
        yy, xx = np.mgrid[0:height, 0:width]
        period = int(rng.integers(12, 22))
        pattern = ("stripes", "dots", "checker")[int(rng.integers(3))]
        if pattern == "stripes":
            on = ((xx + yy) // (period // 2)) % 2 == 0
            tags = ["striped_background", BACKGROUND_TAGS[first]]
        elif pattern == "dots":
            on = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < (period / 4) ** 2
            tags = ["polka_dot_background", BACKGROUND_TAGS[first]]
        else:
            on = ((xx // period) + (yy // period)) % 2 == 0
            tags = ["checkered_background", BACKGROUND_TAGS[first]]
        image[on] *= 0.94
    return image, tags


def _background_choices(colours: list[tuple[int, int, int]]) -> list[str]:
    """Backgrounds far from every colour of the figure (a segmenter must be able to tell them apart)."""
    figure_lab = rgb_to_lab(np.array(colours, dtype=np.uint8))
    names = list(BACKGROUND_RGB)
    candidates = np.array([BACKGROUND_RGB[name] for name in names], dtype=np.float32)
    lab = rgb_to_lab(np.concatenate([candidates, candidates * 0.94]).round().astype(np.uint8))
    distance = np.sqrt(((lab[:, None, :] - figure_lab[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
    distance = np.minimum(distance[: len(names)], distance[len(names):])
    chosen = [name for name, d in zip(names, distance, strict=True) if d >= _MIN_BACKGROUND_DELTA_E]
    return chosen or [names[int(distance.argmax())]]


def _figure_colours(character: Character, outfit: Outfit, artist: ArtistStyle) -> list[tuple[int, int, int]]:
    colours = [SKIN_RGB[character.skin], HAIR_RGB[character.hair], GARMENT_RGB[outfit.main],
               GARMENT_RGB[outfit.second], GARMENT_RGB[outfit.shoes]]
    shaded = [tuple(int(v) for v in (np.array(rgb, np.float32) * _shade_factors(np.array(rgb, np.float32),
                                                                                  artist.shade)).round())
              for rgb in colours[1:]]
    return colours + shaded


def _random_pose(rng: np.random.Generator) -> Pose:
    left_arm, right_arm = float(rng.uniform(8, 38)), float(rng.uniform(8, 38))
    # A forearm never bends back across the body: it stays at least 4 degrees outward.
    bends = (max(float(rng.uniform(-12, 18)), 4 - left_arm), max(float(rng.uniform(-12, 18)), 4 - right_arm))
    legs = (float(rng.uniform(0, 9)), float(rng.uniform(0, 9)))
    return Pose((left_arm, right_arm), bends, legs, float(rng.uniform(-6, 6)))


@dataclass
class _Drawing:
    image: Image.Image
    mask: np.ndarray
    head_box: list[float]
    background_tags: list[str]
    # per figure, left to right: its head box and its own mask (the two-character images' ground truth)
    head_boxes: list[list[float]] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)


def _compose(rng: np.random.Generator, size: tuple[int, int],
             figures: list[tuple[Character, Outfit, ArtistStyle]], scale: tuple[float, float] = (0.76, 0.9)
             ) -> _Drawing:
    """Figures side by side (one for a normal image) on a background that all of them stand out from."""
    width, height = size
    colours = [c for figure in figures for c in _figure_colours(*figure)]
    colours.append(figures[0][2].outline_rgb)
    background, tags = _background(rng, size, _background_choices(colours))
    mask = np.zeros((height, width), dtype=bool)
    head_box: list[float] = []
    head_boxes: list[list[float]] = []
    masks: list[np.ndarray] = []
    margin = max(6, int(round(0.035 * min(width, height))))
    slots = len(figures)
    for index, (character, outfit, artist) in enumerate(figures):
        figure_height = height * float(rng.uniform(*scale)) / (1 if slots == 1 else 1.25)
        figure = _render_figure(character, outfit, artist, _random_pose(rng), figure_height)
        alpha = np.asarray(figure.rgba)[..., 3]
        rows, cols = np.nonzero(alpha)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        box_w, box_h = right - left, bottom - top
        slot_left = margin + index * (width - 2 * margin) / slots
        slot_right = margin + (index + 1) * (width - 2 * margin) / slots
        free_x = max(0.0, slot_right - slot_left - box_w)
        free_y = max(0.0, height - 2 * margin - box_h)
        x = int(round(slot_left + free_x * float(rng.uniform(0.15, 0.85)))) - left
        y = int(round(margin + free_y * float(rng.uniform(0.1, 0.9)))) - top
        paste = Image.fromarray(background.clip(0, 255).round().astype(np.uint8), "RGB")
        layer = Image.new("RGBA", size, (0, 0, 0, 0))
        layer.paste(figure.rgba, (x, y))
        paste.paste(layer, (0, 0), layer)
        background = np.asarray(paste, dtype=np.float32)
        placed = np.asarray(layer)[..., 3] > 127
        mask |= placed
        head_layer = Image.new("L", size, 0)
        head_layer.paste(Image.fromarray(figure.head.astype(np.uint8) * 255, "L"), (x, y))
        head = np.asarray(head_layer) > 127
        head_rows, head_cols = np.nonzero(head)
        head_boxes.append([float(head_cols.min()), float(head_rows.min()), float(head_cols.max() + 1),
                           float(head_rows.max() + 1)])
        masks.append(placed)
        if index == 0:
            head_box = head_boxes[0]
    image = Image.fromarray(background.clip(0, 255).round().astype(np.uint8), "RGB")
    return _Drawing(image, mask, head_box, tags, head_boxes, masks)


def _encode(image: Image.Image, ext: str, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    if ext == "jpg":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- the collection ---------------------------------------------------------------------------------------

@dataclass
class _Row:
    """One metadata row being made, with what the ground truth says about it."""

    character: Character | None
    artist: ArtistStyle | None
    outfit: Outfit | None
    plant: str = ""
    data: bytes | None = None  # None: no file
    ext: str = "png"
    width: int = 0
    height: int = 0
    general: list[str] = field(default_factory=list)
    characters: list[str] = field(default_factory=list)
    rating: str = "g"
    md5: str | None = None
    head_box: list[float] | None = None
    mask: np.ndarray | None = None
    near_duplicate_of: int | None = None  # index into the row list
    id: int = 0
    file_name: str = ""

    @property
    def identity(self) -> str:
        if self.character is None or self.plant not in ("", "near_duplicate"):
            return ""
        return f"{self.character.name}|{self.artist.name}|{self.outfit.label}"


def _general_tags(character: Character, outfit: Outfit | None, background_tags: list[str],
                  clothing: bool = True) -> list[str]:
    tags = ["1boy" if character.gender == "boy" else "1girl", "solo", "standing", "full_body", "looking_at_viewer",
            f"{character.hair}_hair", HAIRSTYLE_TAGS[character.hairstyle], f"{character.eyes}_eyes",
            *background_tags]
    if clothing and outfit is not None:
        tags.extend(GARMENT_STYLES[outfit.style].tags)
    return sorted(set(tags))


def _good_row(rng, size, character, artist, outfit) -> _Row:
    drawing = _compose(rng, size, [(character, outfit, artist)])
    ext = "jpg" if rng.random() < 0.4 else "png"
    row = _Row(character, artist, outfit, ext=ext, width=size[0], height=size[1],
               general=_general_tags(character, outfit, drawing.background_tags), characters=[character.name],
               rating="s" if rng.random() < 0.15 else "g", head_box=drawing.head_box, mask=drawing.mask)
    row.data = _encode(drawing.image, ext, quality=int(rng.choice([88, 92, 95])))
    return row


def _near_duplicate(original: _Row, kind: str) -> _Row:
    image = Image.open(io.BytesIO(original.data)).convert("RGB")
    ext = original.ext
    if kind == "reencoded":
        ext = "jpg"
        data = _encode(image, "jpg", quality=80)
    elif kind == "resized":
        factor = 0.985
        image = image.resize((int(round(image.width * factor)), int(round(image.height * factor))), Image.LANCZOS)
        data = _encode(image, ext)
    else:
        image = ImageEnhance.Brightness(image).enhance(1.05)
        data = _encode(image, ext)
    return _Row(original.character, original.artist, original.outfit, plant="near_duplicate", data=data, ext=ext,
                width=image.width, height=image.height, general=list(original.general),
                characters=list(original.characters), rating=original.rating)


def _plant_rows(rng, size, pairs, good: list[_Row]) -> list[_Row]:
    """The planted bad inputs, one row each, and near-duplicates of a few good rows."""
    def pick():
        character, artist = pairs[int(rng.integers(len(pairs)))]
        return character, artist, character.outfits[int(rng.integers(2))]

    rows = []
    character, artist, outfit = pick()
    rows.append(_Row(character, artist, outfit, plant="missing", data=None, ext="png", width=size[0],
                     height=size[1], general=_general_tags(character, outfit, ["simple_background"]),
                     characters=[character.name], md5=hashlib.md5(b"never written").hexdigest()))
    character, artist, outfit = pick()
    corrupt = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    rows.append(_Row(character, artist, outfit, plant="corrupt", data=corrupt, ext="jpg", width=size[0],
                     height=size[1], general=_general_tags(character, outfit, ["simple_background"]),
                     characters=[character.name]))
    character, artist, outfit = pick()
    rows.append(_Row(character, artist, outfit, plant="empty", data=b"", ext="png", width=size[0], height=size[1],
                     general=_general_tags(character, outfit, ["simple_background"]), characters=[character.name]))

    first, second = CHARACTERS[0], CHARACTERS[6]
    drawing = _compose(rng, size, [(first, first.outfits[0], ARTISTS[0]), (second, second.outfits[0], ARTISTS[0])])
    general = sorted({"2girls", "multiple_girls", "standing", "full_body", *drawing.background_tags,
                      *GARMENT_STYLES[first.outfits[0].style].tags, *GARMENT_STYLES[second.outfits[0].style].tags})
    rows.append(_Row(None, ARTISTS[0], None, plant="two_characters", data=_encode(drawing.image, "png"),
                     width=size[0], height=size[1], general=general, characters=[first.name, second.name]))

    character, artist, outfit = pick()
    drawing = _compose(rng, size, [(character, outfit, artist)])
    grey = drawing.image.convert("L")
    rows.append(_Row(character, artist, outfit, plant="monochrome", data=_encode(grey, "jpg"), ext="jpg",
                     width=size[0], height=size[1],
                     general=sorted({*_general_tags(character, outfit, []), "monochrome"}),
                     characters=[character.name]))

    for plant in ("no_clothing", "outside_root", "unsafe_rating"):
        character, artist, outfit = pick()
        drawing = _compose(rng, size, [(character, outfit, artist)])
        rows.append(_Row(character, artist, outfit, plant=plant, data=_encode(drawing.image, "png"), width=size[0],
                         height=size[1], general=_general_tags(character, outfit, drawing.background_tags,
                                                               clothing=plant != "no_clothing"),
                         characters=[character.name], rating="e" if plant == "unsafe_rating" else "g"))

    kinds = ("reencoded", "resized", "brightened")
    chosen = rng.choice(len(good), size=6, replace=False)
    for number, index in enumerate(sorted(int(i) for i in chosen)):
        duplicate = _near_duplicate(good[index], kinds[number % len(kinds)])
        duplicate.near_duplicate_of = index
        rows.append(duplicate)
    return rows


def _multi_subject_rows(rng, size: tuple[int, int], pairs) -> list[_Row]:
    """The two-character images and the two planted ambiguous posts (see :data:`MULTI_SUBJECT_PLANTS`).

    Each artist draws :data:`TWO_SUBJECT_IMAGES_PER_ARTIST` images of two of the characters it draws elsewhere in
    the sample (so each subject has single-subject images of its identity to be matched against), in a wider
    frame (5/3 of the sample's width) so that the figures stand apart. ``_Row.characters`` lists the characters
    left to right (the metadata sorts them, as Danbooru does), ``_Row.file_name`` their outfit labels, and
    ``_Row.id`` the id increment (the caller numbers the rows after every other row of the sample).
    """
    wide = (int(round(size[0] * 5 / 3)), size[1])
    by_artist: dict[str, list[Character]] = {}
    for character, artist in pairs:
        by_artist.setdefault(artist.name, []).append(character)
    artists = {artist.name: artist for artist in ARTISTS}
    rows = []

    def row(figures, plant, tagged, outfits=""):
        drawing = _compose(rng, wide, figures)
        girls = sum(c.gender == "girl" for c in tagged)
        boys = len(tagged) - girls
        general = {"standing", "full_body", *drawing.background_tags}
        general |= {f"{girls}girl{'s' if girls > 1 else ''}"} if girls else set()
        general |= {f"{boys}boy{'s' if boys > 1 else ''}"} if boys else set()
        general |= {"multiple_girls"} if girls > 1 else set()
        for _, outfit, _ in figures:
            general |= set(GARMENT_STYLES[outfit.style].tags)
        made = _Row(None, figures[0][2], None, plant=plant, data=_encode(drawing.image, "png"), width=wide[0],
                    height=wide[1], general=sorted(general), characters=[c.name for c in tagged],
                    file_name=outfits, id=int(rng.integers(1, 40)))
        made.head_box, made.mask = drawing.head_box, drawing.mask
        rows.append(made)

    for name in sorted(by_artist):
        artist, cast = artists[name], by_artist[name]
        for _ in range(TWO_SUBJECT_IMAGES_PER_ARTIST):
            first, second = (cast[int(i)] for i in rng.choice(len(cast), size=2, replace=False))
            figures = [(c, c.outfits[int(rng.integers(2))], artist) for c in (first, second)]
            row(figures, "two_subjects", [first, second], " ".join(o.label for _, o, _ in figures))
    for name in sorted(by_artist)[:2]:  # tagged with two characters, drawn with the first one twice
        artist, cast = artists[name], by_artist[name]
        first, second = (cast[int(i)] for i in rng.choice(len(cast), size=2, replace=False))
        outfit = first.outfits[0]
        row([(first, outfit, artist), (first, outfit, artist)], "same_character_twice", [first, second])
    name = sorted(by_artist)[2]  # tagged with two characters, three figures drawn
    artist, cast = artists[name], by_artist[name]
    chosen = [cast[int(i)] for i in rng.choice(len(cast), size=3, replace=False)]
    row([(c, c.outfits[0], artist) for c in chosen], "three_figures", chosen[:2])
    return rows


def _prepare_directory(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise SameIdError(f"{root} exists and is not a directory; choose a new directory for the sample")
    if root.exists() and any(root.iterdir()):
        if not is_generated_sample(root):
            raise SameIdError(f"refusing to write the sample into {root}: it is not empty and is not an earlier "
                              "sameid sample (its README.md does not start with "
                              f"{README_MARKER!r}); choose an empty or new directory")
        for name in SAMPLE_ENTRIES:
            path = root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    root.mkdir(parents=True, exist_ok=True)


def make_sample(out_dir, seed: int = 0, image_size: tuple[int, int] = (192, 256)) -> SamplePaths:
    """Draw the sample collection into ``out_dir`` (new, empty, or an earlier sample, which is replaced).

    ``image_size`` is (width, height) of every image. The same ``seed`` gives byte-identical files.
    """
    root = Path(out_dir)
    _prepare_directory(root)
    size = (int(image_size[0]), int(image_size[1]))
    rng = np.random.default_rng(seed)

    artist_order = [ARTISTS[int(i)] for i in rng.permutation(len(ARTISTS))]
    pairs = []  # (character, artist): each character is drawn by two artists, each artist draws six characters
    for index, character in enumerate(CHARACTERS):
        pairs.append((character, artist_order[index % len(ARTISTS)]))
        pairs.append((character, artist_order[(index + 1) % len(ARTISTS)]))

    good = [_good_row(rng, size, character, artist, outfit)
            for character, artist in pairs for outfit in character.outfits for _ in range(IMAGES_PER_IDENTITY)]
    rows = good + _plant_rows(rng, size, pairs, good)

    # Danbooru ids grow with upload time; the rows are shuffled so that identities interleave.
    order = rng.permutation(len(rows))
    next_id = 3_000_000 + int(rng.integers(1000))
    for position in order:
        rows[int(position)].id = next_id
        next_id += int(rng.integers(1, 40))
    annotated = {id(row) for row in good if rng.random() < 1 / 3}
    list_tag_rows = {int(i) for i in rng.choice(len(rows), size=max(2, len(rows) // 6), replace=False)}
    id_named_rows = {int(i) for i in rng.choice(len(rows), size=max(2, len(rows) // 8), replace=False)}

    image_root = root / "images"
    image_root.mkdir()
    (image_root / "masks").mkdir()
    records, truth = [], []
    for index in (int(i) for i in np.argsort([row.id for row in rows], kind="stable")):
        row = rows[index]
        md5 = row.md5 or (hashlib.md5(row.data).hexdigest() if row.data is not None else None)
        record: dict = {"id": row.id, "md5": md5, "file_ext": row.ext}
        if row.plant == "outside_root":
            record["md5"] = "../outside"
            (root / f"outside.{row.ext}").write_bytes(row.data)
        elif row.data is not None:
            by_id = index in id_named_rows and row.plant != "missing"
            (image_root / (f"{row.id}.{row.ext}" if by_id else f"{md5}.{row.ext}")).write_bytes(row.data)
        tags = {"tag_string_general": row.general, "tag_string_character": row.characters,
                "tag_string_artist": [row.artist.name] if row.artist else []}
        for key, value in tags.items():
            record[key] = list(value) if index in list_tag_rows else " ".join(value)
        record.update(rating=row.rating, image_width=row.width, image_height=row.height)
        if id(row) in annotated:
            record["head_box"] = [round(v, 1) for v in row.head_box]
            record["mask"] = f"masks/{row.id}.png"
            save_mask(row.mask, image_root / "masks" / f"{row.id}.png")
        records.append(record)
        duplicate_of = rows[row.near_duplicate_of].id if row.near_duplicate_of is not None else ""
        if row.plant == "two_characters":
            character_name = " ".join(row.characters)
        else:
            character_name = row.character.name if row.character else ""
        truth.append({"id": row.id, "character": character_name, "artist": row.artist.name if row.artist else "",
                      "outfit": row.outfit.label if row.outfit else "", "identity": row.identity,
                      "plant": row.plant, "near_duplicate_of": duplicate_of})

    multi = _multi_subject_rows(np.random.default_rng([seed, 13]), size, pairs)
    next_id = max(row.id for row in rows) + 1
    for row in multi:
        next_id += int(row.id)  # the increment drawn with the row
        row.id = next_id
        md5 = hashlib.md5(row.data).hexdigest()
        (image_root / f"{md5}.{row.ext}").write_bytes(row.data)
        records.append({"id": row.id, "md5": md5, "file_ext": row.ext, "tag_string_general": " ".join(row.general),
                        "tag_string_character": " ".join(sorted(row.characters)),
                        "tag_string_artist": row.artist.name, "rating": row.rating, "image_width": row.width,
                        "image_height": row.height})
        truth.append({"id": row.id, "character": " ".join(row.characters), "artist": row.artist.name,
                      "outfit": row.file_name, "identity": "", "plant": row.plant, "near_duplicate_of": ""})

    metadata = root / "metadata.jsonl"
    metadata.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    ground_truth = root / "ground_truth.csv"
    with ground_truth.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=GROUND_TRUTH_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(truth)
    (root / "README.md").write_text(_readme(seed, size, len(good), len(rows) - len(good)), encoding="utf-8")
    return SamplePaths(root=root, metadata=metadata, image_root=image_root, ground_truth=ground_truth)


def _readme(seed: int, size: tuple[int, int], good: int, planted: int) -> str:
    return f"""{README_MARKER}

This is a GENERATED sample, not real data: simple drawn figures made by `sameid.demo.sample.make_sample`
(seed {seed}, images {size[0]}x{size[1]}) so that `sameid build` can be tried and tested offline. It imitates a
Danbooru 2019 Figures collection (the source of RetriBooru): {len(CHARACTERS)} invented characters by
{len(ARTISTS)} invented artists, {good} good images and {planted} planted bad inputs and near-duplicates.

- `metadata.jsonl`: Danbooru-style posts (`id`, `md5`, `file_ext`, `tag_string_*`, `rating`, `image_width`,
  `image_height`, and on some rows precomputed `head_box` and `mask`).
- `images/`: the images, named `<md5>.<ext>` or `<id>.<ext>`; `images/masks/`: figure masks.
- `ground_truth.csv`: the identity (character|artist|outfit) of every row and what was planted in it.
- The last rows are multi-subject posts: two characters of one artist side by side (`two_subjects`; `character`
  and `outfit` of `ground_truth.csv` name them left to right) and two planted ambiguous posts.

Running `make_sample` again on this directory replaces these files.
"""
