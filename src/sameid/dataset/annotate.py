"""The per-image stage of the builder: read pixels, annotate head box and figure mask, answer the outfit question
or embed the face (RetriBooru, RetriBooru, arXiv 2312.02521, appendix A.1 "Vision annotations" and "Clustering
clothes"; face embeddings after Hybrid Generative Fusion, arXiv 2508.10672).

These are plain functions of (rows, config) so the same code runs in-process, in a worker pool, or on Ray Data.
Backends are built once per process from their spec strings. Nothing here raises for one bad image: a row that
cannot be used comes back with ``status="rejected"`` and a reason, an image where nothing is found comes back
with a note.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..backends import Annotations, create_backend
from ..errors import ImageError
from ..images import DEFAULT_MAX_PIXELS, is_monochrome, load_image, load_mask, perceptual_hash, save_mask

MONOCHROME = "monochrome image"
HEAD_BOX_OUTSIDE = "head box outside the image"

#: How far (pixels, or this fraction of the side if larger) a given head box may reach past the image's edge and
#: still be clipped to it rather than rejected: rounding and an off-by-one in someone's export are not errors.
HEAD_BOX_TOLERANCE_PX = 2.0
HEAD_BOX_TOLERANCE_FRACTION = 0.02

#: Columns of an annotation row (one per input image), the unit the resumable shards store.
ANNOTATION_COLUMNS = (
    "id", "status", "reason", "detail", "width", "height", "phash", "head_box", "head_box_source", "mask",
    "mask_source", "vqa_answer", "vqa_backend", "embedding", "notes", "face_boxes", "face_embeddings",
)


@dataclass(frozen=True)
class AnnotateConfig:
    """What the per-image stage does; specs are backend spec strings (``None`` = skip that annotation)."""

    grouping: str = "tags"
    head_detector: str | None = "mask-top"
    segmenter: str | None = "border-colors"
    vqa: str | None = "pixel-colors"
    face_embedder: str | None = None
    # Multi-subject photos (``--max-subjects`` K >= 2 with faces grouping): also find every face of the image,
    # with its box and embedding (``face_boxes``, ``face_embeddings``), for dataset/subjects.assign_photo_subjects.
    all_faces: bool = False
    question: str = "List top two colors of the character's clothes"
    dataset_dir: str = "."
    max_pixels: int = DEFAULT_MAX_PIXELS
    reject_monochrome: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def mask_file_name(row_id: str) -> str:
    """A file name for the mask of ``row_id`` that is safe on every file system and never collides."""
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", row_id) and not row_id.startswith("."):
        return f"{row_id}.png"
    return f"{hashlib.sha1(row_id.encode('utf-8')).hexdigest()[:20]}.png"


def _empty(row_id: str) -> dict:
    result = dict.fromkeys(ANNOTATION_COLUMNS)
    result.update(id=row_id, status="ok", notes=[])
    return result


def _rejected(row_id: str, reason: str, detail: str) -> dict:
    result = _empty(row_id)
    result.update(status="rejected", reason=reason, detail=detail)
    return result


def check_head_box(box, width: int, height: int) -> tuple[list[float] | None, str]:
    """A given head box (x0, y0, x1, y1 in pixels) clipped to a ``width`` x ``height`` image, or None with why not.

    Each side may reach past the image by :data:`HEAD_BOX_TOLERANCE_PX` pixels or
    :data:`HEAD_BOX_TOLERANCE_FRACTION` of the image side, whichever is larger; further out, or empty after
    clipping, or not x0 < x1 and y0 < y1, the box describes another image (or another size of it) and is refused.
    """
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        return None, f"head box {box!r} is not 4 numbers x0, y0, x1, y1"
    shown = f"[{x0:g}, {y0:g}, {x1:g}, {y1:g}]"
    if not all(np.isfinite(v) for v in (x0, y0, x1, y1)) or not (x0 < x1 and y0 < y1):
        return None, f"given head box {shown} is not x0 < x1 and y0 < y1"
    tx = max(HEAD_BOX_TOLERANCE_PX, HEAD_BOX_TOLERANCE_FRACTION * width)
    ty = max(HEAD_BOX_TOLERANCE_PX, HEAD_BOX_TOLERANCE_FRACTION * height)
    if x0 < -tx or y0 < -ty or x1 > width + tx or y1 > height + ty:
        return None, f"given head box {shown} reaches outside the {width}x{height} image"
    clipped = [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width),
               min(max(y1, 0.0), height)]
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        return None, f"given head box {shown} is empty inside the {width}x{height} image"
    return clipped, ""


def _annotate_pixels(row: dict, config: AnnotateConfig):
    """Everything but VQA for one row; returns (result, image, mask) with image None when rejected."""
    row_id = str(row["id"])
    if row.get("path_error"):
        return _rejected(row_id, row["path_error"], f"source path of {row_id!r}"), None, None
    try:
        image, _ = load_image(row["image"], max_pixels=config.max_pixels)
    except ImageError as exc:
        return _rejected(row_id, exc.reason, exc.detail), None, None
    result = _empty(row_id)
    result.update(width=image.width, height=image.height, phash=perceptual_hash(image))
    if config.grouping == "tags" and config.reject_monochrome and is_monochrome(image):
        return _rejected(row_id, MONOCHROME, "no pixel carries colour; clothing colours cannot be read"), None, None
    given_box = None
    if row.get("head_box") is not None:
        # A wrong given box is refused, not replaced by a detector's: it says the row's metadata does not
        # describe this image, so its other fields (identity, tags, mask) are suspect too.
        given_box, why = check_head_box(row["head_box"], image.width, image.height)
        if given_box is None:
            return _rejected(row_id, HEAD_BOX_OUTSIDE, why), None, None

    mask = None
    if row.get("mask"):
        try:
            mask = load_mask(row["mask"], size=image.size)
            result.update(mask=str(row["mask"]), mask_source="given")
        except ImageError as exc:
            result["notes"].append(f"given mask unusable ({exc}); recomputed")
    if mask is None and config.segmenter:
        mask = np.asarray(create_backend("segmenter", config.segmenter).segment(image), dtype=bool)
        if mask.any():
            relative = f"masks/{mask_file_name(row_id)}"
            save_mask(mask, Path(config.dataset_dir) / relative)
            result.update(mask=relative, mask_source=config.segmenter)
        else:
            mask = None
            result["notes"].append("segmenter found no figure")

    if given_box is not None:
        result.update(head_box=given_box, head_box_source="given")
    elif config.head_detector:
        detector = create_backend("head_detector", config.head_detector)
        # A detector that reads the figure mask (mask-top) reuses the mask already at hand.
        if mask is not None and hasattr(detector, "detect_in_mask"):
            detections = detector.detect_in_mask(mask)
        else:
            detections = detector.detect(image)
        if detections:
            result.update(head_box=[float(v) for v in detections[0].box], head_box_source=config.head_detector)
        else:
            result["notes"].append("no head found")

    if config.face_embedder:
        embedding = create_backend("face_embedder", config.face_embedder).embed(
            image, box=tuple(result["head_box"]) if result["head_box"] else None
        )
        if embedding is None:
            result["notes"].append("no face found")
        else:
            result["embedding"] = [float(v) for v in np.asarray(embedding, dtype=np.float32)]
        if config.all_faces:
            from ..backends.face_dlib import SUBJECT_FACE_MIN_MARGIN

            faces = create_backend("face_embedder", config.face_embedder).embed_faces(
                image, min_margin=SUBJECT_FACE_MIN_MARGIN)
            result["face_boxes"] = [[float(v) for v in box] for box, _ in faces]
            result["face_embeddings"] = [[float(v) for v in np.asarray(vector, dtype=np.float32)]
                                         for _, vector in faces]
    return result, image, mask


def annotate_rows(rows: list[dict], config: AnnotateConfig) -> list[dict]:
    """Annotate a chunk of source rows (dicts with the source table's columns). Order is kept."""
    results, pending = [], []
    for row in rows:
        result, image, mask = _annotate_pixels(row, config)
        results.append(result)
        if image is not None and config.vqa:
            pending.append((result, image, mask))
    if pending:
        vqa = create_backend("vqa", config.vqa)
        annotations = [Annotations(head_box=tuple(r["head_box"]) if r["head_box"] else None, mask=m)
                       for r, _, m in pending]
        images = [image for _, image, _ in pending]
        if hasattr(vqa, "answer_batch"):
            answers = vqa.answer_batch(images, [config.question] * len(images))
        else:
            answers = [vqa.answer(image, config.question, ann) for image, ann in zip(images, annotations)]
        for (result, _, _), answer in zip(pending, answers):
            result.update(vqa_answer=answer, vqa_backend=config.vqa)
    return results
