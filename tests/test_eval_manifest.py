"""Reading and checking the generations manifest; the DreamBench-style importer."""

import json

import pandas as pd
import pytest
from PIL import Image

from sameid.errors import SchemaError
from sameid.evaluate.manifest import check_generations, import_dreambench, read_generations, write_generations


def _image(path, color=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), color).save(path)
    return path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def folder(tmp_path):
    for name in ("gen0.png", "gen1.png", "ref_a.png", "ref_b.png"):
        _image(tmp_path / "images" / name)
    return tmp_path


def _row(image="images/gen0.png", references=("images/ref_a.png", "images/ref_b.png"), prompt="a girl", **extra):
    references = references if isinstance(references, str) else list(references)
    return {"image": image, "references": references, "prompt": prompt, "subject": "alice", "model": "m1",
            "seed": 0, **extra}


def test_relative_paths_resolve_against_the_manifest_folder(folder, tmp_path):
    manifest = _jsonl(folder / "gens.jsonl", [_row(), _row(image="images/gen1.png", seed=1)])
    generations = read_generations(manifest)
    frame = generations.frame
    assert len(frame) == 2 and generations.problems.empty
    assert frame.loc[0, "image"] == str((folder / "images" / "gen0.png").resolve())
    assert frame.loc[1, "references"] == [str((folder / "images" / n).resolve()) for n in ("ref_a.png", "ref_b.png")]
    assert frame["seed"].tolist() == [0, 1]
    # the same rows as parquet (absolute paths are kept as they are)
    write_generations(frame, tmp_path / "copy" / "gens.parquet")
    again = read_generations(tmp_path / "copy" / "gens.parquet").frame
    assert again["image"].tolist() == frame["image"].tolist()


def test_each_bad_row_gets_its_own_message(folder):
    rows = [
        _row(),
        _row(image="images/missing.png"),
        _row(references=["images/ref_a.png"]),
        _row(prompt="   "),
        _row(references="images/ref_a.png", seed="x"),  # a string is a list of one; seed not an integer
    ]
    manifest = _jsonl(folder / "gens.jsonl", rows)
    with pytest.raises(SchemaError) as error:
        read_generations(manifest)
    message = str(error.value)
    assert "row 1" in message and "image file not found" in message
    assert "row 2" in message and "1 references where most rows have 2" in message
    assert "row 3" in message and "empty prompt" in message
    assert "row 4" in message and "seed 'x' is not an integer" in message
    assert "row 0" not in message
    generations = read_generations(manifest, skip_invalid=True)
    assert generations.frame["row"].tolist() == [0]
    assert sorted(generations.problems["row"].unique()) == [1, 2, 3, 4]


def test_missing_column_and_bad_files(folder):
    with pytest.raises(SchemaError, match="missing column.*prompt"):
        check_generations(pd.DataFrame([{"image": "a", "references": [], "subject": "s", "model": "m"}]), folder)
    with pytest.raises(SchemaError, match="does not exist"):
        read_generations(folder / "none.jsonl")
    (folder / "bad.jsonl").write_text('{"image": 1}\nnot json\n')
    with pytest.raises(SchemaError, match="bad.jsonl:2"):
        read_generations(folder / "bad.jsonl")
    with pytest.raises(SchemaError, match="use .jsonl or .parquet"):
        (folder / "x.csv").write_text("a\n")
        read_generations(folder / "x.csv")


def test_import_dreambench_layout(tmp_path):
    samples = tmp_path / "samples"
    for run in ("ipadapter", "retrinet"):
        _image(samples / run / "src_image" / "dog" / "00.jpg")
        _image(samples / run / "src_image" / "dog" / "01.jpg")
        for k in range(2):
            _image(samples / run / "tgt_image" / "dog" / f"a_dog_on_grass_{k}.png")
            (samples / run / "text" / "dog").mkdir(parents=True, exist_ok=True)
            (samples / run / "text" / "dog" / f"a_dog_on_grass_{k}.txt").write_text("a dog on grass\n")
    _image(samples / "retrinet" / "tgt_image" / "cat" / "x.png")  # no references, no prompt: reported on read
    out = tmp_path / "manifests" / "gens.jsonl"
    frame = import_dreambench(samples, out)
    assert len(frame) == 5
    assert sorted(frame["model"].unique()) == ["ipadapter", "retrinet"]
    dog = frame[frame["subject"] == "dog"]
    assert dog["prompt"].eq("a dog on grass").all() and sorted(dog["seed"].unique()) == [0, 1]
    assert all(len(refs) == 2 and refs[0].startswith("../samples/") for refs in dog["references"])
    generations = read_generations(out, skip_invalid=True)
    assert len(generations.frame) == 4
    cat_problems = set(generations.problems["problem"])
    assert {"no references", "empty prompt"} <= cat_problems
    with pytest.raises(SchemaError, match="no <run>/tgt_image"):
        import_dreambench(tmp_path / "manifests", tmp_path / "other.jsonl")
