"""Tiny random models saved like hub checkpoints, for tests and benchmarks (no weights exist offline)."""

from __future__ import annotations

import json
from pathlib import Path


def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP byte-level alphabet: every byte maps to one printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def save_tiny_clip(folder: str | Path, *, image_size: int = 32, patch_size: int = 8, hidden: int = 32,
                   intermediate: int = 37, layers: int = 2, heads: int = 4, projection_dim: int = 16,
                   seed: int = 0) -> dict:
    """A random CLIP (model, image processor, byte-level tokenizer) saved to ``folder``; returns its sizes.

    The tokenizer is written as vocab.json + merges.txt and loaded with ``from_pretrained``, because
    ``CLIPTokenizer(vocab_file=...)`` ignores the file in transformers 5.
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet), "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder)
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
