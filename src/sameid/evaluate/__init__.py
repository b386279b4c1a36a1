"""Evaluating subject-driven generations: per-generation metrics, SWD, and the report.

Flow: a generations manifest (:mod:`.manifest`) -> embedders from the backend registry -> metrics (:mod:`.metrics`,
each distinct image and prompt embedded once, cached by content hash in :mod:`.embeddings`) -> SWD for every
pair (:mod:`.swd`); the VQA score (:mod:`.vqa_score`) and the benchmark grid (:mod:`.protocol`) -> ``per_image.parquet``, ``summary.json``, ``report.html``, scatter plots (:mod:`.report`).
"""

from .evaluator import EvalConfig, Evaluation, evaluate_generations
from .manifest import Generations, import_dreambench, read_generations, write_generations
from .protocol import protocol_coverage, protocol_grid
from .report import summarize, write_report
from .swd import SWD, similarity_weighted_diversity, swd_table
from .vqa_score import DEFAULT_QUESTIONS, AnswerStore, VQAScore

__all__ = [
    "DEFAULT_QUESTIONS", "SWD", "AnswerStore", "EvalConfig", "VQAScore", "protocol_coverage", "protocol_grid", "Evaluation", "Generations", "evaluate_generations", "import_dreambench",
    "read_generations", "similarity_weighted_diversity", "summarize", "swd_table", "write_generations",
    "write_report",
]
