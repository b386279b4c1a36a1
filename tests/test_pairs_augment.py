"""Issue 12: masked concept crops (RetriBooru A.1, A.4) and the -a setting's two transforms (§3.1), pixel-exact on
constructed images whose letterboxing is a plain copy (each crop's longer side equals the resolution)."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sameid.errors import SameIdError
from sameid.pairs.concepts import apply_figure_mask
from sameid.pairs.dataset import ExamplePlan, PairsConfig, PairsDataset, _augment, _augment_box
from sameid.pairs.manifest import load_manifest
from sameid.references import PADDING_VALUE, letterbox_into

WIDTH, HEIGHT = 16, 32
HEAD_BOX = [4.0, 0.0, 12.0, 16.0]  # the clothes crop is rows 16-31: 16 x 16, copied as is at resolution 16


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


def _figure_mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[1:31, 3:13] = True  # a figure narrower than the image: background on both sides
    return mask


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """Two identities of two images; the images of identity "a" have a figure mask, those of "b" none."""
    root = tmp_path_factory.mktemp("augment")
    (root / "images").mkdir()
    Image.fromarray(_figure_mask().astype(np.uint8) * 255, "L").save(root / "images" / "mask.png")
    rows = []
    for n, identifier in enumerate(["a_0", "a_1", "b_0", "b_1"]):
        Image.fromarray(_pixels(n)).save(root / "images" / f"{identifier}.png")
        identity = identifier[0]
        rows.append({"id": identifier, "image": f"images/{identifier}.png", "identity": identity,
                     "similar": [f"{identity}_{1 - int(identifier[-1])}"], "caption": identifier, "tags": ["1girl"],
                     "head_box": HEAD_BOX, "mask": "images/mask.png" if identity == "a" else None, "width": WIDTH,
                     "height": HEIGHT, "phash": "0" * 16 if n % 2 else "f" * 16, "near_duplicates": []})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


def _reference(dataset: PairsDataset, target: str, concept: str) -> tuple[np.ndarray, int]:
    """(3, R, R) pixels of the first reference of ``target``'s example whose concept is ``concept``, and its row."""
    manifest = dataset.manifest
    index = dataset.target_rows.index(manifest.ids.index(target))
    for epoch in range(40):
        plan = dataset.plan(index, epoch)
        for i, crop in enumerate(plan.crops):
            if crop.concept == concept:
                return dataset.example(plan).references[i].numpy(), plan.reference_rows[i]
    raise AssertionError(f"no {concept} reference in 40 epochs")


def test_apply_figure_mask_sets_the_background_to_the_padding_value():
    image = _pixels(7)
    masked = apply_figure_mask(image, _figure_mask())
    assert np.array_equal(masked[_figure_mask()], image[_figure_mask()])
    assert (masked[~_figure_mask()] == PADDING_VALUE).all() and masked.dtype == np.uint8
    with pytest.raises(ValueError, match="figure mask"):
        apply_figure_mask(image, _figure_mask()[:-1])


def test_clothes_and_figure_crops_keep_only_the_figure_where_a_mask_exists(dataset_dir):
    manifest = load_manifest(dataset_dir)
    mask = _figure_mask()
    clothes_dataset = PairsDataset(manifest, PairsConfig(task="composition", n_references=1, resolution=16))
    clothes, row = _reference(clothes_dataset, "a_0", "clothes")
    expected = np.where(mask[:, :, None], _pixels(row), PADDING_VALUE)[16:32].transpose(2, 0, 1)
    assert np.array_equal(clothes, expected)
    assert (clothes[:, :, :3] == PADDING_VALUE).all() and (clothes[:, :, 13:] == PADDING_VALUE).all()

    figure_dataset = PairsDataset(manifest, PairsConfig(task="reconstruction", n_references=1, resolution=32))
    figure, row = _reference(figure_dataset, "a_0", "figure")
    expected = np.full((3, 32, 32), PADDING_VALUE, dtype=np.uint8)
    expected[:, :, 8:24] = np.where(mask[:, :, None], _pixels(row), PADDING_VALUE).transpose(2, 0, 1)
    assert np.array_equal(figure, expected)

    # The face stays the head-box rectangle: background pixels inside the box are kept.
    face, row = _reference(clothes_dataset, "a_0", "face")
    face_pixels = _pixels(row)[0:16, 4:12]
    assert np.array_equal(face[:, :, 4:12], face_pixels.transpose(2, 0, 1))
    assert not (face_pixels[0] >= PADDING_VALUE).all()  # row 0 is outside the figure mask, yet kept


def test_rectangles_without_a_mask_or_with_concept_masks_off(dataset_dir):
    manifest = load_manifest(dataset_dir)
    unmasked = PairsDataset(manifest, PairsConfig(task="composition", n_references=1, resolution=16,
                                                  concept_masks=False))
    clothes, row = _reference(unmasked, "a_0", "clothes")
    assert np.array_equal(clothes, _pixels(row)[16:32].transpose(2, 0, 1))
    no_mask = PairsDataset(manifest, PairsConfig(task="composition", n_references=1, resolution=16))
    clothes, row = _reference(no_mask, "b_0", "clothes")
    assert np.array_equal(clothes, _pixels(row)[16:32].transpose(2, 0, 1))
    with pytest.raises(SameIdError, match="concept_masks must be true or false"):
        PairsConfig(concept_masks="yes")


