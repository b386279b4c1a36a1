"""The evaluation output (docs/architecture.md, Contracts): ``per_image.parquet``, ``summary.json``,
``report.html`` and a sim-vs-div scatter plot per model (``plots/<model>.png``).

``summary.json``: ``{"metrics": [...], "bootstrap": {...}, "models": {model: {"n", "means", "swd", "ci95"}}}``;
``means`` per metric (plus ``clip_score`` and ``face_detection_rate`` when measured); ``swd`` keyed
``"swd(div,sim)"`` with equation 1's value, the product of means and the Cauchy-Schwarz bound
(:mod:`sameid.evaluate.swd`); ``ci95`` holds percentile bootstrap 95% intervals of each mean and each SWD,
resampling generations with replacement. The scatter plots follow RetriBooru's (arXiv 2312.02521, section 5, "scatter plots on the right"): one point per generation, div on x, sim on y,
with the diagonal on which the two are balanced.

``report.html`` also shows, per model, the ``k`` best and ``k`` worst generations by one per-generation score
(:func:`example_score`: div x sim of the scatter plot's pair, the term SWD averages, so the examples show what
drives SWD up and down; with a single metric, that metric), each as the generated image beside its first
reference. The thumbnails are embedded in the HTML as base64 JPEG data URIs (at most 128 px a side, a few KiB
each) rather than written to a folder beside it: the report is one file that stays whole when it is moved,
mailed or uploaded as a CI artifact, and does not break when the generations are deleted (the image's path is
only a hover title). An image that cannot be read shows a placeholder with the reason instead.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_atomic, write_parquet_atomic, write_text_atomic
from ..errors import ImageError
from ..images import load_image
from .registry import metric_names, metrics_of_role
from .swd import metric_pairs, swd_table

N_BOOTSTRAP = 1000
_BOOTSTRAP_CHUNK = 200  # resamples drawn at once: bounds memory at chunk x n floats per metric
N_EXAMPLES = 4  # best and worst generations shown per model
THUMBNAIL_PX = 128


def _nanmean_rows(matrix: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN resample (no face anywhere) is a NaN mean
        return np.nanmean(matrix, axis=1)


def bootstrap_interval(values: np.ndarray, *, resamples: int = N_BOOTSTRAP, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the NaN-skipping mean of ``values`` (rows resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or np.isnan(values).all():
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, _BOOTSTRAP_CHUNK):
        index = rng.integers(0, len(values), size=(min(_BOOTSTRAP_CHUNK, resamples - start), len(values)))
        means.append(_nanmean_rows(values[index]))
    means = np.concatenate(means)
    means = means[~np.isnan(means)]
    alpha = (1.0 - level) / 2.0
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha)))


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def summarize(per_image: pd.DataFrame, *, resamples: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """The ``summary.json`` object (see module doc). NaN becomes null."""
    metrics = [m for m in metric_names() if m in per_image.columns]
    extras = [c for c in ("clip_score",) if c in per_image.columns]
    models = {}
    for model, rows in per_image.groupby("model", sort=True):
        means, ci95 = {}, {}
        for column in (*metrics, *extras):
            values = rows[column].to_numpy(dtype=np.float64)
            means[column] = _finite(float(np.nanmean(values))) if (~np.isnan(values)).any() else None
            ci95[column] = [_finite(v) for v in bootstrap_interval(values, resamples=resamples, seed=seed)]
        if "face_detected" in rows:
            means["face_detection_rate"] = float(rows["face_detected"].astype(bool).mean())
        swd = {}
        for key, result in swd_table(rows, metrics).items():
            swd[key] = {name: (_finite(value) if isinstance(value, float) else value)
                        for name, value in result.as_dict().items()}
            product = rows[result.div].to_numpy(np.float64) * rows[result.sim].to_numpy(np.float64)
            ci95[key] = [_finite(v) for v in bootstrap_interval(product, resamples=resamples, seed=seed)]
        models[str(model)] = {"n": int(len(rows)), "means": means, "swd": swd, "ci95": ci95}
    return {
        "metrics": metrics,
        "scales": {"clip_t": "cosine (0-1 scale of the RetriBooru and SWD papers)",
                   "clip_score": "torchmetrics CLIPScore: max(100 * cosine, 0)"},
        "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95, "method": "percentile"},
        "models": models,
    }


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def scatter_pair(metrics: list[str]) -> tuple[str, str] | None:
    """The (div, sim) pair drawn: SWD(clip_t, clip_i) when both were measured, else the first pair."""
    pairs = metric_pairs(metrics)
    return ("clip_t", "clip_i") if ("clip_t", "clip_i") in pairs else (pairs[0] if pairs else None)


def write_scatter(rows: pd.DataFrame, div: str, sim: str, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.5, 4), dpi=100)
    axes = figure.subplots()
    axes.scatter(rows[div], rows[sim], s=10, alpha=0.6)
    # The papers read these plots against the diagonal (div = sim: balanced); both axes share one range so the
    # diagonal is always in view and distances from it are not distorted.
    values = np.concatenate([rows[div].to_numpy(float), rows[sim].to_numpy(float)])
    values = values[np.isfinite(values)]
    low = min(0.0, float(values.min())) if len(values) else 0.0
    high = float(values.max()) if len(values) else 1.0
    high = high + 0.05 * max(high - low, 1e-6)
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_aspect("equal")
    axes.axline((low, low), slope=1.0, color="grey", linewidth=0.8, linestyle="--", label="div = sim")
    axes.legend(loc="lower right", fontsize=7, frameon=False)
    axes.set_xlabel(f"{div} (div)")
    axes.set_ylabel(f"{sim} (sim)")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    return write_atomic(path, lambda temporary: figure.savefig(temporary, format="png"), suffix=".png")


def example_score(per_image: pd.DataFrame, metrics: list[str]) -> tuple[str, pd.Series] | None:
    """The per-generation score the best and worst examples are ranked by, with the report's words for it.

    div x sim of the scatter plot's pair (:func:`scatter_pair`), the term whose mean is SWD(div, sim); without a
    pair, the first identity metric measured (clip_i, dino, face), else the first metric. None: no metric.
    """
    pair = scatter_pair(metrics)
    if pair is not None:
        div, sim = pair
        return (f"{div} \u00d7 {sim}, the per-generation term of swd({div},{sim})",
                per_image[div].astype(np.float64) * per_image[sim].astype(np.float64))
    metric = next((m for m in metrics_of_role("similarity") if m in metrics), metrics[0] if metrics else None)
    return None if metric is None else (metric, per_image[metric].astype(np.float64))


def best_and_worst(per_image: pd.DataFrame, metrics: list[str], k: int = N_EXAMPLES
                   ) -> tuple[str, dict[str, dict[str, pd.DataFrame]]] | None:
    """Per model, its ``k`` highest-scoring rows (best first) and ``k`` lowest (worst first), by
    :func:`example_score` (column ``score``). Rows without a score (a NaN metric) are left out; a row is shown
    once, so a model with fewer than ``2 k`` scored rows has fewer worst examples. Ties keep manifest order."""
    scored = example_score(per_image, metrics)
    if scored is None or k < 1:
        return None
    criterion, score = scored
    frame = per_image.assign(score=score.to_numpy())
    chosen = {}
    for model, rows in frame.groupby("model", sort=True):
        rows = rows[rows["score"].notna()]
        best = rows.sort_values("score", ascending=False, kind="stable").head(k)
        worst = rows.drop(best.index).sort_values("score", ascending=True, kind="stable").head(k)
        chosen[str(model)] = {"best": best, "worst": worst}
    return criterion, chosen


def thumbnail_uri(path, max_side: int = THUMBNAIL_PX) -> tuple[str | None, str | None]:
    """(``data:image/jpeg;base64,...`` of the image shrunk to ``max_side``, None) or (None, why it is absent)."""
    if path is None or (isinstance(path, float) and math.isnan(path)) or str(path) == "":
        return None, "no image recorded"
    try:
        image, _ = load_image(str(path))
    except ImageError as error:
        return None, error.reason
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), None


def example_thumbnails(per_image: pd.DataFrame, metrics: list[str], k: int = N_EXAMPLES,
                       max_side: int = THUMBNAIL_PX) -> dict | None:
    """The report's examples: ``{"criterion", "k", "models": {model: {"best": [...], "worst": [...]}}}``, each
    example a dict of its row's fields, ``score``, metric ``values`` and ``generated`` / ``reference``
    thumbnails (``{"path", "uri", "error"}``). None when nothing can be ranked."""
    ranked = best_and_worst(per_image, metrics, k)
    if ranked is None:
        return None
    criterion, chosen = ranked
    thumbnails: dict[str, dict] = {}  # a reference shared by several examples is read once

    def thumbnail(path) -> dict:
        name = "" if path is None or (isinstance(path, float) and math.isnan(path)) else str(path)
        if name not in thumbnails:
            uri, error = thumbnail_uri(name, max_side)
            thumbnails[name] = {"path": name, "uri": uri, "error": error}
        return thumbnails[name]

    models = {}
    for model, groups in chosen.items():
        models[model] = {}
        for label, rows in groups.items():
            models[model][label] = [{
                "row": row.get("row"), "subject": row.get("subject"), "seed": row.get("seed"),
                "prompt": row.get("prompt", ""), "score": row["score"],
                "values": [(m, row[m]) for m in metrics if m in row],
                "generated": thumbnail(row.get("image")), "reference": thumbnail(row.get("first_reference")),
            } for row in rows.to_dict("records")]
    return {"criterion": criterion, "k": k, "models": models}


_TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>sameid evaluation</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}
td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}th{background:#eee}
.examples{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:1em}
.example{margin:0;border:1px solid #ccc;padding:6px;width:272px;font-size:12px}
.example img,.missing{width:128px;height:128px;object-fit:contain;background:#f4f4f4;vertical-align:top}
.missing{display:inline-flex;align-items:center;justify-content:center;text-align:center;color:#a00;
font-size:11px;border:1px dashed #a00;box-sizing:border-box;overflow:hidden}
.note{background:#fff6d6;border:1px solid #e0c060;padding:6px 10px;max-width:60em}</style></head><body>
{% macro thumbnail(t, what) %}{% if t.uri %}<img src="{{ t.uri }}" alt="{{ what }}" title="{{ t.path }}">{% else
%}<span class="missing" title="{{ t.path }}">{{ what }}: {{ t.error }}</span>{% endif %}{% endmacro %}
<h1>sameid evaluation</h1>
{% for note in notes %}<p class="note"><strong>Note:</strong> {{ note }}</p>
{% endfor %}<p>{{ n_generations }} generations from {{ manifest }}. clip_t is a cosine (0-1 scale); clip_score is
torchmetrics' max(100 &times; cosine, 0). SWD(div, sim) is the mean of div &times; sim (equation 1); compare it with
the product of means (higher SWD = generations good at both at once) and the Cauchy-Schwarz bound.</p>
<h2>Means (95% bootstrap interval)</h2>
<table><tr><th>model</th><th>n</th>{% for m in columns %}<th>{{ m }}</th>{% endfor %}</tr>
{% for model, s in models.items() %}<tr><td>{{ model }}</td><td>{{ s.n }}</td>
{% for m in columns %}<td>{{ fmt(s.means.get(m)) }} [{{ fmt(s.ci95.get(m, [None, None])[0]) }},
{{ fmt(s.ci95.get(m, [None, None])[1]) }}]</td>{% endfor %}</tr>
{% endfor %}</table>
<h2>Similarity weighted diversity</h2>
<table><tr><th>model</th><th>pair</th><th>SWD</th><th>95% interval</th><th>product of means</th>
<th>Cauchy-Schwarz bound</th><th>n</th></tr>
{% for model, s in models.items() %}{% for key, r in s.swd.items() %}<tr><td>{{ model }}</td><td>{{ key }}</td>
<td>{{ fmt(r.swd) }}</td><td>[{{ fmt(s.ci95[key][0]) }}, {{ fmt(s.ci95[key][1]) }}]</td>
<td>{{ fmt(r.product_of_means) }}</td><td>{{ fmt(r.cauchy_schwarz_bound) }}</td><td>{{ r.n }}</td></tr>
{% endfor %}{% endfor %}</table>
{% if plots %}<h2>Similarity vs diversity</h2>
{% for model, plot in plots.items() %}<figure style="display:inline-block"><img src="{{ plot }}" alt="{{ model }}">
<figcaption>{{ model }}</figcaption></figure>{% endfor %}{% endif %}
{% if examples %}<h2 id="examples">Best and worst generations</h2>
<p>Per model, the {{ examples.k }} best and {{ examples.k }} worst generations by <b>{{ examples.criterion }}</b>
(generations without that score are left out); each shows the generated image (left) beside its first reference
(right).</p>
{% for model, groups in examples.models.items() %}<h3>{{ model }}</h3>
{% for label, items in groups.items() %}<h4>{{ label }}</h4>{% if not items %}<p>none</p>{% endif %}
<div class="examples">{% for e in items %}<figure class="example" data-kind="{{ label }}">
{{ thumbnail(e.generated, "generated") }}{{ thumbnail(e.reference, "reference") }}
<figcaption><b>score {{ fmt(e.score) }}</b>{% for name, value in e["values"] %} &middot; {{ name }}
{{ fmt(value) }}{% endfor %}<br>{{ e.subject }}, seed {{ fmt(e.seed) }}, row {{ fmt(e.row) }}<br>
<span class="prompt">{{ e.prompt }}</span></figcaption></figure>
{% endfor %}</div>{% endfor %}{% endfor %}{% endif %}
<h2>Generations{% if shown < n_generations %} (first {{ shown }}){% endif %}</h2>
<table><tr>{% for c in row_columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for c in row_columns %}<td>{{ fmt(row[c]) }}</td>{% endfor %}</tr>{% endfor %}
</table></body></html>
"""


