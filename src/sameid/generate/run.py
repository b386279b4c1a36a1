"""Generating from a finished training run: load it, then write the generations manifest that ``sameid eval`` reads.

The protocol is RetriBooru's (arXiv 2312.02521, §3.1): subjects x prompts x seeds x samples per seed
(there: 50 characters, 5 prompts, 5 seeds, 4 samples per seed, at 384 px, guidance scale 7 (A.3)), with
reference images prepared "the same way as training our tasks" (RetriBooru, arXiv 2312.02521, §5.2): whole
figures captioned "figure" for reconstruction, face and clothes crops for composition (A.4). The output is the
generations manifest of docs/architecture.md (Contracts): one row per image with ``image``, ``references``,
``prompt``, ``subject``, ``model`` and ``seed``; the references are the files on disk, which is what the
evaluation compares generations with.

The samples of one seed are one batch drawn from one generator seeded with that seed (diffusers'
``num_images_per_prompt``), so a row is reproduced by the same (subject, prompt, seed, sample) call.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..atomic import check_writable, write_atomic, write_json_atomic
from ..errors import SameIdError
from ..train.run_dir import RunDir
from ..verbosity import show_progress

logger = logging.getLogger(__name__)

GENERATIONS_FILE = "generations.jsonl"
GENERATION_SETTINGS = "generation.json"
IMAGES_DIR = "images"
# Default concepts per training task: what each reference is cropped to and captioned (003 A.4).
_COMPOSITION_CONCEPTS = ("face", "clothes")


def load_run(run_dir: str | os.PathLike, *, device: str | None = None, dtype=None):
    """``(components, denoiser, config)`` of the training run in ``run_dir``, ready for generation (eval mode).

    Reads ``run_dir/config.yaml``; the VAE, text encoder(s), tokenizer(s) and scheduler of the base model from
    ``config.pretrained``, or ``run_dir/base`` (where a tiny run saves its random base); the trained denoiser, with
    its own U-Net (``components.unet`` is set to it), from ``run_dir/model``. ``device`` defaults to cuda when
    available; ``dtype`` (torch dtype or name) defaults to float32. An incomplete run dir raises SameIdError
    naming the missing file; without ``model/`` it says training has not finished and names the latest checkpoint.
    """
    import torch

    from ..backends.pretrained import torch_device, torch_dtype
    from ..models.components import load_components, sdxl_vae_needs_float32
    from ..models.denoisers import load_denoiser

    run = RunDir(run_dir)
    config = _finished_run_config(run)
    model_dir = run.model_dir
    check_device(device)
    device = torch_device(device)
    resolved = torch_dtype(dtype, device) if dtype is not None else None
    if config.pretrained:
        components = load_components(config.pretrained, dtype=resolved)
    else:
        base = run.base_dir
        if not (base / "model_index.json").is_file() and not (base / "unet").is_dir():
            raise SameIdError(f"{base} is missing: a tiny run saves its random base model there, and the config "
                              f"names no pretrained base")
        components = load_components(base, dtype=resolved)
    # The denoiser holds its U-Net (and, for ip-adapter, its image encoder): the base's U-Net is replaced by it.
    denoiser = load_denoiser(model_dir, torch_dtype=resolved)
    components.unet = denoiser.unet
    # The base is already in ``resolved`` (loaded so), the denoiser too. A diffusers model warns about any dtype
    # argument to .to(), hence device only.
    components.vae.to(device=device)
    if resolved is not None and resolved != torch.float32 and sdxl_vae_needs_float32(components):
        components.vae.to(dtype=torch.float32)  # SDXL's VAE overflows in float16 (its config's force_upcast)
    components.text_encoder.to(device=device)
    if components.text_encoder_2 is not None:  # an SDXL base (sameid.models.components.prompt_conditions)
        components.text_encoder_2.to(device=device)
    denoiser.to(device=device)
    denoiser.eval()
    return components, denoiser, config


def _finished_run_config(run: RunDir):
    """The run's config, after checking that training finished (``model/`` is there); says what to do if not."""
    config = run.config  # says what is missing when run_dir is not a run
    if not run.model_dir.is_dir():
        checkpoint = run.latest_checkpoint()
        state = (f"the latest checkpoint is {checkpoint}; finish the run with `sameid train --config "
                 f"{run.config_file} --resume latest`" if checkpoint else "no checkpoint was written yet")
        raise SameIdError(f"{run.model_dir} is missing: training has not finished ({state})")
    return config


