"""Small dataset dirs and tiny generators for the synth and recognition tests (no weights exist offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def colour_dataset(root: Path, identities: int = 6, per_identity: int = 4, size: int = 48, seed: int = 0,
                   source: str | None = None, spread_step: float = 0.0, prefix: str = "id") -> Path:
    """A dataset dir of drawn identities: identity k is a disc of its own colour on a grey background, each image
    moved and shaded a little (identity k's images vary ``spread_step * k`` more, so spread grows with k)."""
    from sameid.images import perceptual_hash
    from sameid.records import MANIFEST_COLUMNS
    from sameid.synth.output import link_lists, write_dataset

    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(identities):
        colour = np.array([(k * 97) % 256, (k * 53 + 80) % 256, (k * 151 + 30) % 256], dtype=float)
        for j in range(per_identity):
            jitter = 4 + spread_step * k
            yy, xx = np.mgrid[:size, :size]
            cx, cy = size / 2 + rng.normal(0, jitter), size / 2 + rng.normal(0, jitter)
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (size / 3) ** 2
            pixels = np.full((size, size, 3), 128.0) + rng.normal(0, 6, size=(size, size, 3))
            pixels[disc] = colour * rng.uniform(0.85, 1.15) + rng.normal(0, 6, size=(int(disc.sum()), 3))
            if j % 2:
                pixels[: size // 4] = rng.uniform(0, 255, size=3)  # a band, so phashes differ
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            path = images / f"{prefix}{k}_{j}.png"
            image.save(path)
            rows.append({"id": f"{prefix}{k}_{j}", "image": str(path), "identity": f"{prefix}-{k}", "caption": "a disc",
                         "tags": ["disc"], "head_box": None, "mask": None, "width": size, "height": size,
                         "phash": perceptual_hash(image)})
    frame = link_lists(pd.DataFrame(rows), 6)
    if source:
        frame["source"] = source
    frame = frame[list(MANIFEST_COLUMNS) + [c for c in frame.columns if c not in MANIFEST_COLUMNS]]
    write_dataset(root, frame, pd.DataFrame(), {"near_duplicate_bits": 6})
    return root


def save_tiny_text_to_image(folder: Path, seed: int = 0) -> Path:
    """A random tiny Stable Diffusion pipeline (64 px) saved as a diffusers folder, with a 32 px image processor (for
    a tiny IP-Adapter image encoder)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPImageProcessor

    from sameid.models.components import load_components

    parts = load_components(tiny=True, seed=seed)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=parts.unet, scheduler=parts.noise_scheduler, safety_checker=None,
                                   feature_extractor=processor, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def save_tiny_ip_adapter(folder: Path, unet_config, seed: int = 0) -> Path:
    """Random IP-Adapter weights for the tiny U-Net (``models/ip-adapter_tiny.safetensors``, the original layout
    diffusers' ``load_ip_adapter`` reads) and a tiny CLIP image encoder (``models/image_encoder``)."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    models = folder / "models"
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, projection_dim=16))
    encoder.save_pretrained(models / "image_encoder")
    cross = unet_config.config.cross_attention_dim  # unet_config: the U-Net itself
    state = {"image_proj.proj.weight": torch.randn(cross * 4, 16) * 0.1, "image_proj.proj.bias": torch.zeros(cross * 4),
             "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    channels = list(unet_config.config.block_out_channels)
    key = 1
    for name in unet_config.attn_processors:  # diffusers' order and hidden sizes (loaders/unet.py)
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        state[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, cross) * 0.1
        state[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, cross) * 0.1
        key += 2
    save_file(state, str(models / "ip-adapter_tiny.safetensors"))
    return folder
