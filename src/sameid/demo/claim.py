"""RetriBooru's central claim as one experiment on a CPU: -b (another image of the identity as the reference)
against -a (the target itself, augmented), trained for equal steps in the small world (:mod:`sameid.sources.world`).

RetriBooru, arXiv 2312.02521, §3.1: a model trained with the target as its own reference learns to copy it and
follows the prompt less. The experiment (``sameid experiment claim``):

1. writes the world (:func:`sameid.sources.world.make_world`), a dataset dir like any other;
2. takes a pretrained world base (:mod:`.world_base`, the part Stable Diffusion 1.5 plays in the paper): the one
   that ships with sameid (pretrained by ``sameid experiment world-base`` without the held-out identities), a
   folder given as ``base``, or one pretrained per seed (``pretrain``); a base that saw a held-out identity is
   refused; it checks what the base alone draws from full captions (``base_check`` in table.json);
3. trains RetriNet (:mod:`sameid.models.retrinet`) on that base with the project's loop
   (:func:`sameid.train.loop.train`, ``pretrained: <base>``) in mode ``same`` (-a) and in mode ``identity`` (-b),
   same steps and settings, layout-only captions, every seed holding out the same identities (``holdout_seed``),
   equation 3's second term on the figure (``emphasis``; the base's own pretraining objective);
4. keeps the untrained model of each seed (the base with RetriNet's initialisation, whose zero-initialised
   retrieval attentions add nothing: the base drawing a layout-only caption) as the floor;
5. generates, with :class:`sameid.pipelines.ReferencePipeline`, for every held-out identity from one reference
   image and prompts that ask for a layout unlike the reference's in every factor (other background, other
   position, other size), and writes them as a generations manifest (``generations.jsonl``);
6. scores them with ``sameid eval``'s evaluator and report (:mod:`sameid.evaluate.world_metrics`:
   ``world_identity``, ``world_prompt``, ``world_copy`` and SWD(world_prompt, world_identity), paper eq. 1) into
   ``eval/`` (report.html, summary.json, per_image.parquet), and tabulates mean and standard deviation over seeds
   (table.md, table.json, side_by_side.png).

A killed run resumes: a finished model, a finished seed's images and a base are reused; a run stopped between
checkpoints resumes from its latest complete one.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from ..atomic import write_atomic, write_json_atomic, write_text_atomic
from ..errors import SameIdError
from ..pairs.dataset import EMPHASES
from ..sources.world import FACTORS, Layout, WorldSettings, make_world
from .world_base import BaseSettings, base_record, check_base, pretrain_world_base, shipped_world_base

MODES = {"same": "-a (target as reference)", "identity": "-b (other image of the identity)"}
UNTRAINED = "untrained"
WORLD_METRICS = ("world_identity", "world_prompt", "world_copy")
SCORES = {"identity": "world_identity", "prompt": "world_prompt", "copy": "world_copy"}


@dataclass(frozen=True)
class ClaimSettings:
    """One run of the experiment. ``steps`` optimizer steps per model; each seed trains both modes.

    ``base``: a pretrained world base folder (None: the one shipped with sameid); ``pretrain``: pretrain one base
    per seed with these settings instead (``bases/seed<k>``). ``lock``: ``full`` (the paper's RetriNet: retrieval
    encoder, its attentions and the U-Net decoder) by default; ``lockd`` keeps the base's decoder (measured on the
    world: neither mode of it changed what the base draws within 1,500 steps, docs/benchmarks.md).
    """

    steps: int = 400
    seeds: tuple[int, ...] = (0, 1, 2)
    world: WorldSettings = field(default_factory=WorldSettings)
    base: str | None = None
    pretrain: BaseSettings | None = None
    holdout_identities: int = 8
    holdout_seed: int = 0
    batch_size: int = 8
    learning_rate: float = 1e-3
    lock: str = "full"
    emphasis: str = "figure"
    emphasis_weight: float = 4.0
    prompt_drop: float = 0.2
    prompts_per_subject: int = 12
    inference_steps: int = 20
    guidance_scale: float = 1.0
    model: str = "retrinet"
    bootstrap: int = 1000  # resamples of the report's 95% intervals

    def __post_init__(self):
        if self.steps < 1 or not self.seeds or self.prompts_per_subject < 1 or self.inference_steps < 1:
            raise SameIdError("claim experiment: steps, seeds, prompts_per_subject and inference_steps must be "
                              "at least 1")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise SameIdError(f"claim experiment: seeds must be distinct and not negative, got {self.seeds}")
        if self.emphasis not in EMPHASES:
            raise SameIdError(f"claim experiment: emphasis must be one of {', '.join(EMPHASES)}, got "
                              f"{self.emphasis!r}")
        if not self.emphasis_weight >= 0:
            raise SameIdError(f"claim experiment: emphasis_weight must be 0 or more, got {self.emphasis_weight}")
        if self.base is not None and self.pretrain is not None:
            raise SameIdError("claim experiment: give a base folder or pretraining settings, not both")


@dataclass
class ClaimResult:
    out: Path
    table: pd.DataFrame  # one row per model (mode), means and standard deviations over seeds
    per_seed: pd.DataFrame  # one row per (model, seed)
    per_image: pd.DataFrame  # the evaluator's per-image table (eval/per_image.parquet) with the plan's columns
    seconds: float
    base_checks: pd.DataFrame = field(default_factory=pd.DataFrame)  # per seed: the base alone, full captions
    report: Path | None = None

    def describe(self) -> list[str]:
        return [*markdown_table(self.table).splitlines(), f"report: {self.report}",
                f"written to {self.out} ({self.seconds:.0f} s)"]


# --- what is asked --------------------------------------------------------------------------------------------
def unlike_layouts(reference: Layout, count: int, rng: np.random.Generator) -> list[Layout]:
    """``count`` layouts that differ from ``reference`` in every factor, drawn without repeats while possible."""
    from ..sources.world import BACKGROUNDS, POSITIONS, SIZES

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


def summarise(per_image: pd.DataFrame) -> dict:
    """Means of the world scores of one model and seed, and SWD(world_prompt, world_identity) (paper eq. 1)."""
    from ..evaluate.swd import similarity_weighted_diversity

    swd = similarity_weighted_diversity(per_image["world_prompt"], per_image["world_identity"],
                                        div_name="world_prompt", sim_name="world_identity")
    return {**{name: float(np.nanmean(per_image[column])) for name, column in SCORES.items()},
            "swd": float(swd.swd), "n": int(len(per_image))}


# --- the experiment -------------------------------------------------------------------------------------------
def _train(world: Path, out: Path, base: Path, mode: str, seed: int, settings: ClaimSettings,
           progress: bool | None):
    """Train (or finish) one model; a run dir left without a checkpoint by a killed run is started afresh."""
    from ..train import TrainConfig
    from ..train.loop import train
    from ..train.run_dir import RunDir

    config = TrainConfig.from_flat({
        "dataset": str(world), "out": str(out), "pretrained": str(base), "model": settings.model,
        "mode": mode, "task": "reconstruction", "n_references": 1, "resolution": 32, "lock": settings.lock,
        "prompt_drop": settings.prompt_drop, "holdout_identities": settings.holdout_identities,
        "holdout_seed": settings.holdout_seed, "max_train_steps": settings.steps,
        "train_batch_size": settings.batch_size, "gradient_accumulation_steps": 1,
        "learning_rate": settings.learning_rate, "lr_scheduler": "constant",
        "checkpointing_steps": max(1, settings.steps // 4), "checkpoints_total_limit": 1,
        "validation_steps": settings.steps, "validation_examples": 0, "emphasis": settings.emphasis,
        "face_loss_weight": settings.emphasis_weight, "concept_masks": False, "seed": seed})
    resume = None
    if out.exists():
        if RunDir(out).latest_checkpoint() is not None:
            resume = "latest"
        else:  # this experiment's own run dir, stopped before its first checkpoint: nothing to keep
            shutil.rmtree(out)
    return train(config, resume=resume, progress=progress)


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


def held_out(manifest: pd.DataFrame, settings: ClaimSettings) -> list[str]:
    from ..train.loop import holdout_identities

    return holdout_identities(manifest["identity"], settings.holdout_identities, settings.holdout_seed)


def world_base(out: Path, world: Path, seed: int, settings: ClaimSettings, held: list[str], *,
               echo=print) -> tuple[Path, dict]:
    """The seed's world base (the shipped one, ``settings.base``, or pretrained once per seed and reused by -a,
    -b and a re-run) and its check: what the base alone draws for the held-out identities from full captions.
    A base pretrained with a held-out identity is refused: the experiment would test on what the base saw."""
    from ..models.components import load_components
    from ..sources.world import Identity

    if settings.pretrain is not None:
        path = out / "bases" / f"seed{seed}"
        echo(f"seed {seed}: world base, {settings.pretrain.steps} text-to-image steps on full captions")
        pretrained = pretrain_world_base(world, path, settings.pretrain, seed=seed, exclude=held, echo=echo)
        losses, seconds = pretrained.losses, pretrained.seconds
    else:
        path = Path(settings.base) if settings.base is not None else shipped_world_base()
        record = base_record(path)
        seen = sorted(set(held) - set(record["settings"]["exclude"]))
        if seen:
            raise SameIdError(f"the world base {path} was pretrained on {len(seen)} of the held-out identities "
                              f"({', '.join(seen[:3])}...): use a base pretrained without them (pretrain one per "
                              "seed, or `sameid experiment world-base --out DIR`) or the held-out seed it excludes")
        losses, seconds = record["losses"], record["seconds"]
    window = max(1, min(20, len(losses) // 4))  # steps averaged at each end of the loss curve
    first, last = float(np.mean(losses[:window])), float(np.mean(losses[-window:]))
    subjects = [Identity(*name.split("-")) for name in held]
    checked = check_base(load_components(path), subjects, per_identity=settings.prompts_per_subject,
                         inference_steps=settings.inference_steps, guidance_scale=settings.guidance_scale, seed=seed)
    echo(f"    base {path.name}: loss {first:.4f} -> {last:.4f}; alone from full captions: identity "
         f"{checked['identity']:.3f}, prompt {checked['prompt']:.3f} ({checked['n']} images)")
    return path, {"seed": seed, "identity": checked["identity"], "prompt": checked["prompt"], "n": checked["n"],
                  "loss_first": first, "loss_last": last, "seconds": seconds}


def _generations(out: Path, world: Path, plan: pd.DataFrame, name: str, seed: int, settings: ClaimSettings,
                 run_dir: Path, trained: bool) -> pd.DataFrame:
    """The seed's generations by one model as manifest rows (paths relative to ``out``); images already written
    by a killed run are reused only when all of them are there."""
    folder = out / "images" / f"{name}-seed{seed}"
    paths = [folder / f"{k:03d}.png" for k in range(len(plan))]
    if not all(path.is_file() for path in paths):
        components, denoiser = _model(run_dir, trained=trained, seed=seed, kind=settings.model)
        images = generate(components, denoiser, plan, world, inference_steps=settings.inference_steps,
                          guidance_scale=settings.guidance_scale, seed=seed)
        folder.mkdir(parents=True, exist_ok=True)
        for path, image in zip(paths, images):
            write_atomic(path, image.save, suffix=".png")
    return pd.DataFrame({
        "image": [str(p.relative_to(out)) for p in paths],
        "references": [[str((world / r).relative_to(out))] for r in plan["reference"]],
        "prompt": plan["prompt"].to_list(), "subject": plan["subject"].to_list(), "model": name, "seed": seed})


CLAIM_FILE = "claim.json"  # the settings a run folder's models and images were made with


def _check_and_record_settings(out: Path, settings: ClaimSettings) -> None:
    """A re-run resumes only what was made with the same settings (seeds may differ: each seed has its own runs and
    images); a folder made with others is refused before anything is written, so no model is silently reused."""
    record = json.loads(json.dumps({k: v for k, v in asdict(settings).items() if k not in ("seeds", "bootstrap")}))
    path = out / CLAIM_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = sorted(k for k in record.keys() | saved.keys() if record.get(k) != saved.get(k))
        if changed:
            raise SameIdError(f"{out} holds a claim experiment made with other settings ({', '.join(changed)}); "
                              "choose another --out, or remove that folder to start again")
        return
    write_json_atomic(path, record, sort_keys=False)


def run_claim(out: str | Path, settings: ClaimSettings = ClaimSettings(), *, echo=print,
              progress: bool | None = None) -> ClaimResult:
    """Run the experiment into ``out`` (world/, runs/<mode>-seed<k>/, images/, generations.jsonl, eval/,
    table.md, table.json, side_by_side.png; bases/seed<k>/ when pretraining)."""
    from ..evaluate.evaluator import EvalConfig, evaluate_generations
    from ..evaluate.manifest import read_generations
    from ..evaluate.report import write_report
    from ..records import write_generations

    start = time.time()
    out = Path(out)
    if settings.pretrain is None:  # a missing or damaged base is refused before anything is written
        base_record(settings.base if settings.base is not None else shipped_world_base())
    _check_and_record_settings(out, settings)
    world = make_world(out / "world", settings.world)
    manifest = pd.read_parquet(world / "manifest.parquet")
    held = held_out(manifest, settings)
    rows, base_checks = [], []
    for seed in settings.seeds:
        base, checked = world_base(out, world, seed, settings, held, echo=echo)
        base_checks.append(checked)
        for mode in MODES:
            run_dir = out / "runs" / f"{mode}-seed{seed}"
            if not (run_dir / "model").is_dir():
                echo(f"seed {seed}: training {settings.model} {MODES[mode]}, {settings.steps} steps")
                result = _train(world, run_dir, base, mode, seed, settings, progress)
                echo(f"    loss {np.mean(result.losses[:10]):.4f} -> {np.mean(result.losses[-10:]):.4f}")
        plan = generation_plan(manifest, held, settings.prompts_per_subject, seed)
        for name, run_dir, trained in ((UNTRAINED, out / "runs" / f"identity-seed{seed}", False),
                                       *((mode, out / "runs" / f"{mode}-seed{seed}", True) for mode in MODES)):
            echo(f"seed {seed}: generating {len(plan)} images with {name}")
            rows.append(_generations(out, world, plan, name, seed, settings, run_dir, trained))
    write_generations(pd.concat(rows, ignore_index=True), out / "generations.jsonl")
    generations = read_generations(out / "generations.jsonl").frame
    evaluation = evaluate_generations(generations, EvalConfig(metrics=WORLD_METRICS, cache_dir=None))
    per_image = evaluation.per_image
    summary = write_report(per_image, out / "eval", manifest=str(out / "generations.jsonl"),
                           resamples=settings.bootstrap, notes=[
        f"RetriBooru's claim in the small world: RetriNet trained {settings.steps} steps with the target as its own "
        "reference (same, -a) and with another image of the identity (identity, -b), and the untrained model; "
        "prompts ask for a layout unlike the reference's in every factor. world_copy is the share of the "
        "reference's own layout in the generation."])
    del summary
    per_seed = pd.DataFrame([{"model": model, "seed": int(seed), **summarise(group)}
                             for (model, seed), group in per_image.groupby(["model", "seed"], sort=False)])
    table = summary_table(per_seed)
    result = ClaimResult(out, table, per_seed, per_image, time.time() - start, pd.DataFrame(base_checks),
                         out / "eval" / "report.html")
    _write(result, settings)
    for model, label in ((UNTRAINED, "untrained"), *MODES.items()):
        scores = table.set_index("model").loc[model]
        echo(f"    {label}: identity {scores['identity']:.3f}, prompt {scores['prompt']:.3f}, copy "
             f"{scores['copy']:.3f}")
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


def _write(result: ClaimResult, settings: ClaimSettings) -> None:
    out = result.out
    base = "pretrained per seed" if settings.pretrain is not None else (settings.base or "shipped with sameid")
    write_json_atomic(out / "table.json", {
        "settings": {**asdict(settings), "seeds": list(settings.seeds)}, "base": str(base),
        "seconds": round(result.seconds, 1), "table": result.table.to_dict(orient="records"),
        "per_seed": result.per_seed.to_dict(orient="records"),
        "base_check": result.base_checks.to_dict(orient="records")}, sort_keys=False)
    text = ("# RetriBooru's claim in the small world\n\n" + markdown_table(result.table) +
            "\n\n± is the standard deviation over seeds " + ", ".join(map(str, settings.seeds)) +
            f". {settings.steps} RetriNet steps per model (lock {settings.lock}) on the world base ({base}). "
            "Side by side: side_by_side.png; the evaluator's report: eval/report.html\n\n## Per seed\n\n" +
            per_seed_table(result.per_seed) +
            "\n\n## The base alone, full captions (layout + identity colours), held-out identities\n\n" +
            base_table(result.base_checks) + "\n")
    write_text_atomic(out / "table.md", text)
    sheet = side_by_side(result.per_image, out)
    write_atomic(out / "side_by_side.png", sheet.save, suffix=".png")


def side_by_side(per_image: pd.DataFrame, out: Path, rows: int = 8, scale: int = 3) -> Image.Image:
    """Per row: the reference, then the generation of each model (first seed), 3x enlarged, and the prompt."""
    first = per_image[per_image["seed"] == per_image["seed"].iloc[0]].copy()
    first["plan_row"] = [Path(path).name for path in first["image"]]  # NNN.png: the plan's row, in every model
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
        reference = Image.open(row["first_reference"]).convert("RGB")
        sheet.paste(reference.resize((cell, cell), Image.NEAREST), (0, y))
        for column, model in enumerate(models, start=1):
            match = first[(first["model"] == model) & (first["plan_row"] == row["plan_row"])]
            image = Image.open(match["image"].iloc[0]).convert("RGB").resize((cell, cell), Image.NEAREST)
            sheet.paste(image, (column * cell, y))
        draw.text((cell * (1 + len(models)) + 4, y + cell // 2 - 6), row["prompt"][:34], fill="black")
    return sheet


def load_table(out: str | Path) -> dict:
    return json.loads((Path(out) / "table.json").read_text())
