"""Real photos of two people shipped inside packages (scikit-image's astronaut, matplotlib's Grace Hopper) and the
variants and compositions the face tests build from them."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps


def photo_variants(image: Image.Image, count: int, seed: int) -> list[Image.Image]:
    """``count`` photos of the same person: every other one mirrored, brightness within +-20 %, a crop of up to
    1/12 of each side and a rotation within +-6 degrees (a gray fill), drawn by ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        variant = ImageOps.mirror(image) if i % 2 else image.copy()
        variant = ImageEnhance.Brightness(variant).enhance(float(rng.uniform(0.8, 1.2)))
        w, h = variant.size
        dx, dy = int(rng.integers(0, w // 12)), int(rng.integers(0, h // 12))
        out.append(variant.crop((dx, dy, w - dx, h - dy)).rotate(float(rng.uniform(-6, 6)), fillcolor=(128, 128, 128)))
    return out


def side_by_side(left: Image.Image, right: Image.Image, height: int = 256) -> Image.Image:
    """``left`` and ``right`` scaled to ``height`` and pasted next to each other: one photo of two people."""
    left = left.resize((round(left.width * height / left.height), height))
    right = right.resize((round(right.width * height / right.height), height))
    canvas = Image.new("RGB", (left.width + right.width, height))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas


def flat_photo_folder(photos, folder):
    """Copy every ``<person>/<name>.jpg`` under ``photos`` into ``folder`` as ``<person>_<name>.jpg``, with a
    metadata.jsonl that names only the files: photos whose identities only their faces can tell."""
    import json

    folder.mkdir()
    lines = []
    for path in sorted(photos.rglob("*.jpg")):
        target = folder / f"{path.parent.name}_{path.name}"
        target.write_bytes(path.read_bytes())
        lines.append(json.dumps({"file_name": target.name}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder
