"""The masked, face-weighted diffusion loss (RetriBooru, arXiv 2312.02521, §5, equation 3).

L' = L(eps * M_tgt, eps_theta * M_tgt) + lambda * L(eps * M_face, eps_theta * M_face), with L the MSE. M_tgt is
the valid area of the (padded) target, M_face its head box; the paper keeps lambda small (A.4) because an equal
weight pulls the model towards close-up faces. Each term is a mean over the pixels its mask keeps (not over the
whole latent), so a small face box or a heavily padded target is not down-weighted by its size; an example
without a face box contributes nothing to the face term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossParts:
    total: torch.Tensor
    valid_area: torch.Tensor
    face: torch.Tensor


def latent_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (B, 1, H, W) pixel mask brought to latent size: the fraction of each latent cell's pixels inside it."""
    return F.adaptive_avg_pool2d(mask.float(), size)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per example, the mean squared error over the cells ``mask`` weights (0 where the mask is empty)."""
    weight = mask.expand_as(prediction)
    squared = (prediction.float() - target.float()) ** 2 * weight
    total = weight.flatten(1).sum(dim=1)
    return squared.flatten(1).sum(dim=1) / total.clamp_min(1e-8)


def masked_diffusion_loss(prediction: torch.Tensor, target: torch.Tensor, valid_mask: torch.Tensor,
                          face_mask: torch.Tensor, face_loss_weight: float = 0.1) -> LossParts:
    """Equation 3 for a batch: ``prediction``/``target`` (B, C, h, w) latents, masks (B, 1, H, W) in pixels."""
    size = prediction.shape[-2:]
    valid = masked_mse(prediction, target, latent_mask(valid_mask, size)).mean()
    face = masked_mse(prediction, target, latent_mask(face_mask, size)).mean()
    return LossParts(total=valid + face_loss_weight * face, valid_area=valid, face=face)
