"""What every reference-conditioned denoiser takes and how it says what it trains.

RetriNet (RetriBooru, arXiv 2312.02521, §5), the ControlNet baseline and the IP-Adapter-style baseline
(RetriBooru, arXiv 2312.02521, A.3) are variants of one thing: a U-Net noise prediction conditioned on the prompt
and on N reference images with their concept captions. They share this interface so one training loop, one
pipeline and one benchmark serve them all, variants chosen by configuration (docs/architecture.md: no per-variant scripts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Trainable sets of 001 §5.2: "full" trains the retrieval encoder, the cross-attentions and the U-Net decoder;
# LockD freezes the decoder; LockB freezes the decoder and the retrieval encoder (only the cross-attentions learn).
LOCK_MODES = ("full", "lockd", "lockb")
# The U-Net decoder that "full" trains: its top-level modules after the mid block.
UNET_DECODER_MODULES = ("up_blocks", "conv_norm_out", "conv_out")


@dataclass
class ReferenceInputs:
    """The references of a batch, already on the model's device.

    ``pixels``: (B, N, 3, H, W) in [-1, 1] (ControlNet and image-encoder baselines read pixels);
    ``latents``: (B, N, C, h, w) VAE latents, already multiplied by the VAE scaling factor (RetriNet reads latents;
    None for a denoiser whose ``uses_reference_latents`` is False, so nobody pays for a VAE pass it does not read);
    ``concept_embeds``: (B, N, L, D) text-encoder hidden states of each reference's concept caption
    ("face", "clothes", "figure"); ``valid``: (B, N) bool, False for a padded slot (a batch whose examples have
    fewer references than the widest one); None means all slots are real.
    """

    pixels: torch.Tensor
    latents: torch.Tensor | None
    concept_embeds: torch.Tensor
    valid: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return int(self.pixels.shape[1])


class ReferenceConditionedDenoiser(torch.nn.Module):
    """A U-Net plus the modules that condition it on references.

    ``forward(noisy_latents, timesteps, encoder_hidden_states, references, reference_scale=1.0)`` returns the
    U-Net's prediction (same shape as ``noisy_latents``); ``reference_scale=0`` must give exactly the plain U-Net's
    output. ``set_trainable(lock)`` sets ``requires_grad`` on exactly the parameters ``lock`` trains and returns
    them. ``save_pretrained(dir)`` / ``from_pretrained(dir, unet)`` store only the conditioning modules (and the
    U-Net decoder when it was trained) in safetensors, diffusers-style.
    """

    kind: str = ""
    # Whether forward reads ReferenceInputs.latents (RetriNet) or only pixels (ControlNet, IP-Adapter).
    uses_reference_latents: bool = False

    def set_trainable(self, lock: str = "full") -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def save_pretrained(self, directory) -> None:
        raise NotImplementedError
