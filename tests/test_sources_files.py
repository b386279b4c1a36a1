"""imagefolder and folder-per-identity sources: rows, given annotations, and clear errors on bad input."""

import json

import pytest
from PIL import Image

from sameid.errors import SameIdError, SchemaError
from sameid.sources import detect_format, read_source


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)


def test_imagefolder_reads_metadata_and_given_annotations(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "sub" / "b.png")
    rows = [
        {"file_name": "a.png", "text": "a person", "identity": "ada", "head_box": [1, 1, 5, 5], "mask": "m/a.png"},
        {"file_name": "sub/b.png", "caption": "b", "tags": "smile outdoors", "identity": "ada"},
        {"file_name": "../escape.png"},
    ]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert detect_format(tmp_path) == "imagefolder"
    source = read_source(tmp_path)
    table = source.table.to_pylist()
    assert [r["id"] for r in table] == ["a.png", "sub/b.png", "../escape.png"]
    first, second, escape = table
    assert first["caption"] == "a person" and first["head_box"] == [1.0, 1.0, 5.0, 5.0]
    assert first["mask"] == str((tmp_path / "m" / "a.png").resolve()) and first["identity_hint"] == "ada"
    assert second["tags"] == ["smile", "outdoors"] and second["caption"] == "b"
    assert escape["image"] is None and escape["path_error"] == "path outside image root"


def test_imagefolder_errors_name_the_file_and_row(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png"}\n{not json\n')
    with pytest.raises(SchemaError, match=r"metadata.jsonl:2"):
        read_source(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"image": "a.png"}\n')
    with pytest.raises(SchemaError, match="file_name"):
        read_source(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "head_box": [3, 3, 1, 1]}\n')
    with pytest.raises(SchemaError, match="row 1"):
        read_source(tmp_path)


def test_identity_folders(tmp_path):
    _image(tmp_path / "ada" / "1.jpg")
    _image(tmp_path / "ada" / "2.png")
    _image(tmp_path / "bob" / "1.png")
    (tmp_path / "bob" / "notes.txt").write_text("hello")
    (tmp_path / "ada" / ".DS_Store").write_text("")
    _image(tmp_path / "loose.png")
    assert detect_format(tmp_path) == "folders"
    source = read_source(tmp_path)
    table = source.table.to_pylist()
    assert [(r["id"], r["identity_hint"]) for r in table] == [("ada/1.jpg", "ada"), ("ada/2.png", "ada"),
                                                              ("bob/1.png", "bob")]
    reasons = dict(zip(source.rejected["id"], source.rejected["reason"]))
    assert reasons == {"bob/notes.txt": "not an image file", "loose.png": "not in an identity folder"}


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(SameIdError, match="not found"):
        read_source(tmp_path / "nothing-here")


def test_imagefolder_split_folders_are_splits_and_metadata_is_not_an_image(tmp_path):
    # without metadata: train/<identity>/<image>, as datasets labels it; detected as folders, read as imagefolder
    _image(tmp_path / "plain" / "train" / "cat" / "1.png")
    _image(tmp_path / "plain" / "train" / "dog" / "1.png")
    _image(tmp_path / "plain" / "test" / "cat" / "2.png")
    source = read_source(tmp_path / "plain")
    rows = [(r["id"], r["identity_hint"]) for r in source.table.to_pylist()]
    assert rows == [("test/cat/2.png", "cat"), ("train/cat/1.png", "cat"), ("train/dog/1.png", "dog")]
    assert source.rejected.empty and source.format == "imagefolder"
    # with a metadata file per split: file_name relative to the split, identity from the metadata
    for split, names in (("train", ["a.png", "b.png"]), ("test", ["c.png"])):
        for name in names:
            _image(tmp_path / "meta" / split / name)
        lines = [json.dumps({"file_name": name, "identity": "ada"}) for name in names]
        (tmp_path / "meta" / split / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    source = read_source(tmp_path / "meta")
    rows = [(r["id"], r["identity_hint"]) for r in source.table.to_pylist()]
    assert rows == [("test/c.png", "ada"), ("train/a.png", "ada"), ("train/b.png", "ada")]
    assert source.rejected.empty
    assert source.table.to_pylist()[0]["image"] == str((tmp_path / "meta" / "test" / "c.png").resolve())


def test_identity_folders_skip_metadata_files(tmp_path):
    _image(tmp_path / "ada" / "1.jpg")
    (tmp_path / "ada" / "metadata.csv").write_text("file_name\n1.jpg\n")
    source = read_source(tmp_path)
    assert [r["id"] for r in source.table.to_pylist()] == ["ada/1.jpg"] and source.rejected.empty


def test_empty_imagefolder_metadata_is_a_clear_error(tmp_path):
    (tmp_path / "metadata.jsonl").write_text("\n")
    with pytest.raises(SameIdError, match=r"metadata.jsonl: no metadata rows"):
        read_source(tmp_path)
    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "metadata.csv").write_text("")
    with pytest.raises(SameIdError, match=r"metadata.csv: no metadata rows"):
        read_source(tmp_path)