def _fmt(value) -> str:
    if value is None or value is pd.NA:
        return "–"
    if isinstance(value, float | np.floating):
        return "–" if not math.isfinite(float(value)) else f"{float(value):.4f}"
    return str(value)


def render_html(summary: dict, per_image: pd.DataFrame, plots: dict[str, str], *, manifest: str = "",
                max_rows: int = 500, examples: dict | None = None, notes: Sequence[str] = ()) -> str:
    """The HTML report; every value (model names, prompts, paths) is HTML-escaped by jinja2's autoescape.
    ``examples``: :func:`example_thumbnails`' result, or None for no examples section; ``notes``: paragraphs
    shown at the top (what the numbers can and cannot say about this run)."""
    import jinja2

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = environment.from_string(_TEMPLATE)
    columns = [*summary["metrics"], *(["clip_score"] if any("clip_score" in s["means"] for s in summary["models"].values()) else []),
               *(["face_detection_rate"] if "face" in summary["metrics"] else [])]
    row_columns = [c for c in ("model", "subject", "prompt", "seed", *summary["metrics"], "image") if c in per_image]
    shown = per_image.head(max_rows)
    return template.render(models=summary["models"], columns=columns, row_columns=row_columns,
                           rows=shown.to_dict("records"), shown=len(shown), n_generations=len(per_image),
                           plots=plots, manifest=manifest, fmt=_fmt, examples=examples, notes=list(notes))


