"""The fast figure segmenter for drawings (``border-colors``) against drawn figures with known masks.

The drawings come from ``benchmarks/bench_masks.py`` (the sample's figures pasted on plain, patterned, textured or
figure-coloured backgrounds, some JPEG re-encoded), so the tests and the benchmark share one ground truth.
"""

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sameid.backends import create_backend
from sameid.backends.figure import BorderColorSegmenter, GrabCutSegmenter, MaskTopHeadDetector
from sameid.dataset.annotate import AnnotateConfig, annotate_rows
from sameid.dataset.pipeline import DEFAULT_BACKENDS

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_masks.py"
_spec = importlib.util.spec_from_file_location("bench_masks", _BENCH)
bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_masks", bench)  # dataclasses look their module up there
_spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def drawings():
    rng = np.random.default_rng(7)
    # Two per condition, at two of the benchmark's sizes: 8 drawings, every kind of background.
    return [bench.make_drawing(rng, condition, size)
            for condition in bench.CONDITIONS for size in ((384, 512), (600, 800))]


def test_fast_masks_match_the_drawn_figures(drawings):
    segmenter = BorderColorSegmenter()
    ious = {}
    for index, drawing in enumerate(drawings):
        mask = segmenter.segment(drawing.image)
        assert mask.shape == drawing.mask.shape and mask.dtype == bool
        ious[f"{drawing.condition}{index}"] = bench.mask_iou(mask, drawing.mask)
    print({key: round(value, 3) for key, value in ious.items()})
    assert np.mean(list(ious.values())) >= 0.93
    assert min(ious.values()) >= 0.9


def test_non_white_backgrounds_are_segmented(drawings):
    # Every drawing of the set lies on a coloured or patterned background; check that explicitly on two.
    for drawing in (d for d in drawings if d.condition in ("textured", "close")):
        corner = np.asarray(drawing.image)[:8, :8].reshape(-1, 3).mean(axis=0)
        assert bench.mask_iou(BorderColorSegmenter().segment(drawing.image), drawing.mask) >= 0.9, corner


def test_head_boxes_from_fast_masks_overlap_the_true_heads(drawings):
    segmenter, detector = BorderColorSegmenter(), MaskTopHeadDetector()
    ious = [bench.box_iou(detector.detect_in_mask(segmenter.segment(d.image))[0].box, d.head_box) for d in drawings]
    print(f"head box IoU mean {np.mean(ious):.3f} min {np.min(ious):.3f}")
    assert np.mean(ious) >= 0.8 and np.min(ious) >= 0.5


def test_fast_segmenter_is_much_faster_than_grabcut(drawings):
    image = next(d.image for d in drawings if d.image.size == (600, 800))

    def best_of_three(segmenter) -> float:
        times = []
        for _ in range(3):
            copy = image.copy()  # GrabCut keeps recent results by content: clear them so each run computes
            getattr(segmenter, "_recent", {}).clear()
            start = time.perf_counter()
            segmenter.segment(copy)
            times.append(time.perf_counter() - start)
        return min(times)

    fast, careful = best_of_three(BorderColorSegmenter()), best_of_three(GrabCutSegmenter())
    print(f"border-colors {fast * 1000:.1f} ms, grabcut {careful * 1000:.1f} ms, ratio {careful / fast:.1f}")
    assert careful / fast >= 3.0  # measured 5-8x; loose for a shared machine


@pytest.mark.parametrize("kind", ["plain", "gradient", "noise", "tiny", "one_pixel", "black"])
def test_images_without_a_figure_give_an_empty_mask(kind):
    rng = np.random.default_rng(0)
    if kind == "plain":
        pixels = np.full((300, 200, 3), (228, 218, 246), np.uint8)
    elif kind == "gradient":
        t = np.linspace(0.0, 1.0, 300, dtype=np.float32)[:, None, None]
        pixels = (np.array([250, 250, 250]) * (1 - t) + np.array([176, 204, 234]) * t).astype(np.uint8)
        pixels = np.broadcast_to(pixels, (300, 200, 3)).copy()
    elif kind == "noise":
        pixels = np.clip(240 + rng.normal(0, 2, (300, 200, 1)), 0, 255).repeat(3, axis=2).astype(np.uint8)
    elif kind == "tiny":
        pixels = np.full((5, 7, 3), 200, np.uint8)
    elif kind == "one_pixel":
        pixels = np.zeros((1, 1, 3), np.uint8)
    else:
        pixels = np.zeros((64, 48, 3), np.uint8)
    image = Image.fromarray(pixels, "RGB")
    mask = BorderColorSegmenter().segment(image)
    assert mask.shape == (image.height, image.width) and mask.dtype == bool
    assert not mask.any()
    assert MaskTopHeadDetector().detect_in_mask(mask) == []


def test_other_image_modes_are_read_as_rgb(drawings):
    drawing = drawings[0]
    for mode in ("RGBA", "P", "L"):
        mask = BorderColorSegmenter().segment(drawing.image.convert(mode))
        assert mask.shape == drawing.mask.shape
    rgba = BorderColorSegmenter().segment(drawing.image.convert("RGBA"))
    assert bench.mask_iou(rgba, drawing.mask) >= 0.9


def test_backend_specs_and_the_default_for_drawings():
    fast = create_backend("segmenter", "border-colors")
    assert isinstance(fast, BorderColorSegmenter) and fast.max_side == 512
    assert create_backend("segmenter", "border-colors:256").max_side == 256
    assert isinstance(create_backend("segmenter", "grabcut"), GrabCutSegmenter)  # the careful option stays
    with pytest.raises(ValueError):
        BorderColorSegmenter("8")
    assert AnnotateConfig().segmenter == "border-colors"
    assert DEFAULT_BACKENDS["tags"]["segmenter"] == "border-colors"


def test_annotating_a_blank_drawing_notes_that_no_figure_was_found(tmp_path):
    path = tmp_path / "blank.png"
    Image.new("RGB", (120, 160), (246, 224, 232)).save(path)
    config = AnnotateConfig(segmenter="border-colors", head_detector="mask-top:border-colors", vqa=None,
                            dataset_dir=str(tmp_path / "out"))
    [result] = annotate_rows([{"id": "blank", "image": str(path)}], config)
    assert result["status"] == "ok" and result["mask"] is None and result["head_box"] is None
    assert "segmenter found no figure" in result["notes"] and "no head found" in result["notes"]
