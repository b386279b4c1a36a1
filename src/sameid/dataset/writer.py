"""The output directory's life cycle: a killed run never leaves half a file, a build never deletes or overwrites
anything it did not write itself, and a failed ``--overwrite`` leaves the earlier dataset as it was.

Files are written through :mod:`sameid.atomic`. A build into an empty or new ``--out`` writes there directly. A
build that replaces an earlier dataset (``--overwrite``) writes into a hidden sibling staging dir
(``.<name>.sameid-staging``) and swaps it in only when it is complete (:meth:`OutputPlan.finish`); until then the
earlier dataset is untouched. ``--resume`` continues an interrupted build where it was being written: the
staging dir of an interrupted ``--overwrite``, else ``--out`` itself.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import atomic
from ..errors import SameIdError
from ..records import DATASET_SETTINGS_FILE
from .stats import CARD_FILENAME

#: What a build writes into its output directory; ``--overwrite`` replaces these and nothing else.
#: ``dataset_card.md`` is the card's name before it became ``README.md``: an older build's dir may hold it.
OUTPUTS = ("manifest.parquet", "rejected.parquet", "stats.json", CARD_FILENAME, DATASET_SETTINGS_FILE, "plots",
           "masks", ".work", "dataset_card.md")

STAGING_MARK = ".sameid-staging"


def write_parquet_atomic(path, data, schema=None):
    """:func:`sameid.atomic.write_parquet_atomic`, kept here for the callers that import it from this module.

    Path first, as everywhere in :mod:`sameid.atomic`; this name once took the data first, and a call written
    that way (in a branch not yet merged) keeps working: a DataFrame or Table is never a path.
    """
    if not isinstance(path, str | os.PathLike):
        path, data = data, path
    return atomic.write_parquet_atomic(path, data, schema=schema)


def staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}{STAGING_MARK}"


def _is_build_output(path: Path) -> bool:
    name = path.name
    if atomic.is_temporary(name) or (name.startswith(".") and ".tmp-" in name):
        return True
    if name == CARD_FILENAME:
        # A README.md is only ours if a build wrote it (the card's front matter tags it `sameid`).
        try:
            return "- sameid\n" in path.read_text(encoding="utf-8", errors="replace")[:4000]
        except OSError:
            return False
    return name in OUTPUTS


def _foreign(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not _is_build_output(p))


def _read_config(saved: Path) -> dict | None:
    if not saved.is_file():
        return None
    try:
        return json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _check_same_config(where: Path, previous: dict | None, config: dict) -> None:
    if previous is not None and previous != config:
        changed = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
        raise SameIdError(
            f"{where}: --resume with a different configuration ({', '.join(changed)} changed); "
            "rerun with the original options, or use --overwrite to start again"
        )


@dataclass
class OutputPlan:
    """Where a build writes (``build_dir``) and where the finished dataset goes (``out``).

    :func:`plan_output` only checks; nothing is created or removed until :meth:`start`, so a build can validate
    its input first and fail without touching ``out``.
    """

    out: Path
    build_dir: Path
    config: dict
    fresh: bool  # start with an empty build_dir (a stale staging dir of ours is cleared first)

    @property
    def work(self) -> Path:
        return self.build_dir / ".work"

    @property
    def staged(self) -> bool:
        return self.build_dir != self.out

    def start(self) -> Path:
        """Create the build dir and its ``.work`` folder and record the configuration; returns the work folder."""
        if self.fresh and self.staged and self.build_dir.exists():
            _remove_ours(self.build_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        atomic.write_json_atomic(self.work / "config.json", self.config)
        return self.work

    def finish(self) -> None:
        """Put a staged build in place of the earlier dataset (an atomic exchange where the OS has one)."""
        if not self.staged:
            return
        if not self.out.exists():
            os.replace(self.build_dir, self.out)
            return
        old = self.out.parent / f".{self.out.name}.sameid-old-{os.getpid()}"
        if _exchange(self.build_dir, self.out):
            os.replace(self.build_dir, old)
        else:
            os.replace(self.out, old)
            os.replace(self.build_dir, self.out)
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _remove_ours(folder: Path) -> None:
    foreign = _foreign(folder)
    if foreign:
        raise SameIdError(f"{folder} holds files a build did not write ({', '.join(foreign[:5])}); "
                          "remove it or choose another --out")
    shutil.rmtree(folder)


def plan_output(out: Path, config: dict, *, resume: bool, overwrite: bool) -> OutputPlan:
    """Decide where a build writes, refusing what would lose work; creates and removes nothing.

    A non-empty ``out`` is refused unless ``resume`` (same configuration only) or ``overwrite`` (a folder
    holding only what a build writes; it is replaced when the new build is complete). ``config`` is stored
    by :meth:`OutputPlan.start` so a resume with a different configuration is refused instead of silently
    mixing two builds.
    """
    out = Path(out)
    staging = staging_dir(out)
    if out.exists() and not out.is_dir():
        raise SameIdError(f"{out} exists and is not a directory; choose another --out")
    existing = list(out.iterdir()) if out.is_dir() else []
    if resume:
        staged_config = _read_config(staging / ".work" / "config.json")
        if staged_config is not None:
            # An interrupted --overwrite: the earlier dataset is still in out; continue the new one beside it.
            _check_same_config(out, staged_config, config)
            return OutputPlan(out, staging, config, fresh=False)
        _check_same_config(out, _read_config(out / ".work" / "config.json"), config)
        return OutputPlan(out, out, config, fresh=False)
    if not existing:
        plan = OutputPlan(out, out, config, fresh=True)
    elif not overwrite:
        raise SameIdError(
            f"{out} is not empty; pass --resume to continue an interrupted build, --overwrite to replace "
            "an earlier build's outputs, or choose another --out"
        )
    else:
        foreign = _foreign(out)
        if foreign:
            raise SameIdError(
                f"{out} holds files a build did not write ({', '.join(foreign[:5])}); "
                "refusing to overwrite: choose another --out"
            )
        plan = OutputPlan(out, staging, config, fresh=True)
    if staging.exists() and not plan.staged:
        # A stale staging dir of an interrupted --overwrite would be taken up by a later --resume.
        _remove_ours(staging)
    return plan


def prepare_output_dir(out: Path, config: dict, *, resume: bool, overwrite: bool) -> Path:
    """:func:`plan_output` and :meth:`OutputPlan.start` in one step, for a caller with nothing to validate first:
    an ``overwrite`` build (:class:`OutputPlan` staged) must call :meth:`OutputPlan.finish` itself, so this
    form clears an earlier build's outputs in place, as it always did. Returns the work folder."""
    plan = plan_output(out, config, resume=resume, overwrite=overwrite)
    if plan.staged and plan.fresh:
        for path in Path(out).iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        plan = OutputPlan(Path(out), Path(out), config, fresh=True)
    return plan.start()
