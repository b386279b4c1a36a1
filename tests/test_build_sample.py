"""`sameid build` on the bundled sample with the offline backends, checked against its ground truth."""

import itertools
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from sameid.errors import SameIdError
from sameid.records import MANIFEST_COLUMNS, read_dataset_settings

EXPECTED_REASONS = {
    "missing": "missing file",
    "corrupt": "unreadable image",
    "empty": "empty file",
    "two_characters": "more than one character",
    "monochrome": "unwanted tag: monochrome",
    "no_clothing": "no clothing tag",
    "outside_root": "path outside image root",
    "unsafe_rating": "unsafe rating",
}


def _truth(sample) -> pd.DataFrame:
    return pd.read_csv(sample.ground_truth, dtype=str, keep_default_na=False)


def _pairs(frame: pd.DataFrame, key: str) -> set[tuple[str, str]]:
    pairs = set()
    for _, members in frame.groupby(key):
        pairs.update(itertools.combinations(sorted(members["id"]), 2))
    return pairs


def test_pairwise_same_identity_precision_and_recall(sample, built_sample):
    truth = _truth(sample)
    truth = truth[truth["identity"] != ""]
    manifest = built_sample.manifest
    kept = manifest[manifest["id"].isin(truth["id"])]
    predicted = _pairs(kept, "identity")
    actual = _pairs(truth, "identity")
    true_positive = len(predicted & actual)
    precision = true_positive / len(predicted)
    recall = true_positive / len(actual)
    print(f"pairwise precision {precision:.4f} recall {recall:.4f} ({len(predicted)} predicted, {len(actual)} true)")
    # The figures of docs/benchmarks.md ("Outfit answer matching"), under strict matching, the default (A.1): the
    # pixel answerer speaks the basic colour terms, so colour-family matching adds nothing on the sample.
    assert read_dataset_settings(built_sample.out)["answer_matching"] == "strict"
    assert (len(predicted), len(actual)) == (312, 312)
    assert precision == 1.0
    assert recall == 1.0


def test_every_planted_bad_input_is_rejected_with_a_fitting_reason(sample, built_sample):
    truth = _truth(sample)
    rejected = pq.read_table(built_sample.out / "rejected.parquet").to_pandas()
    reasons = dict(zip(rejected["id"], rejected["reason"]))
    planted = truth[truth["plant"].isin(EXPECTED_REASONS)]
    assert set(planted["plant"]) == set(EXPECTED_REASONS)
    for row in planted.itertuples():
        assert reasons.get(row.id) == EXPECTED_REASONS[row.plant], (row.id, row.plant, reasons.get(row.id))
    assert not set(planted["id"]) & set(built_sample.manifest["id"])
    assert (rejected["detail"].str.len() > 0).all()


def test_near_duplicates_are_marked_within_their_identity(sample, built_sample):
    truth = _truth(sample)
    manifest = built_sample.manifest.set_index("id")
    planted = truth[truth["plant"] == "near_duplicate"]
    assert len(planted) >= 2
    marked = 0
    for row in planted.itertuples():
        if row.id in manifest.index and row.near_duplicate_of in manifest.index:
            marked += 1
            assert row.near_duplicate_of in list(manifest.at[row.id, "near_duplicates"])
            assert row.id in list(manifest.at[row.near_duplicate_of, "near_duplicates"])
    assert marked == len(planted)


def test_manifest_contract(built_sample):
    manifest = pq.read_table(built_sample.out / "manifest.parquet").to_pandas()
    assert tuple(manifest.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert manifest["id"].is_unique
    by_identity = manifest.groupby("identity")["id"].apply(set).to_dict()
    for row in manifest.itertuples():
        similar = set(row.similar)
        assert row.id not in similar and similar, row.id
        assert similar == by_identity[row.identity] - {row.id}
        assert Path(row.image).is_file()
        if row.mask is not None:
            mask = Path(row.mask) if Path(row.mask).is_absolute() else built_sample.out / row.mask
            assert mask.is_file()
        assert row.head_box is None or len(row.head_box) == 4
        assert len(row.phash) == 16
    assert set(manifest["vqa_backend"]) == {"pixel-colors"}
    for name in ("stats.json", "README.md", "rejected.parquet"):
        assert (built_sample.out / name).is_file()


def test_given_annotations_are_used(sample, built_sample):
    manifest = built_sample.manifest
    given = manifest[manifest["head_box_source"] == "given"]
    assert len(given) > 0 and (manifest["mask_source"] == "given").sum() > 0
    assert (manifest["head_box_source"] == "mask-top").sum() > 0


def test_source_collection_is_not_modified(sample, sample_digest_before_build, built_sample):
    from conftest import tree_digest

    assert tree_digest(sample.root) == sample_digest_before_build


def test_export_to_huggingface_datasets(built_sample, tmp_path):
    import datasets

    from sameid.dataset.pipeline import export_huggingface

    target = export_huggingface(built_sample.manifest, built_sample.out, tmp_path / "hf")
    dataset = datasets.load_from_disk(str(target))
    assert len(dataset) == len(built_sample.manifest)
    first = dataset[0]
    assert first["id"] == built_sample.manifest["id"].iloc[0]
    assert first["similar"] == list(built_sample.manifest["similar"].iloc[0])
    assert first["image"].size == (first["width"], first["height"])
    with pytest.raises(SameIdError, match="not empty"):
        export_huggingface(built_sample.manifest, built_sample.out, target)
