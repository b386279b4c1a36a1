"""What personalization starts from: a few real images of one instance, its category, and images of others.

Personalized Representation from Personalized Generation (arXiv 2412.16156, method and evaluation) personalizes from 3 real images
of an instance and evaluates on held-out real images of it among other instances of the same category. An
:class:`Instance` holds both sides, kept apart: ``real`` (training anchors, with masks when known) and
``negatives`` (other instances, for training) versus ``held_out`` and ``distractors`` (for evaluation only). No
image is in both sides: training negatives and evaluation distractors come from disjoint sets of identities.

Two sources: a folder of images of one instance (:func:`instance_from_folder`), or a sameid dataset dir, where each
identity in turn is the instance (:func:`instances_from_dataset`, the paper's multi-instance protocol), read with
:func:`sameid.pairs.manifest.load_manifest`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SameIdError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Instance:
    """One instance to personalize for. Paths are absolute strings; ``masks`` is parallel to ``real`` (None:
    segment it)."""

    name: str
    category: str
    real: list[str]
    masks: list[str | None]
    held_out: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    distractors: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.name).strip("_") or "instance"

    @property
    def can_evaluate(self) -> bool:
        return bool(self.held_out) and bool(self.distractors)


def list_images(folder: str | Path, what: str) -> list[str]:
    """Image files directly in ``folder``, sorted by name; SameIdError naming the folder when there are none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SameIdError(f"{what}: {folder} is not a folder")
    images = sorted(str(p.resolve()) for p in folder.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not images:
        raise SameIdError(f"{what}: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def instance_from_folder(folder: str | Path, category: str, *, real: int = 3, masks: str | Path | None = None,
                         negatives: str | Path | None = None, distractors: str | Path | None = None) -> Instance:
    """The first ``real`` images of ``folder`` (by name) are the training anchors, the rest are held out for
    evaluation. ``masks``: a folder with ``<image stem>.png`` figure masks (a missing one is segmented).
    ``negatives``: images of other instances for training; ``distractors``: others for evaluation."""
    images = list_images(folder, "instance images")
    if len(images) < real:
        raise SameIdError(f"{folder} holds {len(images)} images; --real {real} needs at least that many")
    mask_paths: list[str | None] = []
    for path in images[:real]:
        candidate = Path(masks).expanduser() / f"{Path(path).stem}.png" if masks else None
        mask_paths.append(str(candidate) if candidate is not None and candidate.is_file() else None)
    if masks and not Path(masks).expanduser().is_dir():
        raise SameIdError(f"--masks: {masks} is not a folder of <image stem>.png masks")
    return Instance(
        name=Path(folder).expanduser().resolve().name, category=category, real=images[:real], masks=mask_paths,
        held_out=images[real:],
        negatives=list_images(negatives, "negatives") if negatives else [],
        distractors=list_images(distractors, "distractors") if distractors else [],
    )


def instances_from_dataset(dataset_dir: str | Path, category: str, *, column: str = "identity", real: int = 3,
                           seed: int = 0, negative_fraction: float = 0.5, names: list[str] | None = None
                           ) -> list[Instance]:
    """Each group of ``column`` (default ``identity``) in turn as the instance.

    For one instance: ``real`` of its images, drawn with ``seed``, are the anchors and the others are held out;
    the other groups are shuffled with ``seed`` and split, ``negative_fraction`` of them for training negatives,
    the rest as evaluation distractors. Masks come from the manifest's ``mask`` column. A group with fewer than
    ``real + 1`` images cannot be evaluated and is skipped (named in the error when all are).
    """
    from ..pairs.manifest import load_manifest

    manifest = load_manifest(dataset_dir)
    frame = manifest.frame
    if column not in frame.columns:
        raise SameIdError(f"{manifest.root / 'manifest.parquet'} has no column {column!r} to take instances from "
                          f"(columns: {', '.join(map(str, frame.columns))})")
    groups: dict[str, list[int]] = {}
    for row, value in enumerate(frame[column]):
        groups.setdefault(str(value), []).append(row)
    if names:
        unknown = sorted(set(names) - set(groups))
        if unknown:
            raise SameIdError(f"{manifest.root}: no {column} named {', '.join(unknown)} (there are {len(groups)}, "
                              f"e.g. {', '.join(sorted(groups)[:3])})")
    if len(groups) < 3:
        raise SameIdError(f"{manifest.root}: {len(groups)} groups of {column!r}; the protocol needs the instance, "
                          "training negatives and evaluation distractors (at least 3 groups)")
    instances = []
    for index, name in enumerate(sorted(groups)):
        if names and name not in names:
            continue
        rows = groups[name]
        if len(rows) < real + 1:
            continue
        rng = np.random.default_rng([seed, index])
        chosen = sorted(rng.choice(len(rows), size=real, replace=False).tolist())
        anchors = [rows[i] for i in chosen]
        held = [row for row in rows if row not in anchors]
        others = [other for other in sorted(groups) if other != name]
        others = [others[i] for i in rng.permutation(len(others))]
        cut = min(max(1, round(negative_fraction * len(others))), len(others) - 1)
        instances.append(Instance(
            name=name, category=category, real=[manifest.image_paths[r] for r in anchors],
            masks=[manifest.mask_paths[r] for r in anchors], held_out=[manifest.image_paths[r] for r in held],
            negatives=[manifest.image_paths[r] for other in others[:cut] for r in groups[other]],
            distractors=[manifest.image_paths[r] for other in others[cut:] for r in groups[other]],
        ))
    if not instances:
        raise SameIdError(f"{manifest.root}: no {column} has more than {real} images (--real {real}); nothing to "
                          "personalize and evaluate")
    return instances
