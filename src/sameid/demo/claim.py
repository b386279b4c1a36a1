"""RetriBooru's central claim as one experiment on a CPU: -b (another image of the identity as the reference)
against -a (the target itself, augmented), trained for equal steps in the small world (:mod:`.world`).

RetriBooru, arXiv 2312.02521, §3.1: a model trained with the target as its own reference learns to copy it and
follows the prompt less. The experiment (``sameid experiment claim``):

1. writes the world (:func:`.world.make_world`), a dataset dir like any other;
2. for every seed, pretrains the world base as a text-to-image model on full captions (:mod:`.world_base`, the
   part Stable Diffusion 1.5 plays in the paper), without the held-out identities, and checks that it draws
   what a full caption asks (identity and prompt scores of the base alone, ``base_check`` in table.json);
3. trains RetriNet (:mod:`sameid.models.retrinet`) on that base with the project's loop
   (:func:`sameid.train.loop.train`, ``pretrained: <base>``) in mode ``same`` (-a) and in mode ``identity`` (-b),
   same steps and settings, layout-only captions, holding out the same identities;
4. keeps the untrained model of each seed (the base with RetriNet's initialisation, whose zero-initialised
   retrieval attentions add nothing: the base drawing a layout-only caption) as the floor;
5. generates, with :class:`sameid.pipelines.ReferencePipeline`, for every held-out identity from one reference
   image and prompts that ask for a layout unlike the reference's in every factor (other background, other
   position, other size);
6. reads every generation back with :func:`.world.measure` and scores it:

   - **identity**: share of hair / top / bottom colours that are the reference identity's;
   - **prompt**: share of background / position / size that are the prompt's;
   - **copy**: share of background / position / size that are the *reference image's* (the prompt asks for other
     values in all three, so copying and following exclude each other per factor);
   - **SWD**: equation 1 of the paper (:mod:`sameid.evaluate.swd`) with the prompt score as the diversity and the
     identity score as the similarity.

These scores need the world's ground truth (the reference's identity and layout, the prompt's layout), so they
live here and not in the evaluator's registry, whose metrics read only a generations manifest and images.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from ..atomic import write_atomic, write_json_atomic, write_parquet_atomic, write_text_atomic
from ..errors import SameIdError
from .world import (
    FACTORS,
    PARTS,
    Identity,
    Layout,
    WorldSettings,
    identity_score,
    layout_agreement,
    make_world,
    measure,
)
from .world_base import BaseSettings, check_base, pretrain_world_base

MODES = {"same": "-a (target as reference)", "identity": "-b (other image of the identity)"}
UNTRAINED = "untrained"


@dataclass(frozen=True)
class ClaimSettings:
    """One run of the experiment. ``steps`` optimizer steps per model; each seed trains both modes."""

    steps: int = 400
    seeds: tuple[int, ...] = (0, 1, 2)
    world: WorldSettings = field(default_factory=WorldSettings)
    base: BaseSettings = field(default_factory=BaseSettings)
    holdout_identities: int = 8
    batch_size: int = 8
    learning_rate: float = 1e-3
    prompt_drop: float = 0.2
    prompts_per_subject: int = 4
    inference_steps: int = 20
    guidance_scale: float = 3.0
    model: str = "retrinet"

    def __post_init__(self):
        if self.steps < 1 or not self.seeds or self.prompts_per_subject < 1 or self.inference_steps < 1:
            raise SameIdError("claim experiment: steps, seeds, prompts_per_subject and inference_steps must be "
                              "at least 1")


@dataclass
class ClaimResult:
    out: Path
    table: pd.DataFrame  # one row per model (mode), means and standard deviations over seeds
    per_seed: pd.DataFrame  # one row per (model, seed)
    per_image: pd.DataFrame
    seconds: float
    base_checks: pd.DataFrame = field(default_factory=pd.DataFrame)  # per seed: the base alone, full captions

    def describe(self) -> list[str]:
        return [*markdown_table(self.table).splitlines(), f"written to {self.out} ({self.seconds:.0f} s)"]


# --- what is asked --------------------------------------------------------------------------------------------
def unlike_layouts(reference: Layout, count: int, rng: np.random.Generator) -> list[Layout]:
    """``count`` layouts that differ from ``reference`` in every factor, drawn without repeats while possible."""
    from .world import BACKGROUNDS, POSITIONS, SIZES

    every = [Layout(b, p, s) for b in BACKGROUNDS for p in POSITIONS for s in SIZES
             if b != reference.background and p != reference.position and s != reference.size]
    order = rng.permutation(len(every))
    return [every[order[k % len(every)]] for k in range(count)]


def generation_plan(manifest: pd.DataFrame, subjects: list[str], prompts_per_subject: int, seed: int) -> pd.DataFrame:
    """One row per generation: the subject, its reference (its first image), the prompt's layout."""
    rng = np.random.default_rng([seed, 5])
    rows = []
    for subject in subjects:
        reference = manifest[manifest["identity"] == subject].iloc[0]
        reference_layout = Layout(reference["background"], reference["position"], reference["size"])
        for k, layout in enumerate(unlike_layouts(reference_layout, prompts_per_subject, rng)):
            rows.append({"subject": subject, "reference": reference["image"], "prompt": layout.caption(),
                         "hair": reference["hair"], "top": reference["top"], "bottom": reference["bottom"],
                         **{f"reference_{f}": getattr(reference_layout, f) for f in FACTORS},
                         **{f"prompt_{f}": getattr(layout, f) for f in FACTORS}, "sample": k})
    return pd.DataFrame(rows)


