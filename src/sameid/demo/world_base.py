"""The small world's pretrained base: its U-Net and text encoder trained as a plain text-to-image model first.

RetriNet is trained on top of a pretrained Stable Diffusion (RetriBooru, arXiv 2312.02521, §5.2: the U-Net
encoder, mid block and time embedding stay frozen in every lock mode, the retrieval encoder is initialised from the
U-Net encoder). On the random world base (``tiny_kind: world``) that leaves random layers frozen and a retrieval
encoder copied from random weights, and the trained models drew noise (docs/benchmarks.md, "The claim in the small
world"). This module plays the part of SD 1.5's pretraining for the world: it trains the world U-Net and its text
encoder as an ordinary text-to-image model on the world's images with *full* captions (:func:`.world.full_caption`:
layout and identity colours), saves it in the Stable Diffusion layout (``save_components``), and RetriNet is then
trained on it with ``pretrained: <that folder>`` and the layout-only captions, so the identity has to come from the
reference.

Why not the training loop (:mod:`sameid.train.loop`): the loop trains a reference-conditioned denoiser on
:class:`~sameid.pairs.PairsDataset` examples, with every base part frozen; a text-to-image model has no reference
and trains the base itself, including the text encoder. What it shares with the loop is everything of a step after
the data: the noise, timesteps and objective of :func:`sameid.train.loop.denoising_loss`, the masked loss of
equation 3 (:mod:`sameid.train.losses`) with the whole image valid, the per-step generator
(:func:`sameid.train.loop.step_generator`), diffusers' U-Net, scheduler and learning-rate schedules.

Captions while pretraining: the full caption with probability ``full_caption_rate``, the empty caption with
``caption_drop`` (for classifier-free guidance), otherwise the layout-only caption (its prefix), as Stable
Diffusion's captions rarely name everything in the image; so the base also draws a figure of *some* identity
from a layout-only caption, which is what RetriNet starts from. The held-out identities of the RetriNet runs are
left out (``exclude``), so neither the base nor RetriNet has seen them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..atomic import write_directory_atomic, write_json_atomic
from ..errors import SameIdError
from ..references import normalize_pixels
from ..sources.world import (
    BACKGROUNDS,
    POSITIONS,
    SIZES,
    Identity,
    Layout,
    figure_mask,
    full_caption,
    identity_score,
    layout_agreement,
    measure,
)

BASE_FILE = "world_base.json"  # inside the saved base: settings, losses, seconds; its presence marks it complete
#: The world base that ships inside the package (float16 weights, 8.5 MB): pretrained by ``sameid experiment
#: world-base`` with the default :class:`BaseSettings`, seed 0, without the 8 identities that the default world's
#: runs hold out (holdout seed 0), so the demo and the claim experiment start from it instead of spending
#: 12 CPU minutes pretraining one.
SHIPPED_BASE = Path(__file__).resolve().parent.parent / "data" / "world_base"


def shipped_world_base() -> Path:
    """The world base inside the package; a MissingModelError says how to make one if it is not there."""
    from ..errors import MissingModelError

    if not (SHIPPED_BASE / BASE_FILE).is_file():
        raise MissingModelError(f"the world base that ships with sameid is missing from {SHIPPED_BASE} (an "
                                "incomplete install?): reinstall sameid, or make one with `sameid experiment "
                                "world-base --out DIR` and pass it as the base")
    return SHIPPED_BASE


def base_record(path: str | Path) -> dict:
    """What ``world_base.json`` of a pretrained world base says (settings with ``exclude``, losses, seconds)."""
    file = Path(path) / BASE_FILE
    if not file.is_file():
        raise SameIdError(f"{path} is not a pretrained world base (no {BASE_FILE}): make one with `sameid "
                          "experiment world-base --out DIR`")
    try:
        record = json.loads(file.read_text())
        record["settings"]["exclude"]
    except (ValueError, KeyError, TypeError) as error:
        raise SameIdError(f"{file} is damaged ({error}): make the base again with `sameid experiment "
                          "world-base`") from None
    return record


@dataclass(frozen=True)
class BaseSettings:
    """How the world base is pretrained (per seed: the random initialisation and the data order)."""

    steps: int = 3000
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    full_caption_rate: float = 0.7
    caption_drop: float = 0.1
    train_text_encoder: bool = True
    figure_loss_weight: float = 4.0  # equation 3's lambda with the figure's pixels as its mask (0: plain MSE)

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise SameIdError("world base: steps and batch_size must be at least 1 and learning_rate above 0")
        if not (0 <= self.full_caption_rate and 0 <= self.caption_drop and
                self.full_caption_rate + self.caption_drop <= 1):
            raise SameIdError("world base: full_caption_rate and caption_drop are probabilities summing to 1 at most")


@dataclass
class BaseResult:
    path: Path
    losses: list[float]
    seconds: float
    reused: bool


class _TextToImage(torch.nn.Module):
    """The U-Net behind the denoiser call of :func:`sameid.train.loop.denoising_loss`; it has no references."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, noisy, timesteps, prompt_embeds, references=None):
        return self.unet(noisy, timesteps, encoder_hidden_states=prompt_embeds).sample


