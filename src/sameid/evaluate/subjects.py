"""Multi-subject metrics: match the subjects found in a generation to the given subjects, then score them.

A generation of K subjects (PairHuman, arXiv 2511.16712: dual-person portraits scored by face similarity and
CLIP-T) can keep every identity, lose one, or blend them: FastComposer (arXiv 2305.10431) names this
*identity blending*, MuDI (arXiv 2404.04243) *identity mixing*, and measures it by Detect-and-Compare: detect
the subjects in the generation, compare each with every reference subject. Here, per generation:

1. **find** the subjects shown: every face (``subject_face``: the face embedder's faces, dlib by default) or every
   figure (``subject_figure``: the connected components of the ``border-colors`` figure mask, described by their
   colour signature, :mod:`sameid.dataset.subjects`), left to right;
2. **compare** each found subject i with each given subject k: S[i, k] = mean cosine over k's references (each
   reference embedded once per run, through the content-hash cache of :mod:`.embeddings`);
3. **match** by the Hungarian algorithm on S (:func:`sameid.dataset.subjects.assign`), so a swapped layout is
   matched as swapped.

Scores: ``subject_face`` / ``subject_figure`` is the mean over given subjects of S at their matched subject (the
per-subject similarity; a subject matched to nobody is left out, NaN when nothing is found); ``subject_missing``
the share of given subjects with no found subject at or above the same-identity line (``match_threshold``);
``subject_mixing`` the share of found subjects that reach the same-identity line with a given subject *other*
than their own (an unmatched found subject: with any given subject already matched elsewhere), the D&C
off-diagonal; the column ``subject_cross_similarity`` keeps its continuous value (mean over found subjects of the
highest similarity to another subject). ``subject_assignment`` lists, per given subject, the index of its found
subject (-1: none) and ``subject_similarities`` its similarity. A single-subject row is one subject (its
``subject`` and ``references``), so every manifest works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..dataset.subjects import FACE_MATCH_SIMILARITY, assign, colour_signature, figure_components
from .registry import MetricContext

#: Same-identity lines: dlib's "same person" (euclidean 0.6 on raw descriptors = cosine 0.912 on unit vectors,
#: :mod:`sameid.backends.face_dlib`); for colour signatures 0.8, between the similarity of a drawn figure to its own
#: identity (0.90-0.95 on the bundled sample) and to another character of the same artist (0.30-0.70).
MATCH_THRESHOLDS = {"faces": FACE_MATCH_SIMILARITY, "figures": 0.8}


@dataclass
class SubjectScores:
    """Per generation: per given subject its found index and similarity; the found subjects' cross similarity."""

    similarities: np.ndarray  # (K,) NaN where unmatched
    assignment: list[int]
    missing: float
    mixing: float
    cross_similarity: float


class FaceFinder:
    """Every face of an image (``embed_faces`` where the embedder has it, else its most prominent face)."""

    kind = "faces"

    def __init__(self, embedder):
        self.embedder = embedder

    def found(self, image) -> list[tuple[float, np.ndarray]]:
        if hasattr(self.embedder, "embed_faces"):
            return [(float(box[0]), vector) for box, vector in self.embedder.embed_faces(image)]
        vector = self.embedder.embed(image)
        return [] if vector is None else [(0.0, vector)]

    def reference(self, image) -> np.ndarray | None:
        return self.embedder.embed(image)


class FigureFinder:
    """Every drawn figure of an image: components of the figure mask, described by their colour signature."""

    kind = "figures"

    def __init__(self, segmenter, min_fraction: float = 0.15):
        self.segmenter, self.min_fraction = segmenter, min_fraction

    def found(self, image) -> list[tuple[float, np.ndarray]]:
        rgb = np.asarray(image.convert("RGB"))
        out = []
        for mask in figure_components(self.segmenter.segment(image), self.min_fraction):
            vector = colour_signature(rgb, mask)
            if vector is not None:
                out.append((float(np.nonzero(mask.any(axis=0))[0][0]), vector))
        return out

    def reference(self, image) -> np.ndarray | None:
        mask = self.segmenter.segment(image)
        return colour_signature(np.asarray(image.convert("RGB")), mask) if mask.any() else None


def score_subjects(found: np.ndarray, references: Sequence[np.ndarray], threshold: float) -> SubjectScores:
    """Scores of one generation: ``found`` (F, D) unit vectors left to right, ``references[k]`` (R_k, D) the
    vectors of subject k's references (rows of NaN: nothing found in that reference)."""
    subjects = len(references)
    similarity = np.full((len(found), subjects), np.nan)
    for k, vectors in enumerate(references):
        vectors = vectors[~np.isnan(vectors).any(axis=1)] if len(vectors) else vectors
        if len(found) and len(vectors):
            similarity[:, k] = (found @ vectors.T).mean(axis=1)
    result = assign(similarity)
    matched = result.matched_similarity()
    missing = float(np.mean(~(matched >= threshold))) if subjects else float("nan")
    cross, mixed = [], []
    for i in range(len(found)):
        own = result.subject_of[i]
        others = [j for j in range(subjects) if j != own]
        values = similarity[i, others] if others else np.array([])
        values = values[~np.isnan(values)]
        if not len(values):
            continue
        cross.append(float(values.max()))
        mixed.append(bool(values.max() >= threshold))
    return SubjectScores(matched, [int(v) for v in result.item_of], missing,
                         float(np.mean(mixed)) if mixed else (0.0 if len(found) else float("nan")),
                         float(np.mean(cross)) if cross else float("nan"))


