"""The ControlNet baseline of RetriBooru (arXiv 2312.02521, §3.1 and appendix A.3).

RetriBooru fine-tunes ControlNet and an IP-Adapter-style model (:mod:`.ip_adapter_denoiser`) on the same data in
two settings: ``-a`` (the reference is another transform of the target image) and ``-b`` (a different image of
the same identity); the setting is a property of the training pairs (``sameid.pairs`` mode ``same`` /
``identity``), not of the model. §3.1: ControlNet "learns pixel-wise control and exploits spatial structures on
purpose, passing conditioning to the U-Net via zero convolutions". The reference is a pixel-aligned condition,
which is why ControlNet-b, whose reference is not aligned with the target, falls back on the text.

Built from diffusers' own ``ControlNetModel`` around an unmodified ``UNet2DConditionModel`` forward; implements
:class:`~sameid.models.conditioning.ReferenceConditionedDenoiser`, so one loop trains RetriNet and both baselines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, UNet2DConditionModel

# diffusers' pipeline loader finds a component's load method through the base classes its module exposes.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401

from ..errors import SameIdError
from .components import SD_VAE_SCALE_FACTOR
from .conditioning import (
    ReferenceConditionedDenoiser,
    ReferenceInputs,
    check_lock,
    decoder_modules,
    dropped_rows,
    enable_parameters,
    like_unet,
    model_config,
    module_or_config,
    per_row,
    valid_pairs,
)

# ControlNet's conditioning embedding (diffusers' ControlNetModel default): each stage after the first halves the size.
CONDITIONING_CHANNELS = (16, 32, 96, 256)


class ControlNetDenoiser(ReferenceConditionedDenoiser):
    """A U-Net with a ``diffusers.ControlNetModel`` whose condition is the reference image (003 §3.1, A.3).

    The ControlNet is a trainable copy of the U-Net encoder joined to it by zero convolutions; it reads the noisy
    latents, the prompt's ``encoder_hidden_states`` and, through its conditioning embedding, the reference pixels.
    The condition is pixel-aligned with the target: its embedding downsamples by ``condition_downsampling``, the
    VAE's scale factor (8 for Stable Diffusion's ``(16, 32, 96, 256)`` channels, 4 for the tiny base's
    ``(16, 32, 96)``), so the condition is the target's pixel size, which is what diffusers'
    ``StableDiffusionControlNetPipeline`` gives it. References of another size are resized to it (bilinear,
    antialiased). ControlNet expects the
    condition in [0, 1] (diffusers' training script and pipeline feed unnormalised ``ToTensor`` pixels), so the
    [-1, 1] reference pixels are mapped to [0, 1].

    With N references, the ControlNet runs on every real reference (padded slots are skipped) and its residuals are
    averaged over each example's real references; an example with none gets no residual (the plain U-Net).
    ``reference_scale`` is ControlNet's ``conditioning_scale``; 0 returns exactly the plain U-Net's output. A
    dropped example (``references.dropped``) gets a zero conditioning image: the ControlNet still runs, on black.
    """

    kind = "controlnet"
    ignore_for_config = ["unet", "controlnet"]
    # diffusers' StableDiffusionControlNetPipeline gives the control image to both guidance branches ("keep").
    reference_drop = "a zero (black) conditioning image"

    def __init__(self, unet: UNet2DConditionModel | None = None, controlnet: ControlNetModel | None = None, *,
                 unet_config: dict | None = None, controlnet_config: dict | None = None,
                 decoder_trained: bool = False):
        """``unet`` and ``controlnet`` as modules, or (how ``from_pretrained`` builds it) their configs."""
        super().__init__()
        unet = module_or_config(unet, unet_config, UNet2DConditionModel.from_config, "ControlNetDenoiser", "unet")
        controlnet = module_or_config(controlnet, controlnet_config, ControlNetModel.from_config,
                                      "ControlNetDenoiser", "controlnet")
        self.unet = unet
        self.controlnet = controlnet
        self.register_to_config(unet_config=model_config(unet), controlnet_config=model_config(controlnet),
                                decoder_trained=bool(decoder_trained))

    @classmethod
    def from_unet(cls, unet, *, vae_scale_factor: int = SD_VAE_SCALE_FACTOR,
                  **controlnet_kwargs) -> ControlNetDenoiser:
        """A ControlNet initialised from ``unet``'s encoder, with zero convolutions and an RGB conditioning input.

        Its conditioning embedding downsamples by ``vae_scale_factor`` (the base VAE's: 8 for Stable Diffusion, 4
        for the tiny base), so the condition is the target's pixel size, as diffusers' ControlNet pipelines feed it:
        ControlNet's own ``(16, 32, 96, 256)`` channels, cut to ``log2(vae_scale_factor) + 1`` stages. Explicit
        ``conditioning_embedding_out_channels`` must give the same factor.
        """
        stages = int(vae_scale_factor).bit_length() - 1
        if vae_scale_factor < 1 or 2 ** stages != vae_scale_factor or stages >= len(CONDITIONING_CHANNELS):
            raise SameIdError(f"vae_scale_factor must be 1, 2, 4 or 8, got {vae_scale_factor}")
        channels = tuple(controlnet_kwargs.pop("conditioning_embedding_out_channels", None)
                         or CONDITIONING_CHANNELS[:stages + 1])
        if 2 ** (len(channels) - 1) != vae_scale_factor:
            raise SameIdError(f"conditioning_embedding_out_channels {channels} downsample by {2 ** (len(channels) - 1)}"
                              f", the VAE by {vae_scale_factor}: give {stages + 1} channel counts")
        controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3,
                                               conditioning_embedding_out_channels=channels, **controlnet_kwargs)
        return cls(unet, like_unet(controlnet, unet))

    @property
    def condition_downsampling(self) -> int:
        return 2 ** (len(self.controlnet.config.conditioning_embedding_out_channels) - 1)

    def condition(self, pixels: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
        """(M, 3, H, W) reference pixels in [-1, 1] -> ControlNet's condition: [0, 1], ``factor x latent_size``."""
        size = tuple(side * self.condition_downsampling for side in latent_size)
        condition = (pixels.to(self.controlnet.dtype) + 1.0) / 2.0
        if tuple(condition.shape[-2:]) != size:
            condition = F.interpolate(condition, size=size, mode="bilinear", align_corners=False, antialias=True)
        return condition.clamp(0.0, 1.0)

    def forward(self, noisy_latents, timesteps, encoder_hidden_states, references: ReferenceInputs,
                reference_scale: float = 1.0) -> torch.Tensor:
        if reference_scale == 0:
            return self.unet(noisy_latents, timesteps, encoder_hidden_states).sample
        rows, slots, counts = valid_pairs(references)
        batch = noisy_latents.shape[0]
        down_residuals = mid_residual = None
        if rows.numel():
            condition = self.condition(references.pixels[rows, slots], noisy_latents.shape[-2:])
            dropped = dropped_rows(references)
            if dropped is not None:
                condition = condition * (~dropped[rows]).to(condition.dtype).view(-1, 1, 1, 1)
            down, mid = self.controlnet(
                noisy_latents[rows], per_row(timesteps, rows), encoder_hidden_states[rows],
                controlnet_cond=condition, conditioning_scale=float(reference_scale), return_dict=False)
            # Mean over each example's real references: index_add sums them in slot order, so padding changes nothing.
            weights = (1.0 / counts.clamp(min=1).to(mid.dtype))[rows]

            def average(residual: torch.Tensor) -> torch.Tensor:
                weighted = residual * weights.view(-1, *([1] * (residual.ndim - 1)))
                return weighted.new_zeros((batch, *residual.shape[1:])).index_add(0, rows, weighted)

            down_residuals = [average(residual) for residual in down]
            mid_residual = average(mid)
        return self.unet(noisy_latents, timesteps, encoder_hidden_states,
                         down_block_additional_residuals=down_residuals,
                         mid_block_additional_residual=mid_residual).sample

    def set_trainable(self, lock: str = "full") -> list[torch.nn.Parameter]:
        """Trainable sets (001 §5.2 mapped onto ControlNet): ``full`` = the ControlNet + the U-Net decoder;
        ``lockd`` = the ControlNet; ``lockb`` = only the zero convolutions (``controlnet_down_blocks``,
        ``controlnet_mid_block`` and the conditioning embedding's zero-initialised ``conv_out``, without which a
        frozen zero ``conv_out`` would shut the reference out); ``adapter`` = the ControlNet, the U-Net frozen whole
        (the official script's set, as ``lockd``). The U-Net encoder is always frozen."""
        lock = check_lock(lock)
        self.requires_grad_(False)
        if lock == "full":
            modules = [self.controlnet, *decoder_modules(self.unet)]
        elif lock == "lockd":
            modules = [self.controlnet]
        else:
            modules = [self.controlnet.controlnet_down_blocks, self.controlnet.controlnet_mid_block,
                       self.controlnet.controlnet_cond_embedding.conv_out]
        if lock == "full":
            self.decoder_trained = True
        return enable_parameters(modules)

    def _export_parts(self, folder) -> dict:
        """``controlnet/``: the trained ``ControlNetModel`` (``save_pretrained``), for diffusers'
        ``StableDiffusionControlNetPipeline``. With one reference its output equals ReferencePipeline's (both give
        the control to both guidance branches); N references are N copies of it in a ``MultiControlNetModel`` with
        conditioning scale 1/N each, whose summed residuals are this model's mean (docs/generate.md)."""
        self.controlnet.save_pretrained(folder / "controlnet", safe_serialization=True)
        return {"controlnet": "controlnet", "condition_downsampling": self.condition_downsampling}

