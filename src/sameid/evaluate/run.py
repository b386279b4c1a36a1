"""``sameid eval`` as one function: manifest in, report folder out, a result that describes itself.

:func:`evaluate_manifest` checks everything it can before it touches ``out``: the ``out`` folder (an earlier
evaluation there is refused unless ``overwrite``), the manifest (read and checked row by row, see
:mod:`.manifest`) and the metrics (registered, and what they need given). Only then, with ``overwrite``, does it
remove the files an earlier evaluation wrote (:data:`OUTPUT_FILES` and ``plots/*.png``, nothing else), so no
stale ``problems.parquet`` or plot survives beside the new report.

An image that exists but cannot be decoded (corrupt, truncated) shows only when a metric loads it. Then every
distinct image and reference of the run is checked with :func:`~sameid.images.load_image`, and each row that
uses an unreadable file is named: the run stops with that list, or, with ``skip_invalid``, those rows join the
problems table and the others are evaluated (what was embedded before is reused through the cache, and in memory
when there is no cache folder it is embedded again).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import ImageError, SameIdError, SchemaError
from ..images import load_image
from .evaluator import EvalConfig, Evaluation, evaluate_generations
from .manifest import PROBLEM_COLUMNS, format_problems, import_dreambench, read_generations
from .registry import check_metrics
from .report import N_BOOTSTRAP, write_report

# every file an evaluation writes into --out (and plots/<model>.png)
OUTPUT_FILES = ("per_image.parquet", "summary.json", "report.html", "problems.parquet", "generations.jsonl")
PLOTS = "plots"


@dataclass
class EvalRun:
    """What :func:`evaluate_manifest` did: the summary, the evaluation, the rows left out, and where it wrote."""

    out: Path
    manifest: Path
    summary: dict
    evaluation: Evaluation
    left_out: pd.DataFrame  # problems.parquet: rows not evaluated (problems and duplicates)
    imported: int | None = None  # generations imported from a DreamBench-style folder
    removed: tuple[str, ...] = ()  # files of an earlier evaluation removed (overwrite)

    @property
    def duplicates(self) -> int:
        return int(self.left_out["problem"].str.startswith("duplicate of row").sum()) if len(self.left_out) else 0

    def describe(self) -> str:
        lines = []
        if self.imported is not None:
            lines.append(f"imported {self.imported} generations into {self.manifest}")
        if self.removed:
            lines.append(f"replaced an earlier evaluation in {self.out} ({len(self.removed)} files)")
        if self.duplicates:
            rows = self.left_out.loc[self.left_out["problem"].str.startswith("duplicate of row"), "row"].tolist()
            lines.append(f"counted {self.duplicates} duplicate row(s) once (rows {_rows(rows)} repeat earlier rows)")
        skipped = self.left_out.loc[~self.left_out["problem"].str.startswith("duplicate of row"), "row"].unique() \
            if len(self.left_out) else []
        if len(skipped):
            lines.append(f"skipped {len(skipped)} invalid row(s) ({_rows(list(skipped))}): "
                         f"see {self.out / 'problems.parquet'}")
        for model, scores in self.summary["models"].items():
            means = ", ".join(f"{k} {v:.4f}" for k, v in scores["means"].items() if v is not None)
            swds = ", ".join(f"{k} {v['swd']:.4f}" for k, v in scores["swd"].items() if v["swd"] is not None)
            lines.append(f"{model} (n={scores['n']}): {means}" + (f"; {swds}" if swds else ""))
        stores = self.evaluation.stores.values()
        lines.append(f"embedded {sum(s.embedded for s in stores)} new inputs ({self.evaluation.model_calls} model "
                     f"calls); report: {self.out / 'report.html'}")
        return "\n".join(lines)


def _rows(rows: list, shown: int = 10) -> str:
    text = ", ".join(str(int(r)) for r in rows[:shown])
    return text + (f", ... {len(rows) - shown} more" if len(rows) > shown else "")


def earlier_outputs(out: Path) -> list[Path]:
    """The files in ``out`` that an evaluation writes (what ``overwrite`` removes)."""
    if not out.is_dir():
        return []
    found = [out / name for name in OUTPUT_FILES if (out / name).is_file()]
    if (out / PLOTS).is_dir():
        found += sorted(p for p in (out / PLOTS).glob("*.png") if p.is_file())
    return found


def _unreadable_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """A problems table naming every row whose image or a reference cannot be decoded."""
    reasons: dict[str, str] = {}
    for path in dict.fromkeys([*frame["image"], *(r for refs in frame["references"] for r in refs)]):
        try:
            load_image(path)
        except ImageError as error:
            reasons[path] = str(error)
    problems = []
    for row, image, references in zip(frame["row"], frame["image"], frame["references"], strict=True):
        if image in reasons:
            problems.append((int(row), image, f"unreadable image: {reasons[image]}"))
        problems.extend((int(row), image, f"unreadable reference: {reasons[r]}") for r in references if r in reasons)
    return pd.DataFrame(problems, columns=list(PROBLEM_COLUMNS))


def evaluate_manifest(manifest: str | os.PathLike, out: str | os.PathLike, config: EvalConfig | None = None, *,
                      skip_invalid: bool = False, overwrite: bool = False, bootstrap: int = N_BOOTSTRAP) -> EvalRun:
    """Evaluate a generations manifest (or a DreamBench-style folder) into ``out``; see the module doc."""
    manifest, out = Path(manifest), Path(out)
    config = config or EvalConfig()
    # the manifest itself may sit in out (generations.jsonl of an earlier import): it is input, never removed
    earlier = [p for p in earlier_outputs(out) if not (manifest.is_file() and p.resolve() == manifest.resolve())]
    if earlier and not overwrite:
        raise SameIdError(f"{out} holds an earlier evaluation ({', '.join(p.name for p in earlier[:4])}"
                          f"{', ...' if len(earlier) > 4 else ''}); pass --overwrite to replace it, or choose "
                          "another --out")
    check_metrics(config.metrics, config)
    imported_rows = None
    if manifest.is_dir():
        imported_rows = import_dreambench(manifest, out / "generations.jsonl", write=False)
        manifest = out / "generations.jsonl"
        generations = read_generations(manifest, skip_invalid=skip_invalid, frame=imported_rows)
    else:
        generations = read_generations(manifest, skip_invalid=skip_invalid)
    # the inputs are valid: now, and only now, the earlier evaluation's files go
    for path in earlier:
        path.unlink(missing_ok=True)
    if earlier and (out / PLOTS).is_dir() and not any((out / PLOTS).iterdir()):
        (out / PLOTS).rmdir()
    if imported_rows is not None:
        from .manifest import write_generations

        write_generations(imported_rows, manifest)
    frame, left_out = generations.frame, generations.left_out
    try:
        evaluation = evaluate_generations(frame, config)
    except ImageError:
        unreadable = _unreadable_rows(frame)
        if unreadable.empty:
            raise
        if not skip_invalid:
            raise SchemaError(format_problems(unreadable, str(manifest)) +
                              "\n(fix them, or pass skip_invalid / --skip-invalid to evaluate the other rows)"
                              ) from None
        frame = frame[~frame["row"].isin(unreadable["row"])].reset_index(drop=True)
        if frame.empty:
            raise SchemaError(f"{manifest}: no valid generations to evaluate") from None
        left_out = (pd.concat([left_out, unreadable], ignore_index=True) if len(left_out) else unreadable
                    ).sort_values("row", kind="stable").reset_index(drop=True)
        evaluation = evaluate_generations(frame, config)
    summary = write_report(evaluation.per_image, out, manifest=str(manifest), problems=left_out,
                           resamples=bootstrap)
    return EvalRun(out, manifest, summary, evaluation, left_out,
                   imported=None if imported_rows is None else len(imported_rows),
                   removed=tuple(p.name for p in earlier))
