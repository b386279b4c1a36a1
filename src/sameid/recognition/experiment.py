"""The curriculum vs shuffle check of Hybrid Generative Fusion (arXiv 2508.10672, "Curriculum Learning
Validation": train the same model on the same data once in curriculum order and once shuffled, compare training
curves and verification): one command, ``sameid recognition compare``.

Both runs share every setting but ``order`` (same seed, so the same initial weights and the same flips), and both are
scored on the same pairs file, whose identities neither run trains on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..atomic import write_json_atomic
from .evaluate import RecognitionEvalResult, evaluate_recognition
from .train import ORDERS, RecognitionConfig, RecognitionResult, train_recognition

COMPARISON_FILE = "comparison.json"


@dataclass
class ComparisonResult:
    out: Path
    runs: dict[str, RecognitionResult]
    evaluations: dict[str, RecognitionEvalResult]

    def describe(self) -> str:
        lines = [f"curriculum vs shuffle: {self.out / COMPARISON_FILE}"]
        for order in ORDERS:
            run, metrics = self.runs[order], self.evaluations[order].metrics
            tail = float(np.mean(run.losses[-max(1, len(run.losses) // 10):]))
            tars = ", ".join(f"TAR@FAR={k} {v:.3f}" for k, v in metrics.tar_at_far.items())
            lines.append(f"  {order:10s} accuracy {metrics.accuracy:.4f} +- {metrics.accuracy_std:.4f}, AUC "
                         f"{metrics.auc:.4f}, {tars}; final loss {tail:.3f}")
        return "\n".join(lines)


def compare_orders(config: RecognitionConfig, pairs_file, *, resume: bool = False) -> ComparisonResult:
    """Train ``config`` in each order into ``config.out/<order>`` and verify both on ``pairs_file`` (whose identities
    are left out of training); writes ``comparison.json`` into ``config.out``."""
    out = Path(config.out)
    runs, evaluations = {}, {}
    for order in ORDERS:
        run_config = replace(config, order=order, out=str(out / order), exclude_pairs=str(pairs_file))
        runs[order] = train_recognition(run_config, resume=resume)
        evaluations[order] = evaluate_recognition(out / order, pairs_file, config.dataset,
                                                  out=out / order / "verification.json", device=config.device)
    settings = {k: v for k, v in config.content().items() if k not in ("order", "exclude_pairs")}
    summary = {"dataset": config.dataset, "pairs": str(pairs_file), "settings": settings}
    for order in ORDERS:
        run = runs[order]
        summary[order] = {"steps": run.steps, "losses": run.losses, **evaluations[order].metrics.to_dict()}
    write_json_atomic(out / COMPARISON_FILE, summary)
    return ComparisonResult(out, runs, evaluations)
