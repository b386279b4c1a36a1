"""Offline augmentation to a fixed number of images per identity, fused from one or more dataset dirs, with the
curriculum written in (Hybrid Generative Fusion, arXiv 2508.10672: "50 images per identity maintained through
offline augmentation", identities ordered easy to hard).

``sameid augment DATASET [DATASET ...] --out DIR --per-identity 50 --curriculum phash`` reads each input dataset dir
(a ``sameid build`` output is ``source`` real unless it has a ``source`` column; a ``sameid synth`` output is
synthetic), ranks the identities (:mod:`.curriculum`), and tops every identity with fewer than ``per_identity``
images up with augmentations of its own images, drawn round-robin from them: flips, small affine moves, colour
jitter, blur and JPEG artefacts (albumentations). Head boxes and masks move with the pixels. An identity that
already has ``per_identity`` images or more keeps them all, unaugmented.

Augmented rows are marked: ``augmented`` True and ``augmented_from`` the id of the image they were made from. Each
lists its origin and the other augmentations of that origin in ``near_duplicates`` (and the origin lists them), so
the pair sampler (``sameid.pairs.sampler``, which refuses a row's near-duplicates as its references) never gives an
augmentation of the target as its reference, however far the augmentation moved its perceptual hash.

Deterministic for a seed: augmentation ``j`` of an identity depends on (seed, identity, j) only. A killed run
resumes (``resume=True``): augmented files already written are kept.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_atomic
from ..errors import ImageError, SameIdError
from ..images import load_image, load_mask, perceptual_hash, save_mask
from ..pairs.manifest import dataset_near_duplicate_bits, load_manifest
from ..records import MANIFEST_COLUMNS, read_dataset_settings
from ..settings import as_int
from .curriculum import RANK_COLUMN, SPREAD_COLUMN, SPREADS, identity_spread, rank_identities
from .output import SOURCES, link_lists, safe_name, write_dataset

AUGMENTED_DIR = "augmented"
#: The paper's fixed number of images per identity.
DEFAULT_PER_IDENTITY = 50


def augmentation(seed: int = 0):
    """The albumentations pipeline: mild, identity-preserving changes of a face or figure photo."""
    import albumentations as A
    import cv2

    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-12, 12), border_mode=cv2.BORDER_REFLECT_101,
                 p=0.8),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03, p=0.8),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.ImageCompression(quality_range=(40, 90))], p=0.4),
    ], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3, clip=True),
        seed=seed)


AUGMENTATION_RECIPE = ("HorizontalFlip(p=0.5); Affine(scale 0.9-1.1, translate +-6%, rotate +-12 deg, p=0.8); "
                       "ColorJitter(0.2, 0.2, 0.2, 0.03, p=0.8); OneOf(GaussianBlur 3-5, JPEG quality 40-90, p=0.4)")


@dataclass
class AugmentConfig:
    """What ``sameid augment`` makes; every field is checked at construction."""

    inputs: tuple[str, ...]
    out: str
    per_identity: int = DEFAULT_PER_IDENTITY
    curriculum: str | None = "phash"  # phash | embedding | None (no curriculum columns)
    embedder: str | None = None  # for curriculum "embedding": face:dlib, image:clip:<id or path>
    source_order: tuple[str, ...] = SOURCES
    seed: int = 0
    progress: bool = field(default=True, compare=False)

    def __post_init__(self):
        where = "augment"
        self.inputs = tuple(str(Path(p).resolve()) for p in (self.inputs or ()))
        if not self.inputs:
            raise SameIdError("augment: give at least one dataset dir")
        for path in self.inputs:
            if not (Path(path) / "manifest.parquet").is_file():
                raise SameIdError(f"{path} is not a dataset dir (no manifest.parquet); build one with `sameid build` "
                                  "or `sameid synth`")
        if len(set(self.inputs)) != len(self.inputs):
            raise SameIdError("augment: a dataset dir is given twice")
        self.out = str(Path(self.out).resolve())
        if self.out in self.inputs:
            raise SameIdError(f"augment: --out {self.out} is one of the inputs; write to a new folder")
        self.per_identity = as_int(where, "per_identity", self.per_identity, minimum=1)
        self.seed = as_int(where, "seed", self.seed, minimum=0)
        if self.curriculum in ("", "none"):
            self.curriculum = None
        if self.curriculum is not None and self.curriculum not in SPREADS:
            raise SameIdError(f"unknown curriculum {self.curriculum!r}; choose one of: {', '.join(SPREADS)} or none")
        if self.curriculum == "embedding" and not self.embedder:
            raise SameIdError("--curriculum embedding needs --embedder (face:dlib, image:clip:<id or path>)")
        self.source_order = tuple(str(s) for s in self.source_order)

    def content(self) -> dict:
        content = asdict(self)
        content.pop("progress")
        content.pop("out")
        content["inputs"] = list(self.inputs)
        content["source_order"] = list(self.source_order)
        return content


@dataclass
class AugmentResult:
    out: Path
    manifest: pd.DataFrame
    n_original: int
    n_augmented: int
    per_identity: int
    over_target: list[str]
    single_origin: list[str]
    curriculum: str | None

    def describe(self) -> str:
        identities = self.manifest["identity"].nunique()
        lines = [f"{len(self.manifest)} images of {identities} identities ({self.n_original} original, "
                 f"{self.n_augmented} augmented to {self.per_identity} per identity): {self.out}"]
        sources = self.manifest.groupby("source")["identity"].nunique().to_dict()
        lines.append("identities by source: " + ", ".join(f"{k} {v}" for k, v in sorted(sources.items())))
        if self.over_target:
            lines.append(f"{len(self.over_target)} identities already had more than {self.per_identity} images "
                         "(kept, not augmented)")
        if self.single_origin:
            lines.append(f"{len(self.single_origin)} identities have a single original image: every other image is "
                         "an augmentation of it, so the pair sampler finds no leakage-free reference for them")
        if self.curriculum:
            first = self.manifest.sort_values(RANK_COLUMN)["identity"].drop_duplicates().head(3).tolist()
            lines.append(f"curriculum ({self.curriculum} spread) written as {RANK_COLUMN}; easiest first: "
                         + ", ".join(first))
        return "\n".join(lines)


def _read_inputs(config: AugmentConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float], int]:
    """The inputs' manifests as one frame (absolute paths, ``source``, ids prefixed by the input's position when
    there are several), their rejected rows, each identity's spread, and the strictest near-duplicate threshold."""
    frames, rejected, spread, bits = [], [], {}, 0
    embedder = None
    if config.curriculum == "embedding":
        from ..pairs.run import embedder_from_spec

        embedder = embedder_from_spec(config.embedder)
    seen: dict[str, str] = {}
    for position, path in enumerate(config.inputs):
        manifest = load_manifest(path)
        frame = manifest.frame.copy()
        if "augmented_from" in frame.columns and frame["augmented_from"].notna().any():
            raise SameIdError(f"{path} is already augmented; augment the dataset dir it was made from")
        frame["image"] = manifest.image_paths
        frame["mask"] = manifest.mask_paths
        if "source" not in frame.columns:
            frame["source"] = "real"
        frame["source"] = frame["source"].fillna("real").astype(str)
        for identity in frame["identity"].astype(str).unique():
            if seen.setdefault(identity, path) != path:
                raise SameIdError(f"identity {identity!r} is in both {seen[identity]} and {path}; the inputs must "
                                  "hold different identities")
        if config.curriculum:
            spread.update(identity_spread(manifest, config.curriculum, embedder))
        bits = max(bits, dataset_near_duplicate_bits(path))
        prefix = f"{position}/" if len(config.inputs) > 1 else ""
        if prefix:
            frame["id"] = prefix + frame["id"].astype(str)
            for column in ("similar", "near_duplicates"):
                if column in frame.columns:
                    frame[column] = [[] if ids is None else [prefix + str(i) for i in ids] for ids in frame[column]]
        frames.append(frame)
        rejected_path = Path(path) / "rejected.parquet"
        if rejected_path.is_file():
            table = pd.read_parquet(rejected_path)
            if len(table):
                table["id"] = prefix + table["id"].astype(str)
                rejected.append(table)
    frame = pd.concat(frames, ignore_index=True)
    frame["augmented"] = False
    frame["augmented_from"] = None
    return frame, (pd.concat(rejected, ignore_index=True) if rejected else pd.DataFrame()), spread, bits


