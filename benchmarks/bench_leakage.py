"""Time the identity-leakage search (``sameid.synth.leakage``) against brute force, same data, same run.

``--synthetic`` query identities against ``--real`` gallery identities, ``--dim``-d float32 unit embeddings
(dlib: 128), on two kinds of data (``--data``):

- **uniform**: random unit vectors, uniform on the sphere: the hardest case for any index (no structure to
  exploit);
- **faces**: shaped like face embeddings (:func:`make_faces`: a common offset, 256 groups, identities spread along
  a decaying spectrum, effective dimension ~32 of 128).

A fraction ``--planted`` of the synthetic identities are copies of real ones (cosine distance ~0.005-0.06 from the
original), the rest are new identities. The reference (``--reference``, per data) is **numpy** brute force
(chunked float32 matrix products ``queries[chunk] @ real.T`` and ``argmax``, timed) or **flat**
(``faiss.IndexFlatIP``, exact, through ``sameid.synth.leakage.build_index`` / ``search``). Arms (``--arms``):
``flat``; ``ivf`` (``faiss.IndexIVFFlat``, ~2 sqrt(m) lists, at each ``--nprobe``); ``ivf:NLIST[:NPROBE]``. An
index build is timed apart from its search (a saved index is built once).

"Same answers": the set of synthetic identities within ``--threshold`` of a real one, and their nearest real
identity, compared with the reference's; plus the nearest-neighbour agreement over all queries.

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


def make_faces(n_synthetic: int, n_real: int, dim: int, planted: float, seed: int, tau: float = 16.0,
               groups: int = 256, offset: float = 0.6):
    """Identity embeddings shaped like face embeddings rather than uniform noise: a common offset (embeddings of
    faces share a direction), 256 groups (think age, sex, ethnicity, pose of the reference images) and identities
    spread around them along a decaying spectrum (variance ~ exp(-k / 16) on a random orthonormal basis: a
    participation ratio, i.e. effective dimension, of ~32 of 128). Random pairs of identities are at cosine distance
    ~0.72 (median), 0.29 at the 0.1% quantile; planted copies as in :func:`make_data`."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].T.astype(np.float32)
    spectrum = np.exp(-np.arange(dim) / tau)
    scale = (0.7 * np.sqrt(spectrum / spectrum.sum())).astype(np.float32)
    mean = rng.standard_normal(dim).astype(np.float32)
    mean *= offset / np.linalg.norm(mean)
    centres = rng.standard_normal((groups, dim), dtype=np.float32) * scale

    def identities(n: int) -> np.ndarray:
        out = np.empty((n, dim), dtype=np.float32)
        for start in range(0, n, 100_000):
            k = min(100_000, n - start)
            z = centres[rng.integers(groups, size=k)] + rng.standard_normal((k, dim), dtype=np.float32) * scale
            x = z @ basis + mean
            out[start:start + k] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    real = identities(n_real)
    n_planted = int(round(planted * n_synthetic))
    source = rng.choice(n_real, n_planted, replace=False)
    noise = rng.uniform(0.1, 0.35, size=(n_planted, 1)).astype(np.float32)
    copies = real[source] + noise * rng.standard_normal((n_planted, dim), dtype=np.float32) / np.sqrt(dim)
    synthetic = np.concatenate([copies, identities(n_synthetic - n_planted)])
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
    parser.add_argument("--data", default="uniform,faces", help="uniform (random on the sphere) and/or faces "
                                                                "(make_faces: structured, lower-dimensional)")
    parser.add_argument("--arms", default="flat,ivf", help="flat and/or ivf (default lists, at each --nprobe) or "
                                                          "ivf:NLIST (NLIST lists: each --nprobe scaled by NLIST / 2,000) or "
                                                          "ivf:NLIST:NPROBE")
    parser.add_argument("--reference", default="numpy,flat",
                        help="per --data entry, what the answers are compared with: numpy (brute force, timed) or "
                             "flat (faiss IndexFlatIP, exact, and then itself no arm)")
    parser.add_argument("--nprobe", default="32,128", help="ivf lists searched per query; several: 32,128 (one index)")
    parser.add_argument("--chunk", type=int, default=1024, help="numpy query rows per matrix product")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    datas = args.data.split(",")
    references = args.reference.split(",")
    references = (references * len(datas))[:len(datas)] if len(references) == 1 else references
    if len(references) != len(datas) or not set(references) <= {"numpy", "flat"} or not set(datas) <= {"uniform", "faces"}:
        parser.error("--reference: numpy or flat, one for all --data entries or one per entry")
    nprobes = [int(v) for v in str(args.nprobe).split(",")]

    result: dict = {
        "benchmark": "identity-leakage search vs brute-force numpy",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "faiss": faiss.__version__, "faiss_omp_threads": faiss.omp_get_max_threads(),
                    "load_average_at_start": os.getloadavg()},
        "command": " ".join([os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])]),
        "n_synthetic": args.synthetic, "n_real": args.real, "dim": args.dim, "threshold": args.threshold,
    }
    for data, reference in zip(datas, references, strict=True):
        make = make_data if data == "uniform" else make_faces
        synthetic, real, source = make(args.synthetic, args.real, args.dim, args.planted, args.seed)
        out: dict = {"planted": len(source), "reference": reference}
        result[data] = out
        start = time.perf_counter()
        if reference == "numpy":
            ref_dist, ref_idx = numpy_nearest(synthetic, real, args.chunk)
        else:
            index = build_index(real, "flat")
            ref_dist, ref_idx = (a[:, 0] for a in search(index, synthetic, 1))
        out[f"{reference}_seconds"] = round(time.perf_counter() - start, 2)
        leak = ref_dist <= args.threshold
        out["leaks"] = int(leak.sum())
        out["planted_found"] = int((ref_idx[: len(source)] == source).sum())
        out["natural_leaks"] = int(leak[len(source):].sum())
        print(f"[{data}] {reference} (reference) {out[f'{reference}_seconds']:8.2f} s  leaks={leak.sum()} "
              f"(planted found {out['planted_found']}/{len(source)})", flush=True)
        arms = [a for a in args.arms.split(",") if not (a == "flat" and reference == "flat")]
        for arm in arms:
            kind, _, rest = arm.partition(":")
            lists, _, probes = rest.partition(":")
            nlist = int(lists) if lists else None
            scale = nlist / 2000 if nlist else 1
            arm_nprobes = [int(probes)] if probes else [max(1, round(v * scale)) for v in nprobes]
            for nprobe in (arm_nprobes if kind == "ivf" else [None]):
                start = time.perf_counter()
                if kind != "ivf" or nprobe == arm_nprobes[0]:
                    index = build_index(real, kind, nprobe=nprobe or 1, seed=args.seed, nlist=nlist)
                built = time.perf_counter() - start
                if nprobe:
                    index.nprobe = nprobe
                start = time.perf_counter()
                dist, idx = (a[:, 0] for a in search(index, synthetic, 1))
                searched = time.perf_counter() - start
                arm_leak = dist <= args.threshold
                name = kind if nprobe is None else f"ivf{'_nlist' + lists if lists else ''}_nprobe{nprobe}"
                row = out[name] = {
                    "build_seconds": round(built, 2), "search_seconds": round(searched, 2),
                    f"speedup_search_vs_{reference}": round(out[f"{reference}_seconds"] / searched, 1),
                    "leaks": int(arm_leak.sum()), "leaks_missed": int((leak & ~arm_leak).sum()),
                    "false_leaks": int((arm_leak & ~leak).sum()),
                    "same_removed_set": bool(np.array_equal(arm_leak, leak)),
                    "same_nearest_for_removed": bool(np.array_equal(idx[leak], ref_idx[leak])),
                    "nearest_agreement_all_queries": round(float((idx == ref_idx).mean()), 6),
                }
                if nprobe:
                    row["nlist"] = int(index.nlist)
                print(f"[{data}] {name:22s} build {built:7.2f} s  search {searched:7.2f} s  "
                      f"x{row[f'speedup_search_vs_{reference}']}  leaks {row['leaks']} (missed {row['leaks_missed']}, "
                      f"false {row['false_leaks']})  same removed set={row['same_removed_set']}  same nearest="
                      f"{row['same_nearest_for_removed']}  agreement={row['nearest_agreement_all_queries']}", flush=True)
        index = None
    result["peak_rss_gib"] = round(peak_rss_gib(), 2)
    result["load_average_at_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.json:
        write_json_atomic(args.json, result, sort_keys=False)
    return result


if __name__ == "__main__":
    main()
