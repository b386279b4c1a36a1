"""Statistics, plots and the dataset card of a built same-identity dataset.

The figures follow RetriBooru (RetriBooru, arXiv 2312.02521, section 3 and Figure 2): the
distribution of the number of same-identity samples per sample (every kept sample should have at least one
reference image in its ``similar`` entry), the top-15 characters and the top-30 most frequent cloth tags. To
these we add what a user of the dataset needs to trust it: how many inputs were rejected and why, how many rows
carry a head box or a mask, near-duplicate pairs and the VQA backends that produced the outfit grouping.

:func:`compute_stats` is pure and deterministic (no timestamps, ties broken by name) so that two builds of the
same inputs give byte-identical ``stats.json``. :func:`write_stats` writes ``stats.json``, the plots under
``plots/`` and the dataset card ``README.md`` (rendered from ``templates/dataset_card.md.j2``), each atomically.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import write_atomic, write_text_atomic
from ..errors import SchemaError
from ..records import MANIFEST_COLUMNS

STATS_FILENAME = "stats.json"
#: The dataset card is the dataset dir's README.md: Hugging Face ``datasets`` and the Hub read its YAML front matter
#: (``configs``: the data is ``manifest.parquet``), so ``datasets.load_dataset(<dataset dir>)`` gives the manifest.
CARD_FILENAME = "README.md"
PLOTS_DIRNAME = "plots"
CARD_TEMPLATE = "dataset_card.md.j2"

#: What each manifest column means, shown in the dataset card for the columns a manifest has.
COLUMN_DESCRIPTIONS: dict[str, str] = {
    "id": "Unique id of the image within the dataset.",
    "image": "Absolute path of the image file.",
    "identity": "Same-identity group key: images with the same value show the same subject.",
    "similar": "Ids of the other images with the same identity (never the image itself): "
    "the pool of reference images for this image as a target.",
    "caption": "Text prompt describing the image.",
    "tags": "Tags of the image.",
    "head_box": "Head bounding box x0, y0, x1, y1 in pixels, or null when none was found.",
    "mask": "Absolute path of the single-channel figure mask, or null.",
    "head_box_source": "`given` (from the source) or the head detector that found the head box.",
    "mask_source": "`given` (from the source) or the segmenter that made the mask.",
    "label_check": "How the identity was checked: `faces` (a given label cleaned by face clustering), "
    "`trusted` (a given label kept as given: no faces to check it), `clustered` (no label: face clusters), "
    "`tags` (character, artist and outfit answer).",
    "width": "Image width in pixels.",
    "height": "Image height in pixels.",
    "phash": "Perceptual hash (hex) of the image, used to find near-duplicates.",
    "character": "Character name given by the source.",
    "artist": "Artist name given by the source.",
    "outfit": "Outfit key: images of one character with the same outfit share it.",
    "cloth_tags": "The clothing tags of the image used to group outfits.",
    "near_duplicates": "Ids of images whose perceptual hash is within the near-duplicate distance.",
    "vqa_backend": "The VQA backend whose answers grouped this image's outfit.",
    "subjects": "Multi-subject rows: the identity of each subject, left to right (null on single-subject rows).",
    "subject_head_boxes": "Multi-subject rows: each subject's head box x0, y0, x1, y1 in pixels.",
    "subject_boxes": "Multi-subject rows: each subject's figure box x0, y0, x1, y1 in pixels.",
    "subject_masks": "Multi-subject rows: absolute path of each subject's figure mask.",
    "subject_references": "Multi-subject rows: per subject, the ids of single-subject images of its identity "
    "(never this image, never a near-duplicate of it).",
    "judge_verdict": "For an image of a doubtful identity folder (`sameid build --judge`): what the judge said "
    "(`same person`, `same person (a clustering outlier)`) or that it gave no verdict and the clustering decided.",
    "judge_reason": "The judge's reason for its verdict on the image's folder, or why it gave none.",
}

# Hugging Face `size_categories` buckets, upper bounds exclusive.
_SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)


# ----------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------


def _as_list(value: Any) -> list:
    """A list cell as a Python list: parquet gives numpy arrays, hand-made frames lists, missing cells None/NaN."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, float) and math.isnan(value):
        return []
    if isinstance(value, str):
        # A bare string in a list column is one item, not a sequence of characters.
        return [value]
    try:
        return list(value)
    except TypeError:
        return []


