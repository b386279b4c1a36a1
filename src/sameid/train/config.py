"""One training run, one config file (``config.yaml`` in the run dir), one loop for every variant.

The variants are those of RetriBooru, arXiv 2312.02521, §5.2 (trainable sets full / LockD / LockB, prompt drop
rate, tasks) and the baselines of RetriBooru, arXiv 2312.02521, A.3 (ControlNet, IP-Adapter-style, each in mode
``same`` (-a) or ``identity`` (-b)): a field here, never another script.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import SameIdError
from ..models.conditioning import LOCK_MODES
from ..pairs.dataset import TASKS

MODELS = ("retrinet", "controlnet", "ip-adapter")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class TrainConfig:
    """Everything a run depends on. Paths are stored as given; ``out`` is the run dir."""

    dataset: str
    out: str
    # Base model: a Stable Diffusion 1.x id or folder (unet, vae, text_encoder, tokenizer, scheduler), or tiny.
    pretrained: str | None = None
    tiny: bool = False
    model: str = "retrinet"
    image_encoder: str | None = None  # ip-adapter: a CLIPVisionModelWithProjection id or folder
    lock: str = "full"
    # Training examples (sameid.pairs.PairsConfig)
    mode: str = "identity"
    task: str = "reconstruction"
    n_references: int = 4
    resolution: int = 384
    prompt_drop: float = 0.5
    shortfall: str = "repeat"
    curriculum: str | None = None  # None (shuffled) | phash | source (with curriculum_source_order)
    curriculum_source_order: list[str] = field(default_factory=list)  # sources easy to hard, e.g. [synthetic, real]
    # Identities kept out of training (listed in holdout.json) for `sameid generate` / evaluation.
    holdout_identities: int = 0
    # Loss (001 equation 3): MSE on the valid area + face_loss_weight x MSE on the face box.
    face_loss_weight: float = 0.1
    # Optimisation
    learning_rate: float = 1e-5
    lr_scheduler: str = "cosine_with_restarts"
    lr_warmup_steps: int = 0
    lr_num_cycles: int = 1
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 8
    max_train_steps: int = 9000
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    dataloader_num_workers: int = 0
    seed: int = 0
    # Checkpoints and validation
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    validation_steps: int = 500
    validation_examples: int = 4
    validation_inference_steps: int = 20
    validation_guidance_scale: float = 7.0
    validation_prompts: list[str] = field(default_factory=list)

    def __post_init__(self):
        choices = {"model": MODELS, "lock": LOCK_MODES, "task": TASKS, "mode": ("identity", "same"),
                   "shortfall": ("repeat", "refuse"), "mixed_precision": MIXED_PRECISION}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SameIdError(f"training config: {name} = {getattr(self, name)!r}; choose one of: "
                                  f"{', '.join(allowed)}")
        if not self.tiny and not self.pretrained:
            raise SameIdError("training config: give a base model (pretrained: a Stable Diffusion 1.5 id or "
                              "folder) or tiny: true for a random tiny model")
        if self.model == "ip-adapter" and not self.image_encoder and not self.tiny:
            raise SameIdError("training config: model ip-adapter needs image_encoder (a CLIPVisionModelWithProjection "
                              "id or folder, e.g. openai/clip-vit-large-patch14)")
        for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "n_references",
                     "checkpointing_steps", "validation_steps"):
            if getattr(self, name) < 1:
                raise SameIdError(f"training config: {name} must be at least 1, got {getattr(self, name)}")
        if self.curriculum == "embedding":
            raise SameIdError("training config: curriculum 'embedding' needs image embeddings, which training does "
                              "not compute yet; use phash, or source with curriculum_source_order")
        if self.face_loss_weight < 0:
            raise SameIdError(f"training config: face_loss_weight must be >= 0, got {self.face_loss_weight}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides) -> TrainConfig:
        """Read a YAML config; ``overrides`` (not None) replace its fields. Unknown keys are an error."""
        path = Path(path)
        if not path.is_file():
            raise SameIdError(f"training config {path}: no such file")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SameIdError(f"training config {path}: not valid YAML ({exc})") from None
        if not isinstance(values, dict):
            raise SameIdError(f"training config {path}: expected a mapping of field: value")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SameIdError(f"training config {path}: unknown field(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except TypeError as exc:
            raise SameIdError(f"training config {path}: {exc}") from None
