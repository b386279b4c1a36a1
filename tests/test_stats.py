"""Dataset statistics, plots and card (``sameid.dataset.stats``)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sameid.dataset.stats import compute_stats, escape_markdown, write_stats
from sameid.errors import SchemaError
from sameid.records import MANIFEST_COLUMNS

BOX = [1.0, 2.0, 30.0, 40.0]


def _row(id_, identity, similar, *, character=None, cloth_tags=None, head_box=None, mask=None,
         near_duplicates=None, vqa_backend=None):
    return {
        "id": id_, "image": f"images/{id_}.png", "identity": identity, "similar": similar,
        "caption": f"a picture of {identity}", "tags": ["solo"], "head_box": head_box, "mask": mask,
        "width": 64, "height": 64, "phash": "0f" * 8, "character": character, "cloth_tags": cloth_tags,
        "near_duplicates": near_duplicates, "vqa_backend": vqa_backend,
    }


@pytest.fixture
def manifest() -> pd.DataFrame:
    rows = [
        _row("a1", "A", ["a2", "a3"], character="alice", cloth_tags=["skirt", "shirt"], head_box=BOX,
             mask="masks/a1.png", near_duplicates=["a2"], vqa_backend="blip"),
        _row("a2", "A", ["a1", "a3"], character="alice", cloth_tags=["skirt", "skirt"], head_box=BOX,
             mask="masks/a2.png", near_duplicates=["a1"], vqa_backend="blip"),
        _row("a3", "A", ["a1", "a2"], character="alice", cloth_tags=["shirt"], head_box=BOX,
             mask="", vqa_backend="blip"),
        _row("b1", "B", ["b2"], character="bob", cloth_tags=["dress"], head_box=[1.0, 2.0, float("nan"), 4.0],
             mask="masks/b1.png", near_duplicates=["c1", "b1"]),
        _row("b2", "B", ["b1"], character="bob", cloth_tags=[], head_box=BOX),
        _row("c1", "C", [], character="alice"),
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def rejected() -> pd.DataFrame:
    reasons = ["unwanted tag: monochrome", "unwanted tag: sketch", "unwanted tag: monochrome",
               "unreadable image", "multiple characters"]
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(reasons))], "reason": reasons,
                         "detail": ["" for _ in reasons]})


def test_numbers_on_a_hand_made_manifest(manifest, rejected):
    stats = compute_stats(manifest, rejected)

    assert stats["n_images"] == 6
    assert stats["n_identities"] == 3
    assert stats["n_rejected"] == 5 and stats["n_inputs"] == 11
    similar = stats["similar_per_sample"]
    assert similar["histogram"] == {"0": 1, "1": 2, "2": 3}
    assert (similar["min"], similar["median"], similar["mean"], similar["max"]) == (0, 1.5, round(8 / 6, 6), 2)
    assert similar["n_without_reference"] == 1
    assert similar["n_unknown_ids"] == 0
    assert stats["images_per_identity"]["histogram"] == {"1": 1, "2": 1, "3": 1}
    assert stats["images_per_identity"]["mean"] == 2.0

    assert stats["top_characters"] == [{"name": "alice", "count": 4}, {"name": "bob", "count": 2}]
    # A tag counts once per image; equal counts rank by name.
    assert stats["top_cloth_tags"] == [
        {"name": "shirt", "count": 2}, {"name": "skirt", "count": 2}, {"name": "dress", "count": 1},
    ]
    # Five rows have a box, but b1's has a NaN; the empty mask string is no mask.
    assert stats["coverage"] == {"head_box": round(4 / 6, 6), "mask": 0.5, "n_head_box": 4, "n_mask": 3}
    # a1<->a2 listed from both sides is one pair; b1 listing itself is not a pair.
    assert stats["near_duplicate_pairs"] == 2
    assert stats["vqa_backends"] == {"blip": 3}

    by_reason = stats["rejected"]["by_reason"]
    assert list(by_reason) == ["unwanted tag", "multiple characters", "unreadable image"]
    assert by_reason["unwanted tag"] == {"count": 3, "details": {"monochrome": 2, "sketch": 1}}
    assert by_reason["unreadable image"] == {"count": 1, "details": {}}

    limited = compute_stats(manifest, rejected, top_characters=1, top_cloth_tags=2)
    assert limited["top_characters"] == [{"name": "alice", "count": 4}]
    assert [t["name"] for t in limited["top_cloth_tags"]] == ["shirt", "skirt"]


def test_parquet_round_trip_gives_the_same_stats(manifest, rejected, tmp_path):
    # Parquet hands list cells back as numpy arrays and missing strings as None.
    manifest.to_parquet(tmp_path / "manifest.parquet")
    reread = pd.read_parquet(tmp_path / "manifest.parquet")
    assert isinstance(reread["similar"].iloc[0], np.ndarray)
    assert compute_stats(reread, rejected) == compute_stats(manifest, rejected)


def test_dangling_similar_ids_are_counted(manifest):
    manifest.at[5, "similar"] = ["ghost", "a1"]
    assert compute_stats(manifest, None)["similar_per_sample"]["n_unknown_ids"] == 1


@pytest.mark.parametrize("empty", [pd.DataFrame(columns=list(MANIFEST_COLUMNS)), pd.DataFrame()])
def test_empty_manifest_gives_zeros(empty, tmp_path):
    stats = write_stats(tmp_path, empty, pd.DataFrame(columns=["id", "reason", "detail"]))
    assert stats["n_images"] == 0 and stats["n_identities"] == 0 and stats["n_rejected"] == 0
    assert stats["similar_per_sample"]["histogram"] == {}
    assert stats["similar_per_sample"]["mean"] == 0.0
    assert stats["coverage"]["head_box"] == 0.0
    assert stats["top_characters"] == [] and stats["rejected"]["by_reason"] == {}
    assert json.loads((tmp_path / "stats.json").read_text()) == stats
    assert not list((tmp_path / "plots").glob("*.png"))
    card = (tmp_path / "README.md").read_text()
    assert "Not drawn: no images in the manifest." in card
    assert "No input was rejected." in card


def test_a_manifest_without_required_columns_is_a_schema_error(manifest):
    with pytest.raises(SchemaError, match="similar"):
        compute_stats(manifest.drop(columns=["similar"]), None)


def test_files_exist_and_plots_are_real_images(manifest, rejected, tmp_path):
    stats = write_stats(tmp_path, manifest, rejected, build_config={"source": "danbooru", "min_similar": 1})

    assert json.loads((tmp_path / "stats.json").read_text(encoding="utf-8")) == stats
    for name in ("similar_per_sample", "top_characters", "top_cloth_tags"):
        path = tmp_path / "plots" / f"{name}.png"
        assert path.stat().st_size > 5_000, name
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width >= 400 and image.height >= 250
            # Not a blank canvas: bars and text make many distinct colours.
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10
    assert not list(tmp_path.rglob("*.tmp")), "temporary files left behind"

    card = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\n")
    header = card.split("---\n")[1]
    assert 'license: "unknown"' in header and '- "n<1K"' in header
    assert "![Top characters](plots/top_characters.png)" in card
    assert "![Same-identity samples per sample](plots/similar_per_sample.png)" in card
    assert '"min_similar": 1' in card  # the build config
    assert "| unwanted tag | 3 | monochrome (2), sketch (1) |" in card
    assert "| head\\_box | yes |" in card and "| character | no |" in card
    assert "generated sample" not in card.lower()


def test_absent_characters_skip_the_plot_with_a_note_and_remove_a_stale_one(manifest, tmp_path):
    write_stats(tmp_path, manifest, None)
    assert (tmp_path / "plots" / "top_characters.png").exists()

    photos = manifest.drop(columns=["character", "cloth_tags"])
    write_stats(tmp_path, photos, None, build_config={"source": "/data/sample/metadata.jsonl",
                                                      "is_generated_sample": True})
    assert not (tmp_path / "plots" / "top_characters.png").exists()
    assert not (tmp_path / "plots" / "top_cloth_tags.png").exists()
    assert (tmp_path / "plots" / "similar_per_sample.png").exists()
    card = (tmp_path / "README.md").read_text()
    assert "Not drawn: the manifest has no `character` values" in card
    assert "Not drawn: the manifest has no `cloth_tags` values" in card
    assert "Source: generated sample." in card
    assert "Source: /data/sample/metadata.jsonl" in card


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_tags_with_markdown_or_html_are_escaped(manifest, tmp_path):
    nasty = ["a|b", "<script>alert(1)</script>", "``code``", "_emph_ *x*"]
    manifest["cloth_tags"] = [nasty] * len(manifest)
    rejected = pd.DataFrame({"id": ["r"], "reason": ["unwanted tag: x|<b>y</b>"], "detail": [""]})
    stats = write_stats(tmp_path, manifest, rejected)
    assert {t["name"] for t in stats["top_cloth_tags"]} == set(nasty)  # stats keep the raw names

    card = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "<script>" not in card and "<b>" not in card
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in card
    lines = card.splitlines()
    start = lines.index("| Rank | Cloth tag | Images |")
    table = lines[start : start + 2 + len(nasty)]
    assert all(_unescaped_pipes(line) == 4 for line in table), table
    assert "| a\\|b |" in card and "\\`\\`code\\`\\`" in card
    reason_row = next(line for line in lines if line.startswith("| unwanted tag |"))
    assert _unescaped_pipes(reason_row) == 4


def test_escape_markdown_removes_line_breaks():
    assert escape_markdown("a\nb|c") == "a b\\|c"
    assert escape_markdown(None) == ""


def test_stats_json_is_byte_identical_for_equal_inputs(manifest, rejected, tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    write_stats(first, manifest, rejected, build_config={"source": "danbooru"})
    shuffled = manifest.sample(frac=1.0, random_state=3).reset_index(drop=True)
    write_stats(second, shuffled, rejected.iloc[::-1], build_config={"source": "danbooru"})
    assert (first / "stats.json").read_bytes() == (second / "stats.json").read_bytes()
    assert (first / "README.md").read_bytes() == (second / "README.md").read_bytes()
    assert (first / "plots" / "top_cloth_tags.png").read_bytes() == (second / "plots" / "top_cloth_tags.png").read_bytes()
