"""Figure masks of drawings: the fast default segmenter (``border-colors``) against GrabCut, speed and mask IoU.

Ground truth: single figures drawn with the bundled sample's drawing code (:mod:`sameid.demo.sample`: its
characters, artists, poses and renderer), pasted onto a background at 512-1000 px on the long side, so that the
true figure mask is the figure's alpha (> 50 %) and the true head box the drawn head's. Four conditions, the same
number of images each:

- ``sample``: the sample's own backgrounds (plain, gradient or low-contrast stripes / dots / checks, light colours
  far from the figure's), PNG;
- ``jpeg``: the same kind of backgrounds, JPEG quality 70-85;
- ``textured``: a gradient between two light colours with a paper-like texture (blurred noise, about +-6 levels)
  and, on half of the images, a stripe pattern, JPEG quality 75-90;
- ``close``: a plain or gradient background within 3-9 CIELAB units of a colour the figure wears (a white
  garment on white, a pink dress on pink ...), JPEG quality 85-95; only the drawn outline separates the two.

Timed: ``segment(image)`` on a decoded RGB image, one image at a time, single-threaded (``cv2.setNumThreads(1)``,
one BLAS thread), each image ``--repeats`` times (GrabCut ``--careful-repeats``), the two methods interleaved
image by image. images/s per core = 1 / the median over images of the thread's CPU seconds per image (the median
of its repeats); the wall-clock rate is reported too (on a shared machine it also counts waiting for a core). IoU is against the true mask;
the head box of :class:`~sameid.backends.figure.MaskTopHeadDetector` on each method's mask is compared with the
true head box (box IoU).

    python benchmarks/bench_masks.py --json benchmarks/results/masks-2026-11-30.json
    python benchmarks/bench_masks.py --per-condition 2 --repeats 1   # quick
"""

from __future__ import annotations

import os

# One core: BLAS (numpy.linalg) and OpenCV are kept to one thread, so images/s is per core.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from sameid.backends.colors import rgb_to_lab  # noqa: E402
from sameid.backends.figure import MaskTopHeadDetector  # noqa: E402
from sameid.backends.registry import create_backend  # noqa: E402
from sameid.demo import sample as drawn  # noqa: E402

CONDITIONS = ("sample", "jpeg", "textured", "close")
SIZES = ((384, 512), (576, 768), (750, 1000), (600, 800), (1000, 750))  # (width, height)


@dataclass
class Drawing:
    condition: str
    image: Image.Image  # RGB, decoded (after JPEG where the condition has it)
    mask: np.ndarray  # bool (H, W), the true figure
    head_box: tuple[float, float, float, float]


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _gradient(rng, size, first, second) -> np.ndarray:
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    slope = float(rng.uniform(-0.6, 0.6))
    t = yy / height + slope * xx / width
    t = (t - t.min()) / (t.max() - t.min())
    return np.asarray(first, np.float32) * (1 - t[..., None]) + np.asarray(second, np.float32) * t[..., None]


def _texture(rng, size, amplitude: float) -> np.ndarray:
    """Paper-like grain: blurred noise, about +-``amplitude`` levels, the same on the three channels."""
    width, height = size
    noise = rng.normal(0.0, 1.0, (height, width)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 1.2)
    noise *= amplitude / max(1e-6, float(noise.std()) * 2.0)
    return noise[..., None]


def _near(rgb, rng) -> tuple[float, float, float]:
    """A light colour 3-9 CIELAB units from ``rgb`` (lighter where it can be)."""
    target = rgb_to_lab(np.array([rgb], dtype=np.uint8))[0]
    for _ in range(200):
        step = rng.integers(-8, 9, 3) + (4 if max(rgb) < 235 else -3)
        candidate = np.clip(np.asarray(rgb) + step, 0, 255).astype(np.uint8)
        distance = float(np.linalg.norm(rgb_to_lab(candidate[None])[0] - target))
        if 3.0 <= distance <= 9.0:
            return tuple(float(v) for v in candidate)
    return tuple(float(v) for v in np.clip(np.asarray(rgb) + 4, 0, 255))


