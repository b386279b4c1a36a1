"""Time ``PairsDataset.__getitem__`` (task ``composition``, mode ``identity``) against plain image decoding, same run.

Issue 3's target: at 384 px, examples/s of :class:`sameid.pairs.PairsDataset` within 1.5x of plain image loading
(overhead = ours time / baseline time <= 1.5) and >= 100 examples/s per worker.

Arms, on the same examples (the plans of one epoch; ``--repeats`` epochs, each with its own plans; medians).
Ours and the baseline take turns epoch by epoch (which goes first alternates), so a change in the load of a
shared machine hits both alike; the overhead is taken per epoch, then its median, in wall time and in CPU time of
the process (``time.process_time``: less disturbed by other processes on the machine). They do not take turns
example by example: the baseline would then decode files that ours had just decoded, with warm caches that a
training loop does not have. The loader arm runs after both:

- **ours**: ``dataset[i]`` for every index, in one process: planning (reference sampling, concept crops), decoding
  the target and its references, cropping, letterboxing to ``--resolution``, the masks and the tensors.
- **baseline**: the unavoidable part of that: ``sameid.images.load_image`` + ``numpy.asarray`` of the same files
  each example reads (the target and its distinct references; a reference drawn twice is decoded once, as
  ``PairsDataset`` does). The file lists are made before the clock starts.
- **resized** (plain loading at the training resolution): what a plain loader of (target, N references) does,
  with no sampling, cropping, letterboxing or masks: decode each distinct file once, resize the target and every
  reference slot to ``--resolution`` x ``--resolution`` (``cv2.resize``, bilinear) and stack them channel-first
  into one uint8 array. Ours is compared with both: decoding alone is the floor, this is the plain job.
- **loader**: ``torch.utils.data.DataLoader`` with ``--workers`` workers, ``--batch-size`` and
  ``collate_examples``, one epoch from making the iterator (worker start-up included) to the last batch.

Datasets:

- **demo**: the bundled sample (``sameid.demo.sample.make_sample`` then ``sameid.dataset.pipeline.build_dataset``):
  198 images of about 192x256 px (126 PNG, 72 JPEG), 48 identities of 4 or 5 images with planted near-duplicates
  (never each other's reference), so 2 to 4 eligible references per target: with N=4, 180 of the 198 targets
  repeat a reference (``shortfall="repeat"``), about 4 decodes and 4 to 5 letterboxes per example. Its images are
  small, so decoding is cheap and this is the hard case for the overhead ratio (everything is enlarged to 384 px).
- **large** (``--large-px``, 0 to skip): a synthetic dataset dir written here, ``--large-identities`` identities of
  ``--large-images`` JPEG images (quality 90) of 3:4 portrait, ``--large-px`` px high, a smooth colour field with
  a simple figure and mild noise, head box at the top; enough images per identity for N=4 distinct references, so
  5 decodes and 5 letterboxes (all shrinking, INTER_AREA) per example: the realistic case of a resize cost.

OpenCV runs with ``--cv2-threads`` threads (default 1, as in a DataLoader worker: a per-worker figure must use
one core) and torch with 1 thread in every arm.

    python benchmarks/bench_pairs.py --json benchmarks/results/pairs-2026-11-22.json
    python benchmarks/bench_pairs.py --quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sameid.images import load_image, perceptual_hash  # noqa: E402
from sameid.pairs.dataset import PairsConfig, PairsDataset, collate_examples  # noqa: E402


def build_demo(root: Path) -> Path:
    """The bundled sample, built (as tests/conftest.py does); returns the dataset dir."""
    from sameid.dataset.pipeline import BuildConfig, build_dataset
    from sameid.demo.sample import make_sample

    sample = make_sample(root / "collection")
    out = root / "dataset"
    build_dataset(BuildConfig(source=str(sample.metadata), out=str(out), image_root=str(sample.image_root),
                              workers=2, shard_size=16, is_generated_sample=True), progress=False)
    return out


def synthetic_image(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, list[float]]:
    """A smooth random colour field with a figure (head ellipse, body, legs) and mild noise; its head box."""
    grid = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    image = Image.fromarray(grid).resize((width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    cx, head = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.18, 0.24)
    top = height * rng.uniform(0.03, 0.08)
    box = [cx - head / 2, top, cx + head / 2, top + head]
    colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
    draw.rectangle((cx - head * 0.6, top + head, cx + head * 0.6, top + head * 2.6), fill=colour)
    draw.rectangle((cx - head * 0.5, top + head * 2.6, cx + head * 0.5, height * 0.97),
                   fill=tuple(255 - c for c in colour))
    draw.ellipse(box, fill=(250, 220, 200), outline=(20, 20, 20), width=max(1, width // 200))
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-5, 6, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), [float(v) for v in box]


def build_large(root: Path, identities: int, images: int, px: int, seed: int = 0) -> Path:
    """A dataset dir (manifest.parquet with the required columns, JPEG images) of ``identities`` x ``images``."""
    rng = np.random.default_rng(seed)
    width, height = px * 3 // 4, px
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(identities):
        ids = [f"i{i:03d}_{k}" for k in range(images)]
        for k, identifier in enumerate(ids):
            image, head_box = synthetic_image(rng, width, height)
            relative = f"images/{identifier}.jpg"
            image.save(root / relative, quality=90)
            rows.append({"id": identifier, "image": relative, "identity": f"identity_{i:03d}",
                         "similar": [o for o in ids if o != identifier], "caption": f"figure {i}, pose {k}",
                         "tags": ["1girl"], "head_box": head_box, "mask": None, "width": width, "height": height,
                         "phash": perceptual_hash(image), "near_duplicates": []})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


def files_per_example(dataset: PairsDataset, epoch: int) -> list[list[str]]:
    """Per index, the files ``dataset[index]`` decodes in ``epoch``: the target and its distinct references."""
    paths = dataset.manifest.image_paths
    out = []
    for index in range(len(dataset)):
        plan = dataset.plan(index, epoch)
        out.append([paths[r] for r in dict.fromkeys([plan.target_row, *plan.reference_rows])])
    return out


def time_arm(arm, count: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``arm(index)`` for every index."""
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(count):
        arm(index)
    return time.perf_counter() - wall, time.process_time() - cpu


