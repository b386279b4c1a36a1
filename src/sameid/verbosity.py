"""How much sameid and the libraries it drives print: ``quiet``, ``normal`` (the default) or ``verbose``.

``sameid --quiet`` prints results and errors only: no progress bars, and the third-party chatter silenced too —
Python loggers of Hugging Face ``datasets``/``transformers``/``diffusers``/``accelerate``/``huggingface_hub``, Ray,
absl, and the native (C++) lines of mediapipe's TensorFlow Lite runtime, which bypass Python and write straight to
file descriptor 2 (:func:`native_stderr_silenced`). ``normal`` keeps progress bars and warnings but still hides
the native start-up lines; ``verbose`` shows everything, with sameid's own debug log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

LEVELS = ("quiet", "normal", "verbose")

#: Python loggers of the libraries sameid drives, and the level each verbosity gives them.
THIRD_PARTY_LOGGERS = ("datasets", "transformers", "diffusers", "accelerate", "huggingface_hub", "ray",
                       "ray.data", "absl", "PIL", "matplotlib", "urllib3", "filelock", "torch")
_LOGGER_LEVEL = {"quiet": logging.ERROR, "normal": logging.WARNING, "verbose": logging.INFO}

_state: dict[str, str | None] = {"level": None}
_fd_lock = threading.Lock()


def set_verbosity(level: str) -> None:
    """Set the verbosity of this process (and of the worker processes it starts later, through the environment)."""
    if level not in LEVELS:
        raise ValueError(f"verbosity {level!r}; choose one of: {', '.join(LEVELS)}")
    _state["level"] = level
    os.environ["SAMEID_VERBOSITY"] = level
    if level != "verbose":
        # Read by the native runtimes when they start (mediapipe's glog/absl, TensorFlow Lite).
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if level == "quiet":
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
        os.environ["RAY_DEDUP_LOGS"] = "1"
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(_LOGGER_LEVEL[level])
    logging.getLogger("sameid").setLevel(
        {"quiet": logging.ERROR, "normal": logging.INFO, "verbose": logging.DEBUG}[level])
    _quiet_libraries(level)


def _quiet_libraries(level: str) -> None:
    """The libraries that keep their own verbosity switch beside the logging module (only those already imported
    or importable cheaply; a missing one is simply not configured)."""
    if "datasets" in sys.modules:
        import datasets

        datasets.logging.set_verbosity(_LOGGER_LEVEL[level])
        if level == "quiet":
            datasets.disable_progress_bars()
    for name in ("transformers", "diffusers"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "logging"):
            module.logging.set_verbosity(_LOGGER_LEVEL[level])


def get_verbosity() -> str:
    """This process's verbosity: as set, else inherited from the parent process (worker pools), else normal."""
    level = _state["level"] or os.environ.get("SAMEID_VERBOSITY", "normal")
    return level if level in LEVELS else "normal"


def show_progress() -> bool:
    """Whether a long stage should draw a progress bar: not when quiet, and only on a terminal."""
    return get_verbosity() != "quiet" and sys.stderr.isatty()


@contextlib.contextmanager
def native_stderr_silenced():
    """Send file descriptor 2 to /dev/null for the block, unless verbose.

    For native libraries (mediapipe's TensorFlow Lite and absl) whose start-up lines bypass Python's ``sys.stderr``.
    Python's own ``sys.stderr`` is flushed before and after, so no Python output is lost or reordered; only what
    native code writes to the descriptor inside the block disappears. Keep the block short (model start-up and
    first call): other threads' native writes to fd 2 are hidden too while it is open.
    """
    if get_verbosity() == "verbose":
        yield
        return
    with _fd_lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded interpreters, some test runners)
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
