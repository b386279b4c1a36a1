"""The small world: drawn figures whose identity is independent of what the prompt controls, with ground truth.

RetriBooru's central claim (arXiv 2312.02521, §3.1) is that a reference model trained on the target as its own
reference ("-a") learns to copy it, while one trained on *another* image of the same identity ("-b") learns to
take the identity from the reference and the rest from the prompt. Testing that needs data in which the two are
separable and measurable, which no image collection offers on a laptop; this world does, in 32 x 32 pixels:

- **identity** = (hair colour, top colour, bottom colour), three of :data:`PALETTE` (hair differs from the top,
  the top from the bottom); an identity never appears in a caption;
- **prompt factors** = background (:data:`BACKGROUNDS`), horizontal position (:data:`POSITIONS`) and size
  (:data:`SIZES`), drawn independently of the identity for every image and stated by the caption
  ("a large figure on the left, black background"); a pixel jitter of position and height keeps two images of one
  layout from being identical;
- every factor can be read back from pixels by :func:`measure`, which the claim experiment scores generations with
  (it reads the world's own images back exactly: tests/test_claim.py).

:func:`make_world` writes an ordinary dataset dir (docs/architecture.md, "Dataset dir"): ``manifest.parquet``
with ``identity`` and ``similar`` (the world knows its ground truth, so it writes the groups instead of inferring
them with ``sameid build``), the ground-truth columns ``hair``, ``top``, ``bottom``, ``background``, ``position``,
``size``, each figure's exact mask (``mask``: ``masks/<id>.png``, which the paper's masked concepts and
equation 3's figure emphasis read), ``build_settings.json``, ``README.md`` and the PNGs, so the pairs, training, generation and evaluation
stages read it like any other dataset.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..atomic import write_atomic, write_json_atomic, write_parquet_atomic, write_text_atomic
from ..errors import SameIdError
from ..images import perceptual_hash, save_mask
from ..records import DATASET_SETTINGS_FILE

SIZE = 32  # pixels per side
#: Identity colours (hair, top, bottom), saturated so that no one is near a background or the skin (the bundled
#: sample's garment colours of the same names, sameid.demo.sample, take theirs from here).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 45), "orange": (240, 135, 35), "yellow": (245, 215, 60), "green": (45, 150, 75),
    "blue": (45, 85, 195), "purple": (125, 65, 175), "pink": (245, 135, 180)}
#: Background colours, neutral so that no one is near an identity colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (236, 236, 236), "gray": (128, 128, 128),
                                                "black": (24, 24, 24)}
#: Horizontal centre of the figure, in pixels.
POSITIONS: dict[str, int] = {"left": 8, "centre": 16, "right": 24}
#: Figure height, in pixels (feet on the same line, 3 px above the lower border).
SIZES: dict[str, int] = {"small": 15, "large": 26}
SKIN = (246, 208, 180)
FACTORS = ("background", "position", "size")
PARTS = ("hair", "top", "bottom")
_FEET = SIZE - 3
_CAPTION = re.compile(rf"a (?P<size>{'|'.join(SIZES)}) figure (?:on the |in the )(?P<position>{'|'.join(POSITIONS)}), "
                      rf"(?P<background>{'|'.join(BACKGROUNDS)}) background(?:,|$)")
# Vertical extent of each part, as fractions of the figure's height from its top.
_BANDS = {"hair": (0.0, 0.16), "face": (0.16, 0.30), "top": (0.30, 0.62), "bottom": (0.62, 1.0)}
# Where measure() reads each part's colour: the middle of its band, away from the borders between parts.
_READ_BANDS = {"hair": (0.02, 0.14), "top": (0.36, 0.56), "bottom": (0.68, 0.92)}
WORLD_FILE = "world.json"
#: Bumped when what make_world writes changes (2: figure masks), so an older world is not taken for a new one.
WORLD_FORMAT = 2


@dataclass(frozen=True)
class Identity:
    hair: str
    top: str
    bottom: str

    @property
    def name(self) -> str:
        return f"{self.hair}-{self.top}-{self.bottom}"


@dataclass(frozen=True)
class Layout:
    background: str
    position: str
    size: str

    def caption(self) -> str:
        """What the prompt asks for; the identity is never in it."""
        where = "in the centre" if self.position == "centre" else f"on the {self.position}"
        return f"a {self.size} figure {where}, {self.background} background"

    @classmethod
    def from_caption(cls, text: str) -> Layout | None:
        """The layout a world caption (:meth:`caption`, or a full caption starting with one) asks for; None for
        text that is not one."""
        match = _CAPTION.match(text.strip().lower())
        if match is None:
            return None
        return cls(match["background"], match["position"], match["size"])


def full_caption(identity: Identity, layout: Layout) -> str:
    """The layout caption followed by the identity's colours, what the world base is pretrained on
    (:mod:`.world_base`): "a large figure on the left, gray background, red hair, blue top, black bottom". The
    layout caption is its prefix, so a causal text encoder (CLIP) states it identically in both."""
    return f"{layout.caption()}, {identity.hair} hair, {identity.top} top, {identity.bottom} bottom"


def identities(count: int, seed: int) -> list[Identity]:
    """``count`` distinct identities drawn by ``seed`` (hair != top != bottom)."""
    names = list(PALETTE)
    every = [Identity(h, t, b) for h in names for t in names for b in names if h != t and t != b]
    if count > len(every):
        raise SameIdError(f"the world has {len(every)} identities at most, asked for {count}")
    order = np.random.default_rng([seed, 1]).permutation(len(every))
    return [every[i] for i in order[:count]]


def random_layout(rng: np.random.Generator) -> Layout:
    return Layout(str(rng.choice(list(BACKGROUNDS))), str(rng.choice(list(POSITIONS))), str(rng.choice(list(SIZES))))


def draw(identity: Identity, layout: Layout, rng: np.random.Generator | None = None
         ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The (32, 32, 3) uint8 image of ``identity`` in ``layout`` and its head box (x0, y0, x1, y1).

    ``rng`` jitters the centre by up to 1 px and the height by up to 1 px (None: no jitter).
    """
    image = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    image[:] = BACKGROUNDS[layout.background]
    jitter = (lambda: int(rng.integers(-1, 2))) if rng is not None else (lambda: 0)
    height = SIZES[layout.size] + jitter()
    centre = POSITIONS[layout.position] + jitter()
    top = _FEET - height
    width = max(5, round(height * 0.46))
    colours = {"hair": PALETTE[identity.hair], "face": SKIN, "top": PALETTE[identity.top],
               "bottom": PALETTE[identity.bottom]}
    widths = {"hair": 0.62, "face": 0.5, "top": 1.0, "bottom": 0.8}
    head_box = None
    for part, (start, end) in _BANDS.items():
        y0, y1 = top + round(start * height), top + round(end * height)
        half = widths[part] * width / 2
        x0, x1 = round(centre - half), round(centre + half)
        image[y0:y1, x0:x1] = colours[part]
        if part == "bottom":  # two legs: a gap in the lower half of the bottom garment
            gap = y0 + (y1 - y0) // 2
            image[gap:y1, centre:centre + 1] = BACKGROUNDS[layout.background]
        if part == "hair":
            head_box = [x0, y0, x1, y1]
        if part == "face":
            head_box = [min(head_box[0], x0), head_box[1], max(head_box[2], x1), y1]
    return image, tuple(head_box)


