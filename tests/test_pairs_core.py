"""Issue 3 (first tests): leakage-free sampling, crop fallbacks, masks, determinism, schema errors."""

import pandas as pd
import pytest
import torch

from sameid.errors import SchemaError
from sameid.pairs.audit import audit_pairs
from sameid.pairs.concepts import concept_crop
from sameid.pairs.dataset import PairsConfig, PairsDataset, collate_examples, sample_pairs
from sameid.pairs.manifest import load_manifest


@pytest.fixture(scope="module")
def manifest(built_sample):
    return load_manifest(built_sample.out)


def test_identity_mode_never_leaks_and_same_mode_always_does(manifest):
    identity = sample_pairs(manifest, PairsConfig(mode="identity", task="composition"), epochs=2)
    report = audit_pairs(manifest, identity, n_references=4)
    assert len(identity) == 2 * len(manifest) and report.leaking_pairs == 0
    for row in identity.itertuples():
        assert row.target_id not in list(row.reference_ids)
    # the sample has planted near-duplicates, and none is ever a reference of its original
    near = {(manifest.ids[r], manifest.ids[o]) for r in range(len(manifest)) for o in manifest.near_duplicates[r]}
    assert near
    for row in identity.itertuples():
        assert not {(row.target_id, ref) for ref in row.reference_ids} & near
    same = sample_pairs(manifest, PairsConfig(mode="same"), epochs=1)
    assert audit_pairs(manifest, same, n_references=4).leaking_pairs == len(same)


def test_crop_fallbacks():
    assert concept_crop("face", None, 100, 200).concept == "figure"
    assert concept_crop("face", (10, 10, 50, 60), 100, 200).concept == "face"
    assert concept_crop("clothes", (10, 10, 50, 60), 100, 200).concept == "clothes"
    # head covering most of the image, or nothing left below it: clothes fall back to figure
    assert concept_crop("clothes", (0, 0, 100, 190), 100, 200).concept == "figure"
    assert concept_crop("clothes", (10, 150, 60, 198), 100, 200).concept == "figure"


def test_masks_cover_exactly_the_valid_area_and_the_head_box(manifest):
    dataset = PairsDataset(manifest, PairsConfig(resolution=256, task="composition"))
    row = next(r for r in range(len(manifest)) if manifest.head_boxes[r] is not None)
    example = dataset[row]
    valid = example.valid_mask[0].bool()
    width, height = manifest.widths[row], manifest.heights[row]
    scale = min(256 / width, 256 / height)
    assert int(valid.sum()) == pytest.approx(round(width * scale) * round(height * scale), rel=0.02)
    assert bool((example.face_mask.bool() <= valid).all()) and int(example.face_mask.sum()) > 0


def test_examples_are_identical_with_and_without_dataloader_workers(manifest):
    dataset = PairsDataset(manifest, PairsConfig(resolution=256, task="multitask", seed=3))
    subset = torch.utils.data.Subset(dataset, list(range(8)))
    batches = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(subset, batch_size=4, num_workers=workers, collate_fn=collate_examples)
        batches[workers] = list(loader)
    for a, b in zip(batches[0], batches[2], strict=True):
        assert a["target_id"] == b["target_id"]
        assert torch.equal(a["target"], b["target"]) and torch.equal(a["references"], b["references"])


def test_a_dataset_dir_without_a_required_column_is_a_clear_error(built_sample, tmp_path):
    frame = pd.read_parquet(built_sample.out / "manifest.parquet").drop(columns=["phash"])
    frame.to_parquet(tmp_path / "manifest.parquet")
    with pytest.raises(SchemaError, match="phash"):
        load_manifest(tmp_path)
