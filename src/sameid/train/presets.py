"""The paper's experiments as named presets: ``sameid train --preset NAME`` (or ``preset: NAME`` in a config.yaml).

Each preset is the flat settings one experiment of RetriBooru (arXiv 2312.02521) trains with: RetriNet as §5.2 sets
it (and its Table 3 ablations), the ControlNet and IP-Adapter baselines of §3.1 / A.3 as the paper and their
official training scripts set them (diffusers' ``examples/controlnet/train_controlnet.py``; IP-Adapter's
``tutorial_train.py``). A preset only fills defaults: a setting given explicitly (an option, a key of the YAML file)
overrides it, and the run's ``config.yaml`` records the preset's name and every resulting value. A name ending in
``-a`` or ``-b`` also sets the mode (``same`` / ``identity``, §3.1), e.g. ``ip-adapter-b``.

Where the paper's text lost a number (learning rate, λ, the baselines' batch size and steps), the value is sameid's
choice and docs/papers-to-code.md says so. ``KIND_DEFAULTS`` holds what each model kind uses at inference when no
preset or setting says otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import SameIdError

logger = logging.getLogger(__name__)

#: Per model kind, the inference settings a run records when nothing sets them: what the unconditional branch of
#: guidance gives for references, and the default reference scale (IP-Adapter: a zero image embedding, as its
#: inference and diffusers do; scale 0.5, RetriBooru §3.1 / A.3's evaluation scale for IP-Adapter).
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "retrinet": {"unconditional_references": "keep", "reference_scale": 1.0},
    "controlnet": {"unconditional_references": "keep", "reference_scale": 1.0},
    "ip-adapter": {"unconditional_references": "zero", "reference_scale": 0.5},
    # PairHuman (arXiv 2511.16712) guides with its reference weight schedule, not with the unconditional branch:
    # the references stay in both branches, as RetriNet's.
    "multi-subject": {"unconditional_references": "keep", "reference_scale": 1.0},
    "multi-subject-shared": {"unconditional_references": "keep", "reference_scale": 1.0},
}
_OTHER_KIND = {"unconditional_references": "keep", "reference_scale": 1.0}
#: Suffix of a preset name -> the mode it sets (RetriBooru §3.1: -a the same image transformed, -b another image).
MODE_SUFFIXES = {"-a": "same", "-b": "identity"}


@dataclass(frozen=True)
class Preset:
    """One experiment: its flat settings (``values``), what it is and where each value comes from."""

    name: str
    experiment: str
    source: str
    values: Mapping[str, Any]


# RetriNet, RetriBooru §5.2: "resolution 384, FP32, batch size 1 but accumulate every 8 batches", 9000 steps,
# trainable retrieval block and U-Net decoder (LockD / LockB the ablations), prompt drop p = 0.5, N = 4 references;
# A.4: cosine schedule with restarts, the face term of eq. 3 with a small lambda (its value and the learning rate
# were lost from the text: 0.1 and 1e-5 are sameid's).
_RETRINET = {
    "model": "retrinet", "lock": "full", "loss": "eq3", "face_loss_weight": 0.1, "resolution": 384,
    "n_references": 4, "prompt_drop": 0.5, "image_drop": 0.0, "both_drop": 0.0, "mixed_precision": "no",
    "train_batch_size": 1, "gradient_accumulation_steps": 8, "max_train_steps": 9000, "learning_rate": 1e-5,
    "lr_scheduler": "cosine_with_restarts", "lr_warmup_steps": 0, **KIND_DEFAULTS["retrinet"],
}
# The baselines, RetriBooru §3.1 / A.3: "resolution 256 and FP16 for all methods", the official code's defaults,
# "we do not leverage extra training tricks such as additional loss updates on face parts" (plain MSE), "-b: we
# choose a random reference image as the conditioning" (one reference). Both official scripts freeze the U-Net and
# train only their own modules (lock adapter) with a constant learning rate. A.3 trains every method with one
# batch size, accumulation and learning rate whose values the text lost: sameid uses RetriNet's (1 x 8, 1e-5).
_BASELINE = {
    "lock": "adapter", "loss": "mse", "face_loss_weight": 0.0, "resolution": 256, "n_references": 1,
    "mixed_precision": "fp16", "train_batch_size": 1, "gradient_accumulation_steps": 8, "max_train_steps": 9000,
    "learning_rate": 1e-5, "lr_scheduler": "constant", "lr_warmup_steps": 0,
}

PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset("retrinet", "R9k (Table 3): RetriNet, retrieval encoder + U-Net decoder trained",
           "RetriBooru §5.2, A.4", _RETRINET),
    Preset("retrinet-45k", "R45k (Table 3): the longer run", "RetriBooru §5.2",
           {**_RETRINET, "max_train_steps": 45000}),
    Preset("retrinet-lockd", "R9kLockD (Table 3): U-Net decoder frozen", "RetriBooru §5.2",
           {**_RETRINET, "lock": "lockd"}),
    Preset("retrinet-lockb", "R9kLockB (Table 3): U-Net decoder and retrieval encoder frozen", "RetriBooru §5.2",
           {**_RETRINET, "lock": "lockb"}),
    Preset("retrinet-p025", "R9kP025 (Table 3): prompt drop 0.25", "RetriBooru §5.2",
           {**_RETRINET, "prompt_drop": 0.25}),
    Preset("retrinet-p075", "R9kP075 (Table 3): prompt drop 0.75", "RetriBooru §5.2",
           {**_RETRINET, "prompt_drop": 0.75}),
    # diffusers' train_controlnet.py: U-Net frozen, the ControlNet trained, F.mse_loss; A.3 sets
    # proportion_empty_prompts (the value was lost; 0.5 is ControlNet's own "50% empty prompts").
    Preset("controlnet", "ControlNet-a / -b (Table 2)", "RetriBooru §3.1, A.3; diffusers train_controlnet.py",
           {**_BASELINE, "model": "controlnet", "prompt_drop": 0.5, "image_drop": 0.0, "both_drop": 0.0,
            **KIND_DEFAULTS["controlnet"]}),
    # IP-Adapter's tutorial_train.py: U-Net frozen, image_proj_model + adapter_modules trained, F.mse_loss; one draw
    # per example: image only 0.05, text only 0.05, both 0.05 -- in sameid's marginal terms prompt_drop 0.10,
    # image_drop 0.10, both_drop 0.05. Inference: zero image embeds unconditional, scale 0.5 (§3.1, A.3).
    Preset("ip-adapter", "IP-Adapter-a / -b (Table 2)", "RetriBooru §3.1, A.3; IP-Adapter tutorial_train.py",
           {**_BASELINE, "model": "ip-adapter", "prompt_drop": 0.10, "image_drop": 0.10, "both_drop": 0.05,
            **KIND_DEFAULTS["ip-adapter"]}),
)}


def kind_defaults(model: str) -> dict[str, Any]:
    """The inference settings of model kind ``model`` when nothing sets them (``KIND_DEFAULTS``)."""
    return dict(KIND_DEFAULTS.get(model, _OTHER_KIND))


def preset_names() -> list[str]:
    """Every accepted name: each preset, and each with ``-a`` / ``-b``."""
    return [f"{name}{suffix}" for name in PRESETS for suffix in ("", *MODE_SUFFIXES)]


def preset_values(name: str, *, gpu: bool = True) -> dict[str, Any]:
    """The flat settings of preset ``name`` (a name of ``PRESETS``, optionally ending in ``-a`` / ``-b``, which
    sets the mode). Without a GPU (``gpu`` False) a preset's fp16 becomes "no" (float32), in one warning line:
    fp16 training needs a GPU; the run's config.yaml records what was used."""
    if not isinstance(name, str) or not name.strip():
        raise SameIdError(f"preset must be a name, got {name!r}; choose one of: {', '.join(PRESETS)}")
    base, mode = name.strip(), None
    if base not in PRESETS:
        for suffix, suffix_mode in MODE_SUFFIXES.items():
            if base.endswith(suffix) and base[:-len(suffix)] in PRESETS:
                base, mode = base[:-len(suffix)], suffix_mode
                break
        else:
            raise SameIdError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)} (each also with -a "
                              "or -b for the mode)")
    values = dict(PRESETS[base].values)
    if mode is not None:
        values["mode"] = mode
    if values.get("mixed_precision") == "fp16" and not gpu:
        logger.warning("preset %s trains in fp16, which needs a GPU; this machine has none, so this run trains in "
                       "float32 (mixed_precision no)", name)
        values["mixed_precision"] = "no"
    return values