# --- reading an image back ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """What :func:`measure` reads from an image; a part or factor it cannot read is None."""

    background: str | None
    position: str | None
    size: str | None
    hair: str | None
    top: str | None
    bottom: str | None
    figure_pixels: int

    def layout(self) -> Layout | None:
        if None in (self.background, self.position, self.size):
            return None
        return Layout(self.background, self.position, self.size)


def _nearest(colour: np.ndarray, table: dict[str, tuple[int, int, int]]) -> tuple[str, float]:
    names = list(table)
    distances = np.linalg.norm(np.asarray([table[n] for n in names], dtype=np.float64) - colour, axis=1)
    best = int(np.argmin(distances))
    return names[best], float(distances[best])


def measure(image: np.ndarray | Image.Image, *, figure_distance: float = 48.0) -> Measurement:
    """Read the layout and the identity colours of a world image (or of a generation) from its pixels.

    Background: the colour of :data:`BACKGROUNDS` nearest the median of the 2-pixel border. Figure: the pixels
    farther than ``figure_distance`` (RGB) from that median, kept where a row and a column hold at least 2 of them
    (stray noise is not a figure). Position: the figure's mean column, nearest centre of :data:`POSITIONS`. Size:
    its height, nearest of :data:`SIZES`. Each part's colour: the median figure colour in the middle of the part's
    band of the figure's height, named by the nearest colour of :data:`PALETTE` plus the skin and the background
    (so a part drawn in skin or background colour is not an identity colour).
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    if pixels.shape[:2] != (SIZE, SIZE):
        pixels = np.asarray(Image.fromarray(pixels.astype(np.uint8)).resize((SIZE, SIZE), Image.BILINEAR),
                            dtype=np.float64)
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[2:-2, :2].reshape(-1, 3), pixels[2:-2, -2:].reshape(-1, 3)])
    backdrop = np.median(border, axis=0)
    background, _ = _nearest(backdrop, BACKGROUNDS)
    mask = np.linalg.norm(pixels - backdrop, axis=2) > figure_distance
    rows = np.flatnonzero(mask.sum(axis=1) >= 2)
    columns = np.flatnonzero(mask.sum(axis=0) >= 2)
    if rows.size == 0 or columns.size == 0:
        return Measurement(background, None, None, None, None, None, 0)
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    kept = mask.copy()
    kept[:y0], kept[y1:] = False, False
    kept[:, : int(columns[0])], kept[:, int(columns[-1]) + 1:] = False, False
    height = y1 - y0
    xs = np.nonzero(kept)[1]
    position = min(POSITIONS, key=lambda name: abs(POSITIONS[name] - (xs.mean() + 0.5)))
    size = min(SIZES, key=lambda name: abs(SIZES[name] - height))
    names = {**PALETTE, "skin": SKIN, "background": tuple(int(v) for v in backdrop)}
    parts = {}
    for part, (start, end) in _READ_BANDS.items():
        a, b = y0 + int(np.floor(start * height)), y0 + max(int(np.ceil(end * height)), int(np.floor(start * height)) + 1)
        band = pixels[a:b][kept[a:b]]
        parts[part] = None if band.size == 0 else _nearest(np.median(band, axis=0), names)[0]
        if parts[part] not in PALETTE:
            parts[part] = None
    return Measurement(background, position, size, parts["hair"], parts["top"], parts["bottom"], int(kept.sum()))


def figure_mask(pixels: np.ndarray, backgrounds: Sequence[str]) -> np.ndarray:
    """The figures of world images: every pixel that is not its image's background colour (exact, since a world
    image is its background and one figure). ``pixels`` (N, H, W, 3) uint8, ``backgrounds`` N names of
    :data:`BACKGROUNDS`; a bool (N, H, W) array."""
    colours = np.asarray([BACKGROUNDS[name] for name in backgrounds], dtype=np.int32)[:, None, None, :]
    return np.abs(pixels.astype(np.int32) - colours).sum(axis=-1) > 0


def identity_score(measured: Measurement, identity: Identity) -> float:
    """Share of the three identity colours (hair, top, bottom) read back as ``identity``'s."""
    return float(np.mean([getattr(measured, part) == getattr(identity, part) for part in PARTS]))


