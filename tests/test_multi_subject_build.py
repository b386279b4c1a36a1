"""Multi-subject samples of `sameid build` (issue 13): the two-character images of the bundled sample get their
subjects by matching each figure against the single-subject identities, checked against the ground truth."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sameid.dataset.subjects import (
    AMBIGUOUS,
    COUNT_MISMATCH,
    SUBJECT_COLUMNS,
    SubjectConfig,
    assign,
    assign_drawn_subjects,
    figure_components,
)
from sameid.errors import SameIdError

MULTI_PLANTS = ("two_subjects", "same_character_twice", "three_figures")


def _truth(sample) -> pd.DataFrame:
    return pd.read_csv(sample.ground_truth, dtype=str, keep_default_na=False)


def _expected_subjects(entry) -> list[str]:
    """character|artist|outfit answer of each drawn figure, left to right (the pixel answerer names the outfit's
    two colours, main first: the ground truth's outfit label starts with them)."""
    return [f"{character}|{entry.artist}|{' and '.join(label.split('_')[:2])}"
            for character, label in zip(entry.character.split(), entry.outfit.split())]


def _multi_frame(sample, tmp_path) -> pd.DataFrame:
    """The sample's multi-character posts annotated as the build annotates them (figure mask, phash)."""
    from sameid.dataset.annotate import AnnotateConfig, annotate_rows

    truth = _truth(sample)
    ids = set(truth.loc[truth["plant"].isin(MULTI_PLANTS), "id"])
    posts = [json.loads(line) for line in sample.metadata.read_text().splitlines()]
    posts = [p for p in posts if str(p["id"]) in ids]
    rows = [{"id": str(p["id"]), "image": str(sample.image_root / f"{p['md5']}.{p['file_ext']}"), "head_box": None,
             "mask": None, "path_error": None} for p in posts]
    annotations = annotate_rows(rows, AnnotateConfig(vqa=None, dataset_dir=str(tmp_path)))
    frame = pd.DataFrame(annotations)
    frame["image"] = [r["image"] for r in rows]
    frame["characters"] = [p["tag_string_character"].split() for p in posts]
    frame["artist"] = [p["tag_string_artist"] for p in posts]
    frame["caption"], frame["tags"] = "", [[] for _ in posts]
    return frame


@pytest.fixture(scope="module")
def assigned(sample, built_sample, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("subjects")
    multi = _multi_frame(sample, tmp)
    singles = built_sample.manifest
    kept, rejected = assign_drawn_subjects(multi, singles, tmp, SubjectConfig(max_subjects=2), 6)
    return multi, kept, rejected


def test_two_character_posts_get_their_subjects_with_precision_against_the_ground_truth(sample, assigned):
    _, kept, rejected = assigned
    truth = _truth(sample).set_index("id")
    good = truth[truth["plant"] == "two_subjects"]
    assert len(good) == 24
    got = {row.id: list(row.subjects) for row in kept.itertuples()}
    correct = sum(got.get(i) == _expected_subjects(entry) for i, entry in zip(good.index, good.itertuples()))
    predicted_good = [i for i in got if i in good.index]
    precision = correct / len(got)
    recall = correct / len(good)
    print(f"subject assignment precision {precision:.3f} recall {recall:.3f} ({len(got)} kept of {len(good)})")
    assert precision >= 0.95 and recall >= 0.9
    assert set(predicted_good) == set(got)  # nothing but the two-subject posts is kept


def test_ambiguous_posts_are_rejected_with_a_reason_never_guessed(sample, assigned):
    _, kept, rejected = assigned
    truth = _truth(sample)
    reasons = dict(zip(rejected["id"], rejected["reason"]))
    twice = truth.loc[truth["plant"] == "same_character_twice", "id"]
    assert len(twice) == 2 and all(reasons[i] == AMBIGUOUS for i in twice)
    three = truth.loc[truth["plant"] == "three_figures", "id"].item()
    assert reasons[three] == COUNT_MISMATCH
    assert not set(twice) & set(kept["id"]) and three not in set(kept["id"])
    assert rejected["detail"].str.len().min() > 0


def test_references_are_the_subjects_identity_never_the_image_nor_a_near_duplicate(built_sample, assigned):
    multi, kept, _ = assigned
    manifest = built_sample.manifest.set_index("id")
    phash = {i: int(h, 16) for i, h in zip(multi["id"], multi["phash"])}
    for row in kept.itertuples():
        assert len(row.subjects) == len(row.subject_references) == len(row.subject_boxes) == 2
        for identity, references in zip(row.subjects, row.subject_references):
            assert references and row.id not in references
            assert set(manifest.loc[references, "identity"]) == {identity}
            assert min((phash[row.id] ^ int(h, 16)).bit_count() for h in manifest.loc[references, "phash"]) > 6
        (a, b) = row.subject_boxes
        assert a[2] <= b[0]  # left to right, apart


def test_assignment_margin_and_impossible_pairs():
    clear = assign(np.array([[0.9, 0.2], [0.3, 0.8]]))
    assert clear.item_of.tolist() == [0, 1] and clear.margin == pytest.approx((1.7 - 0.5) / 2)
    swapped = assign(np.array([[0.2, 0.9], [0.8, 0.3]]))
    assert swapped.item_of.tolist() == [1, 0]
    twins = assign(np.array([[0.9, 0.3], [0.9, 0.3]]))
    assert twins.margin == pytest.approx(0.0)
    missing = assign(np.array([[0.9, 0.4]]))  # one found, two given
    assert missing.item_of.tolist() == [0, -1] and np.isnan(missing.matched_similarity()[1])


def test_figure_components_left_to_right_and_small_specks_dropped():
    mask = np.zeros((40, 60), dtype=bool)
    mask[5:35, 40:55] = True
    mask[5:35, 5:20] = True
    mask[0:2, 0:2] = True  # a speck
    parts = figure_components(mask, 0.15)
    assert len(parts) == 2 and parts[0][:, :30].any() and not parts[0][:, 30:].any()


def test_bad_settings_fail_in_one_line():
    with pytest.raises(SameIdError, match="descriptor"):
        SubjectConfig(descriptor="sift")
    with pytest.raises(SameIdError, match="min_margin"):
        SubjectConfig(min_margin=2)


def test_default_build_still_rejects_multi_character_posts(sample, built_sample):
    truth = _truth(sample)
    reasons = dict(zip(built_sample.rejected["id"], built_sample.rejected["reason"]))
    multi = truth.loc[truth["plant"].isin(MULTI_PLANTS), "id"]
    assert {reasons[i] for i in multi} == {"more than one character"}
    assert "subjects" not in built_sample.manifest.columns or built_sample.manifest["subjects"].isna().all()


ARTIST = "kumo_pen_(sample)"


@pytest.fixture(scope="module")
def subset_dataset(sample, tmp_path_factory):
    """One artist's posts built with --max-subjects 2 (end to end, small)."""
    from sameid.dataset.pipeline import BuildConfig, build_dataset

    tmp_path = tmp_path_factory.mktemp("subset")
    truth = _truth(sample)
    keep = set(truth.loc[truth["artist"] == ARTIST, "id"])
    lines = [line for line in sample.metadata.read_text().splitlines() if str(json.loads(line)["id"]) in keep]
    metadata = tmp_path / "metadata.jsonl"
    metadata.write_text("\n".join(lines) + "\n")
    return build_dataset(BuildConfig(source=str(metadata), out=str(tmp_path / "out"),
                                     image_root=str(sample.image_root), workers=1, shard_size=64, max_subjects=2),
                         progress=False)


def test_build_with_max_subjects_writes_the_subject_columns_and_counts_them(sample, subset_dataset):
    """End to end on one artist's posts: the contract columns, the card and the pairs reader."""
    from sameid.pairs.manifest import load_manifest

    out = subset_dataset.out
    truth = _truth(sample)
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert set(SUBJECT_COLUMNS) <= set(manifest.columns)
    multi = manifest[manifest["subjects"].notna()]
    expected = truth[(truth["artist"] == ARTIST) & (truth["plant"] == "two_subjects")]
    assert len(multi) >= len(expected) - 1 and len(expected) == 6
    for row in multi.itertuples():
        assert all(Path(path).is_file() for path in row.subject_masks)
        assert row.head_box is None and len(row.similar) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["multi_subject"]["n_images"] == len(multi)
    assert f"| Multi-subject images | {len(multi)} " in (out / "README.md").read_text()
    assert load_manifest(out).frame["subjects"].notna().sum() == len(multi)
    assert subset_dataset.stats["multi_subject"]["subjects_per_image"] == {"2": len(multi)}


def test_multi_subject_examples_per_subject_references_and_masks(subset_dataset):
    import torch

    from sameid.pairs import PairsDataset
    from sameid.pairs.audit import audit_pairs
    from sameid.pairs.dataset import collate_examples, sample_pairs
    from sameid.pairs.multi_subject import MultiSubjectDataset

    out = subset_dataset.out
    dataset = MultiSubjectDataset(out, n_references=2, resolution=64, task="composition")
    manifest = dataset.manifest
    assert len(dataset) == int(manifest.frame["subjects"].notna().sum()) > 0
    example = dataset[0]
    assert example.references.shape == (4, 3, 64, 64) and example.reference_subjects == [0, 0, 1, 1]
    assert example.subject_masks.shape == (2, 1, 64, 64) and example.subject_masks.sum() > 0
    left, right = example.subject_masks[0, 0], example.subject_masks[1, 0]
    assert not (left.bool() & right.bool()).any()  # two regions apart
    for reference_id, subject in zip(example.reference_ids, example.reference_subjects):
        assert manifest.identities[manifest.row_of[reference_id]] == example.subject_identities[subject]
        assert reference_id != example.target_id
    assert [e.reference_ids for e in (dataset[0], dataset[0])][0] == example.reference_ids  # planned from seeds
    # single-subject examples never take a multi-subject row as target
    single = PairsDataset(out, n_references=2, resolution=64)
    assert not set(single.refused) & {example.target_id}
    assert all(manifest.frame["subjects"].iloc[r] is None for r in single.target_rows)
    # a batch of a 2-subject and a 1-subject example: K padded with empty masks, references with reference_valid
    batch = collate_examples([example, single[0]])
    assert batch["subject_masks"].shape == (2, 2, 1, 64, 64) and batch["subject_masks"][1, 1].sum() == 0
    assert batch["reference_valid"].tolist() == [[True] * 4, [True, True, False, False]]
    assert batch["reference_subjects"][0].tolist() == [0, 0, 1, 1] and batch["references"].dtype == torch.uint8
    # the audit covers every subject: a clean build has no leaks, a planted one is found
    report = audit_pairs(manifest, sample_pairs(out, n_references=2))
    assert report.leaking_pairs == 0
    row = dataset.target_rows[0]
    manifest.frame.at[row, "subject_references"] = [[manifest.ids[row]], list(manifest.frame.at[row, "subject_references"][1])]
    report = audit_pairs(manifest, sample_pairs(out, n_references=2))
    assert report.leaking_pairs == 1 and "subject reference is the target" in report.leaks["reasons"].iloc[0]


def test_sameid_train_multi_subject_reads_the_multi_subject_rows(subset_dataset, tmp_path):
    """The one loop trains the multi-subject denoiser on a built dataset's two-character rows, end to end."""
    import torch

    from sameid.train import TrainConfig
    from sameid.train.loop import train

    torch.manual_seed(0)
    config = TrainConfig.from_flat({
        "dataset": str(subset_dataset.out), "out": str(tmp_path / "run"), "tiny": True, "model": "multi-subject",
        "resolution": 64, "n_references": 1, "max_train_steps": 2, "gradient_accumulation_steps": 1,
        "learning_rate": 1e-4, "checkpointing_steps": 100, "validation_steps": 100, "validation_examples": 0,
        "lr_scheduler": "constant", "log_with": []})
    result = train(config, progress=False)
    assert result.global_step == 2 and all(np.isfinite(result.losses))
    from sameid.pairs.multi_subject import MultiSubjectDataset

    examples = MultiSubjectDataset(subset_dataset.out, config.pairs)
    assert len(examples) >= 5 and len(examples[0].subject_identities) == 2
    assert (result.model_dir / "denoiser.json").is_file()


def test_the_multi_subject_model_trains_on_an_sdxl_base_and_generates(subset_dataset, tmp_path):
    """`sameid train --model multi-subject --pretrained <SDXL folder>` (PairHuman, arXiv 2511.16712: an SDXL
    base): the loop gives the U-Net its pooled text and time ids, validates, and the run generates; a kind that
    cannot pass them is refused before anything is written."""
    import torch

    from sameid.evaluate.manifest import read_generations
    from sameid.generate import generate_manifest, load_run
    from sameid.pairs.manifest import load_manifest
    from sameid.train import TrainConfig
    from sameid.train.loop import train
    from sdxl_fixtures import save_tiny_sdxl

    base = save_tiny_sdxl(tmp_path / "sdxl")
    settings = {
        "dataset": str(subset_dataset.out), "pretrained": str(base), "image_encoder": "efficientnet-lite0",
        "model": "multi-subject", "lock": "lockd", "resolution": 64, "n_references": 1, "max_train_steps": 2,
        "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "checkpointing_steps": 100,
        "validation_steps": 2, "validation_examples": 1, "validation_inference_steps": 2, "lr_scheduler": "constant",
        "log_with": []}
    with pytest.raises(SameIdError, match="model retrinet does not work on an SDXL base"):
        train(TrainConfig.from_flat({**settings, "model": "retrinet", "image_encoder": None,
                                     "out": str(tmp_path / "refused")}), progress=False)
    assert not (tmp_path / "refused").exists()

    torch.manual_seed(0)
    result = train(TrainConfig.from_flat({**settings, "out": str(tmp_path / "run")}), progress=False)
    assert result.global_step == 2 and all(np.isfinite(result.losses))
    assert len(list((result.run_dir / "validation").rglob("*_strip.png"))) == 1

    components, denoiser, config = load_run(result.run_dir, device="cpu")
    assert components.is_sdxl and denoiser.kind == "multi-subject" and config.pretrained == str(base)
    assert denoiser.unet.config.addition_embed_type == "text_time"
    half, _, _ = load_run(result.run_dir, device="cpu", dtype="float16")
    assert next(half.vae.parameters()).dtype == torch.float32  # SDXL's VAE overflows in float16
    assert next(half.text_encoder_2.parameters()).dtype == torch.float16
    multi = load_manifest(subset_dataset.out)
    first, second = sorted(multi.identity_rows())[:2]
    manifest = generate_manifest(result.run_dir, subset_dataset.out, tmp_path / "gen", prompts=["two figures"],
                                 seeds=[0], identities=[f"{first}&{second}"], num_inference_steps=2, resolution=64,
                                 n_references=1, device="cpu").manifest
    rows = read_generations(manifest).frame
    assert len(rows) == 1 and Path(rows["image"][0]).is_file()
