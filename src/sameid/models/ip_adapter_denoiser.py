"""The IP-Adapter-style baseline of RetriBooru (arXiv 2312.02521, §3.1 and appendix A.3).

§3.1: IP-Adapter "passes reference images to a frozen encoder and additionally learns to adapt the features, adding
the same outputs to all layers in U-Net": one set of image tokens enters every cross-attention, where RetriNet
(RetriBooru, arXiv 2312.02521, §5.1) gives every layer its own retrieval features. Built from diffusers' own
``ImageProjection`` and ``IPAdapterAttnProcessor2_0`` around an unmodified ``UNet2DConditionModel`` forward;
implements :class:`~sameid.models.conditioning.ReferenceConditionedDenoiser`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

# diffusers' pipeline loader finds a component's load method through the base classes its module exposes.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401

from ..errors import SameIdError
from .conditioning import (
    ReferenceConditionedDenoiser,
    ReferenceInputs,
    check_lock,
    decoder_modules,
    dropped_rows,
    enable_parameters,
    model_config,
    module_or_config,
    per_row,
    valid_pairs,
)

# The projection and ip key/value weights in IP-Adapter's own format, written beside the denoiser's weights so
# diffusers' ``load_ip_adapter`` can read them.
IP_ADAPTER_WEIGHTS = "ip_adapter.safetensors"
# export_diffusers' layout, as h94/IP-Adapter's ``models/``: the weights and ``image_encoder/`` in one subfolder, so
# ``load_ip_adapter(folder, subfolder=IP_ADAPTER_SUBFOLDER, weight_name=IP_ADAPTER_WEIGHTS)`` finds both.
IP_ADAPTER_SUBFOLDER = "ip_adapter"
# diffusers' loader reads ``image_proj.proj`` as an ImageProjection of exactly this many tokens.
DIFFUSERS_IP_ADAPTER_TOKENS = 4
DEFAULT_IMAGE_ENCODER = "openai/clip-vit-large-patch14"  # the image encoder of 003 A.3


def load_image_encoder(source: str = DEFAULT_IMAGE_ENCODER):
    """A transformers ``CLIPVisionModelWithProjection`` by hub id or folder, frozen; absent -> MissingModelError."""
    from transformers import CLIPVisionModelWithProjection

    from ..backends.pretrained import load_pretrained

    encoder = load_pretrained(CLIPVisionModelWithProjection, source, what="IP-Adapter image encoder")
    return encoder.requires_grad_(False).eval()


class IPAdapterDenoiser(ReferenceConditionedDenoiser):
    """IP-Adapter-style decoupled cross-attention (003 §3.1, A.3; Ye et al., 2023) around a U-Net.

    A frozen CLIP image encoder embeds each reference (resized to the encoder's image size, normalised with CLIP's
    mean and std, all in torch); diffusers' ``ImageProjection`` maps the projected embedding to K tokens of the
    U-Net's ``cross_attention_dim``; every ``attn2`` of the U-Net gets diffusers' ``IPAdapterAttnProcessor2_0``,
    which adds ``scale x attention(query, to_k_ip(tokens), to_v_ip(tokens))`` to the text cross-attention. The same
    tokens enter every layer (RetriNet, by contrast, gives each layer its own features). ``to_k_ip`` / ``to_v_ip``
    start as copies of the text ``to_k`` / ``to_v``, as IP-Adapter initialises them.

    With N references the N x K tokens are concatenated (one softmax over all of them, as diffusers does for
    several images of one adapter). Padded slots are dropped, not zeroed: a zero token still takes softmax mass,
    so zeroing would change the result. Examples are grouped by their number of real references and the U-Net runs
    once per group (once when nothing is padded). An example with no real reference gets K all-zero tokens, whose
    values ``to_v_ip(0)`` are exactly zero (no bias): the plain U-Net's output for it.

    Tokens are given to the processors precomputed, as ``encoder_hidden_states=(prompt_states, [tokens])`` through
    the stock U-Net forward, rather than through the U-Net's own route (``encoder_hid_proj`` =
    ``MultiIPAdapterImageProjection`` with ``encoder_hid_dim_type="ip_image_proj"``): that route rewrites the U-Net's
    config and cannot give a reference-less example zero tokens (the projection ends in a LayerNorm). The weights
    file is nonetheless in IP-Adapter's format (``image_proj.proj.*``, ``ip_adapter.<1, 3, 5...>.to_{k,v}_ip.*``), so
    with K = 4 diffusers' ``load_ip_adapter`` loads it and its route gives the same output.

    A dropped example (``references.dropped``) gets a zero CLIP image embedding for each of its references, so its
    tokens are the projection of zero: IP-Adapter's image drop in training and its unconditional branch under
    guidance (``unconditional_references`` "zero", this kind's default, as diffusers does).

    ``reference_scale`` sets the processors' ``scale`` at each forward (0 returns exactly the plain U-Net); with
    gradient checkpointing, run backward before a forward with another scale, since recomputation reads it.
    """

    kind = "ip-adapter"
    ignore_for_config = ["unet", "image_encoder", "image_projection"]
    # IP-Adapter's tutorial_train.py zeroes the CLIP image embedding of a dropped example, and its inference (and
    # diffusers' load_ip_adapter pipelines) give the unconditional branch the projection of a zero embedding.
    reference_drop = "a zero CLIP image embedding (its projection's tokens)"
    default_unconditional_references = "zero"

    def __init__(self, unet: UNet2DConditionModel | None = None, image_encoder=None, image_projection=None, *,
                 unet_config: dict | None = None, image_encoder_config: dict | None = None, num_tokens: int = 4,
                 image_encoder_source: str = "", decoder_trained: bool = False):
        """``unet``, ``image_encoder`` (a ``CLIPVisionModelWithProjection``) and ``image_projection`` (diffusers'
        ``ImageProjection``; default: a fresh one with ``num_tokens`` tokens) as modules, or (how
        ``from_pretrained`` builds it) the U-Net's and image encoder's configs. ``image_encoder_source`` records
        the encoder's hub id or folder."""
        from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0
        from diffusers.models.embeddings import ImageProjection
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        super().__init__()
        unet = module_or_config(unet, unet_config, UNet2DConditionModel.from_config, "IPAdapterDenoiser", "unet")
        image_encoder = module_or_config(
            image_encoder, image_encoder_config,
            lambda config: CLIPVisionModelWithProjection(CLIPVisionConfig.from_dict(config)),
            "IPAdapterDenoiser", "image_encoder")
        if image_projection is None:
            image_projection = ImageProjection(image_embed_dim=image_encoder.config.projection_dim,
                                               cross_attention_dim=unet.config.cross_attention_dim,
                                               num_image_text_embeds=num_tokens)
        self.unet = unet
        self.image_encoder = image_encoder.requires_grad_(False).eval()
        self.image_projection = image_projection
        source = image_encoder_source or getattr(image_encoder, "name_or_path", "") or ""
        self.register_to_config(unet_config=model_config(unet), image_encoder_config=model_config(image_encoder),
                                num_tokens=self.num_tokens, image_encoder_source=str(source),
                                decoder_trained=bool(decoder_trained))
        processors = dict(unet.attn_processors)
        for name, module in unet.named_modules():
            if name.endswith("attn2") and isinstance(module, Attention):
                processor = IPAdapterAttnProcessor2_0(
                    hidden_size=module.to_k.out_features, cross_attention_dim=module.to_k.in_features,
                    num_tokens=(self.num_tokens,), scale=1.0)
                with torch.no_grad():
                    processor.to_k_ip[0].weight.copy_(module.to_k.weight)
                    processor.to_v_ip[0].weight.copy_(module.to_v.weight)
                processors[f"{name}.processor"] = processor.to(device=module.to_k.weight.device,
                                                               dtype=module.to_k.weight.dtype)
        unet.set_attn_processor(processors)
        self.image_projection.to(device=unet.device, dtype=unet.dtype)

    @property
    def image_encoder_source(self) -> str:
        return self.config.image_encoder_source

    @classmethod
    def from_unet(cls, unet, image_encoder=DEFAULT_IMAGE_ENCODER, num_tokens: int = 4) -> IPAdapterDenoiser:
        """A fresh adapter: ``image_encoder`` is a ``CLIPVisionModelWithProjection`` or its hub id / folder;
        ``num_tokens`` is K (IP-Adapter uses 4)."""
        from diffusers.models.embeddings import ImageProjection

        source = image_encoder if isinstance(image_encoder, str) else None
        encoder = load_image_encoder(image_encoder) if isinstance(image_encoder, str) else image_encoder
        encoder = encoder.to(device=unet.device)
        projection = ImageProjection(image_embed_dim=encoder.config.projection_dim,
                                     cross_attention_dim=unet.config.cross_attention_dim,
                                     num_image_text_embeds=num_tokens)
        return cls(unet, encoder, projection, image_encoder_source=source or "")

    @property
    def num_tokens(self) -> int:
        return int(self.image_projection.num_image_text_embeds)

    def ip_processors(self) -> dict[str, torch.nn.Module]:
        """The ``attn2`` processors, in ``unet.attn_processors`` order (IP-Adapter's key ids 1, 3, 5... follow it)."""
        from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

        return {name: processor for name, processor in self.unet.attn_processors.items()
                if isinstance(processor, IPAdapterAttnProcessor2_0)}

    def train(self, mode: bool = True):
        super().train(mode)
        self.image_encoder.eval()  # frozen: no dropout, whatever the loop asks
        return self

    def embed_references(self, pixels: torch.Tensor) -> torch.Tensor:
        """(M, 3, H, W) pixels in [-1, 1] -> (M, D) projected CLIP image embeddings (no gradient)."""
        from .subject_conditioning import clip_image_embeds

        return clip_image_embeds(self.image_encoder, pixels)

    def _set_scale(self, scale: float) -> None:
        for processor in self.ip_processors().values():
            processor.scale = [float(scale)]

    def forward(self, noisy_latents, timesteps, encoder_hidden_states, references: ReferenceInputs,
                reference_scale: float = 1.0) -> torch.Tensor:
        self._set_scale(reference_scale)
        batch, dim, tokens = noisy_latents.shape[0], self.unet.config.cross_attention_dim, self.num_tokens
        rows, slots, counts = valid_pairs(references)
        if reference_scale == 0 or not rows.numel():
            # The processors skip the image branch at scale 0; zero tokens add exactly nothing at any scale.
            image_tokens = encoder_hidden_states.new_zeros(batch, tokens, dim)
            return self.unet(noisy_latents, timesteps, (encoder_hidden_states, [image_tokens])).sample
        embeds = self.embed_references(references.pixels[rows, slots])
        dropped = dropped_rows(references)
        if dropped is not None:
            embeds = embeds * (~dropped[rows]).to(embeds.dtype).unsqueeze(-1)
        pair_tokens = self.image_projection(embeds).to(encoder_hidden_states.dtype)  # (M, K, dim), row-major
        predictions, order = [], []
        for count in torch.unique(counts).tolist():
            group = (counts == count).nonzero(as_tuple=True)[0]
            if count == 0:
                image_tokens = encoder_hidden_states.new_zeros(len(group), tokens, dim)
            else:
                # Pairs are row-major, so an example's real references are contiguous and in slot order.
                in_group = torch.isin(rows, group)
                image_tokens = pair_tokens[in_group].reshape(len(group), count * tokens, dim)
            predictions.append(self.unet(noisy_latents[group], per_row(timesteps, group),
                                         (encoder_hidden_states[group], [image_tokens])).sample)
            order.append(group)
        if len(predictions) == 1:
            return predictions[0]
        return torch.cat(predictions)[torch.argsort(torch.cat(order))]

    def set_trainable(self, lock: str = "full") -> list[torch.nn.Parameter]:
        """Trainable sets (001 §5.2 mapped onto IP-Adapter): ``full`` = the image projection + ``to_k_ip`` /
        ``to_v_ip`` + the U-Net decoder; ``lockd`` = the projection + ``to_k_ip`` / ``to_v_ip``; ``lockb`` =
        ``to_k_ip`` / ``to_v_ip`` only; ``adapter`` = the projection + ``to_k_ip`` / ``to_v_ip``, the U-Net frozen
        whole (tutorial_train.py's ``image_proj_model`` + ``adapter_modules``, as ``lockd``). The image encoder and
        the rest of the U-Net are always frozen."""
        lock = check_lock(lock)
        self.requires_grad_(False)
        modules = list(self.ip_processors().values())
        if lock in ("full", "lockd"):
            modules.append(self.image_projection)
        if lock == "full":
            modules.extend(decoder_modules(self.unet))
        if lock == "full":
            self.decoder_trained = True
        return enable_parameters(modules)

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The projection and the ip key/value weights, keyed as IP-Adapter's checkpoints (diffusers' loader reads
        ``image_proj.proj`` as ``ImageProjection.image_embeds`` and numbers the attn2 processors 1, 3, 5...)."""
        state = {f"image_proj.{name.replace('image_embeds', 'proj', 1)}": tensor
                 for name, tensor in self.image_projection.state_dict().items()}
        for index, processor in enumerate(self.ip_processors().values()):
            key = 2 * index + 1
            state[f"ip_adapter.{key}.to_k_ip.weight"] = processor.to_k_ip[0].weight
            state[f"ip_adapter.{key}.to_v_ip.weight"] = processor.to_v_ip[0].weight
        return {name: tensor.detach().contiguous() for name, tensor in state.items()}

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        projection = {name.removeprefix("image_proj.").replace("proj", "image_embeds", 1): tensor
                      for name, tensor in state.items() if name.startswith("image_proj.")}
        self.image_projection.load_state_dict(projection)
        processors = list(self.ip_processors().values())
        expected = {f"ip_adapter.{2 * i + 1}.to_{kv}_ip.weight" for i in range(len(processors)) for kv in "kv"}
        found = {name for name in state if name.startswith("ip_adapter.")}
        if found != expected:
            raise SameIdError(f"IP-Adapter weights do not fit this U-Net: {len(found)} ip tensors for "
                             f"{len(processors)} cross-attentions")
        with torch.no_grad():
            for index, processor in enumerate(processors):
                processor.to_k_ip[0].weight.copy_(state[f"ip_adapter.{2 * index + 1}.to_k_ip.weight"])
                processor.to_v_ip[0].weight.copy_(state[f"ip_adapter.{2 * index + 1}.to_v_ip.weight"])

    def _export_parts(self, folder) -> dict:
        """``ip_adapter/ip_adapter.safetensors`` and ``ip_adapter/image_encoder/`` (the frozen CLIP encoder,
        ``save_pretrained``), for ``load_ip_adapter`` on diffusers' ``StableDiffusionPipeline``. Same images as
        ReferencePipeline at ``guidance_scale`` 1, and under guidance too with ``unconditional_references`` "zero"
        (the default: both give the unconditional branch the projection of a zero image embedding; with "keep",
        give diffusers ``ip_adapter_image_embeds`` with the reference embedding in both halves; docs/generate.md)."""
        from safetensors.torch import save_file

        from ..atomic import write_atomic

        if self.num_tokens != DIFFUSERS_IP_ADAPTER_TOKENS:
            raise SameIdError(f"this adapter has {self.num_tokens} image tokens; diffusers' load_ip_adapter reads "
                              f"IP-Adapter weights as {DIFFUSERS_IP_ADAPTER_TOKENS} tokens, so only such an adapter "
                              "exports to it")
        subfolder = folder / IP_ADAPTER_SUBFOLDER
        state = {name: tensor.cpu() for name, tensor in self.adapter_state_dict().items()}
        write_atomic(subfolder / IP_ADAPTER_WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
        self.image_encoder.save_pretrained(subfolder / "image_encoder")
        return {"ip_adapter": {"subfolder": IP_ADAPTER_SUBFOLDER, "weight_name": IP_ADAPTER_WEIGHTS,
                               "image_encoder_folder": "image_encoder"}}

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """diffusers' save (``denoiser.json`` and every weight), plus ``ip_adapter.safetensors``: the projection
        and the ip key/value weights in IP-Adapter's own format, for diffusers' ``load_ip_adapter``."""
        from safetensors.torch import save_file

        from ..atomic import write_atomic

        super().save_pretrained(save_directory, *args, **kwargs)
        state = {name: tensor.cpu() for name, tensor in self.adapter_state_dict().items()}
        write_atomic(Path(save_directory) / IP_ADAPTER_WEIGHTS,
                     lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
