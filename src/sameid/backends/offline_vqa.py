"""An offline VQA answerer for the VQA score: clothing colours from pixels, head orientation from face landmarks.

The VQA score (RetriBooru, arXiv 2312.02521, appendix A.2, :mod:`sameid.evaluate.vqa_score`)
asks a VQA model descriptive questions about each generation and its references. With no model weights available,
:class:`OfflineVQA` (``--vqa offline``) answers the two questions that a bundled model or plain pixels can:

- "List top two colors of the character's clothes" (appendix A.1): :class:`~sameid.backends.pixel_vqa.PixelColorVQA`,
  the pixel-based answerer of ``sameid build``;
- "Which direction is the head facing?": ``left``, ``right``, ``front``, ``up`` or ``down``, from the 468 3-D
  landmarks of mediapipe's face mesh (bundled in the mediapipe wheel). The face's normal is the cross product of
  the eye-corner axis and the chin-to-forehead axis; yaw and pitch are its angles. ``left`` and ``right`` are as
  the viewer sees the image (a head facing ``left`` looks towards the image's left edge), so a mirrored image
  gets the other answer. A turn past :data:`TURN_DEGREES` names the larger of yaw and pitch; below it, ``front``.
  An image in which no face is found is answered ``no face visible``: the VQA score embeds answers as text, and a
  VQA model asked about a faceless image says as much.

Any other question raises :class:`SameIdError` naming a VQA model: ``--vqa transformers:<model id>``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..errors import SameIdError
from .base import Annotations, VQABackend, grow_box
from .mediapipe import _rgb_array, _shared_graph, _solutions
from .pixel_vqa import PixelColorVQA, is_clothing_color_question

# Face mesh landmark indices (mediapipe's canonical face model): outer eye corners, forehead top, chin.
_RIGHT_EYE_OUTER, _LEFT_EYE_OUTER, _FOREHEAD, _CHIN = 33, 263, 10, 152
# A head turned less than this (degrees of yaw or pitch) faces the front. mediapipe's frontal portraits measure
# within about 10 degrees; a three-quarter view is about 30-45.
TURN_DEGREES = 15.0
NO_FACE = "no face visible"

_HEAD_WORDS = re.compile(r"\b(head|face)\b")
_DIRECTION_WORDS = re.compile(r"\b(direction|facing|faces|turned|turning|orientation|oriented|pose)\b")


#: The questions :class:`OfflineVQA` answers, for a VQA score with no downloaded model.
OFFLINE_QUESTIONS = ("List top two colors of the character's clothes", "Which direction is the head facing?")


def is_head_direction_question(question: str) -> bool:
    """True for "Which direction is the head facing?" and close variants ("Where is the face turned?")."""
    text = question.lower()
    return bool(_HEAD_WORDS.search(text) and _DIRECTION_WORDS.search(text))


@dataclass(frozen=True)
class HeadPose:
    """Yaw (> 0: towards the image's right) and pitch (> 0: up) of the face's normal, in degrees."""

    yaw: float
    pitch: float

    def direction(self, turn_degrees: float = TURN_DEGREES) -> str:
        if max(abs(self.yaw), abs(self.pitch)) < turn_degrees:
            return "front"
        if abs(self.yaw) >= abs(self.pitch):
            return "right" if self.yaw > 0 else "left"
        return "up" if self.pitch > 0 else "down"


def pose_from_landmarks(points: np.ndarray) -> HeadPose:
    """Head pose from (468+, 3) face mesh landmarks in pixels (x right, y down, z away from the camera)."""
    across = points[_LEFT_EYE_OUTER] - points[_RIGHT_EYE_OUTER]  # image-right on a frontal face
    upward = points[_FOREHEAD] - points[_CHIN]  # image-up on an upright face
    across = across / np.linalg.norm(across)
    upward = upward - (upward @ across) * across
    upward = upward / np.linalg.norm(upward)
    normal = np.cross(across, upward)  # towards the camera (z < 0) on a frontal face
    return HeadPose(yaw=math.degrees(math.atan2(normal[0], -normal[2])),
                    pitch=math.degrees(math.atan2(-normal[1], -normal[2])))


class OfflineVQA(VQABackend):
    """Clothing colours (pixels) and head direction (mediapipe face mesh) with no downloaded model.

    ``segmenter`` (the spec argument, ``offline:mediapipe-selfie``) is the figure segmenter of the colour answer.
    """

    def __init__(self, segmenter: str = "grabcut", turn_degrees: float = TURN_DEGREES):
        self.colors = PixelColorVQA(segmenter)
        self.turn_degrees = float(turn_degrees)
        self._mesh()  # build now, so a broken mediapipe install fails at construction, not on the first image

    def _mesh(self) -> Any:
        return _shared_graph(("face_mesh", 1), lambda: _solutions().face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=False, min_detection_confidence=0.5))

    def answer(self, image: Image.Image, question: str, annotations: Annotations | None = None) -> str:
        if is_clothing_color_question(question):
            return self.colors.answer(image, question, annotations)
        if is_head_direction_question(question):
            pose = self.head_pose(image, annotations)
            return NO_FACE if pose is None else pose.direction(self.turn_degrees)
        raise SameIdError(f"the offline VQA backend answers only the colours of the character's clothes and the "
                          f"direction the head is facing, not {question!r}; use a VQA model: --vqa "
                          "transformers:<model id> (for example transformers:Salesforce/blip-vqa-base)")

    def head_pose(self, image: Image.Image, annotations: Annotations | None = None) -> HeadPose | None:
        """Yaw and pitch of the most prominent face, or None when the face mesh finds none.

        With a head box in ``annotations`` the mesh runs on the box (grown by half its size on each side), so a
        small face in a full-body picture is within reach of the mesh's short-range face detector.
        """
        rgb = _rgb_array(image)
        height, width = rgb.shape[:2]
        x0 = y0 = 0
        if annotations is not None and annotations.head_box is not None:
            box = grow_box(annotations.head_box, width, height, top=0.5, sides=0.5, bottom=0.5)
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            if x1 - x0 >= 8 and y1 - y0 >= 8:
                rgb = np.ascontiguousarray(rgb[y0:y1, x0:x1])
            else:
                x0 = y0 = 0
        crop_height, crop_width = rgb.shape[:2]
        result = self._mesh().process(rgb)
        if not result.multi_face_landmarks:
            return None
        landmarks = result.multi_face_landmarks[0].landmark
        # x and y are fractions of the width and height, z is on the scale of x: all to pixels
        points = np.array([(p.x * crop_width + x0, p.y * crop_height + y0, p.z * crop_width) for p in landmarks])
        return pose_from_landmarks(points)
