"""The identity-leakage check of synthetic identities (after Hybrid Generative Fusion, arXiv 2508.10672): a
synthetic identity planted as a copy of a real person (skimage's astronaut, Eileen Collins) is removed and listed;
a duplicate synthetic identity is removed; the input dataset is never changed."""

from __future__ import annotations

import json
import logging

import matplotlib.cbook
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from photo_fixtures import photo_variants
from sameid.errors import SameIdError
from sameid.synth.leakage import (
    DUPLICATE,
    REAL_PERSON,
    Gallery,
    LeakageConfig,
    build_index,
    check_identities,
    embed_faces,
    identity_embeddings,
    run_leakage,
    search,
)

skimage_data = pytest.importorskip("skimage.data")


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_identity_embeddings_are_normalised_means():
    vectors = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 2], [0, 0, 3]], dtype=np.float32)
    gallery = identity_embeddings(vectors, ["b", "b", "a", "a"])
    assert gallery.names.tolist() == ["a", "b"]
    np.testing.assert_allclose(gallery.vectors, [[0, 0, 1], [2 ** -0.5, 2 ** -0.5, 0]], atol=1e-6)
    with pytest.raises(SameIdError, match="row 1"):
        identity_embeddings(np.array([[1.0, 0], [0, 0]]), ["a", "b"])


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_search_finds_the_brute_force_neighbours_of_planted_copies(index):
    rng = np.random.default_rng(0)
    real = _unit(rng.normal(size=(5000, 32)))
    copies = rng.choice(5000, 200, replace=False)
    queries = _unit(np.concatenate([real[copies] + 0.03 * rng.normal(size=(200, 32)), rng.normal(size=(300, 32))]))
    distances, indices = search(build_index(real, index, nprobe=16), queries, 1)
    brute = 1.0 - queries.astype(np.float64) @ real.T.astype(np.float64)
    assert indices[:200, 0].tolist() == copies.tolist()  # every planted copy finds its original
    np.testing.assert_allclose(distances[:200, 0], brute[np.arange(200), copies], atol=1e-5)
    if index == "flat":  # exact: the same nearest neighbour as brute force for every query
        assert indices[:, 0].tolist() == brute.argmin(axis=1).tolist()


def test_build_index_takes_a_number_of_ivf_lists():
    real = _unit(np.random.default_rng(2).normal(size=(4000, 16)))
    assert build_index(real, "ivf", nprobe=8, nlist=50).nlist == 50
    assert build_index(real, "ivf", nprobe=8).nlist == int(2 * 4000 ** 0.5)
    with pytest.raises(SameIdError, match="39 training vectors per list"):
        build_index(real, "ivf", nlist=200)
    # the check with a chosen number of lists: the planted copies found, the answers of the exact index
    rng = np.random.default_rng(3)
    copies = _unit(real[:30] + 0.02 * rng.normal(size=(30, 16)))
    synthetic = Gallery(np.concatenate([copies, _unit(rng.normal(size=(1200, 16)))]),
                        np.array([f"s{i:04d}" for i in range(1230)]))
    gallery = Gallery(real, np.array([f"r{i:04d}" for i in range(4000)]))
    exact = check_identities(synthetic, gallery, threshold=0.05)
    listed = check_identities(synthetic, gallery, threshold=0.05, index="ivf", nprobe=8, nlist=60)
    assert listed["nearest_real"][:30].tolist() == [f"r{i:04d}" for i in range(30)]
    pd.testing.assert_series_equal(listed["removed"], exact["removed"])
    pd.testing.assert_series_equal(listed["nearest_real"][exact["removed"]], exact["nearest_real"][exact["removed"]])


def test_check_identities_removes_real_people_and_later_duplicates():
    rng = np.random.default_rng(1)
    real = Gallery(_unit(rng.normal(size=(50, 16))), np.array([f"real{i:02d}" for i in range(50)]))
    vectors = _unit(rng.normal(size=(4, 16)))
    vectors[1] = _unit(real.vectors[7:8] + 0.01 * rng.normal(size=(1, 16)))[0]  # "s1" is real07
    vectors[3] = _unit(vectors[2:3] + 0.01 * rng.normal(size=(1, 16)))[0]  # "s3" duplicates "s2"
    synthetic = Gallery(vectors, np.array(["s0", "s1", "s2", "s3"]))
    table = check_identities(synthetic, real, threshold=0.05)
    assert table["removed"].tolist() == [False, True, False, True]
    assert table["why"].tolist() == [None, REAL_PERSON, None, DUPLICATE]
    assert table.loc[1, "nearest_real"] == "real07" and table.loc[1, "real_distance"] < 0.01
    assert table.loc[3, "nearest_synthetic"] == "s2"
    assert table.loc[0, "synthetic_distance"] > 0.5
    with pytest.raises(SameIdError, match="same face embedder"):
        check_identities(synthetic, Gallery(_unit(np.ones((2, 8))), np.array(["a", "b"])))
    with pytest.raises(SameIdError, match="threshold"):
        check_identities(synthetic, real, threshold=-1)


