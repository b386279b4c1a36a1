"""The multi-subject flow end to end on the bundled sample (``sameid demo --subjects 2``).

PairHuman (arXiv 2511.16712) generates two people in one image, each keeping the identity of their own references.
This demo runs that flow on the sample's two-character drawings, offline, with the stage functions of every
other command: sample -> build with ``max_subjects`` (multi-subject rows with per-subject figures and references)
-> the pairs audit, which covers every subject of every multi-subject row -> training the multi-subject denoiser
(a separate cross-attention per subject) on a random tiny base -> generating pairs of identities no training
image shows together, with the cascaded reference schedule -> the offline metrics, the subject metrics among them
(``subject_figure``, ``subject_missing``, ``subject_mixing``) -> the evaluation report.

A random tiny base learns for a few hundred steps: it draws no recognisable figures, so the scores test that the
flow runs and measures, not that the model keeps two identities apart. The report and the output say so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SameIdError
from .run import DemoResult, prepare_demo_folder, summary_lines

#: The most subjects one image of the bundled sample shows (its ``two_subjects`` drawings; the one three-figure post
#: is a planted reject, tagged with two characters).
SAMPLE_MAX_SUBJECTS = 2
MULTI_SUBJECT_PROMPTS = ("two figures standing side by side on a beach", "two figures in the snow at night")
#: The offline metrics of a multi-subject demo: the VQA score and EfficientNet-Lite0 similarity of the single-subject
#: demo, and the subject metrics on drawn figures (border-colors figures, colour signatures).
MULTI_SUBJECT_METRICS = ("vqa", "effnet", "subject_figure", "subject_missing", "subject_mixing")
#: What the numbers of a demo on the random tiny base mean (printed, and at the top of the report).
TINY_BASE_NOTE = ("the base is a random tiny diffusion model trained for {steps} steps on CPU: it draws no "
                  "recognisable figures, so these scores test that the multi-subject flow runs and measures, not "
                  "that a model keeps two identities apart")
#: What a multi-subject demo writes into its folder; with the marker, a re-run replaces exactly these.
OUTPUTS = ("sample", "dataset", "audit.json", "run", "generations", "eval")


@dataclass
class MultiSubjectDemoSettings:
    subjects: int = 2
    steps: int = 300
    resolution: int = 64
    # One reference per subject, two examples per step: the frozen EfficientNet-Lite0 global encoder (224 px, every
    # reference, every step) is about 95 % of a tiny step on CPU, so these keep 300 steps to a few minutes.
    n_references: int = 1  # per subject
    batch_size: int = 2
    held_out_pairs: int = 4  # pairs of identities to generate, none shown together by a training image
    prompts: tuple[str, ...] = MULTI_SUBJECT_PROMPTS
    seeds: tuple[int, ...] = (0, 1)
    inference_steps: int = 20
    reference_schedule: str = "0.5@0.5"  # cascaded inference, λ@fraction (sameid.pipelines.ReferenceSchedule)
    workers: int | None = None
    bootstrap: int = 1000
    seed: int = 0

    def check(self) -> None:
        """Every setting, before anything is written."""
        if isinstance(self.subjects, bool) or not isinstance(self.subjects, int) or self.subjects < 1:
            raise SameIdError(f"--subjects must be at least 1, got {self.subjects!r}")
        if self.subjects == 1:
            raise SameIdError("--subjects 1 is the single-subject demo (sameid.demo.run.run_demo)")
        if self.subjects > SAMPLE_MAX_SUBJECTS:
            raise SameIdError(f"--subjects {self.subjects}: the bundled sample's images show at most "
                              f"{SAMPLE_MAX_SUBJECTS} subjects; use --subjects {SAMPLE_MAX_SUBJECTS}")
        for name in ("steps", "inference_steps", "n_references", "batch_size", "held_out_pairs", "resolution"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SameIdError(f"{name} must be a whole number of at least 1, got {value!r}")
        if not self.prompts or not self.seeds:
            raise SameIdError("give at least one prompt and one seed")
        from ..pipelines.guidance import ReferenceSchedule

        ReferenceSchedule.parse(self.reference_schedule)  # a one-line error for a bad λ@fraction


@dataclass
class MultiSubjectDemoResult(DemoResult):
    pairs: list[str] = field(default_factory=list)  # the generated subjects, "a&b"


def held_out_pairs(manifest, count: int, seed: int = 0, subjects: int = 2) -> list[list[str]]:
    """``count`` groups of ``subjects`` single-subject identities that no multi-subject row shows together.

    Candidates are the identities that appear as subjects; a group takes identities of one artist (the manifest's
    ``artist`` column, where there is one, as the sample's two-character posts do) and of different characters
    (``character``), chosen by ``seed``, spread over the artists in turn."""
    import numpy as np

    from ..dataset.subjects import is_multi_subject

    frame = manifest.frame
    multi = is_multi_subject(frame)
    seen = {frozenset(str(s) for s in row) for row in frame.loc[multi, "subjects"]}
    candidates = sorted({str(s) for row in frame.loc[multi, "subjects"] for s in row})
    single = frame[~multi]

    def first(identity: str, column: str):
        if column not in single.columns:
            return None
        values = single.loc[single["identity"] == identity, column]
        return str(values.iloc[0]) if len(values) else None

    by_artist: dict[str | None, list[str]] = {}
    for identity in candidates:
        by_artist.setdefault(first(identity, "artist"), []).append(identity)
    rng = np.random.default_rng([seed, 13])
    groups: list[list[str]] = []
    options: dict[str | None, list[list[str]]] = {}
    for artist, members in sorted(by_artist.items(), key=lambda item: str(item[0])):
        found = []
        for _ in range(200):  # a seeded draw of new groups (the sample has many per artist)
            if len(members) < subjects:
                break
            chosen = [members[int(i)] for i in rng.choice(len(members), size=subjects, replace=False)]
            characters = [first(identity, "character") for identity in chosen]
            if frozenset(chosen) in seen or len(set(characters)) < subjects:
                continue
            if any(frozenset(chosen) == frozenset(other) for other in found):
                continue
            found.append(chosen)
        options[artist] = found
    while len(groups) < count and any(options.values()):
        for artist in sorted(options, key=str):
            if options[artist] and len(groups) < count:
                groups.append(options[artist].pop(0))
    if len(groups) < count:
        raise SameIdError(f"{manifest.root}: only {len(groups)} groups of {subjects} identities that no image shows "
                          f"together; ask for fewer")
    return groups


def run_multi_subject_demo(out: str | os.PathLike, settings: MultiSubjectDemoSettings | None = None, *,
                           overwrite: bool = False, progress: bool = False,
                           echo: Callable[[str], None] = print) -> MultiSubjectDemoResult:
    """Run the multi-subject flow into ``out`` (sample/, dataset/, audit.json, run/, generations/, eval/)."""

    from ..atomic import write_text_atomic
    from ..backends.offline_vqa import OFFLINE_QUESTIONS
    from ..dataset.pipeline import BuildConfig, build_dataset
    from ..dataset.subjects import is_multi_subject
    from ..evaluate.evaluator import EvalConfig, evaluate_generations
    from ..evaluate.manifest import read_generations
    from ..evaluate.report import write_report
    from ..generate.run import SUBJECT_SEPARATOR, generate_manifest
    from ..pairs import PairsConfig, PairsDataset
    from ..pairs.audit import audit_pairs
    from ..pairs.manifest import load_manifest
    from ..train.config import TrainConfig
    from ..train.loop import train
    from .sample import make_sample

    settings = settings or MultiSubjectDemoSettings()
    settings.check()
    out = Path(out)
    prepare_demo_folder(out, OUTPUTS, overwrite)
    k = settings.subjects
    note = TINY_BASE_NOTE.format(steps=settings.steps)
    echo(f"note: {note}")

    echo("1/6 sample: generated drawings of 12 characters by 4 artists, 24 of them two characters side by side "
         "(not real Danbooru data)")
    paths = make_sample(out / "sample")
    echo(f"2/6 build: same-identity groups, then images of up to {k} characters matched figure by figure "
         f"(max_subjects={k})")
    build = build_dataset(BuildConfig(source=str(paths.metadata), out=str(out / "dataset"),
                                      image_root=str(paths.image_root), workers=settings.workers or os.cpu_count() or 1,
                                      is_generated_sample=True, max_subjects=k),
                          overwrite=(out / "dataset").exists(), progress=progress)
    dataset = build.out
    multi = is_multi_subject(build.manifest)
    n_subjects = int(build.manifest.loc[multi, "subjects"].map(len).sum())
    echo(f"    kept {int(multi.sum())} multi-subject images ({n_subjects} subjects) and {int((~multi).sum())} "
         f"single-subject images in {build.manifest.loc[~multi, 'identity'].nunique()} identities; rejected "
         f"{len(build.rejected)}")
    if not multi.any():
        raise SameIdError(f"{dataset}: the build kept no multi-subject image; see {dataset / 'rejected.parquet'}")

    echo("3/6 audit: every subject's references are other images of its identity, never the target")
    pairs_config = PairsConfig(task="reconstruction", n_references=settings.n_references,
                               resolution=settings.resolution)
    manifest = load_manifest(dataset)
    report = audit_pairs(manifest, PairsDataset(manifest, pairs_config).pairs_frame(),
                         n_references=settings.n_references)
    write_text_atomic(out / "audit.json", report.to_json())
    subject_leaks = int((report.leaks["epoch"] == -1).sum()) if len(report.leaks) else 0
    echo(f"    {report.pairs} single-subject pairs and the references of {n_subjects} subjects in "
         f"{int(multi.sum())} multi-subject images: {report.leaking_pairs} leaking ({subject_leaks} subject "
         "references)")
    if report.leaking_pairs:
        raise SameIdError(f"the audit found {report.leaking_pairs} leaking pairs: see {out / 'audit.json'}")

    echo(f"4/6 train: the multi-subject denoiser (a separate cross-attention per subject) on a random tiny model, "
         f"{settings.steps} steps")
    config = TrainConfig(
        dataset=str(dataset), out=str(out / "run"), tiny=True, model="multi-subject", pairs=pairs_config,
        # Drawings have no face a photo face recogniser finds: the global image feature carries the identity.
        face_embedder="none", seed=settings.seed, max_train_steps=settings.steps,
        train_batch_size=settings.batch_size, gradient_accumulation_steps=1, learning_rate=1e-4,
        lr_scheduler="cosine_with_restarts", checkpointing_steps=max(1, settings.steps // 2),
        validation_steps=settings.steps, validation_examples=0, log_with=())
    trained = train(config, progress=progress)
    echo(f"    loss {trained.losses[0]:.4f} -> {trained.losses[-1]:.4f}")

    groups = held_out_pairs(manifest, settings.held_out_pairs, settings.seed, k)
    identities = [SUBJECT_SEPARATOR.join(group) for group in groups]
    echo(f"5/6 generate: {len(identities)} pairs of identities no training image shows together, "
         f"{len(settings.prompts)} prompts x {len(settings.seeds)} seeds, reference schedule "
         f"{settings.reference_schedule}")
    generations = generate_manifest(trained.run_dir, dataset, out / "generations", prompts=list(settings.prompts),
                                    seeds=list(settings.seeds), identities=identities,
                                    num_inference_steps=settings.inference_steps,
                                    reference_schedule=settings.reference_schedule, progress=progress).manifest

    echo(f"6/6 eval: {', '.join(MULTI_SUBJECT_METRICS)}")
    eval_config = EvalConfig(metrics=MULTI_SUBJECT_METRICS, vqa="offline", vqa_text="minilm", cache_dir=None,
                             vqa_questions=OFFLINE_QUESTIONS)
    frame = read_generations(generations).frame
    evaluation = evaluate_generations(frame, eval_config)
    summary = write_report(evaluation.per_image, out / "eval", manifest=str(generations),
                           resamples=settings.bootstrap, notes=[note[0].upper() + note[1:] + "."])
    result = MultiSubjectDemoResult(out, dataset, trained.run_dir, generations, out / "eval" / "report.html",
                                    summary, pairs=identities)
    result.lines = [*summary_lines(summary), f"  (note: {note})"]
    return result
