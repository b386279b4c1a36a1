"""The main job end to end on the bundled sample: sample -> build -> audit -> train -> generate -> eval.

Offline by default: a random tiny diffusion model (``--tiny`` of ``sameid train``) learns for a few hundred steps
on 2 CPU cores, and the evaluation uses only models that ship inside pip packages (the offline VQA answerer with
MiniLM text embeddings for the VQA score of RetriBooru, arXiv 2312.02521, A.2, the diversity side of SWD, and
EfficientNet-Lite0 ImageNet features for reference similarity, the similarity side). With ``pretrained`` (a Stable
Diffusion 1.5 id or folder) and ``clip`` (a CLIP id or folder) the same flow trains and evaluates real models
(CLIP-I, CLIP-T and their SWD, RetriBooru, arXiv 2312.02521, §4), on a machine that has them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..generate.prompts import DEFAULT_PROMPTS as DEMO_PROMPTS

DEMO_MARKER = ".sameid-demo"


@dataclass
class DemoSettings:
    steps: int = 300
    resolution: int = 64
    n_references: int = 2
    task: str = "reconstruction"
    holdout_identities: int = 4
    prompts: tuple[str, ...] = DEMO_PROMPTS[:3]
    seeds: tuple[int, ...] = (0, 1)
    inference_steps: int = 20
    pretrained: str | None = None  # a Stable Diffusion 1.5 id or folder; None: a random tiny model
    clip: str | None = None  # a CLIP id or folder for clip_i / clip_t; None: offline metrics only
    workers: int | None = None
    bootstrap: int = 1000


@dataclass
class DemoResult:
    out: Path
    dataset: Path
    run: Path
    generations: Path
    report: Path
    summary: dict
    lines: list[str] = field(default_factory=list)


def run_demo(out: str | os.PathLike, settings: DemoSettings | None = None, *, overwrite: bool = False,
             progress: bool = False, echo: Callable[[str], None] = print) -> DemoResult:
    """Run every stage into ``out`` (sample/, dataset/, audit.json, run/, generations/, eval/)."""
    import shutil

    from ..atomic import write_text_atomic
    from ..backends.offline_vqa import OFFLINE_QUESTIONS
    from ..dataset.pipeline import BuildConfig, build_dataset
    from ..errors import SameIdError
    from ..evaluate.evaluator import EvalConfig, evaluate_generations
    from ..evaluate.manifest import read_generations
    from ..evaluate.report import write_report
    from ..generate.run import generate_manifest
    from ..pairs import PairsConfig, PairsDataset
    from ..pairs.audit import audit_pairs
    from ..train.config import TrainConfig
    from ..train.loop import train
    from .sample import make_sample

    settings = settings or DemoSettings()
    out = Path(out)
    stages = ("run", "generations", "eval", "audit.json")
    existing = [out / name for name in stages if (out / name).exists()]
    # A folder an earlier demo wrote (it leaves a marker) is the demo's own: a re-run replaces its outputs.
    # Anything else with those names may be the user's, so it is only replaced when they say so.
    if existing and not overwrite and not (out / DEMO_MARKER).is_file():
        raise SameIdError(f"{out} holds {', '.join(p.name for p in existing)}, not written by `sameid demo`; pass "
                          "--overwrite to replace them, or choose another --out")
    for path in existing:  # only what a demo writes
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by `sameid demo`; a re-run replaces this folder's demo outputs\n")

    echo("1/6 sample: generated drawings of 12 characters by 4 artists (not real Danbooru data)")
    paths = make_sample(out / "sample")
    echo("2/6 build: filter, annotate, group same-identity images")
    build = build_dataset(BuildConfig(source=str(paths.metadata), out=str(out / "dataset"),
                                      image_root=str(paths.image_root), workers=settings.workers or os.cpu_count() or 1,
                                      is_generated_sample=True),
                          overwrite=(out / "dataset").exists(), progress=progress)
    dataset = build.out
    echo(f"    kept {len(build.manifest)} images in {build.manifest['identity'].nunique()} identities; "
         f"rejected {len(build.rejected)}")

    echo("3/6 audit: reference of every training pair is another image of the identity")
    pairs_config = PairsConfig(task=settings.task, n_references=settings.n_references,
                               resolution=settings.resolution)
    pairs = PairsDataset(dataset, pairs_config)
    report = audit_pairs(pairs.manifest, pairs.pairs_frame(), n_references=settings.n_references)
    write_text_atomic(out / "audit.json", report.to_json())
    echo(f"    {report.pairs} pairs, {report.leaking_pairs} leaking")
    if report.leaking_pairs:
        raise SameIdError(f"the audit found {report.leaking_pairs} leaking pairs: see {out / 'audit.json'}")

    tiny = settings.pretrained is None
    echo(f"4/6 train: RetriNet on {'a random tiny model' if tiny else settings.pretrained}, "
         f"{settings.steps} steps")
    config = TrainConfig(
        dataset=str(dataset), out=str(out / "run"), tiny=tiny, pretrained=settings.pretrained, model="retrinet",
        pairs=pairs_config, holdout_identities=settings.holdout_identities, max_train_steps=settings.steps,
        train_batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-4 if tiny else 1e-5,
        lr_scheduler="cosine_with_restarts", checkpointing_steps=max(1, settings.steps // 2),
        validation_steps=settings.steps, validation_examples=2, validation_inference_steps=settings.inference_steps)
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
    frame = read_generations(generations).frame
    evaluation = evaluate_generations(frame, eval_config)
    summary = write_report(evaluation.per_image, out / "eval", manifest=str(generations),
                           resamples=settings.bootstrap)
    result = DemoResult(out, dataset, trained.run_dir, generations, out / "eval" / "report.html", summary)
    result.lines = summary_lines(summary)
    return result


OFFLINE_METRICS = ("vqa", "effnet")


def summary_lines(summary: dict) -> list[str]:
    """Three lines: what was measured, the means, the SWD (or why there is none)."""
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
