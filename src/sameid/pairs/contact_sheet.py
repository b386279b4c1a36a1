"""A contact sheet of training pairs: each row a target beside its references, each reference labelled with its
concept ("face", "clothes", "figure"; RetriBooru, arXiv 2312.02521, §5, Fig. 1), for a human to check the pairs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageOps

from ..images import load_image
from .manifest import DatasetManifest

_LABEL_HEIGHT = 16
_GAP = 4


def contact_sheet(manifest: DatasetManifest, pairs: pd.DataFrame, out: str | os.PathLike, examples: int = 6,
                  thumbnail: int = 128) -> Path:
    """Write :func:`render_contact_sheet` as a PNG to ``out`` (atomically) and return its path."""
    from ..atomic import write_atomic

    sheet = render_contact_sheet(manifest, pairs, examples, thumbnail)
    return write_atomic(out, lambda tmp: sheet.save(tmp, format="PNG"), suffix=".png")


def render_contact_sheet(manifest: DatasetManifest, pairs: pd.DataFrame, examples: int = 6,
                         thumbnail: int = 128) -> Image.Image:
    """The contact sheet of the first ``examples`` rows of ``pairs`` (columns of ``sameid pairs``), in memory.

    The first cell of a row is the target (labelled "target" and its id), then one cell per reference, cropped to
    its crop box and labelled with its concept, and "(fallback)" when the requested concept was not possible.
    """
    rows = pairs.head(examples)
    columns = 1 + (int(rows["reference_ids"].map(len).max()) if len(rows) else 0)
    cell_w, cell_h = thumbnail, thumbnail + _LABEL_HEIGHT
    sheet = Image.new("RGB", (columns * (cell_w + _GAP) + _GAP, max(1, len(rows)) * (cell_h + _GAP) + _GAP),
                      (64, 64, 64))
    draw = ImageDraw.Draw(sheet)
    cache: dict[str, Image.Image] = {}

    def image_of(identifier: str) -> Image.Image:
        if identifier not in cache:
            cache[identifier] = load_image(manifest.image_paths[manifest.row_of[identifier]])[0]
        return cache[identifier]

    for r, (_, pair) in enumerate(rows.iterrows()):
        cells = [(image_of(str(pair["target_id"])), f"target {pair['target_id']}")]
        fallbacks = pair["fallbacks"] if "fallbacks" in pair else [""] * len(pair["reference_ids"])
        for reference_id, concept, box, fallback in zip(pair["reference_ids"], pair["concepts"], pair["crop_boxes"],
                                                        fallbacks):
            image = image_of(str(reference_id))
            box = tuple(int(v) for v in box)
            if box != (0, 0, image.width, image.height):
                image = image.crop(box)
            cells.append((image, f"{concept}{' (fallback)' if fallback else ''}"))
        for c, (image, label) in enumerate(cells):
            x, y = _GAP + c * (cell_w + _GAP), _GAP + r * (cell_h + _GAP)
            fitted = ImageOps.pad(image, (thumbnail, thumbnail), color=(255, 255, 255))
            sheet.paste(fitted, (x, y))
            draw.rectangle((x, y + thumbnail, x + cell_w - 1, y + cell_h - 1), fill=(0, 0, 0))
            draw.text((x + 3, y + thumbnail + 2), label[:22], fill=(255, 255, 255))
    return sheet