def slots_per_example(dataset: PairsDataset, epoch: int) -> list[list[str]]:
    """Per index, the target's file and the file of every reference slot (a repeated reference twice)."""
    paths = dataset.manifest.image_paths
    out = []
    for index in range(len(dataset)):
        plan = dataset.plan(index, epoch)
        out.append([paths[plan.target_row], *(paths[r] for r in plan.reference_rows)])
    return out


def time_epoch(dataset: PairsDataset, epoch: int, files: list[list[str]]) -> dict[str, float]:
    """One epoch of each arm, in an order that rotates with the epoch: wall and CPU seconds."""
    import cv2

    dataset.set_epoch(epoch)
    slots = slots_per_example(dataset, epoch)
    size = dataset.config.resolution

    def ours(index: int) -> None:
        dataset[index]

    def baseline(index: int) -> None:
        for path in files[index]:
            np.asarray(load_image(path)[0])

    def resized(index: int) -> None:
        decoded = {path: np.asarray(load_image(path)[0]) for path in dict.fromkeys(slots[index])}
        out = np.empty((len(slots[index]), 3, size, size), dtype=np.uint8)
        for slot, path in enumerate(slots[index]):
            out[slot] = cv2.resize(decoded[path], (size, size), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)

    arms = [("ours", ours), ("baseline", baseline), ("resized", resized)]
    arms = arms[epoch % 3:] + arms[:epoch % 3]
    totals = {}
    for name, arm in arms:
        totals[f"{name}_wall"], totals[f"{name}_cpu"] = time_arm(arm, len(dataset))
    return totals


def _worker_init(cv2_threads: int, worker_id: int) -> None:
    import cv2

    cv2.setNumThreads(cv2_threads)


def time_loader(dataset: PairsDataset, epoch: int, workers: int, batch_size: int, cv2_threads: int) -> float:
    import functools

    import torch

    dataset.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate_examples,
                                         worker_init_fn=functools.partial(_worker_init, cv2_threads))
    start = time.perf_counter()
    count = sum(len(batch["target_id"]) for batch in loader)
    seconds = time.perf_counter() - start
    assert count == len(dataset)
    return seconds


