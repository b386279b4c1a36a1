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

import contextlib
import hashlib
import logging
import os
import re
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import is_temporary, write_atomic
from ..images import load_image
from .decode_workers import DecodeWorkers

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

_CHUNK = 1 << 20
logger = logging.getLogger(__name__)


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(b"text\0" + text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """On-disk vectors per model identity; ``folder=None`` keeps nothing on disk.

    Layout, per model: ``<folder>/<slug>-<hash>.npz`` (the compacted file), ``<slug>-<hash>.parts/*.npz`` (one
    file per embedded batch, written as the run goes, so a killed run keeps every finished batch) and
    ``<slug>-<hash>.lock``. Every file is written under a unique temporary name and moved into place
    (:func:`sameid.atomic.write_atomic`), so concurrent runs sharing a folder never overwrite each other's
    work; :meth:`compact` folds the parts into the compacted file under an exclusive ``flock`` on the lock file
    (readers hold a shared one). A file that cannot be read (truncated, not an ``.npz``) is reported in one
    warning line, ignored, and removed, so the run embeds its contents again and writes them anew.
    """

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = Path(folder) if folder is not None else None

    def path(self, model: str) -> Path | None:
        if self.folder is None:
            return None
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model)[-60:]
        return self.folder / f"{slug}-{hashlib.sha256(model.encode()).hexdigest()[:12]}.npz"

    def parts_dir(self, model: str) -> Path | None:
        path = self.path(model)
        return None if path is None else path.with_suffix(".parts")

    def _lock(self, model: str, *, exclusive: bool):
        path = self.path(model)
        return file_lock(path.with_suffix(".lock"), exclusive=exclusive)

    def _parts(self, model: str) -> list[Path]:
        folder = self.parts_dir(model)
        if folder is None or not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.suffix == ".npz" and not is_temporary(p.name))

    @staticmethod
    def _read(path: Path, model: str) -> dict[str, np.ndarray]:
        """The entries of one file; raises ``_Unreadable`` when it is corrupt, FileNotFoundError when gone."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["model"]) != model:  # a slug collision: treat as absent, never serve another model's
                    return {}
                keys, vectors = data["keys"].tolist(), data["vectors"]
                if vectors.ndim != 2 or len(keys) != len(vectors):
                    raise ValueError(f"{len(keys)} keys for vectors of shape {vectors.shape}")
                return dict(zip(keys, vectors, strict=True))
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise _Unreadable(path, error) from None

    def _read_all(self, model: str, paths: list[Path]) -> tuple[dict[str, np.ndarray], list[tuple[Path, os.stat_result]]]:
        entries: dict[str, np.ndarray] = {}
        corrupt = []
        for path in paths:
            try:
                stat = path.stat()
                entries.update(self._read(path, model))
            except FileNotFoundError:  # compacted by another run meanwhile: its entries are in the main file
                continue
            except _Unreadable as error:
                logger.warning("embedding cache file %s is unreadable (%s); ignoring it, it will be replaced",
                               path, error.reason)
                corrupt.append((path, stat))
        return entries, corrupt

    def _remove_corrupt(self, model: str, corrupt: list[tuple[Path, os.stat_result]]) -> None:
        """Remove files found corrupt, unless another run has replaced them since (same inode, size and time)."""
        if not corrupt:
            return
        with self._lock(model, exclusive=True):
            for path, seen in corrupt:
                try:
                    now = path.stat()
                except FileNotFoundError:
                    continue
                if (now.st_ino, now.st_size, now.st_mtime_ns) == (seen.st_ino, seen.st_size, seen.st_mtime_ns):
                    path.unlink(missing_ok=True)

    def load(self, model: str) -> dict[str, np.ndarray]:
        path = self.path(model)
        if path is None or not (path.is_file() or self._parts(model)):
            return {}
        with self._lock(model, exclusive=False):
            # parts first, then the main file: a part compacted away meanwhile is already in the main file
            entries, corrupt = self._read_all(model, self._parts(model))
            main, corrupt_main = self._read_all(model, [path] if path.is_file() else [])
        self._remove_corrupt(model, corrupt + corrupt_main)
        return {**main, **entries}

    def append(self, model: str, entries: dict[str, np.ndarray]) -> Path | None:
        """Write ``entries`` as a new part file (a unique name: concurrent runs never collide); no lock needed."""
        folder = self.parts_dir(model)
        if folder is None or not entries:
            return None
        return _write_npz(folder / f"{os.getpid()}-{uuid.uuid4().hex}.npz", model, entries)

    def compact(self, model: str) -> None:
        """Fold every part into the main file, under the exclusive lock."""
        path = self.path(model)
        if path is None or not self._parts(model):
            return
        with self._lock(model, exclusive=True):
            parts = self._parts(model)
            if not parts:
                return
            main, corrupt = self._read_all(model, [path] if path.is_file() else [])
            entries, corrupt_parts = self._read_all(model, parts)
            merged = {**main, **entries}
            if merged:
                _write_npz(path, model, merged)
            elif corrupt:
                path.unlink(missing_ok=True)
            for part in parts:
                part.unlink(missing_ok=True)

    def save(self, model: str, entries: dict[str, np.ndarray]) -> None:
        """Add ``entries`` to the cache (merged with what other runs wrote meanwhile)."""
        if self.append(model, entries) is not None:
            self.compact(model)


class _Unreadable(Exception):
    def __init__(self, path: Path, error: BaseException):
        self.path = path
        self.reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
        super().__init__(f"{path}: {self.reason}")


def _write_npz(path: Path, model: str, entries: dict[str, np.ndarray]) -> Path:
    keys = list(entries)
    vectors = np.stack([np.asarray(entries[k], np.float32) for k in keys])

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:  # a handle: np.savez would add ".npz" to a name without it
            np.savez(handle, model=np.array(model), keys=np.array(keys), vectors=vectors)

    return write_atomic(path, write, suffix=".npz")


@contextlib.contextmanager
def file_lock(path: Path, *, exclusive: bool) -> Iterator[None]:
    """``flock`` on ``path`` (created if absent): shared or exclusive; a no-op where fcntl does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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