def layout_agreement(measured: Measurement, layout: Layout) -> float:
    """Share of the three prompt factors (background, position, size) read back as ``layout``'s."""
    return float(np.mean([getattr(measured, factor) == getattr(layout, factor) for factor in FACTORS]))


# --- the dataset dir --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorldSettings:
    identities: int = 48
    images_per_identity: int = 10
    seed: int = 0


def make_world(out: str | Path, settings: WorldSettings = WorldSettings()) -> Path:
    """Write the world as a dataset dir at ``out`` and return it. Refuses a folder that holds anything else."""
    out = Path(out)
    if settings.identities < 2 or settings.images_per_identity < 2:
        raise SameIdError("the world needs at least 2 identities of at least 2 images each")
    if out.exists() and any(out.iterdir()):
        if (out / WORLD_FILE).is_file():
            if json.loads((out / WORLD_FILE).read_text()) == _record(settings):
                return out  # already written with these settings
            raise SameIdError(f"{out} holds a world written with other settings or by an older sameid (before "
                              "figure masks): choose another folder for the world, or remove that one")
        raise SameIdError(f"{out} is not empty: choose another folder for the world")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng([settings.seed, 2])
    rows = []
    for identity in identities(settings.identities, settings.seed):
        ids = [f"{identity.name}_{k:02d}" for k in range(settings.images_per_identity)]
        for image_id in ids:
            layout = random_layout(rng)
            pixels, head_box = draw(identity, layout, rng)
            picture = Image.fromarray(pixels)
            relative, mask = f"images/{image_id}.png", f"masks/{image_id}.png"
            write_atomic(out / relative, picture.save, suffix=".png")
            save_mask(figure_mask(pixels[None], [layout.background])[0], out / mask)
            rows.append({
                "id": image_id, "image": relative, "identity": identity.name,
                "similar": [other for other in ids if other != image_id], "caption": layout.caption(),
                "tags": ["1girl", f"{identity.hair}_hair", f"{identity.top}_shirt", f"{identity.bottom}_skirt",
                         f"{layout.background}_background"],
                "head_box": [float(v) for v in head_box], "mask": mask, "width": SIZE, "height": SIZE,
                "phash": perceptual_hash(picture), "hair": identity.hair, "top": identity.top,
                "bottom": identity.bottom, **asdict(layout)})
    frame = pd.DataFrame(rows)
    write_parquet_atomic(out / "manifest.parquet", frame)
    write_parquet_atomic(out / "rejected.parquet", pd.DataFrame({"id": pd.Series([], dtype=str),
                                                                 "reason": pd.Series([], dtype=str)}))
    write_json_atomic(out / DATASET_SETTINGS_FILE, {"source": "sameid.sources.world", "near_duplicate_bits": 0,
                                                    **asdict(settings)})
    write_text_atomic(out / "README.md", _card(settings, len(frame)))
    write_json_atomic(out / WORLD_FILE, _record(settings))
    return out


def _record(settings: WorldSettings) -> dict:
    return {**asdict(settings), "format": WORLD_FORMAT}


def _card(settings: WorldSettings, count: int) -> str:
    return f"""---
configs:
- config_name: default
  data_files: manifest.parquet
---
# The small world (sameid.sources.world)

{count} generated 32 x 32 images of {settings.identities} identities ({settings.images_per_identity} each), seed
{settings.seed}. Identity = (hair, top, bottom) colours; background, position and size are drawn independently for
every image and stated by its caption; masks/ holds each figure's exact mask. Written from the world's ground truth (columns hair, top, bottom,
background, position, size), not inferred by `sameid build`. near_duplicate_bits is 0: two images of one identity
are never near-duplicates here (they differ in layout by construction; an identical layout differs by jitter).
"""
