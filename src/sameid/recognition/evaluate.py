"""Verification of a trained recognition model on a pairs file (:mod:`.verification`): every image of the pairs is
embedded once (with its mirror image added, as face-recognition evaluation does), pairs are scored by cosine
similarity, and the scores give 10-fold accuracy and TAR@FAR.

Images are found in a dataset dir (``name`` an identity, ``n`` the 1-based position among its manifest rows; head
boxes used as in training) or in LFW's layout (``<root>/<name>/<name>_<n:04d>.jpg``, whole images: give aligned
crops, e.g. 112 x 112).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_json_atomic
from ..errors import SameIdError
from .verification import DEFAULT_FARS, VerificationMetrics, read_pairs, verification_metrics


def image_locator(images: str | os.PathLike, crop: str = "head"):
    """``(name, n) -> (path, box)`` for a dataset dir or an LFW-layout folder; an unknown image is an error."""
    root = Path(images)
    if (root / "manifest.parquet").is_file():
        from ..pairs.manifest import load_manifest

        manifest = load_manifest(root)
        rows_of = manifest.identity_rows()

        def locate(name: str, n: int):
            rows = rows_of.get(name)
            if rows is None or not 1 <= n <= len(rows):
                raise SameIdError(f"{root}: no image {n} of identity {name!r} (it has {len(rows or [])})")
            row = rows[n - 1]
            return manifest.image_paths[row], manifest.head_boxes[row] if crop == "head" else None

        return locate
    if not root.is_dir():
        raise SameIdError(f"{root}: not a dataset dir nor a folder of <name>/<name>_<n>.jpg images")

    def locate_lfw(name: str, n: int):
        for ext in (".jpg", ".png", ".jpeg"):
            path = root / name / f"{name}_{n:04d}{ext}"
            if path.is_file():
                return str(path), None
        raise SameIdError(f"{root}: {name}/{name}_{n:04d}.jpg not found")

    return locate_lfw


@torch.no_grad()
def embed_images(model, paths_boxes: list[tuple[str, object]], image_size: int, batch_size: int = 64,
                 flip: bool = True, device: str | None = None) -> np.ndarray:
    """L2-normalised embeddings (N, E) of the images, each the sum of the image's and its mirror's embeddings."""
    from .train import face_pixels

    device = device or next(model.parameters()).device
    vectors = []
    for start in range(0, len(paths_boxes), batch_size):
        chunk = [face_pixels(path, box, image_size) for path, box in paths_boxes[start:start + batch_size]]
        pixels = torch.from_numpy(np.stack(chunk)).float().div(127.5).sub(1.0).to(device)
        features = model(pixels).float()
        if flip:
            features = features + model(torch.flip(pixels, dims=[3])).float()
        vectors.append(torch.nn.functional.normalize(features, dim=1).cpu().numpy())
    return np.concatenate(vectors) if vectors else np.zeros((0, 1), dtype=np.float32)


@dataclass
class RecognitionEvalResult:
    metrics: VerificationMetrics
    run_dir: Path
    pairs: Path
    out: Path | None = None

    def describe(self) -> str:
        where = f"; written to {self.out}" if self.out else ""
        return f"{self.run_dir.name} on {self.pairs.name}: {self.metrics.describe()}{where}"


def score_pairs(embed, pairs_file, images, fars=DEFAULT_FARS, crop: str = "head") -> VerificationMetrics:
    """Metrics of ``embed`` (a list of (path, box) -> (N, E) unit vectors) on ``pairs_file`` over ``images``."""
    pairs = read_pairs(pairs_file)
    locate = image_locator(images, crop)
    keys = sorted({(p.name_a, p.index_a) for p in pairs} | {(p.name_b, p.index_b) for p in pairs})
    vectors = embed([locate(name, n) for name, n in keys])
    index = {key: k for k, key in enumerate(keys)}
    a = vectors[[index[(p.name_a, p.index_a)] for p in pairs]]
    b = vectors[[index[(p.name_b, p.index_b)] for p in pairs]]
    scores = np.sum(a * b, axis=1)
    return verification_metrics(scores, [int(p.same) for p in pairs], [p.fold for p in pairs], fars)


def evaluate_recognition(run_dir, pairs_file, images, *, out=None, device: str | None = None,
                         batch_size: int = 64, flip: bool = True) -> RecognitionEvalResult:
    """Verification metrics of the recognition run ``run_dir`` on ``pairs_file`` (images from ``images``: a
    dataset dir or an LFW-layout folder); written as JSON to ``out`` when given."""
    from .train import load_model

    model, config = load_model(run_dir, device)
    metrics = score_pairs(lambda items: embed_images(model, items, config["image_size"], batch_size, flip),
                          pairs_file, images, crop=config.get("crop", "head"))
    if out is not None:
        write_json_atomic(out, {"run": str(run_dir), "pairs": str(pairs_file), "images": str(images),
                                **metrics.to_dict()})
    return RecognitionEvalResult(metrics, Path(run_dir), Path(pairs_file), None if out is None else Path(out))
