"""What every reference-conditioned denoiser takes and how it says what it trains.

RetriNet (RetriBooru, arXiv 2312.02521, §5), the ControlNet baseline and the IP-Adapter-style baseline
(RetriBooru, arXiv 2312.02521, A.3) are variants of one thing: a U-Net noise prediction conditioned on the prompt
and on N reference images with their concept captions. They share this interface so one training loop, one
pipeline and one benchmark serve them all, variants chosen by configuration (docs/architecture.md: no per-variant scripts).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin

from ..errors import SameIdError
from ..references import ReferenceInputs

# Trainable sets of RetriBooru (arXiv 2312.02521), §5.2: "full" trains the retrieval encoder, the cross-attentions
# and the U-Net decoder; LockD freezes the decoder; LockB freezes the decoder and the retrieval encoder (only the
# cross-attentions learn).
LOCK_MODES = ("full", "lockd", "lockb")
# The U-Net decoder that "full" trains: its top-level modules after the mid block.
UNET_DECODER_MODULES = ("up_blocks", "conv_norm_out", "conv_out")
# The config file of every saved denoiser (ModelMixin writes its weights beside it): it names the class, which is
# how sameid.models.denoisers.load_denoiser picks the kind.
DENOISER_CONFIG = "denoiser.json"

__all__ = ["DENOISER_CONFIG", "LOCK_MODES", "UNET_DECODER_MODULES", "ReferenceConditionedDenoiser", "ReferenceInputs",
           "check_lock", "model_config"]


def check_lock(lock: str) -> None:
    if lock not in LOCK_MODES:
        raise SameIdError(f"unknown lock mode {lock!r}: use one of {', '.join(LOCK_MODES)}")


def model_config(model) -> dict:
    """A diffusers model's (or transformers config's) init arguments as a plain JSON-able dict."""
    config = model.config
    items = config.to_dict() if hasattr(config, "to_dict") and not isinstance(config, dict) else dict(config)
    return {key: value for key, value in items.items() if not key.startswith("_")}


class ReferenceConditionedDenoiser(ModelMixin, ConfigMixin):
    """A U-Net plus the modules that condition it on references: a diffusers model.

    ``forward(noisy_latents, timesteps, encoder_hidden_states, references, reference_scale=1.0)`` returns the
    U-Net's prediction (same shape as ``noisy_latents``); ``reference_scale=0`` must give exactly the plain U-Net's
    output. ``set_trainable(lock)`` sets ``requires_grad`` on exactly the parameters ``lock`` trains and returns
    them.

    Config and weights are diffusers': the config (``denoiser.json``) holds the configs of every part (the U-Net's
    among them) and the flag ``decoder_trained``; ``save_pretrained(dir)`` writes it with all weights, frozen
    U-Net included, and ``from_pretrained(dir)`` rebuilds the denoiser from that folder alone, so a
    :class:`~sameid.pipelines.ReferencePipeline` saves and loads it like any diffusers model. Each subclass takes
    its parts as modules (``from_unet`` builds fresh ones around a base U-Net) or, when loaded, builds them from
    its config; the module arguments are left out of the config (``ignore_for_config``).
    """

    config_name = DENOISER_CONFIG
    _supports_gradient_checkpointing = True
    kind: str = ""
    # Whether forward reads ReferenceInputs.latents (RetriNet) or only pixels (ControlNet, IP-Adapter).
    uses_reference_latents: bool = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained`` of a folder written by ``save_pretrained`` (a run's ``model/``, a saved
        pipeline's ``denoiser/``); a folder without ``denoiser.json`` raises MissingModelError."""
        from pathlib import Path

        from ..errors import MissingModelError

        config = Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "", DENOISER_CONFIG)
        if not config.is_file():
            raise MissingModelError(f"no {cls.__name__} at {pretrained_model_name_or_path}: {config.name} is "
                                    "missing (pass a folder written by save_pretrained, e.g. a training run's model/)")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @property
    def decoder_trained(self) -> bool:
        """Whether the U-Net decoder differs from the base model's (trained by lock "full", or loaded so)."""
        return bool(self.config.get("decoder_trained", False))

    @decoder_trained.setter
    def decoder_trained(self, value: bool) -> None:
        self.register_to_config(decoder_trained=bool(value))

    def unet_decoder_parameters(self) -> list[torch.nn.Parameter]:
        """The U-Net decoder's own weights (attention processors' weights, e.g. IP-Adapter's, excluded)."""
        return [p for name, p in self.unet.named_parameters()
                if name.split(".", 1)[0] in UNET_DECODER_MODULES and ".processor." not in name]

    def set_trainable(self, lock: str = "full") -> list[torch.nn.Parameter]:
        raise NotImplementedError


# -- helpers the denoisers share -------------------------------------------------------------------------------------
def decoder_modules(unet) -> list[torch.nn.Module]:
    """The U-Net decoder's top-level modules (``UNET_DECODER_MODULES``) that this U-Net has."""
    return [module for name in UNET_DECODER_MODULES if (module := getattr(unet, name, None)) is not None]


def enable_parameters(modules) -> list[torch.nn.Parameter]:
    """Set ``requires_grad`` on every parameter of ``modules``; returns them, each once, in order."""
    seen: set[int] = set()
    parameters = [p for module in modules for p in module.parameters() if not (id(p) in seen or seen.add(id(p)))]
    for parameter in parameters:
        parameter.requires_grad_(True)
    return parameters


def valid_pairs(references: ReferenceInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(example index, slot index) of every real reference, row-major, and each example's count of them."""
    batch, count = references.pixels.shape[:2]
    device = references.pixels.device
    valid = references.valid
    if valid is None:
        valid = torch.ones(batch, count, dtype=torch.bool, device=device)
    rows, slots = valid.to(device=device, dtype=torch.bool).nonzero(as_tuple=True)
    return rows, slots, valid.sum(dim=1)


def per_row(value, rows: torch.Tensor):
    """``value`` (a per-example tensor, or a scalar timestep shared by the batch) for the examples ``rows``."""
    if isinstance(value, torch.Tensor) and value.ndim > 0:
        return value[rows]
    return value


def like_unet(module, unet):
    """``module`` on the U-Net's device and in its dtype (cast only when they differ: a diffusers model warns)."""
    module = module.to(device=unet.device)
    return module if module.dtype == unet.dtype else module.to(dtype=unet.dtype)
