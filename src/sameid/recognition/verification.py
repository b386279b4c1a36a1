"""Face verification on pairs in LFW's ``pairs.txt`` format, and such a file made from a dataset dir.

The format (Huang et al., Labeled Faces in the Wild, 2007; the ``pairs.txt`` of the LFW site): an optional first
line ``<folds> <pairs per class per fold>`` (``10 300``), then one pair per line, ``name n1 n2`` (two images of one
person) or ``name1 n1 name2 n2`` (two people), ``n`` the 1-based image number. In LFW each fold is its positive
lines then its negative lines; a file without the header is split into ``folds`` consecutive blocks. Names here are
identities percent-encoded (``urllib.parse.quote``: no spaces), which leaves LFW's names as they are.

The measure (LFW's "unrestricted" protocol, as face-recognition papers report it, and Hybrid Generative Fusion,
arXiv 2508.10672): 10-fold accuracy, the threshold chosen on nine folds and tested on the tenth, mean and
standard deviation over folds; and TAR at fixed FAR from the ROC of all pairs (``sklearn.metrics.roc_curve``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np

from ..atomic import write_text_atomic
from ..errors import SameIdError

DEFAULT_FARS = (1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class Pair:
    name_a: str
    index_a: int  # 1-based, as in LFW
    name_b: str
    index_b: int
    fold: int

    @property
    def same(self) -> bool:
        return self.name_a == self.name_b


def read_pairs(path: str | os.PathLike, folds: int = 10) -> list[Pair]:
    """The pairs of a ``pairs.txt``, each with its fold. A malformed line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise SameIdError(f"{path}: pairs file not found")
    lines = [(number, line.split()) for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if line.strip()]
    per_fold = None
    if lines and len(lines[0][1]) in (1, 2) and all(part.isdigit() for part in lines[0][1]):
        header = [int(part) for part in lines[0][1]]
        folds = header[0]
        per_fold = header[1] if len(header) == 2 else None
        lines = lines[1:]
    if folds < 2:
        raise SameIdError(f"{path}: needs at least 2 folds, the header says {folds}")
    parsed = []
    for number, parts in lines:
        try:
            if len(parts) == 3:
                parsed.append((unquote(parts[0]), int(parts[1]), unquote(parts[0]), int(parts[2])))
            elif len(parts) == 4:
                parsed.append((unquote(parts[0]), int(parts[1]), unquote(parts[2]), int(parts[3])))
            else:
                raise ValueError
        except ValueError:
            raise SameIdError(f"{path}:{number}: expected 'name n1 n2' or 'name1 n1 name2 n2', got "
                              f"{' '.join(parts)!r}") from None
    if not parsed:
        raise SameIdError(f"{path}: no pairs")
    block = 2 * per_fold if per_fold else None
    if block and block * folds != len(parsed):
        raise SameIdError(f"{path}: the header says {folds} folds of {per_fold} + {per_fold} pairs "
                          f"({block * folds}), the file has {len(parsed)}")
    n = len(parsed)
    return [Pair(a, i, b, j, (k // block) if block else (k * folds // n)) for k, (a, i, b, j) in enumerate(parsed)]


def write_pairs(path: str | os.PathLike, folds: list[tuple[list[tuple], list[tuple]]]) -> Path:
    """Write ``pairs.txt`` atomically: per fold, positives ``(name, n1, n2)`` then negatives ``(name1, n1, name2,
    n2)``; every fold must hold the same number of each (the header ``<folds> <n>``)."""
    per_fold = {len(p) for p, _ in folds} | {len(q) for _, q in folds}
    if len(per_fold) != 1:
        raise SameIdError(f"pairs: folds of unequal size {sorted(per_fold)}")
    lines = [f"{len(folds)} {per_fold.pop()}"]
    for positives, negatives in folds:
        lines += [f"{quote(a, safe='')}\t{i}\t{j}" for a, i, j in positives]
        lines += [f"{quote(a, safe='')}\t{i}\t{quote(b, safe='')}\t{j}" for a, i, b, j in negatives]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def make_pairs(manifest, identities: list[str], folds: int = 10, per_fold: int = 300, seed: int = 0
               ) -> list[tuple[list[tuple], list[tuple]]]:
    """LFW-style folds over ``identities`` of a :class:`~sameid.pairs.manifest.DatasetManifest`: identities are
    split into ``folds`` disjoint groups (as LFW's folds are disjoint in people); each fold gets ``n`` positive
    pairs (two original images of one identity, never near-duplicates of each other) and ``n`` negative pairs (two
    identities of the fold), ``n`` = ``per_fold`` or the most every fold can give. Augmented images
    (``augmented_from``) are never used. Image numbers are 1-based positions in the identity's manifest rows."""
    rng = np.random.default_rng(seed)
    frame = manifest.frame
    augmented = (frame["augmented_from"].notna().to_numpy() if "augmented_from" in frame.columns
                 else np.zeros(len(frame), dtype=bool))
    rows_of = manifest.identity_rows()
    missing = [i for i in identities if i not in rows_of]
    if missing:
        raise SameIdError(f"pairs: identities not in the dataset: {', '.join(missing[:3])}")
    order = [identities[i] for i in rng.permutation(len(identities))]
    groups = [order[k::folds] for k in range(folds)]
    if any(len(group) < 2 for group in groups):
        raise SameIdError(f"pairs: {len(identities)} held-out identities cannot make {folds} folds of at least 2 "
                          "identities; hold out more identities or use fewer folds")
    candidates = []
    for group in groups:
        positives, negatives = [], []
        originals = {name: [(k + 1, r) for k, r in enumerate(rows_of[name]) if not augmented[r]] for name in group}
        for name in group:
            images = originals[name]
            for x in range(len(images)):
                for y in range(x + 1, len(images)):
                    (i, ri), (j, rj) = images[x], images[y]
                    if rj not in manifest.near_duplicates[ri]:
                        positives.append((name, i, j))
        for x, name_a in enumerate(group):
            for name_b in group[x + 1:]:
                negatives += [(name_a, i, name_b, j) for i, _ in originals[name_a] for j, _ in originals[name_b]]
        candidates.append((positives, negatives))
    n = min(per_fold, *(min(len(p), len(q)) for p, q in candidates))
    if n < 1:
        raise SameIdError("pairs: a fold has no positive pair (held-out identities need two distinct original images)")
    chosen = []
    for positives, negatives in candidates:
        pick = lambda items: [items[k] for k in sorted(rng.choice(len(items), size=n, replace=False))]  # noqa: E731
        chosen.append((pick(positives), pick(negatives)))
    return chosen


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold t maximising the accuracy of "same when score > t" (midpoints between sorted scores; the
    lowest such t on ties)."""
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], labels[order].astype(bool)
    # accuracy when the first k (lowest) are called different: negatives among them + positives after them
    negatives_below = np.concatenate([[0], np.cumsum(~y)])
    positives_above = y.sum() - np.concatenate([[0], np.cumsum(y)])
    correct = negatives_below + positives_above
    # only cut between distinct scores
    cuts = np.concatenate([[True], s[1:] != s[:-1], [True]])
    correct = np.where(cuts, correct, -1)
    k = int(np.argmax(correct))
    if k == 0:
        return float(s[0] - 1.0)
    if k == len(s):
        return float(s[-1])
    return float((s[k - 1] + s[k]) / 2.0)


@dataclass
class VerificationMetrics:
    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    thresholds: list[float]
    tar_at_far: dict[str, float]
    auc: float
    n_pairs: int
    n_positive: int
    extra: dict = field(default_factory=dict)

    def describe(self) -> str:
        tars = ", ".join(f"TAR@FAR={far} {tar:.4f}" for far, tar in self.tar_at_far.items())
        return (f"{len(self.fold_accuracies)}-fold accuracy {self.accuracy:.4f} +- {self.accuracy_std:.4f} on "
                f"{self.n_pairs} pairs ({self.n_positive} same); ROC AUC {self.auc:.4f}; {tars}")

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "accuracy_std": self.accuracy_std, "fold_accuracies": self.fold_accuracies,
                "thresholds": self.thresholds, "tar_at_far": self.tar_at_far, "auc": self.auc,
                "n_pairs": self.n_pairs, "n_positive": self.n_positive, **self.extra}


def verification_metrics(scores, labels, folds, fars=DEFAULT_FARS) -> VerificationMetrics:
    """k-fold accuracy (threshold from the other folds) and TAR@FAR (highest true-accept rate at a false-accept
    rate <= FAR on the ROC of all pairs) of similarity ``scores`` for ``labels`` (1 same, 0 different)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    scores, labels, folds = np.asarray(scores, float), np.asarray(labels, int), np.asarray(folds, int)
    if not (len(scores) == len(labels) == len(folds)) or len(scores) == 0:
        raise SameIdError("verification: scores, labels and folds must be non-empty and of one length")
    if labels.min() == labels.max():
        raise SameIdError("verification: the pairs must hold both same and different pairs")
    accuracies, thresholds = [], []
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        threshold = best_threshold(scores[train], labels[train])
        thresholds.append(threshold)
        accuracies.append(float(np.mean((scores[test] > threshold) == labels[test].astype(bool))))
    fpr, tpr, _ = roc_curve(labels, scores)
    tar = {f"{far:g}": float(tpr[fpr <= far].max()) if np.any(fpr <= far) else 0.0 for far in fars}
    return VerificationMetrics(float(np.mean(accuracies)), float(np.std(accuracies)), accuracies, thresholds, tar,
                               float(roc_auc_score(labels, scores)), int(len(scores)), int(labels.sum()))


@dataclass
class PairsFileResult:
    out: Path
    identities: list[str]
    folds: int
    per_fold: int

    def describe(self) -> str:
        return (f"{self.folds} folds x ({self.per_fold} same + {self.per_fold} different) pairs over "
                f"{len(self.identities)} held-out identities: {self.out} (train with --exclude-pairs {self.out})")


def write_dataset_pairs(dataset_dir, out, *, holdout: float = 0.2, folds: int = 10, per_fold: int = 300,
                        seed: int = 0) -> PairsFileResult:
    """A ``pairs.txt`` over a random ``holdout`` fraction of the dataset's identities that have two distinct original
    images (:func:`make_pairs`); recognition training leaves those identities out (``exclude_pairs``)."""
    from ..pairs.manifest import load_manifest
    from ..settings import as_float, as_int

    holdout = as_float("pairs", "holdout (a fraction of identities)", holdout, above=0.0, maximum=1.0)
    folds = as_int("pairs", "folds", folds, minimum=2)
    per_fold = as_int("pairs", "per_fold", per_fold, minimum=1)
    out = Path(out)
    if out.exists():
        raise SameIdError(f"{out} exists; choose another --out")
    manifest = load_manifest(dataset_dir)
    frame = manifest.frame
    augmented = (frame["augmented_from"].notna().to_numpy() if "augmented_from" in frame.columns
                 else np.zeros(len(frame), dtype=bool))
    eligible = sorted(name for name, rows in manifest.identity_rows().items()
                      if any(b not in manifest.near_duplicates[a] for a in rows if not augmented[a]
                             for b in rows if b != a and not augmented[b]))
    count = max(2 * folds, round(holdout * len(eligible)))
    if count > len(eligible):
        raise SameIdError(f"{dataset_dir}: {len(eligible)} identities have two distinct original images; {folds} folds "
                          f"need at least {2 * folds}")
    rng = np.random.default_rng([seed, 3])
    chosen = sorted(eligible[k] for k in rng.choice(len(eligible), size=count, replace=False))
    made = make_pairs(manifest, chosen, folds=folds, per_fold=per_fold, seed=seed)
    write_pairs(out, made)
    return PairsFileResult(out, chosen, folds, len(made[0][0]))