# --- generation and scores ------------------------------------------------------------------------------------
def generate(components, denoiser, plan: pd.DataFrame, dataset: Path, *, inference_steps: int,
             guidance_scale: float, seed: int, batch: int = 32) -> list[Image.Image]:
    """The plan's images, with the project's pipeline (one reference per generation, concept "figure")."""
    import torch

    from ..pipelines import ReferencePipeline

    pipeline = ReferencePipeline.from_components(components, denoiser)
    pipeline.set_progress_bar_config(disable=True)
    images: list[Image.Image] = []
    resolution = int(components.unet.config.sample_size) * components.vae_scale_factor
    for start in range(0, len(plan), batch):
        rows = plan.iloc[start:start + batch]
        references = [[Image.open(dataset / path).convert("RGB")] for path in rows["reference"]]
        generators = [torch.Generator().manual_seed(seed * 100_003 + start + k) for k in range(len(rows))]
        images += pipeline(list(rows["prompt"]), references, height=resolution, width=resolution,
                           num_inference_steps=inference_steps, guidance_scale=guidance_scale,
                           generator=generators).images
    return images


def score(plan: pd.DataFrame, images: list[Image.Image]) -> pd.DataFrame:
    """The plan with, per generation, what :func:`.world.measure` read and the identity / prompt / copy scores."""
    rows = []
    for (_, row), image in zip(plan.iterrows(), images):
        measured = measure(image)
        identity = Identity(row["hair"], row["top"], row["bottom"])
        asked = Layout(*(row[f"prompt_{f}"] for f in FACTORS))
        reference = Layout(*(row[f"reference_{f}"] for f in FACTORS))
        rows.append({**{f"measured_{name}": getattr(measured, name) for name in (*FACTORS, *PARTS)},
                     "identity_score": identity_score(measured, identity),
                     "prompt_score": layout_agreement(measured, asked),
                     "copy_score": layout_agreement(measured, reference)})
    return pd.concat([plan.reset_index(drop=True), pd.DataFrame(rows)], axis=1)


