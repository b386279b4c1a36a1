"""Training examples as a torch Dataset (RetriBooru, arXiv 2312.02521, §3.1, §5, A.4; RetriBooru, arXiv 2312.02521
equation 3 for the loss masks).

Each item is planned from a seed, the epoch and the target alone (:meth:`PairsDataset.plan`), never from worker
state, so the same epoch gives the same examples with any number of DataLoader workers or processes (accelerate
shards indices, it does not change them). Tasks: ``reconstruction`` (N whole-figure references captioned
"figure"), ``composition`` (each reference independently cropped to "face" or "clothes" with probability 0.5, see
:mod:`.concepts`; "figure" and "clothes" crops keep only the figure mask's pixels with ``concept_masks``),
``multitask`` (each example is one or the other with probability 0.5).

Setting -a (``mode="same"``): RetriBooru §3.1 "applies two different transforms [to] the same image as target and
reference". Each reference gets a random crop keeping 80-100 % of each side, then a mirror; the target gets its own,
independent random crop (80-100 % of each side) and a mirror with probability 0.5, its head box (the face loss
mask) moved with it. All are drawn from the example's generator, so they are reproducible.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from ..errors import SameIdError
from ..images import load_image, load_mask
from ..records import TrainingExample
from ..references import letterbox_into, reference_pixels
from .concepts import (
    DEFAULT_MAX_HEAD_FRACTION,
    DEFAULT_MIN_CLOTHES_FRACTION,
    MASKED_CONCEPTS,
    ConceptCrop,
    apply_figure_mask,
    concept_crop,
)
from .manifest import DatasetManifest, dataset_near_duplicate_bits, load_manifest
from .sampler import MODES, SHORTFALLS, ReferenceSampler

TASKS = ("reconstruction", "composition", "multitask")
#: What equation 3's second term weighs (PairsConfig.emphasis).
EMPHASES = ("face", "figure")
# Augmentations of the -a setting: a random crop keeping this fraction of each side, then a mirror (always for a
# reference, with this probability for the target).
_SAME_MODE_MIN_SIDE = 0.8
_SAME_MODE_TARGET_MIRROR = 0.5


@dataclass(frozen=True)
class PairsConfig:
    """How examples are drawn; the one owner of these settings and of their checks (``sameid pairs``, ``sameid
    audit`` and :class:`sameid.train.TrainConfig` all hold one). Every field is checked at construction, so a bad
    setting fails before any data is read or any file written.

    ``mode``: "identity" (-b) or "same" (-a). ``shortfall``: "repeat" (sample with replacement when an identity has
    fewer than ``n_references`` eligible references) or "refuse" (leave such targets out; :attr:`PairsDataset.refused`
    lists them). ``near_duplicate_bits``: perceptual-hash bits at or below which a reference is a near-duplicate of
    the target; None (the default) means the threshold the dataset dir was built with (its
    :data:`sameid.records.DATASET_SETTINGS_FILE`, :func:`dataset_near_duplicate_bits`). ``curriculum``: None
    (manifest order), "phash", "embedding" (give the dataset ``embeddings``) or "source" (with ``source_order``;
    see :mod:`.curriculum`). ``concept_masks``: "figure" and "clothes" crops keep only the pixels of the reference's
    figure mask, where it has one (the paper's masked concepts, :mod:`.concepts`); False keeps rectangles.
    ``emphasis``: the region equation 3's second term weighs (the example's ``face_mask``): "face", the target's
    head box (the paper: RetriBooru, arXiv 2312.02521, §5, eq. 3), or "figure", the target's figure mask (the
    manifest's ``mask`` column; a row without one gets an empty region, so only the first term trains it) --
    for subjects whose identity is the whole figure, as in the small world (:mod:`sameid.sources.world`)."""

    mode: str = "identity"
    task: str = "reconstruction"
    n_references: int = 4
    resolution: int = 384
    prompt_drop: float = 0.5
    shortfall: str = "repeat"
    seed: int = 0
    near_duplicate_bits: int | None = None
    max_head_fraction: float = DEFAULT_MAX_HEAD_FRACTION
    min_clothes_fraction: float = DEFAULT_MIN_CLOTHES_FRACTION
    curriculum: str | None = None
    source_column: str = "source"
    source_order: tuple[str, ...] = ()
    concept_masks: bool = True
    emphasis: str = "face"

    def __post_init__(self):
        from ..settings import as_float, as_int, as_optional_text, as_text_list
        from .curriculum import CURRICULA

        where = "pairs config"
        if self.mode not in MODES:
            raise SameIdError(f"unknown reference mode {self.mode!r}; choose one of: {', '.join(MODES)} "
                              "(identity: other images of the identity; same: an augmented copy of the target, "
                              "the leaking baseline)")
        if self.shortfall not in SHORTFALLS:
            raise SameIdError(f"unknown shortfall policy {self.shortfall!r}; choose one of: {', '.join(SHORTFALLS)}")
        if self.task not in TASKS:
            raise SameIdError(f"unknown task {self.task!r}; choose one of: {', '.join(TASKS)}")
        checked = {
            "n_references": as_int(where, "n_references", self.n_references, minimum=1),
            "resolution": as_int(where, "resolution", self.resolution, minimum=8),
            "prompt_drop": as_float(where, "prompt_drop (a probability)", self.prompt_drop, minimum=0.0,
                                    maximum=1.0),
            "seed": as_int(where, "seed", self.seed, minimum=0),
            "near_duplicate_bits": None if self.near_duplicate_bits is None else as_int(
                where, "near_duplicate_bits (perceptual-hash bits of 64)", self.near_duplicate_bits, minimum=0,
                maximum=64),
            "max_head_fraction": as_float(where, "max_head_fraction", self.max_head_fraction, above=0.0,
                                          maximum=1.0),
            "min_clothes_fraction": as_float(where, "min_clothes_fraction", self.min_clothes_fraction,
                                             minimum=0.0, maximum=1.0),
            "source_column": as_optional_text(where, "source_column", self.source_column) or "source",
            "source_order": as_text_list(where, "source_order", self.source_order),
        }
        if self.emphasis not in EMPHASES:
            raise SameIdError(f"{where}: unknown emphasis {self.emphasis!r}; choose one of: {', '.join(EMPHASES)} "
                              "(face: the head box, as equation 3; figure: the figure mask)")
        if not isinstance(self.concept_masks, bool):
            raise SameIdError(f"{where}: concept_masks must be true or false, got {self.concept_masks!r}")
        if checked["resolution"] % 8:
            raise SameIdError(f"resolution must be a positive multiple of 8 (256, 384, 512), got {self.resolution}")
        if self.curriculum is not None:
            if self.curriculum not in CURRICULA:
                raise SameIdError(f"unknown curriculum {self.curriculum!r}; choose one of: {', '.join(CURRICULA)} "
                                  "(or none: shuffled)")
            if self.curriculum == "source" and not checked["source_order"]:
                raise SameIdError(f"{where}: curriculum 'source' needs source_order (curriculum_source_order in a "
                                  "training config): the sources from easy to hard, e.g. [synthetic, real]")
        for name, value in checked.items():  # frozen: the checked (coerced) values replace what was given
            object.__setattr__(self, name, value)

    def with_dataset_settings(self, dataset: str | os.PathLike | DatasetManifest) -> PairsConfig:
        """This config with every "from the dataset" setting (None) replaced by the dataset dir's recorded value."""
        if self.near_duplicate_bits is not None:
            return self
        return replace(self, near_duplicate_bits=dataset_near_duplicate_bits(dataset))