def check_device(device: str | None) -> None:
    """Refuse a device this machine does not have, in one line, before any model is loaded. None: the default
    (cuda when available, else cpu)."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SameIdError(f"--device {device!r} is not a device; use cpu, cuda or cuda:<index>") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise SameIdError("CUDA is not available on this machine; use --device cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise SameIdError(f"--device {device}: this machine has {count} CUDA device(s) (cuda:0 to "
                              f"cuda:{count - 1})")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise SameIdError("MPS is not available on this machine; use --device cpu")
    elif parsed.type != "cpu":
        raise SameIdError(f"--device {device!r}: sameid generates on cpu, cuda or mps")


def _run_identities(run: RunDir, manifest, identities) -> list[str]:
    groups = manifest.identity_rows()
    if identities is None:
        held = run.holdout_identities()
        if held:
            missing = [identity for identity in held if identity not in groups]
            if missing:
                raise SameIdError(f"{run.holdout_file} holds out {len(missing)} identit{'y' if len(missing) == 1 else 'ies'} "
                                  f"not in {manifest.root} (e.g. {missing[0]!r}); pass identities to choose "
                                  f"(or 'all')")
            return list(held)
        return list(groups)
    if isinstance(identities, str):
        if identities == "all":
            return list(groups)
        identities = [identities]
    unknown = [identity for identity in identities if any(member not in groups for member in
                                                          subject_members(identity, groups))]
    if unknown:
        raise SameIdError(f"{manifest.root}: no identity {unknown[0]!r}"
                          f"{f' (and {len(unknown) - 1} more unknown)' if len(unknown) > 1 else ''}")
    return list(dict.fromkeys(identities))


#: Joins the identities of one multi-subject generation: ``--identity "alice&bob"`` (PairHuman, arXiv 2511.16712:
#: two people in one image). An identity whose own name contains it is still read as that identity.
SUBJECT_SEPARATOR = "&"


def subject_members(subject: str, groups) -> list[str]:
    """The identities of one generation subject: itself, or its ``&``-joined parts (each a subject index)."""
    if subject in groups or SUBJECT_SEPARATOR not in subject:
        return [subject]
    return [member.strip() for member in subject.split(SUBJECT_SEPARATOR)]


def _default_concepts(task: str, count: int) -> list[str]:
    if task == "composition":
        return [_COMPOSITION_CONCEPTS[i % 2] for i in range(count)]
    return ["figure"] * count


def _reference_images(manifest, rows: list[int], requested: list[str], *, concept_masks: bool = True
                      ) -> tuple[list[Image.Image], list[str]]:
    """Each reference prepared as training prepares it (RetriBooru, arXiv 2312.02521, §5.2): cropped as its concept
    says (falling back to "figure" as training does) and, with ``concept_masks``, "figure" and "clothes" crops
    keep only the figure mask's pixels. Returns the images and the concepts used."""
    import numpy as np

    from ..images import load_image, load_mask
    from ..pairs.concepts import MASKED_CONCEPTS, apply_figure_mask, concept_crop
    from ..references import crop_clipped

    images, concepts = [], []
    for row, concept in zip(rows, requested):
        crop = concept_crop(concept, manifest.head_boxes[row], manifest.widths[row], manifest.heights[row])
        pixels = np.asarray(load_image(manifest.image_paths[row])[0].convert("RGB"))
        if concept_masks and crop.concept in MASKED_CONCEPTS and manifest.mask_paths[row] is not None:
            pixels = apply_figure_mask(pixels, load_mask(manifest.mask_paths[row],
                                                         size=(pixels.shape[1], pixels.shape[0])))
        # The crop was planned on the manifest's size; crop_clipped clips it to the file on disk, as training does.
        pixels = crop_clipped(pixels, crop.box)
        images.append(Image.fromarray(np.ascontiguousarray(pixels)))
        concepts.append(crop.concept)
    return images, concepts


