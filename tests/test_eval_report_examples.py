"""report.html's best and worst generations per model: ranking, embedded thumbnails, escaping, unreadable images."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sameid.evaluate.report import (
    best_and_worst,
    example_score,
    example_thumbnails,
    thumbnail_uri,
    write_report,
)

THUMBNAIL = re.compile(r'<img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)" alt="(generated|reference)"')


def _colour(row: int) -> tuple[int, int, int]:
    """A distinct, JPEG-robust colour per row, so a thumbnail shows which file it was made from."""
    return (20 * row + 10, 200 - 15 * row, 60 + (row % 3) * 60)


def _per_image(tmp_path) -> pd.DataFrame:
    """Model "ranked": 10 rows whose clip_t x clip_i is known; model "small": 3 rows; images 300 x 200 px."""
    clip_t = np.array([0.20, 0.30, 0.10, 0.25, 0.35, 0.15, 0.22, 0.28, 0.05, 0.33])
    clip_i = np.array([0.50, 0.60, 0.90, 0.42, 0.70, 0.30, 0.80, 0.55, 0.95, 0.65])
    rows = []
    for row in range(13):
        image = tmp_path / "gens" / f"g{row}.png"
        image.parent.mkdir(exist_ok=True)
        Image.new("RGB", (300, 200), _colour(row)).save(image)
        ranked = row < 10
        rows.append({"row": row, "image": str(image), "model": "ranked" if ranked else "small", "subject": "s",
                     "seed": row, "prompt": f"prompt number {row}",
                     "clip_t": clip_t[row] if ranked else 0.1 * (row - 9),
                     "clip_i": clip_i[row] if ranked else 0.5,
                     "first_reference": str(tmp_path / "ref.png")})
    Image.new("RGB", (64, 96), (250, 250, 250)).save(tmp_path / "ref.png")
    return pd.DataFrame(rows)


def _decoded(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def test_ranking_by_the_swd_term_best_and_worst_in_order(tmp_path):
    frame = _per_image(tmp_path)
    criterion, score = example_score(frame, ["clip_i", "clip_t"])
    assert "clip_t" in criterion and "clip_i" in criterion and "swd(clip_t,clip_i)" in criterion
    np.testing.assert_allclose(score, frame["clip_t"] * frame["clip_i"])
    _, chosen = best_and_worst(frame, ["clip_i", "clip_t"], k=4)
    products = (frame["clip_t"] * frame["clip_i"])[:10].to_numpy()
    assert chosen["ranked"]["best"]["row"].tolist() == list(np.argsort(-products)[:4])
    assert chosen["ranked"]["worst"]["row"].tolist() == list(np.argsort(products)[:4])
    assert chosen["ranked"]["best"]["score"].is_monotonic_decreasing
    # 3 rows and k = 4: all three are "best", none is shown twice
    assert chosen["small"]["best"]["row"].tolist() == [12, 11, 10] and chosen["small"]["worst"].empty
    # one metric only: ranked by it; ties keep manifest order; a NaN score is never an example
    single = frame.drop(columns="clip_t").assign(clip_i=[0.5, 0.9, 0.9, np.nan, 0.1, *[0.5] * 8])
    criterion, chosen = best_and_worst(single, ["clip_i"], k=2)
    assert criterion == "clip_i"
    assert chosen["ranked"]["best"]["row"].tolist() == [1, 2]
    assert chosen["ranked"]["worst"]["row"].tolist() == [4, 0]
    assert 3 not in chosen["ranked"]["best"]["row"].tolist() + chosen["ranked"]["worst"]["row"].tolist()


def test_report_embeds_thumbnails_for_best_and_worst(tmp_path):
    frame = _per_image(tmp_path)
    write_report(frame, tmp_path / "out", resamples=50)
    html = (tmp_path / "out" / "report.html").read_text()
    section = html[html.index('id="examples"'):html.index("<h2>Generations")]
    figures = section.split('<figure class="example"')[1:]
    kinds = [re.search(r'data-kind="(\w+)"', f).group(1) for f in figures]
    assert kinds == ["best"] * 4 + ["worst"] * 4 + ["best"] * 3
    products = (frame["clip_t"] * frame["clip_i"])[:10].to_numpy()
    expected = list(np.argsort(-products)[:4]) + list(np.argsort(products)[:4]) + [12, 11, 10]
    for figure, row in zip(figures, expected, strict=True):
        thumbnails = THUMBNAIL.findall(figure)
        assert [what for _, what in thumbnails] == ["generated", "reference"]
        generated, reference = (_decoded(data) for data, _ in thumbnails)
        assert max(generated.size) == 128 and generated.size == (128, 85)  # 300 x 200 shrunk, aspect kept
        # the thumbnail is of this row's file: its colour, within JPEG error
        assert np.abs(np.asarray(generated, float).mean(axis=(0, 1)) - _colour(row)).max() < 4
        assert reference.size == (64, 96) and np.asarray(reference).min() > 240
        assert f"prompt number {row}<" in figure
    assert "clip_t × clip_i" in section  # the criterion is named
    # every example image is inside the file (no link to the generations or to a folder beside the report),
    # so moving the report or deleting the images later loses nothing
    sources = re.findall(r'<img src="([^"]*)"', section)
    assert len(sources) == 22 and all(src.startswith("data:image/jpeg;base64,") for src in sources)


def test_prompts_in_examples_are_escaped(tmp_path):
    frame = _per_image(tmp_path)
    frame.loc[4, "prompt"] = '<script>alert("best")</script> & <img src=x onerror=alert(1)>'  # row 4 is the best
    frame.loc[4, "subject"] = "<b>subject</b>"
    write_report(frame, tmp_path / "out", resamples=50)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<script>" not in html and "<img src=x" not in html and "<b>subject</b>" not in html
    section = html[html.index('id="examples"'):]
    assert "&lt;script&gt;alert(&#34;best&#34;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt;" in section
    assert "&lt;b&gt;subject&lt;/b&gt;" in section


def test_missing_or_corrupt_image_is_a_placeholder_with_the_reason(tmp_path):
    frame = _per_image(tmp_path)
    best = int(np.argmax((frame["clip_t"] * frame["clip_i"])[:10]))
    Path(frame.loc[best, "image"]).unlink()
    worst = int(np.argmin((frame["clip_t"] * frame["clip_i"])[:10]))
    Path(frame.loc[worst, "image"]).write_bytes(b"not an image at all")
    frame.loc[10, "first_reference"] = None
    assert thumbnail_uri(frame.loc[best, "image"]) == (None, "missing file")
    assert thumbnail_uri(frame.loc[worst, "image"]) == (None, "unreadable image")
    examples = example_thumbnails(frame, ["clip_i", "clip_t"], k=4)
    first_best = examples["models"]["ranked"]["best"][0]
    assert first_best["row"] == best and first_best["generated"]["uri"] is None
    assert first_best["reference"]["uri"].startswith("data:image/jpeg;base64,")
    write_report(frame, tmp_path / "out", resamples=50)
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'class="missing"' in html
    assert "generated: missing file" in html and "generated: unreadable image" in html
    assert "reference: no image recorded" in html
    # every other example still has both thumbnails: 11 examples, 3 images unavailable
    assert len(THUMBNAIL.findall(html)) == 2 * 11 - 3


def test_examples_can_be_turned_off_and_need_a_metric(tmp_path):
    frame = _per_image(tmp_path)
    write_report(frame, tmp_path / "out", resamples=50, examples=0)
    assert 'id="examples"' not in (tmp_path / "out" / "report.html").read_text()
    assert example_score(frame, []) is None and example_thumbnails(frame, []) is None
    with pytest.raises(KeyError):
        example_score(frame, ["dino"])  # a metric the table does not have is a caller's error, not a blank
