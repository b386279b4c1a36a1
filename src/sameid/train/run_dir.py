"""A training run's folder, ``sameid train --out``: the one place its file names live.

Layout (docs/train.md): ``config.yaml`` (the run's :class:`.config.TrainConfig`, flat), ``base/`` (a tiny run's
random base model, with ``image_encoder/`` for a tiny ip-adapter), ``checkpoints/step-NNNNNNN/`` (accelerate state,
``trainable.safetensors`` and ``trainer_state.json``), ``model/`` (the finished denoiser), ``holdout.json``
(identities kept out of training), ``loss.jsonl``, ``logs/`` (trackers) and ``validation/step-NNNNNNN/``.

Training writes it (:mod:`.loop`), generation reads it (:mod:`sameid.generate.run`): ``generate`` depends on
``train``, never the reverse. Every file sameid writes here goes through :mod:`sameid.atomic`; folders a library
fills (``model/``, ``base/``) are filled under a temporary name and renamed into place. accelerate's own checkpoint
files and the trackers' files are written by those libraries.

A checkpoint is written into a temporary folder of ``checkpoints/`` (``.step-NNNNNNN.<unique>.tmp``), its
``trainer_state.json`` last, then renamed to ``step-NNNNNNN``: a ``step-*`` folder is complete, and a kill while a
checkpoint is written leaves only a hidden temporary folder, removed when the run starts again. A ``step-*`` folder
without ``trainer_state.json`` (left by an older sameid) is not a checkpoint. Whether a complete checkpoint's files
can be read is :meth:`RunDir.checkpoint_problem`'s question.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import TEMPORARY_MARK, is_temporary, write_json_atomic, write_text_atomic
from ..errors import SameIdError

CONFIG_FILE = "config.yaml"
BASE_DIR = "base"
TINY_IMAGE_ENCODER_DIR = "image_encoder"  # inside base/
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"
TRAINABLE_WEIGHTS = "trainable.safetensors"
TRAINER_STATE = "trainer_state.json"
#: What a checkpoint must hold besides accelerate's per-process RNG states: the trainable weights (written by the
#: loop's save hook), accelerate's optimizer and LR-scheduler states, and the trainer state.
CHECKPOINT_FILES = (TRAINABLE_WEIGHTS, "optimizer.bin", "scheduler.bin", TRAINER_STATE)
TRAINER_STATE_KEYS = ("global_step", "micro_batches", "losses")
HOLDOUT_FILE = "holdout.json"
LOSS_LOG = "loss.jsonl"
LOGS_DIR = "logs"
VALIDATION_DIR = "validation"


def step_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{int(step):07d}"


class RunDir:
    """Paths and contents of one run dir. Reading needs nothing but the folder; ``config`` loads ``config.yaml``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # -- paths --------------------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def base_dir(self) -> Path:
        return self.path / BASE_DIR

    @property
    def tiny_image_encoder_dir(self) -> Path:
        return self.base_dir / TINY_IMAGE_ENCODER_DIR

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def holdout_file(self) -> Path:
        return self.path / HOLDOUT_FILE

    @property
    def loss_log(self) -> Path:
        return self.path / LOSS_LOG

    @property
    def logs_dir(self) -> Path:
        return self.path / LOGS_DIR

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / step_name(step)

    def validation_dir(self, step: int) -> Path:
        return self.path / VALIDATION_DIR / step_name(step)

    # -- reading ------------------------------------------------------------------------------------------------
    def holds_run(self) -> bool:
        """Whether a run was started here (``config.yaml`` is written once the run can start)."""
        return self.config_file.is_file()

    @property
    def config(self):
        """The run's :class:`.config.TrainConfig`; a missing ``config.yaml`` is an error that says so."""
        from .config import LEGACY_RUN_DEFAULTS, TrainConfig

        if not self.path.is_dir():
            raise SameIdError(f"run dir {self.path} does not exist")
        if not self.holds_run():
            raise SameIdError(f"{self.path} is not a training run: {self.config_file} is missing (`sameid train "
                              f"--out {self.path}` writes it)")
        return TrainConfig.load(self.config_file, missing=LEGACY_RUN_DEFAULTS)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoint folders (``step-*`` holding ``trainer_state.json``), oldest first."""
        return sorted(path for path in self.checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*")
                      if (path / TRAINER_STATE).is_file())

    def latest_checkpoint(self) -> Path | None:
        """The latest complete checkpoint (whether its files load is :meth:`checkpoint_problem`'s question)."""
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None

    def read_trainer_state(self, checkpoint: Path) -> dict[str, Any]:
        path = Path(checkpoint) / TRAINER_STATE
        if not path.is_file():
            raise SameIdError(f"{checkpoint} is not a complete checkpoint: {TRAINER_STATE} is missing")
        try:
            state = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise SameIdError(f"{path}: not readable JSON ({exc})") from None
        missing = [key for key in TRAINER_STATE_KEYS if not isinstance(state, dict) or key not in state]
        if missing:
            raise SameIdError(f"{path}: lacks {', '.join(missing)}")
        return state

    def checkpoint_problem(self, checkpoint: Path) -> str | None:
        """Why ``checkpoint`` cannot be resumed from, in a few words, or None when every file it must hold is
        there and whole: the trainer state is JSON with its keys, each safetensors file's header covers the file,
        each torch file (``*.bin``, ``*.pkl``, ``*.pt``; zip archives) passes its CRC check. Reads, never loads tensors."""
        checkpoint = Path(checkpoint)
        for name in CHECKPOINT_FILES:
            if not (checkpoint / name).is_file():
                return f"{name} is missing"
        try:
            self.read_trainer_state(checkpoint)
        except SameIdError as exc:
            return str(exc).removeprefix(f"{checkpoint / TRAINER_STATE}: ")
        for path in sorted(checkpoint.iterdir()):
            if path.suffix not in (".safetensors", ".bin", ".pkl", ".pt"):
                continue
            problem = _file_problem(path)
            if problem:
                return f"{path.name} {problem}"
        return None

    def holdout_identities(self) -> list[str]:
        """The identities the run kept out of training (``holdout.json``); none when it kept none."""
        if not self.holdout_file.is_file():
            return []
        try:
            held = json.loads(self.holdout_file.read_text()).get("identities", [])
        except (OSError, ValueError, AttributeError) as exc:
            raise SameIdError(f"{self.holdout_file}: not readable ({exc}); expected {{\"identities\": [...]}}"
                              ) from None
        return [str(identity) for identity in held]

    # -- writing ------------------------------------------------------------------------------------------------
    def write_config(self, config) -> Path:
        config.save(self.config_file)
        return self.config_file

    def write_holdout(self, identities: list[str]) -> Path:
        return write_json_atomic(self.holdout_file, {"identities": list(identities)})

    def write_trainer_state(self, checkpoint: Path, state: dict[str, Any]) -> Path:
        """Written last into a checkpoint: its presence marks the checkpoint complete."""
        return write_json_atomic(Path(checkpoint) / TRAINER_STATE, state, sort_keys=False)

    def write_loss_log(self, losses: list[float], process_losses: list[list[float]] | None = None) -> Path:
        """``loss.jsonl``, one ``{"step", "loss"}`` line per optimizer step (rewritten whole, atomically); ``loss``
        is the mean over the processes, and a run of several adds each one's own as ``process_losses``."""
        process_losses = process_losses or []
        lines = []
        for i, value in enumerate(losses):
            line = {"step": i + 1, "loss": value}
            if i < len(process_losses):
                line["process_losses"] = process_losses[i]
            lines.append(json.dumps(line) + "\n")
        return write_text_atomic(self.loss_log, "".join(lines))

    def new_checkpoint_dir(self, step: int) -> Path:
        """A unique hidden temporary folder in ``checkpoints/`` to write step ``step``'s checkpoint into."""
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{step_name(step)}.", suffix=TEMPORARY_MARK, dir=self.checkpoints_dir))

    def commit_checkpoint(self, tmp: Path, step: int, state: dict[str, Any]) -> Path:
        """Write the trainer state into ``tmp`` (last), then rename it to ``step-N`` (replacing one of an
        earlier attempt at that step): the checkpoint appears complete or not at all."""
        self.write_trainer_state(tmp, state)
        target = self.checkpoint_dir(step)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        return target

    def remove_temporary_checkpoints(self) -> list[Path]:
        """Remove the temporary folders a killed checkpoint write left in ``checkpoints/``."""
        removed = [path for path in self.checkpoints_dir.glob(".*") if path.is_dir() and is_temporary(path.name)]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return removed

    def remove_old_checkpoints(self, keep: int) -> None:
        """Keep the newest ``keep`` complete checkpoints."""
        for old in self.checkpoints()[:-keep]:
            shutil.rmtree(old)

    def fill_dir(self, target: Path, fill: Callable[[Path], Any]) -> Path:
        """Let ``fill(tmp)`` write a folder (``save_pretrained``), then rename it onto ``target``: a reader never
        sees half a model. An existing ``target`` is replaced."""
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TEMPORARY_MARK, dir=target.parent))
        try:
            fill(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target


def _file_problem(path: Path) -> str | None:
    """What is wrong with one checkpoint file (see :meth:`RunDir.checkpoint_problem`), or None."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "is empty (0 bytes)"
        if path.suffix == ".safetensors":
            with open(path, "rb") as handle:
                head = handle.read(8)
                header_size = int.from_bytes(head, "little") if len(head) == 8 else -1
                if header_size < 2 or 8 + header_size > size:
                    return "is truncated (its header is incomplete)"
                header = json.loads(handle.read(header_size))
            end = max((item["data_offsets"][1] for key, item in header.items() if key != "__metadata__"), default=0)
            return None if 8 + header_size + end == size else (
                f"is truncated ({size} bytes, its header describes {8 + header_size + end})")
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        return f"is damaged ({bad} fails its CRC check)" if bad else None
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile) as exc:
        return f"is not readable ({type(exc).__name__}: {exc})" if str(exc) else f"is not readable ({type(exc).__name__})"
