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
import os
import sys
from pathlib import Path

from PIL import Image

from ..atomic import write_atomic, write_json_atomic
from ..errors import SameIdError
from ..train.run_dir import RunDir

logger = logging.getLogger(__name__)

GENERATIONS_FILE = "generations.jsonl"
GENERATION_SETTINGS = "generation.json"
IMAGES_DIR = "images"
# Default concepts per training task: what each reference is cropped to and captioned (003 A.4).
_COMPOSITION_CONCEPTS = ("face", "clothes")


def load_run(run_dir: str | os.PathLike, *, device: str | None = None, dtype=None):
    """``(components, denoiser, config)`` of the training run in ``run_dir``, ready for generation (eval mode).

    Reads ``run_dir/config.yaml``; the VAE, text encoder, tokenizer and scheduler of the base model from
    ``config.pretrained``, or ``run_dir/base`` (where a tiny run saves its random base); the trained denoiser, with
    its own U-Net (``components.unet`` is set to it), from ``run_dir/model``. ``device`` defaults to cuda when
    available; ``dtype`` (torch dtype or name) defaults to float32. An incomplete run dir raises SameIdError
    naming the missing file; without ``model/`` it says training has not finished and names the latest checkpoint.
    """
    from ..backends.pretrained import torch_device, torch_dtype
    from ..models.components import load_components
    from ..models.denoisers import load_denoiser

    run = RunDir(run_dir)
    config = run.config  # says what is missing when run_dir is not a run
    model_dir = run.model_dir
    if not model_dir.is_dir():
        checkpoint = run.latest_checkpoint()
        state = (f"the latest checkpoint is {checkpoint}; finish the run with `sameid train --config "
                 f"{run.config_file} --resume latest`" if checkpoint else "no checkpoint was written yet")
        raise SameIdError(f"{model_dir} is missing: training has not finished ({state})")
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
    components.text_encoder.to(device=device)
    denoiser.to(device=device)
    denoiser.eval()
    return components, denoiser, config


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


def _reference_images(manifest, rows: list[int], requested: list[str]) -> tuple[list[Image.Image], list[str]]:
    """Each reference cropped as its concept says (falling back to "figure" as training does), with the concept."""
    import numpy as np

    from ..images import load_image
    from ..pairs.concepts import concept_crop
    from ..references import crop_clipped

    images, concepts = [], []
    for row, concept in zip(rows, requested):
        crop = concept_crop(concept, manifest.head_boxes[row], manifest.widths[row], manifest.heights[row])
        # The crop was planned on the manifest's size; crop_clipped clips it to the file on disk, as training does.
        pixels = crop_clipped(np.asarray(load_image(manifest.image_paths[row])[0].convert("RGB")), crop.box)
        images.append(Image.fromarray(np.ascontiguousarray(pixels)))
        concepts.append(crop.concept)
    return images, concepts