def make_drawing(rng: np.random.Generator, condition: str, size: tuple[int, int] | None = None) -> Drawing:
    """One figure with its true mask and head box under ``condition`` (one of :data:`CONDITIONS`)."""
    if size is None:
        size = SIZES[int(rng.integers(len(SIZES)))]
    width, height = size
    character = drawn.CHARACTERS[int(rng.integers(len(drawn.CHARACTERS)))]
    outfit = character.outfits[int(rng.integers(2))]
    artist = drawn.ARTISTS[int(rng.integers(len(drawn.ARTISTS)))]
    colours = drawn._figure_colours(character, outfit, artist) + [artist.outline_rgb]
    choices = drawn._background_choices(colours)
    if condition in ("sample", "jpeg"):
        background, _ = drawn._background(rng, size, choices)
    elif condition == "textured":
        first, second = (drawn.BACKGROUND_RGB[choices[int(rng.integers(len(choices)))]] for _ in range(2))
        background = _gradient(rng, size, first, second) + _texture(rng, size, 6.0)
        if rng.random() < 0.5:
            yy, xx = np.mgrid[0:height, 0:width]
            background[((xx + yy) // int(rng.integers(8, 16))) % 2 == 0] *= 0.95
    elif condition == "close":
        worn = [drawn.GARMENT_RGB[outfit.main], drawn.GARMENT_RGB[outfit.second], drawn.HAIR_RGB[character.hair],
                drawn.SKIN_RGB[character.skin]]
        near = _near(worn[int(rng.integers(len(worn)))], rng)
        if rng.random() < 0.5:
            background = np.broadcast_to(np.asarray(near, np.float32), (height, width, 3)).copy()
        else:
            background = _gradient(rng, size, near, _near(near, rng))
    else:
        raise ValueError(f"unknown condition {condition!r}; choose one of {', '.join(CONDITIONS)}")

    figure_height = height * float(rng.uniform(0.72, 0.9))
    figure = drawn._render_figure(character, outfit, artist, drawn._random_pose(rng), figure_height)
    alpha = np.asarray(figure.rgba)[..., 3]
    rows, cols = np.nonzero(alpha)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    margin = max(6, int(round(0.035 * min(width, height))))
    free_x = max(0.0, width - 2 * margin - (right - left))
    free_y = max(0.0, height - 2 * margin - (bottom - top))
    x = int(round(margin + free_x * float(rng.uniform(0.15, 0.85)))) - left
    y = int(round(margin + free_y * float(rng.uniform(0.1, 0.9)))) - top
    canvas = Image.fromarray(background.clip(0, 255).round().astype(np.uint8), "RGB")
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste(figure.rgba, (x, y))
    canvas.paste(layer, (0, 0), layer)
    mask = np.asarray(layer)[..., 3] > 127
    head_layer = Image.new("L", size, 0)
    head_layer.paste(Image.fromarray(figure.head.astype(np.uint8) * 255, "L"), (x, y))
    head_rows, head_cols = np.nonzero(np.asarray(head_layer) > 127)
    head_box = (float(head_cols.min()), float(head_rows.min()), float(head_cols.max() + 1),
                float(head_rows.max() + 1))
    if condition == "jpeg":
        canvas = _jpeg(canvas, int(rng.integers(70, 86)))
    elif condition == "textured":
        canvas = _jpeg(canvas, int(rng.integers(75, 91)))
    elif condition == "close":
        canvas = _jpeg(canvas, int(rng.integers(85, 96)))
    return Drawing(condition, canvas, mask, head_box)


def make_drawings(per_condition: int, seed: int = 0) -> list[Drawing]:
    rng = np.random.default_rng(seed)
    return [make_drawing(rng, condition) for condition in CONDITIONS for _ in range(per_condition)]


def mask_iou(found: np.ndarray, truth: np.ndarray) -> float:
    union = (found | truth).sum()
    return float((found & truth).sum() / union) if union else 1.0


def box_iou(a, b) -> float:
    if a is None or b is None:
        return 0.0
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _time(segmenter, image: Image.Image, repeats: int) -> tuple[np.ndarray, float, float]:
    """The mask, and the median wall and thread-CPU seconds of ``repeats`` runs of ``segment``."""
    walls, cpus = [], []
    for _ in range(repeats):
        copy = image.copy()
        getattr(segmenter, "_recent", {}).clear()  # GrabCut keeps recent results: each run must compute
        wall, cpu = time.perf_counter(), time.thread_time()
        mask = segmenter.segment(copy)
        cpus.append(time.thread_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return mask, statistics.median(walls), statistics.median(cpus)


def run_methods(specs: dict[str, str], drawings: list[Drawing], repeats: dict[str, int]) -> dict:
    """Each method on each drawing, interleaved image by image so that a shared machine's load hits all alike."""
    segmenters = {name: create_backend("segmenter", spec) for name, spec in specs.items()}
    detector = MaskTopHeadDetector()
    rows = {name: [] for name in specs}
    for drawing in drawings:
        for name, segmenter in segmenters.items():
            mask, wall, cpu = _time(segmenter, drawing.image, repeats[name])
            detections = detector.detect_in_mask(mask)
            rows[name].append({"condition": drawing.condition, "wall": wall, "cpu": cpu,
                               "iou": mask_iou(mask, drawing.mask),
                               "head": box_iou(detections[0].box if detections else None, drawing.head_box)})
    return {name: _summary(specs[name], rows[name]) for name in specs}


def _summary(spec: str, rows: list[dict]) -> dict:
    def part(picked: list[dict]) -> dict:
        wall = statistics.median(r["wall"] for r in picked)
        cpu = statistics.median(r["cpu"] for r in picked)
        return {"images": len(picked), "median_wall_s_per_image": wall, "median_cpu_s_per_image": cpu,
                "images_per_s_per_core": 1.0 / cpu, "images_per_s_wall": 1.0 / wall,
                "mean_iou": float(np.mean([r["iou"] for r in picked])),
                "min_iou": float(np.min([r["iou"] for r in picked])),
                "mean_head_box_iou": float(np.mean([r["head"] for r in picked]))}

    result = {"spec": spec, **part(rows), "per_condition": {}}
    for condition in CONDITIONS:
        picked = [r for r in rows if r["condition"] == condition]
        if picked:
            result["per_condition"][condition] = part(picked)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-condition", type=int, default=25, help="drawings per condition")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per image of the fast segmenter "
                                                                 "(the median is taken)")
    parser.add_argument("--careful-repeats", type=int, default=3, help="timed runs per image of GrabCut")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", default="border-colors", help="spec of the fast segmenter")
    parser.add_argument("--careful", default="grabcut", help="spec of the careful segmenter")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)
    started = datetime.datetime.now(datetime.UTC)
    drawings = make_drawings(args.per_condition, args.seed)
    ground_truth = {"mean_iou": 1.0, "mean_head_box_iou": float(np.mean(
        [box_iou(MaskTopHeadDetector().detect_in_mask(d.mask)[0].box, d.head_box) for d in drawings]))}
    methods = run_methods({"fast": args.fast, "careful": args.careful}, drawings,
                          {"fast": args.repeats, "careful": args.careful_repeats})
    fast, careful = methods["fast"], methods["careful"]
    report = {
        "benchmark": "masks",
        "date_utc": started.strftime("%Y-%m-%d %H:%M"),
        "command": "python benchmarks/bench_masks.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "opencv": cv2.__version__, "numpy": np.__version__,
                    "threads": "cv2.setNumThreads(1), one image at a time", "shared": True},
        "images": len(drawings),
        "per_condition": args.per_condition,
        "repeats": {"fast": args.repeats, "careful": args.careful_repeats},
        "sizes": sorted({d.image.size for d in drawings}),
        "methods": methods,
        "true_mask_head_box": ground_truth,
        "speed_ratio_fast_over_careful": fast["images_per_s_per_core"] / careful["images_per_s_per_core"],
        "speed_ratio_wall": fast["images_per_s_wall"] / careful["images_per_s_wall"],
        "targets": {"fast_mean_iou>=0.9": fast["mean_iou"] >= 0.9,
                    "fast_images_per_s_per_core>=10": fast["images_per_s_per_core"] >= 10},
    }
    for name, result in methods.items():
        print(f"{name:8s} {result['spec']:14s} {result['images_per_s_per_core']:8.2f} img/s/core "
              f"({result['images_per_s_wall']:.2f} wall)  "
              f"IoU mean {result['mean_iou']:.3f} min {result['min_iou']:.3f}  head box IoU "
              f"{result['mean_head_box_iou']:.3f}")
        for condition, part in result["per_condition"].items():
            print(f"    {condition:9s} IoU mean {part['mean_iou']:.3f} min {part['min_iou']:.3f}  head "
                  f"{part['mean_head_box_iou']:.3f}  {part['images_per_s_per_core']:.1f} img/s/core")
    print(f"head box IoU on the true masks: {ground_truth['mean_head_box_iou']:.3f}")
    print(f"speed ratio fast / careful: {report['speed_ratio_fast_over_careful']:.1f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
    return report


if __name__ == "__main__":
    main()
