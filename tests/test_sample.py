"""The generated sample collection: deterministic, complete, and consistent with its own ground truth."""

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from sameid.demo.sample import CLOTHING_TAGS, MULTI_SUBJECT_PLANTS, PLANTS, README_MARKER, make_sample
from sameid.errors import ImageError, SameIdError
from sameid.images import (
    EMPTY,
    MISSING,
    OUTSIDE_ROOT,
    UNREADABLE,
    hamming_distance,
    is_monochrome,
    load_image,
    load_mask,
    perceptual_hash,
    resolve_inside,
)


def _rows(sample) -> list[dict]:
    return [json.loads(line) for line in sample.metadata.read_text(encoding="utf-8").splitlines()]


def _truth(sample) -> pd.DataFrame:
    return pd.read_csv(sample.ground_truth, dtype=str, keep_default_na=False)


def _tags(value) -> list[str]:
    return value if isinstance(value, list) else value.split()


def _image_path(sample, row: dict) -> Path | None:
    """The reader's rule: ``<md5>.<ext>`` first, then ``<id>.<ext>``."""
    for name in (f"{row['md5']}.{row['file_ext']}", f"{row['id']}.{row['file_ext']}"):
        path = sample.image_root / name
        if path.is_file():
            return path
    return None


def _file_hashes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and path.name not in skip}


def test_same_seed_gives_byte_identical_files_and_an_earlier_sample_is_replaced(sample, tmp_path):
    earlier = tmp_path / "earlier"
    shutil.copytree(sample.root, earlier)
    (earlier / "images" / "stale.png").write_bytes(b"left by an older version")
    (earlier / "notes.txt").write_text("the user's own file")
    again = make_sample(earlier, seed=0)
    assert again.metadata.read_bytes() == sample.metadata.read_bytes()
    assert again.ground_truth.read_bytes() == sample.ground_truth.read_bytes()
    assert _file_hashes(again.root, skip=("notes.txt",)) == _file_hashes(sample.root)
    assert (earlier / "notes.txt").read_text() == "the user's own file"


def test_another_seed_gives_another_sample(sample, tmp_path):
    other = make_sample(tmp_path / "other", seed=1)
    assert other.metadata.read_bytes() != sample.metadata.read_bytes()
    def single(truth):  # the multi-subject posts pair characters at random
        return truth[~truth["plant"].isin(MULTI_SUBJECT_PLANTS)]

    for column in ("character", "outfit"):  # the same cast; who draws whom, poses and backgrounds change
        assert set(single(_truth(other))[column]) == set(single(_truth(sample))[column])