def _present_str(value: Any) -> str | None:
    """A string cell, or None when missing (None, NaN, pandas NA) or blank."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = str(value).strip()
    return text or None


def _has_head_box(value: Any) -> bool:
    box = _as_list(value)
    if len(box) != 4:
        return False
    try:
        return all(math.isfinite(float(v)) for v in box)
    except (TypeError, ValueError):
        return False


def _summary(values: list[int]) -> dict[str, float | int]:
    if not values:
        return {"min": 0, "median": 0.0, "mean": 0.0, "max": 0}
    return {
        "min": int(min(values)),
        "median": float(statistics.median(values)),
        "mean": round(sum(values) / len(values), 6),
        "max": int(max(values)),
    }


def _histogram(values: Iterable[int]) -> dict[str, int]:
    """``{k: count}`` in increasing k, keyed by ``str(k)`` because JSON object keys are strings."""
    counts = Counter(int(v) for v in values)
    return {str(k): counts[k] for k in sorted(counts)}


def _top(counter: Counter, limit: int) -> list[dict[str, Any]]:
    # Ties broken by name so that equal inputs give equal rankings.
    ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    return [{"name": name, "count": int(count)} for name, count in ranked[: max(limit, 0)]]


def _require(frame: pd.DataFrame, columns: Iterable[str], table: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing and len(frame):
        raise SchemaError(f"{table} lacks column(s) {', '.join(missing)}; it has {', '.join(map(str, frame.columns))}")


def _column(frame: pd.DataFrame, name: str) -> list:
    return frame[name].tolist() if name in frame.columns else [None] * len(frame)


def _rejected_counts(rejected: pd.DataFrame | None) -> dict[str, Any]:
    """Rejections per reason; ``"unwanted tag: monochrome"`` counts under ``"unwanted tag"`` with sub-count
    ``"monochrome"``, so that one reason with many tags is one row of the card."""
    if rejected is None or len(rejected) == 0:
        return {"total": 0, "by_reason": {}}
    _require(rejected, ["reason"], "rejected table")
    groups: dict[str, Counter] = {}
    totals: Counter = Counter()
    for raw in rejected["reason"].tolist():
        reason = _present_str(raw) or "unknown"
        head, sep, tail = reason.partition(":")
        group = head.strip() or "unknown"
        totals[group] += 1
        sub = groups.setdefault(group, Counter())
        if sep and tail.strip():
            sub[tail.strip()] += 1
    by_reason = {}
    for group, count in sorted(totals.items(), key=lambda item: (-item[1], item[0])):
        details = sorted(groups[group].items(), key=lambda item: (-item[1], item[0]))
        by_reason[group] = {"count": int(count), "details": {k: int(v) for k, v in details}}
    return {"total": int(len(rejected)), "by_reason": by_reason}


def compute_stats(
    manifest: pd.DataFrame,
    rejected: pd.DataFrame | None,
    *,
    top_characters: int = 15,
    top_cloth_tags: int = 30,
) -> dict[str, Any]:
    """Statistics of a manifest and its rejected table, as a JSON-serialisable dict with a fixed key order.

    Histograms are ``{str(k): count}`` in increasing ``k``; top lists are ``[{"name", "count"}]`` by count
    then name; coverages are fractions of manifest rows. An empty manifest gives zeros, not an error; a
    non-empty one must have ``id``, ``identity`` and ``similar`` (:class:`~sameid.errors.SchemaError`).
    """
    _require(manifest, ["id", "identity", "similar"], "manifest")
    n_images = int(len(manifest))
    ids = [str(v) for v in _column(manifest, "id")]
    known_ids = set(ids)

    similar_lists = [_as_list(v) for v in _column(manifest, "similar")]
    similar_counts = [len(s) for s in similar_lists]
    unknown_similar = sum(1 for s in similar_lists for ref in s if str(ref) not in known_ids)

    identities = [_present_str(v) for v in _column(manifest, "identity")]
    identity_sizes = Counter(i for i in identities if i is not None)

    characters = Counter(c for c in (_present_str(v) for v in _column(manifest, "character")) if c)
    cloth_tags: Counter = Counter()
    for cell in _column(manifest, "cloth_tags"):
        # A tag counts once per image, as in the paper's "most frequent cloth tags".
        cloth_tags.update({t for t in (_present_str(v) for v in _as_list(cell)) if t})

    near_pairs: set[tuple[str, str]] = set()
    for own_id, cell in zip(ids, _column(manifest, "near_duplicates"), strict=True):
        for other in _as_list(cell):
            other_id = _present_str(other)
            if other_id and other_id != own_id:
                near_pairs.add((min(own_id, other_id), max(own_id, other_id)))

    vqa_backends = Counter(b for b in (_present_str(v) for v in _column(manifest, "vqa_backend")) if b)
    label_checks = Counter(c for c in (_present_str(v) for v in _column(manifest, "label_check")) if c)

    def fraction(n: int) -> float:
        return round(n / n_images, 6) if n_images else 0.0

    n_head_boxes = sum(1 for v in _column(manifest, "head_box") if _has_head_box(v))
    n_masks = sum(1 for v in _column(manifest, "mask") if _present_str(v))
    rejected_stats = _rejected_counts(rejected)

    return {
        "n_images": n_images,
        "n_identities": int(len(identity_sizes)),
        "n_rejected": rejected_stats["total"],
        "n_inputs": n_images + rejected_stats["total"],
        "columns": [str(c) for c in manifest.columns],
        "similar_per_sample": {
            "histogram": _histogram(similar_counts),
            **_summary(similar_counts),
            "n_without_reference": sum(1 for n in similar_counts if n == 0),
            "n_unknown_ids": int(unknown_similar),
        },
        "images_per_identity": {
            "histogram": _histogram(identity_sizes.values()),
            **_summary(list(identity_sizes.values())),
        },
        "top_characters": _top(characters, top_characters),
        "n_characters": int(len(characters)),
        "top_cloth_tags": _top(cloth_tags, top_cloth_tags),
        "n_cloth_tags": int(len(cloth_tags)),
        "rejected": rejected_stats,
        "coverage": {
            "head_box": fraction(n_head_boxes),
            "mask": fraction(n_masks),
            "n_head_box": int(n_head_boxes),
            "n_mask": int(n_masks),
        },
        "near_duplicate_pairs": len(near_pairs),
        "vqa_backends": {name: int(count) for name, count in sorted(vqa_backends.items())},
        "label_checks": {name: int(count) for name, count in sorted(label_checks.items())},
        "multi_subject": _multi_subject_counts(manifest),
    }


def _multi_subject_counts(manifest: pd.DataFrame) -> dict[str, Any]:
    """Multi-subject rows (docs/multi_subject.md): how many, subjects per image, references per subject."""
    subjects = [_as_list(v) for v in _column(manifest, "subjects")]
    references = [_as_list(v) for v in _column(manifest, "subject_references")]
    per_subject = [len(_as_list(r)) for refs in references for r in refs]
    return {
        "n_images": sum(1 for s in subjects if s),
        "subjects_per_image": _histogram(len(s) for s in subjects if s),
        "references_per_subject": _summary(per_subject),
    }


def stats_json(stats: Mapping[str, Any]) -> str:
    """The exact text of ``stats.json``: insertion key order (already deterministic), UTF-8, final newline."""
    return json.dumps(stats, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# ----------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------

_MAX_LABEL = 40


def _plot_label(text: str) -> str:
    # `$` would start matplotlib mathtext and a long name would squeeze the bars.
    if len(text) > _MAX_LABEL:
        text = text[: _MAX_LABEL - 1] + "…"
    return text.replace("$", r"\$")


def _save_figure(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    # No Software/date metadata, so equal data gives equal PNG bytes.
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None}))


def _plot_histogram(histogram: Mapping[str, int], path: Path, *, title: str, xlabel: str, ylabel: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ks = [int(k) for k in histogram]
    counts = [int(v) for v in histogram.values()]
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(ks, counts, width=0.8, color="#4C72B0")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="y", alpha=0.3)
    _save_figure(fig, path)


def _plot_ranking(ranking: list[dict[str, Any]], path: Path, *, title: str, xlabel: str, ylabel: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = [_plot_label(str(r["name"])) for r in ranking]
    counts = [int(r["count"]) for r in ranking]
    fig = Figure(figsize=(8, max(3.0, 0.32 * len(ranking) + 1.4)), layout="constrained")
    ax = fig.add_subplot()
    positions = list(range(len(ranking)))
    ax.barh(positions, counts, color="#55A868")
    ax.set_yticks(positions, labels=names)
    ax.invert_yaxis()  # the most frequent on top
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="x", alpha=0.3)
    _save_figure(fig, path)


def _write_plots(stats: Mapping[str, Any], plots_dir: Path) -> dict[str, dict[str, Any]]:
    """Draw each plot whose data exists; return, per plot, its relative path or the note saying why not."""
    similar = stats["similar_per_sample"]["histogram"]
    specs = [
        (
            "similar_per_sample",
            bool(similar),
            "no images in the manifest",
            lambda p: _plot_histogram(
                similar,
                p,
                title="Same-identity samples per sample",
                xlabel="Number of other images with the same identity (len(similar))",
                ylabel="Number of samples",
            ),
        ),
        (
            "top_characters",
            bool(stats["top_characters"]),
            "the manifest has no `character` values (for example a photo dataset)",
            lambda p: _plot_ranking(
                stats["top_characters"],
                p,
                title=f"Top {len(stats['top_characters'])} characters by number of images",
                xlabel="Number of images",
                ylabel="Character",
            ),
        ),
        (
            "top_cloth_tags",
            bool(stats["top_cloth_tags"]),
            "the manifest has no `cloth_tags` values",
            lambda p: _plot_ranking(
                stats["top_cloth_tags"],
                p,
                title=f"Top {len(stats['top_cloth_tags'])} most frequent cloth tags",
                xlabel="Number of images with the tag",
                ylabel="Cloth tag",
            ),
        ),
    ]
    plots: dict[str, dict[str, Any]] = {}
    with warnings.catch_warnings():
        # Names in scripts the default font lacks (CJK) still plot, as boxes; one warning per glyph is noise.
        warnings.filterwarnings("ignore", message=r".*[Gg]lyph .* missing from", category=UserWarning)
        for name, has_data, why_not, draw in specs:
            path = plots_dir / f"{name}.png"
            if has_data:
                draw(path)
                plots[name] = {"path": f"{PLOTS_DIRNAME}/{name}.png", "note": None}
            else:
                # A plot from an earlier build of this directory would describe other data.
                path.unlink(missing_ok=True)
                plots[name] = {"path": None, "note": f"Not drawn: {why_not}."}
    return plots


# ----------------------------------------------------------------------------------------------------------
# Dataset card
# ----------------------------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def escape_markdown(value: Any) -> str:
    """Text from data made inert in Markdown (also inside a table cell): HTML characters become entities,
    Markdown punctuation and the table pipe are backslash-escaped, line breaks become spaces."""
    text = "" if value is None else str(value)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return re.sub(r"[\r\n]+", " ", text)


def _yaml_string(value: Any) -> str:
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps("" if value is None else str(value), ensure_ascii=False)


def _fenced(text: str, language: str = "") -> str:
    """A fenced code block whose fence is longer than any backtick run in ``text``, so data cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def _size_category(n: int) -> str:
    for bound, label in _SIZE_CATEGORIES:
        if n < bound:
            return label
    return "n>1B"