def summarise(scored: pd.DataFrame) -> dict:
    """Means of the scores of one model and seed, and SWD(prompt, identity) (paper eq. 1)."""
    from ..evaluate.swd import similarity_weighted_diversity

    swd = similarity_weighted_diversity(scored["prompt_score"], scored["identity_score"], div_name="prompt",
                                        sim_name="identity")
    return {"identity": float(scored["identity_score"].mean()), "prompt": float(scored["prompt_score"].mean()),
            "copy": float(scored["copy_score"].mean()), "swd": float(swd.swd), "n": int(len(scored))}


# --- the experiment -------------------------------------------------------------------------------------------
def _train(world: Path, out: Path, base: Path, mode: str, seed: int, settings: ClaimSettings,
           progress: bool | None):
    from ..train import TrainConfig
    from ..train.loop import train

    config = TrainConfig.from_flat({
        "dataset": str(world), "out": str(out), "pretrained": str(base), "model": settings.model,
        "mode": mode, "task": "reconstruction", "n_references": 1, "resolution": 32,
        "prompt_drop": settings.prompt_drop, "holdout_identities": settings.holdout_identities,
        "max_train_steps": settings.steps, "train_batch_size": settings.batch_size,
        "gradient_accumulation_steps": 1, "learning_rate": settings.learning_rate, "lr_scheduler": "constant",
        "checkpointing_steps": settings.steps, "validation_steps": settings.steps, "validation_examples": 0,
        "face_loss_weight": 0.0, "seed": seed})
    return train(config, progress=progress)


def _model(run_dir: Path, *, trained: bool, seed: int, kind: str):
    """The run's trained model, or its base with the same RetriNet initialisation untrained (create_denoiser as
    the loop does)."""
    import torch

    from ..generate.run import load_run
    from ..models.components import load_components
    from ..models.denoisers import create_denoiser
    from ..train.run_dir import RunDir

    if trained:
        components, denoiser, _ = load_run(run_dir, device="cpu")
        return components, denoiser
    components = load_components(RunDir(run_dir).config.pretrained)
    torch.manual_seed(seed)  # the loop initialises the new modules from the seed alone
    denoiser = create_denoiser(kind, components.unet).eval()
    components.unet = denoiser.unet
    return components, denoiser


