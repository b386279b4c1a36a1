"""The frozen parts of a latent diffusion model that every denoiser shares: U-Net, VAE, text encoder, scheduler.

A base model is a Stable Diffusion-layout folder or hub id (subfolders ``unet``, ``vae``, ``text_encoder``,
``tokenizer``, ``scheduler``), for example Stable Diffusion 1.5, on which RetriNet and the baselines are trained
(RetriBooru, arXiv 2312.02521, §5.2: "SD encoder, decoder, and retrieval encoder blocks are initialized with
corresponding blocks in SD v1.5 weights"). ``load_components(tiny=True)`` builds a random tiny configuration of
the same layout instead, so tests, the demo and benchmarks run the real code path on a CPU in milliseconds.

An SDXL base (a folder with ``text_encoder_2/`` and ``tokenizer_2/`` or a ``model_index.json`` naming
``StableDiffusionXLPipeline``, or a hub id whose U-Net takes ``addition_embed_type="text_time"``) loads with its
second text encoder (a ``CLIPTextModelWithProjection``); :func:`prompt_conditions` gives what its U-Net reads: both
encoders' penultimate hidden states, the pooled embedding of the second and the size/crop time ids, as diffusers'
``StableDiffusionXLPipeline`` computes them. Only denoisers that pass ``added_cond_kwargs`` to the U-Net train on it
(the multi-subject kinds; PairHuman, arXiv 2511.16712).

Loading follows :mod:`sameid.backends.pretrained`: offline unless ``SAMEID_ALLOW_DOWNLOAD=1``, and whatever is
absent becomes a :class:`~sameid.errors.MissingModelError` whose one line names it and says how to get it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..backends.pretrained import _looks_like_path, load_pretrained, missing_model_message
from ..errors import MissingModelError, SameIdError

SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
#: What an SDXL folder has beyond :data:`SD_SUBFOLDERS`.
SDXL_SUBFOLDERS = ("text_encoder_2", "tokenizer_2")
SDXL_PIPELINE_CLASS = "StableDiffusionXLPipeline"
TINY_SOURCE = "tiny"
# Stable Diffusion's VAE halves the image three times (8 px per latent cell); the tiny VAE twice (see
# _tiny_components). A ControlNet's conditioning embedding must downsample by the same factor, or diffusers'
# ControlNet pipelines cannot feed it the image (sameid.models.controlnet_denoiser).
SD_VAE_SCALE_FACTOR = 8
TINY_VAE_BLOCK_OUT_CHANNELS = (32, 32, 64)
TINY_VAE_SCALE_FACTOR = 2 ** (len(TINY_VAE_BLOCK_OUT_CHANNELS) - 1)
#: Kinds of random base a tiny run builds: "sd" (Stable Diffusion's layout, 64 px, a random VAE: shows the code path)
#: or "world" (pixel space, 32 px: learns the small world of sameid.sources.world from scratch in minutes on a CPU).
TINY_KINDS = ("sd", "world")
WORLD_RESOLUTION = 32
WORLD_PATCH = 4  # pixels per latent cell side of the world base (PixelAutoencoder.patch_size)
# The words of the small world's captions (sameid.sources.world: layout, identity colours), each one token of the world
# tokenizer. A caption is then a fixed template of 18 tokens in which a word's position says what it describes,
# where one token per character put "red" of "red hair" at a position that shifted with every earlier word; the
# world base learnt colours from full captions only with word tokens (docs/benchmarks.md, "The claim in the small
# world"). tests/test_claim.py checks that every word of every world caption is here.
WORLD_WORDS = ("a", "small", "large", "figure", "on", "the", "left", "right", "in", "centre", "white", "gray", "black",
               "background", "red", "orange", "yellow", "green", "blue", "purple", "pink", "hair", "top", "bottom")
# Text tokens of the world tokenizer: a full caption is 18 word tokens + start + end; the rest is room for a
# user's own prompt (spelt one byte per token where its words are not world words).
WORLD_TEXT_TOKENS = 32
_EXAMPLE_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@dataclass
class DiffusionComponents:
    """A base model's parts. ``source`` is the hub id or folder it came from, or ``"tiny"``. ``text_encoder_2`` and
    ``tokenizer_2``: an SDXL base's second text encoder and its tokenizer (None for Stable Diffusion 1.x/2.x)."""

    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    text_encoder: Any  # transformers.CLIPTextModel
    tokenizer: Any  # transformers.CLIPTokenizer
    noise_scheduler: Any  # diffusers.DDPMScheduler
    source: str
    text_encoder_2: Any = None  # transformers.CLIPTextModelWithProjection (SDXL)
    tokenizer_2: Any = None  # transformers.CLIPTokenizer (SDXL)

    @property
    def is_sdxl(self) -> bool:
        """Whether this is an SDXL base (two text encoders; the U-Net reads pooled text and time ids)."""
        return self.text_encoder_2 is not None

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side (8 for Stable Diffusion, 4 for the tiny base)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def latent_scaling_factor(self) -> float:
        """Multiplies VAE latents before the U-Net sees them (0.18215 for SD 1.5)."""
        return float(self.vae.config.scaling_factor)

    def latent_size(self, pixels: int) -> int:
        """Latent side length of an image side of ``pixels``."""
        return pixels // self.vae_scale_factor

    def to(self, device=None, dtype=None) -> DiffusionComponents:
        for model in (self.unet, self.vae, self.text_encoder, self.text_encoder_2):
            if model is not None:
                model.to(device=device, dtype=dtype)
        return self


