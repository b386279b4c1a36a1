"""The one way sameid writes a file: to a unique temporary name in the same directory, then ``os.replace``.

A reader never sees half a file, a killed run leaves the previous version in place, and two processes writing the
same path never share a temporary name (``tempfile.mkstemp``), so concurrent writers cannot remove each other's
work. Every stage writes through :func:`write_atomic` or one of its typed forms; a leftover temporary file of a
killed writer starts with ``.`` and contains ``.tmp`` (:func:`is_temporary`), so directory listings can skip it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMPORARY_MARK = ".tmp"


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file left by an interrupted :func:`write_atomic`."""
    return name.startswith(".") and TEMPORARY_MARK in name


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any], *, suffix: str = "") -> Path:
    """Call ``write(tmp)`` to fill a unique temporary file beside ``path``, then move it onto ``path``.

    ``suffix`` ends the temporary name (some writers pick the format by extension, e.g. ``".png"``). On any
    failure the temporary file is removed and ``path`` is untouched. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_MARK + suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); the finished file gets the mode a plain open() would give it
        os.chmod(tmp, _PLAIN_FILE_MODE & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


_PLAIN_FILE_MODE = 0o666


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; set back at once, at import, before any thread starts
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(path: str | os.PathLike, obj: Any, *, sort_keys: bool = True) -> Path:
    """JSON with two-space indent and a final newline; values JSON does not know are written with ``str``."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=str, ensure_ascii=False) + "\n"
    return write_text_atomic(path, text)


def write_parquet_atomic(path: str | os.PathLike, data, schema=None) -> Path:
    """A pandas DataFrame or pyarrow Table as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, schema=schema, preserve_index=False)
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def write_directory_atomic(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to fill a unique temporary directory beside ``path``, then swap it in for ``path``.

    A directory already at ``path`` is renamed aside first and removed only once the new one is in place, so a
    reader finds the old folder or the new one, never a half-written one (between the two renames, briefly, none).
    On any failure the temporary directory is removed and ``path`` is untouched. Returns ``path``.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMPORARY_MARK, dir=path.parent))
    old = None
    try:
        write(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", suffix=TEMPORARY_MARK, dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and (old / path.name).exists() and not path.exists():
            os.replace(old / path.name, path)  # put the previous folder back
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def check_writable(path: str | os.PathLike, option: str) -> None:
    """Refuse, before any work, an output file that cannot be written: an existing folder, a path under a file,
    a folder without write permission (``option`` names it in the message, e.g. ``--out``). Missing folders are
    fine: :func:`write_atomic` makes them."""
    from .errors import SameIdError

    path = Path(path)
    if path.is_dir():
        raise SameIdError(f"{option} {path} is a folder; give a file path")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise SameIdError(f"{option} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SameIdError(f"{option} {path}: no permission to write in {parent}; choose another path")