def _plan(frame: pd.DataFrame, per_identity: int) -> tuple[list[tuple[str, int, int]], list[str], list[str]]:
    """(identity, j, origin row) for every augmentation to make; identities over the target; single-origin ones."""
    jobs, over, single = [], [], []
    for identity, rows in frame.groupby("identity", sort=True).indices.items():
        rows = sorted(int(r) for r in rows)
        if len(rows) > per_identity:
            over.append(identity)
        if len(rows) == 1 and per_identity > 1:
            single.append(identity)
        for j in range(max(0, per_identity - len(rows))):
            jobs.append((identity, j, rows[j % len(rows)]))
    return jobs, over, single


def _augment_one(origin: pd.Series, identity: str, j: int, seed: int, build_dir: Path, out: Path) -> dict:
    """Make (or, on resume, read back) augmentation ``j`` of ``identity`` from ``origin``; returns its row."""
    name = f"{safe_name(str(origin['id']))}-aug{j:03d}"
    image_file = build_dir / AUGMENTED_DIR / f"{name}.png"
    mask_file = build_dir / AUGMENTED_DIR / f"{name}-mask.png"
    has_mask = isinstance(origin["mask"], str) and origin["mask"]
    box = origin["head_box"]
    box = None if box is None or (isinstance(box, float) and np.isnan(box)) else [float(v) for v in box]
    if not image_file.is_file() or (has_mask and not mask_file.is_file()) or box is not None:
        image, _ = load_image(origin["image"])
        pixels = np.asarray(image)
        transform = augmentation()
        transform.set_random_seed(int(np.random.default_rng([seed, zlib.crc32(identity.encode()), j]).integers(2**31)))
        inputs = {"image": pixels, "bboxes": [box] if box else [], "labels": [0] if box else []}
        if has_mask:
            inputs["mask"] = load_mask(origin["mask"], size=image.size).astype(np.uint8)
        result = transform(**inputs)
        from PIL import Image

        augmented = Image.fromarray(result["image"])
        if not image_file.is_file():
            write_atomic(image_file, lambda tmp: augmented.save(tmp, format="PNG"), suffix=".png")
        if has_mask and not mask_file.is_file():
            save_mask(np.asarray(result["mask"]) > 0, mask_file)
        box = [float(v) for v in result["bboxes"][0]] if len(result["bboxes"]) else None
    augmented, _ = load_image(image_file)
    row = origin.to_dict()
    row.update({
        "id": f"{origin['id']}#aug{j:03d}", "image": str(out / AUGMENTED_DIR / image_file.name),
        "mask": str(out / AUGMENTED_DIR / mask_file.name) if has_mask else None, "head_box": box,
        "width": augmented.width, "height": augmented.height, "phash": perceptual_hash(augmented),
        "augmented": True, "augmented_from": str(origin["id"]),
    })
    for column in ("head_box_source", "mask_source"):
        if column in row and row[column] is not None:
            row[column] = f"augmented from {row[column]}"
    return row


