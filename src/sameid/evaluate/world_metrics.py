"""Scores of generations in the small world (:mod:`sameid.sources.world`), read from pixels.

RetriBooru's central claim (arXiv 2312.02521, §3.1) is that a model trained with the target as its own reference
copies it and follows the prompt less. In the small world all three sides of that are measurable without any
learnt model, because :func:`sameid.sources.world.measure` reads a world image's layout and identity colours back
exactly (tests/test_claim.py):

- ``world_identity`` (a similarity): share of the hair / top / bottom colours of the generation that are the
  colours of its first reference;
- ``world_prompt`` (a diversity, SWD's div): share of background / position / size that are the ones the prompt
  asks for (the prompt is a world caption, :meth:`~sameid.sources.world.Layout.from_caption`);
- ``world_copy`` (a rate): share of background / position / size that are the *first reference's* own; a prompt
  that asks for another value in every factor (``sameid experiment claim`` asks so) makes copying and following
  exclusive per factor.

They read only what a generations manifest holds (images, references, prompts), so they are ordinary metrics of
``sameid eval`` and the report; a row whose prompt is not a world caption, or whose reference shows no figure the
measure can read, gets NaN (and is counted in the summary's means as missing, not as 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..images import load_image
from ..sources.world import FACTORS, PARTS, Layout, measure


class WorldScore:
    """One of the three world scores (``kind``: identity, prompt or copy), torchmetrics-style."""

    inputs = ("images", "references", "prompts")

    def __init__(self, kind: str):
        if kind not in ("identity", "prompt", "copy"):
            raise ValueError(f"kind must be identity, prompt or copy, got {kind!r}")
        self.kind, self.name = kind, f"world_{kind}"
        self._measured: dict[str, object] = {}  # path -> Measurement: a reference shared by many rows is read once
        self.reset()

    def reset(self) -> None:
        self._rows: list[tuple[str, str | None, str]] = []

    def update(self, images: Sequence[str], references: Sequence[Sequence[str]], prompts: Sequence[str]) -> None:
        if not len(images) == len(references) == len(prompts):
            raise ValueError(f"{self.name}: {len(images)} images, {len(references)} reference lists, "
                             f"{len(prompts)} prompts")
        self._rows += [(image, refs[0] if len(refs) else None, prompt)
                       for image, refs, prompt in zip(images, references, prompts)]

    def _measure(self, path: str):
        if path not in self._measured:
            self._measured[path] = measure(load_image(path)[0])
        return self._measured[path]

    def compute(self) -> np.ndarray:
        values = np.full(len(self._rows), np.nan)
        for k, (image, reference, prompt) in enumerate(self._rows):
            generated = self._measure(image)
            if self.kind == "prompt":
                asked = Layout.from_caption(prompt)
                if asked is not None:
                    values[k] = np.mean([getattr(generated, f) == getattr(asked, f) for f in FACTORS])
                continue
            if reference is None:
                continue
            source = self._measure(reference)
            if self.kind == "identity":
                wanted = [getattr(source, part) for part in PARTS]
                if None not in wanted:
                    values[k] = np.mean([getattr(generated, part) == w for part, w in zip(PARTS, wanted)])
            else:
                wanted = [getattr(source, f) for f in FACTORS]
                if None not in wanted:
                    values[k] = np.mean([getattr(generated, f) == w for f, w in zip(FACTORS, wanted)])
        return values


def world_identity_metric(context) -> WorldScore:
    return WorldScore("identity")


def world_prompt_metric(context) -> WorldScore:
    return WorldScore("prompt")


def world_copy_metric(context) -> WorldScore:
    return WorldScore("copy")
