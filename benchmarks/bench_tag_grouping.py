"""Time the Danbooru tag filters and the outfit grouping (RetriBooru appendix A.1) on synthetic metadata.

Synthetic posts look like Danbooru 2019 posts: 20-40 general tags each from a Zipf-distributed vocabulary of
30,000 tags (made-up words of Danbooru's shape, ~10 characters, with sameid's clothing tags and the unwanted
tags among them; 6% of posts get an unwanted tag), one character (3% none, 5% two), one artist, Danbooru
ratings (8% questionable/explicit), an md5, and a VQA answer drawn from colour pairs (5% unusable answers). Posts come from (character, artist) pairs with lognormal sizes, so groups form.

Timed, for each size (default 100,000 and 1,000,000 rows):

(a) ``in_memory``: :func:`sameid.dataset.filters.apply_tag_filters` + :func:`sameid.dataset.outfits.group_by_outfit`
    on a pyarrow table already in memory (the source table's columns plus ``answer``);
(b) ``end_to_end``: :func:`sameid.sources.danbooru.read_danbooru` of the JSONL file, then (a); the answers
    are attached to the kept rows by id, as the build does after the VQA stage. The time of each step of the
    fastest run is reported (``end_to_end_steps``). Captions are not part of (b): the reader leaves them null and
    the build makes them for the kept rows only (in ``resolve_danbooru_images``); the time that takes,
    :func:`sameid.sources.danbooru.danbooru_captions` on the kept rows, is reported apart
    (``captions_of_kept_s``).

Baseline, same run: the same filter + group written the naive way, as the paper's Algorithm 1 reads (a loop over
row dicts, sets of tags, a dict of (character, artist) groups, answers compared pairwise within each group) on
``--naive-rows`` rows of the in-memory table; its time for the larger sizes is extrapolated linearly from that
and labelled ``extrapolated`` (the pairwise step grows faster than linearly, so the extrapolation flatters it).

    python benchmarks/bench_tag_grouping.py --json bench_tag_grouping.json
    python benchmarks/bench_tag_grouping.py --sizes 20000 --naive-rows 20000   # quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sameid.dataset.filters import DEFAULT_UNWANTED_TAGS, FilterConfig, apply_tag_filters, load_vocabulary
from sameid.dataset.outfits import group_by_outfit, normalize_answer
from sameid.sources.danbooru import danbooru_captions, read_danbooru

COLOURS = ["black", "white", "red", "blue", "pink", "purple", "green", "yellow", "orange", "brown", "grey",
           "light blue", "navy"]
BAD_ANSWERS = ["black", "i don't know", "black shirt and white skirt", "black, white and red"]


def _filler_tags(count: int, rng: np.random.Generator) -> list[str]:
    """Distinct made-up tags shaped like Danbooru's (lowercase words joined by underscores, ~10 characters)."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    tags: dict[str, None] = {}
    while len(tags) < count:
        words = [
            "".join(letters[rng.integers(0, 26, int(rng.integers(3, 8)))]) for _ in range(int(rng.integers(1, 3)))
        ]
        tags["_".join(words)] = None
    return list(tags)


