"""Time sameid's per-folder cleaning of many identity folders against the public per-folder script's approach.

``--folders`` identity folders of ``--size`` unit ``--dim``-d embeddings each (dlib: 128): a main person (members
at cosine distance ~0.01-0.07 from each other, so folders need different eps), 0-20% faces of other people, and
in 10% of the folders a second person holding 30-45% of the folder (a mixed folder). Arms, same data, same run:

- **sameid**: ``sameid.dataset.cluster.clean_identity_folders`` on all folders at once (batched matrix products
  of each folder's faces, one DBSCAN per grid step over the block-diagonal graph of the undecided folders);
- **per-folder script**: for each folder, ``sklearn.cluster.DBSCAN(metric="cosine", algorithm="brute")`` up the
  same eps grid until the main cluster holds ``main_fraction`` of the folder (the approach of the public
  Hybrid Generative Fusion cleaning script: eps tuned per folder so the main cluster holds 50-80%).

Labels (per folder numbering), chosen eps and kept faces are compared for equality.

    python benchmarks/bench_folder_cleaning.py --folders 10000 --size 50 --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np

from sameid.atomic import write_json_atomic


def make_folders(n_folders: int, size: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n_folders):
        centre = rng.standard_normal(dim)
        spread = rng.uniform(0.1, 0.35)  # pairwise cosine distance ~ spread**2
        faces = centre / np.linalg.norm(centre) + spread * rng.standard_normal((size, dim)) / np.sqrt(dim)
        if rng.random() < 0.1:  # a mixed folder: a second person
            second = int(rng.uniform(0.3, 0.45) * size)
            other = rng.standard_normal(dim)
            faces[:second] = other / np.linalg.norm(other) + spread * rng.standard_normal((second, dim)) / np.sqrt(dim)
        strangers = int(rng.uniform(0, 0.2) * size)
        faces[size - strangers:] = rng.standard_normal((strangers, dim))
        parts.append(faces[rng.permutation(size)])
    embeddings = np.concatenate(parts)
    return embeddings, np.repeat(np.arange(n_folders), size)


def main(argv=None) -> dict:
    import sklearn
    from sklearn.cluster import DBSCAN

    from sameid.dataset.cluster import (
        CLEAN_EPS_GRID,
        CLEAN_MAIN_FRACTION,
        CLEAN_MAX_EPS,
        clean_identity_folders,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folders", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=50)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--baseline-folders", type=int, default=None, help="run the per-folder script on the first m folders only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    embeddings, folders = make_folders(args.folders, args.size, args.dim, args.seed)
    result: dict = {
        "benchmark": "clean_identity_folders vs per-folder sklearn DBSCAN up the eps grid",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "scikit_learn": sklearn.__version__,
                    "load_average_at_start": os.getloadavg()},
        "command": " ".join([os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])]),
        "folders": args.folders, "size": args.size, "dim": args.dim,
    }
    start = time.perf_counter()
    ours = clean_identity_folders(embeddings, folders)
    result["sameid_seconds"] = round(time.perf_counter() - start, 2)
    values, counts = np.unique(ours.eps, return_counts=True)
    result["eps_used"] = {f"{v:.3f}": int(c) for v, c in zip(values, counts)}
    result["faces_kept"] = int(ours.keep.sum())
    result["folders_reaching_fraction"] = int(ours.reached_fraction.sum())
    print(f"sameid        {result['sameid_seconds']:8.2f} s  kept {result['faces_kept']} of {len(folders)}", flush=True)

    m = args.folders if args.baseline_folders is None else min(args.baseline_folders, args.folders)
    grid = sorted({float(e) for e in CLEAN_EPS_GRID if e < CLEAN_MAX_EPS} | {CLEAN_MAX_EPS})
    labels_equal = eps_equal = keep_equal = 0
    start = time.perf_counter()
    for code in range(m):
        x = embeddings[code * args.size:(code + 1) * args.size]
        for step, eps in enumerate(grid):
            labels = DBSCAN(eps=eps, min_samples=2, metric="cosine", algorithm="brute").fit_predict(x)
            clustered = labels[labels >= 0]
            sizes = np.bincount(clustered) if clustered.size else np.zeros(1, dtype=np.int64)
            if sizes.max() >= CLEAN_MAIN_FRACTION * len(x) or step == len(grid) - 1:
                break
        keep = labels == int(np.argmax(sizes)) if clustered.size else np.zeros(len(x), dtype=bool)
        rows = slice(code * args.size, (code + 1) * args.size)
        labels_equal += bool(np.array_equal(labels, ours.labels[rows]))
        eps_equal += bool(np.isclose(eps, ours.eps[code]))
        keep_equal += bool(np.array_equal(keep, ours.keep[rows]))
    baseline = time.perf_counter() - start
    result["baseline_folders"] = m
    result["baseline_seconds"] = round(baseline, 2)
    result["baseline_seconds_extrapolated"] = round(baseline * args.folders / m, 2)
    result["speedup"] = round(result["baseline_seconds_extrapolated"] / result["sameid_seconds"], 1)
    result["same_labels_folders"] = labels_equal
    result["same_eps_folders"] = eps_equal
    result["same_kept_faces_folders"] = keep_equal
    result["load_average_at_end"] = os.getloadavg()
    print(f"per-folder    {baseline:8.2f} s on {m} folders  x{result['speedup']}  same labels {labels_equal}/{m}  "
          f"same eps {eps_equal}/{m}  same kept {keep_equal}/{m}", flush=True)
    print(json.dumps(result, indent=2))
    if args.json:
        write_json_atomic(args.json, result, sort_keys=False)
    return result


if __name__ == "__main__":
    main()
