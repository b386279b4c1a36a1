"""Evaluating subject-driven generations: per-generation metrics, SWD, and the report.

Flow: a generations manifest (:mod:`.manifest`) -> the metrics named in the registry (:mod:`.registry`, built by
:mod:`.evaluator`; embedders from the backend registry; each distinct image and prompt embedded once, cached by
content hash in :mod:`.embeddings`) -> SWD for every pair (:mod:`.swd`); the VQA score (:mod:`.vqa_score`) and
the benchmark grid (:mod:`.protocol`) -> ``per_image.parquet``, ``summary.json``, ``report.html``, scatter plots
(:mod:`.report`). :func:`evaluate_manifest` (:mod:`.run`) is ``sameid eval`` as one call.

Names are imported on first use, so ``import sameid.evaluate.registry`` (the CLI's ``--help``) stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EvalConfig": "evaluator", "Evaluation": "evaluator", "evaluate_generations": "evaluator",
    "Generations": "manifest", "import_dreambench": "manifest", "read_generations": "manifest",
    "write_generations": "manifest", "protocol_coverage": "protocol", "protocol_grid": "protocol",
    "summarize": "report", "write_report": "report", "SWD": "swd", "similarity_weighted_diversity": "swd",
    "swd_table": "swd", "DEFAULT_QUESTIONS": "vqa_score", "AnswerStore": "vqa_score", "VQAScore": "vqa_score",
    "EvalRun": "run", "evaluate_manifest": "run", "register_metric": "registry", "metric_names": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