def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP byte-level alphabet: every byte maps to one printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def byte_level_clip_tokenizer(folder: str | Path, *, model_max_length: int = 77, words: tuple[str, ...] = ()):
    """Write a CLIP tokenizer with a byte-level vocabulary to ``folder`` and load it.

    Every character is one token (the vocabulary is the 256-symbol byte alphabet, each also with the CLIP
    end-of-word suffix, plus start and end tokens: 514 ids), so any text tokenizes without a trained vocabulary;
    each of ``words`` (lower case) is one token more, built by a chain of BPE merges (longer words first, so
    a shorter word's merge never splits a longer word that contains it). The files are written as vocab.json +
    merges.txt and loaded with ``from_pretrained``, because ``CLIPTokenizer(vocab_file=...)`` ignores the file in
    transformers 5.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet)]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    for word in sorted(set(words), key=lambda word: (-len(word), word)):
        symbols = [*word[:-1], word[-1] + "</w>"]
        merged = symbols[0]
        for symbol in symbols[1:]:
            if f"{merged} {symbol}" not in merges:
                merges.append(f"{merged} {symbol}")
            merged += symbol
            vocab.setdefault(merged, len(vocab))
    for token in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("".join(line + "\n" for line in ["#version: 0.2", *merges]))
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=model_max_length)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _tiny_text_encoder(tokenizer, *, intermediate_size: int, hidden_size: int = 32):
    """A random 2-layer CLIP text encoder over ``tokenizer``'s vocabulary (the tiny and world bases)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))


