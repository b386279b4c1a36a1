"""A trivial autoencoder for pixel-space diffusion: the latents are the pixels.

The small world of :mod:`sameid.sources.world` is learnt from scratch on a CPU in minutes, which a latent diffusion
model cannot do without a trained VAE. :class:`PixelAutoencoder` stands where the VAE stands (the training loop,
the reference preparation and :class:`~sameid.pipelines.ReferencePipeline` call ``encode`` / ``decode`` and read
``config.block_out_channels``, ``config.latent_channels`` and ``config.scaling_factor`` as they do for
``diffusers.AutoencoderKL``), so the U-Net denoises pixels in [-1, 1] directly, as DDPM does (Ho et al.,
"Denoising Diffusion Probabilistic Models", arXiv 2006.11239, §4), rearranged by ``patch_size``: each
``patch_size`` x ``patch_size`` block of pixels becomes one latent cell of ``3 * patch_size**2`` channels
(``pixel_unshuffle``; ``pixel_shuffle`` undoes it exactly), which quarters the cells the U-Net and RetriNet's
attention see at a patch size of 2. It has one 1x1 convolution each way, set to the identity and frozen (a model
needs weights to have a device and a dtype); the latent distribution is deterministic, so ``latent_dist.sample()``
is the rearranged pixels and ``decode(encode(x))`` is ``x``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class PixelAutoencoder(ModelMixin, ConfigMixin):
    """Identity encoder and decoder with AutoencoderKL's interface. ``block_out_channels`` has
    ``log2(patch_size) + 1`` entries, so the scale factor the pipeline reads (``2 ** (len(block_out_channels) -
    1)``) is ``patch_size``; ``latent_channels`` is ``in_channels * patch_size**2``."""

    @register_to_config
    def __init__(self, in_channels: int = 3, patch_size: int = 2, latent_channels: int = 12,
                 block_out_channels: tuple[int, ...] = (12, 12), scaling_factor: float = 1.0):
        super().__init__()
        levels = math.log2(patch_size) if patch_size >= 1 else -1
        if levels != int(levels) or latent_channels != in_channels * patch_size ** 2 or (
                len(block_out_channels) != int(levels) + 1):
            raise ValueError("PixelAutoencoder rearranges pixels: patch_size must be a power of 2, latent_channels "
                             "in_channels * patch_size**2 and block_out_channels log2(patch_size) + 1 entries long")
        self.patch_size = patch_size
        self.encoder_projection = nn.Conv2d(in_channels, in_channels, 1)
        self.decoder_projection = nn.Conv2d(in_channels, in_channels, 1)
        with torch.no_grad():
            for conv in (self.encoder_projection, self.decoder_projection):
                conv.weight.copy_(torch.eye(in_channels).view(in_channels, in_channels, 1, 1))
                conv.bias.zero_()
        self.requires_grad_(False)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        mean = F.pixel_unshuffle(self.encoder_projection(x), self.patch_size)
        posterior = DiagonalGaussianDistribution(torch.cat([mean, torch.zeros_like(mean)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        sample = self.decoder_projection(F.pixel_shuffle(z, self.patch_size))
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator=None):
        decoded = self.decode(self.encode(sample).latent_dist.mode()).sample
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)