@dataclass(frozen=True)
class ExamplePlan:
    """Everything random about one example, decided before any pixel is read (what ``sameid pairs`` writes)."""

    epoch: int
    target_row: int
    task: str
    reference_rows: tuple[int, ...]
    crops: tuple[ConceptCrop, ...]
    caption_dropped: bool
    # -a only: per reference, (x0, y0, x1, y1) as fractions of the concept crop, and whether to mirror it.
    augmentations: tuple[tuple[tuple[float, float, float, float], bool], ...] = field(default=())
    # -a only: the target's own transform, (x0, y0, x1, y1) as fractions of the image, and whether to mirror it.
    target_augmentation: tuple[tuple[float, float, float, float], bool] | None = None


class PlannedExamples(torch.utils.data.Dataset):
    """What every example dataset shares: ``target_rows`` of ``manifest`` under ``config``, the epoch, and each
    item planned from (seed, epoch, target row) alone, then read (:meth:`plan` then :meth:`example`)."""

    manifest: DatasetManifest
    config: PairsConfig
    target_rows: list[int]
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.target_rows)

    def __getitem__(self, index: int) -> TrainingExample:
        return self.example(self.plan(index))

    def plan(self, index: int, epoch: int | None = None):
        raise NotImplementedError

    def example(self, plan) -> TrainingExample:
        raise NotImplementedError

    def _start_plan(self, index: int, epoch: int | None) -> tuple[int, int, np.random.Generator, str]:
        """``(epoch, target row, generator, task)`` of item ``index``; a multitask item draws its task first."""
        epoch = self.epoch if epoch is None else int(epoch)
        row = self.target_rows[index]
        rng = np.random.default_rng([self.config.seed, epoch, row])
        task = self.config.task
        if task == "multitask":
            task = "reconstruction" if rng.random() < 0.5 else "composition"
        return epoch, row, rng, task

    def _concept_crops(self, task: str, references, rng: np.random.Generator) -> tuple[ConceptCrop, ...]:
        """Whole figures for reconstruction; face or clothes (p = 0.5 each) for composition (A.4)."""
        config, manifest = self.config, self.manifest
        if task == "reconstruction":
            requested = ["figure"] * len(references)
        else:
            requested = ["face" if draw < 0.5 else "clothes" for draw in rng.random(len(references))]
        return tuple(
            concept_crop(concept, manifest.head_boxes[ref], manifest.widths[ref], manifest.heights[ref],
                         config.max_head_fraction, config.min_clothes_fraction)
            for concept, ref in zip(requested, references)
        )


