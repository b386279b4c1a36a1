"""Time ``sameid eval``'s evaluator (clip_i + clip_t) on RetriBooru's protocol shape against two yardsticks.

The protocol (RetriBooru, arXiv 2312.02521, section 3.1): ``--subjects`` subjects x
``--prompts`` prompts x ``--seeds`` seeds x ``--samples`` samples per seed (50 x 5 x 5 x 4 = 5,000 generations),
``--references`` reference images per subject, laid out by :func:`sameid.evaluate.protocol.protocol_grid`. Every
generation and reference is a distinct ``--image-size`` px PNG written to a temporary folder; each subject has its
own prompts ("a photo of subject_07 ..."), so 250 distinct prompts. The model is a random CLIP built from a config
(no weights are downloaded), big enough that its forward pass is not negligible next to file I/O.

Arms, same data, same run, same CLIP weights:

- **ours**: :func:`sameid.evaluate.evaluate_generations` with metrics clip_i, clip_t and ``cache_dir=None``, so
  every repeat starts from a cold cache (nothing is reused across repeats); it loads its own CLIP (timed), hashes,
  decodes and embeds each distinct image and prompt once, in batches of ``--batch-size``. Its image store hands
  hashing, ``load_image`` and pixel preparation (:class:`sameid.backends.pretrained.PixelPreparer`) to a decode
  worker process (``--decode-workers``, default one per two cores) while the main process runs the model, so
  it uses a second core where one is free: ``ours_main_cpu_s`` and ``ours_workers_cpu_s`` say how much.
- **per-generation baseline**: what a per-image CLIPScore call does: for every generation, embed the generated
  image, its references and its prompt, then take the cosines. Run on the first ``--baseline-n`` generations and
  extrapolated linearly to all of them (its cost per generation is constant; the JSON says so).
- **ours, in-process decode**: the same with ``EmbeddingStore.prefetch = False``: hashing, decoding and pixel
  preparation between model calls in the one process. **decode only**: ``load_image`` on every distinct image.
- **pure forward**: only ``CLIPEmbedder.embed_images`` / ``embed_texts`` (pixel preparation + forward passes)
  on the distinct images and prompts ours embeds, already decoded in memory, in batches of ``--batch-size``, one
  process: the floor that ours' bookkeeping (hashing, decoding, gathering) adds to. **pure, transformers
  processor**: the same image loop with ``clip.image_processor`` (transformers' own preprocessing, what
  ``embed_images`` ran before PixelPreparer) instead, for context; not used in any ratio.

Each arm runs ``--repeats`` times, the arms taking turns within a repeat, each after a ``gc.collect()``; the
figures are medians (the JSON also keeps every run, the minimum, and the median of the per-repeat ours / pure
ratios). On a shared machine the CPU seconds tell a repeat's conditions: pure's wall time well above its CPU time
means another process took its core; ours' wall time near the sum of its main and worker CPU times (rather than
the larger of the two) means its worker found no free core.

Targets: ours >= 3x faster than the baseline; ours / pure <= 1.15.

    python benchmarks/bench_eval.py --json benchmarks/results/eval-2026-11-22.json
    python benchmarks/bench_eval.py --quick
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sameid.backends.registry import create_backend  # noqa: E402
from sameid.evaluate.embeddings import EmbeddingStore, default_decode_workers  # noqa: E402
from sameid.evaluate.evaluator import EvalConfig, evaluate_generations  # noqa: E402
from sameid.evaluate.protocol import protocol_grid  # noqa: E402
from sameid.images import load_image  # noqa: E402
from sameid.testing import save_tiny_clip  # noqa: E402

PROMPT_TEMPLATES = ("a photo of {} on the beach", "{} wearing a red hat", "a watercolor painting of {}",
                    "{} in the snow, night", "a close-up portrait of {} smiling")


def build_tiny_clip(folder: Path, image_size: int, patch_size: int, hidden: int, layers: int) -> dict:
    """A random CLIP saved like a hub checkpoint; its config (recorded in the JSON)."""
    return save_tiny_clip(folder, image_size=image_size, patch_size=patch_size, hidden=hidden,
                          intermediate=4 * hidden, layers=layers, heads=max(1, hidden // 16),
                          projection_dim=hidden // 2)


def write_image(path: Path, rng: np.random.Generator, size: int) -> None:
    """A distinct smooth colour field (an 8x8 random grid upsampled) with a little noise: PNG of a few KiB."""
    grid = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(grid).resize((size, size), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, size=(size, size, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


def build_protocol(root: Path, args) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    subjects, prompts = {}, {}
    for s in range(args.subjects):
        name = f"subject_{s:02d}"
        references = []
        for r in range(args.references):
            path = root / "references" / name / f"ref_{r}.png"
            write_image(path, rng, args.image_size)
            references.append(str(path))
        subjects[name] = references
        prompts[name] = [PROMPT_TEMPLATES[p % len(PROMPT_TEMPLATES)].format(name) + ("" if p < 5 else f" #{p}")
                         for p in range(args.prompts)]
    frame = protocol_grid(subjects, prompts, "bench", seeds=tuple(range(args.seeds)),
                          samples_per_seed=args.samples)
    frame["image"] = [str(root / "generations" / image) for image in frame["image"]]
    for image in frame["image"]:
        write_image(Path(image), rng, args.image_size)
    return frame.reset_index(drop=True).assign(row=lambda f: np.arange(len(f)))


def _children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children (the decode workers, once they have exited)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


def run_ours(frame, clip_spec: str, batch_size: int, decode_workers: int | None
             ) -> tuple[float, float, float, pd.DataFrame, int]:
    """(wall seconds, CPU seconds of this process, CPU seconds of its decode workers, per_image, model calls)."""
    cpu, workers, start = time.process_time(), _children_cpu_seconds(), time.perf_counter()
    evaluation = evaluate_generations(frame, EvalConfig(metrics=("clip_i", "clip_t"), clip=clip_spec,
                                                        cache_dir=None, batch_size=batch_size,
                                                        decode_workers=decode_workers))
    return (time.perf_counter() - start, time.process_time() - cpu, _children_cpu_seconds() - workers,
            evaluation.per_image, evaluation.model_calls)


def run_baseline(frame, clip, n: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Per generation: embed the image, its references and its prompt afresh, as a per-image CLIPScore does."""
    clip_i, clip_t = np.empty(n), np.empty(n)
    start = time.perf_counter()
    for i, (image, references, prompt) in enumerate(
        zip(frame["image"][:n], frame["references"][:n], frame["prompt"][:n], strict=True)
    ):
        vectors = clip.embed_images([load_image(p)[0] for p in [image, *references]])
        text = clip.embed_texts([prompt])[0]
        clip_i[i] = float((vectors[1:] @ vectors[0]).mean())
        clip_t[i] = float(vectors[0] @ text)
    return time.perf_counter() - start, clip_i, clip_t