def _tiny_components(seed: int) -> DiffusionComponents:
    """Random SD-layout parts small enough for a CPU: 64 px images -> 16x16x4 latents, 32-wide text states."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with tempfile.TemporaryDirectory() as folder:
            tokenizer = byte_level_clip_tokenizer(folder)
        text_encoder = _tiny_text_encoder(tokenizer, intermediate_size=37)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=32, attention_head_dim=4,
            norm_num_groups=32)
        # Three VAE levels: a scale factor of 4 keeps 64 px latents at 16x16 (SD's 8 would leave 8x8).
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=TINY_VAE_BLOCK_OUT_CHANNELS, layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * len(TINY_VAE_BLOCK_OUT_CHANNELS),
            up_block_types=("UpDecoderBlock2D",) * len(TINY_VAE_BLOCK_OUT_CHANNELS),
            latent_channels=4, norm_num_groups=32, sample_size=64)
    finally:
        torch.random.set_rng_state(generator_state)
    # Stable Diffusion 1.5's training schedule, so a tiny run exercises the same noise levels.
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, prediction_type="epsilon",
                              steps_offset=1)
    for model in (unet, vae, text_encoder):
        model.eval()
    return DiffusionComponents(unet, vae, text_encoder, tokenizer, scheduler, TINY_SOURCE)


def _world_components(seed: int) -> DiffusionComponents:
    """A random pixel-space base for the small world (:mod:`sameid.sources.world`); :mod:`sameid.demo.world_base`
    pretrains it as a text-to-image model before RetriNet is trained on it.

    The VAE is a :class:`~.pixel_autoencoder.PixelAutoencoder` whose latents are the 32 px pixels in 4 x 4 patches
    (8 x 8 cells of 48 channels, as a vision transformer's patches); the U-Net has two levels (8 and 4 cells),
    64 and 128 channels, cross-attention at both; the text encoder is a random 2-layer, 64-wide CLIP over the
    byte-level vocabulary plus the world's words (:data:`WORLD_WORDS`, one token each; :data:`WORLD_TEXT_TOKENS`
    tokens). The noise schedule is the cosine one of "Improved Denoising Diffusion Probabilistic Models" (arXiv
    2102.09672, §3.2), with x0 clipped to [-1, 1] as pixel-space DDPM does (SD's scaled-linear schedule, made for
    latents scaled by 0.18215, leaves too much of a pixel image at its last step), and the U-Net predicts the
    clean image (``prediction_type="sample"``). Each choice was measured on pretrainings of a few thousand CPU
    steps (docs/benchmarks.md, "The claim in the small world"): epsilon prediction left noise over every image,
    2 x 2 patches with 32/64 channels drew blurred blobs after 1,500 steps, one token per character left the
    colour words unusable; this configuration draws clean figures in the asked layout after 3,000 steps
    (about 12 CPU minutes).
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from .pixel_autoencoder import PixelAutoencoder

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with tempfile.TemporaryDirectory() as folder:
            tokenizer = byte_level_clip_tokenizer(folder, model_max_length=WORLD_TEXT_TOKENS, words=WORLD_WORDS)
        text_encoder = _tiny_text_encoder(tokenizer, intermediate_size=128, hidden_size=64)
        unet = UNet2DConditionModel(
            sample_size=WORLD_RESOLUTION // WORLD_PATCH, in_channels=3 * WORLD_PATCH ** 2,
            out_channels=3 * WORLD_PATCH ** 2, block_out_channels=(64, 128), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), mid_block_type="UNetMidBlock2DCrossAttn",
            cross_attention_dim=64, attention_head_dim=16, norm_num_groups=16)
        vae = PixelAutoencoder(patch_size=WORLD_PATCH, latent_channels=3 * WORLD_PATCH ** 2,
                               block_out_channels=(3 * WORLD_PATCH ** 2,) * 3)
    finally:
        torch.random.set_rng_state(generator_state)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                              clip_sample_range=1.0, prediction_type="sample")
    for model in (unet, vae, text_encoder):
        model.eval()
    return DiffusionComponents(unet, vae, text_encoder, tokenizer, scheduler, TINY_SOURCE)


def _vae_class(source: str):
    """The VAE class a base model folder names: a PixelAutoencoder (a "world" base) or diffusers' AutoencoderKL."""
    from diffusers import AutoencoderKL

    config = Path(source) / "vae" / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("_class_name") == "PixelAutoencoder":
        from .pixel_autoencoder import PixelAutoencoder

        return PixelAutoencoder
    return AutoencoderKL


def _require_layout(folder: Path, source: str, needed: tuple[str, ...], kind: str, layout: tuple[str, ...],
                    example: str, hint: str = "") -> None:
    """Refuse a base folder that lacks any of the ``needed`` subfolders, naming them and the whole ``layout``."""
    missing = [name for name in needed if not (folder / name).is_dir()]
    if missing:
        raise MissingModelError(
            f"{kind} folder {source} lacks {', '.join(n + '/' for n in missing)}: its layout has "
            f"{', '.join(n + '/' for n in layout)} (e.g. `hf download {example} --local-dir DIR`){hint}")


def _index_class(folder: Path) -> str | None:
    index = folder / "model_index.json"
    if not index.is_file():
        return None
    name = json.loads(index.read_text()).get("_class_name")
    return name if isinstance(name, str) else None


def is_sdxl_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds an SDXL base: ``text_encoder_2/`` or ``tokenizer_2/``, or a ``model_index.json``
    naming an SDXL pipeline class."""
    folder = Path(folder)
    if any((folder / name).is_dir() for name in SDXL_SUBFOLDERS):
        return True
    return (_index_class(folder) or "").startswith("StableDiffusionXL")


def base_is_sdxl(pretrained: str | Path | None) -> bool | None:
    """Whether the base ``pretrained`` names is SDXL, read without loading it: from a folder's files, or from a hub
    id's cached ``model_index.json``; None when that cannot be told (a hub id not in the cache)."""
    if pretrained is None or str(pretrained) == "":
        return None
    local = Path(str(pretrained)).expanduser()
    if local.is_dir():
        return is_sdxl_folder(local)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(pretrained), "model_index.json")
    except Exception:  # noqa: BLE001 - not a valid repo id, or no cache: cannot tell
        return None
    if not isinstance(cached, str):
        return None
    return is_sdxl_folder(Path(cached).parent)