def test_refuses_a_directory_that_is_not_an_earlier_sample(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(SameIdError, match="not empty and is not an earlier sameid sample"):
        make_sample(tmp_path / "photos")
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"not ours"
    (tmp_path / "file").write_text("x")
    with pytest.raises(SameIdError, match="not a directory"):
        make_sample(tmp_path / "file")


def test_readme_says_it_is_generated(sample):
    readme = (sample.root / "README.md").read_text(encoding="utf-8")
    assert readme.startswith(README_MARKER)
    assert "GENERATED sample, not real data" in readme


def test_cast_and_counts(sample):
    truth = _truth(sample)
    good = truth[truth["plant"] == ""]
    assert len(good) == 12 * 2 * 2 * 4
    assert good["character"].nunique() >= 12 and good["artist"].nunique() >= 4
    for _, rows in good.groupby("character"):
        assert rows["artist"].nunique() == 2
        assert rows["outfit"].nunique() == 2
        colours = {tuple(outfit.split("_")[:2]) for outfit in rows["outfit"]}
        assert len(colours) == 2  # the two outfits differ in colours, at least in their order
    assert set(good.groupby("identity").size()) == {4}
    assert (good["identity"] == good["character"] + "|" + good["artist"] + "|" + good["outfit"]).all()


def test_one_character_wears_the_same_two_colours_in_opposite_order(sample):
    good = _truth(sample).query("plant == ''")
    reversed_pairs = []
    for character, rows in good.groupby("character"):
        pairs = {tuple(outfit.split("_")[:2]) for outfit in rows["outfit"]}
        if any((b, a) in pairs and a != b for a, b in pairs):
            reversed_pairs.append(character)
    assert reversed_pairs


def test_ground_truth_matches_metadata(sample):
    rows = {str(row["id"]): row for row in _rows(sample)}
    truth = _truth(sample)
    assert set(truth["id"]) == set(rows) and truth["id"].is_unique
    assert set(truth["plant"]) == {"", *PLANTS}
    for entry in truth.itertuples():
        row = rows[entry.id]
        characters, artists = _tags(row["tag_string_character"]), _tags(row["tag_string_artist"])
        general = _tags(row["tag_string_general"])
        assert sorted(characters) == sorted(entry.character.split()), entry.id
        assert artists == [entry.artist], entry.id
        clothing = [tag for tag in general if tag in CLOTHING_TAGS]
        assert all(tag in CLOTHING_TAGS or not _looks_like_clothing(tag) for tag in general), general
        if entry.plant in ("", "near_duplicate"):
            assert entry.identity == f"{entry.character}|{entry.artist}|{entry.outfit}"
            assert clothing and len(characters) == 1 and row["rating"] in ("g", "s")
            assert {"solo", "standing"} <= set(general) and any(t in general for t in ("1girl", "1boy"))
            assert any(tag.endswith("_hair") for tag in general)
            assert any(tag.endswith("_background") for tag in general)
        else:
            assert entry.identity == ""
        if entry.plant == "near_duplicate":
            assert entry.near_duplicate_of in rows
        else:
            assert entry.near_duplicate_of == ""


def _looks_like_clothing(tag: str) -> bool:
    garments = ("shirt", "skirt", "dress", "jacket", "pants", "hoodie", "sweater", "shorts", "coat", "blouse",
                "vest", "uniform", "serafuku", "kimono", "shoes")
    return any(word in tag for word in garments)


def test_planted_bad_inputs_fail_the_way_they_were_planted(sample):
    rows = {str(row["id"]): row for row in _rows(sample)}
    truth = _truth(sample)
    planted = {plant: rows[entry_id] for entry_id, plant in zip(truth["id"], truth["plant"], strict=True) if plant}
    for plant, reason in (("missing", MISSING), ("corrupt", UNREADABLE), ("empty", EMPTY)):
        row = planted[plant]
        with pytest.raises(ImageError) as error:
            load_image(_image_path(sample, row) or sample.image_root / f"{row['md5']}.{row['file_ext']}")
        assert error.value.reason == reason, plant
    assert _image_path(sample, planted["missing"]) is None
    assert _image_path(sample, planted["empty"]).stat().st_size == 0
    assert planted["corrupt"]["file_ext"] == "jpg"

    outside = planted["outside_root"]
    assert outside["md5"] == "../outside"
    with pytest.raises(ImageError) as error:
        resolve_inside(sample.image_root, f"{outside['md5']}.{outside['file_ext']}")
    assert error.value.reason == OUTSIDE_ROOT
    assert (sample.root / f"outside.{outside['file_ext']}").is_file()

    assert len(_tags(planted["two_characters"]["tag_string_character"])) == 2
    monochrome = planted["monochrome"]
    assert "monochrome" in _tags(monochrome["tag_string_general"])
    assert is_monochrome(load_image(_image_path(sample, monochrome))[0])
    assert not set(_tags(planted["no_clothing"]["tag_string_general"])) & CLOTHING_TAGS
    assert planted["unsafe_rating"]["rating"] == "e"
    for plant in ("two_characters", "no_clothing", "unsafe_rating"):
        image, _ = load_image(_image_path(sample, planted[plant]))
        assert not is_monochrome(image), plant


def test_near_duplicates_are_slightly_changed_copies_within_their_identity(sample):
    rows = {str(row["id"]): row for row in _rows(sample)}
    truth = _truth(sample).set_index("id")
    duplicates = truth[truth["plant"] == "near_duplicate"]
    assert len(duplicates) >= 3
    sizes_changed = 0
    for duplicate_id, entry in duplicates.iterrows():
        original_id = entry["near_duplicate_of"]
        assert truth.at[original_id, "plant"] == "" and truth.at[original_id, "identity"] == entry["identity"]
        copy_path, original_path = _image_path(sample, rows[duplicate_id]), _image_path(sample, rows[original_id])
        assert copy_path.read_bytes() != original_path.read_bytes()
        copy, _ = load_image(copy_path)
        original, _ = load_image(original_path)
        assert hamming_distance(perceptual_hash(copy), perceptual_hash(original)) <= 8
        sizes_changed += copy.size != original.size
    assert sizes_changed >= 1


def test_metadata_uses_both_tag_forms_both_file_names_and_both_formats(sample):
    rows = _rows(sample)
    assert {type(row["tag_string_general"]) for row in rows} == {str, list}
    by_md5 = by_id = 0
    extensions = Counter()
    for row in rows:
        path = _image_path(sample, row)
        if path is None or path.stat().st_size == 0 or row["md5"].startswith(".."):
            continue
        by_md5 += path.name.startswith(row["md5"])
        by_id += path.name.startswith(str(row["id"]))
        extensions[row["file_ext"]] += 1
        data = path.read_bytes()
        assert hashlib.md5(data).hexdigest() == row["md5"]
        if row["file_ext"] in ("png", "jpg") and data[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb"):
            with Image.open(path) as image:
                assert image.size == (row["image_width"], row["image_height"])
                assert image.format == {"png": "PNG", "jpg": "JPEG"}[row["file_ext"]]
    assert by_md5 > by_id > 0
    assert extensions["png"] > 20 and extensions["jpg"] > 20


def test_about_a_third_of_the_good_rows_carry_true_head_boxes_and_masks(sample):
    rows = {str(row["id"]): row for row in _rows(sample)}
    truth = _truth(sample)
    good = [rows[entry_id] for entry_id in truth.loc[truth["plant"] == "", "id"]]
    annotated = [row for row in good if "head_box" in row]
    assert all(("mask" in row) == ("head_box" in row) for row in rows.values())
    assert 0.2 <= len(annotated) / len(good) <= 0.45
    for row in annotated:
        assert not Path(row["mask"]).is_absolute() and row["mask"].startswith("masks/")
        with Image.open(sample.image_root / row["mask"]) as mask_image:
            assert mask_image.mode == "L" and mask_image.size == (row["image_width"], row["image_height"])
        mask = load_mask(sample.image_root / row["mask"])
        x0, y0, x1, y1 = row["head_box"]
        assert 0 <= x0 < x1 <= row["image_width"] and 0 <= y0 < y1 <= row["image_height"]
        ys, xs = mask.nonzero()
        assert ys.min() == pytest.approx(y0, abs=1) and y1 < ys.min() + 0.3 * (ys.max() - ys.min())
        assert xs.min() <= x0 and x1 <= xs.max() + 1
        assert mask[int(y0):int(y1), int(x0):int(x1)].mean() > 0.5  # the head is mostly figure
