"""`sameid build` with `faces` grouping on real photos shipped with packages (scikit-image, matplotlib)."""

import json

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from photo_fixtures import flat_photo_folder, photo_variants
from sameid.dataset.pipeline import BuildConfig, build_dataset
from sameid.records import read_dataset_settings

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    root = tmp_path_factory.mktemp("people")
    astronaut = Image.fromarray(skimage_data.astronaut())
    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    for name, image in (("astronaut", astronaut), ("hopper", hopper)):
        (root / name).mkdir()
        for i, variant in enumerate(photo_variants(image, 5, seed=7)):
            variant.save(root / name / f"{i}.jpg", quality=90)
    # a mislabelled photo: Grace Hopper in the astronaut's folder; and a photo with no face
    photo_variants(hopper, 6, seed=7)[5].save(root / "astronaut" / "wrong.jpg", quality=90)
    Image.new("RGB", (200, 200), (90, 140, 200)).save(root / "hopper" / "sky.jpg")
    return root


def test_identity_folders_are_cleaned_by_face_clustering(people, tmp_path):
    config = BuildConfig(source=str(people), out=str(tmp_path / "ds"), workers=1, near_duplicate_bits=0)
    result = build_dataset(config, progress=False)
    manifest = result.manifest
    reasons = dict(zip(result.rejected["id"], result.rejected["reason"]))
    assert reasons["astronaut/wrong.jpg"] == "identity outlier"
    assert reasons["hopper/sky.jpg"] == "no face found"
    assert sorted(manifest["identity"].unique()) == ["astronaut", "hopper"]
    assert (manifest["identity"] == manifest["id"].str.split("/").str[0]).all()
    assert len(manifest) == 10
    assert manifest["head_box"].map(lambda b: b is not None).all()


@pytest.mark.parametrize("method", ["dbscan", "hdbscan"])
def test_unlabelled_photos_are_grouped_by_face_clusters(people, tmp_path, method):
    folder = flat_photo_folder(people, tmp_path / "flat")
    result = build_dataset(BuildConfig(source=str(folder), out=str(tmp_path / "ds"), workers=1,
                                       near_duplicate_bits=0, face_clustering=method), progress=False)
    manifest = result.manifest
    person = manifest["id"].str.split("_").str[0].where(manifest["id"] != "astronaut_wrong.jpg", "hopper")
    assert manifest.groupby("identity").apply(lambda g: person[g.index].nunique()).eq(1).all()
    assert manifest["identity"].nunique() == 2 and len(manifest) == 11


def _faceless_subject(folder, seed: int, count: int = 3) -> None:
    """A labelled subject without a face (an object, a pet's back): distinct random patterns."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((160, 160), Image.NEAREST).save(folder / f"{i}.png")


@pytest.mark.parametrize("label_check", ["auto", "faces", "trust"])
def test_given_labels_without_faces_are_trusted_where_no_face_is_found(people, tmp_path, label_check):
    import shutil

    root = tmp_path / "subjects"
    shutil.copytree(people, root)
    _faceless_subject(root / "teapot", seed=1)
    config = BuildConfig(source=str(root), out=str(tmp_path / "ds"), workers=1, near_duplicate_bits=0,
                         label_check=label_check)
    result = build_dataset(config, progress=False)
    manifest, reasons = result.manifest, dict(zip(result.rejected["id"], result.rejected["reason"]))
    checks = manifest.groupby("identity")["label_check"].agg(set).to_dict()
    if label_check == "faces":
        assert {f"teapot/{i}.png" for i in range(3)} <= {k for k, v in reasons.items() if v == "no face found"}
        assert checks == {"astronaut": {"faces"}, "hopper": {"faces"}}
    elif label_check == "auto":
        assert checks == {"astronaut": {"faces"}, "hopper": {"faces"}, "teapot": {"trusted"}}
        assert reasons["astronaut/wrong.jpg"] == "identity outlier" and reasons["hopper/sky.jpg"] == "no face found"
        assert (manifest["identity"] == "teapot").sum() == 3
    else:
        assert set(manifest["label_check"]) == {"trusted"} and (manifest["identity"] == "teapot").sum() == 3
        assert "astronaut/wrong.jpg" in set(manifest["id"])  # trusted as given, mislabelled or not
    stats = json.loads((tmp_path / "ds" / "stats.json").read_text())
    assert stats["label_checks"] == manifest["label_check"].value_counts().to_dict()
    assert read_dataset_settings(tmp_path / "ds")["label_check"] == label_check
