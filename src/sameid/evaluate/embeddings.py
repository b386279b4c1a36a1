"""Embedding each distinct image and text once per run, and once ever per model: a content-hash keyed cache.

A protocol like RetriBooru's (``/work/shared/papers/003_e9e011bd8e92c781.txt`` section 3.1: 5000 generations per
model against a few references and 5 prompts) repeats every reference and prompt hundreds of times, and several
models share them. :class:`EmbeddingStore` keys every input by the SHA-256 of its content (file bytes for images,
UTF-8 for texts), embeds only keys it has not seen, in batches, and keeps the vectors in an on-disk cache, one
``.npz`` per model identity (``keys``, ``vectors``; a NaN row records "nothing found", e.g. no face), so a re-run
embeds nothing. A changed file has a new hash, so the cache never serves stale vectors.

Decoding an image costs a third of a small model's forward pass on it, so a background thread reads and decodes
the next batch while the model embeds the current one (PIL's decoders and torch both release the GIL): the store
adds little to the model's own time (``benchmarks/bench_eval.py``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..images import load_image

_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(b"text\0" + text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """``<folder>/<model slug>-<hash>.npz`` per model identity; ``folder=None`` keeps nothing on disk."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = Path(folder) if folder is not None else None

    def path(self, model: str) -> Path | None:
        if self.folder is None:
            return None
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model)[-60:]
        return self.folder / f"{slug}-{hashlib.sha256(model.encode()).hexdigest()[:12]}.npz"

    def load(self, model: str) -> dict[str, np.ndarray]:
        path = self.path(model)
        if path is None or not path.is_file():
            return {}
        with np.load(path, allow_pickle=False) as data:
            if str(data["model"]) != model:  # a slug collision: treat as absent rather than serve another model's vectors
                return {}
            return dict(zip(data["keys"].tolist(), data["vectors"], strict=True))

    def save(self, model: str, entries: dict[str, np.ndarray]) -> None:
        path = self.path(model)
        if path is None or not entries:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(entries)
        temporary = path.with_suffix(".tmp.npz")
        np.savez(temporary, model=np.array(model), keys=np.array(keys),
                 vectors=np.stack([entries[k] for k in keys]).astype(np.float32))
        os.replace(temporary, path)  # atomic: an interrupted run leaves the previous cache intact


class EmbeddingStore:
    """Vectors of images (by path) or texts for one model, each distinct content embedded once.

    ``embed`` takes a list of PIL images (``inputs="image"``) or of strings (``inputs="text"``) and returns one
    row per input (NaN rows allowed). ``model_calls`` and ``embedded`` count calls to ``embed`` and inputs sent.
    ``prefetch`` (default True) decodes the next batch of images in a background thread during ``embed``.
    """

    prefetch: bool = True

    def __init__(self, embed: Callable[[list], np.ndarray], model: str, *, inputs: str = "image",
                 cache: EmbeddingCache | None = None, batch_size: int = 32):
        if inputs not in ("image", "text"):
            raise ValueError(f"inputs must be 'image' or 'text', got {inputs!r}")
        self.embed, self.model, self.inputs = embed, model, inputs
        self.cache = cache or EmbeddingCache(None)
        self.batch_size = max(1, int(batch_size))
        self.vectors: dict[str, np.ndarray] = self.cache.load(model)
        self._digests: dict[str, str] = {}
        self.model_calls = 0
        self.embedded = 0

    def key(self, item: str) -> str:
        if item not in self._digests:
            self._digests[item] = file_digest(item) if self.inputs == "image" else text_digest(item)
        return self._digests[item]

    def _load(self, item: str) -> Image.Image | str:
        return load_image(item)[0] if self.inputs == "image" else item

    def _loaded(self, batches: list[list[str]], first_item: dict[str, str]) -> Iterator[tuple[list[str], list]]:
        """(keys, loaded inputs) per batch; images of batch k + 1 are decoded while the caller embeds batch k."""
        if self.inputs == "text" or not self.prefetch or len(batches) == 1:
            for batch in batches:
                yield batch, [self._load(first_item[k]) for k in batch]
            return

        def load(keys: list[str]) -> list:
            return [self._load(first_item[k]) for k in keys]

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sameid-decode") as pool:
            pending = pool.submit(load, batches[0])
            for index, batch in enumerate(batches):
                loaded = pending.result()  # a file that fails to load raises here, in the caller's thread
                if index + 1 < len(batches):
                    pending = pool.submit(load, batches[index + 1])
                yield batch, loaded

    def get(self, items: Sequence[str]) -> np.ndarray:
        """(len(items), D) float32, rows in the order of ``items``."""
        keys = [self.key(item) for item in items]
        todo = list(dict.fromkeys(k for k in keys if k not in self.vectors))
        if todo:
            first_item = {}
            for item, key in zip(items, keys, strict=True):
                first_item.setdefault(key, item)
            batches = [todo[start:start + self.batch_size] for start in range(0, len(todo), self.batch_size)]
            for batch, loaded in self._loaded(batches, first_item):
                vectors = np.asarray(self.embed(loaded), dtype=np.float32)
                self.model_calls += 1
                self.embedded += len(batch)
                for key, vector in zip(batch, vectors, strict=True):
                    self.vectors[key] = vector
            self.cache.save(self.model, self.vectors)
        if not keys:
            return np.zeros((0, 0), np.float32)
        return np.stack([self.vectors[k] for k in keys])