def test_same_mode_target_and_reference_get_different_reproducible_transforms(dataset_dir):
    manifest = load_manifest(dataset_dir)
    config = PairsConfig(mode="same", n_references=2, resolution=32, prompt_drop=0.0, seed=5)
    dataset = PairsDataset(manifest, config)
    plans = [dataset.plan(index, epoch) for epoch in range(6) for index in range(len(dataset))]
    for plan in plans:
        assert isinstance(plan, ExamplePlan) and plan.target_augmentation is not None
        (fx0, fy0, fx1, fy1), _ = plan.target_augmentation
        assert 0.0 <= fx0 < fx1 <= 1.0 and 0.0 <= fy0 < fy1 <= 1.0
        assert 0.8 - 1e-9 <= fx1 - fx0 <= 1.0 and 0.8 - 1e-9 <= fy1 - fy0 <= 1.0
        assert all(plan.target_augmentation != reference for reference in plan.augmentations)
    assert len({plan.target_augmentation for plan in plans}) == len(plans)  # drawn per example
    assert {mirror for plan in plans for _, mirror in [plan.target_augmentation]} == {True, False}
    # Reproducible: a new dataset with the same seed plans the same transforms and the same pixels.
    again = PairsDataset(manifest, config)
    assert [again.plan(index, epoch) for epoch in range(6) for index in range(len(again))] == plans
    first, second = dataset[0], again[0]
    assert np.array_equal(first.target.numpy(), second.target.numpy())
    assert np.array_equal(first.face_mask.numpy(), second.face_mask.numpy())
    # The target is its own transform of the image, not the plain letterboxed image nor the reference.
    plan = dataset.plan(0)
    row = plan.target_row
    transformed = _augment(_pixels(row), *plan.target_augmentation)
    expected = np.empty((3, 32, 32), dtype=np.uint8)
    letterbox_into(transformed, expected)
    assert np.array_equal(first.target.numpy(), expected)
    assert not np.array_equal(first.target.numpy(), first.references[0].numpy())
    # The face loss mask moved with the target: inside the valid area, and not the untransformed head box.
    assert first.face_mask.sum().item() > 0 and (first.face_mask <= first.valid_mask).all()
    # Identity mode (-b) keeps the target as it is.
    assert PairsDataset(manifest, PairsConfig()).plan(0).target_augmentation is None


def test_augment_box_follows_the_crop_and_the_mirror():
    image = np.zeros((40, 20, 3), dtype=np.uint8)
    image[10:20, 2:6] = 255  # a "head" at x 2-6, y 10-20
    for fractions, mirror in [((0.1, 0.2, 0.9, 1.0), False), ((0.1, 0.2, 0.9, 1.0), True),
                              ((0.0, 0.0, 0.85, 0.9), True)]:
        box = _augment_box((2, 10, 6, 20), fractions, mirror, image.shape)
        moved = _augment(image, fractions, mirror)
        ys, xs = np.nonzero(moved[:, :, 0])
        assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert _augment_box((0, 0, 1, 1), (0.5, 0.5, 1.0, 1.0), False, image.shape) is None


def test_figure_emphasis_weighs_the_target_figure_mask_where_its_pixels_go(dataset_dir):
    """Equation 3's second term on the figure (PairsConfig.emphasis "figure"): the mask placed as the target's
    pixels are, under -a's crop and mirror too; a row without a mask has an empty region; "face" keeps the box."""
    manifest = load_manifest(dataset_dir)
    for mode in ("identity", "same"):
        dataset = PairsDataset(manifest, PairsConfig(mode=mode, n_references=1, resolution=32, prompt_drop=0.0,
                                                     emphasis="figure"))
        for index in range(len(dataset)):
            plan = dataset.plan(index)
            example = dataset.example(plan)
            mask = _figure_mask().astype(np.uint8) * 255
            if plan.target_augmentation is not None:
                mask = _augment(mask, *plan.target_augmentation)
            expected = np.zeros((3, 32, 32), dtype=np.uint8)
            valid_box, _ = letterbox_into(np.ascontiguousarray(np.repeat(mask[:, :, None], 3, axis=2)), expected)
            expected = (expected[:1] > 127).astype(np.uint8)
            x0, y0, x1, y1 = valid_box
            outside = np.ones_like(expected, dtype=bool)
            outside[:, y0:y1, x0:x1] = False
            expected[outside] = 0
            region = example.face_mask.numpy()
            if manifest.identities[plan.target_row] == "a":
                assert region.sum() > 0 and np.array_equal(region, expected), (mode, index)
                assert (example.face_mask <= example.valid_mask).all()
            else:
                assert region.sum() == 0, (mode, index)  # no mask: only the valid-area term trains this row
    head = PairsDataset(manifest, PairsConfig(n_references=1, resolution=32, emphasis="face"))
    box = head.example(head.plan(0)).face_mask.numpy()
    assert box[0, 0:16, 12:20].all() and box.sum() == 16 * 8  # the head box (the image sits at x 8-24)


def test_figure_emphasis_needs_masks_and_a_known_name(dataset_dir, tmp_path):
    with pytest.raises(SameIdError, match="unknown emphasis 'hands'"):
        PairsConfig(emphasis="hands")
    frame = pd.read_parquet(dataset_dir / "manifest.parquet")
    frame["mask"] = None
    (tmp_path / "images").symlink_to(dataset_dir / "images")
    frame.to_parquet(tmp_path / "manifest.parquet")
    with pytest.raises(SameIdError, match="emphasis 'figure' .* no masks"):
        PairsDataset(tmp_path, PairsConfig(emphasis="figure"))
    PairsDataset(tmp_path, PairsConfig(emphasis="face"))  # the paper's head box needs none