def write_report(per_image: pd.DataFrame, out: str | os.PathLike, *, manifest: str = "", problems: pd.DataFrame | None = None,
                 resamples: int = N_BOOTSTRAP, seed: int = 0, examples: int = N_EXAMPLES,
                 notes: Sequence[str] = ()) -> dict:
    """Write every output file into ``out``; return the summary. ``problems`` (rows left out) -> problems.parquet.
    ``examples``: best and worst generations shown per model in report.html (0: none); ``notes``: paragraphs at
    the top of report.html (also ``notes`` in summary.json when given)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(out / "per_image.parquet", per_image)
    summary = summarize(per_image, resamples=resamples, seed=seed)
    if notes:
        summary["notes"] = list(notes)
    if problems is not None and len(problems):
        write_parquet_atomic(out / "problems.parquet", problems)
        summary["skipped_rows"] = int(problems["row"].nunique())
    else:  # no rows left out this time: an earlier run's list must not stand beside this report
        (out / "problems.parquet").unlink(missing_ok=True)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    plots = {}
    pair = scatter_pair(summary["metrics"])
    if pair is not None:
        div, sim = pair
        used: set[str] = set()
        for model, rows in per_image.groupby("model", sort=True):
            name = _slug(str(model))
            while name in used:  # two model names with one slug ("a b", "a_b") must not share a plot
                name += "_"
            used.add(name)
            path = write_scatter(rows, div, sim, out / "plots" / f"{name}.png", f"{model}: {sim} vs {div}")
            plots[str(model)] = path.relative_to(out).as_posix()
    shown = example_thumbnails(per_image, summary["metrics"], examples) if examples > 0 else None
    write_text_atomic(out / "report.html", render_html(summary, per_image, plots, manifest=manifest, examples=shown,
                                                       notes=notes))
    return summary
