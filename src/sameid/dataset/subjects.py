"""Multi-subject samples: which single-subject identity each figure of a K-character post shows.

RetriBooru (arXiv 2312.02521, A.1) keeps only posts of one character; PairHuman (arXiv 2511.16712) shows that
dual-person data, each person linked to references of the same identity, is what multi-subject customisation
needs. A Danbooru post tagged with K >= 2 characters (``BuildConfig.max_subjects``) gets its subjects here, after
the single-subject rows are grouped and cleaned:

1. **find** the K figures: the connected components of the post's figure mask (the ``border-colors`` segmenter
   keeps every figure that stands apart on the background), the small ones (< ``min_component_fraction`` of the
   largest) dropped; a post whose count differs from its character tags is rejected (``subject count mismatch``);
2. **describe** each figure (its pixels inside its component) and each candidate identity: every kept
   single-subject identity of the same character by the same artist key (the outfits of that character), as the
   mean of its images' descriptors. The default descriptor is a colour signature (the square root of a CIELAB
   histogram of the figure's pixels, so a cosine is the Bhattacharyya coefficient of two colour distributions);
   ``image:<spec>`` uses an image embedder of the backend registry (``image:efficientnet-lite0``) on the figure's
   crop instead;
3. **assign** figures to characters by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the
   similarities, each figure taking the best outfit identity of its character. The assignment is kept only when
   it is clear: the best assignment must beat the second-best by ``min_margin`` (mean similarity per subject),
   and every assigned figure must reach ``min_similarity``; otherwise the post is rejected with the reason
   (``ambiguous subject assignment``, ``subject matches no identity``), never guessed;
4. **link** each subject to its references: the single-subject images of its identity, never this image and
   never one within ``near_duplicate_bits`` of its perceptual hash (``no distinct same-identity reference``
   otherwise).

A photo in which K >= 2 faces are found (``faces`` grouping, :func:`assign_photo_subjects`) takes the same
assignment on face embeddings: each face (left to right) against every kept single-subject identity (face
clusters, or given labels), an identity being the mean of its images' face embeddings; its head box is its face's,
its figure the part of the person mask nearest to its face. :func:`assign` is also what ``sameid eval`` matches
the subjects found in a generation with (:mod:`sameid.evaluate.subjects`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SameIdError

#: The per-subject columns of ``manifest.parquet`` (docs/architecture.md, "Contracts"; null on single-subject rows).
SUBJECT_COLUMNS = ("subjects", "subject_head_boxes", "subject_boxes", "subject_masks", "subject_references")
#: How a multi-subject row's ``identity`` joins its subjects' identities (left to right).
SUBJECT_SEPARATOR = " + "

COUNT_MISMATCH = "subject count mismatch"
NO_CANDIDATE = "no single-subject identity for a character"
AMBIGUOUS = "ambiguous subject assignment"
NO_MATCH = "subject matches no identity"
NO_REFERENCE = "no distinct same-identity reference"
NO_FIGURE_MASK = "no figure mask"
NO_IDENTITY_FOR_FACE = "fewer single-subject identities than faces"

#: Descriptors of subjects: drawn figures (``colors`` or ``image:<spec>``); ``faces`` for photos (the build's face
#: embedder, :func:`assign_photo_subjects`).
FACE_DESCRIPTOR = "faces"
#: dlib's "same person" line (euclidean 0.6 on raw descriptors = cosine 0.912 on unit vectors,
#: :mod:`sameid.backends.face_dlib`): the default ``min_similarity`` of a face to its identity, and the
#: same-identity line of the multi-subject metrics (:mod:`sameid.evaluate.subjects`).
FACE_MATCH_SIMILARITY = 0.912

# Colour signature: CIELAB (OpenCV's 8-bit scale) in 6 x 8 x 8 bins.
_BINS = (6, 8, 8)


@dataclass(frozen=True)
class SubjectConfig:
    """How multi-subject posts are assigned (defaults fitted on the bundled sample, see docs/multi_subject.md)."""

    max_subjects: int = 1  # 1: single-subject posts only (RetriBooru A.1); K >= 2 keeps posts of 2..K characters
    descriptor: str = "colors"  # colors | image:<image embedder spec>
    min_similarity: float = 0.6
    min_margin: float = 0.05
    min_component_fraction: float = 0.15

    def __post_init__(self):
        if int(self.max_subjects) < 1:
            raise SameIdError(f"max_subjects must be at least 1, got {self.max_subjects}")
        if self.descriptor not in ("colors", FACE_DESCRIPTOR) and not self.descriptor.startswith("image:"):
            raise SameIdError(f"unknown subject descriptor {self.descriptor!r}; choose colors or "
                              "image:<image embedder spec> (image:efficientnet-lite0) for drawn figures, "
                              f"{FACE_DESCRIPTOR} for photos")
        for name in ("min_similarity", "min_margin", "min_component_fraction"):
            value = float(getattr(self, name))
            if not np.isfinite(value) or not 0.0 <= value <= 1.0:
                raise SameIdError(f"{name} must be between 0 and 1, got {getattr(self, name)!r}")


# --- finding figures ------------------------------------------------------------------------------------------

def figure_components(mask: np.ndarray, min_fraction: float = 0.15) -> list[np.ndarray]:
    """The figures of a bool (H, W) mask: its 8-connected components of at least ``min_fraction`` of the largest
    one's area, each as a bool mask, left to right (by the column of the component's centre)."""
    import cv2

    count, labels, stats, centroids = cv2.connectedComponentsWithStats(np.asarray(mask, dtype=np.uint8), connectivity=8)
    if count <= 1:
        return []
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = [i + 1 for i in np.flatnonzero(areas >= min_fraction * areas.max())]
    keep.sort(key=lambda label: centroids[label][0])
    return [labels == label for label in keep]


def mask_box(mask: np.ndarray) -> list[float]:
    """The bounding box (x0, y0, x1, y1; x1, y1 exclusive) of a non-empty bool mask."""
    rows, cols = np.nonzero(mask)
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


# --- describing figures ---------------------------------------------------------------------------------------

def colour_signature(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """A unit vector describing the colours of ``rgb``'s (H, W, 3 uint8) pixels inside ``mask``: the square root of
    their normalised CIELAB histogram (so the cosine of two signatures is the Bhattacharyya coefficient of the
    two colour distributions). None for an empty mask."""
    import cv2

    pixels = rgb[np.asarray(mask, dtype=bool)]
    if len(pixels) == 0:
        return None
    lab = cv2.cvtColor(pixels.reshape(-1, 1, 3), cv2.COLOR_RGB2Lab).reshape(-1, 3).astype(np.int32)
    bins = np.array(_BINS)
    codes = lab * bins // 256
    flat = (codes[:, 0] * bins[1] + codes[:, 1]) * bins[2] + codes[:, 2]
    histogram = np.bincount(flat, minlength=int(np.prod(bins))).astype(np.float64)
    return np.sqrt(histogram / histogram.sum()).astype(np.float32)


class FigureDescriber:
    """Descriptors of figure crops: :func:`colour_signature`, or an image embedder on the masked crop."""

    def __init__(self, spec: str = "colors"):
        self.spec = spec
        self._embedder = None
        if spec.startswith("image:"):
            from ..backends.registry import create_backend

            self._embedder = create_backend("image_embedder", spec.partition(":")[2])

    def describe(self, rgb: np.ndarray, masks: list[np.ndarray]) -> list[np.ndarray | None]:
        if self._embedder is None:
            return [colour_signature(rgb, mask) for mask in masks]
        from PIL import Image

        crops, found = [], []
        for mask in masks:
            if not mask.any():
                found.append(False)
                continue
            x0, y0, x1, y1 = (int(v) for v in mask_box(mask))
            piece = np.where(mask[..., None], rgb, np.uint8(255))[y0:y1, x0:x1]
            crops.append(Image.fromarray(np.ascontiguousarray(piece)))
            found.append(True)
        vectors = iter(np.asarray(self._embedder.embed_images(crops)) if crops else [])
        return [next(vectors) if ok else None for ok in found]


# --- assignment -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Assignment:
    """Hungarian assignment of found items (figures, faces) to given subjects.

    ``subject_of[i]``: the subject of found item i (-1: none); ``item_of[k]``: the found item of subject k (-1:
    none); ``similarity`` the (found, subjects) matrix; ``margin`` (best minus second-best assignment, mean per
    subject; inf when there is no other assignment)."""

    subject_of: np.ndarray
    item_of: np.ndarray
    similarity: np.ndarray
    margin: float

    def matched_similarity(self) -> np.ndarray:
        """Per subject, the similarity of its found item (NaN when it has none)."""
        values = np.full(self.similarity.shape[1], np.nan)
        for k, i in enumerate(self.item_of):
            if i >= 0:
                values[k] = self.similarity[i, k]
        return values


def assign(similarity: np.ndarray) -> Assignment:
    """Hungarian assignment maximising the total similarity of a (found, subjects) matrix (NaN = impossible),
    with the margin to the second-best assignment (the best one with at least one of its pairs forbidden)."""
    from scipy.optimize import linear_sum_assignment

    similarity = np.asarray(similarity, dtype=np.float64)
    found, subjects = similarity.shape
    subject_of, item_of = np.full(found, -1), np.full(subjects, -1)
    if found == 0 or subjects == 0:
        return Assignment(subject_of, item_of, similarity, float("inf"))
    big = 1e6
    cost = np.where(np.isnan(similarity), big, -similarity)
    rows, cols = linear_sum_assignment(cost)
    pairs = [(r, c) for r, c in zip(rows, cols) if cost[r, c] < big]
    for r, c in pairs:
        subject_of[r], item_of[c] = c, r
    best = cost[rows, cols].sum()
    second = np.inf
    for r, c in pairs:
        forbidden = cost.copy()
        forbidden[r, c] = big
        rows2, cols2 = linear_sum_assignment(forbidden)
        total = forbidden[rows2, cols2].sum()
        if total < big / 2:  # an assignment that uses no forbidden or impossible pair
            second = min(second, total)
    margin = float((second - best) / max(1, len(pairs))) if np.isfinite(second) else float("inf")
    return Assignment(subject_of, item_of, similarity, margin)


# --- the build's pass -----------------------------------------------------------------------------------------

def _absolute(path, root: Path) -> str | None:
    if path is None or (isinstance(path, float) and np.isnan(path)) or path == "":
        return None
    return str(path if Path(path).is_absolute() else root / path)


def assign_drawn_subjects(multi: pd.DataFrame, singles: pd.DataFrame, dataset_dir: Path, config: SubjectConfig,
                          near_duplicate_bits: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Subjects of the annotated multi-character posts ``multi`` (columns id, image, mask, phash, characters and
    the artist key ``artist``) against the grouped single-subject rows ``singles`` (id, image, mask, phash,
    character, artist, identity). Returns (manifest rows of the kept posts with :data:`SUBJECT_COLUMNS`,
    rejected rows: id, reason, detail); subject masks are written under ``dataset_dir/masks``."""
    from ..images import load_image, load_mask, save_mask
    from .annotate import mask_file_name

    describer = FigureDescriber(config.descriptor)
    empty_rejected = pd.DataFrame(columns=["id", "reason", "detail"])
    if multi.empty:
        return pd.DataFrame(), empty_rejected

    # Candidate identities: (character, artist) -> identity -> mean descriptor of its images.
    needed = {(c, a) for chars, a in zip(multi["characters"], multi["artist"]) for c in chars}
    wanted = singles[[(c, a) in needed for c, a in zip(singles["character"], singles["artist"])]]
    descriptors: dict[str, list[np.ndarray]] = {}
    for row in wanted.itertuples(index=False):
        mask_path = _absolute(row.mask, dataset_dir)
        if mask_path is None:
            continue
        rgb = np.asarray(load_image(row.image)[0])
        vector = describer.describe(rgb, [load_mask(mask_path, size=(rgb.shape[1], rgb.shape[0]))])[0]
        if vector is not None:
            descriptors.setdefault(row.identity, []).append(vector)
    prototypes = {identity: np.mean(vectors, axis=0) for identity, vectors in descriptors.items()}
    candidates: dict[tuple[str, str], list[str]] = {}
    for identity, character, artist in zip(singles["identity"], singles["character"], singles["artist"]):
        if identity in prototypes and identity not in candidates.setdefault((character, artist), []):
            candidates[(character, artist)].append(identity)
    members = singles.groupby("identity")["id"].apply(list).to_dict()
    phash_of = dict(zip(singles["id"], singles["phash"]))

    kept, rejected = [], []

    def reject(row_id, reason, detail):
        rejected.append({"id": row_id, "reason": reason, "detail": detail})

    for row in multi.to_dict("records"):
        row_id, characters = str(row["id"]), sorted(row["characters"])
        mask_path = _absolute(row.get("mask"), dataset_dir)
        if mask_path is None:
            reject(row_id, NO_FIGURE_MASK, "the segmenter found no figure to split into subjects")
            continue
        rgb = np.asarray(load_image(row["image"])[0])
        figures = figure_components(load_mask(mask_path, size=(rgb.shape[1], rgb.shape[0])),
                                    config.min_component_fraction)
        if len(figures) != len(characters):
            reject(row_id, COUNT_MISMATCH, f"{len(figures)} figures found for {len(characters)} characters "
                                           f"({', '.join(characters)})")
            continue
        pools = [candidates.get((c, row["artist"]), []) for c in characters]
        if not all(pools):
            missing = [c for c, pool in zip(characters, pools) if not pool]
            reject(row_id, NO_CANDIDATE, f"no kept single-subject identity of {', '.join(missing)} by "
                                         f"{row['artist']}")
            continue
        vectors = describer.describe(rgb, figures)
        similarity = np.full((len(figures), len(characters)), np.nan)
        best_identity = np.empty((len(figures), len(characters)), dtype=object)
        for i, vector in enumerate(vectors):
            for k, pool in enumerate(pools):
                scores = [float(vector @ prototypes[identity]) for identity in pool]
                similarity[i, k] = max(scores)
                best_identity[i, k] = pool[int(np.argmax(scores))]
        result = assign(similarity)
        matched = result.matched_similarity()
        if result.margin < config.min_margin:
            reject(row_id, AMBIGUOUS, f"best assignment beats the next by {result.margin:.3f} per subject "
                                      f"(< {config.min_margin}); similarities {np.round(similarity, 3).tolist()}")
            continue
        if np.nanmin(matched) < config.min_similarity:
            k = int(np.nanargmin(matched))
            reject(row_id, NO_MATCH, f"the figure assigned to {characters[k]} has similarity {matched[k]:.3f} "
                                     f"(< {config.min_similarity})")
            continue
        # Subjects left to right (the order of the figures).
        order = [int(result.subject_of[i]) for i in range(len(figures))]
        subjects = [str(best_identity[i, k]) for i, k in enumerate(order)]
        references = _distinct_references(row_id, row["phash"], subjects, members, phash_of, near_duplicate_bits)
        if not all(references):
            reject(row_id, NO_REFERENCE, "every single-subject image of a subject's identity is this image's "
                                         "near-duplicate")
            continue
        head_boxes, boxes, mask_paths = [], [], []
        for k, figure in enumerate(figures):
            boxes.append(mask_box(figure))
            head_boxes.append(_head_box(figure))
            relative = f"masks/{mask_file_name(f'{row_id}-subject{k}')}"
            save_mask(figure, dataset_dir / relative)
            mask_paths.append(relative)
        kept.append({**row, "identity": SUBJECT_SEPARATOR.join(subjects), "subjects": subjects,
                     "subject_head_boxes": head_boxes, "subject_boxes": boxes, "subject_masks": mask_paths,
                     "subject_references": references, "subject_margin": float(result.margin),
                     "label_check": "subjects"})
    return pd.DataFrame(kept), pd.DataFrame(rejected, columns=["id", "reason", "detail"])