def world_base(out: Path, world: Path, seed: int, settings: ClaimSettings, manifest: pd.DataFrame, *,
               echo=print) -> tuple[Path, dict]:
    """The seed's pretrained world base (made once, reused by -a and -b and by a re-run) and its check: the
    identity and prompt scores of the base alone drawing the held-out identities from full captions."""
    from ..models.components import load_components
    from ..train.loop import holdout_identities

    held = holdout_identities(manifest["identity"], settings.holdout_identities, seed)
    path = out / "bases" / f"seed{seed}"
    echo(f"seed {seed}: world base, {settings.base.steps} text-to-image steps on full captions")
    pretrained = pretrain_world_base(world, path, settings.base, seed=seed, exclude=held, echo=echo)
    window = max(1, min(20, len(pretrained.losses) // 4))  # steps averaged at each end of the loss curve
    first, last = float(np.mean(pretrained.losses[:window])), float(np.mean(pretrained.losses[-window:]))
    if not pretrained.reused:
        echo(f"    loss {first:.4f} -> {last:.4f} ({pretrained.seconds:.0f} s)")
    subjects = [Identity(*name.split("-")) for name in held]
    checked = check_base(load_components(path), subjects, per_identity=settings.prompts_per_subject,
                         inference_steps=settings.inference_steps, guidance_scale=settings.guidance_scale, seed=seed)
    echo(f"    base from full captions: identity {checked['identity']:.3f}, prompt {checked['prompt']:.3f} "
         f"({checked['n']} images)")
    return path, {"seed": seed, "identity": checked["identity"], "prompt": checked["prompt"], "n": checked["n"],
                  "loss_first": first, "loss_last": last, "seconds": pretrained.seconds}


def run_claim(out: str | Path, settings: ClaimSettings = ClaimSettings(), *, echo=print,
              progress: bool | None = None) -> ClaimResult:
    """Run the experiment into ``out`` (world/, bases/seed<k>/, runs/<mode>-seed<k>/, images, table.md,
    table.json, per_image.parquet, side_by_side.png)."""
    from ..train.run_dir import RunDir

    start = time.time()
    out = Path(out)
    world = make_world(out / "world", settings.world)
    manifest = pd.read_parquet(world / "manifest.parquet")
    scored_all, base_checks = [], []
    for seed in settings.seeds:
        base, checked = world_base(out, world, seed, settings, manifest, echo=echo)
        base_checks.append(checked)
        for mode in MODES:
            run_dir = out / "runs" / f"{mode}-seed{seed}"
            if not (run_dir / "model").is_dir():
                echo(f"seed {seed}: training {settings.model} {MODES[mode]}, {settings.steps} steps")
                result = _train(world, run_dir, base, mode, seed, settings, progress)
                echo(f"    loss {np.mean(result.losses[:10]):.4f} -> {np.mean(result.losses[-10:]):.4f}")
        subjects = RunDir(out / "runs" / f"identity-seed{seed}").holdout_identities()
        plan = generation_plan(manifest, subjects, settings.prompts_per_subject, seed)
        for name, run_dir, trained in ((UNTRAINED, out / "runs" / f"identity-seed{seed}", False),
                                       *((mode, out / "runs" / f"{mode}-seed{seed}", True) for mode in MODES)):
            echo(f"seed {seed}: generating {len(plan)} images with {name}")
            components, denoiser = _model(run_dir, trained=trained, seed=seed, kind=settings.model)
            images = generate(components, denoiser, plan, world, inference_steps=settings.inference_steps,
                              guidance_scale=settings.guidance_scale, seed=seed)
            folder = out / "images" / f"{name}-seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            paths = []
            for k, image in enumerate(images):
                path = folder / f"{k:03d}.png"
                write_atomic(path, image.save, suffix=".png")
                paths.append(str(path.relative_to(out)))
            scored = score(plan, images)
            scored.insert(0, "image", paths)
            scored.insert(0, "seed", seed)
            scored.insert(0, "model", name)
            scored_all.append(scored)
            echo(f"    identity {scored['identity_score'].mean():.3f}, prompt {scored['prompt_score'].mean():.3f}, "
                 f"copy {scored['copy_score'].mean():.3f}")
    per_image = pd.concat(scored_all, ignore_index=True)
    per_seed = pd.DataFrame([{"model": model, "seed": seed, **summarise(group)}
                             for (model, seed), group in per_image.groupby(["model", "seed"], sort=False)])
    table = summary_table(per_seed)
    result = ClaimResult(out, table, per_seed, per_image, time.time() - start, pd.DataFrame(base_checks))
    _write(result, settings, world)
    return result


def summary_table(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean and standard deviation (over seeds, ddof 0 for a single seed) of every score."""
    rows = []
    for model, group in per_seed.groupby("model", sort=False):
        row = {"model": model, "seeds": int(len(group)), "n": int(group["n"].sum())}
        for name in ("identity", "prompt", "copy", "swd"):
            row[name] = float(group[name].mean())
            row[f"{name}_sd"] = float(group[name].std(ddof=1)) if len(group) > 1 else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(table: pd.DataFrame) -> str:
    labels = {UNTRAINED: "untrained (same initialisation)", **{m: f"{m} {label}" for m, label in MODES.items()}}
    lines = ["| model | identity ↑ | prompt ↑ | copy ↓ | SWD(prompt, identity) ↑ | seeds | generations |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in table.itertuples():
        cells = [f"{getattr(row, n):.3f} ± {getattr(row, n + '_sd'):.3f}" for n in ("identity", "prompt", "copy", "swd")]
        lines.append(f"| {labels.get(row.model, row.model)} | {' | '.join(cells)} | {row.seeds} | {row.n} |")
    return "\n".join(lines)


def per_seed_table(per_seed: pd.DataFrame) -> str:
    """Markdown: one row per (model, seed)."""
    lines = ["| model | seed | identity | prompt | copy | SWD | generations |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in per_seed.itertuples():
        lines.append(f"| {row.model} | {row.seed} | {row.identity:.3f} | {row.prompt:.3f} | {row.copy:.3f} | "
                     f"{row.swd:.3f} | {row.n} |")
    return "\n".join(lines)


def base_table(base_checks: pd.DataFrame) -> str:
    """Markdown: per seed, the pretrained base alone drawing the held-out identities from full captions."""
    lines = ["| seed | base loss (first -> last steps) | identity | prompt | images |", "| --- | --- | --- | --- | --- |"]
    for row in base_checks.itertuples():
        lines.append(f"| {row.seed} | {row.loss_first:.3f} -> {row.loss_last:.3f} | {row.identity:.3f} | "
                     f"{row.prompt:.3f} | {row.n} |")
    return "\n".join(lines)


def _write(result: ClaimResult, settings: ClaimSettings, world: Path) -> None:
    out = result.out
    write_parquet_atomic(out / "per_image.parquet", result.per_image)
    write_json_atomic(out / "table.json", {
        "settings": {**asdict(settings), "seeds": list(settings.seeds)}, "seconds": round(result.seconds, 1),
        "table": result.table.to_dict(orient="records"), "per_seed": result.per_seed.to_dict(orient="records"),
        "base_check": result.base_checks.to_dict(orient="records")}, sort_keys=False)
    text = ("# RetriBooru's claim in the small world\n\n" + markdown_table(result.table) +
            "\n\n± is the standard deviation over seeds " + ", ".join(map(str, settings.seeds)) +
            f". {settings.steps} RetriNet steps per model on a base pretrained for {settings.base.steps} steps. "
            "Side by side: side_by_side.png\n\n## Per seed\n\n" + per_seed_table(result.per_seed) +
            "\n\n## The pretrained base alone, full captions (layout + identity colours)\n\n" +
            base_table(result.base_checks) + "\n")
    write_text_atomic(out / "table.md", text)
    sheet = side_by_side(result.per_image, out, world)
    write_atomic(out / "side_by_side.png", sheet.save, suffix=".png")


def side_by_side(per_image: pd.DataFrame, out: Path, world: Path, rows: int = 8, scale: int = 3) -> Image.Image:
    """Per row: the reference, the prompt, then the generation of each model (first seed), 3x enlarged."""
    seed = per_image["seed"].iloc[0]
    first = per_image[per_image["seed"] == seed]
    models = list(dict.fromkeys(first["model"]))
    plan = first[first["model"] == models[0]].head(rows)
    cell, text_width = 32 * scale, 220
    sheet = Image.new("RGB", (cell * (1 + len(models)) + text_width, 14 + cell * len(plan)), "white")
    draw = ImageDraw.Draw(sheet)
    for column, name in enumerate(["reference", *models]):
        draw.text((column * cell + 2, 1), name[:16], fill="black")
    draw.text((cell * (1 + len(models)) + 4, 1), "prompt", fill="black")
    for r, (_, row) in enumerate(plan.iterrows()):
        y = 14 + r * cell
        sheet.paste(Image.open(world / row["reference"]).convert("RGB").resize((cell, cell), Image.NEAREST), (0, y))
        for column, model in enumerate(models, start=1):
            match = first[(first["model"] == model) & (first["subject"] == row["subject"]) &
                          (first["sample"] == row["sample"])]
            image = Image.open(out / match["image"].iloc[0]).convert("RGB").resize((cell, cell), Image.NEAREST)
            sheet.paste(image, (column * cell, y))
        draw.text((cell * (1 + len(models)) + 4, y + cell // 2 - 6), row["prompt"][:34], fill="black")
    return sheet


def load_table(out: str | Path) -> dict:
    return json.loads((Path(out) / "table.json").read_text())