class SubjectMatching:
    """The shared per-run computation of the subject metrics (built once per finder, whichever metric asks)."""

    def __init__(self, finder, store, threshold: float):
        self.finder, self.store, self.threshold = finder, store, threshold
        self._key = None
        self._scores: list[SubjectScores] = []

    def scores(self, images: Sequence[str], references: Sequence[Sequence[str]], subjects: Sequence,
               names: Sequence[str] | None = None) -> list[SubjectScores]:
        key = (tuple(images), len(references))
        if key == self._key:
            return self._scores
        from ..images import load_image

        given = [_given_subjects(row, refs) for row, refs in zip(subjects, references)]
        flat = sorted({path for subjects_ in given for refs in subjects_ for path in refs})
        vectors = dict(zip(flat, self.store.get(flat))) if flat else {}
        scores = []
        for image, subjects_ in zip(images, given):
            found = sorted(self.finder.found(load_image(image)[0]), key=lambda item: item[0])
            matrix = np.stack([v for _, v in found]).astype(np.float64) if found else np.zeros((0, 1))
            refs = [np.stack([vectors[p] for p in refs]).astype(np.float64) for refs in subjects_]
            scores.append(score_subjects(matrix, refs, self.threshold))
        self._key, self._scores = key, scores
        return scores


def _given_subjects(row, references: Sequence[str]) -> list[list[str]]:
    """The reference paths of each given subject: the ``subjects`` entry, or the row's references as one."""
    if row is None or (isinstance(row, float) and np.isnan(row)):
        return [list(references)]
    return [list(subject["references"]) for subject in row]


class SubjectMetric:
    """One column of the subject metrics (``what``: similarity | missing | mixing)."""

    inputs = ("images", "references", "subjects")

    def __init__(self, matching: SubjectMatching, name: str, what: str):
        self.matching, self.name, self.what = matching, name, what
        self._images, self._references, self._subjects = [], [], []
        self._scores: list[SubjectScores] = []

    def update(self, images, references, subjects=None) -> None:
        subjects = [None] * len(images) if subjects is None else list(subjects)
        if not len(images) == len(references) == len(subjects):
            raise ValueError(f"{self.name}: {len(images)} images, {len(references)} reference lists, "
                             f"{len(subjects)} subject lists")
        self._images.extend(images)
        self._references.extend(list(r) for r in references)
        self._subjects.extend(subjects)

    def compute(self) -> np.ndarray:
        self._scores = self.matching.scores(self._images, self._references, self._subjects)
        if self.what == "missing":
            return np.array([s.missing for s in self._scores], dtype=np.float64)
        if self.what == "mixing":
            return np.array([s.mixing for s in self._scores], dtype=np.float64)
        with np.errstate(all="ignore"):
            return np.array([np.nanmean(s.similarities) if (~np.isnan(s.similarities)).any() else np.nan
                             for s in self._scores], dtype=np.float64)

    def extra_columns(self, values) -> dict:
        if self.what == "mixing":
            return {"subject_cross_similarity": np.array([s.cross_similarity for s in self._scores])}
        if self.what == "similarity":
            return {"subject_assignment": [list(s.assignment) for s in self._scores],
                    "subject_similarities": [[None if np.isnan(v) else float(v) for v in s.similarities]
                                             for s in self._scores]}
        return {}


def _finder_kind(context: MetricContext) -> str:
    metrics = tuple(getattr(context.config, "metrics", ()))
    return "figures" if "subject_figure" in metrics and "subject_face" not in metrics else "faces"


def _matching(context: MetricContext, kind: str) -> SubjectMatching:
    from .embeddings import EmbeddingStore

    config = context.config

    def make():
        if kind == "faces":
            finder = FaceFinder(context.backend("face_embedder", config.face))
            model = f"subject-face:{config.face}"
        else:
            finder = FigureFinder(context.backend("segmenter", "border-colors"))
            model = "subject-figure:border-colors:colors"

        def embed(images):
            vectors = [finder.reference(image) for image in images]
            width = next((len(v) for v in vectors if v is not None), 1)
            return np.stack([np.full(width, np.nan, np.float32) if v is None else np.asarray(v, np.float32)
                             for v in vectors])

        store = context.store(model, lambda: EmbeddingStore(
            embed, model, inputs="image", cache=context.cache, batch_size=16, decode_workers=config.decode_workers,
            progress=context.progress))
        return SubjectMatching(finder, store, MATCH_THRESHOLDS[kind])

    # The matching (found subjects, assignments) is shared by the subject metrics of a run; its reference store is
    # one of the run's stores (counted in model calls, cached on disk).
    shared = context.__dict__.setdefault("_subject_matching", {})
    if kind not in shared:
        shared[kind] = make()
    return shared[kind]


def subject_face_metric(context: MetricContext) -> SubjectMetric:
    return SubjectMetric(_matching(context, "faces"), "subject_face", "similarity")


def subject_figure_metric(context: MetricContext) -> SubjectMetric:
    return SubjectMetric(_matching(context, "figures"), "subject_figure", "similarity")


def subject_missing_metric(context: MetricContext) -> SubjectMetric:
    return SubjectMetric(_matching(context, _finder_kind(context)), "subject_missing", "missing")


def subject_mixing_metric(context: MetricContext) -> SubjectMetric:
    return SubjectMetric(_matching(context, _finder_kind(context)), "subject_mixing", "mixing")
