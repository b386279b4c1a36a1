"""`sameid build --max-subjects 2` on photos (issue 13, PairHuman arXiv 2511.16712): a photo with two faces gets
its subjects by matching each face to the identities of the single-face photos (given labels or face clusters).
Real photos shipped in packages: skimage's astronaut (Eileen Collins) and matplotlib's Grace Hopper."""

import json
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from photo_fixtures import flat_photo_folder, photo_variants, side_by_side
from sameid.dataset.pipeline import BuildConfig, build_dataset
from sameid.errors import SameIdError

skimage_data = pytest.importorskip("skimage.data")






@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Labelled folders: four photos of each person, and a folder of two-person photos (its label is not used)."""
    root = tmp_path_factory.mktemp("photos") / "people"
    astronaut = Image.fromarray(skimage_data.astronaut())
    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    for name, image in (("astronaut", astronaut), ("hopper", hopper)):
        (root / name).mkdir(parents=True)
        for i, variant in enumerate(photo_variants(image, 4, seed=7)):
            variant.save(root / name / f"{i}.jpg", quality=90)
    (root / "pairs").mkdir()
    other_astronaut, other_hopper = photo_variants(astronaut, 6, seed=11)[5], photo_variants(hopper, 6, seed=11)[5]
    side_by_side(other_astronaut, other_hopper).save(root / "pairs" / "different.jpg", quality=90)
    side_by_side(other_hopper, other_astronaut).save(root / "pairs" / "swapped.jpg", quality=90)
    side_by_side(other_astronaut, ImageOps.mirror(other_astronaut)).save(root / "pairs" / "twice.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def labelled(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("labelled") / "ds"
    return build_dataset(BuildConfig(source=str(photos), out=str(out), workers=1, max_subjects=2), progress=False)


def _subjects(result) -> dict:
    manifest = result.manifest
    multi = manifest[manifest["subjects"].notna()]
    return {row.id: row for row in multi.itertuples()}


def test_two_people_side_by_side_get_their_identities_left_to_right(labelled):
    rows = _subjects(labelled)
    assert list(rows["pairs/different.jpg"].subjects) == ["astronaut", "hopper"]
    assert list(rows["pairs/swapped.jpg"].subjects) == ["hopper", "astronaut"]
    assert rows["pairs/different.jpg"].identity == "astronaut + hopper"
    assert rows["pairs/different.jpg"].label_check == "subjects"


def test_one_person_twice_is_rejected_with_a_reason_never_guessed(labelled):
    rejected = labelled.rejected.set_index("id")
    assert "pairs/twice.jpg" not in set(labelled.manifest["id"])
    assert rejected.loc["pairs/twice.jpg", "reason"] in ("ambiguous subject assignment", "subject matches no identity")
    assert rejected.loc["pairs/twice.jpg", "stage"] == "group"
    assert "'astronaut'" in rejected.loc["pairs/twice.jpg", "detail"]


def test_subjects_have_face_head_boxes_figures_and_distinct_references(labelled):
    manifest = labelled.manifest.set_index("id")
    row = manifest.loc["pairs/different.jpg"]
    width = row["width"]
    left, right = row["subject_head_boxes"]
    assert left[2] <= width / 2 + 5 and right[0] >= width / 2 - 5  # each head box on its own half
    assert all(len(box) == 4 for box in row["subject_boxes"])
    for path in row["subject_masks"]:
        assert path is None or Path(path).is_file()
    for identity, references in zip(row["subjects"], row["subject_references"]):
        assert len(references) > 0 and "pairs/different.jpg" not in references
        assert set(manifest.loc[list(references), "identity"]) == {identity}
    # single-subject rows never list a multi-subject row, and the single rows are untouched
    singles = manifest[manifest["subjects"].isna()]
    assert not any(set(similar) & {"pairs/different.jpg", "pairs/swapped.jpg"} for similar in singles["similar"])
    assert set(singles["identity"]) == {"astronaut", "hopper"}
    stats = json.loads((labelled.out / "stats.json").read_text())
    assert stats["multi_subject"]["n_images"] == 2
    settings = json.loads((labelled.out / "build_settings.json").read_text())
    assert settings["multi_subject"]["descriptor"] == "faces" and settings["multi_subject"]["min_similarity"] == 0.912


def test_the_pairs_stage_reads_the_photo_subjects(labelled):
    from sameid.pairs import PairsConfig
    from sameid.pairs.multi_subject import MultiSubjectDataset

    dataset = MultiSubjectDataset(labelled.out, PairsConfig(resolution=64, n_references=2, mode="identity"))
    example = dataset[0]
    assert example.subject_masks.shape[0] == 2 and len(set(example.reference_subjects)) == 2
    assert example.target_id not in example.reference_ids


def test_face_clusters_are_the_identities_of_unlabelled_photos(photos, tmp_path):
    folder = flat_photo_folder(photos, tmp_path / "flat")
    result = build_dataset(BuildConfig(source=str(folder), out=str(tmp_path / "ds"), workers=1, max_subjects=2),
                           progress=False)
    manifest = result.manifest.set_index("id")
    cluster_of = {person: manifest.loc[f"{person}_0.jpg", "identity"] for person in ("astronaut", "hopper")}
    assert cluster_of["astronaut"] != cluster_of["hopper"]
    assert list(manifest.loc["pairs_different.jpg", "subjects"]) == [cluster_of["astronaut"], cluster_of["hopper"]]
    assert list(manifest.loc["pairs_swapped.jpg", "subjects"]) == [cluster_of["hopper"], cluster_of["astronaut"]]
    assert "pairs_twice.jpg" in set(result.rejected["id"])


def test_photo_subject_settings_fail_before_anything_is_written(photos, tmp_path):
    with pytest.raises(SameIdError, match="drawn figures"):
        BuildConfig(source=str(photos), out=str(tmp_path / "a"), max_subjects=2, subject_descriptor="colors").resolved()
    with pytest.raises(SameIdError, match="finds every face"):
        BuildConfig(source=str(photos), out=str(tmp_path / "b"), max_subjects=2,
                    face_embedder="arcface-onnx:/models/w600k_r50.onnx").resolved()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert pd.isna(BuildConfig(source=str(photos), out=str(tmp_path / "c")).subject_descriptor)


def test_the_one_loop_trains_on_the_photo_subjects_with_the_configured_face_embedder(labelled, tmp_path):
    """End to end: the photo dataset's two-person rows train the multi-subject denoiser (tiny, 2 steps); the
    config's face_embedder reaches the model and config.yaml."""
    import torch
    import yaml

    from sameid.models.denoisers import load_denoiser
    from sameid.train import TrainConfig
    from sameid.train.loop import train

    torch.manual_seed(0)
    config = TrainConfig.from_flat({
        "dataset": str(labelled.out), "out": str(tmp_path / "run"), "tiny": True, "model": "multi-subject",
        "face_embedder": "none", "resolution": 64, "n_references": 1, "max_train_steps": 2,
        "gradient_accumulation_steps": 1, "learning_rate": 1e-4, "checkpointing_steps": 100,
        "validation_steps": 100, "validation_examples": 0, "lr_scheduler": "constant", "log_with": []})
    result = train(config, progress=False)
    assert result.global_step == 2 and all(np.isfinite(result.losses))
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["face_embedder"] == "none"
    model = load_denoiser(result.model_dir)
    assert model.config.face_embedder == "" and model.projector.face_projection is None