def measure(name: str, dataset_dir: Path, args, describe: dict) -> dict:
    dataset = PairsDataset(dataset_dir, PairsConfig(task="composition", mode="identity", n_references=4,
                                                    resolution=args.resolution, seed=0))
    n = len(dataset)
    dataset[0]  # warm-up: imports, first-call allocations
    load_before = os.getloadavg()
    runs: dict[str, list[float]] = {"ours_wall": [], "ours_cpu": [], "baseline_wall": [], "baseline_cpu": [],
                                     "resized_wall": [], "resized_cpu": [], "loader_wall": []}
    files_read = []
    for repeat in range(args.repeats):
        files = files_per_example(dataset, repeat)
        files_read.append(sum(map(len, files)) / n)
        for arm, seconds in time_epoch(dataset, repeat, files).items():
            runs[arm].append(seconds)
        runs["loader_wall"].append(time_loader(dataset, repeat, args.workers, args.batch_size, args.cv2_threads))
    median = {name: statistics.median(values) for name, values in runs.items()}
    ours_s, base_s, loader_s = median["ours_wall"], median["baseline_wall"], median["loader_wall"]
    # the overhead per epoch, then its median: each epoch's arms ran side by side
    overheads = [o / b for o, b in zip(runs["ours_wall"], runs["baseline_wall"])]
    cpu_overheads = [o / b for o, b in zip(runs["ours_cpu"], runs["baseline_cpu"])]
    resized_overheads = [o / b for o, b in zip(runs["ours_wall"], runs["resized_wall"])]
    resized_cpu_overheads = [o / b for o, b in zip(runs["ours_cpu"], runs["resized_cpu"])]
    short = sum(dataset.sampler.is_short(r) for r in dataset.target_rows)
    result = {
        **describe, "examples_per_epoch": n, "targets_short_of_n_references": int(short),
        "decoded_files_per_example": statistics.mean(files_read),
        "ours_s": ours_s, "ours_runs_s": runs["ours_wall"], "ours_examples_per_s": n / ours_s,
        "baseline_s": base_s, "baseline_runs_s": runs["baseline_wall"], "baseline_examples_per_s": n / base_s,
        "overhead": statistics.median(overheads), "overhead_runs": overheads,
        "ours_cpu_s": median["ours_cpu"], "ours_cpu_runs_s": runs["ours_cpu"],
        "baseline_cpu_s": median["baseline_cpu"], "baseline_cpu_runs_s": runs["baseline_cpu"],
        "overhead_cpu": statistics.median(cpu_overheads), "overhead_cpu_runs": cpu_overheads,
        "resized_s": median["resized_wall"], "resized_examples_per_s": n / median["resized_wall"],
        "resized_runs_s": runs["resized_wall"], "resized_cpu_runs_s": runs["resized_cpu"],
        "overhead_vs_resized": statistics.median(resized_overheads), "overhead_vs_resized_runs": resized_overheads,
        "overhead_vs_resized_cpu": statistics.median(resized_cpu_overheads),
        "loader_s": loader_s, "loader_runs_s": runs["loader_wall"], "loader_examples_per_s": n / loader_s,
        "loader_workers": args.workers, "loader_batch_size": args.batch_size,
        "loader_note": "one epoch from making the iterator to the last batch, worker start-up included",
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }
    print(f"[{name}] load average {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"[{name}] {n} examples/epoch, {result['decoded_files_per_example']:.2f} files decoded per example, "
          f"{short} targets short of N (repeat)")
    print(f"  ours     {n / ours_s:7.1f} examples/s  (median of {args.repeats}: {ours_s:.3f} s)")
    print(f"  baseline {n / base_s:7.1f} examples/s  (load_image + asarray: {base_s:.3f} s)")
    print(f"  overhead {result['overhead']:.3f}x wall, {result['overhead_cpu']:.3f}x CPU time  (target <= 1.5; "
          f"per epoch: {', '.join(f'{v:.2f}' for v in overheads)})")
    print(f"  resized  {n / median['resized_wall']:7.1f} examples/s  (decode + resize every slot to "
          f"{args.resolution} px); overhead vs resized {result['overhead_vs_resized']:.3f}x wall, "
          f"{result['overhead_vs_resized_cpu']:.3f}x CPU")
    print(f"  loader   {n / loader_s:7.1f} examples/s  ({args.workers} workers, batch {args.batch_size}, "
          f"start-up included: {loader_s:.3f} s)")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=5, help="epochs timed per arm; the median is reported")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the loader arm")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cv2-threads", type=int, default=1, help="OpenCV threads (1: one core per worker)")
    parser.add_argument("--large-px", type=int, default=768, help="height of the synthetic images; 0: skip")
    parser.add_argument("--large-identities", type=int, default=40)
    parser.add_argument("--large-images", type=int, default=6, help="images per synthetic identity")
    parser.add_argument("--quick", action="store_true", help="2 repeats, 10 synthetic identities")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.large_identities = 2, 10

    import cv2
    import torch

    cv2.setNumThreads(args.cv2_threads)
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory(prefix="sameid-bench-pairs-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        demo = build_demo(root / "demo")
        print(f"built the demo sample in {time.perf_counter() - t0:.1f} s")
        results["demo"] = measure("demo", demo, args, {
            "data": "bundled demo sample, built", "image_px": "about 192x256", "formats": "PNG and JPEG"})
        if args.large_px:
            t0 = time.perf_counter()
            large = build_large(root / "large", args.large_identities, args.large_images, args.large_px)
            print(f"wrote {args.large_identities * args.large_images} synthetic {args.large_px} px JPEGs in "
                  f"{time.perf_counter() - t0:.1f} s")
            results["large"] = measure("large", large, args, {
                "data": "synthetic dataset dir", "image_px": f"{args.large_px * 3 // 4}x{args.large_px}",
                "formats": "JPEG quality 90", "identities": args.large_identities,
                "images_per_identity": args.large_images})

    result = {
        "benchmark": "pairs", "date": datetime.date.today().isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": 1, "opencv": cv2.__version__,
                    "cv2_threads": args.cv2_threads, "numpy": np.__version__},
        "config": {"task": "composition", "mode": "identity", "n_references": 4, "resolution": args.resolution,
                   "shortfall": "repeat", "seed": 0},
        "repeats": args.repeats, "statistic": "median over repeats (each repeat one epoch, its own plans)",
        "baseline": "sameid.images.load_image + numpy.asarray of the target and distinct references each example "
                    "reads",
        "targets": {"overhead": "<= 1.5", "ours_examples_per_s": ">= 100 (one process = one worker)"},
        "datasets": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
