"""Synthetic identities (Hybrid Generative Fusion, arXiv 2508.10672, "Identity Generation"): one reference
image per new identity from a text-to-image model, with prompts over age, gender, ethnicity and accessories (the
paper's prompt engineering, with Stable Diffusion XL), expanded to K variants by a reference-conditioned generator
(the paper uses Vec2Face; here a finished sameid training run, or a diffusers pipeline with an IP-Adapter), with
varied prompts and seeds.

A variant is kept only when it still shows the identity of its reference (face-embedding cosine similarity at least
``min_similarity``; the paper's failure signature is "identity drift") and is no near-duplicate of the reference or
of a variant already kept (perceptual hash within ``near_duplicate_bits``); every dropped image is a row of
``rejected.parquet`` with its reason. An identity without a usable reference, or with no variant kept, is dropped
whole. The output is an ordinary dataset dir (docs/architecture.md, "Dataset dir") with ``source`` "synthetic".

Identities are written one at a time (images, then a record in ``.work/identities/``, atomically); a killed run
resumed with ``resume=True`` skips the identities already recorded. Identity ``i`` depends on (seed, i) only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_atomic, write_json_atomic
from ..errors import MissingModelError, SameIdError
from ..images import hamming_distance, perceptual_hash
from ..records import MANIFEST_COLUMNS
from ..settings import as_float, as_int
from .output import link_lists, write_dataset

GENERATED_DIR = "generated"
IDENTITY_RECORDS = "identities"

# Prompt engineering over the attributes the paper varies (age, gender, ethnicity, accessories).
AGES = ("young adult", "adult", "middle-aged", "elderly")
GENDERS = ("man", "woman")
ETHNICITIES = ("East Asian", "South Asian", "Southeast Asian", "Black", "White", "Hispanic", "Middle Eastern")
ACCESSORIES = ("", "wearing glasses", "wearing earrings", "wearing a hat", "wearing a scarf", "with freckles")
REFERENCE_TEMPLATE = ("a close-up portrait photo of a {age} {ethnicity} {gender}{accessory}, looking at the camera, "
                      "plain background, sharp focus, natural skin texture")
VARIATIONS = ("smiling", "with a neutral expression", "head slightly turned to the left",
              "head slightly turned to the right", "in soft window light", "outdoors in daylight",
              "under warm indoor light", "laughing", "looking slightly up", "in a black and white photo style")
VARIANT_TEMPLATE = "a photo of the same {age} {ethnicity} {gender}{accessory}, {variation}"
NEGATIVE_PROMPT = "cartoon, drawing, painting, blurry, deformed face, several people, text, watermark"

DRIFT = "identity drift"
NO_FACE = "no face found"
NEAR_DUPLICATE = "near-duplicate"
NO_REFERENCE_FACE = "no face in reference"
NO_VARIANT = "no variant kept"


def identity_attributes(seed: int, index: int) -> dict[str, str]:
    """The attributes of identity ``index`` (drawn from (seed, index) alone)."""
    rng = np.random.default_rng([seed, index, 1])
    gender = GENDERS[rng.integers(len(GENDERS))]
    return {"age": AGES[rng.integers(len(AGES))], "gender": gender,
            "ethnicity": ETHNICITIES[rng.integers(len(ETHNICITIES))],
            "accessory": ACCESSORIES[rng.integers(len(ACCESSORIES))]}


def reference_prompt(attributes: dict[str, str]) -> str:
    accessory = f", {attributes['accessory']}" if attributes["accessory"] else ""
    return REFERENCE_TEMPLATE.format(**{**attributes, "accessory": accessory})


def variant_prompts(attributes: dict[str, str], count: int, seed: int, index: int) -> list[str]:
    """``count`` prompts, each with a different variation while there are variations left."""
    rng = np.random.default_rng([seed, index, 2])
    order = list(rng.permutation(len(VARIATIONS)))
    accessory = f", {attributes['accessory']}" if attributes["accessory"] else ""
    return [VARIANT_TEMPLATE.format(**{**attributes, "accessory": accessory},
                                    variation=VARIATIONS[order[k % len(order)]]) for k in range(count)]


# -- generators --------------------------------------------------------------------------------------------------------
def load_text_to_image(source: str, device: str | None = None, dtype=None):
    """Any diffusers text-to-image pipeline by hub id or folder (``DiffusionPipeline.from_pretrained``, offline unless
    ``SAMEID_ALLOW_DOWNLOAD=1``), on ``device``, progress bar off."""
    from diffusers import DiffusionPipeline

    from ..backends.pretrained import load_pretrained, torch_device, torch_dtype

    device = torch_device(device)
    pipe = load_pretrained(DiffusionPipeline, source, what="text-to-image pipeline",
                           torch_dtype=torch_dtype(dtype, device) if dtype is not None else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _generator(device, seed: int):
    import torch

    return torch.Generator(device="cpu" if str(device).startswith("mps") else device).manual_seed(int(seed))


class TextToImage:
    """``(prompt, seed) -> image`` with a diffusers text-to-image pipeline."""

    def __init__(self, pipe, size: int, steps: int, guidance: float):
        self.pipe, self.size, self.steps, self.guidance = pipe, size, steps, guidance

    def __call__(self, prompt: str, seed: int):
        return self.pipe(prompt, negative_prompt=NEGATIVE_PROMPT, height=self.size, width=self.size,
                         num_inference_steps=self.steps, guidance_scale=self.guidance,
                         generator=_generator(self.pipe.device, seed)).images[0]


class RunExpander:
    """Variants of a reference from a finished sameid training run (:func:`sameid.generate.load_run`): the reference
    is prepared as in training (whole image "figure" for a reconstruction run, "face" otherwise) and given to
    :class:`sameid.pipelines.ReferencePipeline`."""

    def __init__(self, run_dir: str, size: int, steps: int, guidance: float, device=None, dtype=None):
        from ..generate import load_run
        from ..pipelines import ReferencePipeline

        components, denoiser, config = load_run(run_dir, device=device, dtype=dtype)
        self.pipe = ReferencePipeline.from_components(components, denoiser)
        self.pipe.set_progress_bar_config(disable=True)
        self.concept = "figure" if config.task == "reconstruction" else "face"
        self.resolution = config.resolution
        self.size, self.steps, self.guidance = size, steps, guidance

    def __call__(self, reference, prompt: str, seed: int):
        return self.pipe(prompt, [[reference]], [[self.concept]], height=self.size, width=self.size,
                         num_inference_steps=self.steps, guidance_scale=self.guidance,
                         negative_prompt=NEGATIVE_PROMPT, reference_resolution=self.resolution,
                         generator=_generator(self.pipe.device, seed)).images[0]


class IPAdapterExpander:
    """Variants of a reference from a diffusers text-to-image pipeline with an IP-Adapter loaded
    (``load_ip_adapter``; e.g. ``h94/IP-Adapter``, subfolder ``models``, ``ip-adapter-full-face_sd15.safetensors``
    on Stable Diffusion 1.5), the reference given as ``ip_adapter_image``."""

    def __init__(self, pipe, adapter: str, subfolder: str, weight_name: str, scale: float, size: int, steps: int,
                 guidance: float, image_encoder_folder: str | None = "image_encoder"):
        from ..backends.pretrained import downloads_allowed, missing_model_message

        try:
            pipe.load_ip_adapter(adapter, subfolder=subfolder, weight_name=weight_name,
                                 image_encoder_folder=image_encoder_folder, local_files_only=not downloads_allowed())
        except (OSError, ValueError) as error:
            raise MissingModelError(missing_model_message("IP-Adapter", f"{adapter} ({subfolder}/{weight_name})",
                                                          error)) from error
        pipe.set_ip_adapter_scale(scale)
        self.pipe, self.size, self.steps, self.guidance = pipe, size, steps, guidance

    def __call__(self, reference, prompt: str, seed: int):
        return self.pipe(prompt, ip_adapter_image=reference, negative_prompt=NEGATIVE_PROMPT, height=self.size,
                         width=self.size, num_inference_steps=self.steps, guidance_scale=self.guidance,
                         generator=_generator(self.pipe.device, seed)).images[0]


# -- screening -----------------------------------------------------------------------------------------------------------
def embed_identity(embedder, image) -> np.ndarray | None:
    """A unit vector for ``image`` from a face embedder (None when no face) or an image embedder."""
    if hasattr(embedder, "embed_images"):
        vector = np.asarray(embedder.embed_images([image]))[0]
    else:
        vector = embedder.embed(image)
        if vector is None:
            return None
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


@dataclass
class Screening:
    keep: bool
    reason: str | None
    detail: str
    similarity: float | None
    phash: str


def screen_variants(reference, variants: list, embedder, min_similarity: float, near_duplicate_bits: int
                    ) -> list[Screening]:
    """For each variant, in order: kept, or dropped for ``no face found``, ``identity drift`` (cosine similarity
    to the reference's embedding below ``min_similarity``) or ``near-duplicate`` (perceptual hash within
    ``near_duplicate_bits`` of the reference or of a variant kept before it)."""
    anchor = embed_identity(embedder, reference)
    if anchor is None:
        raise SameIdError("the reference has no face for the identity check")
    kept_hashes = [perceptual_hash(reference)]
    results = []
    for variant in variants:
        phash = perceptual_hash(variant)
        vector = embed_identity(embedder, variant)
        if vector is None:
            results.append(Screening(False, NO_FACE, "the identity embedder found no face", None, phash))
            continue
        similarity = float(vector @ anchor)
        if similarity < min_similarity:
            results.append(Screening(False, DRIFT, f"similarity to the reference {similarity:.3f} < "
                                     f"{min_similarity:.3f}", similarity, phash))
            continue
        closest = min(hamming_distance(phash, other) for other in kept_hashes)
        if closest <= near_duplicate_bits:
            results.append(Screening(False, NEAR_DUPLICATE, f"perceptual hash {closest} bits from an image kept "
                                     f"(<= {near_duplicate_bits})", similarity, phash))
            continue
        kept_hashes.append(phash)
        results.append(Screening(True, None, "", similarity, phash))
    return results


# -- the stage -----------------------------------------------------------------------------------------------------------
@dataclass
class SynthConfig:
    """What ``sameid synth`` makes; checked at construction. ``expander``: ``run:<training run dir>`` or
    ``ip-adapter`` (the ``text_to_image`` pipeline with ``ip_adapter`` loaded). ``identity_check``: the embedder
    spec of the drift check (``face:dlib``, ``face:arcface-onnx:<path>``, ``image:clip:<id or path>``);
    ``min_similarity`` its threshold (dlib: 0.91, i.e. dlib's own "same person" distance 0.6)."""

    out: str
    text_to_image: str
    expander: str
    identities: int = 10
    variants: int = 8
    ip_adapter: str = "h94/IP-Adapter"
    ip_adapter_subfolder: str = "models"
    ip_adapter_weight: str = "ip-adapter-full-face_sd15.safetensors"
    ip_adapter_scale: float = 0.7
    size: int = 512
    steps: int = 30
    guidance: float = 7.0
    identity_check: str = "face:dlib"
    min_similarity: float = 0.91
    near_duplicate_bits: int = 6
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    progress: bool = field(default=True, compare=False)

    def __post_init__(self):
        w = "synth"
        self.out = str(Path(self.out).resolve())
        self.identities = as_int(w, "identities", self.identities, minimum=1)
        self.variants = as_int(w, "variants", self.variants, minimum=1)
        self.size = as_int(w, "size", self.size, minimum=8)
        self.steps = as_int(w, "steps", self.steps, minimum=1)
        self.seed = as_int(w, "seed", self.seed, minimum=0)
        self.near_duplicate_bits = as_int(w, "near_duplicate_bits", self.near_duplicate_bits, minimum=0, maximum=64)
        self.guidance = as_float(w, "guidance", self.guidance, minimum=0.0)
        self.min_similarity = as_float(w, "min_similarity", self.min_similarity, minimum=-1.0, maximum=1.0)
        self.ip_adapter_scale = as_float(w, "ip_adapter_scale", self.ip_adapter_scale, minimum=0.0)
        if not self.text_to_image:
            raise SameIdError("synth: give --text-to-image, a diffusers pipeline id or folder")
        kind, _, argument = self.expander.partition(":")
        if kind == "run":
            if not argument or not (Path(argument) / "config.yaml").is_file():
                raise SameIdError(f"synth: --expander run:<dir> needs a sameid training run dir (with config.yaml), "
                                  f"got {argument!r}")
            self.expander = f"run:{Path(argument).resolve()}"
        elif kind != "ip-adapter" or argument:
            raise SameIdError(f"synth: unknown expander {self.expander!r}; use run:<training run dir> or ip-adapter")
        kind = self.identity_check.partition(":")[0]
        if kind not in ("face", "image"):
            raise SameIdError(f"synth: --identity-check {self.identity_check!r}: use face:dlib, "
                              "face:arcface-onnx:<path> or image:clip:<id or path>")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise SameIdError(f"{self.out} exists and is not a directory")

    def content(self) -> dict:
        content = asdict(self)
        for key in ("progress", "device", "dtype", "out"):
            content.pop(key)
        return content


@dataclass
class SynthResult:
    out: Path
    manifest: pd.DataFrame
    rejected: pd.DataFrame
    requested: int
    skipped: int

    def describe(self) -> str:
        lines = [f"{self.manifest['identity'].nunique()} of {self.requested} synthetic identities kept, "
                 f"{len(self.manifest)} images: {self.out}"]
        if len(self.rejected):
            counts = self.rejected["reason"].value_counts()
            lines.append("dropped: " + ", ".join(f"{reason} {n}" for reason, n in counts.items()))
        if self.skipped:
            lines.append(f"{self.skipped} identities were already written (resumed)")
        return "\n".join(lines)


def _save_png(path: Path, image) -> None:
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"), suffix=".png")


def _make_identity(index: int, config: SynthConfig, t2i, expander, embedder, build_dir: Path, out: Path) -> dict:
    """Generate, screen and write identity ``index``; returns its record (kept rows and rejected rows)."""
    name = f"synth-s{config.seed}-{index:05d}"
    folder = GENERATED_DIR + "/" + name
    attributes = identity_attributes(config.seed, index)
    prompt = reference_prompt(attributes)
    base_seed = int(np.random.default_rng([config.seed, index, 3]).integers(2**31))
    reference = t2i(prompt, base_seed)
    _save_png(build_dir / folder / "reference.png", reference)
    record = {"identity": name, "rows": [], "rejected": []}
    common = {"identity": name, "tags": [v for v in attributes.values() if v], "head_box": None, "mask": None,
              "source": "synthetic", "attributes": json.dumps(attributes, sort_keys=True)}
    if embed_identity(embedder, reference) is None:
        record["rejected"].append({"id": f"{name}/reference", "image": str(out / folder / "reference.png"),
                                   "stage": "synth", "reason": NO_REFERENCE_FACE,
                                   "detail": "the identity check found no face; the identity is dropped"})
        return record
    prompts = variant_prompts(attributes, config.variants, config.seed, index)
    seeds = [base_seed + 1 + k for k in range(config.variants)]
    variants = [expander(reference, p, s) for p, s in zip(prompts, seeds, strict=True)]
    screening = screen_variants(reference, variants, embedder, config.min_similarity, config.near_duplicate_bits)
    rows = [{**common, "id": f"{name}/reference", "image": str(out / folder / "reference.png"), "caption": prompt,
             "width": reference.width, "height": reference.height, "phash": perceptual_hash(reference),
             "seed": base_seed, "generator": "text-to-image", "identity_similarity": 1.0}]
    for k, (variant, verdict, variant_prompt, seed) in enumerate(zip(variants, screening, prompts, seeds)):
        file = f"{folder}/variant-{k:03d}.png"
        _save_png(build_dir / file, variant)
        if not verdict.keep:
            record["rejected"].append({"id": f"{name}/v{k:03d}", "image": str(out / file), "stage": "synth",
                                       "reason": verdict.reason, "detail": verdict.detail})
            continue
        rows.append({**common, "id": f"{name}/v{k:03d}", "image": str(out / file), "caption": variant_prompt,
                     "width": variant.width, "height": variant.height, "phash": verdict.phash, "seed": seed,
                     "generator": config.expander.split(":")[0], "identity_similarity": verdict.similarity})
    if len(rows) < 2:
        record["rejected"].append({"id": f"{name}/reference", "image": rows[0]["image"], "stage": "synth",
                                   "reason": NO_VARIANT, "detail": "every variant was dropped; the identity is dropped"})
        return record
    record["rows"] = rows
    return record


def synthesize_identities(config: SynthConfig, *, resume: bool = False, overwrite: bool = False) -> SynthResult:
    """Generate ``config.identities`` identities into the dataset dir ``config.out`` (see the module doc)."""
    from ..dataset.writer import plan_output
    from ..pairs.run import embedder_from_spec
    from ..verbosity import show_progress

    plan = plan_output(Path(config.out), config.content(), resume=resume, overwrite=overwrite)
    embedder = embedder_from_spec(config.identity_check)  # a missing model fails before anything is written
    pipe = load_text_to_image(config.text_to_image, config.device, config.dtype)
    t2i = TextToImage(pipe, config.size, config.steps, config.guidance)
    kind, _, argument = config.expander.partition(":")
    if kind == "run":
        expander = RunExpander(argument, config.size, config.steps, config.guidance, config.device, config.dtype)
    else:
        expander = IPAdapterExpander(load_text_to_image(config.text_to_image, config.device, config.dtype),
                                     config.ip_adapter, config.ip_adapter_subfolder, config.ip_adapter_weight,
                                     config.ip_adapter_scale, config.size, config.steps, config.guidance)
    work = plan.start()
    records_dir = work / IDENTITY_RECORDS
    records_dir.mkdir(exist_ok=True)
    from tqdm.auto import tqdm

    records, skipped = [], 0
    for index in tqdm(range(config.identities), desc="synthetic identities",
                      disable=not (config.progress and show_progress())):
        path = records_dir / f"{index:05d}.json"
        if path.is_file():
            records.append(json.loads(path.read_text(encoding="utf-8")))
            skipped += 1
            continue
        record = _make_identity(index, config, t2i, expander, embedder, plan.build_dir, plan.out)
        write_json_atomic(path, record)
        records.append(record)
    rows = [row for record in records for row in record["rows"]]
    rejected = pd.DataFrame([row for record in records for row in record["rejected"]],
                            columns=["id", "image", "stage", "reason", "detail"])
    if not rows:
        frame = pd.DataFrame({c: pd.Series(dtype=object) for c in (*MANIFEST_COLUMNS, "near_duplicates", "source")})
    else:
        frame = pd.DataFrame(rows)
        frame = link_lists(frame, config.near_duplicate_bits)
        frame = frame[list(MANIFEST_COLUMNS) + [c for c in frame.columns if c not in MANIFEST_COLUMNS]]
    write_dataset(plan.build_dir, frame, rejected, _settings(config))
    plan.finish()
    return SynthResult(Path(config.out), frame, rejected, config.identities, skipped)


def _settings(config: SynthConfig) -> dict:
    from .. import __version__

    return {"sameid_version": __version__, "name": "sameid synthetic identities",
            "source": {"kind": "synth", "text_to_image": config.text_to_image, "expander": config.expander},
            "is_generated_sample": False, "near_duplicate_bits": config.near_duplicate_bits,
            "synth": {**config.content(), "reference_template": REFERENCE_TEMPLATE,
                      "variant_template": VARIANT_TEMPLATE}}