def test_gallery_saves_and_loads(tmp_path):
    gallery = Gallery(_unit(np.eye(3)), np.array(["a", "b", "c"]), "dlib", "somewhere")
    path = gallery.save(tmp_path / "real.npz")
    loaded = Gallery.load(path)
    assert loaded.names.tolist() == ["a", "b", "c"] and loaded.embedder == "dlib" and loaded.source == "somewhere"
    np.testing.assert_array_equal(loaded.vectors, gallery.vectors)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(SameIdError, match="not a saved gallery"):
        Gallery.load(tmp_path / "bad.npz")


# --- face embeddings: batched, cached -------------------------------------------------------------------------------


class CountingEmbedder:
    """A face embedder for tests: the mean colour of the image (or of the box) as a unit 4-d vector, no face in a
    mostly black image; counts its calls."""

    spec = "counting"
    dim = 4

    def __init__(self):
        self.calls = 0

    def embed(self, image, box=None):
        self.calls += 1
        pixels = np.asarray(image.crop(tuple(int(v) for v in box)) if box else image, dtype=np.float32)
        mean = pixels.reshape(-1, 3).mean(axis=0) / 255.0
        if mean.sum() < 0.1:
            return None
        vector = np.append(mean, 0.5)
        return vector / np.linalg.norm(vector)


@pytest.fixture
def coloured(tmp_path):
    paths = []
    for i, colour in enumerate([(200, 10, 10), (10, 200, 10), (10, 10, 200), (0, 0, 0), (200, 10, 10)]):
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (16, 16), colour).save(path)
        paths.append(str(path))
    return paths  # 4.png has the content of 0.png; 3.png has no face


def test_embed_faces_embeds_each_content_once_and_a_rerun_nothing(coloured, tmp_path):
    from sameid.embedding_cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "cache")
    boxes = [None, None, None, None, None]
    first = CountingEmbedder()
    found, vectors = embed_faces(coloured, boxes, first, cache, batch_size=2)
    assert first.calls == 4  # 4.png is 0.png's content
    assert found.tolist() == [0, 1, 2, 4] and vectors.shape == (4, 4)
    np.testing.assert_array_equal(vectors[0], vectors[3])
    again = CountingEmbedder()
    found_again, vectors_again = embed_faces(coloured, boxes, again, EmbeddingCache(tmp_path / "cache"))
    assert again.calls == 0  # every content, the faceless one too, comes from the cache
    assert found_again.tolist() == found.tolist()
    np.testing.assert_array_equal(vectors_again, vectors)
    boxed = CountingEmbedder()  # a face inside a box is another entry
    embed_faces(coloured[:1], [(0, 0, 8, 8)], boxed, cache)
    embed_faces(coloured[:1], [(0, 0, 8, 8)], boxed, cache)
    assert boxed.calls == 1
    with pytest.raises(SameIdError, match=r"absent.png \(row 1\): cannot read the image"):
        embed_faces([coloured[0], str(tmp_path / "absent.png")], [None, None], CountingEmbedder(), cache)
    none = CountingEmbedder()  # no cache folder: nothing kept
    embed_faces(coloured, boxes, none, EmbeddingCache(None))
    embed_faces(coloured, boxes, none, EmbeddingCache(None))
    assert none.calls == 8


