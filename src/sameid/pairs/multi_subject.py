"""Multi-subject training examples: one target showing K >= 2 subjects, N references per subject.

PairHuman (arXiv 2511.16712) conditions each of two subjects on its own reference images and keeps their
identities apart by giving each its own cross-attention; FastComposer (arXiv 2305.10431) supervises each
subject's attention with its segmentation mask, and MS-Diffusion (arXiv 2406.07209) grounds each subject in a
layout box. What a model of that family needs from the data is here: the target (letterboxed like every target),
the references of each subject drawn from the dataset's ``subject_references`` (single-subject images of that
subject's identity: never the target, never a near-duplicate of it, checked again here), the subject index of each
reference (``reference_subjects``) and each subject's region mask in the target's letterboxed frame
(``subject_masks``; the subject's figure mask, or its figure box where it has none). References are flat, subject
after subject: (K * N, 3, H, W).

The random choices of an example come from (seed, epoch, target row), as in :mod:`.dataset`, so they are the same
with any number of workers. :func:`subject_reference_leaks` audits every subject's reference pool.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from ..dataset.subjects import is_multi_subject
from ..errors import SameIdError
from ..images import load_image, load_mask
from ..records import TrainingExample
from ..references import letterbox_into, reference_pixels
from .concepts import MASKED_CONCEPTS, ConceptCrop, apply_figure_mask
from .dataset import PairsConfig, PlannedExamples, _map_box, box_mask_array
from .manifest import DatasetManifest, load_manifest

SUBJECT_SELF = "subject reference is the target"
SUBJECT_NEAR_DUPLICATE = "subject reference within near-duplicate bits"
SUBJECT_OTHER_IDENTITY = "subject reference of another identity"
SUBJECT_MULTI_REFERENCE = "subject reference shows several subjects"


def _ids(value) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [str(v) for v in value]


def subject_reference_pools(manifest: DatasetManifest, near_duplicate_bits: int) -> dict[int, list[list[int]]]:
    """Per multi-subject row, per subject, the rows it may draw references from: its ``subject_references``
    that are single-subject images of the subject's identity, not the row, not within ``near_duplicate_bits``."""
    frame = manifest.frame
    multi = is_multi_subject(frame)
    pools = {}
    for row in np.flatnonzero(multi):
        subjects = [str(s) for s in frame["subjects"].iloc[row]]
        lists = list(frame["subject_references"].iloc[row])
        per_subject = []
        for identity, references in zip(subjects, lists):
            keep = []
            for other in (manifest.row_of.get(i) for i in _ids(references)):
                if other is None or other == row or multi[other] or manifest.identities[other] != identity:
                    continue
                if (manifest.phash[row] ^ manifest.phash[other]).bit_count() <= near_duplicate_bits:
                    continue
                keep.append(other)
            per_subject.append(keep)
        pools[int(row)] = per_subject
    return pools


def subject_reference_leaks(manifest: DatasetManifest, near_duplicate_bits: int) -> pd.DataFrame:
    """Every (multi-subject row, subject, listed reference) that would leak or mislead, with its reasons: the
    target itself, a near-duplicate of it, an image of another identity, an image of several subjects. A dataset
    written by ``sameid build`` has none; :func:`sameid.pairs.audit.audit_pairs` reports them."""
    frame = manifest.frame
    multi = is_multi_subject(frame)
    leaks = []
    for row in np.flatnonzero(multi):
        subjects = [str(s) for s in frame["subjects"].iloc[row]]
        for slot, (identity, references) in enumerate(zip(subjects, frame["subject_references"].iloc[row])):
            for reference_id in _ids(references):
                other = manifest.row_of.get(reference_id)
                if other is None:
                    raise SameIdError(f"{manifest.root / 'manifest.parquet'}: subject_references of "
                                      f"{manifest.ids[row]!r} names unknown id {reference_id!r}")
                distance = (manifest.phash[row] ^ manifest.phash[other]).bit_count()
                reasons = []
                if other == row:
                    reasons.append(SUBJECT_SELF)
                if distance <= near_duplicate_bits:
                    reasons.append(SUBJECT_NEAR_DUPLICATE)
                if manifest.identities[other] != identity:
                    reasons.append(SUBJECT_OTHER_IDENTITY)
                if multi[other]:
                    reasons.append(SUBJECT_MULTI_REFERENCE)
                if reasons:
                    leaks.append({"epoch": -1, "index": int(row), "target_id": manifest.ids[row],
                                  "reference_id": reference_id, "slot": slot, "phash_distance": distance,
                                  "similarity": None, "reasons": reasons})
    return pd.DataFrame(leaks, columns=["epoch", "index", "target_id", "reference_id", "slot", "phash_distance",
                                        "similarity", "reasons"])


@dataclass(frozen=True)
class MultiSubjectPlan:
    epoch: int
    target_row: int
    task: str
    reference_rows: tuple[int, ...]
    reference_subjects: tuple[int, ...]
    crops: tuple[ConceptCrop, ...]
    caption_dropped: bool


