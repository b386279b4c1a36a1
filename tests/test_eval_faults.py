"""``sameid eval`` under faults (issue 11): an earlier report in --out, duplicate rows, empty and corrupt images,
garbage manifests, concurrent runs sharing a cache, a run killed part way. Tiny random CLIP, clip_i and clip_t."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from sameid.cli import app
from sameid.evaluate.embeddings import EmbeddingCache, file_digest
from sameid.evaluate.evaluator import EvalConfig, evaluate_generations
from sameid.evaluate.manifest import read_generations
from sameid.testing import save_tiny_clip

SRC = str(Path(__file__).resolve().parents[1] / "src")
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_clip")
    save_tiny_clip(folder)
    return folder


def _image(path: Path, seed: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture
def gens(tmp_path):
    """8 generations of two models, 2 references each; paths absolute."""
    refs = [_image(tmp_path / "refs" / f"r{k}.png", 100 + k) for k in range(2)]
    rows = [{"image": _image(tmp_path / "gens" / f"g{k}.png", k), "references": refs, "prompt": f"prompt {k % 3}",
             "subject": "s", "model": f"m{k % 2}", "seed": k} for k in range(8)]
    return {"root": tmp_path, "rows": rows}


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _eval(manifest, out, clip, *extra):
    return runner.invoke(app, ["eval", str(manifest), "--out", str(out), "--metrics", "clip_i,clip_t", "--clip",
                               str(clip), "--no-cache", "--bootstrap", "20", *extra])


def test_an_earlier_evaluation_is_refused_unless_overwrite_which_removes_exactly_its_files(gens, tiny_clip, tmp_path):
    rows = gens["rows"]
    bad = _jsonl(tmp_path / "bad.jsonl", [*rows, {**rows[0], "image": str(tmp_path / "absent.png")}])
    out = tmp_path / "out"
    first = _eval(bad, out, tiny_clip, "--skip-invalid")
    assert first.exit_code == 0, first.output
    assert (out / "problems.parquet").is_file()
    (out / "notes.txt").write_text("mine")
    (out / "plots" / "extra.txt").write_text("mine too")
    before = (out / "summary.json").read_text()

    refused = _eval(_jsonl(tmp_path / "good.jsonl", rows), out, tiny_clip)
    assert refused.exit_code == 2 and "earlier evaluation" in refused.output and "--overwrite" in refused.output
    assert (out / "summary.json").read_text() == before

    # --overwrite with inputs that do not validate: nothing is removed
    broken = _eval(bad, out, tiny_clip, "--overwrite")
    assert broken.exit_code == 2 and (out / "problems.parquet").is_file() and (out / "plots" / "m0.png").is_file()

    replaced = _eval(tmp_path / "good.jsonl", out, tiny_clip, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert not (out / "problems.parquet").exists()  # the stale list of the earlier run is gone
    assert json.loads((out / "summary.json").read_text()).get("skipped_rows") is None
    assert (out / "notes.txt").read_text() == "mine" and (out / "plots" / "extra.txt").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "per_image.parquet", "plots", "report.html",
                                                     "summary.json"]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_duplicate_rows_are_counted_once(gens, tiny_clip, tmp_path):
    rows = gens["rows"]
    manifest = _jsonl(tmp_path / "dup.jsonl", [*rows, rows[1], rows[5], rows[1]])  # 11 rows, 8 distinct
    generations = read_generations(manifest)  # duplicates never stop the run
    assert len(generations.frame) == 8 and generations.problems.empty
    assert generations.duplicates["row"].tolist() == [8, 9, 10]
    assert generations.duplicates["problem"].tolist() == ["duplicate of row 1", "duplicate of row 5",
                                                          "duplicate of row 1"]
    result = _eval(manifest, tmp_path / "out", tiny_clip)
    assert result.exit_code == 0, result.output
    assert "counted 3 duplicate row(s) once (rows 8, 9, 10" in result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert sum(m["n"] for m in summary["models"].values()) == 8
    assert len(pd.read_parquet(tmp_path / "out" / "per_image.parquet")) == 8
    assert pd.read_parquet(tmp_path / "out" / "problems.parquet")["row"].tolist() == [8, 9, 10]
    # the same image with other values is a conflict, not a duplicate
    conflict = _jsonl(tmp_path / "conflict.jsonl", [*rows, {**rows[2], "prompt": "another prompt"}])
    with pytest.raises(Exception, match="row 8.*image also in row 2 with another prompt"):
        read_generations(conflict)


def test_skip_invalid_skips_every_empty_or_corrupt_image_and_names_each_row(gens, tiny_clip, tmp_path):
    rows = gens["rows"]
    Path(rows[2]["image"]).write_bytes(b"")  # 0 bytes
    Path(rows[4]["image"]).write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt
    data = Path(rows[6]["image"]).read_bytes()
    Path(rows[6]["image"]).write_bytes(data[: len(data) // 2])  # truncated
    manifest = _jsonl(tmp_path / "gens.jsonl", rows)
    stopped = _eval(manifest, tmp_path / "stopped", tiny_clip)
    assert stopped.exit_code == 2 and "row 2" in stopped.output and "empty (0 bytes)" in stopped.output
    assert not (tmp_path / "stopped").exists()
    # without the empty one, the corrupt images stop the run naming both rows
    rows_without_empty = [r for k, r in enumerate(rows) if k != 2]
    corrupt_only = _jsonl(tmp_path / "corrupt.jsonl", rows_without_empty)
    stopped = _eval(corrupt_only, tmp_path / "stopped", tiny_clip)
    assert stopped.exit_code == 2, stopped.output
    assert "row 3" in stopped.output and "row 5" in stopped.output and "unreadable image" in stopped.output
    assert "Traceback" not in stopped.output
    out = tmp_path / "skipped"
    skipped = _eval(manifest, out, tiny_clip, "--skip-invalid")
    assert skipped.exit_code == 0, skipped.output
    problems = pd.read_parquet(out / "problems.parquet")
    assert sorted(problems["row"].unique()) == [2, 4, 6]
    assert "skipped 3 invalid row(s) (2, 4, 6)" in skipped.output
    assert pd.read_parquet(out / "per_image.parquet")["row"].tolist() == [0, 1, 3, 5, 7]


def test_skip_invalid_with_decode_workers_names_every_row(gens, tiny_clip, tmp_path):
    rows = gens["rows"]
    for k in (1, 6):
        Path(rows[k]["image"]).write_bytes(b"not an image")
    frame = read_generations(_jsonl(tmp_path / "gens.jsonl", rows)).frame
    from sameid.evaluate.run import evaluate_manifest

    config = EvalConfig(metrics=("clip_i",), clip=f"clip:{tiny_clip}", cache_dir=None, batch_size=2,
                        decode_workers=1)
    result = evaluate_manifest(tmp_path / "gens.jsonl", tmp_path / "out", config, skip_invalid=True, bootstrap=10)
    assert sorted(result.left_out["row"]) == [1, 6] and len(result.evaluation.per_image) == len(frame) - 2


@pytest.mark.parametrize("name,content", [
    ("garbage.parquet", b"PAR1 this is not parquet at all"),
    ("empty.parquet", b""),
    ("binary.jsonl", b"\xff\xfe\x00garbage\x00"),
    ("scalars.jsonl", b"1\n2\n"),
])
def test_a_garbage_manifest_is_one_line_naming_the_file(tmp_path, tiny_clip, name, content):
    manifest = tmp_path / name
    manifest.write_bytes(content)
    result = _eval(manifest, tmp_path / "out", tiny_clip)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and str(manifest) in result.output and "Traceback" not in result.output


def test_a_truncated_parquet_manifest_is_one_line(gens, tmp_path, tiny_clip):
    manifest = tmp_path / "gens.parquet"
    pd.DataFrame(gens["rows"]).to_parquet(manifest)
    data = manifest.read_bytes()
    manifest.write_bytes(data[: len(data) // 2])
    result = _eval(manifest, tmp_path / "out", tiny_clip)
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "gens.parquet" in result.output


def test_a_killed_eval_keeps_its_first_batch(gens, tiny_clip, tmp_path, monkeypatch):
    from sameid.backends.clip import CLIPEmbedder

    calls = []
    original = CLIPEmbedder.embed_pixels

    def dying(self, pixels):
        calls.append(len(pixels))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, pixels)

    monkeypatch.setattr(CLIPEmbedder, "embed_pixels", dying)
    frame = read_generations(_jsonl(tmp_path / "gens.jsonl", gens["rows"])).frame
    config = EvalConfig(metrics=("clip_i",), clip=f"clip:{tiny_clip}", cache_dir=tmp_path / "cache", batch_size=4,
                        decode_workers=0)
    with pytest.raises(KeyboardInterrupt):
        evaluate_generations(frame, config)
    kept = EmbeddingCache(tmp_path / "cache").load(f"clip:{tiny_clip}:image")
    assert set(kept) == {file_digest(p) for p in frame["image"][:4]}
    monkeypatch.setattr(CLIPEmbedder, "embed_pixels", original)
    rerun = evaluate_generations(frame, config)
    assert rerun.stores["clip_image"].embedded == 6  # the 4 generations of the first batch came from the cache


def test_four_concurrent_evals_sharing_a_cache_dir(gens, tiny_clip, tmp_path):
    rows = gens["rows"]
    extra = [{**rows[0], "image": _image(tmp_path / "more" / f"x{k}.png", 50 + k), "seed": 100 + k}
             for k in range(8)]
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": SRC}
    runs = []
    for k in range(4):  # the shared 8 generations + 2 references, and 2 generations of each run's own
        manifest = _jsonl(tmp_path / f"run{k}.jsonl", [*rows, *extra[2 * k:2 * k + 2]])
        runs.append(subprocess.Popen(
            [sys.executable, "-m", "sameid.cli", "eval", str(manifest), "--out", str(tmp_path / f"out{k}"),
             "--metrics", "clip_i,clip_t", "--clip", str(tiny_clip), "--cache-dir", str(cache), "--batch-size", "2",
             "--bootstrap", "10", "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0, 0], outputs
    images = EmbeddingCache(cache).load(f"clip:{tiny_clip}:image")
    expected = {file_digest(p) for p in [*(r["image"] for r in rows), *rows[0]["references"],
                                         *(r["image"] for r in extra)]}
    assert set(images) == expected
    assert len(EmbeddingCache(cache).load(f"clip:{tiny_clip}:text")) == 3
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]


def test_registry_drives_help_and_a_new_metric_is_one_line(gens, tiny_clip, tmp_path):
    from sameid.evaluate import registry
    from sameid.evaluate.metrics import ReferenceSimilarity

    help_text = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "300"}).output
    for name in registry.metric_names():
        assert name in help_text
    assert "offline" in help_text  # --vqa offline is listed

    def clip_i_again(context):  # a plugin metric: a factory and one register_metric line
        clip = context.backend("image_embedder", context.config.clip)
        return ReferenceSimilarity(context.image_store("clip_image", clip), "clip_i_again")

    registry.register_metric("clip_i_again", clip_i_again, help="test")
    try:
        frame = read_generations(_jsonl(tmp_path / "gens.jsonl", gens["rows"])).frame
        evaluation = evaluate_generations(frame, EvalConfig(metrics=("clip_i", "clip_i_again"),
                                                            clip=f"clip:{tiny_clip}", cache_dir=None))
        np.testing.assert_allclose(evaluation.per_image["clip_i_again"], evaluation.per_image["clip_i"])
        assert evaluation.stores["clip_image"].model_calls == 1  # one store shared by both
        from sameid.evaluate.report import summarize

        assert "swd(clip_i,clip_i_again)" in summarize(evaluation.per_image, resamples=10)["models"]["m0"]["swd"]
    finally:
        registry._REGISTRY.pop("clip_i_again")