def _is_generated_sample(build_config: Mapping[str, Any]) -> bool:
    if build_config.get("is_generated_sample") or build_config.get("generated_sample"):
        return True
    source = build_config.get("source")
    kind = source.get("kind") if isinstance(source, Mapping) else source
    return isinstance(kind, str) and kind.strip().lower() in {"demo", "generated", "generated_sample"}


def _source_text(source: Any) -> str:
    if isinstance(source, Mapping):
        return ", ".join(f"{k}: {v}" for k, v in source.items() if v not in (None, ""))
    return "" if source is None else str(source)


def _render_card(stats: Mapping[str, Any], plots: Mapping[str, Any], build_config: Mapping[str, Any]) -> str:
    import jinja2

    template_text = resources.files("sameid.dataset").joinpath("templates", CARD_TEMPLATE).read_text("utf-8")
    env = jinja2.Environment(
        autoescape=False,  # Markdown, not HTML: data is escaped explicitly with the `md` filter
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["md"] = escape_markdown
    env.filters["yaml_str"] = _yaml_string
    env.filters["fenced"] = _fenced
    config_text = json.dumps(build_config, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    columns = [
        {"name": c, "description": COLUMN_DESCRIPTIONS.get(c, "Source-specific column."), "required": c in MANIFEST_COLUMNS}
        for c in stats["columns"]
    ]
    return env.from_string(template_text).render(
        stats=stats,
        plots=plots,
        build_config=build_config,
        build_config_text=config_text if build_config else "",
        generated_sample=_is_generated_sample(build_config),
        source_text=_source_text(build_config.get("source")),
        pretty_name=build_config.get("name") or "sameid same-identity dataset",
        license=build_config.get("license") or "unknown",
        size_category=_size_category(int(stats["n_images"])),
        columns=columns,
    )


def write_stats(
    out_dir: str | os.PathLike[str],
    manifest: pd.DataFrame,
    rejected: pd.DataFrame | None,
    *,
    build_config: dict | None = None,
    sections: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``stats.json``, ``plots/*.png`` and the card ``README.md`` into ``out_dir``; return the stats.

    ``sections`` adds named sections computed elsewhere to the stats and the card: ``judge`` (what the judge of
    doubtful folders did, :mod:`sameid.dataset.judging`) and ``leakage`` (the identity-leakage check of
    synthetic identities, :mod:`sameid.synth.leakage`).

    ``build_config`` is shown verbatim in the card. Keys the card reads: ``name`` (title), ``license`` (the
    Hugging Face license id, default ``unknown``), ``source`` and ``is_generated_sample``: when
    ``is_generated_sample`` (or ``generated_sample``) is true, or ``source`` (or ``source["kind"]``) is
    ``"demo"``, the card states plainly that the images are sameid's generated sample, not a real collection.
    """
    out = Path(out_dir)
    build_config = dict(build_config or {})
    stats = compute_stats(manifest, rejected)
    for name, section in (sections or {}).items():
        if section:
            stats[name] = section
    plots = _write_plots(stats, out / PLOTS_DIRNAME)
    write_text_atomic(out / STATS_FILENAME, stats_json(stats))
    write_text_atomic(out / CARD_FILENAME, _render_card(stats, plots, build_config))
    return stats
