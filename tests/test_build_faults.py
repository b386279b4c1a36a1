"""`sameid build` faults (issue 11): a bad input or a failed --overwrite never costs the earlier dataset, empty
and unwritable builds are one line, given head boxes are checked, and pool workers die with a killed build.
Also the dataset dir's own records: build_settings.json (issue 10) and the Hugging Face README.md card."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import tree_digest
from sameid.dataset.annotate import HEAD_BOX_OUTSIDE, AnnotateConfig, annotate_rows, check_head_box
from sameid.dataset.pipeline import BuildConfig, build_dataset
from sameid.dataset.writer import staging_dir
from sameid.errors import SameIdError
from sameid.records import DATASET_SETTINGS_FILE, read_dataset_settings

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "sameid.cli", "build", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def small_source(sample, tmp_path_factory):
    """The first 48 rows of the sample: a build of them takes seconds."""
    folder = tmp_path_factory.mktemp("small")
    metadata = folder / "small.jsonl"
    metadata.write_text("\n".join(sample.metadata.read_text().splitlines()[:48]) + "\n")
    return metadata


@pytest.fixture()
def earlier(sample, small_source, tmp_path):
    """A finished build in tmp_path/ds, and the digest of its tree."""
    out = tmp_path / "ds"
    result = _cli(small_source, "--image-root", sample.image_root, "--out", out, "--workers", "1", "--quiet",
                  "--near-duplicate-bits", "10")
    assert result.returncode == 0, result.stderr
    return out, tree_digest(out)


def test_build_records_its_settings_and_a_hugging_face_card(sample, earlier, tmp_path):
    import datasets

    out, _ = earlier
    settings = read_dataset_settings(out)
    assert settings["near_duplicate_bits"] == 10
    assert settings["source"]["kind"] == "danbooru" and settings["grouping"] == "tags"
    assert settings["backends"]["vqa"] == "pixel-colors" and settings["sameid_version"]
    assert "monochrome" in settings["filters"]["unwanted_tags"] and "method" in settings["face_clustering"]
    assert (out / DATASET_SETTINGS_FILE).is_file() and (out / "README.md").is_file()
    assert not (out / "dataset_card.md").exists()

    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert list(loaded) == ["train"] and len(loaded["train"]) == len(manifest) > 0
    rows = loaded["train"].filter(lambda row: row["mask"] is not None and row["mask_source"] != "given")
    assert len(rows) > 0, "no computed mask to check"
    rows = rows.cast_column("image", datasets.Image()).cast_column("mask", datasets.Image())
    first = rows[0]
    assert first["image"].size == (first["width"], first["height"])
    assert first["mask"].size == (first["width"], first["height"])


def test_overwrite_with_a_bad_input_leaves_the_earlier_dataset(sample, small_source, earlier, tmp_path):
    out, digest = earlier
    broken = tmp_path / "broken.jsonl"
    broken.write_text(small_source.read_text().splitlines()[0] + "\n{not json\n")
    error = _one_line_error(_cli(broken, "--image-root", sample.image_root, "--out", out, "--overwrite",
                                 "--workers", "1", "--quiet"))
    assert "broken.jsonl" in error
    empty_root = tmp_path / "empty-root"
    empty_root.mkdir()
    error = _one_line_error(_cli(small_source, "--image-root", empty_root, "--out", out, "--overwrite",
                                 "--workers", "1", "--quiet"))
    assert "--image-root" in error
    assert tree_digest(out) == digest
    assert not staging_dir(out).exists()


def test_a_failed_overwrite_keeps_the_earlier_dataset_and_resumes(sample, small_source, earlier, monkeypatch):
    from sameid.dataset import pipeline

    out, digest = earlier
    config = BuildConfig(source=str(small_source), out=str(out), image_root=str(sample.image_root), workers=1,
                         near_duplicate_bits=10)
    real = pipeline.write_parquet_atomic

    def disk_full(path, data, schema=None):
        if Path(path).name == "manifest.parquet":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data, schema)

    monkeypatch.setattr(pipeline, "write_parquet_atomic", disk_full)
    with pytest.raises(SameIdError, match="No space left on device.*earlier dataset .* is unchanged") as caught:
        build_dataset(config, overwrite=True, progress=False)
    assert "\n" not in str(caught.value)
    assert tree_digest(out) == digest
    assert (staging_dir(out) / ".work" / "annotations").is_dir()  # the interrupted build's work is kept
    monkeypatch.setattr(pipeline, "write_parquet_atomic", real)

    result = build_dataset(config, resume=True, progress=False)
    assert not staging_dir(out).exists() and not list(out.parent.glob(".ds.sameid-old-*"))
    assert (out / "manifest.parquet").is_file() and len(result.manifest) > 0
    kept = pd.read_parquet(out / "manifest.parquet")
    assert all(Path(m).is_file() for m in kept["mask"].dropna())


def test_empty_and_all_filtered_sources_are_one_line(sample, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    error = _one_line_error(_cli(empty, "--image-root", sample.image_root, "--out", tmp_path / "a", "--quiet"))
    assert "empty.jsonl" in error and "no rows" in error
    filtered = tmp_path / "filtered.jsonl"
    filtered.write_text(json.dumps({"id": 1, "md5": "a", "file_ext": "png", "tag_string_general": "monochrome shirt",
                                    "tag_string_character": "x", "tag_string_artist": "y", "rating": "g"}) + "\n")
    error = _one_line_error(_cli(filtered, "--image-root", sample.image_root, "--out", tmp_path / "b", "--quiet"))
    assert "filtered.jsonl" in error and "filtered out" in error and "unwanted tag: monochrome: 1" in error
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "metadata.jsonl").write_text("")
    error = _one_line_error(_cli(tmp_path / "folder", "--out", tmp_path / "c", "--quiet"))
    assert "metadata.jsonl" in error
    assert not any((tmp_path / name).exists() for name in "abc")  # nothing written for a bad input


def test_unwritable_out_is_one_line(sample, small_source, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    error = _one_line_error(_cli(small_source, "--image-root", sample.image_root, "--out", blocker / "ds",
                                 "--workers", "1", "--quiet"))
    assert "cannot write the dataset" in error and "a-file" in error


def test_given_head_boxes_are_checked_against_the_image():
    assert check_head_box([10, 10, 50, 60], 100, 80) == ([10.0, 10.0, 50.0, 60.0], "")
    assert check_head_box([-1, -1, 101, 50], 100, 80)[0] == [0.0, 0.0, 100.0, 50.0]  # within the tolerance
    for box in ([-40, 10, 20, 30], [10, 10, 400, 30], [120, 10, 130, 30], [50, 10, 40, 30], [10, 79.5, 20, 82]):
        clipped, why = check_head_box(box, 100, 80)
        assert clipped is None and why, box


def test_a_bad_given_head_box_is_rejected_with_its_own_reason(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray((np.random.default_rng(0).random((80, 100, 3)) * 255).astype(np.uint8)).save(path)
    rows = [{"id": "good", "image": str(path), "head_box": [10, 10, 40, 40]},
            {"id": "negative", "image": str(path), "head_box": [-60, -60, -10, -10]},
            {"id": "outside", "image": str(path), "head_box": [150, 10, 190, 40]}]
    config = AnnotateConfig(segmenter=None, vqa=None, head_detector="mask-top", dataset_dir=str(tmp_path))
    results = {r["id"]: r for r in annotate_rows(rows, config)}
    assert results["good"]["status"] == "ok" and results["good"]["head_box_source"] == "given"
    for name in ("negative", "outside"):
        assert results[name]["status"] == "rejected" and results[name]["reason"] == HEAD_BOX_OUTSIDE
        assert "outside the 100x80 image" in results[name]["detail"]


def _descendants(pid: int) -> set[int]:
    """Pids of every process below ``pid`` (psutil, else /proc)."""
    try:
        import psutil

        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except ImportError:
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        found, todo = set(), [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.add(child)
                todo.append(child)
        return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_die_with_a_killed_build(sample, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": SRC}
    process = subprocess.Popen(
        [sys.executable, "-m", "sameid.cli", "build", str(sample.metadata), "--image-root", str(sample.image_root),
         "--out", str(out), "--workers", "2", "--shard-size", "4", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        shards = out / ".work" / "annotations"
        deadline = time.time() + 180
        workers: set[int] = set()
        while time.time() < deadline and (len(workers) < 2 or not list(shards.glob("part-*.parquet"))):
            assert process.poll() is None, "the build ended before it could be killed"
            workers = _descendants(process.pid)
            time.sleep(0.1)
        assert len(workers) >= 2, "no pool workers seen"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.1)
        left = [pid for pid in workers if _alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"{len(left)} worker process(es) outlived the killed build"
    finally:
        if process.poll() is None:
            process.kill()


def test_posts_without_an_artist_are_refused_unless_allowed(sample, small_source, tmp_path):
    """A.1: every image has "a single character and artist"; --allow-no-artist keeps the others under an explicit
    key, and build_settings.json records both that and the answer matching."""
    from sameid.dataset.outfits import UNKNOWN_ARTIST

    posts = [json.loads(line) for line in small_source.read_text().splitlines()]
    character = posts[0]["tag_string_character"]
    unsigned = {str(p["id"]) for p in posts if p["tag_string_character"] == character}
    for post in posts:
        if str(post["id"]) in unsigned:
            post["tag_string_artist"] = ""
    metadata = tmp_path / "unsigned.jsonl"
    metadata.write_text("".join(json.dumps(post) + "\n" for post in posts))

    def build(out, **options):
        return build_dataset(BuildConfig(source=str(metadata), out=str(tmp_path / out), workers=1,
                                         image_root=str(sample.image_root), **options), progress=False)

    refused = build("refused")
    reasons = refused.rejected.set_index("id")["reason"]
    assert len(unsigned) >= 2 and all(reasons.get(i) == "no artist tag" for i in unsigned)
    settings = read_dataset_settings(refused.out)
    assert settings["filters"]["require_artist"] is True and settings["answer_matching"] == "strict"

    allowed = build("allowed", allow_no_artist=True, answer_matching="color-family")
    kept = allowed.manifest[allowed.manifest["id"].isin(unsigned)]
    assert len(kept) >= 2 and set(kept["artist"]) == {UNKNOWN_ARTIST}
    assert kept["identity"].str.contains(f"|{UNKNOWN_ARTIST}|", regex=False).all()
    settings = read_dataset_settings(allowed.out)
    assert settings["filters"]["require_artist"] is False and settings["answer_matching"] == "color-family"


def test_bad_answer_matching_and_answer_length_are_one_line(sample, small_source, tmp_path):
    error = _one_line_error(_cli(small_source, "--image-root", sample.image_root, "--out", tmp_path / "a",
                                 "--answer-matching", "loose", "--quiet"))
    assert "unknown answer matching 'loose'" in error and "strict, color-family" in error
    error = _one_line_error(_cli(small_source, "--image-root", sample.image_root, "--out", tmp_path / "b",
                                 "--vqa", "transformers:some/model?max_new_tokens=0", "--quiet"))
    assert "max_new_tokens must be a positive whole number" in error
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