def subject_faces(boxes, embeddings, min_fraction: float = 0.15) -> list[tuple[list[float], np.ndarray]]:
    """The faces of a photo that count as its subjects, left to right: (face box, unit embedding) of every face
    the annotation found (``face_boxes``, ``face_embeddings``) whose area is at least ``min_fraction`` of the
    largest one's (a face far in the background is not a subject; the same rule as drawn figures' specks)."""
    if boxes is None or embeddings is None or len(boxes) == 0:
        return []
    faces = [([float(v) for v in box], np.asarray(vector, dtype=np.float64)) for box, vector in zip(boxes, embeddings)]
    areas = [(box[2] - box[0]) * (box[3] - box[1]) for box, _ in faces]
    kept = [face for face, area in zip(faces, areas) if area >= min_fraction * max(areas)]
    return sorted(kept, key=lambda face: face[0][0])


def assign_photo_subjects(multi: pd.DataFrame, singles: pd.DataFrame, dataset_dir: Path, config: SubjectConfig,
                          near_duplicate_bits: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Subjects of the annotated photos ``multi`` in which 2..K faces were found (columns id, image, mask, phash,
    width, height, ``face_boxes`` and ``face_embeddings``: every face's box and unit embedding; the subjects are
    the faces :func:`subject_faces` keeps) against the grouped
    single-subject rows ``singles`` (id, identity, phash, ``embedding``: the face embedding of the image, None
    when the identity's label was trusted without a face). Every identity with a face embedding is a candidate,
    described by the mean of its images' embeddings, so a face's similarity to it is its mean cosine to them.
    Returns (manifest rows of the kept photos with :data:`SUBJECT_COLUMNS`, rejected rows: id, reason, detail);
    subject masks are written under ``dataset_dir/masks``."""
    empty_rejected = pd.DataFrame(columns=["id", "reason", "detail"])
    if multi.empty:
        return pd.DataFrame(), empty_rejected
    with_face = singles[singles["embedding"].notna()]
    vectors: dict[str, list[np.ndarray]] = {}
    for identity, vector in zip(with_face["identity"], with_face["embedding"]):
        vectors.setdefault(str(identity), []).append(np.asarray(vector, dtype=np.float64))
    names = sorted(vectors)
    prototypes = np.stack([np.mean(vectors[name], axis=0) for name in names]) if names else np.zeros((0, 1))
    members = singles.groupby("identity")["id"].apply(list).to_dict()
    phash_of = dict(zip(singles["id"], singles["phash"]))

    kept, rejected = [], []

    def reject(row_id, reason, detail):
        rejected.append({"id": row_id, "reason": reason, "detail": detail})

    for row in multi.to_dict("records"):
        row_id = str(row["id"])
        faces = subject_faces(row["face_boxes"], row["face_embeddings"], config.min_component_fraction)
        boxes = [box for box, _ in faces]
        if len(names) < len(faces):
            reject(row_id, NO_IDENTITY_FOR_FACE, f"{len(faces)} faces found, {len(names)} single-subject "
                                                 "identities with a face to match them with")
            continue
        found = np.stack([vector for _, vector in faces])
        similarity = found @ prototypes.T
        result = assign(similarity)
        if result.margin < config.min_margin:
            reject(row_id, AMBIGUOUS, f"best assignment beats the next by {result.margin:.3f} per subject "
                                      f"(< {config.min_margin}); {_closest(similarity, names)}")
            continue
        matched = np.array([similarity[i, k] for i, k in enumerate(result.subject_of)])
        if matched.min() < config.min_similarity:
            i = int(matched.argmin())
            reject(row_id, NO_MATCH, f"face {i} (left to right, box {[round(v) for v in boxes[i]]}) has similarity "
                                     f"{matched[i]:.3f} (< {config.min_similarity}) to its assigned identity "
                                     f"{names[result.subject_of[i]]!r}; {_closest(similarity, names)}")
            continue
        subjects = [names[k] for k in result.subject_of]
        references = _distinct_references(row_id, row["phash"], subjects, members, phash_of, near_duplicate_bits)
        if not all(references):
            reject(row_id, NO_REFERENCE, "every single-subject image of a subject's identity is this image's "
                                         "near-duplicate")
            continue
        figure_boxes, mask_paths = _photo_figures(row, boxes, dataset_dir)
        kept.append({**row, "identity": SUBJECT_SEPARATOR.join(subjects), "subjects": subjects,
                     "subject_head_boxes": [_face_head_box(box, int(row["width"]), int(row["height"]))
                                            for box in boxes],
                     "subject_boxes": figure_boxes, "subject_masks": mask_paths, "subject_references": references,
                     "subject_margin": float(result.margin), "label_check": "subjects"})
    return pd.DataFrame(kept), pd.DataFrame(rejected, columns=["id", "reason", "detail"])


def _closest(similarity: np.ndarray, names: list[str]) -> str:
    """Per face, its two most similar identities with their similarities (the detail of a rejection)."""
    parts = []
    for i, values in enumerate(similarity):
        top = np.argsort(-values)[:2]
        parts.append(f"face {i}: " + ", ".join(f"{names[k]!r} {values[k]:.3f}" for k in top))
    return "; ".join(parts)


def _face_head_box(face_box: list[float], width: int, height: int) -> list[float]:
    """The head box around a face box: the growth dlib's head detector uses (:mod:`sameid.backends.face_dlib`)."""
    from ..backends.face_dlib import face_box_to_head_box

    return [float(v) for v in face_box_to_head_box(tuple(face_box), width, height)]


def _photo_figures(row: dict, face_boxes: list[list[float]], dataset_dir: Path) -> tuple[list, list]:
    """Each subject's figure in a photo of people side by side: the columns nearest to its face's centre (cut at
    the midpoints between neighbouring faces), intersected with the photo's person mask when it has one. Returns
    (figure boxes, mask paths relative to ``dataset_dir``; None for a subject whose column holds no mask pixel,
    whose figure is then its column)."""
    from ..images import load_mask, save_mask
    from .annotate import mask_file_name

    width, height = int(row["width"]), int(row["height"])
    centres = [(box[0] + box[2]) / 2 for box in face_boxes]
    cuts = [0.0] + [(a + b) / 2 for a, b in zip(centres, centres[1:])] + [float(width)]
    mask_path = _absolute(row.get("mask"), dataset_dir)
    person = load_mask(mask_path, size=(width, height)) if mask_path is not None else None
    boxes, paths = [], []
    columns = np.arange(width)
    for k in range(len(face_boxes)):
        band = [float(np.floor(cuts[k])), 0.0, float(np.ceil(cuts[k + 1])), float(height)]
        figure = None
        if person is not None:
            inside = (columns >= band[0]) & (columns < band[2])
            figure = person & inside[None, :]
        if figure is None or not figure.any():
            boxes.append(band)
            paths.append(None)
            continue
        relative = f"masks/{mask_file_name(str(row['id']) + f'-subject{k}')}"
        save_mask(figure, dataset_dir / relative)
        boxes.append(mask_box(figure))
        paths.append(relative)
    return boxes, paths


def _distinct_references(row_id: str, phash: str, subjects: list[str], members: dict, phash_of: dict,
                         near_duplicate_bits: int) -> list[list[str]]:
    """Per subject, the ids of its identity's single-subject images: never ``row_id``, never an image within
    ``near_duplicate_bits`` of its perceptual hash."""
    own_hash = int(str(phash), 16)
    return [[other for other in members.get(identity, []) if other != row_id
             and (own_hash ^ int(str(phash_of[other]), 16)).bit_count() > near_duplicate_bits]
            for identity in subjects]


def _head_box(figure: np.ndarray) -> list[float] | None:
    from ..backends.figure import MaskTopHeadDetector

    detections = MaskTopHeadDetector().detect_in_mask(figure)
    return [float(v) for v in detections[0].box] if detections else None


def is_multi_subject(frame: pd.DataFrame) -> np.ndarray:
    """Per manifest row, whether it is a multi-subject row (a non-null ``subjects`` list)."""
    if "subjects" not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    return np.array([value is not None and not (isinstance(value, float) and np.isnan(value))
                     for value in frame["subjects"]], dtype=bool)


def append_subject_rows(manifest: pd.DataFrame, kept: pd.DataFrame, out: Path) -> pd.DataFrame:
    """``manifest`` (single-subject rows) with the multi-subject rows ``kept`` (from :func:`assign_drawn_subjects`
    or :func:`assign_photo_subjects`) after it, and the :data:`SUBJECT_COLUMNS` (null on single-subject rows). A multi-subject row is its own group:
    ``similar`` and ``near_duplicates`` are empty, ``head_box`` is null (each subject has its own), ``mask`` is
    the union of the subjects' masks, paths are absolute like every path of the manifest."""
    manifest = manifest.copy()
    for column in SUBJECT_COLUMNS:
        manifest[column] = None
    if kept is None or kept.empty:
        return manifest
    frame = pd.DataFrame({
        "id": kept["id"].astype(str), "image": kept["image"].astype(str), "identity": kept["identity"].astype(str),
        "similar": [[] for _ in range(len(kept))], "caption": kept["caption"].fillna("").astype(str),
        "tags": kept["tags"].map(list), "head_box": None,
        "mask": [_absolute(m, out) for m in kept["mask"]],
        "width": kept["width"].astype("int64"), "height": kept["height"].astype("int64"),
        "phash": kept["phash"].astype(str), "near_duplicates": [[] for _ in range(len(kept))],
    })
    for column in ("artist", "cloth_tags", "mask_source", "label_check", "notes"):
        if column in manifest.columns and column in kept.columns:
            frame[column] = kept[column].to_numpy()
    if "character" in manifest.columns:
        frame["character"] = [" ".join(identity.split("|")[0] for identity in subjects)
                              for subjects in kept["subjects"]]
    frame["subjects"] = kept["subjects"].map(list).to_numpy()
    frame["subject_head_boxes"] = kept["subject_head_boxes"].to_numpy()
    frame["subject_boxes"] = kept["subject_boxes"].to_numpy()
    frame["subject_masks"] = [[_absolute(m, out) for m in masks] for masks in kept["subject_masks"]]
    frame["subject_references"] = kept["subject_references"].to_numpy()
    return pd.concat([manifest, frame[[c for c in manifest.columns if c in frame.columns]]], ignore_index=True)
