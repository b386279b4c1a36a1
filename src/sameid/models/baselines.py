"""The two benchmarked baselines of RetriBooru: ControlNet and IP-Adapter-style decoupled cross-attention.

RetriBooru, arXiv 2312.02521, §3.1 and appendix A.3 fine-tune both on the same data in two settings: ``-a`` (the
reference is another transform of the target image) and ``-b`` (a different image of the same identity); the
setting is a property of the training pairs (``sameid.pairs`` mode ``same`` / ``identity``), not of the model.
§3.1 describes what sets them apart and what RetriNet (RetriBooru, arXiv 2312.02521, §5.1) changes:

- ControlNet "learns pixel-wise control and exploits spatial structures on purpose, passing conditioning to the
  U-Net via zero convolutions". The reference is a pixel-aligned condition, which is why ControlNet-b, whose
  reference is not aligned with the target, falls back on the text.
- IP-Adapter "passes reference images to a frozen encoder and additionally learns to adapt the features, adding
  the same outputs to all layers in U-Net": one set of image tokens enters every cross-attention, where RetriNet
  gives every layer its own retrieval features.

Both are built from diffusers' own parts around an unmodified ``UNet2DConditionModel`` forward and implement
:class:`~sameid.models.conditioning.ReferenceConditionedDenoiser`, so one loop trains RetriNet and both baselines.
The lock modes of 001 §5.2 map onto them as their ``set_trainable`` docstrings say.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from .conditioning import LOCK_MODES, UNET_DECODER_MODULES, ReferenceConditionedDenoiser, ReferenceInputs

CONFIG_NAME = "denoiser.json"  # names the kind, which is how sameid.models.denoisers.load_denoiser picks the class
DECODER_WEIGHTS = "unet_decoder.safetensors"
IP_ADAPTER_WEIGHTS = "ip_adapter.safetensors"
CONTROLNET_FOLDER = "controlnet"
DEFAULT_IMAGE_ENCODER = "openai/clip-vit-large-patch14"  # the image encoder of 003 A.3
# The modules of a UNet2DConditionModel that form its decoder (the part 001 §5.2 trains unless LockD / LockB).


def _check_lock(lock: str) -> None:
    if lock not in LOCK_MODES:
        raise ValueError(f"unknown lock mode {lock!r}; use one of {', '.join(LOCK_MODES)}")


def _unique(parameters: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    seen: set[int] = set()
    return [p for p in parameters if not (id(p) in seen or seen.add(id(p)))]


def _enable(modules: Iterable[torch.nn.Module]) -> list[torch.nn.Parameter]:
    parameters = _unique(p for module in modules for p in module.parameters())
    for parameter in parameters:
        parameter.requires_grad_(True)
    return parameters


def unet_decoder_state_dict(unet) -> dict[str, torch.Tensor]:
    """The U-Net decoder's weights (``UNET_DECODER_MODULES``), keyed as in ``unet.state_dict()``.

    Attention-processor weights (IP-Adapter's ``to_k_ip`` / ``to_v_ip`` live inside ``up_blocks``) are left out:
    they belong to the adapter file.
    """
    return {name: tensor.detach().contiguous() for name, tensor in unet.state_dict().items()
            if name.split(".", 1)[0] in UNET_DECODER_MODULES and ".processor." not in name}


def _decoder_modules(unet) -> list[torch.nn.Module]:
    return [module for name in UNET_DECODER_MODULES if (module := getattr(unet, name, None)) is not None]


def _load_decoder(unet, path: Path) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(path), device=str(unet.device))
    expected = unet_decoder_state_dict(unet)
    if set(weights) != set(expected):
        missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
        raise ValueError(f"{path}: decoder weights do not fit this U-Net (missing {missing[:3]}, unexpected {extra[:3]})")
    unet.load_state_dict(weights, strict=False)


def _write_config(directory: Path, config: dict) -> None:
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def _read_config(directory: Path, kind: str) -> dict:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a folder written by save_pretrained of a {kind} baseline")
    config = json.loads(path.read_text())
    if config.get("kind") != kind:
        raise ValueError(f"{path} holds a {config.get('kind')!r} model, not {kind!r}")
    return config


def _valid_pairs(references: ReferenceInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(example index, slot index) of every real reference, row-major, and each example's count of them."""
    batch, count = references.pixels.shape[:2]
    device = references.pixels.device
    valid = references.valid
    if valid is None:
        valid = torch.ones(batch, count, dtype=torch.bool, device=device)
    rows, slots = valid.to(device=device, dtype=torch.bool).nonzero(as_tuple=True)
    return rows, slots, valid.sum(dim=1)


def _like_unet(module, unet):
    """``module`` on the U-Net's device and in its dtype (cast only when they differ: a diffusers model warns)."""
    module = module.to(device=unet.device)
    return module if module.dtype == unet.dtype else module.to(dtype=unet.dtype)


def _per_row(value, rows: torch.Tensor):
    """``value`` (a per-example tensor, or a scalar timestep shared by the batch) for the examples ``rows``."""
    if isinstance(value, torch.Tensor) and value.ndim > 0:
        return value[rows]
    return value


class ControlNetDenoiser(ReferenceConditionedDenoiser):
    """A U-Net with a ``diffusers.ControlNetModel`` whose condition is the reference image (003 §3.1, A.3).

    The ControlNet is a trainable copy of the U-Net encoder joined to it by zero convolutions; it reads the noisy
    latents, the prompt's ``encoder_hidden_states`` and, through its conditioning embedding, the reference pixels.
    The condition is pixel-aligned with the target: its embedding downsamples by ``condition_downsampling`` (8 for
    the default ``(16, 32, 96, 256)`` channels), so the condition must be ``8 x`` the latent size, i.e. the target's
    pixel size. References of another size are resized to it (bilinear, antialiased). ControlNet expects the
    condition in [0, 1] (diffusers' training script and pipeline feed unnormalised ``ToTensor`` pixels), so the
    [-1, 1] reference pixels are mapped to [0, 1].

    With N references, the ControlNet runs on every real reference (padded slots are skipped) and its residuals are
    averaged over each example's real references; an example with none gets no residual (the plain U-Net).
    ``reference_scale`` is ControlNet's ``conditioning_scale``; 0 returns exactly the plain U-Net's output.
    """

    kind = "controlnet"

    def __init__(self, unet, controlnet):
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet
        self.decoder_trained = False

    @classmethod
    def from_unet(cls, unet, **controlnet_kwargs) -> ControlNetDenoiser:
        """A ControlNet initialised from ``unet``'s encoder, with zero convolutions and an RGB conditioning input."""
        from diffusers import ControlNetModel

        controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3, **controlnet_kwargs)
        return cls(unet, _like_unet(controlnet, unet))

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
        rows, slots, counts = _valid_pairs(references)
        batch = noisy_latents.shape[0]
        down_residuals = mid_residual = None
        if rows.numel():
            down, mid = self.controlnet(
                noisy_latents[rows], _per_row(timesteps, rows), encoder_hidden_states[rows],
                controlnet_cond=self.condition(references.pixels[rows, slots], noisy_latents.shape[-2:]),
                conditioning_scale=float(reference_scale), return_dict=False)
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
        frozen zero ``conv_out`` would shut the reference out). The U-Net encoder is always frozen."""
        _check_lock(lock)
        self.requires_grad_(False)
        if lock == "full":
            modules = [self.controlnet, *_decoder_modules(self.unet)]
        elif lock == "lockd":
            modules = [self.controlnet]
        else:
            modules = [self.controlnet.controlnet_down_blocks, self.controlnet.controlnet_mid_block,
                       self.controlnet.controlnet_cond_embedding.conv_out]
        self.decoder_trained = self.decoder_trained or lock == "full"
        return _enable(modules)

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()
        self.controlnet.enable_gradient_checkpointing()

    def save_pretrained(self, directory) -> None:
        """``directory/controlnet`` (diffusers folder, safetensors), ``directory/unet_decoder.safetensors`` when
        the decoder was trained (``set_trainable("full")`` or loaded so), and ``denoiser.json``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.controlnet.save_pretrained(directory / CONTROLNET_FOLDER, safe_serialization=True)
        decoder = directory / DECODER_WEIGHTS
        if self.decoder_trained:
            save_file(unet_decoder_state_dict(self.unet), str(decoder))
        elif decoder.exists():
            decoder.unlink()  # a stale decoder from an earlier save would be loaded with these weights
        _write_config(directory, {"kind": self.kind, "decoder_trained": self.decoder_trained})

    @classmethod
    def from_pretrained(cls, directory, unet) -> ControlNetDenoiser:
        """The ControlNet saved in ``directory`` around ``unet``; a saved decoder is loaded into ``unet`` in place."""
        from diffusers import ControlNetModel

        directory = Path(directory)
        config = _read_config(directory, cls.kind)
        controlnet = ControlNetModel.from_pretrained(directory / CONTROLNET_FOLDER)
        model = cls(unet, _like_unet(controlnet, unet))
        if config.get("decoder_trained"):
            _load_decoder(unet, directory / DECODER_WEIGHTS)
            model.decoder_trained = True
        return model


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

    ``reference_scale`` sets the processors' ``scale`` at each forward (0 returns exactly the plain U-Net); with
    gradient checkpointing, run backward before a forward with another scale, since recomputation reads it.
    """

    kind = "ip-adapter"

    def __init__(self, unet, image_encoder, image_projection, image_encoder_source: str | None = None):
        from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

        super().__init__()
        self.unet = unet
        self.image_encoder = image_encoder.requires_grad_(False).eval()
        self.image_projection = image_projection
        self.image_encoder_source = image_encoder_source or getattr(image_encoder, "name_or_path", "") or ""
        self.decoder_trained = False
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
        return cls(unet, encoder, projection, image_encoder_source=source)

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
        from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        encoder = self.image_encoder
        size = int(encoder.config.image_size)
        images = (pixels.to(encoder.dtype) + 1.0) / 2.0
        if tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        mean = images.new_tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            return encoder(pixel_values=(images.clamp(0.0, 1.0) - mean) / std).image_embeds

    def _set_scale(self, scale: float) -> None:
        for processor in self.ip_processors().values():
            processor.scale = [float(scale)]

    def forward(self, noisy_latents, timesteps, encoder_hidden_states, references: ReferenceInputs,
                reference_scale: float = 1.0) -> torch.Tensor:
        self._set_scale(reference_scale)
        batch, dim, tokens = noisy_latents.shape[0], self.unet.config.cross_attention_dim, self.num_tokens
        rows, slots, counts = _valid_pairs(references)
        if reference_scale == 0 or not rows.numel():
            # The processors skip the image branch at scale 0; zero tokens add exactly nothing at any scale.
            image_tokens = encoder_hidden_states.new_zeros(batch, tokens, dim)
            return self.unet(noisy_latents, timesteps, (encoder_hidden_states, [image_tokens])).sample
        embeds = self.embed_references(references.pixels[rows, slots])
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
            predictions.append(self.unet(noisy_latents[group], _per_row(timesteps, group),
                                         (encoder_hidden_states[group], [image_tokens])).sample)
            order.append(group)
        if len(predictions) == 1:
            return predictions[0]
        return torch.cat(predictions)[torch.argsort(torch.cat(order))]

    def set_trainable(self, lock: str = "full") -> list[torch.nn.Parameter]:
        """Trainable sets (001 §5.2 mapped onto IP-Adapter): ``full`` = the image projection + ``to_k_ip`` /
        ``to_v_ip`` + the U-Net decoder; ``lockd`` = the projection + ``to_k_ip`` / ``to_v_ip``; ``lockb`` =
        ``to_k_ip`` / ``to_v_ip`` only. The image encoder and the rest of the U-Net are always frozen."""
        _check_lock(lock)
        self.requires_grad_(False)
        modules = list(self.ip_processors().values())
        if lock in ("full", "lockd"):
            modules.append(self.image_projection)
        if lock == "full":
            modules.extend(_decoder_modules(self.unet))
        self.decoder_trained = self.decoder_trained or lock == "full"
        return _enable(modules)

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
            raise ValueError(f"IP-Adapter weights do not fit this U-Net: {len(found)} ip tensors for "
                             f"{len(processors)} cross-attentions")
        with torch.no_grad():
            for index, processor in enumerate(processors):
                processor.to_k_ip[0].weight.copy_(state[f"ip_adapter.{2 * index + 1}.to_k_ip.weight"])
                processor.to_v_ip[0].weight.copy_(state[f"ip_adapter.{2 * index + 1}.to_v_ip.weight"])

    def save_pretrained(self, directory) -> None:
        """``directory/ip_adapter.safetensors`` (projection + ip key/value weights), ``denoiser.json``
        (the image encoder's id or folder, K), and ``unet_decoder.safetensors`` when the decoder was trained."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.adapter_state_dict(), str(directory / IP_ADAPTER_WEIGHTS), metadata={"format": "pt"})
        decoder = directory / DECODER_WEIGHTS
        if self.decoder_trained:
            save_file(unet_decoder_state_dict(self.unet), str(decoder))
        elif decoder.exists():
            decoder.unlink()
        _write_config(directory, {
            "kind": self.kind, "image_encoder": self.image_encoder_source, "num_tokens": self.num_tokens,
            "image_embed_dim": int(self.image_projection.image_embeds.in_features),
            "decoder_trained": self.decoder_trained})

    @classmethod
    def from_pretrained(cls, directory, unet, image_encoder=None) -> IPAdapterDenoiser:
        """The adapter saved in ``directory`` around ``unet`` (a saved decoder is loaded into it in place). The
        image encoder is ``image_encoder`` (a model, id or folder) or else the one the config names."""
        from diffusers.models.embeddings import ImageProjection
        from safetensors.torch import load_file

        directory = Path(directory)
        config = _read_config(directory, cls.kind)
        source = image_encoder if isinstance(image_encoder, str) else config.get("image_encoder") or None
        if image_encoder is None or isinstance(image_encoder, str):
            if not source:
                from ..errors import MissingModelError

                raise MissingModelError(f"{directory / CONFIG_NAME} names no image encoder (it was built from a "
                                        "config): pass image_encoder=<model, hub id or folder>")
            image_encoder = load_image_encoder(source)
        projection = ImageProjection(image_embed_dim=int(config["image_embed_dim"]),
                                     cross_attention_dim=unet.config.cross_attention_dim,
                                     num_image_text_embeds=int(config["num_tokens"]))
        model = cls(unet, image_encoder.to(device=unet.device), projection, image_encoder_source=source)
        model.load_adapter_state_dict(load_file(str(directory / IP_ADAPTER_WEIGHTS), device=str(unet.device)))
        if config.get("decoder_trained"):
            _load_decoder(unet, directory / DECODER_WEIGHTS)
            model.decoder_trained = True
        return model
