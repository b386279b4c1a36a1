"""summary.json, bootstrap intervals, the HTML report's escaping and the scatter plots, on synthetic scores."""

import json

import numpy as np
import pandas as pd
import pytest

from sameid.evaluate.report import bootstrap_interval, summarize, write_report


def _per_image() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    n = 40
    balanced = pd.DataFrame({"model": "balanced", "clip_t": 0.25 + rng.normal(0, 0.01, n),
                             "clip_i": 0.70 + rng.normal(0, 0.01, n)})
    split = pd.DataFrame({"model": '<script>alert("x")</script>',
                          "clip_t": np.r_[np.full(n // 2, 0.15), np.full(n // 2, 0.35)],
                          "clip_i": np.r_[np.full(n // 2, 0.90), np.full(n // 2, 0.50)]})
    frame = pd.concat([balanced, split], ignore_index=True)
    frame["face"] = np.where(np.arange(len(frame)) % 4 == 0, np.nan, 0.6)
    frame["face_detected"] = ~frame["face"].isna()
    frame["prompt"] = "<img src=x onerror=alert(1)> & a girl"
    frame["subject"], frame["seed"], frame["image"] = "s", 0, "g.png"
    return frame


def test_bootstrap_interval_covers_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.5, 0.1, 20), rng.normal(0.5, 0.1, 2000)
    low_s, high_s = bootstrap_interval(small, resamples=500)
    low_l, high_l = bootstrap_interval(large, resamples=500)
    assert low_s < small.mean() < high_s and low_l < large.mean() < high_l
    assert (high_l - low_l) < (high_s - low_s) / 3
    assert bootstrap_interval(np.array([np.nan, 1.0, np.nan, 3.0]), resamples=200)[1] <= 3.0
    assert all(np.isnan(bootstrap_interval(np.array([np.nan]))))


def test_summary_orders_balanced_above_split():
    summary = summarize(_per_image(), resamples=300)
    assert summary["metrics"] == ["clip_i", "clip_t", "face"]
    balanced, split = summary["models"]["balanced"], summary["models"]['<script>alert("x")</script>']
    assert balanced["n"] == split["n"] == 40
    assert balanced["means"]["clip_t"] == pytest.approx(split["means"]["clip_t"], abs=0.01)
    key = "swd(clip_t,clip_i)"
    assert balanced["swd"][key]["swd"] > split["swd"][key]["swd"]
    assert split["swd"][key]["swd"] < split["swd"][key]["product_of_means"]
    # the split model's interval is tight (two fixed values): the balanced one lies above it
    assert balanced["ci95"][key][0] > split["ci95"][key][1]
    assert balanced["means"]["face"] == pytest.approx(0.6) and balanced["swd"]["swd(clip_t,face)"]["n"] == 30
    assert balanced["means"]["face_detection_rate"] == pytest.approx(0.75)


def test_write_report_files_and_escaping(tmp_path):
    summary = write_report(_per_image(), tmp_path, manifest="m.jsonl", resamples=100)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert len(pd.read_parquet(tmp_path / "per_image.parquet")) == 80
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == ["balanced.png", "script_alert_x_script.png"]
    assert (tmp_path / "plots" / "balanced.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (tmp_path / "report.html").read_text()
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; a girl" in html
    assert "swd(clip_t,clip_i)" in html
    assert "notes" not in summary and 'class="note"' not in html


def test_notes_stand_at_the_top_of_the_report_and_in_the_summary(tmp_path):
    summary = write_report(_per_image(), tmp_path, resamples=20, examples=0,
                           notes=["a random <tiny> model: the scores test the flow"])
    assert summary["notes"] == ["a random <tiny> model: the scores test the flow"]
    html = (tmp_path / "report.html").read_text()
    assert html.index("a random &lt;tiny&gt; model") < html.index("<h2>Means")
