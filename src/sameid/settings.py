"""Checking one setting: the helpers every config class uses in ``__post_init__`` so a bad value fails at
construction with one line that names the setting, whether it came from Python, a CLI option or a YAML file.

YAML reads ``1e-4`` as a string (PyYAML follows YAML 1.1, whose floats need a dot), so numbers written as text
are accepted when the whole text is a number of the right kind; anything else is refused, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .errors import SameIdError


def _fail(where: str, name: str, message: str) -> SameIdError:
    return SameIdError(f"{where}: {name} {message}")


def as_int(where: str, name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int (an int, or text that is one); refuses bools, fractions and anything out of range."""
    result = None
    if isinstance(value, int) and not isinstance(value, bool):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str):
        try:
            result = int(value.strip())
        except ValueError:
            result = None
    if result is None:
        raise _fail(where, name, f"must be a whole number, got {value!r}")
    return _in_range(where, name, result, minimum, maximum)


def as_float(where: str, name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
             above: float | None = None) -> float:
    """``value`` as a finite float (a number, or text that is one, e.g. YAML's ``1e-4``); ``above`` is a strict
    lower bound, ``minimum``/``maximum`` inclusive ones."""
    result = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            result = None
    if result is None or not math.isfinite(result):
        raise _fail(where, name, f"must be a number, got {value!r}")
    if above is not None and result <= above:
        raise _fail(where, name, f"must be greater than {above:g}, got {result:g}")
    return _in_range(where, name, result, minimum, maximum)


def _in_range(where: str, name: str, value, minimum, maximum):
    if minimum is not None and value < minimum:
        raise _fail(where, name, f"must be at least {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise _fail(where, name, f"must be at most {maximum:g}, got {value:g}")
    return value


def as_bool(where: str, name: str, value: Any) -> bool:
    """Only ``True`` or ``False``: ``"yes"`` or ``1`` is refused rather than read one way or the other."""
    if not isinstance(value, bool):
        raise _fail(where, name, f"must be true or false, got {value!r}")
    return value


def as_choice(where: str, name: str, value: Any, choices: Iterable[str], *, explain: str = "") -> str:
    choices = tuple(choices)
    if value not in choices:
        raise SameIdError(f"{where}: {name} = {value!r}; choose one of: {', '.join(choices)}{explain}")
    return value


def as_optional_text(where: str, name: str, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _fail(where, name, f"must be text, got {value!r}")


def as_text_list(where: str, name: str, value: Any) -> tuple[str, ...]:
    """A list of strings (a single string is refused: it is almost always a missing YAML list)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _fail(where, name, f"must be a list of text, got {value!r}")
    return tuple(value)
