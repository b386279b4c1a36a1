"""The main job end to end, offline: the data stages on the bundled sample, then RetriBooru's claim on a model
that learns in minutes.

1. **sample -> build -> audit**: the generated Danbooru-style sample is filtered, annotated and grouped into
   same-identity sets (RetriBooru, arXiv 2312.02521, §3 and A.1), and the training pairs are audited for leakage;
2. **the small world** (:mod:`sameid.sources.world`): figures whose identity (hair and outfit colours) is
   independent of the prompt's background, position and size, and the pretrained world base that ships with
   sameid (:mod:`.world_base`, the part Stable Diffusion 1.5 plays in the paper);
3. **train**: RetriNet with another image of the identity as the reference (-b) and with the target itself (-a),
   equal steps (:mod:`.claim`);
4. **generate** for held-out identities, with prompts that ask for a layout unlike the reference's;
5. **eval**: ``sameid eval``'s world metrics (identity, prompt, copy) and SWD, the report and a table that puts
   the untrained model, -a and -b side by side.

With ``pretrained`` (a Stable Diffusion 1.5 id or folder, on a GPU machine) and ``clip`` the model stages run on the
sample itself instead, with a real base and CLIP-I / CLIP-T (RetriBooru, §4).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..generate.prompts import DEFAULT_PROMPTS as DEMO_PROMPTS

DEMO_MARKER = ".sameid-demo"
#: Everything a demo writes into its folder (both routes); with the marker, a re-run replaces exactly these.
DEMO_OUTPUTS = ("audit.json", "claim.json", "world", "runs", "images", "generations.jsonl", "eval", "table.md", "table.json",
                "side_by_side.png", "run", "generations")


@dataclass
class DemoSettings:
    steps: int = 400  # RetriNet steps per model
    inference_steps: int = 20
    prompts_per_subject: int = 12  # world route: prompts per held-out identity
    holdout_identities: int = 8  # world route: at most the 8 the shipped base was pretrained without
    workers: int | None = None
    bootstrap: int = 1000
    # the real-base route (pretrained is not None): the model stages on the sample at a real resolution
    pretrained: str | None = None  # a Stable Diffusion 1.5 id or folder
    clip: str | None = None  # a CLIP id or folder for clip_i / clip_t
    resolution: int = 384
    n_references: int = 2
    task: str = "reconstruction"
    prompts: tuple[str, ...] = DEMO_PROMPTS[:3]
    seeds: tuple[int, ...] = (0, 1)
    sample_holdout_identities: int = 4


@dataclass
class DemoResult:
    out: Path
    dataset: Path
    run: Path
    generations: Path
    report: Path
    summary: dict
    lines: list[str] = field(default_factory=list)


def prepare_demo_folder(out: Path, outputs: tuple[str, ...], overwrite: bool) -> None:
    """Clear the ``outputs`` an earlier demo wrote into ``out`` and mark the folder as the demo's. A non-empty
    folder without the marker may be the user's: it is refused before anything is written, unless ``overwrite``
    (which still clears only ``outputs``; sample/ and dataset/ are replaced by their own stages)."""
    from ..atomic import write_text_atomic
    from ..errors import SameIdError

    if out.exists() and not out.is_dir():
        raise SameIdError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and not overwrite and not (out / DEMO_MARKER).is_file():
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise SameIdError(f"{out} holds {shown}, not written by `sameid demo`; choose a new or empty --out, "
                              "or pass --overwrite to replace the demo's outputs there")
    for path in (out / name for name in outputs):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / DEMO_MARKER, "written by `sameid demo`; a re-run replaces this folder's demo outputs\n")


def run_demo(out: str | os.PathLike, settings: DemoSettings | None = None, *, overwrite: bool = False,
             progress: bool = False, echo: Callable[[str], None] = print) -> DemoResult:
    """Run every stage into ``out`` (sample/, dataset/, audit.json, then world/, runs/, images/,
    generations.jsonl, eval/, table.md, side_by_side.png; or run/, generations/, eval/ with a real base)."""
    from ..atomic import write_text_atomic
    from ..dataset.pipeline import BuildConfig, build_dataset
    from ..errors import SameIdError
    from ..pairs import PairsConfig, PairsDataset
    from ..pairs.audit import audit_pairs
    from .sample import make_sample

    settings = settings or DemoSettings()
    if settings.steps < 1 or settings.inference_steps < 1:
        raise SameIdError("the demo's steps and inference steps must be at least 1")
    out = Path(out)
    prepare_demo_folder(out, DEMO_OUTPUTS, overwrite)
    real = settings.pretrained is not None

    echo("1/6 sample: generated drawings of 12 characters by 4 artists (not real Danbooru data)")
    paths = make_sample(out / "sample")
    echo("2/6 build: filter, annotate, group same-identity images")
    build = build_dataset(BuildConfig(source=str(paths.metadata), out=str(out / "dataset"),
                                      image_root=str(paths.image_root), workers=settings.workers or os.cpu_count() or 1,
                                      is_generated_sample=True),
                          overwrite=(out / "dataset").exists(), progress=progress)
    echo(f"    kept {len(build.manifest)} images in {build.manifest['identity'].nunique()} identities; "
         f"rejected {len(build.rejected)}")

    echo("3/6 audit: reference of every training pair is another image of the identity")
    pairs_config = PairsConfig(task=settings.task, n_references=settings.n_references,
                               resolution=settings.resolution if real else 64)
    pairs = PairsDataset(build.out, pairs_config)
    report = audit_pairs(pairs.manifest, pairs.pairs_frame(), n_references=settings.n_references)
    write_text_atomic(out / "audit.json", report.to_json())
    echo(f"    {report.pairs} pairs, {report.leaking_pairs} leaking")
    if report.leaking_pairs:
        raise SameIdError(f"the audit found {report.leaking_pairs} leaking pairs: see {out / 'audit.json'}")
    if real:
        return _sample_model_stages(out, build.out, pairs_config, settings, progress, echo)
    return _world_model_stages(out, build.out, settings, progress, echo)


def _world_model_stages(out: Path, dataset: Path, settings: DemoSettings, progress: bool, echo) -> DemoResult:
    """Stages 4-6 offline: RetriNet -b and -a on the small world's shipped base, the claim table and report."""
    from .claim import ClaimSettings, markdown_table, run_claim

    echo(f"4/6 train: RetriNet on the small world's pretrained base, {settings.steps} steps with another image of "
         "the identity as the reference (-b) and as many with the target itself (-a); then 5/6 generate for "
         "held-out identities and 6/6 eval")
    claim = run_claim(out, ClaimSettings(steps=settings.steps, seeds=(0,), holdout_identities=settings.holdout_identities,
                                         prompts_per_subject=settings.prompts_per_subject,
                                         inference_steps=settings.inference_steps, bootstrap=settings.bootstrap),
                      echo=lambda line: echo("    " + line), progress=progress)
    summary = json.loads((out / "eval" / "summary.json").read_text())
    result = DemoResult(out, dataset, out / "runs" / "identity-seed0", out / "generations.jsonl", claim.report,
                        summary)
    result.lines = [*markdown_table(claim.table).splitlines(), f"side by side: {out / 'side_by_side.png'}"]
    return result