def _encode(text_encoder, tokenizer, texts: list[str]) -> torch.Tensor:
    """As :func:`sameid.references.encode_texts`, but keeping the graph (the text encoder is trained here)."""
    tokens = tokenizer(texts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                       return_tensors="pt")
    return text_encoder(tokens.input_ids.to(text_encoder.device))[0]


def figure_masks(images: np.ndarray, backgrounds) -> torch.Tensor:
    """(N, 1, H, W) float masks of the figures in world images ((N, H, W, 3) uint8) drawn on ``backgrounds`` (their
    background names): :func:`sameid.sources.world.figure_mask`."""
    return torch.from_numpy(figure_mask(images, list(backgrounds)).astype(np.float32))[:, None]


def world_captions(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(full captions, layout-only captions) of the world manifest's rows."""
    full, layout_only = [], []
    for row in frame.itertuples():
        layout = Layout(row.background, row.position, row.size)
        full.append(full_caption(Identity(row.hair, row.top, row.bottom), layout))
        layout_only.append(layout.caption())
    return full, layout_only


def _settings_record(settings: BaseSettings, seed: int, exclude) -> dict:
    return {**asdict(settings), "seed": int(seed), "exclude": sorted(exclude)}


def pretrain_world_base(world: str | Path, out: str | Path, settings: BaseSettings = BaseSettings(), *,
                        seed: int = 0, exclude=(), echo=print, log_every: int = 250) -> BaseResult:
    """Train the world base at ``out`` (a Stable Diffusion-layout folder ``load_components`` reads) from the
    world dataset dir ``world``, leaving out the identities in ``exclude``. A complete base already at ``out``
    with the same settings, seed and exclusions is reused; one with other settings is refused."""
    from diffusers.optimization import get_scheduler

    from ..models.components import load_components, save_components
    from ..train.loop import denoising_loss, step_generator

    out = Path(out)
    record = _settings_record(settings, seed, exclude)
    if (out / BASE_FILE).is_file():
        saved = json.loads((out / BASE_FILE).read_text())
        if saved["settings"] == record:
            return BaseResult(out, saved["losses"], saved["seconds"], reused=True)
        raise SameIdError(f"{out} holds a world base pretrained with other settings; choose another folder")
    frame = pd.read_parquet(Path(world) / "manifest.parquet")
    frame = frame[~frame["identity"].isin(set(exclude))].reset_index(drop=True)
    if frame.empty:
        raise SameIdError("world base: every identity is excluded")
    images = np.stack([np.asarray(Image.open(Path(world) / path).convert("RGB")) for path in frame["image"]])
    pixels = normalize_pixels(torch.from_numpy(images).permute(0, 3, 1, 2))
    full, layout_only = world_captions(frame)

    start = time.time()
    components = load_components(tiny=True, tiny_kind="world", seed=seed)
    unet, text_encoder, vae = components.unet, components.text_encoder, components.vae
    model = _TextToImage(unet)
    trainable = list(unet.parameters())
    text_encoder.requires_grad_(settings.train_text_encoder)
    if settings.train_text_encoder:
        trainable += list(text_encoder.parameters())
        text_encoder.train()
    unet.requires_grad_(True)
    unet.train()
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=1e-2)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=settings.warmup_steps,
                             num_training_steps=settings.steps)
    with torch.no_grad():
        latents_all = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
    ones = torch.ones(settings.batch_size, 1, pixels.shape[2], pixels.shape[3])
    figures = figure_masks(images, frame["background"])
    losses: list[float] = []
    for step in range(settings.steps):
        generator = step_generator(seed, step)
        rows = torch.randint(0, len(frame), (settings.batch_size,), generator=generator).tolist()
        draws = torch.rand(settings.batch_size, generator=generator).tolist()
        captions = [full[r] if u < settings.full_caption_rate else
                    "" if u >= 1 - settings.caption_drop else layout_only[r] for r, u in zip(rows, draws)]
        prompt_embeds = _encode(text_encoder, components.tokenizer, captions)
        loss = denoising_loss(model, components.noise_scheduler, latents_all[rows], prompt_embeds, None,
                              ones, figures[rows], generator, face_loss_weight=settings.figure_loss_weight).total
        if not torch.isfinite(loss):
            raise SameIdError(f"world base: the loss is {float(loss)} at step {step + 1}; lower learning_rate")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            echo(f"    base step {step + 1}/{settings.steps}: loss {np.mean(losses[-log_every:]):.4f}")
    for part in (unet, text_encoder):
        part.requires_grad_(False)
        part.eval()
    seconds = time.time() - start

    def fill(folder: Path) -> None:
        save_components(components, folder)
        write_json_atomic(folder / BASE_FILE, {"settings": record, "losses": losses, "seconds": round(seconds, 1),
                                               "images": int(len(frame))}, sort_keys=False)

    write_directory_atomic(out, fill)
    return BaseResult(out, losses, seconds, reused=False)


