"""The diffusion training loss: RetriBooru's masked, face-weighted equation 3 and its alternatives.

RetriBooru, arXiv 2312.02521, §5, equation 3: ``L' = L(eps * M_tgt, eps_theta * M_tgt) + lambda * L(eps * M_face,
eps_theta * M_face)`` with L the MSE. M_tgt is the valid area of the (padded) target, M_face its head box, both
brought to latent size by area averaging; the paper keeps lambda small (A.4) because an equal weight pulls the model
towards close-up faces. Three ways to compute it (``LOSSES``, ``TrainConfig.loss``):

* ``eq3`` (default) -- the equation as written: each L is the mean over *all* elements of the latent (B x C x h x
  w) of the squared difference of the masked tensors, ``mean((eps * M - eps_theta * M) ** 2)``. A face box covering
  6 % of the latent therefore weighs about lambda x 6 % of the valid-area term, which is what the paper's lambda
  means.
* ``eq3-area-normalised`` -- sameid's earlier reading: each term is the mean over the cells its mask keeps
  (weighted by the mask, 0 where the mask is empty), so neither a small face box nor a heavily padded target is
  down-weighted by its size. lambda = 0.1 then gives a 6 % face box about 9 % of the loss instead of about 1 %: the
  same lambda means a stronger face term than the paper's.
* ``mse`` -- the plain MSE over every element, no masks and no face term: what the official ControlNet
  (diffusers' ``train_controlnet.py``) and IP-Adapter (``tutorial_train.py``) scripts train with, and what
  RetriBooru §3.1 says its baselines used ("we do not leverage extra training tricks such as additional loss
  updates on face parts").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import SameIdError

LOSSES = ("eq3", "eq3-area-normalised", "mse")


@dataclass
class LossParts:
    """``total`` (what is optimised), its valid-area term and its face term before lambda (0 for ``mse``)."""

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


def mse_of_masked(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``L(eps * M, eps_theta * M)`` of equation 3 as written: the mean over every element of the squared
    difference of the masked tensors (the mask broadcast over channels)."""
    mask = mask.expand_as(prediction)
    return F.mse_loss(prediction.float() * mask, target.float() * mask)


def masked_diffusion_loss(prediction: torch.Tensor, target: torch.Tensor, valid_mask: torch.Tensor,
                          face_mask: torch.Tensor, face_loss_weight: float = 0.1, loss: str = "eq3") -> LossParts:
    """The loss of a batch: ``prediction``/``target`` (B, C, h, w) latents, masks (B, 1, H, W) in pixels,
    ``face_loss_weight`` lambda, ``loss`` one of ``LOSSES`` (see the module doc)."""
    if loss == "mse":
        total = F.mse_loss(prediction.float(), target.float())
        return LossParts(total=total, valid_area=total, face=torch.zeros_like(total))
    size = prediction.shape[-2:]
    valid_cells, face_cells = latent_mask(valid_mask, size), latent_mask(face_mask, size)
    if loss == "eq3":
        valid = mse_of_masked(prediction, target, valid_cells)
        face = mse_of_masked(prediction, target, face_cells)
    elif loss == "eq3-area-normalised":
        valid = masked_mse(prediction, target, valid_cells).mean()
        face = masked_mse(prediction, target, face_cells).mean()
    else:
        raise SameIdError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    return LossParts(total=valid + face_loss_weight * face, valid_area=valid, face=face)
