"""Embedding each distinct image and text once per run, and once ever per model: a content-hash keyed cache.

A protocol like RetriBooru's (arXiv 2312.02521, section 3.1: 5000 generations per
model against a few references and 5 prompts) repeats every reference and prompt hundreds of times, and several
models share them. :class:`EmbeddingStore` keys every input by the SHA-256 of its content (file bytes for images,
UTF-8 for texts), embeds only keys it has not seen, in batches, and keeps the vectors in an on-disk cache
(:class:`EmbeddingCache`: ``keys``, ``vectors``; a NaN row records "nothing found", e.g. no face), so a re-run
embeds nothing. A changed file has a new hash, so the cache never serves stale vectors. Each batch is written to
the cache as soon as it is embedded (a killed run keeps its finished batches), under a unique name, so runs
sharing a cache folder keep each other's entries; a corrupt cache file is reported, ignored and replaced.

For a small model, reading, hashing, decoding and preparing pixels cost as much as the forward pass, so for image
inputs the store hands that work to :class:`~sameid.evaluate.decode_workers.DecodeWorkers` processes, which hash
each path once, skip files whose content is already embedded, load the rest with
:func:`~sameid.images.load_image` and run ``prepare`` (e.g. the CLIP embedder's
:class:`~sameid.backends.pretrained.PixelPreparer`) a few batches ahead, while this process runs only the model
(``benchmarks/bench_eval.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..embedding_cache import EmbeddingCache, file_digest, file_lock, text_digest
from ..images import load_image
from .decode_workers import DecodeWorkers

__all__ = ["EmbeddingCache", "EmbeddingStore", "default_decode_workers", "file_digest", "file_lock", "text_digest"]

def _take(batch: Any, rows: list[int]) -> Any:
    return batch[rows] if isinstance(batch, np.ndarray) else [batch[row] for row in rows]


def _concatenate(pieces: list[Any]) -> Any:
    return np.concatenate(pieces) if isinstance(pieces[0], np.ndarray) else [item for piece in pieces for item in piece]


def default_decode_workers() -> int:
    """One decode process per two usable cores, at most 4 (the model's own threads need the rest); none on a
    single core, where a worker could only take turns with the model."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(4, cores // 2)


class EmbeddingStore:
    """Vectors of images (by path) or texts for one model, each distinct content embedded once.

    ``embed`` takes a batch and returns one row per input (NaN rows allowed): for images, a list of PIL images,
    or whatever ``prepare`` (a picklable callable, run in the decode worker) makes of such a list (an array
    with one row per image, or a list); for texts, a list of strings. ``model_calls`` and ``embedded`` count
    calls to ``embed`` and inputs sent. ``prefetch`` (default True) loads images in ``decode_workers`` worker
    processes (default :func:`default_decode_workers`) while ``embed`` runs; False, no workers, or fewer than
    ``2 * batch_size`` new files: in this process between model calls. ``progress``: a progress bar (tqdm, on
    stderr) over the inputs of each ``get`` that has new contents to embed.
    """

    prefetch: bool = True

    def __init__(self, embed: Callable[[Any], np.ndarray], model: str, *, inputs: str = "image",
                 cache: EmbeddingCache | None = None, batch_size: int = 32,
                 prepare: Callable[[list], Any] | None = None, decode_workers: int | None = None,
                 progress: bool = False):
        if inputs not in ("image", "text"):
            raise ValueError(f"inputs must be 'image' or 'text', got {inputs!r}")
        if prepare is not None and inputs != "image":
            raise ValueError("prepare applies to image inputs only")
        self.embed, self.model, self.inputs, self.prepare = embed, model, inputs, prepare
        self.cache = cache or EmbeddingCache(None)
        self.batch_size = max(1, int(batch_size))
        self.decode_workers = default_decode_workers() if decode_workers is None else max(0, int(decode_workers))
        self.vectors: dict[str, np.ndarray] = self.cache.load(model)
        self._digests: dict[str, str] = {}
        self.model_calls = 0
        self.embedded = 0
        self.progress = progress

    def key(self, item: str) -> str:
        if item not in self._digests:
            self._digests[item] = file_digest(item) if self.inputs == "image" else text_digest(item)
        return self._digests[item]

    def _load(self, items: list[str]) -> Any:
        if self.inputs == "text":
            return items
        images = [load_image(item)[0] for item in items]
        return self.prepare(images) if self.prepare is not None else images

    def _embed(self, keys: list[str], batch: Any) -> None:
        vectors = np.asarray(self.embed(batch), dtype=np.float32)
        if len(vectors) != len(keys):
            raise ValueError(f"{self.model}: the embedder returned {len(vectors)} rows for {len(keys)} inputs")
        self.model_calls += 1
        self.embedded += len(keys)
        batch_vectors = dict(zip(keys, vectors, strict=True))
        self.vectors.update(batch_vectors)
        self.cache.append(self.model, batch_vectors)  # flushed now: a killed run keeps every finished batch

    def _bar(self, total: int, unit: str):
        from tqdm.auto import tqdm

        name = self.model if len(self.model) <= 40 else "..." + self.model[-37:]
        return tqdm(total=total, desc=f"embed {name}", unit=unit, leave=False,
                    disable=not self.progress or total == 0)

    def _embed_in_process(self, items: Sequence[str]) -> None:
        """Hash every item, then load and embed the new contents batch by batch, here."""
        first_item: dict[str, str] = {}
        for item in items:
            key = self.key(item)
            if key not in self.vectors:
                first_item.setdefault(key, item)
        todo = list(first_item)
        with self._bar(len(todo), self.inputs) as bar:
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start:start + self.batch_size]
                self._embed(batch, self._load([first_item[k] for k in batch]))
                bar.update(len(batch))

    def _embed_with_workers(self, paths: list[str]) -> None:
        """Workers hash, load and prepare chunks of ``paths`` ahead of the model; batches regrouped in path order."""
        chunks = [paths[start:start + self.batch_size] for start in range(0, len(paths), self.batch_size)]
        batch_nbytes = getattr(self.prepare, "batch_nbytes", None)
        pending_keys: list[str] = []
        pending: list[Any] = []
        with DecodeWorkers(chunks, digest=file_digest, workers=self.decode_workers, known=frozenset(self.vectors),
                           prepare=self.prepare,
                           slot_bytes=batch_nbytes(self.batch_size) if batch_nbytes is not None else None
                           ) as decoded, self._bar(len(paths), "image") as bar:
            for chunk, result in zip(chunks, decoded, strict=True):
                bar.update(len(chunk))
                self._digests.update(zip(chunk, result.digests, strict=True))
                # two workers may both load one content (under two paths): keep its first row only
                rows, keys, queued = [], [], set(pending_keys)
                for row, index in enumerate(result.loaded):
                    key = result.digests[index]
                    if key not in self.vectors and key not in queued:
                        queued.add(key)
                        rows.append(row)
                        keys.append(key)
                if len(keys) == self.batch_size and not pending_keys:  # the usual case: embed straight from it
                    self._embed(keys, result.batch)
                elif keys:  # a copy, so that the worker can reuse the shared memory
                    pending.append(_take(result.batch, rows))
                    pending_keys.extend(keys)
                result.release()
                while len(pending_keys) >= self.batch_size:
                    joined = _concatenate(pending)
                    self._embed(pending_keys[:self.batch_size], joined[:self.batch_size])
                    pending_keys = pending_keys[self.batch_size:]
                    pending = [joined[self.batch_size:]] if pending_keys else []
        if pending_keys:
            self._embed(pending_keys, _concatenate(pending))

    def get(self, items: Sequence[str]) -> np.ndarray:
        """(len(items), D) float32, rows in the order of ``items``."""
        embedded_before = self.embedded
        if self.inputs == "image" and self.prefetch and self.decode_workers:
            paths = [item for item in dict.fromkeys(items) if item not in self._digests]
            if len(paths) >= 2 * self.batch_size:
                self._embed_with_workers(paths)
        self._embed_in_process(items)
        if self.embedded > embedded_before:
            self.cache.compact(self.model)  # this run's batches (and any other run's) into one file
        keys = [self.key(item) for item in items]
        if not keys:
            return np.zeros((0, 0), np.float32)
        return np.stack([self.vectors[k] for k in keys])
