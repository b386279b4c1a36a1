"""The main job end to end (a shortened `sameid demo`) and the report as a browser renders it."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sameid.demo.run import DemoSettings, run_demo
from sameid.testing import find_chromium, screenshot_html


@pytest.fixture(scope="module")
def demo(tmp_path_factory, torch_one_thread):
    settings = DemoSettings(steps=2, holdout_identities=2, prompts=("a figure on a beach",), seeds=(0,),
                            inference_steps=2, workers=2, bootstrap=50)
    return run_demo(tmp_path_factory.mktemp("demo"), settings, echo=lambda line: None)


def test_every_stage_wrote_its_output(demo):
    assert (demo.out / "audit.json").is_file()
    assert (demo.run / "model" / "denoiser.json").is_file()
    rows = pd.read_json(demo.generations, lines=True)
    assert len(rows) == 2 and rows["subject"].nunique() == 2  # 2 held-out identities x 1 prompt x 1 seed
    assert demo.report.is_file() and len(demo.lines) == 3


def test_report_numbers_come_from_per_image(demo):
    per_image = pd.read_parquet(demo.report.parent / "per_image.parquet")
    model = per_image["model"].iloc[0]
    means = demo.summary["models"][model]["means"]
    assert means["vqa"] == pytest.approx(per_image["vqa"].mean())
    html = demo.report.read_text()
    assert f"{per_image['vqa'].mean():.4f}" in html
    assert f"vqa {per_image['vqa'].mean():.3f}" in demo.lines[1]


def test_report_renders_in_headless_chromium(demo, tmp_path):
    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: scripts/setup --dev installs Debian's chromium package")
        pytest.skip("no chromium on PATH (scripts/setup --dev installs it)")
    shot = screenshot_html(demo.report, tmp_path / "report.png", width=1200, height=900)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (900, 1200)
    assert pixels.std() > 10, "the screenshot is blank"
    # text and the scatter plot put many distinct grey levels on the page, a blank or error page does not
    assert len(np.unique(pixels)) > 50
