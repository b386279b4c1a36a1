"""Tiny random models saved like hub checkpoints, for tests and benchmarks (no weights exist offline)."""

from __future__ import annotations

from pathlib import Path


def save_tiny_clip(folder: str | Path, *, image_size: int = 32, patch_size: int = 8, hidden: int = 32,
                   intermediate: int = 37, layers: int = 2, heads: int = 4, projection_dim: int = 16,
                   seed: int = 0) -> dict:
    """A random CLIP (model, image processor, byte-level tokenizer) saved to ``folder``; returns its sizes.

    The tokenizer is :func:`sameid.models.components.byte_level_clip_tokenizer` (one token per character).
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from .models.components import byte_level_clip_tokenizer

    folder = Path(folder)
    tokenizer = byte_level_clip_tokenizer(folder)
    vocab = tokenizer.get_vocab()
    torch.manual_seed(seed)
    tower = dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                 num_attention_heads=heads)
    config = CLIPConfig(
        text_config=dict(**tower, vocab_size=len(vocab), max_position_embeddings=77,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(**tower, image_size=image_size, patch_size=patch_size), projection_dim=projection_dim)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"image_size": image_size, "patch_size": patch_size, "hidden_size": hidden,
            "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
            "projection_dim": projection_dim, "text_max_positions": 77, "vocab_size": len(vocab),
            "tokenizer": "byte-level, no merges (one token per character)"}


def find_chromium() -> str | None:
    """The headless browser used to check the HTML report renders: Debian's ``chromium`` or a Chrome on PATH."""
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot_html(html: str | Path, png: str | Path, *, width: int = 1280, height: int = 1600,
                    timeout: float = 120.0) -> Path:
    """Render ``html`` in headless Chromium and save a ``width`` x ``height`` screenshot to ``png``."""
    import subprocess
    import tempfile

    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH: install Debian's chromium package (scripts/setup --dev does)")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: no first-run state, no lock files
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={png}",
                        Path(html).resolve().as_uri()],
                       check=True, capture_output=True, timeout=timeout)
    return png
