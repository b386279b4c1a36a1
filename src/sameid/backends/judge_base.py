"""Judges of doubtful identity folders: the second expert of the mixture-of-experts cleaning.

Hybrid Generative Fusion (arXiv 2508.10672, "Mixture-of-Experts (MoE) for Data Validation" and the Method
Summary) clusters the face embeddings of each identity folder and lets GPT-4o validate the ambiguous ones. Here a
judge is a backend of kind ``judge`` chosen by a spec, like every other backend (:mod:`.registry`):

- ``openai:<model>`` (:mod:`.judge_openai`): an OpenAI-compatible chat-completions endpoint with image input
  (GPT-4o as in the paper; vLLM and Ollama serve the same protocol locally), shown a numbered grid of the folder;
- ``transformers:<id or path>`` (:mod:`.judge_transformers`): a local vision-language model, shown the same grid;
- ``consensus`` / ``consensus:<distance>`` (:mod:`.judge_consensus`): offline, from the embeddings alone.

Every judge answers :meth:`Judge.judge` with a :class:`Verdict` (the folder positions that are *not* the folder's
person, and a reason) or raises :class:`JudgeError`: a judge that fails or answers nonsense never decides. This
module holds what the judges share: the question (:data:`JUDGE_PROMPT`), the numbered grid (:func:`folder_grid`)
and the strict reading of an answer (:func:`parse_verdict`).
"""

from __future__ import annotations

import json
import math
import re
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import SameIdError
from .base import Backend, grow_box

#: Bumped whenever the question or the grid changes: cached verdicts of another version are not reused.
PROMPT_VERSION = 1
JUDGE_PROMPT = (
    "The {n} numbered face photos in this grid (numbers 1 to {n}, in the top-left corner of each photo) are "
    "labelled as one person. Which numbers show a different person from the person most of them show? Answer "
    'with JSON only, in this form: {{"different": [numbers], "reason": "one short sentence"}}. Use '
    '"different": [] when all of them show the same person.'
)
#: The most faces one grid shows (8 x 8 tiles); a larger folder is left to the clustering (said in the verdict).
MAX_GRID_TILES = 64
GRID_TILE = 128


class JudgeError(SameIdError):
    """A judge failed (unreachable, timed out, missing) or answered something that is not a verdict."""


@dataclass(frozen=True, eq=False)
class FolderToJudge:
    """One doubtful identity folder: its faces (image paths and head boxes, in folder order), their unit
    embeddings, the clustering's proposal (``proposal[i]``: face ``i`` is in the main cluster) and why the
    folder is doubtful."""

    identity: str
    images: tuple[str, ...]
    boxes: tuple[tuple[float, float, float, float] | None, ...]
    embeddings: np.ndarray
    proposal: np.ndarray
    doubt: str = ""
    _loaded: list = field(default_factory=list, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.images)

    def face_images(self) -> list[Image.Image]:
        """The face of each image (its head box grown by a fifth on every side, or the whole image), loaded once."""
        if not self._loaded:
            from ..images import load_image

            for path, box in zip(self.images, self.boxes, strict=True):
                image, _ = load_image(path)
                if box is not None and all(math.isfinite(float(v)) for v in box):
                    image = image.crop(tuple(int(round(v)) for v in grow_box(
                        tuple(float(v) for v in box), image.width, image.height, top=0.2, sides=0.2, bottom=0.2)))
                self._loaded.append(image)
        return list(self._loaded)


@dataclass(frozen=True)
class Verdict:
    """``different``: 0-based folder positions the judge says are not the folder's person; ``reason``: its words."""

    different: tuple[int, ...]
    reason: str


class Judge(Backend):
    """A judge of doubtful identity folders. ``identity`` names everything that decides a verdict (model,
    endpoint, settings): verdicts are cached under it, so two judges with the same identity answer alike."""

    kind = "judge"
    identity: str = ""

    @abstractmethod
    def judge(self, folder: FolderToJudge) -> Verdict:
        """The verdict on ``folder``, or :class:`JudgeError` (never a guess) when there is none."""


