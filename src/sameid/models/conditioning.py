"""What every reference-conditioned denoiser takes and how it says what it trains.

RetriNet (RetriBooru, arXiv 2312.02521, §5), the ControlNet baseline and the IP-Adapter-style baseline
(RetriBooru, arXiv 2312.02521, A.3) are variants of one thing: a U-Net noise prediction conditioned on the prompt
and on N reference images with their concept captions. They share this interface so one training loop, one
pipeline and one benchmark serve them all, variants chosen by configuration (docs/architecture.md: no per-variant scripts).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin

from ..errors import SameIdError
from ..references import ReferenceInputs

# Trainable sets of RetriBooru (arXiv 2312.02521), §5.2: "full" trains the retrieval encoder, the cross-attentions
# and the U-Net decoder; LockD freezes the decoder; LockB freezes the decoder and the retrieval encoder (only the
# cross-attentions learn). "adapter": the base U-Net frozen whole, only the modules added to it train, which is how
# the official ControlNet (diffusers' examples/controlnet/train_controlnet.py) and IP-Adapter (tutorial_train.py)
# scripts train; for every kind that is the same set as LockD (LOCK_SETS), named for what it means to a baseline.
LOCK_MODES = ("full", "lockd", "lockb", "adapter")
#: Lock mode -> the trainable set each denoiser's ``set_trainable`` implements.
LOCK_SETS = {"full": "full", "lockd": "lockd", "lockb": "lockb", "adapter": "lockd"}
# What the unconditional branch of classifier-free guidance gives the model for references (and what an image drop
# gives it in training): "keep" the references (only the prompt is unconditional), or "zero" them, each kind as its
# own training does (ReferenceConditionedDenoiser.reference_drop).
UNCONDITIONAL_REFERENCES = ("keep", "zero")
# The U-Net decoder that "full" trains: its top-level modules after the mid block.
UNET_DECODER_MODULES = ("up_blocks", "conv_norm_out", "conv_out")
# The config file of every saved denoiser (ModelMixin writes its weights beside it): it names the class, which is
# how sameid.models.denoisers.load_denoiser picks the kind.
DENOISER_CONFIG = "denoiser.json"
# What ``export_diffusers`` writes beside the standard diffusers folders: the kind, which folders it wrote and how
# to load them. It also marks the folder as an export, which a later export may replace.
EXPORT_MANIFEST = "sameid_export.json"

__all__ = ["DENOISER_CONFIG", "EXPORT_MANIFEST", "LOCK_MODES", "LOCK_SETS", "UNCONDITIONAL_REFERENCES",
           "UNET_DECODER_MODULES", "ReferenceConditionedDenoiser", "ReferenceInputs", "check_lock", "dropped_rows",
           "model_config"]


def check_lock(lock: str) -> str:
    """The trainable set ``lock`` names (``LOCK_SETS``: "adapter" is LockD's set); an unknown mode is an error."""
    if lock not in LOCK_MODES:
        raise SameIdError(f"unknown lock mode {lock!r}: use one of {', '.join(LOCK_MODES)}")
    return LOCK_SETS[lock]


def dropped_rows(references: ReferenceInputs) -> torch.Tensor | None:
    """(B,) bool: the examples whose references are dropped (``ReferenceInputs.dropped``), None when none is."""
    dropped = references.dropped
    if dropped is None:
        return None
    dropped = dropped.to(device=references.pixels.device, dtype=torch.bool).reshape(-1)
    return dropped if bool(dropped.any()) else None


def model_config(model) -> dict:
    """A diffusers model's (or transformers config's) init arguments as a plain JSON-able dict."""
    config = model.config
    items = config.to_dict() if hasattr(config, "to_dict") and not isinstance(config, dict) else dict(config)
    return {key: value for key, value in items.items() if not key.startswith("_")}


def module_or_config(module, config: dict | None, build, owner: str, name: str):
    """``module`` as given, or built by ``build(config)``: a denoiser takes its parts as modules when made in code
    and as configs when ``from_pretrained`` rebuilds it (the weights follow from the saved state dict)."""
    if module is not None:
        return module
    if config is None:
        raise SameIdError(f"{owner} needs a {name} or a {name}_config")
    return build(config)


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
    #: What a dropped example (``ReferenceInputs.dropped``: an image drop in training, the unconditional branch of
    #: guidance with ``unconditional_references`` "zero") gives the model, in words; None: this kind cannot drop.
    reference_drop: str | None = None
    #: The unconditional branch of this kind when its config does not say (see :attr:`unconditional_references`).
    default_unconditional_references: str = "keep"
    #: Whether forward takes ``added_cond_kwargs`` (an SDXL U-Net's pooled text and time ids) and passes them to the
    #: U-Net: only such a kind trains and generates on an SDXL base.
    accepts_added_conditions: bool = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained`` of a folder written by ``save_pretrained`` (a run's ``model/``, a saved
        pipeline's ``denoiser/``); a folder without ``denoiser.json`` raises MissingModelError."""
        from ..errors import MissingModelError

        config = Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "", DENOISER_CONFIG)
        if not config.is_file():
            raise MissingModelError(f"no {cls.__name__} at {pretrained_model_name_or_path}: {config.name} is "
                                    "missing (pass a folder written by save_pretrained, e.g. a training run's model/)")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    #: Inference settings a run records in the config (``register_to_config``), not constructor arguments.
    _inference_config_keys = ("unconditional_references", "reference_scale")

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """diffusers' split of a config into constructor arguments and the rest, with the recorded inference
        settings kept as config entries (restored on load) instead of reported as unexpected arguments."""
        inference = {key: config_dict[key] for key in cls._inference_config_keys if key in config_dict}
        rest = {key: value for key, value in config_dict.items() if key not in inference}
        init_dict, unused, hidden = super().extract_init_dict(rest, **kwargs)
        hidden.update(inference)
        return init_dict, unused, hidden

    @property
    def decoder_trained(self) -> bool:
        """Whether the U-Net decoder differs from the base model's (trained by lock "full", or loaded so)."""
        return bool(self.config.get("decoder_trained", False))

    @decoder_trained.setter
    def decoder_trained(self, value: bool) -> None:
        self.register_to_config(decoder_trained=bool(value))

    @property
    def unconditional_references(self) -> str:
        """What the unconditional branch of classifier-free guidance gives for references: "keep" (the same
        references as the conditional branch: guidance acts on the prompt alone) or "zero" (every reference
        dropped, :attr:`reference_drop`: the unconditional image input its kind trains with, e.g. IP-Adapter's
        zero image embedding). Saved in the config; default :attr:`default_unconditional_references`."""
        return str(self.config.get("unconditional_references") or self.default_unconditional_references)

    @unconditional_references.setter
    def unconditional_references(self, value: str) -> None:
        if value not in UNCONDITIONAL_REFERENCES:
            raise SameIdError(f"unconditional_references must be one of {', '.join(UNCONDITIONAL_REFERENCES)}, "
                              f"got {value!r}")
        if value == "zero" and self.reference_drop is None:
            raise SameIdError(f"{type(self).__name__} cannot drop references, so its unconditional branch cannot "
                              "zero them; use keep")
        self.register_to_config(unconditional_references=value)

    @property
    def default_reference_scale(self) -> float:
        """The reference scale a pipeline uses when none is given: the run's (saved in the config), else 1.0."""
        return float(self.config.get("reference_scale", 1.0))

    @default_reference_scale.setter
    def default_reference_scale(self, value: float) -> None:
        self.register_to_config(reference_scale=float(value))

    def unet_decoder_parameters(self) -> list[torch.nn.Parameter]:
        """The U-Net decoder's own weights (attention processors' weights, e.g. IP-Adapter's, excluded)."""
        return [p for name, p in self.unet.named_parameters()
                if name.split(".", 1)[0] in UNET_DECODER_MODULES and ".processor." not in name]

    def set_trainable(self, lock: str = "full") -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def add_reference_features(self, references: ReferenceInputs) -> ReferenceInputs:
        """``references`` with what this denoiser reads but cannot compute in its torch forward (the
        multi-subject denoiser's face embeddings); the training loop and the pipeline call it once per batch.
        Default: unchanged."""
        return references

    def export_diffusers(self, directory, *, include_unet: bool | None = None) -> Path:
        """Write this denoiser in the form diffusers' standard pipelines load as they are; returns ``directory``.

        The baseline's own part (``controlnet/``; ``ip_adapter/``), plus ``unet/``, a plain
        ``UNet2DConditionModel`` (``save_pretrained`` layout, no attention-processor weights), when
        ``include_unet`` (default: :attr:`decoder_trained`, i.e. lock "full", whose U-Net differs from the base's),
        and ``sameid_export.json`` saying what is there and how to load it (docs/generate.md). The folder is
        written beside ``directory`` and swapped in whole; an existing ``directory`` must be empty or an earlier
        export. RetriNet has no standard diffusers pipeline: save a ReferencePipeline instead.
        """
        from ..atomic import write_directory_atomic, write_json_atomic

        directory = Path(directory)
        if directory.is_file() or (directory.is_dir() and any(directory.iterdir())
                                   and not (directory / EXPORT_MANIFEST).is_file()):
            raise SameIdError(f"{directory} exists and is not an earlier export (no {EXPORT_MANIFEST}): "
                              "choose a new or empty folder")
        include_unet = self.decoder_trained if include_unet is None else bool(include_unet)

        def write(folder: Path) -> None:
            manifest = {"kind": self.kind, "decoder_trained": self.decoder_trained, **self._export_parts(folder)}
            manifest["unet"] = None
            if include_unet:
                save_plain_unet(self.unet, folder / "unet")
                manifest["unet"] = "unet"
            write_json_atomic(folder / EXPORT_MANIFEST, manifest)

        return write_directory_atomic(directory, write)

    def _export_parts(self, folder: Path) -> dict:
        """Write the baseline's own diffusers parts into ``folder``; returns their manifest entries."""
        raise SameIdError(f"{type(self).__name__} has no standard diffusers pipeline to export to: save a "
                          "ReferencePipeline (save_pretrained) instead")


# -- helpers the denoisers share -------------------------------------------------------------------------------------
def save_plain_unet(unet, directory: Path) -> Path:
    """``unet`` as a stock ``UNet2DConditionModel`` folder (``config.json`` and
    ``diffusion_pytorch_model.safetensors``, what ``save_pretrained`` writes) without the weights of attention
    processors set on it (IP-Adapter's ``to_k_ip`` / ``to_v_ip``, exported on their own), so
    ``UNet2DConditionModel.from_pretrained`` loads it with no unexpected keys and without copying the model."""
    from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import save_file

    from ..atomic import write_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    unet.save_config(directory)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in unet.state_dict().items()
             if ".processor." not in name}
    write_atomic(directory / SAFETENSORS_WEIGHTS_NAME,
                 lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    return directory


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
