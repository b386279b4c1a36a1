"""Issue 10: pairs settings are checked once, in PairsConfig, and a dataset dir's recorded near-duplicate
threshold (build_settings.json) is the one its pairs are sampled and audited with unless the user sets another."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sameid.errors import SameIdError
from sameid.pairs.audit import PHASH, audit_pairs
from sameid.pairs.dataset import PairsConfig, PairsDataset, sample_pairs
from sameid.pairs.manifest import dataset_near_duplicate_bits, load_manifest
from sameid.records import DATASET_SETTINGS_FILE

# The target's hash is 0; "near" differs from it in 8 bits (a near-duplicate at threshold 10, not at the default
# 6); "far" in 32 bits (never a near-duplicate).
HASHES = {"x_target": "0000000000000000", "x_near": "00000000000000ff", "x_far": "00000000ffffffff"}


def write_dataset(root, settings: dict | None):
    (root / "images").mkdir(parents=True)
    ids = list(HASHES)
    rows = []
    for number, (identifier, phash) in enumerate(HASHES.items()):
        Image.fromarray(np.full((64, 48, 3), 40 * number, dtype=np.uint8)).save(root / "images" / f"{identifier}.png")
        rows.append({"id": identifier, "image": f"images/{identifier}.png", "identity": "x",
                     "similar": [o for o in ids if o != identifier], "caption": identifier, "tags": ["1girl"],
                     "head_box": [16.0, 2.0, 32.0, 18.0], "mask": None, "width": 48, "height": 64, "phash": phash,
                     "near_duplicates": []})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    if settings is not None:
        (root / DATASET_SETTINGS_FILE).write_text(json.dumps(settings))
    return root


def eligible_ids(dataset: PairsDataset, identifier: str) -> set[str]:
    manifest = dataset.manifest
    return {manifest.ids[r] for r in dataset.sampler.eligible[manifest.row_of[identifier]]}


def test_a_dataset_is_sampled_with_the_threshold_it_was_built_with(tmp_path):
    strict = write_dataset(tmp_path / "strict", {"near_duplicate_bits": 10, "grouping": "tags"})
    old = write_dataset(tmp_path / "old", None)  # built before sameid recorded its settings: the default, 6
    assert dataset_near_duplicate_bits(strict) == 10 and dataset_near_duplicate_bits(old) == 6

    recorded = PairsDataset(strict, PairsConfig(n_references=1))
    assert recorded.config.near_duplicate_bits == 10
    assert eligible_ids(recorded, "x_target") == {"x_far"}  # 8 bits <= 10: "near" is excluded
    assert eligible_ids(PairsDataset(old, PairsConfig(n_references=1)), "x_target") == {"x_near", "x_far"}
    # a threshold the user sets wins over the recorded one
    assert eligible_ids(PairsDataset(strict, PairsConfig(n_references=1, near_duplicate_bits=6)),
                        "x_target") == {"x_near", "x_far"}
    pairs = sample_pairs(strict, PairsConfig(n_references=1), epochs=20)
    assert "x_near" not in {ref for target, refs in zip(pairs["target_id"], pairs["reference_ids"])
                            if target == "x_target" for ref in refs}

    # the audit judges with the same threshold: a pair (x_target <- x_near) leaks for the strict dataset only
    frame = pd.DataFrame({"target_id": ["x_target"], "reference_ids": [["x_near"]]})
    assert PHASH in audit_pairs(load_manifest(strict), frame).leaks["reasons"].iloc[0]
    assert audit_pairs(load_manifest(old), frame).leaking_pairs == 0


def test_an_unreadable_recorded_threshold_is_one_clear_error(tmp_path):
    dataset = write_dataset(tmp_path / "d", {"near_duplicate_bits": 99})
    with pytest.raises(SameIdError, match="build_settings.json: near_duplicate_bits must be at most 64"):
        PairsDataset(dataset, PairsConfig())


@pytest.mark.parametrize("field, value, message", [
    ("mode", "bogus", "unknown reference mode"),
    ("shortfall", "maybe", "unknown shortfall policy"),
    ("task", "paint", "unknown task"),
    ("n_references", 0, "n_references must be at least 1"),
    ("n_references", 2.5, "n_references must be a whole number"),
    ("resolution", 100, "multiple of 8"),
    ("resolution", 0, "resolution must be at least 8"),
    ("prompt_drop", 1.5, "prompt_drop (a probability) must be at most 1"),
    ("near_duplicate_bits", 65, "near_duplicate_bits (perceptual-hash bits of 64) must be at most 64"),
    ("near_duplicate_bits", -1, "must be at least 0"),
    ("max_head_fraction", 0.0, "max_head_fraction must be greater than 0"),
    ("min_clothes_fraction", 2.0, "min_clothes_fraction must be at most 1"),
    ("curriculum", "hardest", "unknown curriculum 'hardest'; choose one of: phash"),
    ("curriculum", "source", "needs source_order"),
    ("source_order", "real", "source_order must be a list of text"),
])
def test_pairs_config_checks_every_field_at_construction(field, value, message):
    with pytest.raises(SameIdError) as error:
        PairsConfig(**{field: value})
    assert message in str(error.value)


def test_pairs_config_reads_numbers_written_as_text():
    config = PairsConfig(resolution="256", prompt_drop="1e-1", source_order=["a", "b"])
    assert config.resolution == 256 and config.prompt_drop == 0.1 and config.source_order == ("a", "b")