def generate_manifest(run_dir: str | os.PathLike, dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                      prompts: list[str], seeds: list[int], identities: list[str] | str | None = None,
                      samples_per_seed: int = 1, n_references: int | None = None, num_inference_steps: int = 30,
                      guidance_scale: float = 7.0, reference_scale: float = 1.0,
                      concepts: list[str] | str | None = None, resolution: int | None = None,
                      negative_prompt: str | None = None, model_name: str | None = None,
                      device: str | None = None, dtype=None, progress: bool | None = None,
                      reference_schedule=None) -> Path:
    """Generate subjects x ``prompts`` x ``seeds`` x ``samples_per_seed`` images with the run in ``run_dir`` and
    write ``out_dir/generations.jsonl`` (docs/architecture.md's generations manifest); returns its path.

    ``identities``: the subjects, identities of ``dataset_dir`` (default: the run's held-out identities when
    ``run_dir/holdout.json`` lists any, else every identity; ``"all"``: every identity). Each subject's references
    are its first ``n_references`` images in manifest order (default: the run's count; an identity with fewer
    images repeats them when the run's ``shortfall`` is "repeat" and is left out, with a warning, when it is
    "refuse"), cropped to ``concepts``: one concept for all or one per reference slot (default from the run's
    task: "figure" for reconstruction and multitask, alternately "face" and "clothes" for composition; a crop
    without a usable head box falls back to "figure" as in training). ``resolution`` defaults to the run's.
    ``model_name`` defaults to ``<model>-<mode>`` (e.g. "retrinet-identity"). Images go to
    ``out_dir/images/<subject>/p<prompt>_seed<seed>_<sample>.png``; the settings to ``out_dir/generation.json``.
    Refuses to overwrite an existing ``generations.jsonl``.

    Several subjects in one image (a multi-subject run): a subject ``"alice&bob"`` takes ``n_references`` of each
    identity, alice's as subject 0 and bob's as subject 1. ``reference_schedule``: a
    :class:`~sameid.pipelines.ReferenceSchedule` or its text ``"λ@fraction"`` (cascaded inference: weight λ for
    the first steps, then full weight); None: ``reference_scale`` at every step.
    """
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from ..pairs.manifest import load_manifest
    from ..pipelines import ReferencePipeline, safe_file_name
    from ..records import write_generations

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    manifest_path = out_dir / GENERATIONS_FILE
    if manifest_path.exists():
        raise SameIdError(f"{manifest_path} already exists: choose another output folder or remove it first")
    prompts, seeds = list(prompts), [int(seed) for seed in seeds]
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise SameIdError("give at least one prompt, and no empty prompt (the evaluation needs the text)")
    if not seeds:
        raise SameIdError("give at least one seed")
    if samples_per_seed < 1:
        raise SameIdError(f"samples_per_seed must be at least 1, got {samples_per_seed}")

    if isinstance(reference_schedule, str):
        from ..pipelines.guidance import ReferenceSchedule

        reference_schedule = ReferenceSchedule.parse(reference_schedule)
    components, denoiser, config = load_run(run_dir, device=device, dtype=dtype)
    dataset = load_manifest(dataset_dir)
    subjects = _run_identities(RunDir(run_dir), dataset, identities)
    count = int(n_references or config.n_references)
    if count < 1:
        raise SameIdError(f"n_references must be at least 1, got {count}")
    if concepts is None:
        requested = _default_concepts(config.task, count)
    elif isinstance(concepts, str):
        requested = [concepts] * count
    else:
        requested = list(concepts)
        if len(requested) != count:
            raise SameIdError(f"concepts: {len(requested)} given for {count} references per subject")
    from ..pairs.concepts import CONCEPTS

    unknown = sorted(set(requested) - set(CONCEPTS))
    if unknown:
        raise SameIdError(f"unknown concept {unknown[0]!r}; choose from {', '.join(CONCEPTS)}")
    resolution = int(resolution or config.resolution)
    model_name = model_name or f"{config.model}-{config.mode}"

    groups = dataset.identity_rows()
    reference_rows: dict[str, list[int]] = {}
    reference_subjects: dict[str, list[int] | None] = {}
    refused = []
    for subject in subjects:
        members = subject_members(subject, groups)
        if len(members) > 1 and getattr(denoiser, "num_subjects", 1) < len(members):
            raise SameIdError(f"subject {subject!r} has {len(members)} identities, but the run's model "
                              f"({config.model}) takes at most {getattr(denoiser, 'num_subjects', 1)} per image; "
                              "train with --model multi-subject for several")
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

    pipeline = ReferencePipeline.from_components(components, denoiser)
    pipeline.set_progress_bar_config(disable=True)
    folders: dict[str, str] = {}
    rows = []
    total = len(reference_rows) * len(prompts) * len(seeds) * samples_per_seed
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=total, desc=f"generate {model_name}", unit="image", disable=not show) as bar:
        for subject, subject_rows in reference_rows.items():
            folder = safe_file_name(subject)
            if folder in folders.values():
                folder = f"{folder}_{len(folders)}"
            folders[subject] = folder
            (out_dir / IMAGES_DIR / folder).mkdir(parents=True, exist_ok=True)
            slots = reference_subjects[subject]
            images, used_concepts = _reference_images(dataset, subject_rows, requested * (len(subject_rows) // count))
            references = pipeline.prepare_references([images], [used_concepts], resolution,
                                                     subjects=None if slots is None else [slots])
            reference_paths = [dataset.image_paths[row] for row in subject_rows]
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
                        write_atomic(out_dir / relative, image.save, suffix=".png")
                        rows.append({"image": relative.as_posix(), "references": reference_paths,
                                     "prompt": prompt, "subject": subject, "model": model_name, "seed": seed})
                        bar.update(1)

    settings = {
        "run_dir": str(run_dir.resolve()), "dataset": str(Path(dataset_dir).resolve()), "model": model_name,
        "base_model": config.pretrained or str(RunDir(run_dir).base_dir.resolve()), "prompts": prompts,
        "seeds": seeds, "samples_per_seed": samples_per_seed, "n_references": count, "concepts": requested,
        "resolution": resolution, "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
        "reference_scale": reference_scale, "negative_prompt": negative_prompt,
        "reference_schedule": None if reference_schedule is None else {
            "early_weight": reference_schedule.early_weight, "switch_fraction": reference_schedule.switch_fraction},
        "scheduler": type(pipeline.scheduler).__name__, "subjects": {s: folders[s] for s in reference_rows},
        "left_out": refused,
    }
    write_json_atomic(out_dir / GENERATION_SETTINGS, settings, sort_keys=False)
    # Written last, atomically: a manifest on disk always describes a finished generation.
    write_atomic(manifest_path, lambda tmp: write_generations(pd.DataFrame(rows), tmp), suffix=".jsonl")
    return manifest_path