def augment_dataset(config: AugmentConfig, *, resume: bool = False, overwrite: bool = False) -> AugmentResult:
    """Fuse ``config.inputs``, augment each identity to ``config.per_identity`` images, rank identities, and write
    the dataset dir ``config.out`` (docs/architecture.md, "Dataset dir"; docs/synthetic.md)."""
    from ..dataset.writer import plan_output
    from ..verbosity import show_progress

    out = Path(config.out)
    frame, rejected, spread, bits = _read_inputs(config)  # validated before anything is written
    jobs, over, single = _plan(frame, config.per_identity)
    plan = plan_output(out, config.content(), resume=resume, overwrite=overwrite)
    plan.start()
    (plan.build_dir / AUGMENTED_DIR).mkdir(exist_ok=True)
    from tqdm.auto import tqdm

    rows, failed = [], []
    for identity, j, origin_row in tqdm(jobs, desc="augmenting", disable=not (config.progress and show_progress())):
        origin = frame.iloc[origin_row]
        try:
            rows.append(_augment_one(origin, identity, j, config.seed, plan.build_dir, out))
        except ImageError as error:
            failed.append({"id": f"{origin['id']}#aug{j:03d}", "image": origin["image"], "stage": "augment",
                           "reason": error.reason, "detail": error.detail})
    if rows:
        frame = pd.concat([frame, pd.DataFrame(rows)], ignore_index=True)
    frame = frame.sort_values(["identity", "augmented"], kind="stable").reset_index(drop=True)
    family = [str(a) if isinstance(a, str) else str(i) for a, i in zip(frame["augmented_from"], frame["id"])]
    frame = link_lists(frame, bits, family)
    if config.curriculum:
        sources = frame.drop_duplicates("identity").set_index("identity")["source"].to_dict()
        ranks = rank_identities(spread, sources, config.source_order)
        frame[RANK_COLUMN] = frame["identity"].map(ranks).astype("int64")
        frame[SPREAD_COLUMN] = frame["identity"].map(spread).astype("float64")
        frame = frame.sort_values([RANK_COLUMN, "augmented"], kind="stable").reset_index(drop=True)
    rest = [c for c in frame.columns if c not in MANIFEST_COLUMNS]
    manifest = frame[list(MANIFEST_COLUMNS) + rest]
    rejected = pd.concat([rejected, pd.DataFrame(failed)], ignore_index=True) if failed else rejected
    settings = _settings(config, bits)
    write_dataset(plan.build_dir, manifest, rejected, settings)
    plan.finish()
    n_aug = int(manifest["augmented"].sum())
    return AugmentResult(out, manifest, len(manifest) - n_aug, n_aug, config.per_identity, over, single,
                         config.curriculum)


def _settings(config: AugmentConfig, bits: int) -> dict:
    from .. import __version__

    generated = any(bool(read_dataset_settings(p).get("is_generated_sample")) for p in config.inputs)
    return {
        "sameid_version": __version__,
        "name": "sameid augmented same-identity dataset",
        "source": {"kind": "augment", "path": ", ".join(config.inputs)},
        "is_generated_sample": generated,
        "near_duplicate_bits": bits,
        "augmentation": {"per_identity": config.per_identity, "recipe": AUGMENTATION_RECIPE,
                         "library": "albumentations", "seed": config.seed},
        "curriculum": None if config.curriculum is None else {
            "spread": config.curriculum, "embedder": config.embedder, "source_order": list(config.source_order),
            "column": RANK_COLUMN},
    }
