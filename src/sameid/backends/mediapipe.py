"""Offline head boxes and figure masks from the models bundled inside the mediapipe wheel.

RetriBooru (arXiv 2312.02521, appendix A.1, "Vision annotations") annotates every image with a head
bounding box (YOLOv5) and a character segmentation mask (IS-Net), both trained on Danbooru. Those weights are not
shipped anywhere we can install from, so these two backends are the photo-domain stand-ins that work with no
download: mediapipe's BlazeFace face detector (its box is turned into a head box) and its selfie segmenter.

mediapipe is installed with ``pip install --no-deps mediapipe==0.10.21`` (its metadata pins numpy<2), which
``scripts/setup`` does; its runtime needs are the ``mediapipe-runtime`` extra.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

import numpy as np
from PIL import Image

from ..errors import MissingModelError, SameIdError
from ..verbosity import native_stderr_silenced
from .base import Detection, HeadDetector, Segmenter, grow_box

_INSTALL_HINT = (
    "mediapipe is not installed: run scripts/setup, or `pip install --no-deps mediapipe==0.10.21` "
    "plus `pip install sameid[mediapipe-runtime]`"
)

# BlazeFace's box spans roughly eyebrows to chin and cheek to cheek. A RetriBooru head box (a YOLOv5 head detector)
# covers the whole head, hair and headwear included, so the face box grows most upwards (forehead and hair, about
# 0.6 of the face height on portrait photos), a quarter of its width on each side (ears, hair at the sides), and a
# little below the chin. Checked by eye on skimage's astronaut and matplotlib's grace_hopper sample.
HEAD_EXPAND_TOP = 0.6
HEAD_EXPAND_SIDES = 0.25
HEAD_EXPAND_BOTTOM = 0.1


class _SharedGraph:
    """One mediapipe graph used by every backend instance of the process, serialised by a lock.

    Building a graph loads the tflite model and starts its calculators (tens of milliseconds to seconds), and a
    graph is not safe to call from two threads at once.
    """

    def __init__(self, graph: Any):
        self.graph = graph
        self.lock = threading.Lock()
        self.started = False

    def process(self, rgb: np.ndarray) -> Any:
        with self.lock:
            if self.started:
                return self.graph.process(rgb)
            # The first call starts TensorFlow Lite and absl, which print to the native stderr.
            with native_stderr_silenced():
                result = self.graph.process(rgb)
            self.started = True
            return result

    def close(self) -> None:
        with self.lock:
            self.graph.close()


_graphs: dict[tuple, _SharedGraph] = {}
_graphs_lock = threading.Lock()


def _solutions() -> Any:
    try:
        from mediapipe.python import solutions
    except ImportError as error:  # also covers a broken install (missing protobuf, absl, ...)
        raise MissingModelError(f"{_INSTALL_HINT} ({error})") from error
    return solutions


def _shared_graph(key: tuple, build) -> _SharedGraph:
    with _graphs_lock:
        shared = _graphs.get(key)
        if shared is None:
            with native_stderr_silenced():
                graph = build()
                # The graph's calculators open on their own threads once it starts, and TensorFlow Lite prints
                # then, possibly after build() has returned: fd 2 stays silenced until a first (blank) frame has
                # gone through, or a loaded machine lets the line out between two silenced blocks.
                graph.process(np.zeros((64, 64, 3), dtype=np.uint8))
            shared = _graphs[key] = _SharedGraph(graph)
            shared.started = True
        return shared


@atexit.register
def close_graphs() -> None:
    """Close every graph this process built (also run at exit); the next use builds them again."""
    with _graphs_lock:
        graphs = list(_graphs.values())
        _graphs.clear()
    for shared in graphs:
        shared.close()


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def face_box_to_head_box(
    face_box: tuple[float, float, float, float], width: int, height: int
) -> tuple[float, float, float, float]:
    """Grow a face box (pixels) into a head box covering hair, clipped to the image."""
    return grow_box(face_box, width, height, top=HEAD_EXPAND_TOP, sides=HEAD_EXPAND_SIDES, bottom=HEAD_EXPAND_BOTTOM)


class MediaPipeHeadDetector(HeadDetector):
    """Head boxes from mediapipe face detection (BlazeFace), expanded from the face to the whole head.

    ``model_selection=1`` is the full-range model (faces up to ~5 m, small faces in full-body pictures);
    ``0`` is the short-range model for close-up portraits.
    """

    def __init__(self, model_selection: int | str = 1, min_confidence: float = 0.5):
        self.model_selection = int(model_selection)
        if self.model_selection not in (0, 1):
            raise SameIdError(f"model_selection must be 0 (short range) or 1 (full range), not {model_selection!r}")
        self.min_confidence = float(min_confidence)
        self._graph()  # build now, so a broken install fails at construction, not on the first image

    def _graph(self) -> _SharedGraph:
        return _shared_graph(
            ("face_detection", self.model_selection, self.min_confidence),
            lambda: _solutions().face_detection.FaceDetection(
                model_selection=self.model_selection, min_detection_confidence=self.min_confidence
            ),
        )

    def detect_faces(self, image: Image.Image) -> list[Detection]:
        """The face boxes themselves (pixels, clipped to the image), best score first."""
        rgb = _rgb_array(image)
        height, width = rgb.shape[:2]
        result = self._graph().process(rgb)
        faces = []
        for found in result.detections or []:
            rel = found.location_data.relative_bounding_box
            x0 = min(max(rel.xmin * width, 0.0), width)
            y0 = min(max(rel.ymin * height, 0.0), height)
            x1 = min(max((rel.xmin + rel.width) * width, 0.0), width)
            y1 = min(max((rel.ymin + rel.height) * height, 0.0), height)
            if x1 > x0 and y1 > y0:
                faces.append(Detection((float(x0), float(y0), float(x1), float(y1)), float(found.score[0])))
        return sorted(faces, key=lambda d: d.score, reverse=True)

    def detect(self, image: Image.Image) -> list[Detection]:
        width, height = image.size
        return [Detection(face_box_to_head_box(f.box, width, height), f.score) for f in self.detect_faces(image)]

    def close(self) -> None:
        """Close the shared graphs (all instances); the next call builds them again."""
        close_graphs()


class MediaPipeSelfieSegmenter(Segmenter):
    """Person mask from mediapipe selfie segmentation, thresholded at ``threshold`` (0.5).

    ``model_selection=0`` is the general model (256x256 input), ``1`` the landscape one (144x256, faster).
    """

    def __init__(self, model_selection: int | str = 0, threshold: float = 0.5):
        self.model_selection = int(model_selection)
        if self.model_selection not in (0, 1):
            raise SameIdError(f"model_selection must be 0 (general) or 1 (landscape), not {model_selection!r}")
        self.threshold = float(threshold)
        self._graph()

    def _graph(self) -> _SharedGraph:
        return _shared_graph(
            ("selfie_segmentation", self.model_selection),
            lambda: _solutions().selfie_segmentation.SelfieSegmentation(model_selection=self.model_selection),
        )

    def probabilities(self, image: Image.Image) -> np.ndarray:
        """Float (H, W) person probability in [0, 1]."""
        rgb = _rgb_array(image)
        result = self._graph().process(rgb)
        return np.asarray(result.segmentation_mask, dtype=np.float32)

    def segment(self, image: Image.Image) -> np.ndarray:
        return self.probabilities(image) > self.threshold

    def close(self) -> None:
        """Close the shared graphs (all instances); the next call builds them again."""
        close_graphs()