def synthetic_posts(rows: int, seed: int = 0) -> dict[str, np.ndarray | pa.Array]:
    """Columns of ``rows`` synthetic Danbooru posts (see the module docstring)."""
    rng = np.random.default_rng(seed)
    clothing = list(load_vocabulary())
    unwanted = sorted(DEFAULT_UNWANTED_TAGS)
    filler = _filler_tags(30_000 - len(clothing) - len(unwanted), rng)
    # A few clothing tags are as frequent as on Danbooru (long_sleeves, skirt, shirt are top-50 tags there);
    # the rest of the vocabulary is spread over the frequency ranks.
    common = ["long_sleeves", "skirt", "shirt", "dress", "jacket", "short_sleeves", "school_uniform",
              "pleated_skirt", "serafuku", "white_shirt"]
    rare = [tag for tag in clothing if tag not in common] + unwanted
    vocabulary = np.array(filler[:5] + common + filler[5:], dtype=object)
    vocabulary = np.insert(vocabulary, np.sort(rng.integers(50, len(vocabulary), len(rare))),
                           np.array(rare, dtype=object))
    weights = 1.0 / np.arange(1, len(vocabulary) + 1) ** 0.9
    weights /= weights.sum()
    counts = rng.integers(20, 41, size=rows)
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    tag_index = rng.choice(len(vocabulary), size=int(offsets[-1]), p=weights)
    # ~6% of posts get one unwanted tag, replacing their first tag.
    with_unwanted = np.flatnonzero(rng.random(rows) < 0.06)
    tag_values = vocabulary[tag_index]
    tag_values[offsets[with_unwanted]] = np.array(unwanted, dtype=object)[rng.integers(0, len(unwanted),
                                                                                      len(with_unwanted))]
    tags = pa.ListArray.from_arrays(pa.array(offsets), pa.array(tag_values, pa.string()))

    # (character, artist) pairs of 12 posts on average, lognormal sizes (the largest a few hundred posts).
    pairs = max(rows // 12, 1)
    pair_weights = rng.lognormal(0.0, 1.0, size=pairs)
    pair = rng.choice(pairs, size=rows, p=pair_weights / pair_weights.sum())
    character_of_pair = rng.integers(0, max(pairs // 3, 1), size=pairs)
    characters = np.array([f"character_{c:06d}_(series)" for c in character_of_pair[pair]], dtype=object)
    artists = np.array([f"artist_{p:07d}" for p in pair], dtype=object)
    character_count = rng.choice([0, 1, 2], size=rows, p=[0.03, 0.92, 0.05])
    second = np.array([f"character_{c:06d}_(series)" for c in rng.integers(0, 1000, rows)], dtype=object)

    ratings = rng.choice(np.array(["g", "s", "q", "e"], dtype=object), size=rows, p=[0.62, 0.30, 0.05, 0.03])
    first = rng.integers(0, len(COLOURS), size=rows)
    other = (first + rng.integers(1, 4, size=rows)) % len(COLOURS)
    answers = np.array([f"{COLOURS[a]} and {COLOURS[b]}" for a, b in zip(first, other, strict=True)], dtype=object)
    bad = rng.random(rows) < 0.05
    answers[bad] = np.array(BAD_ANSWERS, dtype=object)[rng.integers(0, len(BAD_ANSWERS), int(bad.sum()))]
    md5 = np.array([f"{a:016x}{b:016x}" for a, b in rng.integers(0, 2**63, (rows, 2))], dtype=object)
    return {"tags": tags, "characters": characters, "second": second, "character_count": character_count,
            "artists": artists, "ratings": ratings, "answers": answers, "md5": md5,
            "width": rng.integers(300, 2000, rows), "height": rng.integers(300, 2000, rows)}


def character_lists(posts: dict) -> pa.ListArray:
    count = posts["character_count"]
    offsets = np.zeros(len(count) + 1, dtype=np.int32)
    np.cumsum(count, out=offsets[1:])
    values = np.empty(int(offsets[-1]), dtype=object)
    values[offsets[:-1][count >= 1]] = posts["characters"][count >= 1]
    values[offsets[:-1][count == 2] + 1] = posts["second"][count == 2]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.string()))


def in_memory_table(posts: dict) -> pa.Table:
    rows = len(posts["answers"])
    artists = pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32)),
                                       pa.array(posts["artists"], pa.string()))
    return pa.table({
        "id": pa.array([str(i) for i in range(rows)]), "tags": posts["tags"], "characters": character_lists(posts),
        "artists": artists, "rating": pa.array(posts["ratings"], pa.string()),
        "answer": pa.array(posts["answers"], pa.string()),
    })


def write_jsonl(posts: dict, path: Path) -> int:
    """Danbooru JSON lines; the tag strings hold no quotes or backslashes, so no escaping is needed."""
    tags = pc.binary_join(posts["tags"], " ").to_pylist()
    characters = pc.binary_join(character_lists(posts), " ").to_pylist()
    with path.open("w", encoding="utf-8") as handle:
        for i, (general, character, artist, rating, md5, width, height) in enumerate(zip(
                tags, characters, posts["artists"], posts["ratings"], posts["md5"], posts["width"], posts["height"],
                strict=True)):
            handle.write(
                f'{{"id":{i},"md5":"{md5}","file_ext":"jpg","rating":"{rating}","image_width":{width},'
                f'"image_height":{height},"tag_string_general":"{general}","tag_string_character":"{character}",'
                f'"tag_string_artist":"{artist}","score":{i % 97},"source":"https://example.org/{i}"}}\n'
            )
    return path.stat().st_size


def filter_and_group(table: pa.Table, config: FilterConfig) -> tuple[pa.Table, pa.Table]:
    kept, rejected = apply_tag_filters(table, config)
    return group_by_outfit(kept), rejected