def test_a_corrupt_face_cache_is_recomputed_with_one_warning(coloured, tmp_path, caplog):
    from sameid.embedding_cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "cache")
    _, vectors = embed_faces(coloured, [None] * 5, CountingEmbedder(), cache)
    cache.path("face:counting").write_bytes(b"not an npz")
    embedder = CountingEmbedder()
    with caplog.at_level(logging.WARNING):
        _, recomputed = embed_faces(coloured, [None] * 5, embedder, EmbeddingCache(tmp_path / "cache"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "unreadable" in warnings[0] and "\n" not in warnings[0]
    assert embedder.calls == 4
    np.testing.assert_array_equal(recomputed, vectors)

    # an entry that reads but is no embedding (all zeros) is computed again, with one line naming the image
    from sameid.embedding_cache import file_digest

    cache.save("face:counting", {file_digest(coloured[1]): np.zeros(4, np.float32)})
    caplog.clear()
    embedder = CountingEmbedder()
    with caplog.at_level(logging.WARNING):
        _, fixed = embed_faces(coloured, [None] * 5, embedder, EmbeddingCache(tmp_path / "cache"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and coloured[1] in warnings[0] and "not a usable face embedding" in warnings[0]
    assert embedder.calls == 1
    np.testing.assert_array_equal(fixed, vectors)
    assert embed_faces(coloured, [None] * 5, CountingEmbedder(), cache)[1].tolist() == vectors.tolist()


# --- end to end on real photos ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_dataset(tmp_path_factory):
    """A dataset dir of three "synthetic" identities: ``synth_copy`` is the astronaut (planted: a real person),
    ``synth_b`` and ``synth_c`` are both Grace Hopper (two synthetic identities that are one person); and a
    gallery folder of real people holding the astronaut's original photo."""
    from sameid.dataset.pipeline import BuildConfig, build_dataset

    root = tmp_path_factory.mktemp("leakage")
    astronaut = Image.fromarray(skimage_data.astronaut())
    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    for name, image, seed in (("synth_copy", astronaut, 1), ("synth_b", hopper, 2), ("synth_c", hopper, 3)):
        (root / "faces" / name).mkdir(parents=True)
        for i, variant in enumerate(photo_variants(image, 3, seed)):
            variant.save(root / "faces" / name / f"{i}.jpg", quality=92)
    (root / "real" / "eileen_collins").mkdir(parents=True)
    astronaut.save(root / "real" / "eileen_collins" / "portrait.png")
    build_dataset(BuildConfig(source=str(root / "faces"), out=str(root / "synthetic"), workers=1,
                              near_duplicate_bits=0), progress=False)
    return root


def _digest(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_leakage_removes_the_planted_real_person_and_lists_it(synthetic_dataset, tmp_path):
    before = _digest(synthetic_dataset / "synthetic")
    result = run_leakage(LeakageConfig(synthetic=str(synthetic_dataset / "synthetic"),
                                       real=str(synthetic_dataset / "real"), out=str(tmp_path / "checked"),
                                       save_real=str(tmp_path / "real.npz")))
    table = result.table.set_index("identity")
    assert table.loc["synth_copy", "why"] == REAL_PERSON and table.loc["synth_copy", "nearest_real"] == "eileen_collins"
    assert table.loc["synth_copy", "real_distance"] < 0.03
    assert table.loc["synth_c", "why"] == DUPLICATE and table.loc["synth_c", "nearest_synthetic"] == "synth_b"
    assert not table.loc["synth_b", "removed"] and table.loc["synth_b", "real_distance"] > 0.088
    assert sorted(result.manifest["identity"].unique()) == ["synth_b"]
    out = tmp_path / "checked"
    rejected = pd.read_parquet(out / "rejected.parquet")
    leaked = rejected[rejected["stage"] == "leakage"]
    assert sorted(leaked["reason"].unique()) == ["identity leakage: duplicate synthetic identity",
                                                 "identity leakage: real person"]
    assert leaked["detail"].str.contains("eileen_collins").sum() == 3
    assert pd.read_parquet(out / "leakage.parquet")["removed"].sum() == 2
    stats = json.loads((out / "stats.json").read_text())
    assert stats["leakage"]["removed_real"] == 1 and stats["leakage"]["removed_synthetic"] == 1
    card = (out / "README.md").read_text()
    assert "Identity-leakage check" in card and "synth\\_copy" in card and "eileen\\_collins" in card
    assert json.loads((out / "build_settings.json").read_text())["leakage"]["threshold"] == 0.088
    assert _digest(synthetic_dataset / "synthetic") == before  # the input is never changed
    assert "removed synth_copy: real person" in result.describe()

    # the saved gallery gives the same answer without embedding the real photos again, from the command line
    from sameid.cli import app

    run = CliRunner().invoke(app, ["leakage", "--synthetic", str(synthetic_dataset / "synthetic"), "--real",
                                   str(tmp_path / "real.npz"), "--out", str(tmp_path / "again"),
                                   "--cache-dir", str(tmp_path / "cache")])
    assert run.exit_code == 0, run.output
    assert "removed synth_copy: real person (closest eileen_collins" in run.output
    again = pd.read_parquet(tmp_path / "again" / "leakage.parquet")
    pd.testing.assert_frame_equal(again, pd.read_parquet(out / "leakage.parquet"))


def test_leakage_refuses_bad_input_before_writing(synthetic_dataset, tmp_path):
    from sameid.cli import app

    runner = CliRunner()
    for args, message in [
        (["--synthetic", str(tmp_path), "--real", str(synthetic_dataset / "real")], "not a dataset dir"),
        (["--synthetic", str(synthetic_dataset / "synthetic"), "--real", str(tmp_path / "absent")], "no such"),
        (["--synthetic", str(synthetic_dataset / "synthetic"), "--real", str(synthetic_dataset / "real"),
          "--threshold", "nan"], "--threshold"),
        (["--synthetic", str(synthetic_dataset / "synthetic"), "--real", str(synthetic_dataset / "real"),
          "--index", "hnsw"], "unknown index"),
    ]:
        run = runner.invoke(app, ["leakage", *args, "--out", str(tmp_path / "out")])
        assert run.exit_code == 2 and message in run.output, run.output
        assert not (tmp_path / "out").exists()
    run = runner.invoke(app, ["leakage", "--synthetic", str(synthetic_dataset / "synthetic"), "--real",
                              str(synthetic_dataset / "real"), "--out", str(synthetic_dataset / "synthetic")])
    assert run.exit_code == 2 and "never changed in place" in run.output