def run_pure(clip, images: list[Image.Image], prompts: list[str], batch_size: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds)."""
    cpu, start = time.process_time(), time.perf_counter()
    for first in range(0, len(images), batch_size):
        clip.embed_images(images[first:first + batch_size])
    for first in range(0, len(prompts), batch_size):
        clip.embed_texts(prompts[first:first + batch_size])
    return time.perf_counter() - start, time.process_time() - cpu


def run_pure_processor(clip, images: list[Image.Image], batch_size: int) -> float:
    """The image half of pure forward with transformers' image processor instead of PixelPreparer."""
    from sameid.backends.pretrained import embed_pixel_batches

    def prepare(batch):
        return clip.image_processor(images=batch, return_tensors="np")["pixel_values"]

    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        embed_pixel_batches(prepare(images[first:first + batch_size]), clip._image_forward, batch_size,
                            clip.device, clip.model.config.projection_dim)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=50)
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--references", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--baseline-n", type=int, default=1000, help="generations the baseline runs on")
    parser.add_argument("--repeats", type=int, default=5, help="ours and pure: median of this many")
    parser.add_argument("--decode-workers", type=int, default=None,
                        help="ours' decode worker processes (default: one per two cores)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, every arm (1: steadier on a "
                        "shared machine)")
    parser.add_argument("--quick", action="store_true", help="5 subjects, baseline on 200, 1 repeat")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.subjects, args.baseline_n, args.repeats = 5, 200, 1

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="sameid-bench-eval-") as tmp:
        root = Path(tmp)
        clip_config = build_tiny_clip(root / "clip", args.image_size, args.patch_size, args.hidden, args.layers)
        t0 = time.perf_counter()
        frame = build_protocol(root / "data", args)
        print(f"wrote {len(frame)} generations + {args.subjects * args.references} references "
              f"({args.image_size} px PNG) in {time.perf_counter() - t0:.1f} s")
        clip_spec = f"clip:{root / 'clip'}"
        clip = create_backend("image_embedder", clip_spec)  # loaded once, shared by every arm (not timed)
        clip.embed_images([Image.new("RGB", (args.image_size,) * 2)])  # warm-up
        clip.embed_texts(["warm up"])

        distinct_images = list(dict.fromkeys([*frame["image"], *(p for refs in frame["references"] for p in refs)]))
        distinct_prompts = list(dict.fromkeys(frame["prompt"]))
        decoded = [load_image(p)[0] for p in distinct_images]
        # the arms take turns within each repeat, so a change in the machine's load hits all of them alike
        ours_times, ours_cpu, worker_cpu, serial_times, pure_times, pure_cpu, processor_times, decode_times = (
            [] for _ in range(8))
        for _ in range(args.repeats):
            # each arm starts from a collected heap: a full collection (~0.4 s with transformers loaded) must not
            # land on whichever arm happens to cross the threshold
            gc.collect()
            seconds, cpu, workers_cpu, per_image, calls = run_ours(frame, clip_spec, args.batch_size,
                                                                   args.decode_workers)
            ours_times.append(seconds)
            ours_cpu.append(cpu)
            worker_cpu.append(workers_cpu)
            EmbeddingStore.prefetch = False  # everything in this process, between model calls
            gc.collect()
            serial_times.append(run_ours(frame, clip_spec, args.batch_size, args.decode_workers)[0])
            EmbeddingStore.prefetch = True
            gc.collect()
            seconds, cpu = run_pure(clip, decoded, distinct_prompts, args.batch_size)
            pure_times.append(seconds)
            pure_cpu.append(cpu)
            gc.collect()
            processor_times.append(run_pure_processor(clip, decoded, args.batch_size))
            start = time.perf_counter()
            for path in distinct_images:
                load_image(path)
            decode_times.append(time.perf_counter() - start)
        median = statistics.median
        ours, serial, pure, decode = median(ours_times), median(serial_times), median(pure_times), median(decode_times)
        paired = median(o / p for o, p in zip(ours_times, pure_times, strict=True))

        n = min(args.baseline_n, len(frame))
        baseline_measured, clip_i, clip_t = run_baseline(frame, clip, n)
        baseline = baseline_measured * len(frame) / n
        agree = bool(np.allclose(clip_i, per_image["clip_i"].to_numpy()[:n], atol=1e-4)
                     and np.allclose(clip_t, per_image["clip_t"].to_numpy()[:n], atol=1e-4))

    result = {
        "benchmark": "eval", "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": args.threads},
        "protocol": {"subjects": args.subjects, "prompts_per_subject": args.prompts, "seeds": args.seeds,
                     "samples_per_seed": args.samples, "references_per_subject": args.references,
                     "generations": len(frame), "distinct_images": len(distinct_images),
                     "distinct_prompts": len(distinct_prompts), "image_px": args.image_size},
        "clip": clip_config, "batch_size": args.batch_size, "metrics": ["clip_i", "clip_t"],
        "statistic": f"median of {args.repeats} repeats (arms take turns within a repeat)",
        "decode_workers": args.decode_workers if args.decode_workers is not None else default_decode_workers(),
        "ours_s": ours, "ours_min_s": min(ours_times), "ours_runs_s": ours_times, "ours_model_calls": calls,
        "ours_main_cpu_s": median(ours_cpu), "ours_main_cpu_runs_s": ours_cpu,
        "ours_workers_cpu_s": median(worker_cpu), "ours_workers_cpu_runs_s": worker_cpu,
        "cpu_note": "CPU seconds: with a core free for the worker, ours' wall time tends to max(main, workers); "
                    "with none, to their sum",
        "ours_cache": "cold: cache_dir=None, a fresh EmbeddingStore every repeat, nothing reused",
        "ours_in_process_decode_s": serial, "ours_in_process_decode_runs_s": serial_times,
        "ours_in_process_decode": "EmbeddingStore.prefetch = False: hash, decode and prepare pixels between "
                                  "model calls, one process",
        "pure_forward_s": pure, "pure_min_s": min(pure_times), "pure_runs_s": pure_times,
        "pure_cpu_s": median(pure_cpu), "pure_cpu_runs_s": pure_cpu,
        "ours_over_pure_runs": [o / p for o, p in zip(ours_times, pure_times, strict=True)],
        "pure_images_transformers_processor_s": median(processor_times),
        "pure_images_transformers_processor_runs_s": processor_times,
        "decode_only_s": decode, "decode_only": "load_image on every distinct image, serially",
        "in_process_over_pure": serial / pure,
        "in_process_minus_pure_minus_decode_s": serial - pure - decode,
        "in_process_minus_pure_minus_decode": "what one process spends beyond the forward and load_image: hashing, "
                                              "gathering, metrics, loading the model",
        "baseline_s": baseline, "baseline_measured_s": baseline_measured, "baseline_measured_generations": n,
        "baseline_extrapolated": n < len(frame),
        "baseline_agrees_with_ours": agree,
        "speedup_vs_baseline": baseline / ours, "ours_over_pure": ours / pure,
        "ours_over_pure_min": min(ours_times) / min(pure_times), "ours_over_pure_paired_median": paired,
        "targets": {"speedup_vs_baseline": ">= 3", "ours_over_pure": "<= 1.15"},
    }
    print(f"CLIP {clip_config['num_hidden_layers']} layers, hidden {clip_config['hidden_size']}, "
          f"{clip_config['image_size']} px / patch {clip_config['patch_size']}; torch threads {args.threads}")
    print(f"{len(frame)} generations, {len(distinct_images)} distinct images, {len(distinct_prompts)} prompts")
    print(f"ours (cold cache, median of {args.repeats}): {ours:.2f} s  {[round(t, 2) for t in ours_times]}  "
          f"CPU: main {median(ours_cpu):.2f} s, decode workers {median(worker_cpu):.2f} s")
    print(f"ours, in-process decode:            {serial:.2f} s  {[round(t, 2) for t in serial_times]}")
    print(f"decode only (load_image, serial):   {decode:.2f} s")
    print(f"pure forward (median of {args.repeats}):     {pure:.2f} s  {[round(t, 2) for t in pure_times]}  "
          f"CPU {median(pure_cpu):.2f} s")
    print(f"  image half with transformers' processor instead of PixelPreparer: {median(processor_times):.2f} s")
    print(f"ours / pure = {ours / pure:.3f} (min/min {min(ours_times) / min(pure_times):.3f}, paired median "
          f"{paired:.3f}); in-process decode / pure = {serial / pure:.3f}, beyond pure + decode: "
          f"{serial - pure - decode:.2f} s")
    print(f"per-generation baseline: {baseline:.1f} s ({baseline_measured:.1f} s on {n}"
          f"{', extrapolated' if n < len(frame) else ''}) -> ours {baseline / ours:.1f}x faster; "
          f"same scores: {agree}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
