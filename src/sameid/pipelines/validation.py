"""Validation generations during training: a fixed handful of training targets, generated from their references.

What a run shows at each validation step (RetriBooru, arXiv 2312.02521, §5.2 trains RetriNet and inspects its
generations as it goes): for the first ``validation_examples`` examples of the run's dataset as planned for epoch
0 (the same references and concept crops at every step), the denoiser generates from those references with the
validation prompts (or the target's own caption) and a fixed seed, so successive steps differ only by the
weights. Each example is written as the generation alone and as a strip: references | generation | target.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..atomic import write_atomic
from .pipeline_reference import ReferencePipeline

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_name(text: str, limit: int = 80) -> str:
    """``text`` reduced to characters that are safe in a file name on every platform (never empty)."""
    return _UNSAFE_NAME.sub("_", str(text)).strip("._")[:limit] or "_"


def _pil(chw: torch.Tensor) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(chw.numpy().transpose(1, 2, 0)))


def save_png(image: Image.Image, path: Path) -> Path:
    """``image`` as a PNG at ``path``, atomically (:mod:`sameid.atomic`): a killed run leaves no half image."""
    return write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def strip_image(references: list[Image.Image], generation: Image.Image, target: Image.Image | None = None
                ) -> Image.Image:
    """One row: the references, the generation, then the target, each scaled to the generation's height."""
    height = generation.height
    tiles = [*references, generation, *([target] if target is not None else [])]
    tiles = [tile if tile.height == height else tile.resize((max(1, round(tile.width * height / tile.height)), height))
             for tile in tiles]
    strip = Image.new("RGB", (sum(tile.width for tile in tiles), height), "white")
    x = 0
    for tile in tiles:
        strip.paste(tile.convert("RGB"), (x, 0))
        x += tile.width
    return strip


def validation_images(components, denoiser, dataset, config, out_dir: Path) -> list[Image.Image]:
    """Generate one image for each of the first ``config.validation_examples`` items of ``dataset`` (a
    :class:`sameid.pairs.PairsDataset`, epoch 0 plans) and write them to ``out_dir``.

    References are the example's reference crops with its concepts; the prompt is ``config.validation_prompts``
    cycled, or the target's full caption when there are none; ``config.validation_inference_steps``,
    ``config.validation_guidance_scale`` and a generator seeded with ``config.seed`` for every example. Writes
    ``<i>_<target_id>.png`` (the generation) and ``<i>_<target_id>_strip.png`` (references | generation |
    target); returns the strips (all the same size when the examples have the same number of references).
    Draws no global random numbers, so a run's training randomness is the same with or without validation.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline = ReferencePipeline.from_components(components, denoiser)
    pipeline.set_progress_bar_config(disable=True)
    prompts = list(config.validation_prompts or [])
    strips = []
    for index in range(min(int(config.validation_examples), len(dataset))):
        example = dataset.example(dataset.plan(index, epoch=0))
        references = [_pil(reference) for reference in example.references]
        prompt = prompts[index % len(prompts)] if prompts else example.full_caption
        generation = pipeline(
            prompt, [references], concepts=[list(example.reference_concepts)],
            height=config.resolution, width=config.resolution, reference_resolution=config.resolution,
            num_inference_steps=config.validation_inference_steps,
            guidance_scale=config.validation_guidance_scale,
            generator=torch.Generator().manual_seed(int(config.seed)),
        ).images[0]
        name = f"{index}_{safe_file_name(example.target_id)}"
        save_png(generation, out_dir / f"{name}.png")
        strip = strip_image(references, generation, _pil(example.target))
        save_png(strip, out_dir / f"{name}_strip.png")
        strips.append(strip)
    return strips
