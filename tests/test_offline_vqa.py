"""The offline VQA answerer: head direction from mediapipe face mesh landmarks on real photos shipped with
packages (skimage's astronaut: a frontal portrait; skimage's camera: a man in profile facing the image's right),
their mirrors, landmark geometry under known rotations, clothing colours and refused questions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from sameid.backends.base import Annotations
from sameid.backends.offline_vqa import HeadPose, OfflineVQA, is_head_direction_question, pose_from_landmarks
from sameid.backends.registry import create_backend
from sameid.errors import SameIdError

skimage_data = pytest.importorskip("skimage.data")
QUESTION = "Which direction is the head facing?"


@pytest.fixture(scope="module")
def vqa():
    return create_backend("vqa", "offline")


def test_registered_and_question_matching(vqa):
    assert isinstance(vqa, OfflineVQA)
    assert is_head_direction_question(QUESTION) and is_head_direction_question("Where is the face turned?")
    assert not is_head_direction_question("List top two colors of the character's clothes")
    with pytest.raises(SameIdError, match="--vqa transformers:"):
        vqa.answer(Image.new("RGB", (32, 32)), "Describe the facial expression of the character.")


def test_astronaut_faces_front_and_mirror_flips_yaw(vqa):
    image = Image.fromarray(skimage_data.astronaut())
    pose, mirrored = vqa.head_pose(image), vqa.head_pose(ImageOps.mirror(image))
    assert vqa.answer(image, QUESTION) == "front" and vqa.answer(ImageOps.mirror(image), QUESTION) == "front"
    assert abs(pose.yaw) < 5 and abs(pose.yaw + mirrored.yaw) < 3 and abs(pose.pitch - mirrored.pitch) < 3
    # a head box restricts the search to the head, with the same result
    boxed = vqa.head_pose(image, Annotations(head_box=(150, 20, 300, 220)))
    assert abs(boxed.yaw - pose.yaw) < 3


def test_profile_faces_right_and_its_mirror_left(vqa):
    image = Image.fromarray(skimage_data.camera()).crop((150, 20, 350, 220)).resize((400, 400))
    assert vqa.answer(image, QUESTION) == "right"
    assert vqa.answer(ImageOps.mirror(image), QUESTION) == "left"
    assert vqa.head_pose(image).yaw > 30 and vqa.head_pose(ImageOps.mirror(image)).yaw < -30


def test_no_face(vqa):
    assert vqa.answer(Image.new("RGB", (64, 64), (200, 200, 200)), QUESTION) == "no face visible"


def _rotation(yaw: float, pitch: float) -> np.ndarray:
    """Turn the head by ``yaw`` (towards image-right) then ``pitch`` (up), in image axes (y down, z away)."""
    a, b = math.radians(yaw), math.radians(pitch)
    turn = np.array([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
    nod = np.array([[1, 0, 0], [0, math.cos(b), math.sin(b)], [0, -math.sin(b), math.cos(b)]])
    return nod @ turn


@pytest.mark.parametrize(("yaw", "pitch", "answer"), [(30, 0, "right"), (-30, 0, "left"), (0, 25, "up"),
                                                       (0, -25, "down"), (8, -6, "front")])
def test_pose_geometry_recovers_known_rotations(yaw, pitch, answer):
    points = np.zeros((468, 3))
    points[33], points[263] = (-1.0, 0, 0), (1.0, 0, 0)  # outer eye corners
    points[10], points[152] = (0, -1.2, 0), (0, 1.4, 0)  # forehead, chin
    turned = points @ _rotation(yaw, pitch).T
    pose = pose_from_landmarks(turned)
    assert pose.yaw == pytest.approx(yaw, abs=1.5) and pose.pitch == pytest.approx(pitch, abs=1.5)
    assert pose.direction() == answer
    assert HeadPose(yaw, pitch).direction() == answer


def test_clothing_colours_go_to_the_pixel_answerer(vqa):
    image = Image.new("RGB", (120, 200), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 10, 80, 50), fill=(240, 200, 170))
    draw.rectangle((30, 50, 90, 190), fill=(200, 20, 20))
    mask = np.asarray(image.convert("L")) < 250
    answer = vqa.answer(image, "List top two colors of the character's clothes",
                        Annotations(head_box=(40, 10, 80, 50), mask=mask))
    assert answer == create_backend("vqa", "pixel-colors").answer(
        image, "List top two colors of the character's clothes", Annotations(head_box=(40, 10, 80, 50), mask=mask))
    assert "red" in answer
