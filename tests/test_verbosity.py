"""--quiet / --verbose: third-party Python loggers and mediapipe's native TensorFlow Lite lines follow sameid's
verbosity (checked on the output a user would see, in a fresh process)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from sameid import verbosity

PROBE = textwrap.dedent("""
    import logging, sys
    import numpy as np
    from PIL import Image
    from sameid.verbosity import set_verbosity
    set_verbosity(sys.argv[1])
    logging.basicConfig()
    logging.getLogger("datasets").warning("datasets-warning-line")
    logging.getLogger("transformers").info("transformers-info-line")
    from sameid.backends.mediapipe import MediaPipeHeadDetector
    image = Image.fromarray((np.random.default_rng(0).random((96, 96, 3)) * 255).astype("uint8"))
    print("boxes", len(MediaPipeHeadDetector().detect(image)))
""")


def _run(level: str) -> subprocess.CompletedProcess:
    pytest.importorskip("mediapipe")
    return subprocess.run([sys.executable, "-c", PROBE, level], capture_output=True, text=True, timeout=120)


def test_quiet_silences_native_and_python_third_party_output():
    quiet = _run("quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert "boxes 0" in quiet.stdout
    assert quiet.stderr.strip() == "", quiet.stderr


def test_verbose_shows_them():
    # The other side of the test above: the probe does make the noise it is silencing.
    loud = _run("verbose")
    assert loud.returncode == 0, loud.stderr
    assert "datasets-warning-line" in loud.stderr
    assert "transformers-info-line" in loud.stderr
    assert "TensorFlow Lite" in loud.stderr or "absl" in loud.stderr


def test_normal_keeps_warnings_but_hides_native_start_up_lines():
    normal = _run("normal")
    assert normal.returncode == 0, normal.stderr
    assert "datasets-warning-line" in normal.stderr
    assert "transformers-info-line" not in normal.stderr
    assert "TensorFlow Lite" not in normal.stderr


def test_unknown_level_is_refused_and_state_restored(monkeypatch):
    monkeypatch.setattr(os, "environ", dict(os.environ))  # set_verbosity writes the environment for workers
    monkeypatch.delenv("SAMEID_VERBOSITY", raising=False)
    with pytest.raises(ValueError, match="quiet, normal, verbose"):
        verbosity.set_verbosity("loud")
    monkeypatch.setitem(verbosity._state, "level", None)
    monkeypatch.setenv("SAMEID_VERBOSITY", "quiet")
    assert verbosity.get_verbosity() == "quiet"  # inherited by worker processes
    assert not verbosity.show_progress()
    previous = logging.getLogger("datasets").level
    try:
        verbosity.set_verbosity("quiet")
        assert logging.getLogger("datasets").level == logging.ERROR
    finally:
        logging.getLogger("datasets").setLevel(previous)
        monkeypatch.setitem(verbosity._state, "level", None)


def test_sameid_quiet_build_prints_only_its_result(sample, tmp_path):
    # A real command whose workers start mediapipe (TensorFlow Lite, absl) and a process pool: with --quiet the
    # user sees the result lines and nothing else, native lines of the worker processes included.
    pytest.importorskip("mediapipe")
    out = tmp_path / "dataset"
    run = subprocess.run(
        [sys.executable, "-m", "sameid.cli", "--quiet", "build", str(sample.metadata), "--image-root",
         str(sample.image_root), "--out", str(out), "--head-detector", "mediapipe", "--workers", "2"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert run.returncode == 0, run.stderr
    assert run.stderr == "", run.stderr
    assert run.stdout.startswith("kept ") and f"dataset: {out}" in run.stdout