def folder_grid(images: Sequence[Image.Image], tile: int = GRID_TILE) -> Image.Image:
    """The images as one numbered grid (1, 2, ... from the top left, row by row), each letterboxed into a
    ``tile`` x ``tile`` cell on grey, its number in a white box in the cell's top-left corner."""
    n = len(images)
    if n == 0:
        raise JudgeError("no images to show the judge")
    if n > MAX_GRID_TILES:
        raise JudgeError(f"{n} faces do not fit one grid of at most {MAX_GRID_TILES}; the clustering decides")
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = Image.new("RGB", (columns * tile, rows * tile), (128, 128, 128))
    draw = ImageDraw.Draw(grid)
    try:
        font = ImageFont.load_default(size=max(10, tile // 6))
    except TypeError:  # Pillow < 10.1 has one bitmap size
        font = ImageFont.load_default()
    for index, image in enumerate(images):
        cell = image.convert("RGB")
        cell.thumbnail((tile, tile))
        x0, y0 = (index % columns) * tile, (index // columns) * tile
        grid.paste(cell, (x0 + (tile - cell.width) // 2, y0 + (tile - cell.height) // 2))
        label = str(index + 1)
        left, top, right, bottom = draw.textbbox((x0 + 3, y0 + 2), label, font=font)
        draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=(255, 255, 255))
        draw.text((x0 + 3, y0 + 2), label, fill=(0, 0, 0), font=font)
    return grid


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
_NONE_WORDS = {"none", "[]", "no", "nobody", "no one", "all the same", "all same"}


def parse_verdict(text: str, n: int) -> Verdict:
    """Read a judge's answer about a folder of ``n`` faces numbered from 1.

    Accepted: the JSON object of :data:`JUDGE_PROMPT` (``{"different": [2, 5], "reason": "..."}``, also inside a
    code fence or after a sentence), a bare JSON list of numbers, a comma- or space-separated list of numbers, or
    "none". Anything else, and any number outside 1..n, is :class:`JudgeError`: a malformed answer never
    decides. Positions come back 0-based, sorted, without repeats.
    """
    if not isinstance(text, str) or not text.strip():
        raise JudgeError("the judge's answer is empty")
    answer = text.strip()
    reason = ""
    numbers: object
    match = _JSON_OBJECT.search(answer)
    if match is not None:
        try:
            document = json.loads(match.group(0))
        except json.JSONDecodeError:
            raise JudgeError(f"the judge's answer is not valid JSON: {_short(answer)}") from None
        if not isinstance(document, dict) or "different" not in document:
            raise JudgeError(f"the judge's answer has no \"different\" list: {_short(answer)}")
        numbers = document["different"]
        reason = str(document.get("reason") or "").strip()
    else:
        cleaned = answer.strip("`").strip().rstrip(".").strip().lower()
        if cleaned in _NONE_WORDS:
            numbers = []
        elif re.fullmatch(r"\[?\s*\d+(\s*[,;\s]\s*\d+)*\s*\]?", cleaned):
            numbers = [int(v) for v in re.findall(r"\d+", cleaned)]
        else:
            raise JudgeError(f"the judge's answer is not a verdict: {_short(answer)}")
    if not isinstance(numbers, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) or isinstance(v, str) and v.strip().isdigit()
            for v in numbers):
        raise JudgeError(f"the judge's \"different\" is not a list of photo numbers: {_short(answer)}")
    positions = sorted({int(v) for v in numbers})
    outside = [v for v in positions if not 1 <= v <= n]
    if outside:
        raise JudgeError(f"the judge named photo(s) {', '.join(map(str, outside))}, but the grid has 1 to {n}")
    return Verdict(different=tuple(v - 1 for v in positions), reason=reason or "no reason given")


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