@dataclass
class GenerationResult:
    """What :func:`generate_manifest` wrote: ``manifest`` is ``out_dir/generations.jsonl``."""

    manifest: Path
    out_dir: Path
    settings: Path
    model: str
    images: int
    subjects: list[str]
    n_references: int
    left_out: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        lines = [f"{self.images} generations of {len(self.subjects)} subject(s) with {self.model}, "
                 f"N={self.n_references} references each: {self.manifest}"]
        if self.left_out:
            lines.append(f"left out {len(self.left_out)} subject(s) with fewer than {self.n_references} images (the "
                         f"run's shortfall is 'refuse'): {', '.join(self.left_out[:5])}"
                         f"{', ...' if len(self.left_out) > 5 else ''}")
        lines.append(f"settings: {self.settings}")
        lines.append(f"evaluate them: sameid eval {self.manifest} --out {self.out_dir / 'eval'}")
        return lines


def generate_manifest(run_dir: str | os.PathLike, dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                      prompts: list[str], seeds: list[int], identities: list[str] | str | None = None,
                      samples_per_seed: int = 1, n_references: int | None = None, num_inference_steps: int = 30,
                      guidance_scale: float = 7.0, reference_scale: float | None = None,
                      concepts: list[str] | str | None = None, resolution: int | None = None,
                      negative_prompt: str | None = None, model_name: str | None = None,
                      device: str | None = None, dtype=None, progress: bool | None = None,
                      reference_schedule=None) -> GenerationResult:
    """Generate subjects x ``prompts`` x ``seeds`` x ``samples_per_seed`` images with the run in ``run_dir`` and
    write ``out_dir/generations.jsonl`` (docs/architecture.md's generations manifest); returns a
    :class:`GenerationResult` (its ``manifest`` is that file's path).

    ``identities``: the subjects, identities of ``dataset_dir`` (default: the run's held-out identities when
    ``run_dir/holdout.json`` lists any, else every identity; ``"all"``: every identity). Each subject's references
    are its first ``n_references`` images in manifest order (default: the run's count; an identity with fewer
    images repeats them when the run's ``shortfall`` is "repeat" and is left out, with a warning, when it is
    "refuse"), cropped to ``concepts``: one concept for all or one per reference slot (default from the run's
    task: "figure" for reconstruction and multitask, alternately "face" and "clothes" for composition; a crop
    without a usable head box falls back to "figure" as in training). ``resolution`` defaults to the run's, and
    so does ``reference_scale`` (its config's ``reference_scale``: 0.5 for ip-adapter, else 1.0).
    ``model_name`` defaults to ``<model>-<mode>`` (e.g. "retrinet-identity"). Images go to
    ``out_dir/images/<subject>/p<prompt>_seed<seed>_<sample>.png``; the settings to ``out_dir/generation.json``.
    Refuses to overwrite an existing ``generations.jsonl``. Every setting, the run dir, the dataset dir and the
    device are checked before the model is loaded or anything is written; when generation fails part way, the
    images this call wrote are removed again.

    Several subjects in one image (a multi-subject run): a subject ``"alice&bob"`` takes ``n_references`` of each
    identity, alice's as subject 0 and bob's as subject 1; its manifest rows list them in ``subjects`` (each with
    its own references; null on the single-subject rows of the same manifest). ``reference_schedule``: a
    :class:`~sameid.pipelines.ReferenceSchedule` or its text ``"λ@fraction"`` (cascaded inference: weight λ for
    the first steps, then full weight); None: ``reference_scale`` at every step.
    """
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from ..pairs.concepts import CONCEPTS
    from ..pairs.manifest import load_manifest
    from ..pipelines import ReferencePipeline, safe_file_name
    from ..records import write_generations

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    manifest_path = out_dir / GENERATIONS_FILE
    if manifest_path.exists():
        raise SameIdError(f"{manifest_path} already exists: choose another output folder or remove it first")
    check_writable(manifest_path, "--out")
    prompts, seeds = list(prompts), [int(seed) for seed in seeds]
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise SameIdError("give at least one prompt, and no empty prompt (the evaluation needs the text)")
    if not seeds:
        raise SameIdError("give at least one seed")
    out_of_range = [seed for seed in seeds if not 0 <= seed < 2**64]
    if out_of_range:
        raise SameIdError(f"--seeds: {out_of_range[0]} is out of range; a seed is a whole number from 0 to 2**64-1")
    if samples_per_seed < 1:
        raise SameIdError(f"--samples-per-seed must be at least 1, got {samples_per_seed}")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise SameIdError(f"--steps (denoising steps) must be at least 1, got {num_inference_steps!r}")
    for name, value in (("--guidance-scale", guidance_scale), ("--reference-scale", reference_scale)):
        if value is None and name == "--reference-scale":
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SameIdError(f"{name} must be a finite number, got {value!r}")
    check_device(device)

    if isinstance(reference_schedule, str):
        from ..pipelines.guidance import ReferenceSchedule

        reference_schedule = ReferenceSchedule.parse(reference_schedule)
    run = RunDir(run_dir)
    config = _finished_run_config(run)
    if n_references is not None and (isinstance(n_references, bool) or not isinstance(n_references, int)
                                     or n_references < 1):
        raise SameIdError(f"--n-references must be at least 1, got {n_references!r} (the run was trained with "
                          f"N={config.n_references}; leave the option out to use that)")
    count = int(n_references if n_references is not None else config.n_references)
    if concepts is None:
        requested = _default_concepts(config.task, count)
    elif isinstance(concepts, str):
        requested = [concepts] * count
    else:
        requested = list(concepts)
        if len(requested) != count:
            raise SameIdError(f"concepts: {len(requested)} given for {count} references per subject")
    unknown = sorted(set(requested) - set(CONCEPTS))
    if unknown:
        raise SameIdError(f"unknown concept {unknown[0]!r}; choose from {', '.join(CONCEPTS)}")
    resolution = int(resolution or config.resolution)
    model_name = model_name or f"{config.model}-{config.mode}"

    dataset = load_manifest(dataset_dir)
    subjects = _run_identities(run, dataset, identities)
    groups = dataset.identity_rows()
    reference_rows: dict[str, list[int]] = {}
    reference_subjects: dict[str, list[int] | None] = {}
    refused = []
    for subject in subjects:
        members = subject_members(subject, groups)
        if len(members) > 1 and not config.model.startswith("multi-subject"):
            raise SameIdError(f"subject {subject!r} has {len(members)} identities, but the run's model "
                              f"({config.model}) takes one per image; train with --model multi-subject for several")
        if any(len(groups[member]) < count for member in members) and config.shortfall == "refuse":
            refused.append(subject)
            continue
        reference_rows[subject] = [groups[member][i % len(groups[member])] for member in members
                                   for i in range(count)]
        reference_subjects[subject] = ([index for index in range(len(members)) for _ in range(count)]
                                       if len(members) > 1 else None)
    if refused:
        logger.warning("left out %d subject(s) with fewer than %d images (the run's shortfall is 'refuse'): %s",
                       len(refused), count, ", ".join(refused))
    if not reference_rows:
        raise SameIdError(f"no subject has {count} images; lower n_references")

    components, denoiser, config = load_run(run_dir, device=device, dtype=dtype)
    most = max((len(subject_members(s, groups)) for s in reference_rows), default=1)
    if most > getattr(denoiser, "num_subjects", 1):
        raise SameIdError(f"a subject has {most} identities, but the run's model takes at most "
                          f"{getattr(denoiser, 'num_subjects', 1)} per image")
    pipeline = ReferencePipeline.from_components(components, denoiser)
    pipeline.set_progress_bar_config(disable=True)
    if reference_scale is None:  # the run's, recorded in its config.yaml (and model/denoiser.json)
        reference_scale = config.reference_scale
    folders: dict[str, str] = {}
    rows = []
    written: list[Path] = []  # files and folders this call made (not replaced), removed again if it fails
    total = len(reference_rows) * len(prompts) * len(seeds) * samples_per_seed
    show = show_progress() if progress is None else progress
    multi_subject = any(slots is not None for slots in reference_subjects.values())
    try:
        with tqdm(total=total, desc=f"generate {model_name}", unit="image", disable=not show) as bar:
            for subject, subject_rows in reference_rows.items():
                folder = safe_file_name(subject)
                if folder in folders.values():
                    folder = f"{folder}_{len(folders)}"
                folders[subject] = folder
                written.extend(_made_dirs(out_dir / IMAGES_DIR / folder))
                (out_dir / IMAGES_DIR / folder).mkdir(parents=True, exist_ok=True)
                slots = reference_subjects[subject]
                images, used_concepts = _reference_images(dataset, subject_rows,
                                                          requested * (len(subject_rows) // count),
                                                          concept_masks=config.pairs.concept_masks)
                references = pipeline.prepare_references([images], [used_concepts], resolution,
                                                         subjects=None if slots is None else [slots])
                reference_paths = [dataset.image_paths[row] for row in subject_rows]
                # A multi-subject row names each subject with its own references (the manifest's ``subjects``
                # column, docs/architecture.md), so the evaluation compares each subject with its own images.
                members = None if slots is None else [
                    {"identity": member, "references": reference_paths[index * count:(index + 1) * count]}
                    for index, member in enumerate(subject_members(subject, groups))]
                for prompt_index, prompt in enumerate(prompts):
                    for seed in seeds:
                        generated = pipeline(
                            prompt, references, height=resolution, width=resolution,
                            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                            reference_scale=reference_scale, negative_prompt=negative_prompt,
                            num_images_per_prompt=samples_per_seed, generator=torch.Generator().manual_seed(seed),
                            reference_schedule=reference_schedule,
                        ).images
                        for sample, image in enumerate(generated):
                            relative = Path(IMAGES_DIR, folder, f"p{prompt_index:02d}_seed{seed}_{sample}.png")
                            if not (out_dir / relative).exists():
                                written.append(out_dir / relative)
                            write_atomic(out_dir / relative, image.save, suffix=".png")
                            row = {"image": relative.as_posix(), "references": reference_paths,
                                   "prompt": prompt, "subject": subject, "model": model_name, "seed": seed}
                            if multi_subject:
                                row["subjects"] = members
                            rows.append(row)
                            bar.update(1)

        settings = {
            "run_dir": str(run_dir.resolve()), "dataset": str(Path(dataset_dir).resolve()), "model": model_name,
            "base_model": config.pretrained or str(run.base_dir.resolve()), "prompts": prompts,
            "seeds": seeds, "samples_per_seed": samples_per_seed, "n_references": count, "concepts": requested,
            "resolution": resolution, "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
            "reference_scale": reference_scale, "negative_prompt": negative_prompt,
            "reference_schedule": None if reference_schedule is None else {
                "early_weight": reference_schedule.early_weight,
                "switch_fraction": reference_schedule.switch_fraction},
            "scheduler": type(pipeline.scheduler).__name__, "subjects": {s: folders[s] for s in reference_rows},
            "left_out": refused,
        }
        if not (out_dir / GENERATION_SETTINGS).exists():
            written.append(out_dir / GENERATION_SETTINGS)
        write_json_atomic(out_dir / GENERATION_SETTINGS, settings, sort_keys=False)
        # Written last, atomically: a manifest on disk always describes a finished generation.
        write_atomic(manifest_path, lambda tmp: write_generations(pd.DataFrame(rows), tmp), suffix=".jsonl")
    except BaseException:
        for path in reversed(written):
            if path.is_dir():
                if not any(path.iterdir()):
                    path.rmdir()
            else:
                path.unlink(missing_ok=True)
        raise
    return GenerationResult(manifest=manifest_path, out_dir=out_dir, settings=out_dir / GENERATION_SETTINGS,
                            model=model_name, images=len(rows), subjects=list(reference_rows),
                            n_references=count, left_out=refused)


def _made_dirs(folder: Path) -> list[Path]:
    """``folder`` and the parents of it that do not exist yet, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]
