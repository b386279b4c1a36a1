"""A killed build resumes to the identical manifest; Ray Data gives the same result as the local pool."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest

from sameid.dataset.pipeline import BuildConfig, build_dataset


def _manifest(path) -> pd.DataFrame:
    """The manifest with the computed masks' paths relative to its dataset dir (they are absolute, so two dirs
    built from the same input differ there and nowhere else)."""
    return _relative_masks(pq.read_table(path / "manifest.parquet").to_pandas(), path)


def _relative_masks(manifest: pd.DataFrame, out) -> pd.DataFrame:
    prefix = f"{out}/"
    manifest = manifest.copy()
    manifest["mask"] = [m[len(prefix):] if isinstance(m, str) and m.startswith(prefix) else m
                        for m in manifest["mask"]]
    return manifest


def _build_command(sample, out, *extra):
    return [sys.executable, "-m", "sameid.cli", "build", str(sample.metadata), "--image-root",
            str(sample.image_root), "--out", str(out), "--workers", "1", "--shard-size", "16", "--quiet", *extra]


def test_kill_and_resume_gives_the_identical_manifest(sample, built_sample, tmp_path):
    out = tmp_path / "killed"
    process = subprocess.Popen(_build_command(sample, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shards = out / ".work" / "annotations"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("part-*.parquet"))) < 3:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = len(list(shards.glob("part-*.parquet")))
    assert 3 <= done, "the build finished or never started before it could be killed"
    assert not (out / "manifest.parquet").exists()

    refused = subprocess.run(_build_command(sample, out), capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr

    resumed = subprocess.run(_build_command(sample, out, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    pd.testing.assert_frame_equal(_manifest(out), _manifest(built_sample.out))
    rejected = pq.read_table(out / "rejected.parquet").to_pandas()
    pd.testing.assert_frame_equal(rejected, pq.read_table(built_sample.out / "rejected.parquet").to_pandas())
    assert json.loads((out / "stats.json").read_text()) == json.loads((built_sample.out / "stats.json").read_text())


def test_resume_with_other_options_is_refused(sample, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / ".work").mkdir()
    (out / ".work" / "config.json").write_text(json.dumps({"grouping": "faces"}))
    result = subprocess.run(_build_command(sample, out, "--resume"), capture_output=True, text=True)
    assert result.returncode == 2 and "different configuration" in result.stderr


@pytest.mark.slow
def test_ray_engine_matches_local(sample, tmp_path):
    pytest.importorskip("ray")
    lines = sample.metadata.read_text().splitlines()[:40]
    metadata = tmp_path / "small.jsonl"
    metadata.write_text("\n".join(lines) + "\n")
    results = {}
    for engine in ("local", "ray"):
        config = BuildConfig(source=str(metadata), out=str(tmp_path / engine), image_root=str(sample.image_root),
                             engine=engine, workers=2, shard_size=8)
        results[engine] = build_dataset(config, progress=False)
    assert len(results["local"].manifest) > 0
    pd.testing.assert_frame_equal(_relative_masks(results["ray"].manifest, results["ray"].out),
                                  _relative_masks(results["local"].manifest, results["local"].out))
    pd.testing.assert_frame_equal(results["ray"].rejected, results["local"].rejected)
