"""The on-disk embedding cache, keyed by content: vectors per model identity, written atomically, shared by runs.

:class:`EmbeddingCache` stores ``keys`` (usually the SHA-256 of a file's bytes, :func:`file_digest`) and
``vectors`` per model identity; a NaN row records "nothing found", e.g. no face. A changed file has a new hash, so
the cache never serves stale vectors. It sits on the ground floor so that every stage embeds each image once ever
per model: the evaluation (:class:`sameid.evaluate.embeddings.EmbeddingStore`) and the identity-leakage check
(:mod:`sameid.synth.leakage`) share one cache folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .atomic import is_temporary, write_atomic

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
