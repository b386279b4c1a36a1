"""Retrieval cross-attention: a U-Net encoder feature map reads the retrieval features of all N references.

RetriNet (RetriBooru, arXiv 2312.02521, §5.1, Fig. 4; RetriBooru, arXiv 2312.02521, A.4) connects its retrieval
encoder to the U-Net with cross-attention "right before zero-convolution layers": the U-Net encoder's hidden
states are the queries, the retrieval encoder's output (of every reference) the keys and values, "with proper
reshaping and layer normalization", and the result, through the zero convolution, is added to what the U-Net
encoder passes to its decoder. One such layer sits on every skip connection and on the mid block, each reading
that layer's own retrieval features (IP-Adapter, by contrast, shares one image embedding across layers).

The paper's code listing ("Code 1") is not in the text we have, so two choices are ours, made the way a
pre-norm transformer cross-attention does it:

* Layer norm: one LayerNorm on the query tokens and a separate one on the reference tokens, before the
  projections. The reference tokens are raw ResNet/transformer outputs of another network whose scale drifts
  during training; normalising both sides keeps the attention logits in range from the first step.
* The attention's output projection *is* the zero convolution: a 1x1 convolution on a feature map equals a
  linear layer on its tokens, so a separate projection followed by a zero conv would be two linear maps in a
  row. It starts at zero, so an untrained RetriNet leaves the U-Net's output exactly unchanged (and, as with
  ControlNet's zero convolutions, the first gradient step only moves this projection).

This is a module between the U-Net encoder and decoder, not an attention processor: it does not change any
attention the U-Net already has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RetrievalCrossAttention(nn.Module):
    """Multi-head cross-attention from a (B, C, h, w) feature map to (B, S, C) reference tokens.

    ``forward(hidden_states, reference_tokens, reference_mask=None)`` returns the delta (B, C, h, w) to add to
    ``hidden_states`` (zero at initialisation). ``reference_mask`` (B, S) bool marks real tokens; a padded
    reference's tokens are False and take no part in the softmax. A row whose tokens are all masked (an
    example with no reference at all) gets a zero delta. Pass None rather than an all-True mask: without a mask
    SDPA may pick the flash kernel. Attention runs in
    ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels where available).
    """

    def __init__(self, channels: int, head_dim: int = 64, norm_eps: float = 1e-5):
        super().__init__()
        heads = max(1, channels // head_dim)
        if channels % heads:
            raise ValueError(f"retrieval attention: {channels} channels do not split into {heads} heads")
        self.channels = channels
        self.heads = heads
        self.norm_query = nn.LayerNorm(channels, eps=norm_eps)
        self.norm_reference = nn.LayerNorm(channels, eps=norm_eps)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)
        # Read by diffusers' ModelMixin.enable_gradient_checkpointing, like its own blocks.
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, reference_tokens: torch.Tensor,
                reference_mask: torch.Tensor | None = None) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(self._attend, hidden_states, reference_tokens, reference_mask)
        return self._attend(hidden_states, reference_tokens, reference_mask)

    def _attend(self, hidden_states: torch.Tensor, reference_tokens: torch.Tensor,
                reference_mask: torch.Tensor | None) -> torch.Tensor:
        batch, channels, height, width = hidden_states.shape
        queries = hidden_states.flatten(2).transpose(1, 2)  # (B, h*w, C), row-major tokens
        references = self.norm_reference(reference_tokens)
        q = self._split_heads(self.to_q(self.norm_query(queries)))
        k = self._split_heads(self.to_k(references))
        v = self._split_heads(self.to_v(references))

        attn_mask, has_reference = None, None
        if reference_mask is not None:
            has_reference = reference_mask.any(dim=1)
            # A row with no real token would softmax over nothing (NaN): let it attend anywhere, then zero it.
            keep = reference_mask | ~has_reference[:, None]
            attn_mask = keep[:, None, None, :]  # (B, 1, 1, S), broadcast over heads and queries
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        attended = attended.transpose(1, 2).reshape(batch, height * width, channels)
        delta = self.to_out(attended)
        if has_reference is not None:
            delta = delta * has_reference[:, None, None].to(delta.dtype)
        return delta.transpose(1, 2).reshape(batch, channels, height, width)

    def _split_heads(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, channels = tokens.shape
        return tokens.view(batch, length, self.heads, channels // self.heads).transpose(1, 2)