def end_to_end(path: Path, answers: pa.Array, config: FilterConfig) -> tuple[pa.Table, pa.Table, dict]:
    """(grouped, rejected, {step: [wall seconds, CPU seconds]}) for read, filters and grouping."""
    steps: dict[str, list[float]] = {}

    def step(name, function, *args):
        before, start = os.times(), time.perf_counter()
        result = function(*args)
        after = os.times()
        steps[name] = [round(time.perf_counter() - start, 3),
                       round((after.user - before.user) + (after.system - before.system), 3)]
        return result

    source = step("read", read_danbooru, path)
    kept, rejected = step("filters", apply_tag_filters, source.table, config)
    kept = kept.append_column("answer", answers.take(kept.column("id").cast(pa.int64())))
    return step("group", group_by_outfit, kept), rejected, steps


def naive_filter_and_group(rows: list[dict], unwanted: set, clothing: set) -> dict[str, list[str]]:
    """The paper's pseudo-code, literally: filter row by row, then compare answers pairwise per group."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        tags = set(row["tags"])
        if row["rating"] not in ("g", "s"):
            continue
        if tags & unwanted:
            continue
        if len(row["characters"]) != 1:
            continue
        if not tags & clothing:
            continue
        groups.setdefault((row["characters"][0], row["artists"][0]), []).append(row)
    similar: dict[str, list[str]] = {}
    for members in groups.values():
        answers = [normalize_answer(m["answer"]) for m in members]
        for i, row in enumerate(members):
            if answers[i] is None:
                continue
            similar[row["id"]] = [members[j]["id"] for j in range(len(members))
                                  if j != i and answers[j] == answers[i]]
    return similar


def timed(function, *args, repeat: int = 1):
    """(best wall seconds, CPU seconds of that run (user + system, all threads), result of that run)."""
    best, cpu, best_result = float("inf"), float("nan"), None
    for _ in range(repeat):
        before, start = os.times(), time.perf_counter()
        result = function(*args)
        seconds, after = time.perf_counter() - start, os.times()
        if seconds < best:
            best, cpu, best_result = seconds, (after.user - before.user) + (after.system - before.system), result
        del result
    return best, cpu, best_result


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine have used since boot (Linux), to tell how busy it was with
    other work during a timing (the machine may be shared)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            ticks = [int(value) for value in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def others_cpu_seconds(function, *args, **kwargs):
    """(result of function, CPU seconds other processes used while it ran, or None when unknown)."""
    busy_before, own_before = busy_cpu_seconds(), os.times()
    result = function(*args, **kwargs)
    busy_after, own_after = busy_cpu_seconds(), os.times()
    if busy_before is None or busy_after is None:
        return result, None
    own = (own_after.user - own_before.user) + (own_after.system - own_before.system)
    return result, round(max(busy_after - busy_before - own, 0.0), 2)


def machine() -> dict:
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "pyarrow": pa.__version__,
        "numpy": np.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="rows per run")
    parser.add_argument("--naive-rows", type=int, default=100_000, help="rows the naive baseline runs on")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs for (a) and (b)")
    parser.add_argument("--target", type=float, default=300_000, help="rows/s target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)

    config = FilterConfig()
    normalize_answer("warm up")  # imports the colour vocabulary (OpenCV) outside the timings
    results: dict = {"machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
                     "load_average_at_start": list(os.getloadavg()),
                     "target_rows_per_s": args.target, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench_tag_grouping_") as folder:
        for rows in sorted(args.sizes):
            posts = synthetic_posts(rows, args.seed)
            table = in_memory_table(posts)
            path = Path(folder) / f"posts_{rows}.jsonl"
            size = write_jsonl(posts, path)
            (seconds_a, cpu_a, (grouped, rejected)), others_a = others_cpu_seconds(
                timed, filter_and_group, table, config, repeat=args.repeat)
            (seconds_b, cpu_b, (grouped_b, _, steps_b)), others_b = others_cpu_seconds(
                timed, end_to_end, path, table.column("answer").combine_chunks(), config, repeat=args.repeat)
            seconds_c, cpu_c, _ = timed(danbooru_captions, grouped_b.column("tags"))
            assert grouped.column("identity").equals(grouped_b.column("identity")), "(a) and (b) disagree"
            similar = pc.list_value_length(grouped.column("similar"))
            entry = {
                "rows": rows, "jsonl_mib": round(size / 2**20, 1),
                "kept_after_filters": grouped.num_rows, "rejected_by_filters": rejected.num_rows,
                "rows_with_siblings": int(pc.sum(pc.greater(similar, 0)).as_py() or 0),
                "identities": int(pc.count_distinct(grouped.column("identity")).as_py()),
                "in_memory_s": round(seconds_a, 3), "in_memory_cpu_s": round(cpu_a, 3),
                "in_memory_rows_per_s": round(rows / seconds_a),
                "end_to_end_s": round(seconds_b, 3), "end_to_end_cpu_s": round(cpu_b, 3),
                "end_to_end_rows_per_s": round(rows / seconds_b),
                "end_to_end_steps": {name: {"s": wall, "cpu_s": cpu} for name, (wall, cpu) in steps_b.items()},
                "captions_of_kept_s": round(seconds_c, 3), "captions_of_kept_cpu_s": round(cpu_c, 3),
                # CPU seconds other processes took during all repeats of (a) and of (b): non-zero figures mean
                # the timings shared the cores.
                "other_processes_cpu_s": {"in_memory": others_a, "end_to_end": others_b},
            }
            results["sizes"][str(rows)] = entry
            print(f"{rows:>9,} rows ({entry['jsonl_mib']} MiB JSONL): (a) in-memory {seconds_a:.2f} s = "
                  f"{entry['in_memory_rows_per_s']:,} rows/s; (b) end-to-end {seconds_b:.2f} s = "
                  f"{entry['end_to_end_rows_per_s']:,} rows/s ("
                  + ", ".join(f"{name} {wall:.2f} s" for name, (wall, _) in steps_b.items())
                  + f"); kept {grouped.num_rows:,}, with siblings {entry['rows_with_siblings']:,}", flush=True)
            if rows == min(args.sizes):
                naive_rows = min(args.naive_rows, rows)
                dicts = table.slice(0, naive_rows).to_pylist()
                seconds_n, cpu_n, similar_naive = timed(naive_filter_and_group, dicts, set(config.unwanted_tags),
                                                 set(config.clothing_vocabulary))
                fast = grouped.filter(pc.less(grouped.column("id").cast(pa.int64()), naive_rows)) \
                    if naive_rows == rows else None
                if fast is not None:
                    expected = {r["id"]: r["similar"] for r in fast.select(["id", "similar", "identity"]).to_pylist()
                                if r["identity"] is not None}
                    assert expected == similar_naive, "naive baseline and columnar grouping disagree"
                results["naive"] = {"rows": naive_rows, "seconds": round(seconds_n, 3), "cpu_s": round(cpu_n, 3),
                                    "rows_per_s": round(naive_rows / seconds_n),
                                    "agrees_with_columnar": fast is not None}
                print(f"naive per-row baseline on {naive_rows:,} rows: {seconds_n:.2f} s = "
                      f"{naive_rows / seconds_n:,.0f} rows/s", flush=True)
            del posts, table, grouped, grouped_b, rejected
            path.unlink()

    sizes = sorted(args.sizes)
    if len(sizes) >= 2:
        small, large = results["sizes"][str(sizes[0])], results["sizes"][str(sizes[-1])]
        results["scaling"] = {
            "rows_ratio": sizes[-1] / sizes[0],
            "in_memory_time_ratio": round(large["in_memory_s"] / small["in_memory_s"], 2),
            "end_to_end_time_ratio": round(large["end_to_end_s"] / small["end_to_end_s"], 2),
            "target_time_ratio": 1.1 * sizes[-1] / sizes[0],
        }
        print(f"time({sizes[-1]:,}) / time({sizes[0]:,}): (a) {results['scaling']['in_memory_time_ratio']}, "
              f"(b) {results['scaling']['end_to_end_time_ratio']} (target <= {1.1 * sizes[-1] / sizes[0]:g})")
    naive = results.get("naive")
    if naive:
        for key, entry in results["sizes"].items():
            estimate = naive["seconds"] * entry["rows"] / naive["rows"]
            entry["naive_s"] = round(estimate, 3)
            entry["naive_s_is"] = "measured" if entry["rows"] == naive["rows"] else "extrapolated (linear)"
            entry["speedup_in_memory_vs_naive"] = round(estimate / entry["in_memory_s"], 1)
            print(f"{int(key):>9,} rows: naive {estimate:.2f} s ({entry['naive_s_is']}), columnar (a) "
                  f"{entry['speedup_in_memory_vs_naive']}x faster")
    largest = results["sizes"][str(sizes[-1])]
    results["target_met"] = {"in_memory": largest["in_memory_rows_per_s"] >= args.target,
                             "end_to_end": largest["end_to_end_rows_per_s"] >= args.target}
    results["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                    / (1024**3 if sys.platform == "darwin" else 1024**2), 2)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