# --- does the base draw what a full caption asks? --------------------------------------------------------------
def draw_from_captions(components, prompts: list[str], *, inference_steps: int = 20, guidance_scale: float = 1.0,
                       seed: int = 0, batch: int = 64) -> list[Image.Image]:
    """The base's own images for ``prompts``: the project's pipeline with a fresh RetriNet at reference scale 0,
    which is exactly the plain U-Net (:class:`~sameid.models.retrinet.RetriNetDenoiser`)."""
    from ..models.retrinet import RetriNetDenoiser
    from ..pipelines import ReferencePipeline

    denoiser = RetriNetDenoiser.from_unet(components.unet).eval()
    pipeline = ReferencePipeline.from_components(components, denoiser)
    pipeline.set_progress_bar_config(disable=True)
    blank = Image.new("RGB", (8, 8), "white")  # a reference is required by the call; scale 0 ignores it
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        generators = [torch.Generator().manual_seed(seed * 100_003 + start + k) for k in range(len(chunk))]
        images += pipeline(chunk, [[blank]] * len(chunk), num_inference_steps=inference_steps,
                           guidance_scale=guidance_scale, reference_scale=0.0, generator=generators).images
    return images


def check_base(components, identities: list[Identity], *, per_identity: int = 4, inference_steps: int = 20,
               guidance_scale: float = 1.0, seed: int = 0) -> dict:
    """Identity and prompt scores (:func:`.world.measure`) of the base drawing ``identities`` from full captions
    in random layouts; the mean identity score of a model that draws *some* figure is near 1/7 per colour by
    chance, one that reads the caption's colours near 1."""
    rng = np.random.default_rng([seed, 13])
    asked = [(identity, Layout(str(rng.choice(list(BACKGROUNDS))), str(rng.choice(list(POSITIONS))),
                               str(rng.choice(list(SIZES)))))
             for identity in identities for _ in range(per_identity)]
    images = draw_from_captions(components, [full_caption(i, layout) for i, layout in asked],
                                inference_steps=inference_steps, guidance_scale=guidance_scale, seed=seed)
    measured = [measure(image) for image in images]
    return {"identity": float(np.mean([identity_score(m, i) for m, (i, _) in zip(measured, asked)])),
            "prompt": float(np.mean([layout_agreement(m, layout) for m, (_, layout) in zip(measured, asked)])),
            "n": len(asked), "images": images}