def _load_sdxl_text(source: str, encoder_dtype: dict) -> tuple[Any, Any]:
    """An SDXL base's second text encoder (CLIPTextModelWithProjection) and tokenizer."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    text_encoder_2 = load_pretrained(CLIPTextModelWithProjection, source, what="SDXL base model second text encoder",
                                     subfolder="text_encoder_2", **encoder_dtype)
    tokenizer_2 = load_pretrained(CLIPTokenizer, source, what="SDXL base model second tokenizer",
                                  subfolder="tokenizer_2")
    return text_encoder_2.eval(), tokenizer_2


def load_components(pretrained: str | Path | None = None, *, tiny: bool = False, seed: int = 0,
                    dtype=None, tiny_kind: str = "sd") -> DiffusionComponents:
    """The base model at ``pretrained`` (hub id or SD- or SDXL-layout folder), or random tiny parts when ``tiny``.

    ``dtype`` (a torch dtype or its name) applies to the U-Net, VAE and text encoder; None keeps float32.
    ``seed`` and ``tiny_kind`` (one of :data:`TINY_KINDS`) only affect ``tiny``. A hub id that is not in the local cache is downloaded only when
    ``SAMEID_ALLOW_DOWNLOAD=1``; anything absent raises MissingModelError naming it. Never runs remote code.
    """
    from ..backends.pretrained import torch_dtype

    resolved_dtype = torch_dtype(dtype, "cpu") if dtype is not None else None
    if tiny:
        if pretrained is not None:
            raise ValueError("pass either a base model (id or folder) or tiny=True, not both")
        if tiny_kind not in TINY_KINDS:
            raise ValueError(f"tiny_kind must be one of {', '.join(TINY_KINDS)}, got {tiny_kind!r}")
        components = _world_components(seed) if tiny_kind == "world" else _tiny_components(seed)
        return components.to(dtype=resolved_dtype) if resolved_dtype is not None else components
    if pretrained is None or str(pretrained) == "":
        raise MissingModelError(
            f"no base model given: pass a hub id or Stable Diffusion-layout folder (e.g. {_EXAMPLE_BASE}), "
            "or --tiny for a random tiny base")
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = str(pretrained)
    local = Path(source).expanduser()
    sdxl = False
    if local.exists() or _looks_like_path(source) or isinstance(pretrained, Path):
        if not local.is_dir():
            raise MissingModelError(missing_model_message("base model", source))
        _require_layout(local, source, SD_SUBFOLDERS, "base model", SD_SUBFOLDERS, _EXAMPLE_BASE,
                        ", or pass --tiny for a random tiny base")
        sdxl = is_sdxl_folder(local)
        if sdxl:
            _require_layout(local, source, SDXL_SUBFOLDERS, "SDXL base model", (*SD_SUBFOLDERS, *SDXL_SUBFOLDERS),
                            "stabilityai/stable-diffusion-xl-base-1.0")
        source = str(local)
    model_dtype = {} if resolved_dtype is None else {"torch_dtype": resolved_dtype}
    unet = load_pretrained(UNet2DConditionModel, source, what="base model U-Net", subfolder="unet", **model_dtype)
    vae = load_pretrained(_vae_class(source), source, what="base model VAE", subfolder="vae", **model_dtype)
    # transformers keeps a checkpoint's own dtype unless told: float32 unless asked, as the U-Net and VAE
    encoder_dtype = {"dtype": resolved_dtype if resolved_dtype is not None else torch.float32}
    text_encoder = load_pretrained(
        CLIPTextModel, source, what="base model text encoder", subfolder="text_encoder", **encoder_dtype)
    tokenizer = load_pretrained(CLIPTokenizer, source, what="base model tokenizer", subfolder="tokenizer")
    scheduler = load_pretrained(DDPMScheduler, source, what="base model scheduler", subfolder="scheduler")
    for model in (unet, vae, text_encoder):
        model.eval()
    extra = {}
    if sdxl or getattr(unet.config, "addition_embed_type", None) == "text_time":
        extra = dict(zip(("text_encoder_2", "tokenizer_2"), _load_sdxl_text(source, encoder_dtype)))
    return DiffusionComponents(unet, vae, text_encoder, tokenizer, scheduler, str(pretrained), **extra)


def save_components(components: DiffusionComponents, folder: str | Path) -> Path:
    """Write ``components`` in the Stable Diffusion layout (safetensors) so ``load_components(folder)`` reloads
    them; also a ``model_index.json`` so diffusers' ``StableDiffusionPipeline.from_pretrained`` reads the folder
    (an SDXL base: the SDXL layout, read by ``StableDiffusionXLPipeline``, :func:`_save_sdxl_parts`)."""
    import diffusers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    components.unet.save_pretrained(folder / "unet", safe_serialization=True)
    components.vae.save_pretrained(folder / "vae", safe_serialization=True)
    components.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    components.tokenizer.save_pretrained(folder / "tokenizer")
    components.noise_scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", type(components.unet).__name__],
        "vae": ["diffusers", type(components.vae).__name__],
        "text_encoder": ["transformers", type(components.text_encoder).__name__],
        "tokenizer": ["transformers", type(components.tokenizer).__name__],
        "scheduler": ["diffusers", type(components.noise_scheduler).__name__],
        "safety_checker": [None, None], "feature_extractor": [None, None], "image_encoder": [None, None],
        "requires_safety_checker": False,
    }
    if components.is_sdxl:
        index = _save_sdxl_parts(components, folder, index)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def _save_sdxl_parts(components: DiffusionComponents, folder: Path, index: dict) -> dict:
    """Write the second text encoder and tokenizer of an SDXL base; return ``index`` as diffusers'
    ``StableDiffusionXLPipeline`` names its components (no safety checker)."""
    components.text_encoder_2.save_pretrained(folder / "text_encoder_2", safe_serialization=True)
    components.tokenizer_2.save_pretrained(folder / "tokenizer_2")
    index = {key: value for key, value in index.items()
             if key not in ("safety_checker", "requires_safety_checker")}
    index.update({
        "_class_name": SDXL_PIPELINE_CLASS,
        "text_encoder_2": ["transformers", type(components.text_encoder_2).__name__],
        "tokenizer_2": ["transformers", type(components.tokenizer_2).__name__],
        "force_zeros_for_empty_prompt": True,
    })
    return index


@torch.no_grad()
def encode_prompts(components: DiffusionComponents, prompts: list[str]) -> torch.Tensor:
    """(len(prompts), L, D) last hidden states of the text encoder, padded to the tokenizer's maximum length.

    The text encoder is frozen in every model sameid trains, so no graph is kept. An empty prompt gives the
    unconditional embedding that prompt drop and classifier-free guidance use. An SDXL base is refused: its U-Net
    needs :func:`prompt_conditions` (both encoders, the pooled embedding, the time ids).
    """
    from ..references import encode_texts

    if getattr(components, "text_encoder_2", None) is not None:
        raise SameIdError("an SDXL base (two text encoders) needs prompt_conditions(components, prompts, "
                          "resolution), not encode_prompts: its U-Net also reads the pooled text and time ids")
    return encode_texts(components.text_encoder, components.tokenizer, prompts)


def sdxl_vae_needs_float32(components) -> bool:
    """Whether an SDXL base's VAE must run in float32: its config sets ``force_upcast`` (SDXL's VAE overflows in
    float16; diffusers' SDXL pipeline and training script upcast it). Always False for a Stable Diffusion base."""
    return (getattr(components, "text_encoder_2", None) is not None
            and bool(getattr(components.vae.config, "force_upcast", False)))


