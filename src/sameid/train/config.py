"""One training run, one config file (``config.yaml`` in the run dir), one loop for every variant.

The variants are those of RetriBooru, arXiv 2312.02521, §5.2 (trainable sets full / LockD / LockB, prompt drop
rate, tasks) and the baselines of RetriBooru, arXiv 2312.02521, A.3 (ControlNet, IP-Adapter-style, each in mode
``same`` (-a) or ``identity`` (-b)): a field here, never another script.

How training examples are drawn is a :class:`sameid.pairs.PairsConfig` (``TrainConfig.pairs``), which owns those
fields and their checks; the YAML file stays flat for users (``mode: identity`` next to ``learning_rate: 1e-5``),
:meth:`TrainConfig.from_flat` and :meth:`TrainConfig.to_dict` map it. Every value is checked when a config is made,
so a bad one fails before any file is written.

The paper's experiments are named presets (:mod:`.presets`): ``preset: ip-adapter`` (or ``--preset``) fills every
setting the experiment fixes, settings given explicitly override it, and ``config.yaml`` records the preset's
name with every resulting value.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import SameIdError
from ..models.components import TINY_KINDS
from ..models.conditioning import LOCK_MODES, UNCONDITIONAL_REFERENCES
from ..pairs.dataset import PairsConfig
from ..settings import as_bool, as_choice, as_float, as_int, as_optional_text, as_text_list
from .losses import LOSSES
from .presets import kind_defaults, preset_names, preset_values

MODELS = ("retrinet", "controlnet", "ip-adapter", "multi-subject", "multi-subject-shared")
MIXED_PRECISION = ("no", "fp16", "bf16")
# diffusers.optimization.get_scheduler's names (less "piecewise_constant", which needs step rules a config has not)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
#: accelerate's trackers (``Accelerator(log_with=...)``, accelerate.utils.LoggerType less "all"), each used when its
#: package is installed; tensorboard is the default.
TRACKERS = ("tensorboard", "wandb", "comet_ml", "mlflow", "aim", "clearml", "dvclive", "swanlab", "trackio")
#: Settings a resume may change: how long to train and how often to checkpoint, validate and log, none of which
#: changes the losses of the steps in between. Where the run dir is (``out``) is the folder resumed, not a setting.
#: The inference defaults a run records (reference scale, unconditional references) and the preset's name change no
#: training loss either.
RESUMABLE_CHANGES = ("out", "max_train_steps", "validation_steps", "checkpointing_steps", "checkpoints_total_limit",
                     "validation_prompts", "validation_examples", "log_with", "preset", "reference_scale",
                     "unconditional_references")
#: Other names a flat config accepts for a key: ``text_drop`` is ``prompt_drop`` (IP-Adapter's name for it).
FLAT_ALIASES = {"text_drop": "prompt_drop"}
#: What a run's own config.yaml, written before a key existed, was trained with (``RunDir.config`` reads it so):
#: before ``loss`` existed, every run used the area-normalised reading of equation 3.
LEGACY_RUN_DEFAULTS = {"loss": "eq3-area-normalised"}
#: Flat YAML key -> PairsConfig field. The run's ``seed`` is also the pairs' seed, so it is not among them.
PAIRS_KEYS = {"mode": "mode", "task": "task", "n_references": "n_references", "resolution": "resolution",
              "prompt_drop": "prompt_drop", "shortfall": "shortfall", "near_duplicate_bits": "near_duplicate_bits",
              "max_head_fraction": "max_head_fraction", "min_clothes_fraction": "min_clothes_fraction",
              "curriculum": "curriculum", "curriculum_source_column": "source_column",
              "curriculum_source_order": "source_order", "concept_masks": "concept_masks",
              "emphasis": "emphasis"}
_WHERE = "training config"


#: The face embedders a multi-subject model takes (TrainConfig.face_embedder), and the value for none.
FACE_EMBEDDERS = ("dlib", "arcface-onnx:<model.onnx>", "none")
FACE_EMBEDDER_NONE = "none"
MULTI_SUBJECT_MODELS = ("multi-subject", "multi-subject-shared")


def _face_embedder(where: str, model: str, value: Any) -> str | None:
    """``face_embedder`` checked: dlib, arcface-onnx:<path>, or none for a multi-subject model (None: dlib); None
    for any other model, which reads no face feature."""
    value = as_optional_text(where, "face_embedder", value)
    if model not in MULTI_SUBJECT_MODELS:
        if value is not None:
            raise SameIdError(f"{where}: face_embedder is read by the multi-subject models only "
                              f"({', '.join(MULTI_SUBJECT_MODELS)}), not by model {model}; remove it")
        return None
    if value is None:
        return "dlib"
    name, _, argument = value.partition(":")
    if value in ("dlib", FACE_EMBEDDER_NONE) or (name == "arcface-onnx" and argument.strip()):
        return value
    raise SameIdError(f"{where}: face_embedder {value!r} is not one of {', '.join(FACE_EMBEDDERS)}"
                      + ("; give the model's path after arcface-onnx:" if name == "arcface-onnx" else ""))


def has_gpu() -> bool:
    """Whether torch sees a GPU (CUDA, XPU or Apple MPS); without one, training runs on the CPU."""
    import torch

    return torch.cuda.is_available() or (getattr(torch, "xpu", None) is not None and torch.xpu.is_available()) or (
        torch.backends.mps.is_available())


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on. Paths are stored as given; ``out`` is the run dir. Make one with keyword
    arguments and a ``pairs`` :class:`PairsConfig`, or from flat settings with :meth:`from_flat` / :meth:`load`."""

    dataset: str
    out: str
    # The named experiment (sameid.train.presets) whose settings filled this config's defaults; a label only.
    preset: str | None = None
    # Base model: a Stable Diffusion 1.x id or folder (unet, vae, text_encoder, tokenizer, scheduler), an SDXL one
    # (also text_encoder_2, tokenizer_2; the multi-subject models only), or tiny.
    pretrained: str | None = None
    tiny: bool = False
    # Which random base a tiny run builds: "sd" (Stable Diffusion's layout) or "world" (pixel space, for the small
    # world of sameid.sources.world; sameid.models.components.TINY_KINDS).
    tiny_kind: str = "sd"
    model: str = "retrinet"
    image_encoder: str | None = None  # ip-adapter: a CLIPVisionModelWithProjection id or folder
    # Multi-subject models: the local (face) feature of each reference (PairHuman, arXiv 2511.16712): "dlib" (128-d,
    # offline), "arcface-onnx:<model.onnx>" (512-d; InsightFace's ArcFace models by path), or "none" (no local
    # feature: the ablation without subject-augmented conditioning). None: dlib for a multi-subject model; other
    # models read no face feature and refuse a value.
    face_embedder: str | None = None
    lock: str = "full"
    # Training examples; ``pairs.seed`` is always ``seed``. near_duplicate_bits None: the dataset's recorded one.
    pairs: PairsConfig = field(default_factory=PairsConfig)
    # Identities kept out of training (listed in holdout.json) for `sameid generate` / evaluation, picked by
    # holdout_seed (None: seed), so runs of several seeds can share one held-out set (and a base pretrained
    # without it: sameid experiment claim).
    holdout_identities: int = 0
    holdout_seed: int | None = None
    # Loss (sameid.train.losses.LOSSES): "eq3" is RetriBooru's equation 3 as written (MSE over all elements of the
    # masked valid area + face_loss_weight x the same of the masked face box); "eq3-area-normalised" each term a
    # mean over its mask's cells; "mse" plain MSE, no masks (the official baseline scripts).
    loss: str = "eq3"
    face_loss_weight: float = 0.1
    # Drops, each a probability per example: prompt_drop (a PairsConfig field; flat key also text_drop) that the
    # caption is dropped, image_drop that the references are (each kind as its training does: the denoiser's
    # reference_drop), both_drop that both are, together (at most the smaller of the two).
    image_drop: float = 0.0
    both_drop: float = 0.0
    # Inference defaults the run records (model/denoiser.json too): what guidance's unconditional branch gives for
    # references ("keep" | "zero"), and the reference scale; None: the model kind's (presets.KIND_DEFAULTS).
    unconditional_references: str | None = None
    reference_scale: float | None = None
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
    validation_prompts: tuple[str, ...] = ()
    # accelerate trackers (TRACKERS); a YAML list or a comma-separated text; empty: none (loss.jsonl still written)
    log_with: tuple[str, ...] = ("tensorboard",)

    def __post_init__(self):
        w = _WHERE
        checked: dict[str, Any] = {}
        for name in ("dataset", "out"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            if not isinstance(value, str) or not value.strip():
                raise SameIdError(f"{w}: {name} must be a path, got {value!r}")
            checked[name] = value
        checked["pretrained"] = as_optional_text(w, "pretrained", self.pretrained)
        checked["image_encoder"] = as_optional_text(w, "image_encoder", self.image_encoder)
        checked["preset"] = as_optional_text(w, "preset", self.preset)
        checked["face_embedder"] = _face_embedder(w, self.model, self.face_embedder)
        if checked["preset"] is not None:
            as_choice(w, "preset", checked["preset"], preset_names())
        for name in ("tiny", "gradient_checkpointing"):
            checked[name] = as_bool(w, name, getattr(self, name))
        as_choice(w, "model", self.model, MODELS)
        as_choice(w, "tiny_kind", self.tiny_kind, TINY_KINDS)
        as_choice(w, "lock", self.lock, LOCK_MODES)
        as_choice(w, "lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        as_choice(w, "mixed_precision", self.mixed_precision, MIXED_PRECISION)
        as_choice(w, "loss", self.loss, LOSSES)
        defaults = kind_defaults(self.model)
        checked["unconditional_references"] = as_choice(
            w, "unconditional_references", self.unconditional_references or defaults["unconditional_references"],
            UNCONDITIONAL_REFERENCES)
        checked["reference_scale"] = as_float(
            w, "reference_scale", defaults["reference_scale"] if self.reference_scale is None else self.reference_scale,
            minimum=0.0)
        for name in ("image_drop", "both_drop"):
            checked[name] = as_float(w, f"{name} (a probability)", getattr(self, name), minimum=0.0, maximum=1.0)
        if not isinstance(self.pairs, PairsConfig):
            raise SameIdError(f"{w}: pairs must be a sameid.pairs.PairsConfig, got {type(self.pairs).__name__}")
        for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps",
                     "validation_steps", "validation_inference_steps", "lr_num_cycles"):
            checked[name] = as_int(w, name, getattr(self, name), minimum=1)
        for name in ("holdout_identities", "lr_warmup_steps", "dataloader_num_workers", "seed",
                     "validation_examples"):
            checked[name] = as_int(w, name, getattr(self, name), minimum=0)
        if self.holdout_seed is not None:
            checked["holdout_seed"] = as_int(w, "holdout_seed (or none: the seed)", self.holdout_seed, minimum=0)
        if self.checkpoints_total_limit is not None:
            checked["checkpoints_total_limit"] = as_int(w, "checkpoints_total_limit (or none: keep all)",
                                                        self.checkpoints_total_limit, minimum=1)
        checked["learning_rate"] = as_float(w, "learning_rate", self.learning_rate, above=0.0)
        checked["max_grad_norm"] = as_float(w, "max_grad_norm", self.max_grad_norm, above=0.0)
        for name in ("face_loss_weight", "adam_weight_decay", "validation_guidance_scale"):
            checked[name] = as_float(w, name, getattr(self, name), minimum=0.0)
        checked["validation_prompts"] = as_text_list(w, "validation_prompts", self.validation_prompts)
        log_with = self.log_with
        if isinstance(log_with, str):  # accelerate's own form: one name, or "a,b" as the CLI gives it
            log_with = [name.strip() for name in log_with.split(",") if name.strip()]
        log_with = as_text_list(w, "log_with", log_with)
        for name in log_with:
            as_choice(w, "log_with", name, TRACKERS)
        checked["log_with"] = tuple(dict.fromkeys(log_with))
        # The run's seed is the pairs' seed: one setting, one place.
        checked["pairs"] = dataclasses.replace(self.pairs, seed=checked["seed"])
        for name, value in checked.items():
            object.__setattr__(self, name, value)

        if not self.tiny and not self.pretrained:
            raise SameIdError(f"{w}: give a base model (pretrained: a Stable Diffusion 1.5 id or folder) or tiny: "
                              "true for a random tiny model")
        if self.model in ("ip-adapter", "multi-subject", "multi-subject-shared") and not self.image_encoder \
                and not self.tiny:
            raise SameIdError(f"{w}: model {self.model} needs image_encoder (a CLIPVisionModelWithProjection id or "
                              "folder, e.g. openai/clip-vit-large-patch14)")
        if self.model in MULTI_SUBJECT_MODELS and self.pairs.emphasis != "face":
            raise SameIdError(f"{w}: emphasis {self.pairs.emphasis!r} is for single-subject models; the "
                              f"multi-subject models ({', '.join(MULTI_SUBJECT_MODELS)}) weigh every subject's head "
                              "box: remove emphasis")
        prompt_drop, image_drop, both_drop = self.pairs.prompt_drop, self.image_drop, self.both_drop
        if both_drop > min(prompt_drop, image_drop) + 1e-12:
            raise SameIdError(f"{w}: both_drop ({both_drop}) is the probability that the caption and the references "
                              f"are dropped together, so it cannot exceed prompt_drop ({prompt_drop}) or image_drop "
                              f"({image_drop})")
        if prompt_drop + image_drop - both_drop > 1.0 + 1e-12:
            raise SameIdError(f"{w}: prompt_drop + image_drop - both_drop = {prompt_drop + image_drop - both_drop:g}"
                              " is more than 1; raise both_drop or lower the others")
        if self.pairs.curriculum == "embedding":
            raise SameIdError(f"{w}: curriculum 'embedding' needs image embeddings, which training does not "
                              "compute yet; use phash, or source with curriculum_source_order")

    # -- read-only views of the pairs settings (PairsConfig owns them) ------------------------------------------
    @property
    def mode(self) -> str:
        return self.pairs.mode

    @property
    def task(self) -> str:
        return self.pairs.task

    @property
    def n_references(self) -> int:
        return self.pairs.n_references

    @property
    def resolution(self) -> int:
        return self.pairs.resolution

    @property
    def prompt_drop(self) -> float:
        return self.pairs.prompt_drop

    @property
    def shortfall(self) -> str:
        return self.pairs.shortfall

    @property
    def curriculum(self) -> str | None:
        return self.pairs.curriculum

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    def resolved(self) -> TrainConfig:
        """This config as a run records it in ``config.yaml``: ``dataset`` and ``out`` absolute (and
        ``pretrained`` / ``image_encoder`` when they name an existing local folder), so the file means the same
        from any working directory, under ``accelerate launch`` too; ``near_duplicate_bits`` the dataset's
        recorded threshold when none was set (:meth:`sameid.pairs.PairsConfig.with_dataset_settings`)."""

        def local(value: str | None) -> str | None:
            return os.path.abspath(value) if value and os.path.exists(value) else value

        return dataclasses.replace(self, dataset=os.path.abspath(self.dataset), out=os.path.abspath(self.out),
                                   pretrained=local(self.pretrained), image_encoder=local(self.image_encoder),
                                   pairs=self.pairs.with_dataset_settings(self.dataset))

    def differences(self, other: TrainConfig) -> list[str]:
        """The flat settings in which ``other`` differs from this config in a way a resume cannot accept (both
        resolved first, so ``runs/r`` and ``/abs/runs/r``, or an unset and the dataset's own
        ``near_duplicate_bits``, are the same)."""
        mine, theirs = self.resolved().to_dict(), other.resolved().to_dict()
        return [name for name, value in mine.items() if name not in RESUMABLE_CHANGES and value != theirs[name]]

    @property
    def face_embedder_spec(self) -> str:
        """The face embedder as the multi-subject denoiser takes it ("" for none)."""
        return "" if self.face_embedder in (None, FACE_EMBEDDER_NONE) else self.face_embedder

    def check_machine(self) -> None:
        """Refuse settings this machine cannot train with (before anything is written): a tracker whose package
        is not installed (accelerate would drop it with a log line), an ArcFace ONNX face embedder whose file is
        not here, fp16 mixed precision without a GPU
        (accelerate would silently train without autocast or a loss scaler, with half-precision frozen models),
        bf16 on a GPU without bf16. bf16 on the CPU works (CPU autocast)."""
        import accelerate.utils

        for name in self.log_with:
            if not getattr(accelerate.utils, f"is_{name}_available")():
                raise SameIdError(f"{_WHERE}: log_with {name}: the {name} package is not installed; install it "
                                  f"(pip install {name}) or log with tensorboard")
        if self.face_embedder_spec.startswith("arcface-onnx:"):
            path = self.face_embedder_spec.partition(":")[2]
            if not os.path.isfile(path):
                raise SameIdError(f"{_WHERE}: face_embedder {self.face_embedder}: no such file {path}; give the "
                                  "path of an ArcFace ONNX model (e.g. InsightFace's buffalo_l/w600k_r50.onnx), or "
                                  "face_embedder dlib")
        if self.mixed_precision == "no":
            return
        import torch

        cuda = torch.cuda.is_available()
        if self.mixed_precision == "fp16" and not has_gpu():
            raise SameIdError(f"{_WHERE}: mixed_precision fp16 needs a GPU, and this machine has none; use no "
                              "(or bf16, which works on the CPU)")
        if self.mixed_precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
            raise SameIdError(f"{_WHERE}: mixed_precision bf16 is not supported by this GPU; use fp16 or no")

    # -- the flat file ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The flat settings (what ``config.yaml`` holds): the pairs fields beside the others."""
        values: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            if item.name == "pairs":
                for key, name in PAIRS_KEYS.items():
                    value = getattr(self.pairs, name)
                    values[key] = list(value) if isinstance(value, tuple) else value
            else:
                value = getattr(self, item.name)
                values[item.name] = list(value) if isinstance(value, tuple) else value
        return values

    @classmethod
    def flat_keys(cls) -> tuple[str, ...]:
        return tuple(name for item in dataclasses.fields(cls) for name in
                     (PAIRS_KEYS if item.name == "pairs" else (item.name,)))

    @classmethod
    def from_flat(cls, values: Mapping[str, Any], *, where: str = _WHERE) -> TrainConfig:
        """A config from flat settings (YAML keys, CLI options); unknown keys and bad values are errors that
        name ``where``. A ``preset`` fills every setting not given (:func:`.presets.preset_values`; its fp16
        becomes float32 on a machine without a GPU, in one warning line); ``text_drop`` is ``prompt_drop``."""
        values = dict(values)
        for alias, name in FLAT_ALIASES.items():
            if alias in values:
                value = values.pop(alias)
                if name in values and values[name] != value:
                    raise SameIdError(f"{where}: {alias} and {name} are one setting; give one of them")
                values[name] = value
        if values.get("preset") is not None:
            try:
                preset = preset_values(values["preset"], gpu=has_gpu())
            except SameIdError as exc:
                raise SameIdError(f"{where}: {exc}") from None
            values = {**preset, **values}
        known = cls.flat_keys()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SameIdError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        missing = [name for name in ("dataset", "out") if values.get(name) in (None, "")]
        if missing:
            raise SameIdError(f"{where}: give {' and '.join(missing)} (the dataset dir and the run dir)")
        pairs = {PAIRS_KEYS[key]: values.pop(key) for key in list(values) if key in PAIRS_KEYS}
        try:
            return cls(**values, pairs=PairsConfig(**pairs))
        except SameIdError as exc:
            raise SameIdError(f"{where}: {str(exc).removeprefix(f'{_WHERE}: ')}") from None

    def save(self, path: str | os.PathLike) -> None:
        from ..atomic import write_text_atomic

        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | os.PathLike, *, missing: Mapping[str, Any] | None = None, **overrides) -> TrainConfig:
        """Read a YAML config; ``overrides`` (not None) replace its fields; ``missing`` gives keys the file lacks
        (``RunDir.config``: ``LEGACY_RUN_DEFAULTS``). Unknown keys are an error. An override ``preset`` replaces the
        file's preset; the file's other settings still override the preset's."""
        path = Path(path)
        if not path.is_file():
            raise SameIdError(f"training config {path}: no such file")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SameIdError(f"training config {path}: not valid YAML ({exc})") from None
        if not isinstance(values, dict):
            raise SameIdError(f"training config {path}: expected a mapping of field: value")
        values = {**(missing or {}), **values, **{k: v for k, v in overrides.items() if v is not None}}
        return cls.from_flat(values, where=f"training config {path}")