class MultiSubjectDataset(PlannedExamples):
    """A map-style Dataset of multi-subject :class:`sameid.records.TrainingExample` over a dataset dir's
    multi-subject rows (``mode`` "identity" only: the -a setting has no meaning for K subjects)."""

    def __init__(self, dataset: str | os.PathLike | DatasetManifest, config: PairsConfig | None = None,
                 **overrides):
        self.manifest = dataset if isinstance(dataset, DatasetManifest) else load_manifest(dataset)
        self.config = replace(config or PairsConfig(), **overrides).with_dataset_settings(self.manifest)
        if self.config.mode != "identity":
            raise SameIdError("multi-subject examples draw references of each subject's identity: mode 'identity'")
        self.pools = subject_reference_pools(self.manifest, self.config.near_duplicate_bits)
        refuse = self.config.shortfall == "refuse"
        self.refused = [self.manifest.ids[r] for r, pools in self.pools.items()
                        if not all(pools) or (refuse and min(map(len, pools)) < self.config.n_references)]
        refused = set(self.refused)
        self.target_rows = [r for r in self.pools if self.manifest.ids[r] not in refused]
        self.epoch = 0

    def plan(self, index: int, epoch: int | None = None) -> MultiSubjectPlan:
        config = self.config
        epoch, row, rng, task = self._start_plan(index, epoch)
        references, owners = [], []
        for subject, pool in enumerate(self.pools[row]):
            n = config.n_references
            if len(pool) >= n:
                chosen = [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
            else:  # every distinct reference once, then repeats (shortfall "repeat")
                chosen = [pool[i] for i in rng.permutation(len(pool))]
                chosen += [pool[i] for i in rng.integers(0, len(pool), size=n - len(pool))]
            references += chosen
            owners += [subject] * n
        crops = self._concept_crops(task, references, rng)
        return MultiSubjectPlan(epoch, row, task, tuple(references), tuple(owners), crops,
                                bool(rng.random() < config.prompt_drop))

    def example(self, plan: MultiSubjectPlan) -> TrainingExample:
        manifest, resolution, frame = self.manifest, self.config.resolution, self.manifest.frame
        row = plan.target_row
        image = np.asarray(load_image(manifest.image_paths[row])[0])
        target = np.empty((3, resolution, resolution), dtype=np.uint8)
        valid_box, scale = letterbox_into(image, target)
        valid_mask = box_mask_array(valid_box, resolution)
        face_mask = np.zeros((1, resolution, resolution), dtype=np.uint8)
        for box in frame["subject_head_boxes"].iloc[row]:
            if box is not None:
                face_mask |= box_mask_array(_map_box(tuple(box), scale, valid_box), resolution)
        masks = []
        for path, box in zip(frame["subject_masks"].iloc[row], frame["subject_boxes"].iloc[row]):
            if path:
                mask = load_mask(path, size=(image.shape[1], image.shape[0])).astype(np.uint8) * 255
                canvas = np.empty((3, resolution, resolution), dtype=np.uint8)
                letterbox_into(np.repeat(mask[:, :, None], 3, axis=2), canvas)
                region = (canvas[:1] > 127).astype(np.uint8) * valid_mask
            else:
                region = box_mask_array(_map_box(tuple(box), scale, valid_box), resolution)
            masks.append(region)

        count = len(plan.reference_rows)
        references = np.empty((count, 3, resolution, resolution), dtype=np.uint8)
        reference_masks = np.zeros((count, 1, resolution, resolution), dtype=np.uint8)
        for i, (ref, crop) in enumerate(zip(plan.reference_rows, plan.crops)):
            source = np.asarray(load_image(manifest.image_paths[ref])[0])
            if self.config.concept_masks and crop.concept in MASKED_CONCEPTS and manifest.mask_paths[ref]:
                source = apply_figure_mask(source, load_mask(manifest.mask_paths[ref],
                                                             size=(source.shape[1], source.shape[0])))
            x0, y0, x1, y1 = reference_pixels(source, crop.box, references[i])
            reference_masks[i, :, y0:y1, x0:x1] = 1
        caption = manifest.captions[row]
        return TrainingExample(
            target_id=manifest.ids[row], identity=manifest.identities[row], target=torch.from_numpy(target),
            valid_mask=torch.from_numpy(valid_mask), face_mask=torch.from_numpy(face_mask),
            references=torch.from_numpy(references), reference_valid_masks=torch.from_numpy(reference_masks),
            reference_ids=[manifest.ids[r] for r in plan.reference_rows],
            reference_concepts=[c.concept for c in plan.crops], reference_boxes=[c.box for c in plan.crops],
            caption="" if plan.caption_dropped else caption, full_caption=caption,
            caption_dropped=plan.caption_dropped, task=plan.task, mode=self.config.mode,
            subject_identities=[str(s) for s in frame["subjects"].iloc[row]],
            reference_subjects=list(plan.reference_subjects),
            subject_masks=torch.from_numpy(np.stack(masks)),
        )
