"""RetriNet: a retrieval encoder over N references, read by the U-Net through one cross-attention per layer.

RetriBooru, arXiv 2312.02521, §5.1 and Fig. 4, RetriBooru, arXiv 2312.02521, A.4. RetriNet is ControlNet with
cross-attention instead of pixel-aligned addition:

* The *retrieval encoder* is a copy of the U-Net's encoder (``conv_in``, time embedding, down blocks, mid block),
  initialised from its weights as ``ControlNetModel.from_unet`` does (§5.2). It reads the VAE latents of each
  reference and, through its own transformer blocks' cross-attention, that reference's concept caption
  ("face", "clothes", "figure"), so it learns to encode "precisely only the relevant information".
* For every skip connection and for the mid block, a :class:`~sameid.models.attention.RetrievalCrossAttention`
  takes the U-Net encoder's feature there as queries and the retrieval encoder's feature at the same layer, for
  all N references with their tokens concatenated, as keys and values; its zero-initialised output is added to
  what the U-Net encoder passes to its decoder. Each layer reads its own features (IP-Adapter shares one
  embedding across all layers: §5.1, last sentence).

Which timestep the references are encoded at: the denoising step's own, applied to *clean* reference latents.
RetriNet keeps ControlNet's control branch, which takes the same ``t`` as the U-Net, and §5.2 (Fig. 6) reports
that the retrieval encoder's attention maps "are further refined with timesteps", which can only happen if its
time embedding sees ``t``. ``reference_timestep`` (config) fixes a timestep instead, e.g. 0, for experiments.

:class:`RetriNetDenoiser` holds the U-Net and the RetriNet and implements
:class:`~sameid.models.conditioning.ReferenceConditionedDenoiser`; its forward is the U-Net's own forward,
written out for Stable Diffusion-style configurations so the retrieval step between encoder and decoder reads
plainly.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import get_down_block, get_mid_block
from torch import nn

from ..errors import SameIdError
from .attention import RetrievalCrossAttention
from .conditioning import (
    ReferenceConditionedDenoiser,
    ReferenceInputs,
    check_lock,
    dropped_rows,
    model_config,
    module_or_config,
)

SUPPORTED_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
SUPPORTED_MID_BLOCK = "UNetMidBlock2DCrossAttn"
# U-Net config entries whose non-default values change the forward pass in ways RetriNetDenoiser does not write
# out (class / added conditions, LCM timestep conditions, GLIGEN, ...): (name, the only supported value).
_UNSUPPORTED_UNET_OPTIONS = (
    ("class_embed_type", None), ("num_class_embeds", None), ("addition_embed_type", None),
    ("encoder_hid_dim", None), ("encoder_hid_dim_type", None), ("time_embedding_type", "positional"),
    ("time_cond_proj_dim", None), ("time_embedding_act_fn", None), ("timestep_post_act", None),
    ("attention_type", "default"), ("dual_cross_attention", False), ("center_input_sample", False),
    ("class_embeddings_concat", False), ("resnet_skip_time_act", False), ("resnet_out_scale_factor", 1.0),
    ("cross_attention_norm", None), ("num_attention_heads", None),
)


def check_supported_unet(unet) -> None:
    """Raise SameIdError unless ``unet`` is a Stable Diffusion 1.x/2.x-style UNet2DConditionModel."""
    if not isinstance(unet, UNet2DConditionModel):
        raise SameIdError(f"RetriNet needs a diffusers UNet2DConditionModel, got {type(unet).__name__}")
    config = unet.config
    problems = [f"{name}={config.get(name)!r}" for name, supported in _UNSUPPORTED_UNET_OPTIONS
                if config.get(name, supported) != supported]
    problems += [f"down block {kind}" for kind in config.down_block_types if kind not in SUPPORTED_DOWN_BLOCKS]
    if config.mid_block_type != SUPPORTED_MID_BLOCK:
        problems.append(f"mid_block_type={config.mid_block_type!r}")
    if problems:
        raise SameIdError(
            "RetriNet supports Stable Diffusion 1.x/2.x-style U-Nets (down blocks "
            f"{'/'.join(SUPPORTED_DOWN_BLOCKS)}, mid block {SUPPORTED_MID_BLOCK}, no class or added "
            f"conditions); this U-Net has {', '.join(problems)}")


def _encoder_config(unet) -> dict:
    """The U-Net config entries that shape its encoder, under RetriNetModel's argument names."""
    config = unet.config
    return dict(
        in_channels=config.in_channels, conv_in_kernel=config.conv_in_kernel,
        flip_sin_to_cos=config.flip_sin_to_cos, freq_shift=config.freq_shift,
        time_embedding_dim=config.time_embedding_dim, down_block_types=tuple(config.down_block_types),
        mid_block_type=config.mid_block_type, only_cross_attention=config.only_cross_attention,
        block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
        downsample_padding=config.downsample_padding, mid_block_scale_factor=config.mid_block_scale_factor,
        dropout=config.dropout, act_fn=config.act_fn, norm_num_groups=config.norm_num_groups,
        norm_eps=config.norm_eps, cross_attention_dim=config.cross_attention_dim,
        transformer_layers_per_block=config.transformer_layers_per_block,
        attention_head_dim=config.attention_head_dim, use_linear_projection=config.use_linear_projection,
        upcast_attention=config.upcast_attention, resnet_time_scale_shift=config.resnet_time_scale_shift,
    )


