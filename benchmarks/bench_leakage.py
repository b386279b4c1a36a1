"""Time the identity-leakage search (``sameid.synth.leakage``) against brute-force NumPy, same data, same run.

``--synthetic`` query identities against ``--real`` gallery identities, ``--dim``-d float32 unit embeddings
(dlib: 128). The gallery is random unit vectors (uniform on the sphere: the hardest case for a list index, no
cluster structure to exploit); a fraction ``--planted`` of the synthetic identities are copies of real ones
(cosine distance ~0.005-0.06 from the original), the rest are random. Arms:

- **numpy**: brute force, chunked float32 matrix products (``queries[chunk] @ real.T``) and ``argmax``;
- **flat**: ``faiss.IndexFlatIP`` (exact), via ``sameid.synth.leakage.build_index`` / ``search``;
- **ivf**: ``faiss.IndexIVFFlat`` (``nprobe`` lists), index build timed separately from the search.

"Same answers": for each arm, the set of synthetic identities within ``--threshold`` of a real one, and their
nearest real identity, compared with numpy's; plus the nearest-neighbour agreement over all queries.

    python benchmarks/bench_leakage.py --synthetic 100000 --real 1000000 --json out.json
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


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024**3 if sys.platform == "darwin" else 1024**2)


def make_data(n_synthetic: int, n_real: int, dim: int, planted: float, seed: int):
    rng = np.random.default_rng(seed)
    real = np.empty((n_real, dim), dtype=np.float32)
    for start in range(0, n_real, 100_000):  # generated in chunks: float64 normals of 1M x 128 would be 1 GiB
        block = rng.standard_normal((min(100_000, n_real - start), dim), dtype=np.float32)
        real[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    n_planted = int(round(planted * n_synthetic))
    source = rng.choice(n_real, n_planted, replace=False)
    noise = rng.uniform(0.1, 0.35, size=(n_planted, 1)).astype(np.float32)  # cosine distance ~ noise**2 / 2
    copies = real[source] + noise * rng.standard_normal((n_planted, dim), dtype=np.float32) / np.sqrt(dim)
    others = rng.standard_normal((n_synthetic - n_planted, dim), dtype=np.float32)
    synthetic = np.concatenate([copies, others])
    synthetic /= np.linalg.norm(synthetic, axis=1, keepdims=True)
    return np.ascontiguousarray(synthetic), real, source


def numpy_nearest(queries: np.ndarray, real: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    best = np.empty(len(queries), dtype=np.int64)
    sim = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        block = queries[start:start + chunk] @ real.T
        best[start:start + len(block)] = block.argmax(axis=1)
        sim[start:start + len(block)] = block[np.arange(len(block)), best[start:start + len(block)]]
    return 1.0 - sim.astype(np.float64), best


def main(argv=None) -> dict:
    import faiss

    from sameid.synth.leakage import DEFAULT_THRESHOLD, build_index, search

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", type=int, default=100_000)
    parser.add_argument("--real", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--planted", type=float, default=0.01, help="fraction of synthetic identities that copy a real one")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--nprobe", default="32,128", help="ivf lists searched per query; several: 32,128 (one index)")
    parser.add_argument("--chunk", type=int, default=1024, help="numpy query rows per matrix product")
    parser.add_argument("--skip-flat", action="store_true")
    parser.add_argument("--numpy-cache", default=None,
                        help="an .npz of numpy's answers for these arguments: read if present, else written (for "
                             "trying nprobe values; a reported run computes numpy in the same run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    synthetic, real, source = make_data(args.synthetic, args.real, args.dim, args.planted, args.seed)
    result: dict = {
        "benchmark": "identity-leakage search vs brute-force numpy",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "faiss": faiss.__version__, "faiss_omp_threads": faiss.omp_get_max_threads(),
                    "load_average_at_start": os.getloadavg()},
        "command": " ".join([os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])]),
        "n_synthetic": args.synthetic, "n_real": args.real, "dim": args.dim, "planted": len(source),
        "threshold": args.threshold,
    }
    nprobes = [int(v) for v in str(args.nprobe).split(",")]

    if args.numpy_cache and os.path.exists(args.numpy_cache):
        with np.load(args.numpy_cache) as cached:
            np_dist, np_idx = cached["distance"], cached["index"]
            result["numpy_seconds"] = float(cached["seconds"])
        result["numpy_from_cache"] = args.numpy_cache
    else:
        start = time.perf_counter()
        np_dist, np_idx = numpy_nearest(synthetic, real, args.chunk)
        result["numpy_seconds"] = round(time.perf_counter() - start, 2)
        if args.numpy_cache:
            np.savez(args.numpy_cache, distance=np_dist, index=np_idx, seconds=result["numpy_seconds"])
    leak = np_dist <= args.threshold
    result["numpy_leaks"] = int(leak.sum())
    result["planted_found_by_numpy"] = int((np_idx[: len(source)] == source).sum())
    print(f"numpy   {result['numpy_seconds']:8.2f} s  leaks={leak.sum()}", flush=True)

    arms = ([] if args.skip_flat else [("flat", None)]) + [("ivf", nprobe) for nprobe in nprobes]
    index = None
    for arm, nprobe in arms:
        start = time.perf_counter()
        if arm == "flat" or index is None or not hasattr(index, "nprobe"):
            index = build_index(real, arm, nprobe=nprobe or 1, seed=args.seed)
        built = time.perf_counter() - start
        if nprobe:
            index.nprobe = nprobe
        start = time.perf_counter()
        dist, idx = search(index, synthetic, 1)
        searched = time.perf_counter() - start
        dist, idx = dist[:, 0], idx[:, 0]
        arm_leak = dist <= args.threshold
        same_set = bool(np.array_equal(arm_leak, leak))
        same_nearest_of_leaks = bool(np.array_equal(idx[leak], np_idx[leak]))
        name = arm if nprobe is None else f"ivf_nprobe{nprobe}"
        result[name] = {
            "build_seconds": round(built, 2), "search_seconds": round(searched, 2),
            "speedup_search": round(result["numpy_seconds"] / searched, 1),
            "leaks": int(arm_leak.sum()), "planted_leaks_missed": int((leak & ~arm_leak).sum()),
            "false_leaks": int((arm_leak & ~leak).sum()), "same_removed_set": same_set,
            "same_nearest_for_removed": same_nearest_of_leaks,
            "nearest_agreement_all_queries": round(float((idx == np_idx).mean()), 6),
        }
        if nprobe:
            result[name]["nlist"] = int(index.nlist)
        if arm == "flat":
            index = None
        print(f"{name:16s} build {built:7.2f} s  search {searched:7.2f} s  x{result[name]['speedup_search']}  "
              f"leaks {arm_leak.sum()} (missed {result[name]['planted_leaks_missed']})  same removed set={same_set}  "
              f"same nearest={same_nearest_of_leaks}  agreement={result[name]['nearest_agreement_all_queries']}",
              flush=True)
    result["peak_rss_gib"] = round(peak_rss_gib(), 2)
    result["load_average_at_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.json:
        write_json_atomic(args.json, result, sort_keys=False)
    return result


if __name__ == "__main__":
    main()
