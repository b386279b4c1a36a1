"""Time ``sameid.dataset.cluster.dbscan_cosine`` against scikit-learn's brute-force cosine DBSCAN, same data, same run.

The data are ``--n`` random unit vectors of ``--dim`` dimensions (face-embedding sized), of which
``--planted-fraction`` are planted in tight clusters (mean size ``--cluster-size``, within-cluster cosine distance
about ``--spread``**2, scaled by 0.6-1.4 per cluster), so the result has clusters, border points and noise. Both
implementations get the same float64 array; labels are compared with the adjusted Rand index, the noise sets, and
exact equality (``dbscan_cosine`` numbers clusters as sklearn does).

    python benchmarks/bench_face_clustering.py --n 100000 --json bench.json
    python benchmarks/bench_face_clustering.py --quick

``--sklearn-n`` runs sklearn (and a second ``dbscan_cosine`` for the comparison) on the first m points only, for
when sklearn cannot finish on all n (time or memory); the JSON says which n each time is for.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import time

import numpy as np

from sameid.atomic import write_json_atomic


def planted_embeddings(
    n: int, dim: int, planted_fraction: float, cluster_size: int, spread: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors (n, dim) float64, planted cluster id per row, -1 for background), rows shuffled."""
    rng = np.random.default_rng(seed)
    n_planted = int(round(planted_fraction * n))
    sizes = []
    while sum(sizes) < n_planted:
        sizes.append(int(rng.integers(2, 2 * cluster_size - 1)) if cluster_size > 2 else 2)
    sizes[-1] -= sum(sizes) - n_planted
    if sizes and sizes[-1] < 2:
        sizes.pop()
    n_planted = sum(sizes)
    centres = rng.normal(size=(len(sizes), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    planted_id = np.repeat(np.arange(len(sizes)), sizes)
    # member = centre + s * (random unit direction): pairwise cosine distance of two members ~ s**2, with s drawn
    # per cluster in [0.6, 1.4] * spread, so some clusters straddle eps (border points, split clusters, noise)
    cluster_spread = spread * rng.uniform(0.6, 1.4, size=len(sizes))
    offsets = rng.normal(size=(n_planted, dim)) / np.sqrt(dim)
    members = centres[planted_id] + cluster_spread[planted_id, None] * offsets
    background = rng.normal(size=(n - n_planted, dim))
    points = np.concatenate([members, background])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    truth = np.concatenate([planted_id, np.full(n - n_planted, -1)])
    order = rng.permutation(n)
    return points[order], truth[order]


def peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 1024**3 if sys.platform == "darwin" else 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def machine_info() -> dict:
    import faiss
    import scipy
    import sklearn

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit_learn": sklearn.__version__,
        "faiss": faiss.__version__,
        "faiss_omp_threads": faiss.omp_get_max_threads(),
    }
    try:
        with open("/proc/meminfo") as handle:
            total_kib = int(handle.readline().split()[1])
        info["memory_gib"] = round(total_kib / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def main(argv: list[str] | None = None) -> dict:
    from sklearn.cluster import DBSCAN
    from sklearn.metrics import adjusted_rand_score

    from sameid.dataset.cluster import DEFAULT_EPS, DEFAULT_MIN_SAMPLES, ENGINES, dbscan_cosine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of embeddings")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension (dlib: 128)")
    parser.add_argument("--eps", type=float, default=DEFAULT_EPS, help="DBSCAN eps, cosine distance")
    parser.add_argument("--min-samples", type=int, default=DEFAULT_MIN_SAMPLES)
    parser.add_argument("--planted-fraction", type=float, default=0.2, help="fraction of points in planted clusters")
    parser.add_argument("--cluster-size", type=int, default=10, help="mean planted cluster size")
    parser.add_argument("--spread", type=float, default=0.22, help="planted cluster spread (distance ~ spread**2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=ENGINES, default="blas", help="dbscan_cosine's neighbour search")
    parser.add_argument("--sklearn-n", type=int, default=None, help="run sklearn on the first m points only")
    parser.add_argument("--skip-sklearn", action="store_true", help="time dbscan_cosine only")
    parser.add_argument("--sklearn-n-jobs", type=int, default=None, help="DBSCAN(n_jobs=...) for sklearn")
    parser.add_argument("--quick", action="store_true", help="a small run (n=5000) to check the script")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 5000)

    points, truth = planted_embeddings(args.n, args.dim, args.planted_fraction, args.cluster_size, args.spread, args.seed)
    result: dict = {
        "benchmark": "dbscan_cosine vs sklearn DBSCAN(metric='cosine', algorithm='brute')",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "command": " ".join([os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])]),
        "n": args.n,
        "dim": args.dim,
        "eps": args.eps,
        "min_samples": args.min_samples,
        "engine": args.engine,
        "planted_points": int((truth >= 0).sum()),
        "planted_clusters": int(truth.max() + 1) if (truth >= 0).any() else 0,
    }

    start = time.perf_counter()
    ours = dbscan_cosine(points, args.eps, args.min_samples, engine=args.engine)
    result["ours_seconds"] = round(time.perf_counter() - start, 3)
    result["ours_peak_rss_gib"] = round(peak_rss_gib(), 2)
    result["ours_clusters"] = int(ours.max() + 1)
    result["ours_noise"] = int((ours == -1).sum())
    result["ari_vs_planted"] = float(adjusted_rand_score(truth, ours))
    print(
        f"dbscan_cosine[{args.engine}]  n={args.n:>7}  {result['ours_seconds']:8.2f} s  clusters={result['ours_clusters']}  "
        f"noise={result['ours_noise']}  ARI vs planted={result['ari_vs_planted']:.4f}",
        flush=True,
    )

    if not args.skip_sklearn:
        m = args.n if args.sklearn_n is None else min(args.sklearn_n, args.n)
        subset = points[:m]
        if m != args.n:
            start = time.perf_counter()
            ours_subset = dbscan_cosine(subset, args.eps, args.min_samples, engine=args.engine)
            result["ours_seconds_at_sklearn_n"] = round(time.perf_counter() - start, 3)
        else:
            ours_subset = ours
            result["ours_seconds_at_sklearn_n"] = result["ours_seconds"]
        result["sklearn_n"] = m
        model = DBSCAN(
            eps=args.eps, min_samples=args.min_samples, metric="cosine", algorithm="brute", n_jobs=args.sklearn_n_jobs
        )
        start = time.perf_counter()
        theirs = model.fit_predict(subset)
        result["sklearn_seconds"] = round(time.perf_counter() - start, 3)
        result["peak_rss_gib_after_sklearn"] = round(peak_rss_gib(), 2)
        result["sklearn_n_jobs"] = args.sklearn_n_jobs
        result["speedup_sklearn_over_ours"] = round(result["sklearn_seconds"] / result["ours_seconds_at_sklearn_n"], 2)
        result["ari_ours_vs_sklearn"] = float(adjusted_rand_score(theirs, ours_subset))
        result["same_noise"] = bool(np.array_equal(theirs == -1, ours_subset == -1))
        result["labels_identical"] = bool(np.array_equal(theirs, ours_subset))
        print(
            f"sklearn brute         n={m:>7}  {result['sklearn_seconds']:8.2f} s  ratio sklearn/ours="
            f"{result['speedup_sklearn_over_ours']:.1f}x  ARI={result['ari_ours_vs_sklearn']:.6f}  "
            f"same noise={result['same_noise']}  identical={result['labels_identical']}",
            flush=True,
        )

    print(json.dumps(result, indent=2))
    if args.json:
        write_json_atomic(args.json, result, sort_keys=False)
    return result


if __name__ == "__main__":
    main()
