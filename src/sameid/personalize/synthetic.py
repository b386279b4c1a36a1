"""Synthetic training images: the generator interface, the generators by name, and the manifest of what was made.

Personalized Representation from Personalized Generation (arXiv 2412.16156, method and generator comparison) makes positives of the
instance with a generator and compares generators: Cut-and-Paste (high fidelity, little pose diversity), a
personalized text-to-image model (DreamBooth: more diversity, less fidelity), and their combination, which is
best. Here each generator is a :class:`Generator` chosen by a spec string (``name`` or ``name:argument``), as the
backends are; several are combined by listing them, and each gets its share of the images asked for:

- ``cut-paste[:<backgrounds folder>]`` (:mod:`.cut_paste`)
- ``reference:<sameid run dir>`` and ``ip-adapter:<SD 1.5 id or folder>`` (:mod:`.reference`, tuning-free)
- ``dreambooth:<SD 1.5 id or folder>`` (:mod:`.dreambooth`, LoRA fine-tuning of the U-Net with peft)
- ``base:<SD 1.5 id or folder>``: generic images of the category from the base model, as negatives
  (:mod:`.dreambooth`); ``tiny`` instead of a model builds a random tiny base (tests)

Every image made is a row of ``synthetic.jsonl`` (:data:`SYNTHETIC_COLUMNS`): its path (relative to the output
folder), the generator spec, its role (positive or negative), the real images it came from, the seed, the prompt
(diffusion generators) and, for Cut-and-Paste, the pasted box and mask. So a run says what it trained on.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..errors import SameIdError
from .instance import Instance

SYNTHETIC_FILE = "synthetic.jsonl"
SYNTHETIC_DIR = "synthetic"
SYNTHETIC_COLUMNS = ("image", "generator", "role", "sources", "seed", "prompt", "box", "mask")

#: name -> "module:Class" (imported when asked for: diffusers only matters to the generators that use it).
GENERATORS: dict[str, str] = {
    "cut-paste": "sameid.personalize.cut_paste:CutPasteGenerator",
    "reference": "sameid.personalize.reference:SameIdRunGenerator",
    "ip-adapter": "sameid.personalize.reference:IPAdapterGenerator",
    "dreambooth": "sameid.personalize.dreambooth:DreamBoothGenerator",
    "base": "sameid.personalize.dreambooth:BaseModelGenerator",
}
#: Prompts of the diffusion generators; ``{subject}`` is the instance's phrase, ``{category}`` its category.
PROMPTS = (
    "a photo of {subject}", "{subject}, full body, plain background", "{subject} standing outdoors",
    "{subject} in a room", "{subject}, seen from the side", "{subject} on a street at night",
    "a close-up of {subject}", "{subject} in a park",
)


@dataclass
class SyntheticImage:
    """One row of ``synthetic.jsonl``."""

    image: str
    generator: str
    role: str
    sources: list[str] = field(default_factory=list)
    seed: int = 0
    prompt: str = ""
    box: list[int] | None = None
    mask: str | None = None


def image_seed(seed: int, generator: str, index: int) -> int:
    """A stable 31-bit seed per (run seed, generator, image): an image is reproduced alone, in any order."""
    digest = hashlib.sha256(f"{seed}:{generator}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Generator(ABC):
    """Makes ``count`` images for an instance into ``folder`` and returns their records.

    Images already in ``folder`` (from a killed run with the same settings) are kept, not made again: every image
    depends only on the run seed and its index (:func:`image_seed`), so the result is the same.
    """

    name: str = ""
    role: str = "positive"
    spec: str = ""

    @abstractmethod
    def generate(self, instance: Instance, folder: Path, count: int, seed: int, *, out: Path,
                 progress: bool = False) -> list[SyntheticImage]:
        """``out`` is the run's output folder, which record paths are relative to."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r})"


def create_generator(spec: str, **options: Any) -> Generator:
    """A generator from ``name`` or ``name:argument``; ``options`` go to its constructor (those it takes)."""
    import inspect

    name, _, argument = spec.strip().partition(":")
    if name not in GENERATORS:
        raise SameIdError(f"unknown generator {name!r} in {spec!r}; choose from: {', '.join(GENERATORS)}")
    module_name, _, class_name = GENERATORS[name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    accepted = set(inspect.signature(cls.__init__).parameters)
    generator = cls(argument, **{k: v for k, v in options.items() if k in accepted and v is not None})
    generator.spec = spec.strip()
    return generator


def parse_generators(text: str) -> list[str]:
    """Comma-separated generator specs, each checked by name (nothing is loaded)."""
    specs = [part.strip() for part in str(text).split(",") if part.strip()]
    if not specs:
        raise SameIdError("--generators: give at least one generator, e.g. cut-paste")
    for spec in specs:
        name = spec.partition(":")[0]
        if name not in GENERATORS:
            raise SameIdError(f"--generators: unknown generator {name!r}; choose from: {', '.join(GENERATORS)}")
        if name in ("reference", "ip-adapter", "dreambooth", "base") and not spec.partition(":")[2]:
            raise SameIdError(f"--generators: {name} needs a model, e.g. {name}:<id or folder>")
    if len(set(specs)) != len(specs):
        raise SameIdError(f"--generators: {text!r} names a generator twice")
    return specs


def split_count(total: int, parts: int) -> list[int]:
    """``total`` images shared among ``parts`` generators as evenly as possible (earlier ones get the rest)."""
    base, extra = divmod(int(total), int(parts))
    return [base + (1 if i < extra else 0) for i in range(parts)]


def generator_folder(out: Path, spec: str) -> Path:
    name, _, argument = spec.partition(":")
    tag = hashlib.sha256(argument.encode()).hexdigest()[:6] if argument else ""
    return out / SYNTHETIC_DIR / (f"{name}-{tag}" if tag else name)


def write_synthetic_manifest(path: Path, records: list[SyntheticImage]) -> Path:
    lines = [json.dumps(asdict(record), sort_keys=True) for record in records]
    return write_text_atomic(path, "".join(line + "\n" for line in lines))


def read_synthetic_manifest(path: Path) -> list[SyntheticImage]:
    if not Path(path).is_file():
        raise SameIdError(f"{path} not found: run `sameid personalize` to write it")
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(SyntheticImage(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as error:
            raise SameIdError(f"{path}, line {number}: not a synthetic-image row ({error})") from error
    return records
