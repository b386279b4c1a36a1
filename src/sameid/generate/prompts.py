"""Prompts and seeds of a generation: the defaults, and reading them from the command line or a file."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SameIdError

#: Paper-style prompts (new scenes and styles for a known subject, as in RetriBooru, arXiv 2312.02521, §3.1).
DEFAULT_PROMPTS = ("a figure standing on a beach", "a figure in the snow at night", "a figure sitting in a library",
                   "a watercolor painting of a figure", "a figure running in a park")


def read_prompts(prompts: list[str] | None = None, prompts_file: str | os.PathLike | None = None) -> list[str]:
    """``prompts`` then the non-empty lines of ``prompts_file``; :data:`DEFAULT_PROMPTS` when neither is given.

    A prompts file that is missing, unreadable, or holds no prompt (empty or whitespace only) is an error, never
    a silent fall-back to the defaults."""
    result = list(prompts or [])
    if prompts_file is not None:
        path = Path(prompts_file)
        if not path.is_file():
            raise SameIdError(f"--prompts-file {path}: no such file" if not path.exists()
                              else f"--prompts-file {path} is not a file; give a text file with one prompt per line")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SameIdError(f"--prompts-file {path}: not readable as UTF-8 text ({exc})") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            raise SameIdError(f"--prompts-file {path} holds no prompt (it is empty or whitespace only); write one "
                              "prompt per line")
        result += lines
    return result or list(DEFAULT_PROMPTS)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    try:
        seeds = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise SameIdError(f"--seeds {text!r}: write comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise SameIdError("--seeds: give at least one seed")
    return seeds


def parse_identities(identities: list[str] | None) -> list[str] | str | None:
    """Repeated ``--identity`` values: None (the run's held-out identities), ``"all"``, or a list."""
    if not identities:
        return None
    return "all" if list(identities) == ["all"] else list(identities)
