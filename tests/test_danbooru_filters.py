"""Danbooru source (sources/danbooru.py), its image paths, and the tag filters (dataset/filters.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from sameid.dataset.filters import (
    DEFAULT_UNWANTED_TAGS,
    FilterConfig,
    apply_tag_filters,
    load_vocabulary,
)
from sameid.errors import SameIdError, SchemaError
from sameid.images import OUTSIDE_ROOT
from sameid.records import SOURCE_COLUMNS, source_schema
from sameid.sources.danbooru import MALFORMED_LINE, danbooru_captions, read_danbooru, resolve_danbooru_images


def post(post_id, general="1girl skirt", character="hatsune_miku", artist="some_artist", rating="g", **extra):
    row = {"id": post_id, "md5": f"md5{post_id}", "file_ext": "png", "tag_string_general": general,
           "tag_string_character": character, "tag_string_artist": artist, "rating": rating}
    row.update(extra)
    return row


def write_jsonl(path, rows, raw_lines=()):
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
        for line in raw_lines:
            handle.write(line + "\n")
    return path


# --- reader -------------------------------------------------------------------------------------------------

def test_read_danbooru_string_tags_and_columns(tmp_path):
    rows = [post(1, general="1girl long_hair  pleated_skirt ", image_width=640, image_height=480,
                 head_box=[10, 20, 110, 140], mask="masks/1.png"),
            post(2, general="", character="", artist="")]
    source = read_danbooru(write_jsonl(tmp_path / "posts.jsonl", rows))
    table = source.table
    assert table.column_names == list(SOURCE_COLUMNS) + ["md5", "file_ext"]
    assert table.schema.remove(table.schema.get_field_index("file_ext")).remove(
        table.schema.get_field_index("md5")) == source_schema()
    first, second = table.to_pylist()
    assert first["id"] == "1" and first["image"] is None and first["path_error"] is None
    assert first["tags"] == ["1girl", "long_hair", "pleated_skirt"]
    assert first["caption"] is None  # filled by resolve_danbooru_images, for the rows the filters keep
    assert first["characters"] == ["hatsune_miku"] and first["artists"] == ["some_artist"]
    assert (first["width"], first["height"], first["head_box"]) == (640, 480, [10.0, 20.0, 110.0, 140.0])
    assert first["mask"] == "masks/1.png" and first["md5"] == "md51" and first["file_ext"] == "png"
    assert second["tags"] == [] and second["characters"] == [] and second["caption"] is None
    assert second["width"] is None and second["head_box"] is None
    assert len(source.rejected) == 0 and source.format == "danbooru"


def test_list_tags_and_mixed_rows_read_the_same_as_string_tags(tmp_path):
    as_strings = [post(1, general="a_b c"), post(2, general="skirt", character="x y"), post(3, general="")]
    as_lists = [post(1, general=["a_b", "c"]), post(2, general=["skirt"], character=["x", "y"]),
                post(3, general=[])]
    mixed = [as_strings[0], as_lists[1], as_strings[2]]
    tables = [read_danbooru(write_jsonl(tmp_path / f"{i}.jsonl", rows)).table
              for i, rows in enumerate([as_strings, as_lists, mixed])]
    expected = tables[0].to_pylist()
    assert expected[1]["characters"] == ["x", "y"] and expected[0]["tags"] == ["a_b", "c"]
    for table in tables[1:]:
        assert table.to_pylist() == expected


def test_blank_tags_are_dropped_in_both_readers(tmp_path):
    rows = [post(1, general=["skirt", "", "  ", "long_hair"]), post(2, general=[" "])]
    fast = read_danbooru(write_jsonl(tmp_path / "fast.jsonl", rows)).table
    slow = read_danbooru(write_jsonl(tmp_path / "slow.jsonl", rows + [post(3, general="a b")])).table
    assert fast.column("tags").to_pylist() == [["skirt", "long_hair"], []]
    assert slow.column("tags").to_pylist() == [["skirt", "long_hair"], [], ["a", "b"]]


def test_split_is_the_same_for_any_ascii_whitespace_and_blank_runs(tmp_path):
    # Tabs and newlines take the whitespace split, plain spaces the faster " " split: same tags either way.
    spaced = ["  a_b   c ", "", " ", "d", "e f"]
    tabbed = ["\ta_b \n c\r", "", "\t", "d", "e\x0bf"]
    for name, general in (("spaced", spaced), ("tabbed", tabbed)):
        rows = [post(i, general=text) for i, text in enumerate(general)]
        table = read_danbooru(write_jsonl(tmp_path / f"{name}.jsonl", rows)).table
        assert table.column("tags").to_pylist() == [["a_b", "c"], [], [], ["d"], ["e", "f"]], name


def test_captions_are_filled_by_resolve_for_the_kept_rows(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    rows = [post(1, general="1girl long_hair  pleated_skirt "), post(2, general=""),
            post(3, general=["ünï_cödé", "a__b_", "_"])]
    table = read_danbooru(write_jsonl(tmp_path / "p.jsonl", rows)).table
    expected = ["1girl, long hair, pleated skirt", "", "ünï cödé, a  b ,  "]
    assert danbooru_captions(table.column("tags")).to_pylist() == expected
    assert danbooru_captions(table.column("tags").slice(1)).to_pylist() == expected[1:]
    # The tags themselves keep their underscores (the caption is written into a new buffer).
    assert table.column("tags").to_pylist()[2] == ["ünï_cödé", "a__b_", "_"]
    assert resolve_danbooru_images(table, root).column("caption").to_pylist() == expected
    # A caption the table already has is kept; only null ones are built from the tags.
    given = table.set_column(table.column_names.index("caption"), "caption", pa.array(["mine", None, None]))
    assert resolve_danbooru_images(given, root).column("caption").to_pylist() == ["mine"] + expected[1:]


def test_a_file_read_in_many_blocks_reads_as_in_one(tmp_path, monkeypatch):
    from sameid.sources import danbooru

    rows = [post(i, general=f"tag_{i} skirt" + " x" * (i % 3), character="" if i % 7 == 0 else "c") for i in range(200)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    whole = read_danbooru(path).table
    monkeypatch.setattr(danbooru, "_BLOCK_SIZE", 1024)  # a few lines per block
    blocks = read_danbooru(path).table
    assert blocks.column("tags").num_chunks > 10
    assert blocks.to_pylist() == whole.to_pylist()
    assert blocks.column("id").to_pylist() == [str(i) for i in range(200)]
    # A bad row in a late block still sends the file to the line-by-line reader, which names its line.
    rows[150]["tag_string_character"] = None
    with pytest.raises(SchemaError, match=r"line 151: missing required field 'tag_string_character'"):
        read_danbooru(write_jsonl(tmp_path / "bad.jsonl", rows))


def test_string_ids_and_mixed_id_types(tmp_path):
    table = read_danbooru(write_jsonl(tmp_path / "p.jsonl", [post("abc"), post(7)])).table
    assert table.column("id").to_pylist() == ["abc", "7"]


def test_malformed_line_raises_with_its_line_number(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [post(1), post(2)], raw_lines=['{"id": 3, "file_ext": ', ""])
    with pytest.raises(SchemaError, match=r"p\.jsonl: line 3: not valid JSON"):
        read_danbooru(path)


def test_bad_lines_can_be_skipped_into_rejected(tmp_path):
    rows = [post(1), post(2, head_box=[5, 5, 1, 1]), post(3, image_width="wide")]
    path = write_jsonl(tmp_path / "p.jsonl", rows, raw_lines=["[1, 2]", "not json", json.dumps(post(4))])
    source = read_danbooru(path, on_bad_line="skip")
    assert source.table.column("id").to_pylist() == ["1", "4"]
    rejected = source.rejected
    assert list(rejected.columns) == ["id", "image", "reason", "detail"]
    assert (rejected["reason"] == MALFORMED_LINE).all()
    assert rejected["detail"].str.extract(r"line (\d+)")[0].astype(int).tolist() == [2, 3, 4, 5]
    assert rejected["id"].tolist()[:2] == ["2", "3"] and "head_box" in rejected["detail"][0]


def test_missing_required_field_in_one_row_names_field_and_line(tmp_path):
    rows = [post(1), {k: v for k, v in post(2).items() if k != "tag_string_character"}]
    with pytest.raises(SchemaError, match=r"line 2: missing required field 'tag_string_character'"):
        read_danbooru(write_jsonl(tmp_path / "p.jsonl", rows))


def test_file_without_a_required_field_is_a_schema_error(tmp_path):
    rows = [{k: v for k, v in post(i).items() if k != "tag_string_artist"} for i in range(3)]
    path = write_jsonl(tmp_path / "noartist.jsonl", rows)
    with pytest.raises(SchemaError, match=r"noartist\.jsonl.*'tag_string_artist'"):
        read_danbooru(path)
    with pytest.raises(SchemaError, match=r"noartist\.jsonl: no row has the required field\(s\) 'tag_string_artist'"):
        read_danbooru(path, on_bad_line="skip")


def test_missing_metadata_file_and_empty_file(tmp_path):
    with pytest.raises(SameIdError, match="not found"):
        read_danbooru(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    assert read_danbooru(tmp_path / "empty.jsonl").table.num_rows == 0


# --- image paths --------------------------------------------------------------------------------------------

def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_resolve_tries_md5_then_id_then_danbooru2019_bucket(tmp_path):
    root = tmp_path / "images"
    by_md5 = touch(root / "aaa.jpg")
    by_id = touch(root / "22.jpg")
    bucketed = touch(root / "0123" / "4123.jpg")
    rows = [post(11, md5="aaa", file_ext="jpg"), post(22, md5="bbb", file_ext="jpg"),
            post(4123, md5="ccc", file_ext="jpg"), post(5, md5="ddd", file_ext="jpg", mask="masks/5.png")]
    table = read_danbooru(write_jsonl(tmp_path / "p.jsonl", rows)).table
    resolved = resolve_danbooru_images(table, root).to_pylist()
    assert [r["image"] for r in resolved[:3]] == [str(by_md5.resolve()), str(by_id.resolve()),
                                                  str(bucketed.resolve())]
    # No candidate exists: the first one is kept, so the image loader reports the file as missing.
    assert resolved[3]["image"] == str((root / "ddd.jpg").resolve()) and resolved[3]["path_error"] is None
    assert resolved[3]["mask"] == str((root / "masks" / "5.png").resolve())
    assert all(os.path.isabs(r["image"]) for r in resolved)


def test_resolve_refuses_paths_outside_the_root(tmp_path):
    root = tmp_path / "images"
    touch(root / "7.png")
    touch(tmp_path / "secret.png")
    os.symlink(tmp_path / "secret.png", root / "linked.png")
    rows = [post(1, md5="../secret"), post(7, md5=None, mask="../../etc/passwd"), post(8, md5="linked"),
            post(9, md5="/etc/passwd")]
    table = read_danbooru(write_jsonl(tmp_path / "p.jsonl", rows)).table
    resolved = resolve_danbooru_images(table, root).to_pylist()
    for row in resolved:
        assert row["image"] is None and row["path_error"] == OUTSIDE_ROOT and row["mask"] is None
    # A bucket directory that links outside the root is refused; a link that stays inside is followed.
    outside = tmp_path / "elsewhere"
    touch(outside / "4123.jpg")
    os.symlink(outside, root / "0123")
    touch(root / "real" / "9.png")
    os.symlink(root / "real" / "9.png", root / "md59.png")
    table = read_danbooru(write_jsonl(tmp_path / "q.jsonl", [post(4123, md5=None, file_ext="jpg"), post(9)])).table
    bucket, linked = resolve_danbooru_images(table, root).to_pylist()
    assert bucket["image"] is None and bucket["path_error"] == OUTSIDE_ROOT
    assert linked["image"] == str((root / "real" / "9.png").resolve()) and linked["path_error"] is None
    with pytest.raises(SameIdError, match="image root not found"):
        resolve_danbooru_images(table, tmp_path / "nowhere")


# --- filters ------------------------------------------------------------------------------------------------

def source_table(rows):
    """A source table from short dicts (tags/characters/artists as lists)."""
    full = [{"id": str(i), "image": None, "path_error": None, "caption": "", "width": None, "height": None,
             "head_box": None, "mask": None, "identity_hint": None, "rating": "g", **row}
            for i, row in enumerate(rows)]
    return pa.Table.from_pylist(full, schema=source_schema())


def reasons(rejected):
    return dict(zip(rejected.column("id").to_pylist(), rejected.column("reason").to_pylist(), strict=True))


def test_each_filter_reason():
    rows = [
        dict(tags=["1girl", "skirt", "shirt"], characters=["a"], artists=["x"]),            # kept
        dict(tags=["skirt", "sketch", "monochrome"], characters=["a"], artists=["x"]),     # unwanted
        dict(tags=["skirt"], characters=[], artists=["x"]),                                # no character
        dict(tags=["skirt"], characters=["a", "b"], artists=["x"]),                        # two characters
        dict(tags=["long_hair", "shoes", "hat"], characters=["a"], artists=["x"]),         # no clothing
        dict(tags=["skirt"], characters=["a"], artists=["x"], rating="e"),                 # unsafe
        dict(tags=["skirt"], characters=["a"], artists=["x"], rating="Questionable"),      # unsafe
        dict(tags=["dress"], characters=["a"], artists=["x"], rating=None),                # kept: unrated
        dict(tags=["dress"], characters=["a"], artists=["x"], rating="sensitive"),         # kept
        dict(tags=["dress"], characters=["a"], artists=[]),                                # no artist (A.1)
        dict(tags=["dress"], characters=["a"], artists=["x", "y"]),                        # kept: "x+y"
    ]
    kept, rejected = apply_tag_filters(source_table(rows))
    assert kept.column("id").to_pylist() == ["0", "7", "8", "10"]
    assert kept.column("cloth_tags").to_pylist() == [["skirt", "shirt"], ["dress"], ["dress"], ["dress"]]
    assert reasons(rejected) == {
        "1": "unwanted tag: sketch", "2": "no character tag", "3": "more than one character",
        "4": "no clothing tag", "5": "unsafe rating", "6": "unsafe rating", "9": "no artist tag",
    }
    details = dict(zip(rejected.column("id").to_pylist(), rejected.column("detail").to_pylist(), strict=True))
    assert details["1"] == "unwanted tags: sketch, monochrome"
    assert details["3"] == "characters: a, b" and details["5"] == "rating e"
    assert rejected.column_names == source_table([]).column_names + ["reason", "detail"]


def test_first_reason_wins_in_documented_order():
    rows = [dict(tags=["sketch"], characters=[], artists=["x"], rating="e"),
            dict(tags=["sketch"], characters=["a", "b"], artists=["x"]),
            dict(tags=["long_hair"], characters=[], artists=["x"])]
    assert list(reasons(apply_tag_filters(source_table(rows))[1]).values()) == [
        "unsafe rating", "unwanted tag: sketch", "no character tag"]


def test_optional_requirements():
    rows = [dict(tags=["long_hair"], characters=[], artists=[]),
            dict(tags=["skirt"], characters=["a"], artists=["x", "y"]),
            dict(tags=["skirt"], characters=["a"], artists=[])]
    relaxed = FilterConfig(require_single_character=False, require_clothing_tag=False, require_artist=False)
    assert apply_tag_filters(source_table(rows), relaxed)[0].num_rows == 3
    assert reasons(apply_tag_filters(source_table(rows), FilterConfig())[1]) == {
        "0": "no character tag", "2": "no artist tag"}  # by default, several artists pass
    strict_artist = FilterConfig(require_single_artist=True)
    assert reasons(apply_tag_filters(source_table(rows), strict_artist)[1]) == {
        "0": "no character tag", "1": "more than one artist", "2": "no artist tag"}


def test_custom_vocabulary_and_unwanted_tags(tmp_path):
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("# my garments\nSchool Uniform\n\ncape\ncape\n")
    assert load_vocabulary(vocabulary) == ("school_uniform", "cape")
    config = FilterConfig(clothing_vocabulary=load_vocabulary(vocabulary), unwanted_tags={"Lowres"})
    rows = [dict(tags=["skirt"], characters=["a"], artists=["x"]),
            dict(tags=["cape", "school_uniform"], characters=["a"], artists=["x"]),
            dict(tags=["cape", "lowres"], characters=["a"], artists=["x"])]
    kept, rejected = apply_tag_filters(source_table(rows), config)
    assert kept.column("cloth_tags").to_pylist() == [["cape", "school_uniform"]]
    assert reasons(rejected) == {"0": "no clothing tag", "2": "unwanted tag: lowres"}
    with pytest.raises(SameIdError):
        load_vocabulary(tmp_path / "missing.txt")


def test_bundled_vocabulary_has_garments_and_no_shoes_or_accessories():
    vocabulary = set(load_vocabulary())
    assert len(vocabulary) >= 300
    for garment in ("shirt", "skirt", "dress", "jacket", "pants", "hoodie", "sweater", "shorts", "coat",
                    "t-shirt", "blouse", "vest", "school_uniform", "serafuku", "kimono"):
        assert garment in vocabulary
    for excluded in ("shoes", "boots", "sneakers", "high_heels", "hat", "hair_ribbon", "necklace", "earrings",
                     "gloves", "necktie", "bag", "glasses", "thighhighs", "panties"):
        assert excluded not in vocabulary
    assert not vocabulary & DEFAULT_UNWANTED_TAGS


def test_reader_output_filters_the_same_for_string_and_list_tags(tmp_path):
    rows = [post(1, general="skirt monochrome"), post(2, general="shirt", character="a b"),
            post(3, general="dress long_hair"), post(4, general="long_hair", rating="q")]
    as_lists = [dict(r, tag_string_general=r["tag_string_general"].split()) for r in rows]
    results = []
    for name, data in (("s", rows), ("l", as_lists), ("m", [rows[0], as_lists[1], rows[2], as_lists[3]])):
        kept, rejected = apply_tag_filters(read_danbooru(write_jsonl(tmp_path / f"{name}.jsonl", data)).table)
        results.append((kept.column("id").to_pylist(), reasons(rejected)))
    assert results[0] == (["3"], {"1": "unwanted tag: monochrome", "2": "more than one character",
                                  "4": "unsafe rating"})
    assert results[1] == results[0] and results[2] == results[0]


def naive_filter(row, config):
    """The filters written per row, to check the columnar version against."""
    rating = row["rating"]
    if rating is not None and rating.strip().lower() not in config.allowed_ratings:
        return "unsafe rating"
    unwanted = [t for t in row["tags"] if t in config.unwanted_tags]
    if unwanted:
        return f"unwanted tag: {unwanted[0]}"
    if not row["characters"]:
        return "no character tag"
    if len(row["characters"]) > 1:
        return "more than one character"
    if not any(t in set(config.clothing_vocabulary) for t in row["tags"]):
        return "no clothing tag"
    return None


def test_columnar_filters_match_a_per_row_reference_across_chunks():
    rng = np.random.default_rng(3)
    config = FilterConfig()
    pool = list(config.clothing_vocabulary[:30]) + sorted(DEFAULT_UNWANTED_TAGS) + [f"tag_{i}" for i in range(400)]
    rows = []
    for _ in range(3000):
        tags = list(rng.choice(pool, size=int(rng.integers(0, 12))))
        rows.append(dict(tags=[str(t) for t in tags], characters=[f"c{i}" for i in range(rng.choice([0, 1, 1, 1, 2]))],
                         artists=["x"], rating=str(rng.choice(["g", "s", "q", "e", "G "])) if rng.random() > 0.1
                         else None))
    table = source_table(rows)
    # Several chunks of uneven sizes, as a reader produces.
    chunked = pa.concat_tables([table.slice(0, 7), table.slice(7, 1500), table.slice(1507, 1), table.slice(1508)])
    for candidate in (table, chunked):
        kept, rejected = apply_tag_filters(candidate, config)
        expected = {str(i): naive_filter(row, config) for i, row in enumerate(rows)}
        assert kept.column("id").to_pylist() == [i for i, r in expected.items() if r is None]
        assert reasons(rejected) == {i: r for i, r in expected.items() if r is not None}
        assert rejected.column("id").to_pylist() == sorted(reasons(rejected), key=int)
        vocabulary = set(config.clothing_vocabulary)
        for row_id, cloth in zip(kept.column("id").to_pylist(), kept.column("cloth_tags").to_pylist(), strict=True):
            assert cloth == [t for t in rows[int(row_id)]["tags"] if t in vocabulary]


def test_empty_table_and_missing_column():
    kept, rejected = apply_tag_filters(source_table([]))
    assert kept.num_rows == 0 and "cloth_tags" in kept.column_names
    assert rejected.num_rows == 0 and {"reason", "detail"} <= set(rejected.column_names)
    with pytest.raises(SchemaError, match="'rating'"):
        apply_tag_filters(source_table([dict(tags=[], characters=[], artists=[])]).drop_columns(["rating"]))