def _per_block(value, blocks: int) -> list:
    return [value] * blocks if isinstance(value, int | bool) or value is None else list(value)


def batch_timesteps(timesteps, batch: int, device) -> torch.Tensor:
    """``timesteps`` (int, float, 0-d or (B,) tensor) as a (B,) tensor on ``device``."""
    if not torch.is_tensor(timesteps):
        timesteps = torch.tensor([timesteps], dtype=torch.float32 if isinstance(timesteps, float) else torch.long)
    timesteps = timesteps.to(device).reshape(-1)
    return timesteps.expand(batch) if timesteps.numel() == 1 else timesteps


class RetriNetModel(ModelMixin, ConfigMixin):
    """The retrieval encoder and the per-layer retrieval cross-attentions (001 §5.1, Fig. 4).

    Build it with :meth:`from_unet`; the constructor arguments mirror ``UNet2DConditionModel``'s encoder ones.
    ``retrieval_head_dim`` sets the width of each retrieval attention head (channels // head_dim heads per
    layer); ``reference_timestep`` None encodes references at the denoising timestep (see the module doc), an
    int at that fixed timestep.

    ``encode_references`` runs the encoder, ``inject`` adds the cross-attention deltas to the U-Net's skip
    features and mid-block output, ``forward`` does both.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conv_in_kernel: int = 3,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        time_embedding_dim: int | None = None,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type: str = SUPPORTED_MID_BLOCK,
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int, ...] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1.0,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int, ...] = 768,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        attention_head_dim: int | tuple[int, ...] = 8,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        retrieval_head_dim: int = 64,
        reference_timestep: int | None = None,
    ):
        super().__init__()
        blocks = len(down_block_types)
        if mid_block_type != SUPPORTED_MID_BLOCK or any(k not in SUPPORTED_DOWN_BLOCKS for k in down_block_types):
            raise SameIdError(f"RetriNet encoder: unsupported blocks {down_block_types} / {mid_block_type}")
        layers = _per_block(layers_per_block, blocks)
        transformer_layers = _per_block(transformer_layers_per_block, blocks)
        # diffusers' historical naming: SD's "attention_head_dim" is the number of heads (issue 2011).
        heads = _per_block(attention_head_dim, blocks)
        text_dims = _per_block(cross_attention_dim, blocks)
        only_cross = _per_block(only_cross_attention, blocks)

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=conv_in_kernel,
                                 padding=(conv_in_kernel - 1) // 2)
        time_embed_dim = time_embedding_dim or block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn)

        self.down_blocks = nn.ModuleList()
        skip_channels = [block_out_channels[0]]  # conv_in's output is the first skip connection
        output_channel = block_out_channels[0]
        for i, down_block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            is_final_block = i == blocks - 1
            self.down_blocks.append(get_down_block(
                down_block_type, num_layers=layers[i], transformer_layers_per_block=transformer_layers[i],
                in_channels=input_channel, out_channels=output_channel, temb_channels=time_embed_dim,
                add_downsample=not is_final_block, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                resnet_groups=norm_num_groups, cross_attention_dim=text_dims[i], num_attention_heads=heads[i],
                downsample_padding=downsample_padding, use_linear_projection=use_linear_projection,
                only_cross_attention=only_cross[i], upcast_attention=upcast_attention,
                resnet_time_scale_shift=resnet_time_scale_shift, attention_head_dim=heads[i], dropout=dropout))
            skip_channels += [output_channel] * (layers[i] + (0 if is_final_block else 1))
        self.mid_block = get_mid_block(
            mid_block_type, temb_channels=time_embed_dim, in_channels=block_out_channels[-1],
            resnet_eps=norm_eps, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
            output_scale_factor=mid_block_scale_factor, transformer_layers_per_block=transformer_layers[-1],
            num_attention_heads=heads[-1], cross_attention_dim=text_dims[-1],
            use_linear_projection=use_linear_projection, upcast_attention=upcast_attention,
            resnet_time_scale_shift=resnet_time_scale_shift, attention_head_dim=heads[-1], dropout=dropout)

        self.down_retrieval_attentions = nn.ModuleList(
            RetrievalCrossAttention(channels, retrieval_head_dim, norm_eps) for channels in skip_channels)
        self.mid_retrieval_attention = RetrievalCrossAttention(block_out_channels[-1], retrieval_head_dim, norm_eps)

    @classmethod
    def from_unet(cls, unet, load_weights_from_unet: bool = True, *, retrieval_head_dim: int = 64,
                  reference_timestep: int | None = None) -> RetriNetModel:
        """A RetriNet whose retrieval encoder copies ``unet``'s encoder configuration (and weights, by default).

        It lives on ``unet``'s device in the default dtype (float32) whatever ``unet``'s dtype: under mixed
        precision the trained weights stay in float32; call ``.to(dtype)`` for half-precision inference.
        """
        check_supported_unet(unet)
        model = cls(**_encoder_config(unet), retrieval_head_dim=retrieval_head_dim,
                    reference_timestep=reference_timestep)
        if load_weights_from_unet:
            for name in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
                getattr(model, name).load_state_dict(getattr(unet, name).state_dict())
        # Only the device: ModelMixin warns on any dtype cast, and a half-precision U-Net still wants RetriNet's
        # trainable weights in float32 under mixed precision; cast explicitly where that is wanted.
        return model.to(device=unet.device)

    def retrieval_encoder_parameters(self) -> list[nn.Parameter]:
        """The copy of the U-Net encoder (frozen in LockB)."""
        modules = (self.conv_in, self.time_embedding, self.down_blocks, self.mid_block)
        return [p for module in modules for p in module.parameters()]

    def retrieval_attention_parameters(self) -> list[nn.Parameter]:
        """The per-layer retrieval cross-attentions (trained in every lock mode)."""
        modules = (self.down_retrieval_attentions, self.mid_retrieval_attention)
        return [p for module in modules for p in module.parameters()]

    def encode_references(self, latents: torch.Tensor, timesteps, concept_embeds: torch.Tensor
                          ) -> list[torch.Tensor]:
        """Retrieval features of every reference, one (B, N*h_i*w_i, C_i) token tensor per layer.

        ``latents`` (B, N, C, h, w) are clean, scaled VAE latents; ``timesteps`` the denoising timesteps, (B,)
        or a scalar (ignored when ``reference_timestep`` is set); ``concept_embeds`` (B, N, L, D) the concept
        captions' text-encoder states. The N references run as one B*N batch (every layer is per-sample, so a
        reference never sees another); then each example's tokens are concatenated reference by reference,
        each reference's in row-major order. The list follows the U-Net's skip connections (conv_in output,
        then each down block's outputs) and ends with the mid block's.
        """
        batch, count = latents.shape[:2]
        flat_latents = latents.reshape(batch * count, *latents.shape[2:])
        text = concept_embeds.reshape(batch * count, *concept_embeds.shape[2:])
        if self.config.reference_timestep is not None:
            steps = torch.full((batch * count,), self.config.reference_timestep, device=latents.device)
        else:
            steps = batch_timesteps(timesteps, batch, latents.device).repeat_interleave(count)
        # Timesteps has no weights and always returns float32; the embedding may run in half precision.
        emb = self.time_embedding(self.time_proj(steps).to(dtype=flat_latents.dtype))

        sample = self.conv_in(flat_latents)
        features = [sample]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, residuals = block(hidden_states=sample, temb=emb, encoder_hidden_states=text)
            else:
                sample, residuals = block(hidden_states=sample, temb=emb)
            features.extend(residuals)
        features.append(self.mid_block(sample, emb, encoder_hidden_states=text))
        return [self._tokens_per_example(feature, batch, count) for feature in features]

    @staticmethod
    def _tokens_per_example(feature: torch.Tensor, batch: int, count: int) -> torch.Tensor:
        _, channels, height, width = feature.shape
        tokens = feature.reshape(batch, count, channels, height * width).transpose(2, 3)
        return tokens.reshape(batch, count * height * width, channels)

    def inject(self, down_block_res_samples: tuple[torch.Tensor, ...], mid_block_sample: torch.Tensor,
               reference_features: list[torch.Tensor], valid: torch.Tensor | None = None,
               reference_scale: float | torch.Tensor = 1.0) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The U-Net's skip features and mid-block output, each plus reference_scale x its retrieval delta.

        ``valid`` (B, N) bool marks real references (a False slot is ignored, as if absent); ``reference_scale``
        a float or a (B,) tensor (per-example scales, e.g. to drop references for some examples).
        """
        if len(reference_features) != len(down_block_res_samples) + 1:
            raise SameIdError(f"RetriNet has {len(reference_features)} retrieval layers but the U-Net gives "
                              f"{len(down_block_res_samples)} skip connections + 1 mid block")
        if valid is not None and bool(valid.all()):
            valid = None  # no mask lets SDPA use its fastest kernels
        if torch.is_tensor(reference_scale):
            reference_scale = reference_scale.reshape(-1, 1, 1, 1).to(mid_block_sample.dtype)

        def masked(tokens: torch.Tensor) -> torch.Tensor | None:
            if valid is None:
                return None
            return valid.to(torch.bool).repeat_interleave(tokens.shape[1] // valid.shape[1], dim=1)

        attentions = [*self.down_retrieval_attentions, self.mid_retrieval_attention]
        queries = [*down_block_res_samples, mid_block_sample]
        updated = [query + reference_scale * attention(query, tokens, masked(tokens))
                   for attention, query, tokens in zip(attentions, queries, reference_features, strict=True)]
        return tuple(updated[:-1]), updated[-1]

    def forward(self, down_block_res_samples: tuple[torch.Tensor, ...], mid_block_sample: torch.Tensor,
                reference_latents: torch.Tensor, timesteps, concept_embeds: torch.Tensor,
                valid: torch.Tensor | None = None, reference_scale: float | torch.Tensor = 1.0):
        """``inject`` of ``encode_references``: returns (skip features, mid-block output) for the decoder."""
        features = self.encode_references(reference_latents, timesteps, concept_embeds)
        return self.inject(down_block_res_samples, mid_block_sample, features, valid, reference_scale)


def _is_zero(scale) -> bool:
    return not torch.is_tensor(scale) and float(scale) == 0.0


class RetriNetDenoiser(ReferenceConditionedDenoiser):
    """A Stable Diffusion-style U-Net conditioned on references through a :class:`RetriNetModel`.

    ``forward(noisy_latents, timesteps, encoder_hidden_states, references, reference_scale=1.0)`` is
    ``UNet2DConditionModel.forward`` written out: time embedding, encoder (collecting the skip features),
    mid block, then RetriNet adds its per-layer deltas, then the decoder. ``references=None`` or
    ``reference_scale=0`` skip RetriNet and return exactly the plain U-Net's output; a dropped example
    (``references.dropped``) gets no retrieval, as if its scale were 0.
    """

    kind = "retrinet"
    uses_reference_latents = True
    reference_drop = "no retrieval (the U-Net's own skip features, as at reference_scale 0)"
    ignore_for_config = ["unet", "retrinet"]

    def __init__(self, unet: UNet2DConditionModel | None = None, retrinet: RetriNetModel | None = None, *,
                 unet_config: dict | None = None, retrinet_config: dict | None = None, decoder_trained: bool = False):
        """``unet`` and ``retrinet`` as modules, or (how ``from_pretrained`` builds it) their configs."""
        super().__init__()
        unet = module_or_config(unet, unet_config, UNet2DConditionModel.from_config, "RetriNetDenoiser", "unet")
        if retrinet is None:
            retrinet = RetriNetModel.from_config(retrinet_config) if retrinet_config else RetriNetModel.from_unet(unet)
        check_supported_unet(unet)
        expected = _encoder_config(unet)
        mismatched = [name for name, value in expected.items()
                      if _normalised(retrinet.config.get(name)) != _normalised(value)]
        if mismatched:
            raise SameIdError(f"this RetriNet was built for another U-Net (differs in {', '.join(mismatched)})")
        self.unet = unet
        self.retrinet = retrinet
        self.register_to_config(unet_config=model_config(unet), retrinet_config=model_config(retrinet),
                                decoder_trained=bool(decoder_trained))

    @classmethod
    def from_unet(cls, unet, **retrinet_options) -> RetriNetDenoiser:
        """A fresh RetriNet initialised from ``unet`` (options: ``retrieval_head_dim``, ``reference_timestep``)."""
        return cls(unet, RetriNetModel.from_unet(unet, **retrinet_options))

    def forward(self, noisy_latents: torch.Tensor, timesteps, encoder_hidden_states: torch.Tensor,
                references: ReferenceInputs | None = None,
                reference_scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        unet = self.unet
        timesteps = batch_timesteps(timesteps, noisy_latents.shape[0], noisy_latents.device)
        # A latent size that is not a multiple of the U-Net's total downsampling needs explicit upsample sizes.
        up_factor = 2 ** unet.num_upsamplers
        forward_upsample_size = any(size % up_factor for size in noisy_latents.shape[-2:])

        # 1. time
        emb = unet.time_embedding(unet.get_time_embed(sample=noisy_latents, timestep=timesteps))

        # 2. encoder and mid block, keeping every skip connection
        sample = unet.conv_in(noisy_latents)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, residuals = block(hidden_states=sample, temb=emb,
                                          encoder_hidden_states=encoder_hidden_states)
            else:
                sample, residuals = block(hidden_states=sample, temb=emb)
            skips += residuals
        sample = unet.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states)

        # 3. retrieval: every skip feature and the mid output read their own layer of reference features
        dropped = dropped_rows(references) if references is not None else None
        if dropped is not None:
            if bool(dropped.all()):
                references = None
            else:
                keep = (~dropped).to(sample.dtype)
                reference_scale = keep * (reference_scale.to(keep) if torch.is_tensor(reference_scale)
                                          else float(reference_scale))
        if references is not None and not _is_zero(reference_scale):
            features = self.retrinet.encode_references(references.latents, timesteps, references.concept_embeds)
            skips, sample = self.retrinet.inject(skips, sample, features, references.valid, reference_scale)

        # 4. decoder
        upsample_size = None
        for i, block in enumerate(unet.up_blocks):
            residuals = skips[-len(block.resnets):]
            skips = skips[:-len(block.resnets)]
            if i < len(unet.up_blocks) - 1 and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            if getattr(block, "has_cross_attention", False):
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=residuals,
                               encoder_hidden_states=encoder_hidden_states, upsample_size=upsample_size)
            else:
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=residuals,
                               upsample_size=upsample_size)
        if unet.conv_norm_out is not None:
            sample = unet.conv_act(unet.conv_norm_out(sample))
        return unet.conv_out(sample)

    def set_trainable(self, lock: str = "full") -> list[nn.Parameter]:
        """Train exactly ``lock``'s set (001 §5.2) and freeze the rest; returns the trainable parameters.

        ``full``: retrieval encoder + retrieval cross-attentions + U-Net decoder (up blocks, conv_norm_out,
        conv_out); ``lockd`` (and ``adapter``, the same set): retrieval encoder + cross-attentions; ``lockb``:
        cross-attentions only. The U-Net encoder, mid block and time embedding are frozen in every mode (Fig. 4).
        """
        lock = check_lock(lock)
        self.requires_grad_(False)
        trainable = self.retrinet.retrieval_attention_parameters()
        if lock in ("full", "lockd"):
            trainable = self.retrinet.retrieval_encoder_parameters() + trainable
        if lock == "full":
            trainable += self.unet_decoder_parameters()
            self.decoder_trained = True
        for parameter in trainable:
            parameter.requires_grad_(True)
        return trainable



def _normalised(value):
    """Config values compare equal whether stored as tuple or list (JSON round-trips turn tuples into lists)."""
    return [_normalised(v) for v in value] if isinstance(value, list | tuple) else value
