"""`sameid build` with `faces` grouping on real photos shipped with packages (scikit-image, matplotlib)."""

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from sameid.dataset.pipeline import BuildConfig, build_dataset

skimage_data = pytest.importorskip("skimage.data")


def _augmentations(image: Image.Image, count: int) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(count):
        variant = ImageOps.mirror(image) if i % 2 else image.copy()
        variant = ImageEnhance.Brightness(variant).enhance(float(rng.uniform(0.8, 1.2)))
        w, h = variant.size
        dx, dy = int(rng.integers(0, w // 12)), int(rng.integers(0, h // 12))
        variant = variant.crop((dx, dy, w - dx, h - dy)).rotate(float(rng.uniform(-6, 6)), fillcolor=(128, 128, 128))
        out.append(variant)
    return out


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    root = tmp_path_factory.mktemp("people")
    astronaut = Image.fromarray(skimage_data.astronaut())
    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    for name, image in (("astronaut", astronaut), ("hopper", hopper)):
        (root / name).mkdir()
        for i, variant in enumerate(_augmentations(image, 5)):
            variant.save(root / name / f"{i}.jpg", quality=90)
    # a mislabelled photo: Grace Hopper in the astronaut's folder; and a photo with no face
    _augmentations(hopper, 6)[5].save(root / "astronaut" / "wrong.jpg", quality=90)
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
    folder = tmp_path / "flat"
    folder.mkdir()
    lines = []
    for path in sorted(people.rglob("*.jpg")):
        target = folder / f"{path.parent.name}_{path.name}"
        target.write_bytes(path.read_bytes())
        lines.append(f'{{"file_name": "{target.name}"}}')
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    result = build_dataset(BuildConfig(source=str(folder), out=str(tmp_path / "ds"), workers=1,
                                       near_duplicate_bits=0, face_clustering=method), progress=False)
    manifest = result.manifest
    person = manifest["id"].str.split("_").str[0].where(manifest["id"] != "astronaut_wrong.jpg", "hopper")
    assert manifest.groupby("identity").apply(lambda g: person[g.index].nunique()).eq(1).all()
    assert manifest["identity"].nunique() == 2 and len(manifest) == 11