def sdxl_time_ids(batch: int, height: int, width: int) -> torch.Tensor:
    """(batch, 6) SDXL micro-conditioning: original size (height, width), crop top-left (0, 0), target size
    (height, width), as diffusers' ``StableDiffusionXLPipeline`` builds ``add_time_ids`` for an uncropped image."""
    return torch.tensor([[float(height), float(width), 0.0, 0.0, float(height), float(width)]]).repeat(batch, 1)


@torch.no_grad()
def prompt_conditions(components, prompts: list[str], resolution: int | tuple[int, int]
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """What the U-Net reads of ``prompts``: ``(states, added_cond_kwargs)``.

    A Stable Diffusion base: :func:`encode_prompts`' states and None. An SDXL base (``components.text_encoder_2``
    set): the penultimate hidden states of both text encoders side by side
    (:func:`sameid.references.encode_texts_sdxl`) and ``{"text_embeds": pooled embedding of the second encoder,
    "time_ids": sdxl_time_ids(...)}`` for an image of ``resolution`` (a side, or (height, width)). ``components``
    is anything with the base's text encoders and tokenizers as attributes (a DiffusionComponents, a pipeline).
    """
    from ..references import encode_texts_sdxl

    if getattr(components, "text_encoder_2", None) is None:
        return encode_prompts(components, prompts), None
    height, width = resolution if isinstance(resolution, tuple | list) else (resolution, resolution)
    states, pooled = encode_texts_sdxl((components.text_encoder, components.text_encoder_2),
                                       (components.tokenizer, components.tokenizer_2), prompts)
    return states, {"text_embeds": pooled, "time_ids": sdxl_time_ids(len(prompts), height, width)}