class PairsDataset(PlannedExamples):
    """A map-style Dataset of :class:`sameid.records.TrainingExample` over a dataset dir.

    Call :meth:`set_epoch` before iterating an epoch (with ``persistent_workers=False``, the default, workers
    copy the dataset when the iterator is made, so they see the new epoch).
    """

    def __init__(self, dataset: str | os.PathLike | DatasetManifest, config: PairsConfig | None = None, *,
                 embeddings: dict[str, np.ndarray] | None = None, **overrides):
        """``embeddings`` (id -> vector, e.g. from :func:`sameid.pairs.audit.embed_rows`) is what curriculum
        "embedding" orders by; other curricula ignore it."""
        self.manifest = dataset if isinstance(dataset, DatasetManifest) else load_manifest(dataset)
        # ``config.near_duplicate_bits`` None: the threshold the dataset was built with.
        self.config = replace(config or PairsConfig(), **overrides).with_dataset_settings(self.manifest)
        self.sampler = ReferenceSampler(self.manifest, self.config.mode, self.config.n_references,
                                        self.config.shortfall, self.config.near_duplicate_bits)
        # Multi-subject rows are targets of sameid.pairs.multi_subject, never of single-subject examples.
        from ..dataset.subjects import is_multi_subject

        multi = is_multi_subject(self.manifest.frame)
        rows = [row for row in range(len(self.manifest)) if not multi[row]]
        if self.config.emphasis == "figure" and all(path is None for path in self.manifest.mask_paths):
            raise SameIdError(f"{self.manifest.root}: emphasis 'figure' weighs each target's figure mask, but the "
                              "manifest has no masks (its mask column is empty): build the dataset with figure "
                              "masks, or use emphasis 'face'")
        self.refused: list[str] = [self.manifest.ids[r] for r in rows if not self.sampler.can_sample(r)]
        self.target_rows: list[int] = [r for r in rows if self.sampler.can_sample(r)]
        if self.config.curriculum:
            from .curriculum import curriculum_order

            self.target_rows = curriculum_order(self.manifest, self.target_rows, by=self.config.curriculum,
                                                embeddings=embeddings, source_column=self.config.source_column,
                                                source_order=self.config.source_order)
        self.epoch = 0

    def plan(self, index: int, epoch: int | None = None) -> ExamplePlan:
        """The random choices of item ``index`` in ``epoch`` (default: the current epoch)."""
        config = self.config
        epoch, row, rng, task = self._start_plan(index, epoch)
        references = self.sampler.sample(row, rng)
        crops = self._concept_crops(task, references, rng)
        augmentations = ()
        if config.mode == "same":
            sides = rng.uniform(_SAME_MODE_MIN_SIDE, 1.0, size=(len(references), 2))
            starts = rng.uniform(0.0, 1.0, size=(len(references), 2)) * (1.0 - sides)
            augmentations = tuple(
                ((float(sx), float(sy), float(sx + w), float(sy + h)), True)
                for (sx, sy), (w, h) in zip(starts, sides)
            )
        caption_dropped = bool(rng.random() < config.prompt_drop)
        target_augmentation = None
        if config.mode == "same":  # drawn last, so the draws above are those of a plan without it
            (sx, sy), (w, h) = rng.uniform(0.0, 1.0, size=2), rng.uniform(_SAME_MODE_MIN_SIDE, 1.0, size=2)
            sx, sy = sx * (1.0 - w), sy * (1.0 - h)
            target_augmentation = ((float(sx), float(sy), float(sx + w), float(sy + h)),
                                   bool(rng.random() < _SAME_MODE_TARGET_MIRROR))
        return ExamplePlan(epoch, row, task, tuple(references), crops, caption_dropped, augmentations,
                           target_augmentation)

    def example(self, plan: ExamplePlan) -> TrainingExample:
        """Read the pixels of ``plan`` and build the example."""
        manifest, resolution = self.manifest, self.config.resolution
        row = plan.target_row
        images: dict[int, np.ndarray] = {}

        def image_of(r: int) -> np.ndarray:
            if r not in images:
                images[r] = np.asarray(load_image(manifest.image_paths[r])[0])
            return images[r]

        masked: dict[int, np.ndarray] = {}

        def masked_image_of(r: int) -> np.ndarray:
            if r not in masked:
                image = image_of(r)
                mask = load_mask(manifest.mask_paths[r], size=(image.shape[1], image.shape[0]))
                masked[r] = apply_figure_mask(image, mask)
            return masked[r]

        target_image = image_of(row)
        source_size = (target_image.shape[1], target_image.shape[0])
        head = manifest.head_boxes[row]
        if plan.target_augmentation is not None:  # -a: the target's own transform, its head box moved with it
            head = None if head is None else _augment_box(head, *plan.target_augmentation, target_image.shape)
            target_image = _augment(target_image, *plan.target_augmentation)
        # Assembled in numpy and wrapped once: small torch ops cost milliseconds each under intra-op threading.
        # Pixels are resized straight into the channel-first arrays (no (R, R, 3) canvas, no transposed copy).
        target = np.empty((3, resolution, resolution), dtype=np.uint8)
        valid_box, scale = letterbox_into(target_image, target)
        valid_mask = box_mask_array(valid_box, resolution)
        if self.config.emphasis == "figure":
            face_mask = self._figure_region(row, source_size, plan.target_augmentation, resolution) * valid_mask
        else:
            face_box = (0, 0, 0, 0) if head is None else _map_box(head, scale, valid_box)
            face_mask = box_mask_array(face_box, resolution)

        count = len(plan.reference_rows)
        references = np.empty((count, 3, resolution, resolution), dtype=np.uint8)
        reference_masks = np.zeros((count, 1, resolution, resolution), dtype=np.uint8)
        made: dict[tuple, int] = {}  # a reference drawn twice with the same crop (shortfall "repeat") is copied
        for i, (ref, crop_box) in enumerate(zip(plan.reference_rows, plan.crops)):
            augmentation = plan.augmentations[i] if plan.augmentations else None
            use_mask = (self.config.concept_masks and crop_box.concept in MASKED_CONCEPTS
                        and manifest.mask_paths[ref] is not None)
            key = (ref, crop_box.box, augmentation, use_mask)
            if key in made:
                references[i], reference_masks[i] = references[made[key]], reference_masks[made[key]]
                continue
            made[key] = i
            transform = (lambda piece, a=augmentation: _augment(piece, *a)) if augmentation else None
            source = masked_image_of(ref) if use_mask else image_of(ref)
            x0, y0, x1, y1 = reference_pixels(source, crop_box.box, references[i], transform)
            reference_masks[i, :, y0:y1, x0:x1] = 1
        caption = manifest.captions[row]
        return TrainingExample(
            target_id=manifest.ids[row], identity=manifest.identities[row],
            target=torch.from_numpy(target),
            valid_mask=torch.from_numpy(valid_mask), face_mask=torch.from_numpy(face_mask),
            references=torch.from_numpy(references), reference_valid_masks=torch.from_numpy(reference_masks),
            reference_ids=[manifest.ids[r] for r in plan.reference_rows],
            reference_concepts=[c.concept for c in plan.crops], reference_boxes=[c.box for c in plan.crops],
            caption="" if plan.caption_dropped else caption, full_caption=caption,
            caption_dropped=plan.caption_dropped, task=plan.task, mode=self.config.mode,
        )

    def _figure_region(self, row: int, size: tuple[int, int], augmentation, resolution: int) -> np.ndarray:
        """The target's figure mask (brought to its image's ``size``, (w, h)) as a uint8 (1, R, R) array placed
        as the target's pixels are (its -a transform, then the letterbox); all zero when the row has no mask."""
        path = self.manifest.mask_paths[row]
        region = np.zeros((3, resolution, resolution), dtype=np.uint8)
        if path is None:
            return region[:1]
        mask = load_mask(path, size=size).astype(np.uint8) * 255
        if augmentation is not None:
            mask = _augment(mask, *augmentation)
        # As three channels, so the mask is resized exactly as the target's pixels are; the letterbox's padding
        # (white) is outside the valid area, which the caller multiplies in.
        letterbox_into(np.ascontiguousarray(np.repeat(mask[:, :, None], 3, axis=2)), region)
        return (region[:1] > 127).astype(np.uint8)

    def pairs_frame(self, epochs: int = 1, start_epoch: int = 0) -> pd.DataFrame:
        """One row per planned example of ``epochs`` epochs: ids, concepts and crop boxes (no pixels read)."""
        manifest = self.manifest
        rows = []
        for epoch in range(start_epoch, start_epoch + epochs):
            for index in range(len(self)):
                plan = self.plan(index, epoch)
                rows.append({
                    "epoch": epoch, "index": index, "target_id": manifest.ids[plan.target_row],
                    "identity": manifest.identities[plan.target_row], "mode": self.config.mode, "task": plan.task,
                    "reference_ids": [manifest.ids[r] for r in plan.reference_rows],
                    "requested_concepts": [c.requested for c in plan.crops],
                    "concepts": [c.concept for c in plan.crops],
                    "crop_boxes": [list(c.box) for c in plan.crops],
                    "fallbacks": [c.fallback or "" for c in plan.crops],
                    "caption_dropped": plan.caption_dropped,
                })
        return pd.DataFrame(rows, columns=PAIRS_COLUMNS)


