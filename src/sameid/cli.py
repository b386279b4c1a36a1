"""The ``sameid`` command: one entry point, a subcommand per stage."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from . import __version__
from .errors import SameIdError
from .verbosity import show_progress

app = typer.Typer(
    name="sameid",
    help="Same-identity datasets and leakage-free personalization: a reference shows the same identity as the "
    "target, but it is never the target.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool):
    if value:
        typer.echo(f"sameid {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Results and errors only: no progress bars, no "
                                        "log lines from sameid or the libraries it drives.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Everything: sameid's debug log and every "
                                          "third-party log line, native ones included.")] = False,
):
    """sameid: same-identity datasets, leakage-free pairs, training, generation and evaluation."""
    from .verbosity import set_verbosity

    if quiet and verbose:
        typer.secho("error: --quiet and --verbose exclude each other; give one", fg="red", err=True)
        raise typer.Exit(2)
    set_verbosity("quiet" if quiet else "verbose" if verbose else "normal")


def say(result) -> None:
    """Print what a stage function returned: its ``describe()`` (one line, or a list of lines)."""
    described = result.describe()
    for line in [described] if isinstance(described, str) else described:
        typer.echo(line)


def user_errors(command):
    """Report a :class:`SameIdError` as one line on stderr with exit code 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except SameIdError as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def build(
    source: Annotated[Path, typer.Argument(help="Danbooru-style metadata .jsonl, a Hugging Face imagefolder "
                                                "(with metadata.jsonl), or a folder with one sub-folder per identity.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset dir to write (manifest.parquet, "
                                                          "rejected.parquet, stats.json, README.md, build_settings.json, plots/, masks/).")],
    source_format: Annotated[str | None, typer.Option(help="danbooru | imagefolder | folders (default: detected).")] = None,
    image_root: Annotated[Path | None, typer.Option(help="Danbooru: folder holding <md5>.<ext> or <id>.<ext> "
                                                         "(default: the metadata file's folder).")] = None,
    layout: Annotated[str, typer.Option(help="Danbooru image layout under --image-root: auto | flat | original | "
                                             "512px | cdn (docs/build.md, \"Danbooru as published\").")] = "auto",
    grouping: Annotated[str | None, typer.Option(help="tags: same character, artist and outfit answer "
                                                      "(default for Danbooru); faces: face-embedding clusters.")] = None,
    head_detector: Annotated[str | None, typer.Option(help="mask-top | dlib | mediapipe | transformers:<id or path> | none.")] = None,
    segmenter: Annotated[str | None, typer.Option(help="Figure masks: border-colors (fast default for drawings) | grabcut (careful, slower) | mediapipe-selfie (photos) | none.")] = None,
    vqa: Annotated[str | None, typer.Option(help="Outfit question answerer: pixel-colors (offline) | "
                                                 "transformers:<id or path>[?max_new_tokens=N] (e.g. an InstructBLIP "
                                                 "model; answers up to 128 tokens by default).")] = None,
    answer_matching: Annotated[str, typer.Option(help="Outfit answers: strict (the same colour words in the same "
                                                      "order, as RetriBooru A.1) | color-family (navy = light blue "
                                                      "= blue).")] = "strict",
    allow_no_artist: Annotated[bool, typer.Option(help="Tags grouping: keep posts without an artist tag, grouped "
                                                       "under '(unknown artist)' (refused by default).")] = False,
    max_subjects: Annotated[int, typer.Option(help="Also keep posts of 2..K characters (tags grouping) or photos "
                                                   "with 2..K faces (faces grouping, dlib) as multi-subject samples, "
                                                   "each figure or face assigned to a single-subject identity "
                                                   "(docs/multi_subject.md); 1 = single-subject images only.")] = 1,
    face_embedder: Annotated[str | None, typer.Option(help="dlib (offline) | arcface-onnx:<path.onnx>.")] = None,
    unwanted_tag: Annotated[list[str] | None, typer.Option(help="A tag whose images are dropped; repeat it. "
                                                                "Replaces the default list (monochrome, greyscale, sketch, comic, ...).")] = None,
    clothing_vocabulary: Annotated[Path | None, typer.Option(help="Text file of clothing tags, one per line "
                                                                  "(default: the bundled Danbooru vocabulary).")] = None,
    near_duplicate_bits: Annotated[int, typer.Option(help="Perceptual-hash bits (of 64) at or below which two "
                                                          "images of one identity are near-duplicates.")] = 6,
    face_eps: Annotated[float | None, typer.Option(help="Cosine-distance radius for face clustering "
                                                        "(default tuned for the embedder).")] = None,
    face_clustering: Annotated[str, typer.Option(help="dbscan | hdbscan, for photos without identity labels.")] = "dbscan",
    label_check: Annotated[str, typer.Option(help="Given identity labels (faces grouping): auto (check a label's images "
                                                  "by their faces where faces are found, trust it otherwise) | faces | trust.")] = "auto",
    judge: Annotated[str | None, typer.Option(help="Judge of the doubtful face-checked labels (mixture-of-experts "
                                                   "cleaning): openai:<model> (OpenAI-compatible endpoint, SAMEID_JUDGE_BASE_URL / "
                                                   "SAMEID_JUDGE_API_KEY) | transformers:<id or path> | consensus[:<distance>].")] = None,
    judge_margin: Annotated[float, typer.Option(help="A label is doubtful when an outlier lies within this cosine "
                                                     "distance beyond its eps.")] = 0.02,
    judge_clear_fraction: Annotated[float, typer.Option(help="A label is doubtful when its main face cluster holds "
                                                             "less than this fraction of its faces.")] = 0.8,
    judge_cache: Annotated[Path | None, typer.Option(help="Folder of cached verdicts (default: ~/.cache/sameid/judge).")] = None,
    keep_monochrome: Annotated[bool, typer.Option(help="Keep images without colour (tags grouping drops them).")] = False,
    engine: Annotated[str, typer.Option(help="local (process pool) | ray (Ray Data).")] = "local",
    workers: Annotated[int | None, typer.Option(help="Parallel workers (default: CPU count).")] = None,
    shard_size: Annotated[int, typer.Option(help="Images per resumable shard.")] = 32,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted build in --out with the same options.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier build's outputs in --out.")] = False,
    export_hf: Annotated[Path | None, typer.Option(help="Also write a Hugging Face datasets dataset here.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
):
    """Build a same-identity dataset: filter, annotate, group, clean, and write the dataset dir."""
    import os

    from .dataset.pipeline import BuildConfig, build_dataset
    from .records import is_generated_sample

    config = BuildConfig(
        source=str(source), out=str(out), source_format=source_format,
        image_root=None if image_root is None else str(image_root), layout=layout, grouping=grouping,
        head_detector=head_detector, segmenter=segmenter, vqa=vqa, face_embedder=face_embedder,
        unwanted_tags=unwanted_tag or None,
        clothing_vocabulary=None if clothing_vocabulary is None else str(clothing_vocabulary),
        near_duplicate_bits=near_duplicate_bits, face_eps=face_eps, face_clustering=face_clustering,
        label_check=label_check, judge=judge, judge_margin=judge_margin, judge_clear_fraction=judge_clear_fraction,
        judge_cache=None if judge_cache is None else str(judge_cache),
        reject_monochrome=not keep_monochrome, answer_matching=answer_matching, allow_no_artist=allow_no_artist,
        max_subjects=max_subjects,
        engine=engine, workers=workers or os.cpu_count() or 1, shard_size=shard_size,
        export_hf=None if export_hf is None else str(export_hf),
        is_generated_sample=is_generated_sample(Path(source).parent if Path(source).is_file() else source),
    )
    result = build_dataset(config, resume=resume, overwrite=overwrite, progress=not quiet and show_progress())
    say(result)


@app.command()
@user_errors
def leakage(
    synthetic: Annotated[Path, typer.Option(help="Dataset dir of the synthetic identities (sameid build).")],
    real: Annotated[Path, typer.Option(help="Real identities: a dataset dir, a folder of images (root/<identity>/... "
                                            "or one image per person), or an .npz gallery saved with --save-real.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New dataset dir: the synthetic dataset without the removed "
                                                          "identities, leakage.parquet, the card. The input is never changed.")],
    threshold: Annotated[float, typer.Option(help="Cosine distance between identity means at or below which a "
                                                  "synthetic identity is a real person (default: dlib's rule).")] = 0.088,
    synthetic_threshold: Annotated[float | None, typer.Option(help="The same between two synthetic identities "
                                                                   "(default: --threshold).")] = None,
    face_embedder: Annotated[str, typer.Option(help="dlib | arcface-onnx:<path.onnx>; the same for both sides.")] = "dlib",
    index: Annotated[str, typer.Option(help="flat (exact) | ivf (approximate, for millions of real identities).")] = "flat",
    nprobe: Annotated[int, typer.Option(help="Lists an ivf index searches per query (of ~2 sqrt(n) lists).")] = 128,
    nlist: Annotated[int | None, typer.Option(help="Lists of an ivf index (default ~2 sqrt(n), at most 4096; at most "
                                                   "n / 39).")] = None,
    save_real: Annotated[Path | None, typer.Option(help="Save the real gallery's identity embeddings to this .npz "
                                                        "for the next check.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Face-embedding cache folder, keyed by file content and "
                                                        "embedder, shared with sameid eval (default: "
                                                        "~/.cache/sameid/embeddings).")] = None,
    no_cache: Annotated[bool, typer.Option(help="Embed every image afresh and keep nothing on disk.")] = False,
):
    """Identity-leakage check: remove synthetic identities that are real people or duplicates of each other."""
    from .synth.leakage import DEFAULT_CACHE_DIR, LeakageConfig, run_leakage

    result = run_leakage(LeakageConfig(
        synthetic=str(synthetic), real=str(real), out=str(out), threshold=threshold,
        synthetic_threshold=synthetic_threshold, face_embedder=face_embedder, index=index, nprobe=nprobe,
        nlist=nlist, save_real=None if save_real is None else str(save_real),
        cache_dir=None if no_cache else str(cache_dir or DEFAULT_CACHE_DIR)))
    typer.echo(result.describe())


@app.command()
@user_errors
def sample(
    out: Annotated[Path, typer.Argument(help="Folder to write the generated sample collection into.")],
    seed: Annotated[int, typer.Option(help="Seed; the same seed writes byte-identical files.")] = 0,
):
    """Write the bundled sample collection: a generated Danbooru-style metadata file, images and ground truth."""
    from .demo.sample import make_sample

    paths = make_sample(out, seed=seed)
    typer.echo(f"sample collection (generated, not real Danbooru data): {paths.root}")
    typer.echo(f"  metadata: {paths.metadata}\n  images:   {paths.image_root}\n  truth:    {paths.ground_truth}")


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's sample and outputs.")] = Path("runs/demo"),
    steps: Annotated[int | None, typer.Option(help="Training steps per model (default 400 for RetriNet -b and -a on "
                                                   "the small world, 300 for the multi-subject model).")] = None,
    pretrained: Annotated[str | None, typer.Option(help="Train on a real base model: a Stable Diffusion 1.5 id "
                                                        "or folder (a GPU machine; sets 384 px).")] = None,
    clip: Annotated[str | None, typer.Option(help="Evaluate with a real CLIP (id or folder): clip_i, clip_t "
                                                  "and their SWD.")] = None,
    inference_steps: Annotated[int, typer.Option(help="Denoising steps per generated image.")] = 20,
    workers: Annotated[int | None, typer.Option(help="Parallel workers of the build (default: CPU count).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace outputs in --out that an earlier demo did not write.")] = False,
    subjects: Annotated[int, typer.Option(help="Subjects per image: 2 runs the multi-subject flow on the sample's "
                                               "two-character drawings (docs/multi_subject.md).")] = 1,
):
    """Run the whole system offline: sample, build and audit on the bundled sample; then RetriNet -b vs -a trained,
    generating and evaluated on the small world, where a model learns in minutes (the report compares them)."""
    from .demo.run import DemoSettings, run_demo

    if subjects != 1:
        from .demo.multi_subject import MultiSubjectDemoSettings, run_multi_subject_demo

        if pretrained or clip:
            raise SameIdError("--subjects 2 runs on the random tiny base with offline metrics only; leave out "
                              "--pretrained and --clip (train a real base with `sameid train --model multi-subject`)")
        multi = MultiSubjectDemoSettings(subjects=subjects, **({} if steps is None else {"steps": steps}),
                                         inference_steps=inference_steps,
                                         workers=workers)
        multi.check()
        result = run_multi_subject_demo(out, multi, overwrite=overwrite, progress=show_progress(), echo=typer.echo)
        typer.echo(f"report: {result.report}")
        for line in result.lines:
            typer.echo(line)
        return

    if steps is not None and steps < 1:
        raise SameIdError(f"--steps must be at least 1, got {steps}")
    if inference_steps < 1:
        raise SameIdError(f"--inference-steps must be at least 1, got {inference_steps}")
    settings = DemoSettings(**({} if steps is None else {"steps": steps}), pretrained=pretrained, clip=clip, workers=workers,
                            inference_steps=inference_steps)
    result = run_demo(out, settings, overwrite=overwrite, progress=show_progress(), echo=typer.echo)
    typer.echo(f"report: {result.report}")
    for line in result.lines:
        typer.echo(line)


ModeOption = Annotated[str, typer.Option(help="identity: references are other images of the same identity, never "
                                              "the target nor a near-duplicate (the paper's -b); same: an augmented "
                                              "copy of the target (-a, the leaking baseline).")]
TaskOption = Annotated[str, typer.Option(help="reconstruction (whole figures) | composition (face or clothes "
                                              "crops) | multitask (either, p=0.5).")]
ReferencesOption = Annotated[int, typer.Option(help="References per example (N).")]
ShortfallOption = Annotated[str, typer.Option(help="When an identity has fewer than N eligible references: "
                                                   "repeat (sample with replacement) | refuse (leave the target out).")]


@app.command()
@user_errors
def pairs(
    dataset: Annotated[Path, typer.Argument(help="Dataset dir written by `sameid build` (manifest.parquet).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Parquet file for the sampled pairs (ids, concepts, "
                                                          "crop boxes; no pixels).")],
    mode: ModeOption = "identity",
    task: TaskOption = "composition",
    n_references: ReferencesOption = 4,
    shortfall: ShortfallOption = "repeat",
    seed: Annotated[int, typer.Option(help="Seed: the same seed and epoch give the same pairs.")] = 0,
    epochs: Annotated[int, typer.Option(help="Epochs of pairs to write (each epoch draws afresh).")] = 1,
    resolution: Annotated[int, typer.Option(help="Training resolution (256, 384, 512).")] = 384,
    prompt_drop: Annotated[float, typer.Option(help="Probability that an example's caption is dropped.")] = 0.5,
    curriculum: Annotated[str | None, typer.Option(help="Order identities easy to hard: phash (spread of "
                                                        "their images' hashes) | embedding (needs --embedder).")] = None,
    embedder: Annotated[str | None, typer.Option(help="For --curriculum embedding: face:dlib | "
                                                      "image:clip:<id or path> | image:dino:<id or path>.")] = None,
    near_duplicate_bits: Annotated[int | None, typer.Option(help="Perceptual-hash bits at or below which a "
                                                                 "reference counts as a near-duplicate of the "
                                                                 "target (default: the dataset's, from its "
                                                                 "build).")] = None,
    contact_sheet: Annotated[Path | None, typer.Option(help="PNG of a few examples, target beside its references "
                                                            "(default: <out>.contact_sheet.png).")] = None,
    contact_sheet_examples: Annotated[int, typer.Option(help="Examples on the contact sheet.")] = 6,
    overwrite: Annotated[bool, typer.Option(help="Replace --out and the contact sheet if they exist.")] = False,
):
    """Sample leakage-free training pairs from a dataset dir and write them for inspection."""
    from .pairs import PairsConfig
    from .pairs.run import write_pairs

    config = PairsConfig(mode=mode, task=task, n_references=n_references, shortfall=shortfall, seed=seed,
                         resolution=resolution, prompt_drop=prompt_drop, curriculum=curriculum,
                         near_duplicate_bits=near_duplicate_bits)
    result = write_pairs(dataset, config, out, epochs=epochs, contact_sheet=contact_sheet,
                         contact_sheet_examples=contact_sheet_examples, embedder=embedder, overwrite=overwrite)
    say(result)


@app.command()
@user_errors
def audit(
    dataset: Annotated[Path, typer.Argument(help="Dataset dir written by `sameid build`.")],
    pairs_file: Annotated[Path | None, typer.Option("--pairs", help="Pairs written by `sameid pairs` (default: "
                                                                    "sample them here with the options below).")] = None,
    mode: ModeOption = "identity",
    task: TaskOption = "composition",
    n_references: ReferencesOption = 4,
    shortfall: ShortfallOption = "repeat",
    seed: Annotated[int, typer.Option(help="Seed for sampling (without --pairs).")] = 0,
    epochs: Annotated[int, typer.Option(help="Epochs to sample (without --pairs).")] = 1,
    near_duplicate_bits: Annotated[int | None, typer.Option(help="Perceptual-hash bits at or below which a "
                                                                 "reference leaks (default: the dataset's, from "
                                                                 "its build).")] = None,
    embedder: Annotated[str | None, typer.Option(help="Also compare embeddings: face:dlib | face:arcface-onnx:<path> "
                                                      "| image:clip:<id or path> | image:dino:<id or path>.")] = None,
    similarity_threshold: Annotated[float, typer.Option(help="Cosine similarity at or above which a reference "
                                                             "leaks (with --embedder).")] = 0.95,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON here.")] = None,
    fail_on_leak: Annotated[bool, typer.Option(help="Exit with code 1 when any pair leaks or has a reference of "
                                                    "another identity (for CI).")] = False,
):
    """Report leakage: references that are the target or a near-duplicate of it, small identities, failed crops."""
    from .pairs import PairsConfig
    from .pairs.run import run_audit

    config = PairsConfig(mode=mode, task=task, n_references=n_references, shortfall=shortfall, seed=seed,
                         near_duplicate_bits=near_duplicate_bits)
    result = run_audit(dataset, pairs_file=pairs_file, config=config, epochs=epochs, embedder=embedder,
                       similarity_threshold=similarity_threshold, json_out=json_out)
    say(result)
    if fail_on_leak and result.failed:
        raise typer.Exit(1)


@app.command()
@user_errors
def train(
    dataset: Annotated[Path | None, typer.Argument(help="Dataset dir written by `sameid build` (or `dataset:` in "
                                                        "--config).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run dir: config.yaml, checkpoints/, model/, "
                                                                 "logs/ (tensorboard), validation/, loss.jsonl.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML run config (fields of sameid.train.TrainConfig); "
                                                     "options given here override it.")] = None,
    preset: Annotated[str | None, typer.Option(help="A paper experiment (sameid.train.presets): retrinet, "
                                                    "retrinet-45k, retrinet-lockd, retrinet-lockb, retrinet-p025, "
                                                    "retrinet-p075, controlnet, ip-adapter (each also -a / -b); "
                                                    "fills every setting not given; a comma-separated list trains "
                                                    "each into <out>/<preset>-<mode>.")] = None,
    pretrained: Annotated[str | None, typer.Option(help="Base model: a Stable Diffusion 1.x id or folder, or an "
                                                        "SDXL one (multi-subject models only).")] = None,
    tiny: Annotated[bool | None, typer.Option("--tiny/--no-tiny", help="A random tiny base model (tests, demo; "
                                                                       "no weights needed).")] = None,
    model: Annotated[str | None, typer.Option(help="retrinet | controlnet | ip-adapter; a comma-separated list "
                                                   "trains each into <out>/<model>-<mode>.")] = None,
    mode: Annotated[str | None, typer.Option(help="identity (-b) | same (-a); a comma-separated list trains "
                                                  "each.")] = None,
    lock: Annotated[str | None, typer.Option(help="full | lockd (U-Net decoder frozen) | lockb (decoder and "
                                                  "retrieval encoder frozen) | adapter (the U-Net frozen whole: "
                                                  "the official baseline scripts; the set of lockd).")] = None,
    task: Annotated[str | None, typer.Option(help="reconstruction | composition | multitask.")] = None,
    image_encoder: Annotated[str | None, typer.Option(help="ip-adapter: CLIPVisionModelWithProjection id or "
                                                           "folder.")] = None,
    face_embedder: Annotated[str | None, typer.Option(help="multi-subject: each reference's face feature: dlib "
                                                           "(default, offline) | arcface-onnx:<model.onnx> "
                                                           "(InsightFace's ArcFace models) | none.")] = None,
    n_references: Annotated[int | None, typer.Option(help="References per example.")] = None,
    resolution: Annotated[int | None, typer.Option(help="Training resolution (256, 384, 512).")] = None,
    max_train_steps: Annotated[int | None, typer.Option("--max-steps", help="Optimizer steps.")] = None,
    train_batch_size: Annotated[int | None, typer.Option("--batch-size", help="Examples per micro-batch.")] = None,
    gradient_accumulation_steps: Annotated[int | None, typer.Option(help="Micro-batches per optimizer step.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="AdamW learning rate.")] = None,
    prompt_drop: Annotated[float | None, typer.Option("--prompt-drop", "--text-drop",
                                                      help="Probability of training without the caption.")] = None,
    image_drop: Annotated[float | None, typer.Option(help="Probability of training without the references (each "
                                                          "model kind as its training drops them).")] = None,
    both_drop: Annotated[float | None, typer.Option(help="Probability of dropping caption and references "
                                                         "together (at most the smaller drop).")] = None,
    loss: Annotated[str | None, typer.Option(help="eq3 (equation 3 as written, default) | eq3-area-normalised "
                                                  "(each term a mean over its mask) | mse (no masks, no face "
                                                  "term: the official baselines).")] = None,
    face_loss_weight: Annotated[float | None, typer.Option(help="lambda of equation 3: weight of the face-box "
                                                                "loss.")] = None,
    emphasis: Annotated[str | None, typer.Option(help="What equation 3's second term weighs: face (the head box, "
                                                      "default) | figure (the figure mask of the manifest's mask "
                                                      "column: a subject whose identity is the whole figure).")] = None,
    unconditional_references: Annotated[str | None, typer.Option(help="Recorded for generation: keep | zero, what "
                                                                      "guidance's unconditional branch gives for "
                                                                      "references (default: the model kind's).")] = None,
    reference_scale: Annotated[float | None, typer.Option(help="Recorded for generation: the default reference "
                                                               "scale (default: the model kind's; ip-adapter "
                                                               "0.5).")] = None,
    mixed_precision: Annotated[str | None, typer.Option(help="no | fp16 | bf16.")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing",
                                                                help="Recompute activations to save memory.")] = None,
    checkpointing_steps: Annotated[int | None, typer.Option(help="Save a checkpoint every this many steps.")] = None,
    validation_steps: Annotated[int | None, typer.Option(help="Validation generations every this many steps.")] = None,
    curriculum: Annotated[str | None, typer.Option(help="Order identities easy to hard instead of shuffling: "
                                                        "phash | source (set curriculum_source_order in --config) | dataset (curriculum_rank from sameid augment).")] = None,
    holdout_identities: Annotated[int | None, typer.Option(help="Identities kept out of training for "
                                                                "`sameid generate` (listed in holdout.json).")] = None,
    near_duplicate_bits: Annotated[int | None, typer.Option(help="Perceptual-hash bits at or below which a "
                                                                 "reference is a near-duplicate of the target "
                                                                 "(default: the dataset's, from its build).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of data order, noise and initialisation.")] = None,
    log_with: Annotated[str | None, typer.Option(help="accelerate trackers, comma-separated: tensorboard "
                                                      "(default), wandb, mlflow, comet_ml, ... (installed ones).")] = None,
    resume: Annotated[str | None, typer.Option(help="latest (the latest complete checkpoint that loads) | a "
                                                    "checkpoint dir: continue the run in --out exactly where it "
                                                    "stopped.")] = None,
):
    """Train RetriNet (or a baseline) on leakage-free pairs with one accelerate loop; variants by configuration.

    Several GPUs or processes: `accelerate launch --num_processes N -m sameid.cli train ...` (the logged loss is
    the mean over the processes)."""
    from .train import grid_configs, train_grid

    settings = dict(dataset=str(dataset) if dataset else None, out=str(out) if out else None,
                    pretrained=pretrained, tiny=tiny, lock=lock, task=task, image_encoder=image_encoder,
                    face_embedder=face_embedder, n_references=n_references, resolution=resolution, max_train_steps=max_train_steps,
                    train_batch_size=train_batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
                    learning_rate=learning_rate, prompt_drop=prompt_drop, image_drop=image_drop, both_drop=both_drop,
                    loss=loss, face_loss_weight=face_loss_weight, emphasis=emphasis,
                    unconditional_references=unconditional_references,
                    reference_scale=reference_scale,
                    mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing,
                    checkpointing_steps=checkpointing_steps, validation_steps=validation_steps,
                    holdout_identities=holdout_identities, seed=seed, curriculum=curriculum,
                    near_duplicate_bits=near_duplicate_bits, log_with=log_with)
    configs = grid_configs(settings, config_file=config, models=model, modes=mode,
                           presets=preset)  # all checked, nothing written

    result = train_grid(configs, resume=resume, echo=typer.echo)
    say(result)


@app.command()
@user_errors
def generate(
    run: Annotated[Path, typer.Argument(help="Run dir written by `sameid train` (config.yaml, model/).")],
    dataset: Annotated[Path, typer.Option(help="Dataset dir the references are taken from.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for images/ and generations.jsonl (what "
                                                          "`sameid eval` reads).")],
    prompt: Annotated[list[str] | None, typer.Option(help="A prompt; repeat it. Default: five paper-style "
                                                          "prompts (sameid.generate.prompts).")] = None,
    prompts_file: Annotated[Path | None, typer.Option(help="Text file with one prompt per line.")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0",
    samples_per_seed: Annotated[int, typer.Option(help="Images per (subject, prompt, seed).")] = 1,
    identity: Annotated[list[str] | None, typer.Option(help="An identity to generate for; repeat it; `all` for "
                                                            "every one; `alice&bob` for both in one image (a "
                                                            "multi-subject run). Default: the run's held-out "
                                                            "identities (holdout.json), else all.")] = None,
    n_references: Annotated[int | None, typer.Option(help="References per subject (default: the run's).")] = None,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 30,
    guidance_scale: Annotated[float, typer.Option(help="Classifier-free guidance on the prompt.")] = 7.0,
    reference_scale: Annotated[float | None, typer.Option(help="Strength of the references (0: the plain base "
                                                               "model; default: the run's, 0.5 for ip-adapter, "
                                                               "else 1).")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Prompt of the unconditional branch.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda | cuda:1 ... (default: cuda when available).")] = None,
    reference_schedule: Annotated[str | None, typer.Option(
        help="Cascaded inference: WEIGHT@FRACTION, the reference weight λ for the first FRACTION of the steps, "
             "then full weight (e.g. 0.3@0.4; PairHuman's adaptive guidance). Default: --reference-scale at "
             "every step.")] = None,
):
    """Generate images of subjects from their reference images and prompts; write a generations manifest."""
    from .generate.prompts import parse_identities, parse_seeds, read_prompts
    from .generate.run import generate_manifest

    prompts, seed_list = read_prompts(prompt, prompts_file), parse_seeds(seeds)
    result = generate_manifest(run, dataset, out, prompts=prompts, seeds=seed_list,
                               identities=parse_identities(identity), samples_per_seed=samples_per_seed,
                               n_references=n_references, num_inference_steps=steps, guidance_scale=guidance_scale,
                               reference_scale=reference_scale, negative_prompt=negative_prompt, device=device,
                               progress=show_progress(), reference_schedule=reference_schedule)
    say(result)


def _eval_metrics_help() -> tuple[str, str]:
    """``--metrics``' help and default, from the metric registry (cheap to import: no models, no pandas)."""
    from .evaluate.registry import default_metrics, metrics_help

    return metrics_help(), ",".join(default_metrics())


_EVAL_METRICS_HELP, _EVAL_DEFAULT_METRICS = _eval_metrics_help()


@app.command("eval")
@user_errors
def eval_(
    manifest: Annotated[Path, typer.Argument(help="Generations manifest (.jsonl or .parquet: image, references, "
                                                  "prompt, subject, model, seed), or a DreamBench-style samples/ "
                                                  "folder (<run>/{src_image,text,tgt_image}/<subject>/).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write per_image.parquet, summary.json, "
                                                          "report.html and plots/ into.")],
    metrics: Annotated[str, typer.Option(help=_EVAL_METRICS_HELP)] = _EVAL_DEFAULT_METRICS,
    clip: Annotated[str, typer.Option(help="CLIP model id or local folder (for clip_i and clip_t).")] = "openai/clip-vit-large-patch14",
    dino: Annotated[str, typer.Option(help="DINO model id or local folder (any ViT AutoModel).")] = "facebook/dinov2-small",
    face_embedder: Annotated[str, typer.Option(help="Face embedder spec: dlib (offline) | arcface-onnx:<path.onnx>.")] = "dlib",
    vqa: Annotated[str | None, typer.Option(help="VQA model for the vqa metric (add vqa to --metrics): offline "
                                                 "(bundled, no download) | transformers:<id or path>, e.g. an "
                                                 "InstructBLIP model (the paper's).")] = None,
    vqa_text_embedder: Annotated[str, typer.Option(help="Embedder of the VQA answers: clip (the --clip model, as "
                                                        "the paper) | minilm (bundled, offline) | minilm:<path>.")] = "clip",
    vqa_question: Annotated[list[str] | None, typer.Option(help="A question for the vqa metric; repeat it "
                                                                "(default: expression and hairstyle; pose, gesture and clothing).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Embedding cache folder, keyed by file content and model "
                                                        "(default: ~/.cache/sameid/embeddings).")] = None,
    no_cache: Annotated[bool, typer.Option(help="Embed everything afresh and keep nothing on disk.")] = False,
    skip_invalid: Annotated[bool, typer.Option(help="Evaluate the valid rows and list the others (missing, empty "
                                                    "or unreadable files, ...) in problems.parquet, instead of "
                                                    "stopping.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier evaluation in --out (its files only).")] = False,
    batch_size: Annotated[int, typer.Option(help="Images or prompts embedded per model call.")] = 32,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% intervals.")] = 1000,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
):
    """Evaluate generations: CLIP-I, CLIP-T, DINO, face similarity, SWD for every pair, and an HTML report."""
    from .evaluate.evaluator import EvalConfig
    from .evaluate.run import evaluate_manifest

    config = EvalConfig(metrics=tuple(metrics.split(",")), clip=f"clip:{clip}", dino=f"dino:{dino}",
                        face=face_embedder, vqa=vqa, vqa_text=vqa_text_embedder,
                        cache_dir=None if no_cache else (cache_dir or Path.home() / ".cache" / "sameid" / "embeddings"),
                        batch_size=batch_size, progress=not quiet and show_progress())
    if vqa_question:
        config.vqa_questions = tuple(vqa_question)
    result = evaluate_manifest(manifest, out, config, skip_invalid=skip_invalid, overwrite=overwrite,
                               bootstrap=bootstrap)
    say(result)


@app.command()
@user_errors
def export(
    run: Annotated[Path, typer.Argument(help="Run dir of a ControlNet or IP-Adapter baseline (`sameid train`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the diffusers form (new, empty, or an "
                                                          "earlier export, which is replaced).")],
    unet: Annotated[bool | None, typer.Option("--unet/--no-unet", help="Also write unet/ (default: when the run "
                                                                       "trained the U-Net decoder, lock full).")] = None,
):
    """Write a trained baseline in the form diffusers' standard pipelines load (controlnet/ or ip_adapter/, unet/)."""
    from .generate.export import export_run

    say(export_run(run, out, include_unet=unet))



@app.command()
@user_errors
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset dir to write (source: synthetic).")],
    text_to_image: Annotated[str, typer.Option(help="Any diffusers text-to-image pipeline, hub id or folder (e.g. "
                                                    "an SDXL or SD 1.5 folder); makes one reference per identity.")],
    expander: Annotated[str, typer.Option(help="Reference-conditioned generator of the variants: run:<sameid "
                                               "training run dir> | ip-adapter (the --text-to-image pipeline with "
                                               "--ip-adapter loaded).")],
    identities: Annotated[int, typer.Option(help="New identities to make.")] = 10,
    variants: Annotated[int, typer.Option(help="Variants generated per identity (before screening).")] = 8,
    ip_adapter: Annotated[str, typer.Option(help="IP-Adapter repo id or folder.")] = "h94/IP-Adapter",
    ip_adapter_subfolder: Annotated[str, typer.Option(help="Its subfolder.")] = "models",
    ip_adapter_weight: Annotated[str, typer.Option(help="Its weight file.")] = "ip-adapter-full-face_sd15.safetensors",
    ip_adapter_scale: Annotated[float, typer.Option(help="Its strength.")] = 0.7,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 512,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 30,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 7.0,
    identity_check: Annotated[str, typer.Option(help="Embedder of the drift check: face:dlib | "
                                                     "face:arcface-onnx:<path> | image:clip:<id or path>.")] = "face:dlib",
    min_similarity: Annotated[float, typer.Option(help="A variant whose cosine similarity to its reference is "
                                                       "lower is dropped as identity drift (dlib: 0.91).")] = 0.91,
    near_duplicate_bits: Annotated[int, typer.Option(help="Perceptual-hash bits at or below which a variant is a "
                                                          "near-duplicate.")] = 6,
    seed: Annotated[int, typer.Option(help="Identity i depends on (seed, i) only.")] = 0,
    device: Annotated[str | None, typer.Option(help="cuda | cpu (default: cuda when available).")] = None,
    dtype: Annotated[str | None, typer.Option(help="float16 | bfloat16 | float32.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run: identities written are skipped.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier synth output in --out.")] = False,
):
    """Synthetic identities: a text-to-image reference per identity, expanded to variants, screened for identity
    drift and near-duplicates (Hybrid Generative Fusion, arXiv 2508.10672). Writes a dataset dir."""
    from .synth.identities import SynthConfig, synthesize_identities

    config = SynthConfig(out=str(out), text_to_image=text_to_image, expander=expander, identities=identities,
                         variants=variants, ip_adapter=ip_adapter, ip_adapter_subfolder=ip_adapter_subfolder,
                         ip_adapter_weight=ip_adapter_weight, ip_adapter_scale=ip_adapter_scale, size=size,
                         steps=steps, guidance=guidance, identity_check=identity_check, min_similarity=min_similarity,
                         near_duplicate_bits=near_duplicate_bits, seed=seed, device=device, dtype=dtype)
    typer.echo(synthesize_identities(config, resume=resume, overwrite=overwrite).describe())


@app.command()
@user_errors
def augment(
    datasets: Annotated[list[Path], typer.Argument(help="Dataset dirs to fuse (sameid build: real; sameid synth: "
                                                         "synthetic).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset dir to write.")],
    per_identity: Annotated[int, typer.Option(help="Images per identity after augmentation (the paper: 50).")] = 50,
    curriculum: Annotated[str, typer.Option(help="Spread that ranks identities easy to hard, written as "
                                                 "curriculum_rank: phash | embedding | none.")] = "phash",
    embedder: Annotated[str | None, typer.Option(help="For --curriculum embedding: face:dlib | image:clip:<id or "
                                                      "path>.")] = None,
    source_order: Annotated[str, typer.Option(help="Sources from easy to hard, comma-separated.")] = "synthetic,real",
    seed: Annotated[int, typer.Option(help="Augmentation seed.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier output in --out.")] = False,
):
    """Fuse dataset dirs, augment every identity to a fixed number of images (marked augmented) and write the
    curriculum (Hybrid Generative Fusion, arXiv 2508.10672)."""
    from .synth.augment import AugmentConfig, augment_dataset

    config = AugmentConfig(inputs=tuple(str(d) for d in datasets), out=str(out), per_identity=per_identity,
                           curriculum=curriculum, embedder=embedder,
                           source_order=tuple(s.strip() for s in source_order.split(",") if s.strip()), seed=seed)
    typer.echo(augment_dataset(config, resume=resume, overwrite=overwrite).describe())


recognition_app = typer.Typer(help="Score a dataset by training a face-recognition model on it (IResNet + ArcFace/"
                              "CosFace) and verifying on LFW-style pairs.", no_args_is_help=True)
app.add_typer(recognition_app, name="recognition")


@recognition_app.command("pairs")
@user_errors
def recognition_pairs(
    dataset: Annotated[Path, typer.Argument(help="Dataset dir.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="pairs.txt to write (LFW format).")],
    holdout: Annotated[float, typer.Option(help="Fraction of identities held out for the pairs.")] = 0.2,
    folds: Annotated[int, typer.Option(help="Folds (LFW: 10).")] = 10,
    per_fold: Annotated[int, typer.Option(help="Same and different pairs per fold, at most (LFW: 300).")] = 300,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
):
    """Write LFW-format verification pairs over held-out identities of a dataset dir."""
    from .recognition.verification import write_dataset_pairs

    typer.echo(write_dataset_pairs(dataset, out, holdout=holdout, folds=folds, per_fold=per_fold, seed=seed).describe())


def _recognition_config(dataset, out, order, pairs, backbone, width, embedding_size, image_size, loss, margin, scale,
                        optimizer, learning_rate, batch_size, epochs, max_steps, curriculum_by, seed, device, amp,
                        workers):
    from .recognition.train import RecognitionConfig

    return RecognitionConfig(dataset=str(dataset), out=str(out), order=order, exclude_pairs=pairs, backbone=backbone,
                             width=width, embedding_size=embedding_size, image_size=image_size, loss=loss,
                             margin=margin, scale=scale, optimizer=optimizer, learning_rate=learning_rate,
                             batch_size=batch_size, epochs=epochs, max_steps=max_steps, curriculum_by=curriculum_by,
                             seed=seed, device=device, amp=amp, workers=workers)


_TrainDataset = Annotated[Path, typer.Argument(help="Dataset dir to train on.")]
_Pairs = Annotated[Path | None, typer.Option(help="pairs.txt whose identities are left out of training.")]
_Backbone = Annotated[str, typer.Option(help="tiny | iresnet18 | iresnet34 | iresnet50 | iresnet100.")]
_Width = Annotated[int, typer.Option(help="Channels of the first stage (64 as in ArcFace).")]
_Embedding = Annotated[int, typer.Option(help="Embedding size.")]
_ImageSize = Annotated[int, typer.Option(help="Input side in pixels (112).")]
_Loss = Annotated[str, typer.Option(help="arcface | cosface (pytorch-metric-learning).")]
_Margin = Annotated[float | None, typer.Option(help="ArcFace angular margin in radians (0.5) or CosFace margin "
                                                    "(0.35).")]
_Scale = Annotated[float, typer.Option(help="Logit scale.")]
_Optimizer = Annotated[str, typer.Option(help="sgd | adamw.")]
_LR = Annotated[float, typer.Option(help="Peak learning rate (cosine decay).")]
_Batch = Annotated[int, typer.Option(help="Batch size.")]
_Epochs = Annotated[int, typer.Option(help="Epochs (unless --max-steps).")]
_MaxSteps = Annotated[int | None, typer.Option(help="Steps, overriding --epochs.")]
_CurriculumBy = Annotated[str, typer.Option(help="Identity order for curriculum: dataset (curriculum_rank from "
                                                 "sameid augment) | phash.")]
_Seed = Annotated[int, typer.Option(help="Seed.")]
_Device = Annotated[str | None, typer.Option(help="cuda | cpu.")]
_Amp = Annotated[bool, typer.Option(help="bf16 autocast on cuda.")]
_Workers = Annotated[int, typer.Option(help="DataLoader workers.")]


@recognition_app.command("train")
@user_errors
def recognition_train(
    dataset: _TrainDataset,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run dir to write.")],
    order: Annotated[str, typer.Option(help="curriculum (easy to hard) | shuffle.")] = "curriculum",
    pairs: _Pairs = None, backbone: _Backbone = "iresnet50", width: _Width = 64, embedding_size: _Embedding = 512,
    image_size: _ImageSize = 112, loss: _Loss = "arcface", margin: _Margin = None, scale: _Scale = 64.0,
    optimizer: _Optimizer = "sgd", learning_rate: _LR = 0.1, batch_size: _Batch = 128, epochs: _Epochs = 20,
    max_steps: _MaxSteps = None, curriculum_by: _CurriculumBy = "dataset", seed: _Seed = 0, device: _Device = None,
    amp: _Amp = False, workers: _Workers = 0,
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint.")] = False,
):
    """Train a face-recognition model on a dataset dir (one class per identity)."""
    from .recognition.train import train_recognition

    config = _recognition_config(dataset, out, order, pairs, backbone, width, embedding_size, image_size, loss, margin,
                                 scale, optimizer, learning_rate, batch_size, epochs, max_steps, curriculum_by, seed,
                                 device, amp, workers)
    typer.echo(train_recognition(config, resume=resume).describe())


@recognition_app.command("eval")
@user_errors
def recognition_eval(
    run: Annotated[Path, typer.Argument(help="Recognition run dir.")],
    pairs: Annotated[Path, typer.Option(help="pairs.txt (LFW format).")],
    images: Annotated[Path, typer.Option(help="Dataset dir, or a folder in LFW's <name>/<name>_<n:04d>.jpg layout.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="JSON file for the metrics.")] = None,
    device: _Device = None,
):
    """10-fold verification accuracy and TAR@FAR of a recognition run on a pairs file."""
    from .recognition.evaluate import evaluate_recognition

    typer.echo(evaluate_recognition(run, pairs, images, out=out, device=device).describe())


@recognition_app.command("compare")
@user_errors
def recognition_compare(
    dataset: _TrainDataset,
    pairs: Annotated[Path, typer.Option(help="pairs.txt over held-out identities (sameid recognition pairs).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for both runs and comparison.json.")],
    backbone: _Backbone = "iresnet50", width: _Width = 64, embedding_size: _Embedding = 512,
    image_size: _ImageSize = 112, loss: _Loss = "arcface", margin: _Margin = None, scale: _Scale = 64.0,
    optimizer: _Optimizer = "sgd", learning_rate: _LR = 0.1, batch_size: _Batch = 128, epochs: _Epochs = 20,
    max_steps: _MaxSteps = None, curriculum_by: _CurriculumBy = "dataset", seed: _Seed = 0, device: _Device = None,
    amp: _Amp = False, workers: _Workers = 0,
    resume: Annotated[bool, typer.Option(help="Continue interrupted runs.")] = False,
):
    """The curriculum vs shuffle experiment: the same model trained in both orders, verified on the same pairs."""
    from .recognition.experiment import compare_orders

    config = _recognition_config(dataset, out, "curriculum", pairs, backbone, width, embedding_size, image_size, loss,
                                 margin, scale, optimizer, learning_rate, batch_size, epochs, max_steps, curriculum_by,
                                 seed, device, amp, workers)
    typer.echo(compare_orders(config, pairs, resume=resume).describe())




experiment_app = typer.Typer(help="Experiments that test a claim of the papers end to end.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("claim")
@user_errors
def experiment_claim(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the world, the runs, images, the report "
                                                          "(eval/) and the table (table.md).")] = Path("runs/claim"),
    steps: Annotated[int, typer.Option(help="Training steps per model (-a and -b get the same).")] = 400,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; each trains both modes.")] = "0,1,2",
    inference_steps: Annotated[int, typer.Option(help="Denoising steps per generated image.")] = 20,
    prompts_per_subject: Annotated[int, typer.Option(help="Generations per held-out identity and model, each "
                                                          "asking for a layout unlike the reference's.")] = 12,
    emphasis: Annotated[str, typer.Option(help="What equation 3's second term weighs in RetriNet's training: "
                                               "figure (default, as the world base was pretrained) | face (the "
                                               "paper's head box).")] = "figure",
    emphasis_weight: Annotated[float, typer.Option(help="lambda of that term (4 for the figure; the paper's "
                                                        "face term is small, e.g. 0.1).")] = 4.0,
    base: Annotated[Path | None, typer.Option(help="A pretrained world base folder (default: the one that ships "
                                                   "with sameid).")] = None,
    pretrain_base: Annotated[bool, typer.Option(help="Pretrain a world base per seed instead (about 12 CPU "
                                                     "minutes each at the default --base-steps).")] = False,
    base_steps: Annotated[int | None, typer.Option(
        help="With --pretrain-base: text-to-image steps of each seed's base (default: BaseSettings').")] = None,
):
    """RetriBooru's claim (§3.1) in the small world: RetriNet -a vs -b vs untrained on a pretrained world base,
    scored by `sameid eval`'s world metrics; one table (table.md) and the report (eval/report.html)."""
    from .demo.claim import ClaimSettings, run_claim
    from .demo.world_base import BaseSettings
    from .generate.prompts import parse_seeds

    if base_steps is not None and not pretrain_base:
        raise SameIdError("--base-steps applies to --pretrain-base only")
    if base is not None and pretrain_base:
        raise SameIdError("give --base or --pretrain-base, not both")
    pretrain = BaseSettings(**({} if base_steps is None else {"steps": base_steps})) if pretrain_base else None
    result = run_claim(out, ClaimSettings(steps=steps, seeds=parse_seeds(seeds), inference_steps=inference_steps,
                                          prompts_per_subject=prompts_per_subject, emphasis=emphasis,
                                          emphasis_weight=emphasis_weight,
                                          base=None if base is None else str(base), pretrain=pretrain),
                       echo=typer.echo, progress=show_progress())
    say(result)


@experiment_app.command("world-base")
@user_errors
def experiment_world_base(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the pretrained base (Stable Diffusion "
                                                          "layout + world_base.json).")],
    steps: Annotated[int, typer.Option(help="Text-to-image training steps (3,000: about 12 CPU minutes).")] = 3000,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation and the data order.")] = 0,
    holdout_seed: Annotated[int, typer.Option(help="The held-out identities left out of pretraining are those a "
                                                   "run with this holdout seed keeps out.")] = 0,
    world: Annotated[Path | None, typer.Option(help="The world dataset dir (default: the default world, written "
                                                    "to <out>.world).")] = None,
):
    """Pretrain the small world's base (the part Stable Diffusion plays for RetriNet) as the one that ships with
    sameid was made: a text-to-image model on full captions, without the held-out identities."""
    import pandas as pd

    from .demo.claim import ClaimSettings, held_out
    from .demo.world_base import BaseSettings, pretrain_world_base
    from .sources.world import WorldSettings, make_world

    settings = BaseSettings(steps=steps)  # checked before anything is written
    if world is not None and not (world / "manifest.parquet").is_file():
        raise SameIdError(f"--world {world}: no manifest.parquet; write a world with sameid.sources.world.make_world "
                          "or leave --world out")
    folder = world if world is not None else make_world(out.with_name(out.name + ".world"), WorldSettings())
    manifest = pd.read_parquet(folder / "manifest.parquet")
    held = held_out(manifest, ClaimSettings(holdout_seed=holdout_seed))
    result = pretrain_world_base(folder, out, settings, seed=seed, exclude=held, echo=typer.echo, log_every=250)
    typer.echo(f"{'reused' if result.reused else 'pretrained'} {result.path}: loss {result.losses[0]:.4f} -> "
               f"{result.losses[-1]:.4f} ({result.seconds:.0f} s); held out: {', '.join(held)}")


@app.command()
@user_errors
def personalize(
    source: Annotated[Path, typer.Argument(help="A folder of real images of one instance (the first --real are "
                                                "trained on, the rest held out), or a dataset dir written by "
                                                "`sameid build` (each identity in turn is the instance).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for synthetic/, synthetic.jsonl, adapter/ "
                                                          "(peft), evaluation.json, scores.png; per instance under "
                                                          "instances/ for a dataset, with summary.json and report.md.")],
    category: Annotated[str, typer.Option(help="The instance's category (prompts, generic negatives).")] = "figure",
    backbone: Annotated[str, typer.Option(help="efficientnet-lite0 (offline) | dino:<id or path> | "
                                               "clip:<id or path>.")] = "efficientnet-lite0",
    generators: Annotated[str, typer.Option(help="Comma-separated: cut-paste[:<backgrounds dir>] | "
                                                 "reference:<sameid run dir> | ip-adapter:<SD 1.5 id or dir> | "
                                                 "dreambooth:<SD 1.5 id or dir> | base:<SD 1.5 id or dir> "
                                                 "(generic negatives).")] = "cut-paste",
    positives: Annotated[int, typer.Option(help="Synthetic positives, shared among the generators.")] = 32,
    generic_negatives: Annotated[int, typer.Option(help="Generic images of the category from a base:<model> "
                                                        "generator.")] = 16,
    real: Annotated[int, typer.Option(help="Real images of the instance to train on (the paper: 3).")] = 3,
    masks: Annotated[Path | None, typer.Option(help="Folder of <image stem>.png masks of the instance "
                                                    "(default: segmented).")] = None,
    segmenter: Annotated[str, typer.Option(help="Segmenter where no mask is given: border-colors | grabcut | "
                                                "mediapipe-selfie.")] = "border-colors",
    negatives: Annotated[Path | None, typer.Option(help="Folder of images of other instances (training "
                                                        "negatives).")] = None,
    distractors: Annotated[Path | None, typer.Option(help="Folder of images of other instances for the "
                                                          "evaluation (not trained on).")] = None,
    instance_column: Annotated[str, typer.Option(help="Dataset dir: the manifest column whose groups are the "
                                                      "instances (identity, character, ...).")] = "identity",
    instance: Annotated[list[str] | None, typer.Option(help="Dataset dir: only this instance; repeat it.")] = None,
    negative_fraction: Annotated[float, typer.Option(help="Dataset dir: share of the other instances used as "
                                                          "training negatives; the rest are distractors.")] = 0.5,
    steps: Annotated[int, typer.Option(help="Fine-tuning steps.")] = 60,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate of the LoRA weights.")] = 1e-4,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 4,
    positives_per_step: Annotated[int, typer.Option(help="Synthetic positives per step.")] = 8,
    negatives_per_step: Annotated[int, typer.Option(help="Negatives per step.")] = 32,
    temperature: Annotated[float, typer.Option(help="InfoNCE temperature (the paper: 0.07).")] = 0.07,
    checkpoint_every: Annotated[int, typer.Option(help="Save a fine-tuning checkpoint every this many steps.")] = 20,
    diffusion_steps: Annotated[int, typer.Option(help="Denoising steps of the diffusion generators.")] = 25,
    dreambooth_steps: Annotated[int, typer.Option(help="DreamBooth-LoRA training steps.")] = 400,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic images, the split and the fine-tuning.")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu | cuda (default: cuda when available).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a run with other settings in --out (its files "
                                                 "only).")] = False,
):
    """Personalize a backbone to one instance from a few real images: synthetic positives, contrastive LoRA,
    evaluation against the pretrained backbone (Personalized Representation from Personalized Generation)."""
    from .personalize import FinetuneConfig, PersonalizeConfig
    from .personalize import personalize as run_personalize
    from .verbosity import show_progress

    tuning = FinetuneConfig(steps=steps, learning_rate=learning_rate, rank=rank,
                            positives_per_step=positives_per_step, negatives_per_step=negatives_per_step,
                            temperature=temperature, checkpoint_every=checkpoint_every, seed=seed)
    config = PersonalizeConfig(
        source=str(source), out=str(out), category=category, backbone=backbone,
        generators=tuple(generators.split(",")), positives=positives, generic_negatives=generic_negatives,
        real=real, masks=None if masks is None else str(masks), segmenter=segmenter,
        negatives=None if negatives is None else str(negatives),
        distractors=None if distractors is None else str(distractors), instance_column=instance_column,
        instances=tuple(instance or ()), negative_fraction=negative_fraction, diffusion_steps=diffusion_steps,
        dreambooth_steps=dreambooth_steps, finetune=tuning, device=device)
    result = run_personalize(config, overwrite=overwrite, progress=show_progress())
    for line in result.describe():
        typer.echo(line)


if __name__ == "__main__":  # pragma: no cover
    app()
