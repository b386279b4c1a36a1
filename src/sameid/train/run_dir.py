"""A training run's folder, ``sameid train --out``: the one place its file names live.

Layout (docs/train.md): ``config.yaml`` (the run's :class:`.config.TrainConfig`, flat), ``base/`` (a tiny run's
random base model, with ``image_encoder/`` for a tiny ip-adapter), ``checkpoints/step-NNNNNNN/`` (accelerate state,
``trainable.safetensors`` and ``trainer_state.json``), ``model/`` (the finished denoiser), ``holdout.json``
(identities kept out of training), ``loss.jsonl``, ``logs/`` (tensorboard) and ``validation/step-NNNNNNN/``.

Training writes it (:mod:`.loop`), generation reads it (:mod:`sameid.generate.run`): ``generate`` depends on
``train``, never the reverse. Every file sameid writes here goes through :mod:`sameid.atomic`; folders a library
fills (``model/``, ``base/``) are filled under a temporary name and renamed into place. accelerate's own checkpoint
files and tensorboard's event files are written by those libraries; a checkpoint counts as complete once its
``trainer_state.json`` (written last) exists.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import TEMPORARY_MARK, write_json_atomic, write_text_atomic
from ..errors import SameIdError

CONFIG_FILE = "config.yaml"
BASE_DIR = "base"
TINY_IMAGE_ENCODER_DIR = "image_encoder"  # inside base/
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "step-"
TRAINABLE_WEIGHTS = "trainable.safetensors"
TRAINER_STATE = "trainer_state.json"
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
        from .config import TrainConfig

        if not self.path.is_dir():
            raise SameIdError(f"run dir {self.path} does not exist")
        if not self.holds_run():
            raise SameIdError(f"{self.path} is not a training run: {self.config_file} is missing (`sameid train "
                              f"--out {self.path}` writes it)")
        return TrainConfig.load(self.config_file)

    def checkpoints(self) -> list[Path]:
        """Checkpoint folders, oldest first."""
        return sorted(self.checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*"))

    def latest_checkpoint(self) -> Path | None:
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None

    def read_trainer_state(self, checkpoint: Path) -> dict[str, Any]:
        path = Path(checkpoint) / TRAINER_STATE
        if not path.is_file():
            raise SameIdError(f"{checkpoint} is not a complete checkpoint: {TRAINER_STATE} is missing")
        return json.loads(path.read_text())

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

    def write_loss_log(self, losses: list[float]) -> Path:
        """``loss.jsonl``, one ``{"step", "loss"}`` line per optimizer step (rewritten whole, atomically)."""
        text = "".join(json.dumps({"step": i + 1, "loss": value}) + "\n" for i, value in enumerate(losses))
        return write_text_atomic(self.loss_log, text)

    def remove_old_checkpoints(self, keep: int) -> None:
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
