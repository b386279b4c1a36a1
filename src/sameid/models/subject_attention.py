"""Visual disparity-aware conditioning: a separate cross-attention per subject (PairHuman, arXiv 2511.16712,
DHumanDiff's method: "separate cross-attention layers for each subject to prevent identity mixing"; its ablation,
one shared cross-attention for all subjects, lowers face similarity from 0.6232 to 0.5174).

:class:`SubjectAttnProcessor` is a diffusers attention processor for every ``attn2`` (text cross-attention) of a
U-Net, modelled on diffusers' ``IPAdapterAttnProcessor2_0``: the text cross-attention is computed exactly as
diffusers' ``AttnProcessor2_0`` computes it, and each *branch* adds ``scale x to_out_b(attention(query,
to_k_b(tokens), to_v_b(tokens)))`` over the tokens of its subject's references. Each branch has its own key and
value projections (initialised as copies of the text ``to_k`` / ``to_v``, as IP-Adapter does) and its own
zero-initialised output projection, so an untrained model is the base U-Net exactly.

* **separate** (``branches`` = K): branch k attends only to the tokens of subject k's references, so no softmax
  mixes two identities. The denoiser gathers each branch's own tokens once per forward (a key mask only where
  rows hold different numbers of that subject's references), so a branch's cost does not grow with the number
  of subjects; :meth:`~sameid.models.multi_subject_denoiser.MultiSubjectDenoiser.subject_context` with
  ``gather=False`` gives the equivalent all-tokens-plus-mask context instead (the reference the tests compare to).
* **shared** (``branches`` = 1): one branch attends to the tokens of every subject at once, one softmax: the
  paper's ablation.

An example without a reference of subject k adds nothing in branch k. With region masks (the denoiser's
``region_masks`` option, FastComposer-style localisation), branch k's output is multiplied by subject k's mask at
the layer's resolution (area-averaged); the shared branch by the union of the masks.

What the branches read arrives as ``encoder_hidden_states=(prompt_states, SubjectContext)`` through the stock
U-Net forward (the way diffusers hands IP-Adapter tokens to its processors); a plain tensor, or a context with
scale 0, is the plain text cross-attention, computed by diffusers' own ``AttnProcessor2_0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SameIdError


@dataclass
class SubjectContext:
    """What every ``attn2`` of one forward reads, per active branch: ``tokens[b]`` (B, S_b, D), the tokens the
    branch may attend to (its own subject's reference slots, gathered; or every slot); ``keys[b]`` (B, 1, 1, S_b)
    bool (which of them it attends to; all True for an example that has none, whose output ``present`` then
    zeroes), or None for all of them; ``present[b]`` (B, 1, 1), or None when every example has the branch's
    subject(s); ``branches``: the branch index of each active branch; ``regions``: per active branch a
    (B, 1, H, W) mask or None; ``scale``: the reference scale."""

    tokens: list[torch.Tensor]
    branches: list[int]
    keys: list[torch.Tensor | None]
    present: list[torch.Tensor]
    regions: list[torch.Tensor | None]
    scale: float = 1.0
    _region_cache: dict = field(default_factory=dict, repr=False)

    def region(self, position: int, length: int) -> torch.Tensor | None:
        """Active branch ``position``'s region mask as (B, length, 1) at a layer of ``length`` query tokens."""
        mask = self.regions[position]
        if mask is None:
            return None
        key = (position, length)
        if key not in self._region_cache:
            height, width = mask.shape[-2:]
            rows = int(round(math.sqrt(length * height / width)))
            cols = length // max(rows, 1)
            if rows * cols != length:
                raise SameIdError(f"region masks of {height}x{width} do not fit a layer of {length} positions: give "
                                  "masks with the generated image's aspect ratio")
            resized = F.adaptive_avg_pool2d(mask.float(), (rows, cols))
            self._region_cache[key] = resized.flatten(1).unsqueeze(-1).to(self.tokens[position].dtype)
        return self._region_cache[key]


class SubjectAttnProcessor(nn.Module):
    """``attn2`` processor: the text cross-attention plus one zero-initialised cross-attention per branch (module
    doc). ``hidden_size``: the attention's inner width (``to_k.out_features``); ``cross_attention_dim``: the
    token width; ``out_dim``: the output width (``to_out[0].out_features``)."""

    def __init__(self, hidden_size: int, cross_attention_dim: int, out_dim: int, branches: int):
        from diffusers.models.attention_processor import AttnProcessor2_0

        super().__init__()
        self.hidden_size, self.cross_attention_dim, self.branches = hidden_size, cross_attention_dim, branches
        self.to_k_subject = nn.ModuleList(nn.Linear(cross_attention_dim, hidden_size, bias=False)
                                          for _ in range(branches))
        self.to_v_subject = nn.ModuleList(nn.Linear(cross_attention_dim, hidden_size, bias=False)
                                          for _ in range(branches))
        self.to_out_subject = nn.ModuleList(nn.Linear(hidden_size, out_dim) for _ in range(branches))
        for layer in self.to_out_subject:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self._plain = AttnProcessor2_0()

    @classmethod
    def for_attention(cls, attn, branches: int) -> SubjectAttnProcessor:
        """A processor for diffusers ``Attention`` ``attn``, its key/value projections copied from the text ones."""
        if attn.spatial_norm is not None or attn.group_norm is not None:
            raise SameIdError("the multi-subject denoiser supports Stable Diffusion / SDXL cross-attentions (no "
                              "spatial or group norm)")
        processor = cls(attn.to_k.out_features, attn.to_k.in_features, attn.to_out[0].out_features, branches)
        with torch.no_grad():
            for k_layer, v_layer in zip(processor.to_k_subject, processor.to_v_subject):
                k_layer.weight.copy_(attn.to_k.weight)
                v_layer.weight.copy_(attn.to_v.weight)
        return processor.to(device=attn.to_k.weight.device, dtype=attn.to_k.weight.dtype)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs) -> torch.Tensor:
        context = None
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states, context = encoder_hidden_states
        if context is None or context.scale == 0 or not context.branches:
            return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        # diffusers' AttnProcessor2_0, step for step (3-d hidden states, no spatial or group norm: checked when
        # built), keeping the query for the subject branches.
        residual = hidden_states
        batch_size, sequence_length, _ = encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                is_causal=False)
        hidden = hidden.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden = attn.to_out[0](hidden)
        hidden = attn.to_out[1](hidden)

        length = hidden.shape[1]
        for position, branch in enumerate(context.branches):
            if branch >= self.branches:
                raise SameIdError(f"subject branch {branch} does not exist: this model has {self.branches}")
            tokens = context.tokens[position].to(query.dtype)
            subject_key = self.to_k_subject[branch](tokens).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            subject_value = self.to_v_subject[branch](tokens).view(batch_size, -1, attn.heads, head_dim)
            out = F.scaled_dot_product_attention(query, subject_key, subject_value.transpose(1, 2),
                                                 attn_mask=context.keys[position], dropout_p=0.0, is_causal=False)
            out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
            out = self.to_out_subject[branch](out)
            if context.present[position] is not None:
                out = out * context.present[position].to(out.dtype)
            region = context.region(position, length)
            if region is not None:
                out = out * region
            hidden = hidden + (out if context.scale == 1 else context.scale * out)
        if attn.residual_connection:
            hidden = hidden + residual
        return hidden / attn.rescale_output_factor
