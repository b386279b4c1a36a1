"""The metrics of the personalized-representation protocol, in numpy, equal to scikit-learn's on any input.

Personalized Representation from Personalized Generation (arXiv 2412.16156, evaluation) scores a backbone on real
held-out images of the instance among distractors by one-vs-all classification (**PR-AUC**, the area under the
precision-recall curve as average precision) and retrieval (**NDCG**; we add mean average precision). Both are
written here without scikit-learn so that the meaning of ties is explicit; tests check them against
``sklearn.metrics.average_precision_score`` and ``sklearn.metrics.ndcg_score`` (whose default tie rule, averaging
the gains of tied scores, is the one used here).
"""

from __future__ import annotations

import numpy as np


def _groups_descending(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order of ``scores`` from high to low and the end index (exclusive) of each run of equal scores."""
    order = np.argsort(-scores, kind="mergesort")
    ordered = scores[order]
    ends = np.r_[np.flatnonzero(np.diff(ordered) != 0) + 1, len(ordered)]
    return order, ends


def average_precision(labels, scores) -> float:
    """Average precision, sum over thresholds of (recall step) x precision; tied scores form one threshold.

    NaN when there is no positive (scikit-learn warns and returns 0 there; a caller here must not average it).
    """
    labels = np.asarray(labels, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.size} and {scores.size}")
    positives = int(labels.sum())
    if positives == 0:
        return float("nan")
    order, ends = _groups_descending(scores)
    hits = np.cumsum(labels[order])[ends - 1]
    precision = hits / ends
    recall = hits / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pr_auc(labels, scores) -> float:
    """One-vs-all classification PR-AUC: :func:`average_precision` of ``scores`` against ``labels``."""
    return average_precision(labels, scores)


def _dcg(relevance: np.ndarray, scores: np.ndarray, k: int | None) -> float:
    order, ends = _groups_descending(scores)
    count = len(scores)
    discount = 1.0 / np.log2(np.arange(count) + 2.0)
    if k is not None:
        discount[k:] = 0.0
    gains = relevance[order]
    starts = np.r_[0, ends[:-1]]
    total = 0.0
    for start, end in zip(starts, ends):
        total += gains[start:end].mean() * discount[start:end].sum()
    return float(total)


def ndcg(relevance, scores, k: int | None = None) -> float:
    """Normalised discounted cumulative gain of one ranking: DCG of ``scores``' order (tied scores share their
    gains' mean) over the DCG of the ideal order; ``k`` truncates both. 0 when nothing is relevant."""
    relevance = np.asarray(relevance, dtype=np.float64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if relevance.shape != scores.shape:
        raise ValueError(f"relevance and scores differ in length: {relevance.size} and {scores.size}")
    if relevance.size < 2:
        raise ValueError("NDCG needs at least two documents to rank")
    ideal = _dcg(relevance, relevance, k)
    return 0.0 if ideal == 0 else _dcg(relevance, scores, k) / ideal


def cosine_scores(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """(Q, G) cosine similarities of L2-normalised rows."""
    return np.asarray(queries, np.float64) @ np.asarray(gallery, np.float64).T


def instance_scores(anchors: np.ndarray, gallery: np.ndarray, labels) -> dict[str, float]:
    """The protocol on one instance for one backbone.

    ``anchors``: embeddings of the real training images of the instance; ``gallery``: embeddings of held-out real
    images of the instance (``labels`` True) and distractors (False). Classification scores each gallery image by
    its mean cosine similarity to the anchors (``pr_auc``); retrieval ranks the gallery for each anchor as a query
    and averages NDCG and average precision over the queries (``ndcg``, ``map``).
    """
    labels = np.asarray(labels, dtype=bool)
    similarity = cosine_scores(anchors, gallery)
    return {
        "pr_auc": pr_auc(labels, similarity.mean(axis=0)),
        "ndcg": float(np.mean([ndcg(labels, row) for row in similarity])),
        "map": float(np.mean([average_precision(labels, row) for row in similarity])),
    }
