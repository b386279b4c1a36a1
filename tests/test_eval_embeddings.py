"""The evaluation's image path: PixelPreparer against transformers' processors, and EmbeddingStore's decode workers
against loading in process (same vectors, same batches, cache-known files never decoded, errors keep their reason).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from sameid.backends.pretrained import PixelPreparer
from sameid.errors import ImageError
from sameid.evaluate.embeddings import EmbeddingCache, EmbeddingStore, file_digest


def _processors():
    from transformers import BitImageProcessor, CLIPImageProcessor

    return {
        "tiny clip": CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        "clip-vit-large defaults": CLIPImageProcessor(),
        "dinov2-style": BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}),
        "odd crop": CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 28, "width": 24}),
    }


def _images(rng) -> list[Image.Image]:
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for w, h in [(32, 32), (224, 224), (100, 37), (37, 100), (513, 512), (7, 9)]]
    return [*images, images[2].convert("L"), images[3].convert("RGBA"), images[4].convert("P")]


@pytest.mark.parametrize("name", list(_processors()))
def test_pixel_preparer_is_bit_identical_to_the_processor(name):
    processor = _processors()[name]
    preparer = PixelPreparer(processor)
    assert preparer.fast
    rng = np.random.default_rng(0)
    for image in _images(rng):
        expected = processor(images=[image.convert("RGB")], return_tensors="np")["pixel_values"]
        got = preparer([image])
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.array_equal(got, expected), (name, image.size, image.mode)
    batch = _images(rng)[:2]
    resized = [image.resize((64, 64)) for image in batch]
    assert np.array_equal(preparer(resized), processor(images=resized, return_tensors="np")["pixel_values"])
    assert np.array_equal(pickle.loads(pickle.dumps(preparer))(resized), preparer(resized))


def test_other_recipes_go_through_the_processor():
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                   do_center_crop=False)
    preparer = PixelPreparer(processor)
    assert not preparer.fast
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    assert np.array_equal(preparer([image]), processor(images=[image], return_tensors="np")["pixel_values"])


def _mean_colour(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([pixels.mean(axis=(2, 3)), pixels.std(axis=(2, 3))], axis=1)


@pytest.fixture
def files(tmp_path):
    """23 PNGs of distinct content, two byte-identical copies under other names, sizes varying."""
    rng = np.random.default_rng(2)
    paths = []
    for k in range(23):
        size = (24 + k, 30)
        path = tmp_path / f"img_{k:02d}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    for k in (3, 17):
        copy = tmp_path / f"copy_of_{k}.png"
        copy.write_bytes((tmp_path / f"img_{k:02d}.png").read_bytes())
        paths.append(str(copy))
    return paths


def _store(workers: int, cache=None) -> EmbeddingStore:
    from transformers import CLIPImageProcessor

    preparer = PixelPreparer(CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}))
    return EmbeddingStore(_mean_colour, "toy", inputs="image", cache=cache, batch_size=4, prepare=preparer,
                          decode_workers=workers)


def test_decode_workers_give_the_in_process_result(files, monkeypatch):
    used = []
    original = EmbeddingStore._embed_with_workers
    monkeypatch.setattr(EmbeddingStore, "_embed_with_workers", lambda self, paths: (used.append(len(paths)),
                                                                                   original(self, paths)))
    items = files + files[::-1] + files[:5]  # every path several times
    with_workers, in_process = _store(workers=2), _store(workers=0)
    vectors = with_workers.get(items)
    assert used == [len(files)]  # 25 distinct paths >= 2 batches: the workers loaded them
    np.testing.assert_allclose(vectors, in_process.get(items), atol=1e-6)
    # 23 distinct contents (the two copies embedded once), regrouped into full batches of 4 in path order
    assert with_workers.embedded == in_process.embedded == 23
    assert with_workers.model_calls == in_process.model_calls == 6
    assert np.array_equal(vectors[23], vectors[3]) and np.array_equal(vectors[24], vectors[17])  # the copies
    assert with_workers.get(files).shape == (25, 6) and with_workers.model_calls == 6  # served from memory


def test_workers_never_decode_what_the_cache_knows(files, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    cache = EmbeddingCache(tmp_path / "cache")
    first = _store(1, cache)
    first.get(files[:12])
    first.vectors[file_digest(broken)] = np.full(6, 7.0, np.float32)  # as if embedded by an earlier run
    cache.save("toy", first.vectors)
    second = _store(1, cache)
    vectors = second.get([str(broken), *files])  # the broken file is never opened: its content is known
    # only img_12 .. img_22 are new (copy_of_3 is known, copy_of_17 is img_17's content)
    assert second.embedded == 11 and np.all(vectors[0] == 7.0)


def test_a_bad_file_fails_with_its_reason_in_either_path(files, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    for workers in (1, 0):
        with pytest.raises(ImageError) as caught:
            _store(workers).get([*files[:10], str(broken), *files[10:]])
        assert caught.value.reason == "unreadable image" and "broken.png" in str(caught.value)


def _mean_of_images(images) -> np.ndarray:
    return np.stack([np.asarray(image, np.float32).mean(axis=(0, 1)) for image in images])


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_unprepared_images_and_spawned_workers(files, monkeypatch, start_method):
    """Without ``prepare`` the workers send PIL images through the pipe; under spawn (no shared mapping, the
    preparer pickled into the worker) the prepared arrays travel that way too. Both give the in-process vectors."""
    import multiprocessing

    import sameid.evaluate.decode_workers as decode_workers

    get_context = multiprocessing.get_context
    monkeypatch.setattr(decode_workers.multiprocessing, "get_context",
                        lambda method=None: get_context(method or start_method))
    if start_method == "fork":
        plain = EmbeddingStore(_mean_of_images, "plain", inputs="image", batch_size=4, decode_workers=1)
        expected = EmbeddingStore(_mean_of_images, "plain", inputs="image", batch_size=4, decode_workers=0)
        np.testing.assert_allclose(plain.get(files), expected.get(files), atol=1e-6)
        assert plain.embedded == expected.embedded == 23 and plain.model_calls == expected.model_calls == 6
    else:
        prepared = _store(workers=1)
        np.testing.assert_allclose(prepared.get(files), _store(workers=0).get(files), atol=1e-6)
        assert prepared.embedded == 23