PAIRS_COLUMNS = ("epoch", "index", "target_id", "identity", "mode", "task", "reference_ids", "requested_concepts",
                 "concepts", "crop_boxes", "fallbacks", "caption_dropped")


def sample_pairs(dataset: str | os.PathLike | DatasetManifest, config: PairsConfig | None = None, epochs: int = 1,
                 **overrides) -> pd.DataFrame:
    """The pairs table (columns :data:`PAIRS_COLUMNS`) for ``epochs`` epochs of a dataset dir."""
    return PairsDataset(dataset, config, **overrides).pairs_frame(epochs)


def box_mask_array(box: tuple[int, int, int, int], resolution: int) -> np.ndarray:
    """A uint8 (1, R, R) mask that is 1 exactly on ``box`` (x1, y1 exclusive)."""
    mask = np.zeros((1, resolution, resolution), dtype=np.uint8)
    x0, y0, x1, y1 = box
    mask[:, y0:y1, x0:x1] = 1
    return mask


def _map_box(box, scale: float, valid_box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """A source-pixel box on the letterboxed canvas: floor the start, ceil the end, clip to the valid area."""
    vx0, vy0, vx1, vy1 = valid_box
    x0, y0, x1, y1 = box
    left = max(vx0, int(np.floor(vx0 + x0 * scale)))
    top = max(vy0, int(np.floor(vy0 + y0 * scale)))
    right = min(vx1, int(np.ceil(vx0 + x1 * scale)))
    bottom = min(vy1, int(np.ceil(vy0 + y1 * scale)))
    return (left, top, max(left, right), max(top, bottom))


def _augment_window(fractions: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """The pixel window (left, top, right, bottom; right and bottom exclusive) of an -a crop given as fractions."""
    fx0, fy0, fx1, fy1 = fractions
    left, top = int(fx0 * width), int(fy0 * height)
    return left, top, max(left + 1, int(fx1 * width)), max(top + 1, int(fy1 * height))


def _augment(image: np.ndarray, fractions: tuple[float, float, float, float], mirror: bool) -> np.ndarray:
    left, top, right, bottom = _augment_window(fractions, image.shape[1], image.shape[0])
    image = image[top:bottom, left:right]
    return image[:, ::-1] if mirror else image


def _augment_box(box, fractions: tuple[float, float, float, float], mirror: bool,
                 shape: tuple[int, ...]) -> tuple[float, float, float, float] | None:
    """Where ``box`` (source pixels) lies in the image after :func:`_augment`; None when it is cropped away."""
    left, top, right, bottom = _augment_window(fractions, shape[1], shape[0])
    width, height = min(right, shape[1]) - left, min(bottom, shape[0]) - top
    x0, y0, x1, y1 = box
    x0, x1 = min(max(x0 - left, 0), width), min(max(x1 - left, 0), width)
    y0, y1 = min(max(y0 - top, 0), height), min(max(y1 - top, 0), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return (width - x1, y0, width - x0, y1) if mirror else (x0, y0, x1, y1)


def collate_examples(examples: list[TrainingExample]) -> dict:
    """Stack a list of examples into a batch dict (tensors stacked, strings and ids as lists).

    A batch with multi-subject examples (:mod:`.multi_subject`) also gets ``subject_identities`` (lists),
    ``reference_subjects`` (B, N) long, ``subject_masks`` (B, K, 1, H, W) with K the batch's most subjects (a
    missing subject is an empty mask) and ``reference_valid`` (B, N) bool: references are padded to the batch's
    most (zeros, ``reference_valid`` False), so examples of 2 and 3 subjects share a batch. A single-subject
    example in such a batch is one subject (index 0) whose mask is its valid area."""
    if any(e.subject_identities is not None for e in examples):
        return _collate_multi_subject(examples)
    first = examples[0]
    if any(e.references.shape != first.references.shape or e.target.shape != first.target.shape for e in examples):
        raise SameIdError("examples of one batch must have the same number of references and resolution")
    # default_collate stacks straight into shared memory inside a DataLoader worker (torch.stack would make a
    # batch that is copied again to be sent to the main process).
    batch = {name: torch.utils.data.default_collate([getattr(e, name) for e in examples])
             for name in ("target", "valid_mask", "face_mask", "references", "reference_valid_masks")}
    batch["caption_dropped"] = torch.tensor([e.caption_dropped for e in examples], dtype=torch.bool)
    for name in ("target_id", "identity", "reference_ids", "reference_concepts", "reference_boxes", "caption",
                 "full_caption", "task", "mode"):
        batch[name] = [getattr(e, name) for e in examples]
    return batch


def _collate_multi_subject(examples: list[TrainingExample]) -> dict:
    first = examples[0]
    if any(e.target.shape != first.target.shape for e in examples):
        raise SameIdError("examples of one batch must have the same resolution")
    n = max(e.references.shape[0] for e in examples)
    k = max(len(e.subject_identities or [None]) for e in examples)
    size = first.target.shape[-2:]
    batch = {name: torch.utils.data.default_collate([getattr(e, name) for e in examples])
             for name in ("target", "valid_mask", "face_mask")}
    references = torch.zeros((len(examples), n, *first.references.shape[1:]), dtype=first.references.dtype)
    reference_masks = torch.zeros((len(examples), n, 1, *size), dtype=first.reference_valid_masks.dtype)
    reference_valid = torch.zeros((len(examples), n), dtype=torch.bool)
    reference_subjects = torch.zeros((len(examples), n), dtype=torch.long)
    subject_masks = torch.zeros((len(examples), k, 1, *size), dtype=torch.uint8)
    for b, e in enumerate(examples):
        count = e.references.shape[0]
        references[b, :count] = e.references
        reference_masks[b, :count] = e.reference_valid_masks
        reference_valid[b, :count] = True
        if e.subject_identities is None:
            subject_masks[b, 0] = e.valid_mask
        else:
            reference_subjects[b, :count] = torch.as_tensor(e.reference_subjects, dtype=torch.long)
            subject_masks[b, :len(e.subject_identities)] = e.subject_masks
    batch.update(references=references, reference_valid_masks=reference_masks, reference_valid=reference_valid,
                 reference_subjects=reference_subjects, subject_masks=subject_masks)
    batch["caption_dropped"] = torch.tensor([e.caption_dropped for e in examples], dtype=torch.bool)
    for name in ("target_id", "identity", "reference_ids", "reference_concepts", "reference_boxes", "caption",
                 "full_caption", "task", "mode"):
        batch[name] = [getattr(e, name) for e in examples]
    batch["subject_identities"] = [e.subject_identities or [e.identity] for e in examples]
    return batch
