"""Time the multi-subject metrics of ``sameid eval`` on two-subject generations against a per-image loop.

Data: the bundled sample's two-character drawings (``sameid.demo.sample``, 24 images) stand in for generations:
``--n`` distinct PNG files (each a copy of one drawing with one pixel changed, so no two share content and the
content-hash cache cannot merge them), each with its two subjects' ``--references`` single-subject images of the
subject's identity as references (drawn from the sample; references repeat across generations, as in a protocol
grid of seeds and samples). Metrics: ``subject_figure``, ``subject_missing``, ``subject_mixing`` (the figure
finder: ``border-colors`` masks, their components, colour signatures; no model weights needed).

Arms, same data, same run:

- **ours**: :func:`sameid.evaluate.evaluate_generations` with ``cache_dir=None`` (a cold cache): each distinct
  reference is described once (content-hash keyed store), each generation once, shared by the three metrics;
- **per-image loop**: for each generation, find its subjects and describe each of its references, then score
  (the same :func:`sameid.evaluate.subjects.score_subjects`); run on the first ``--baseline-n`` generations and
  extrapolated linearly (its cost per generation is constant). Its values are checked equal to ours.

Target: ours >= 3x faster than the loop.

    python benchmarks/bench_eval_subjects.py --json benchmarks/results/eval-subjects-2026-12-01.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def make_generations(root: Path, n: int, references: int, seed: int = 0) -> pd.DataFrame:
    from sameid.demo.sample import make_sample

    sample = make_sample(root / "sample", seed=seed)
    truth = pd.read_csv(sample.ground_truth, dtype=str, keep_default_na=False)
    posts = {str(json.loads(line)["id"]): json.loads(line) for line in sample.metadata.read_text().splitlines()}

    def path(entry_id: str) -> Path:
        post = posts[entry_id]
        for name in (f"{post['md5']}.{post['file_ext']}", f"{post['id']}.{post['file_ext']}"):
            if (sample.image_root / name).is_file():
                return sample.image_root / name
        raise FileNotFoundError(entry_id)

    singles = truth[truth["plant"] == ""]
    by_identity = {identity: [str(path(i)) for i in rows["id"]] for identity, rows in singles.groupby("identity")}
    drawings = truth[truth["plant"] == "two_subjects"]
    rng = np.random.default_rng(seed)
    out = root / "generations"
    out.mkdir()
    rows = []
    for number in range(n):
        entry = drawings.iloc[number % len(drawings)]
        pixels = np.array(Image.open(path(entry["id"])).convert("RGB"))
        y, x = rng.integers(0, pixels.shape[0]), rng.integers(0, pixels.shape[1])
        pixels[y, x] = rng.integers(0, 256, size=3)
        image = out / f"gen_{number:05d}.png"
        Image.fromarray(pixels).save(image, compress_level=1)
        subjects = []
        for character, label in zip(entry["character"].split(), entry["outfit"].split()):
            identity = f"{character}|{entry['artist']}|{label}"
            pool = by_identity[identity]
            chosen = [pool[int(i)] for i in rng.choice(len(pool), size=min(references, len(pool)), replace=False)]
            subjects.append({"identity": identity, "references": chosen})
        rows.append({"row": number, "image": str(image), "references": [p for s in subjects for p in s["references"]],
                     "prompt": "two characters side by side", "subject": " + ".join(s["identity"] for s in subjects),
                     "model": "bench", "seed": number, "subjects": subjects})
    return pd.DataFrame(rows)


def per_image_loop(frame: pd.DataFrame) -> list[tuple[float, float, float]]:
    from sameid.backends.registry import create_backend
    from sameid.evaluate.subjects import MATCH_THRESHOLDS, FigureFinder, score_subjects
    from sameid.images import load_image

    finder = FigureFinder(create_backend("segmenter", "border-colors"))
    values = []
    for image, subjects in zip(frame["image"], frame["subjects"]):
        found = sorted(finder.found(load_image(image)[0]), key=lambda item: item[0])
        matrix = np.stack([v for _, v in found]).astype(np.float64) if found else np.zeros((0, 1))
        references = [np.stack([finder.reference(load_image(p)[0]) for p in s["references"]]).astype(np.float64)
                      for s in subjects]
        scores = score_subjects(matrix, references, MATCH_THRESHOLDS["figures"])
        values.append((float(np.nanmean(scores.similarities)), scores.missing, scores.mixing))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--baseline-n", type=int, default=200)
    parser.add_argument("--references", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from sameid.evaluate import EvalConfig, evaluate_generations

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        frame = make_generations(Path(folder), args.n, args.references)
        setup_s = time.perf_counter() - start
        distinct_references = len({p for refs in frame["references"] for p in refs})

        config = EvalConfig(metrics=("subject_figure", "subject_missing", "subject_mixing"), decode_workers=0)
        cpu, start = time.process_time(), time.perf_counter()
        evaluation = evaluate_generations(frame, config)
        ours_s, ours_cpu = time.perf_counter() - start, time.process_time() - cpu
        per_image = evaluation.per_image

        subset = frame.iloc[:args.baseline_n]
        cpu, start = time.process_time(), time.perf_counter()
        loop = per_image_loop(subset)
        loop_s, loop_cpu = time.perf_counter() - start, time.process_time() - cpu
        ours_subset = per_image[["subject_figure", "subject_missing", "subject_mixing"]].iloc[:args.baseline_n]
        assert np.allclose(np.array(loop), ours_subset.to_numpy(), equal_nan=True), "the loop and ours disagree"
        loop_full_s = loop_s * len(frame) / len(subset)

    result = {
        "generations": len(frame), "references_per_subject": args.references,
        "distinct_references": distinct_references, "setup_s": round(setup_s, 1),
        "ours_s": round(ours_s, 2), "ours_cpu_s": round(ours_cpu, 2),
        "ours_generations_per_s": round(len(frame) / ours_s, 1),
        "loop_n": len(subset), "loop_s": round(loop_s, 2), "loop_cpu_s": round(loop_cpu, 2),
        "loop_extrapolated_s": round(loop_full_s, 1), "speedup": round(loop_full_s / ours_s, 2),
        "means": {c: round(float(per_image[c].mean()), 4) for c in ("subject_figure", "subject_missing",
                                                                     "subject_mixing")},
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
