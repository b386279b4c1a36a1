"""What the file-system sources share: image extensions and parsing of user-given annotation fields."""

from __future__ import annotations

import json
import math

from ..errors import SchemaError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def parse_head_box(value, where: str) -> list[float] | None:
    """A head box given as a list, a JSON string or "x0,y0,x1,y1"; None when absent. ``where`` names the row."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else [float(v) for v in text.split(",")]
        except ValueError:
            raise SchemaError(f"{where}: head_box {text!r} is not 4 numbers x0,y0,x1,y1") from None
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError):
        raise SchemaError(f"{where}: head_box {value!r} is not 4 numbers x0,y0,x1,y1") from None
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
        raise SchemaError(f"{where}: head_box {box} must be 4 finite numbers x0,y0,x1,y1 with x1>x0 and y1>y0")
    return box


def parse_tags(value) -> list[str]:
    """Tags as a list, or one space-separated string (Danbooru's form)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]
