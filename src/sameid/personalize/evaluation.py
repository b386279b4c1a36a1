"""The pretrained and the personalized backbone, side by side, on held-out real images among distractors.

Personalized Representation from Personalized Generation (arXiv 2412.16156, evaluation) evaluates a personalized backbone
against the pretrained one on real test images: one-vs-all classification (PR-AUC) and retrieval (NDCG), per
instance and averaged over instances. :func:`compare` scores one instance with both backbones
(:func:`sameid.personalize.metrics.instance_scores`); :func:`plot_scores` draws, for each backbone, the scores of
held-out images of the instance and of distractors (the better backbone separates the two).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import write_atomic
from .metrics import cosine_scores, instance_scores

METRICS = ("pr_auc", "ndcg", "map")
BACKBONES = ("pretrained", "personalized")


def compare(embeddings: dict[str, tuple[np.ndarray, np.ndarray]], labels) -> dict[str, dict[str, float]]:
    """``{backbone: (anchor embeddings, gallery embeddings)}`` -> ``{backbone: {metric: value}}``."""
    return {name: instance_scores(anchors, gallery, labels) for name, (anchors, gallery) in embeddings.items()}


def classification_scores(anchors: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Each gallery image's mean cosine similarity to the anchors (the classification score)."""
    return cosine_scores(anchors, gallery).mean(axis=0)


def mean_scores(per_instance: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """The mean of every metric of every backbone over instances."""
    return {backbone: {metric: float(np.mean([row[backbone][metric] for row in per_instance]))
                       for metric in METRICS}
            for backbone in per_instance[0]} if per_instance else {}


def plot_scores(scores: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """Histograms of classification scores, one panel per backbone: ``{backbone: (instance scores, distractor
    scores)}``; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(scores), figsize=(4.2 * len(scores), 3.2), squeeze=False)
    low = min(float(np.min(np.r_[a, b])) for a, b in scores.values())
    high = max(float(np.max(np.r_[a, b])) for a, b in scores.values())
    bins = np.linspace(low, high if high > low else low + 1e-3, 30)
    for axis, (name, (positive, negative)) in zip(axes[0], scores.items()):
        axis.hist(negative, bins=bins, alpha=0.6, label=f"distractors ({len(negative)})", color="#888888",
                  density=True)
        axis.hist(positive, bins=bins, alpha=0.7, label=f"instance, held out ({len(positive)})", color="#d62728",
                  density=True)
        axis.set_title(name)
        axis.set_xlabel("mean cosine similarity to the real images")
        axis.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=90), suffix=".png")
    plt.close(figure)
    return path