def _sample_model_stages(out: Path, dataset: Path, pairs_config, settings: DemoSettings, progress: bool,
                         echo) -> DemoResult:
    """Stages 4-6 with a real base: RetriNet on the sample, generation for held-out identities, CLIP metrics."""
    from ..backends.offline_vqa import OFFLINE_QUESTIONS
    from ..evaluate.evaluator import EvalConfig, evaluate_generations
    from ..evaluate.manifest import read_generations
    from ..evaluate.report import write_report
    from ..generate.run import generate_manifest
    from ..train.config import TrainConfig
    from ..train.loop import train

    echo(f"4/6 train: RetriNet on {settings.pretrained}, {settings.steps} steps")
    config = TrainConfig(
        dataset=str(dataset), out=str(out / "run"), pretrained=settings.pretrained, model="retrinet",
        pairs=pairs_config, holdout_identities=settings.sample_holdout_identities, max_train_steps=settings.steps,
        train_batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-5, lr_scheduler="cosine_with_restarts",
        checkpointing_steps=max(1, settings.steps // 2), validation_steps=settings.steps, validation_examples=2,
        validation_inference_steps=settings.inference_steps)
    trained = train(config, progress=progress)
    echo(f"    loss {trained.losses[0]:.4f} -> {trained.losses[-1]:.4f}")
    echo("5/6 generate: held-out identities, new prompts")
    generations = generate_manifest(trained.run_dir, dataset, out / "generations", prompts=list(settings.prompts),
                                    seeds=list(settings.seeds), num_inference_steps=settings.inference_steps,
                                    progress=progress).manifest
    echo("6/6 eval")
    if settings.clip:
        eval_config = EvalConfig(metrics=("clip_i", "clip_t", "vqa", "effnet"), clip=f"clip:{settings.clip}",
                                 vqa="offline", vqa_text="clip", cache_dir=None, vqa_questions=OFFLINE_QUESTIONS)
    else:
        eval_config = EvalConfig(metrics=OFFLINE_METRICS, vqa="offline", vqa_text="minilm", cache_dir=None,
                                 vqa_questions=OFFLINE_QUESTIONS)
    evaluation = evaluate_generations(read_generations(generations).frame, eval_config)
    summary = write_report(evaluation.per_image, out / "eval", manifest=str(generations),
                           resamples=settings.bootstrap)
    result = DemoResult(out, dataset, trained.run_dir, generations, out / "eval" / "report.html", summary)
    result.lines = summary_lines(summary)
    return result


OFFLINE_METRICS = ("vqa", "effnet")


def summary_lines(summary: dict) -> list[str]:
    """Three lines per model: what was measured, the means, the SWD (or why there is none)."""
    lines = []
    for model, scores in summary["models"].items():
        means = ", ".join(f"{k} {v:.3f}" for k, v in scores["means"].items() if v is not None)
        swds = [f"{k} {v['swd']:.3f} (product of means {v['product_of_means']:.3f})"
                for k, v in scores["swd"].items() if v.get("swd") is not None]
        lines.append(f"{model}: {scores['n']} generations")
        lines.append(f"  means: {means}")
        lines.append(f"  SWD: {'; '.join(swds)}" if swds else
                     "  SWD: needs a similarity and a diversity metric")
    return lines


def load_summary(eval_dir: str | os.PathLike) -> dict:
    return json.loads((Path(eval_dir) / "summary.json").read_text())
