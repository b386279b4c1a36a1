"""The embedding and VQA-answer caches under faults (issue 11): concurrent runs sharing a cache folder, a corrupt
cache file, a run killed part way."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sameid.backends.base import VQABackend
from sameid.evaluate.embeddings import EmbeddingCache, EmbeddingStore, file_digest
from sameid.evaluate.vqa_score import AnswerStore

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _mean_colour(images) -> np.ndarray:
    return np.stack([np.asarray(image, np.float32).mean(axis=(0, 1)) for image in images])


@pytest.fixture
def pictures(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for k in range(40):
        path = tmp_path / "images" / f"p{k:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _store(cache, **kwargs) -> EmbeddingStore:
    return EmbeddingStore(_mean_colour, "toy", inputs="image", cache=cache, batch_size=4, decode_workers=0, **kwargs)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and ".tmp" in p.name)


_WORKER = textwrap.dedent("""
    import sys, numpy as np
    from sameid.evaluate.embeddings import EmbeddingCache, EmbeddingStore
    def embed(images):
        return np.stack([np.asarray(image, np.float32).mean(axis=(0, 1)) for image in images])
    cache_dir, paths = sys.argv[1], sys.argv[2:]
    for round in range(3):  # three gets: parts appended and compacted while the other runs do the same
        part = paths[round::3]
        store = EmbeddingStore(embed, "toy", inputs="image", cache=EmbeddingCache(cache_dir), batch_size=2,
                               decode_workers=0)
        store.get(part)
""")


def test_four_concurrent_runs_sharing_a_cache_keep_every_entry(pictures, tmp_path):
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": SRC}
    # each run has 10 files of its own and 10 shared with every other run
    shared = pictures[:10]
    runs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(cache_dir), *shared,
                              *pictures[10 + 7 * k:10 + 7 * k + 7]], env=env, stderr=subprocess.PIPE, text=True)
            for k in range(4)]
    errors = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, errors
    cache = EmbeddingCache(cache_dir)
    entries = cache.load("toy")
    expected = {file_digest(p) for p in pictures[:38]}
    assert set(entries) == expected
    assert not _leftovers(cache_dir)
    np.testing.assert_allclose(entries[file_digest(pictures[3])], _mean_colour([Image.open(pictures[3])])[0])
    fresh = _store(cache)
    fresh.get(pictures[:38])
    assert fresh.embedded == 0


def test_a_killed_run_keeps_its_finished_batches(pictures, tmp_path):
    calls = []

    def failing(images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while embedding the second batch
        return _mean_colour(images)

    cache = EmbeddingCache(tmp_path / "cache")
    store = EmbeddingStore(failing, "toy", inputs="image", cache=cache, batch_size=4, decode_workers=0)
    with pytest.raises(KeyboardInterrupt):
        store.get(pictures[:12])
    kept = cache.load("toy")
    assert set(kept) == {file_digest(p) for p in pictures[:4]}
    rerun = _store(cache)
    rerun.get(pictures[:12])
    assert rerun.embedded == 8 and set(cache.load("toy")) == {file_digest(p) for p in pictures[:12]}


def test_a_killed_run_with_decode_workers_keeps_its_finished_batches(pictures, tmp_path):
    calls = []

    def failing(images):
        calls.append(len(images))
        if len(calls) == 3:
            raise RuntimeError("killed")
        return _mean_colour(images)

    cache = EmbeddingCache(tmp_path / "cache")
    store = EmbeddingStore(failing, "toy", inputs="image", cache=cache, batch_size=4, decode_workers=1)
    with pytest.raises(RuntimeError, match="killed"):
        store.get(pictures[:20])
    assert set(cache.load("toy")) == {file_digest(p) for p in pictures[:8]}


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_corrupt_cache_file_is_reported_once_and_replaced(pictures, tmp_path, caplog, damage):
    cache = EmbeddingCache(tmp_path / "cache")
    _store(cache).get(pictures[:8])
    main = cache.path("toy")
    data = main.read_bytes()
    main.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a zip at all", "empty": b""}[damage])
    with caplog.at_level(logging.WARNING, logger="sameid.embedding_cache"):
        store = _store(cache)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(main) in warnings[0] and "\n" not in warnings[0]
    assert store.vectors == {} and not main.exists()  # ignored and removed
    store.get(pictures[:8])
    assert store.embedded == 8
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sameid.embedding_cache"):
        again = _store(cache)
    assert not caplog.records and set(again.vectors) == {file_digest(p) for p in pictures[:8]}


def test_a_corrupt_part_is_dropped_and_the_rest_kept(pictures, tmp_path, caplog):
    cache = EmbeddingCache(tmp_path / "cache")
    good = cache.append("toy", {"a": np.ones(3, np.float32)})
    bad = cache.append("toy", {"b": np.ones(3, np.float32)})
    bad.write_bytes(bad.read_bytes()[:20])
    with caplog.at_level(logging.WARNING, logger="sameid.embedding_cache"):
        assert set(cache.load("toy")) == {"a"}
    assert len(caplog.records) == 1 and not bad.exists() and good.exists()
    cache.compact("toy")
    assert set(cache.load("toy")) == {"a"} and not any(cache.parts_dir("toy").iterdir())


class CountingVQA(VQABackend):
    spec = "counting"

    def answer(self, image, question, annotations=None):
        return f"{question} {np.asarray(image).mean():.3f}"


def _answers_file(folder: Path) -> Path:
    return next(folder.glob("*.answers.json"))


def test_answer_cache_merges_concurrent_writers_and_tolerates_corruption(pictures, tmp_path, caplog):
    folder = tmp_path / "answers"
    first = AnswerStore(CountingVQA(), model="toy-vqa", folder=folder)
    second = AnswerStore(CountingVQA(), model="toy-vqa", folder=folder)  # loaded before first writes
    first.get(pictures[:5], "q?")
    second.get(pictures[5:10], "q?")  # must not drop first's answers
    merged = json.loads(_answers_file(folder).read_text())
    assert len(merged) == 10
    assert not _leftovers(folder)
    _answers_file(folder).write_text('{"truncated": "ans')
    with caplog.at_level(logging.WARNING, logger="sameid.evaluate.vqa_score"):
        third = AnswerStore(CountingVQA(), model="toy-vqa", folder=folder)
    assert len(caplog.records) == 1 and "unreadable" in caplog.records[0].getMessage()
    third.get(pictures[:3], "q?")
    assert third.questions_asked == 3 and len(json.loads(_answers_file(folder).read_text())) == 3


def test_answer_cache_flushes_as_it_goes(pictures, tmp_path, monkeypatch):
    class Dying(CountingVQA):
        calls = 0

        def answer(self, image, question, annotations=None):
            Dying.calls += 1
            if Dying.calls > 20:
                raise KeyboardInterrupt
            return super().answer(image, question)

    import sameid.evaluate.vqa_score as vqa_score

    sizes = []
    write = vqa_score.write_text_atomic
    monkeypatch.setattr(vqa_score, "write_text_atomic", lambda path, text: (sizes.append(len(json.loads(text))),
                                                                            write(path, text)))
    store = AnswerStore(Dying(), model="toy-vqa", folder=tmp_path / "answers", flush_every=8)
    with pytest.raises(KeyboardInterrupt):
        store.get(pictures, "q?")
    assert sizes == [8, 16, 20]  # every 8 answers, and what was answered before the interruption
    assert len(json.loads(_answers_file(tmp_path / "answers").read_text())) == 20
