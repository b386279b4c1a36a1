"""``sameid personalize`` as one function: real images of an instance in, a personalized backbone and its evaluation out.

The flow of Personalized Representation from Personalized Generation (arXiv 2412.16156, method and evaluation), per instance:

1. synthetic images (:mod:`.synthetic`): positives from the chosen generators, generic negatives from a base model
   when asked, every image listed in ``synthetic.jsonl``;
2. contrastive LoRA fine-tuning of the backbone (:mod:`.finetune`), saved with peft in ``adapter/``;
3. the pretrained and the personalized backbone side by side on held-out real images among distractors
   (:mod:`.evaluation`): ``evaluation.json``, ``scores.parquet``, ``scores.png``.

The input is a folder of images of one instance (output in ``--out``) or a sameid dataset dir, where every group of
``instance_column`` in turn is the instance (output in ``--out/instances/<name>/``; ``summary.json`` and
``report.md`` hold the per-instance figures and their means). Settings are checked before anything is written; a
second run with the same settings resumes (finished instances are kept, fine-tuning continues from its last
checkpoint, synthetic images already written are kept), with other settings it is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_json_atomic, write_parquet_atomic, write_text_atomic
from ..errors import ImageError, SameIdError
from ..images import load_image
from .evaluation import BACKBONES, METRICS, classification_scores, compare, mean_scores, plot_scores
from .finetune import FinetuneConfig, finetune
from .instance import Instance, instance_from_folder, instances_from_dataset
from .synthetic import (
    SYNTHETIC_DIR,
    SYNTHETIC_FILE,
    SyntheticImage,
    create_generator,
    generator_folder,
    parse_generators,
    split_count,
    write_synthetic_manifest,
)

SETTINGS_FILE = "personalize.json"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
INSTANCES_DIR = "instances"
ADAPTER_DIR = "adapter"
EVALUATION_FILE = "evaluation.json"
#: Everything a run writes at the top of --out (what --overwrite removes; nothing else is touched).
OUTPUT_ENTRIES = (SETTINGS_FILE, SUMMARY_FILE, REPORT_FILE, INSTANCES_DIR, "scores.png", SYNTHETIC_DIR,
                  SYNTHETIC_FILE, ADAPTER_DIR, EVALUATION_FILE, "scores.parquet", "checkpoints", "loss.jsonl")
NEGATIVE_GENERATORS = ("base",)


@dataclass
class PersonalizeConfig:
    """Every setting of ``sameid personalize``; checked at construction, before anything is written."""

    source: str
    out: str
    category: str = "figure"
    backbone: str = "efficientnet-lite0"
    generators: tuple[str, ...] = ("cut-paste",)
    positives: int = 32
    generic_negatives: int = 16
    real: int = 3
    masks: str | None = None
    negatives: str | None = None
    distractors: str | None = None
    instance_column: str = "identity"
    instances: tuple[str, ...] = ()
    negative_fraction: float = 0.5
    segmenter: str = "border-colors"
    subject: str = ""
    diffusion_steps: int = 25
    dreambooth_steps: int = 400
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    device: str | None = None

    def __post_init__(self):
        source = Path(self.source).expanduser()
        if not source.exists():
            raise SameIdError(f"{source} not found: give a folder of images of the instance or a dataset dir "
                              "written by `sameid build`")
        if not source.is_dir():
            raise SameIdError(f"{source} is a file: give a folder of images of the instance or a dataset dir")
        self.generators = tuple(parse_generators(",".join(self.generators)))
        if not any(spec.partition(":")[0] not in NEGATIVE_GENERATORS for spec in self.generators):
            raise SameIdError("--generators: name at least one generator of positives (cut-paste, reference, "
                              "ip-adapter, dreambooth)")
        if self.real < 1 or self.positives < 1 or self.generic_negatives < 0:
            raise SameIdError(f"--real and --positives must be at least 1 and --generic-negatives at least 0, got "
                              f"{self.real}, {self.positives}, {self.generic_negatives}")
        if not 0 < self.negative_fraction < 1:
            raise SameIdError(f"--negative-fraction must be between 0 and 1, got {self.negative_fraction}")
        if not self.category.strip():
            raise SameIdError("--category must name the instance's category, e.g. figure, dog, mug")
        if self.backbone.partition(":")[0] not in ("efficientnet-lite0", "dino", "clip"):
            raise SameIdError(f"--backbone {self.backbone!r}: use efficientnet-lite0, dino:<id or path> or "
                              "clip:<id or path>")
        for name in ("masks", "negatives", "distractors"):
            value = getattr(self, name)
            if value and not Path(value).expanduser().is_dir():
                raise SameIdError(f"--{name} {value}: not a folder")

    @property
    def is_dataset(self) -> bool:
        return (Path(self.source).expanduser() / "manifest.parquet").is_file()

    def settings(self) -> dict:
        values = asdict(self)
        values["source"] = str(Path(self.source).expanduser().resolve())
        values.pop("out")
        values.pop("device")
        return values


@dataclass
class InstanceResult:
    name: str
    folder: Path
    scores: dict[str, dict[str, float]]
    synthetic: dict[str, int]
    losses: list[float]
    held_out: int
    distractors: int
    resumed: bool = False


@dataclass
class PersonalizeResult:
    out: Path
    config: PersonalizeConfig
    instances: list[InstanceResult]
    mean: dict[str, dict[str, float]]
    report: Path | None

    def describe(self) -> list[str]:
        lines = [f"personalized {self.config.backbone} for {len(self.instances)} instance(s) of "
                 f"{self.config.category!r} with {', '.join(self.config.generators)}: {self.out}"]
        if self.mean:
            lines.append("mean over instances   " + "   ".join(f"{m:>7}" for m in METRICS))
            for backbone in BACKBONES:
                lines.append(f"  {backbone:<19} " + "   ".join(f"{self.mean[backbone][m]:7.3f}" for m in METRICS))
            wins = sum(r.scores["personalized"]["pr_auc"] > r.scores["pretrained"]["pr_auc"] for r in self.instances)
            lines.append(f"personalized beats pretrained on PR-AUC for {wins} of {len(self.instances)} instance(s)")
        if len(self.instances) == 1:
            lines.append(f"adapter: {self.instances[0].folder / ADAPTER_DIR} (load: "
                         "sameid.backends.backbone.load_personalized, or image embedder personalized:<dir>)")
        if self.report:
            lines.append(f"report: {self.report}")
        return lines


class _Features:
    """Trunk features of images by path, computed once (the trunk is frozen, so they serve every instance)."""

    def __init__(self, backbone, batch_size: int = 32):
        self.backbone = backbone
        self.batch_size = batch_size
        self.cache: dict[str, object] = {}

    def __call__(self, paths: list[str]):
        import torch

        missing = [p for p in dict.fromkeys(paths) if p not in self.cache]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            images = []
            for path in chunk:
                try:
                    images.append(load_image(path)[0])
                except ImageError as error:
                    raise SameIdError(f"personalize: {error}") from error
            for path, feature in zip(chunk, self.backbone.trunk_features(images, self.batch_size)):
                self.cache[path] = feature
        return torch.stack([self.cache[p] for p in paths]) if paths else torch.zeros(0)


def _prepare_out(out: Path, settings: dict, overwrite: bool) -> None:
    settings_path = out / SETTINGS_FILE
    if out.exists() and any(out.iterdir()):
        if settings_path.is_file():
            previous = json.loads(settings_path.read_text(encoding="utf-8"))
            if previous != json.loads(json.dumps(settings, default=str)) and not overwrite:
                raise SameIdError(f"{out} holds a personalize run with other settings ({settings_path}); pass "
                                  "--overwrite to replace it, or choose another --out")
        elif not overwrite:
            raise SameIdError(f"{out} exists and is not a personalize run; choose an empty or new --out (or "
                              "--overwrite to write there anyway)")
        if overwrite and settings_path.is_file() and json.loads(settings_path.read_text(encoding="utf-8")) != \
                json.loads(json.dumps(settings, default=str)):
            for name in OUTPUT_ENTRIES:
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    write_json_atomic(settings_path, settings)


def _generators(config: PersonalizeConfig) -> list:
    """Every generator of ``config``, built (and so checked: folders, names) before anything is written; models
    load only when a generator first generates."""
    options = dict(segmenter=config.segmenter, steps=config.diffusion_steps, train_steps=config.dreambooth_steps,
                   subject=config.subject or None, device=config.device)
    return [create_generator(spec, **options) for spec in config.generators]


def _synthesize(config: PersonalizeConfig, instance: Instance, folder: Path, progress: bool
                ) -> list[SyntheticImage]:
    generators = _generators(config)
    positives = [g for g in generators if g.role == "positive"]
    negatives = [g for g in generators if g.role == "negative"]
    records: list[SyntheticImage] = []
    for generator, count in zip(positives, split_count(config.positives, len(positives))):
        records += generator.generate(instance, generator_folder(folder, generator.spec), count,
                                      config.finetune.seed, out=folder, progress=progress)
    for generator, count in zip(negatives, split_count(config.generic_negatives, max(1, len(negatives)))):
        if count:
            records += generator.generate(instance, generator_folder(folder, generator.spec), count,
                                          config.finetune.seed, out=folder, progress=progress)
    write_synthetic_manifest(folder / SYNTHETIC_FILE, records)
    return records


def _personalize_instance(config: PersonalizeConfig, instance: Instance, folder: Path, features: _Features,
                          pretrained_embeddings: dict[str, np.ndarray], progress: bool) -> InstanceResult:
    from ..backends.backbone import load_backbone, save_adapter

    evaluation_path = folder / EVALUATION_FILE
    if evaluation_path.is_file() and (folder / ADAPTER_DIR / "adapter_config.json").is_file():
        done = json.loads(evaluation_path.read_text(encoding="utf-8"))
        return InstanceResult(name=instance.name, folder=folder, scores=done["scores"], synthetic=done["synthetic"],
                              losses=done["losses"], held_out=done["held_out"], distractors=done["distractors"],
                              resumed=True)
    records = _synthesize(config, instance, folder, progress)
    synthetic_positive = [str(folder / r.image) for r in records if r.role == "positive"]
    synthetic_negative = [str(folder / r.image) for r in records if r.role == "negative"]
    negatives = instance.negatives + synthetic_negative
    if not negatives:
        raise SameIdError(f"instance {instance.name}: no negatives: give --negatives DIR (other instances of the "
                          f"category), a dataset dir, or a base:<model> generator for generic negatives")

    backbone = load_backbone(config.backbone)  # fresh: LoRA is injected in place
    if config.device:
        backbone.module.to(config.device)
    result = finetune(backbone, features(instance.real), features(synthetic_positive), features(negatives),
                      config.finetune, folder, progress=progress)
    save_adapter(result.peft_model, backbone, folder / ADAPTER_DIR,
                 extra={"instance": instance.name, "category": instance.category, "real": instance.real})
    write_text_atomic(folder / "loss.jsonl", "".join(json.dumps({"step": i + 1, "loss": v}) + "\n"
                                                     for i, v in enumerate(result.losses)))

    counts: dict[str, int] = {}
    for record in records:
        counts[record.generator] = counts.get(record.generator, 0) + 1
    scores: dict[str, dict[str, float]] = {}
    if instance.can_evaluate:
        gallery = instance.held_out + instance.distractors
        labels = np.r_[np.ones(len(instance.held_out), bool), np.zeros(len(instance.distractors), bool)]
        personalized = backbone.embed_features(features(instance.real + gallery))
        pretrained = np.stack([pretrained_embeddings[p] for p in instance.real + gallery])
        split = len(instance.real)
        embeddings = {"pretrained": (pretrained[:split], pretrained[split:]),
                      "personalized": (personalized[:split], personalized[split:])}
        scores = compare(embeddings, labels)
        per_image = {name: classification_scores(*pair) for name, pair in embeddings.items()}
        import pandas as pd

        write_parquet_atomic(folder / "scores.parquet", pd.DataFrame({
            "image": gallery, "instance": labels, **{f"{n}_score": s for n, s in per_image.items()}}))
        plot_scores({name: (s[labels], s[~labels]) for name, s in per_image.items()}, folder / "scores.png",
                    title=f"{instance.name}: PR-AUC " + ", ".join(
                        f"{n} {scores[n]['pr_auc']:.3f}" for n in BACKBONES))
    write_json_atomic(evaluation_path, {
        "instance": instance.name, "scores": scores, "synthetic": counts, "losses": result.losses,
        "held_out": len(instance.held_out), "distractors": len(instance.distractors), "real": instance.real,
        "negatives": len(negatives)})
    return InstanceResult(name=instance.name, folder=folder, scores=scores, synthetic=counts, losses=result.losses,
                          held_out=len(instance.held_out), distractors=len(instance.distractors))


def _report(out: Path, config: PersonalizeConfig, results: list[InstanceResult], mean) -> Path:
    lines = [f"# Personalized representations: {config.backbone}", "",
             "Personalized Representation from Personalized Generation (arXiv 2412.16156): each instance's backbone "
             "is fine-tuned with LoRA and InfoNCE on its real images and synthetic positives, then scored against "
             "the pretrained backbone on held-out real images among distractors.", "",
             f"Generators: {', '.join(config.generators)}; {config.positives} synthetic positives, "
             f"{config.real} real images per instance; {config.finetune.steps} steps, rank {config.finetune.rank}, "
             f"learning rate {config.finetune.learning_rate}, seed {config.finetune.seed}.", "",
             "| instance | held out | distractors | " + " | ".join(f"{m} pre → pers" for m in METRICS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " |"]
    for r in results:
        if r.scores:
            lines.append(f"| {r.name} | {r.held_out} | {r.distractors} | " + " | ".join(
                f"{r.scores['pretrained'][m]:.3f} → {r.scores['personalized'][m]:.3f}" for m in METRICS) + " |")
    if mean:
        lines.append("| **mean** | | | " + " | ".join(
            f"**{mean['pretrained'][m]:.3f} → {mean['personalized'][m]:.3f}**" for m in METRICS) + " |")
        lines += ["", "Score distributions (mean cosine similarity of each held-out or distractor image to the real "
                  "images), all instances pooled:", "", "![scores](scores.png)"]
    path = out / REPORT_FILE
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def personalize(config: PersonalizeConfig, *, overwrite: bool = False, progress: bool = True) -> PersonalizeResult:
    """Run the personalization of every instance of ``config.source`` (see the module doc)."""
    import pandas as pd

    from ..backends.backbone import load_backbone

    if config.is_dataset:
        instances = instances_from_dataset(config.source, config.category, column=config.instance_column,
                                           real=config.real, seed=config.finetune.seed,
                                           negative_fraction=config.negative_fraction,
                                           names=list(config.instances) or None)
    else:
        if config.instances:
            raise SameIdError("--instance selects identities of a dataset dir; the source is a folder of one instance")
        instances = [instance_from_folder(config.source, config.category, real=config.real, masks=config.masks,
                                          negatives=config.negatives, distractors=config.distractors)]
    for instance in instances:  # every real image readable before anything is written
        for path in instance.real:
            try:
                load_image(path)
            except ImageError as error:
                raise SameIdError(f"personalize: {error}") from error
    out = Path(config.out).expanduser()
    _generators(config)  # a bad generator argument (a backgrounds folder without images) fails before writing
    backbone = load_backbone(config.backbone)  # a missing model fails here, before writing
    if config.device:
        backbone.module.to(config.device)
    _prepare_out(out, config.settings(), overwrite)

    features = _Features(backbone)
    evaluated = [p for inst in instances if inst.can_evaluate for p in inst.real + inst.held_out + inst.distractors]
    pretrained_embeddings = dict(zip(dict.fromkeys(evaluated), backbone.embed_features(features(
        list(dict.fromkeys(evaluated)))))) if evaluated else {}
    results = []
    for instance in instances:
        folder = out / INSTANCES_DIR / instance.slug if config.is_dataset else out
        results.append(_personalize_instance(config, instance, folder, features, pretrained_embeddings, progress))
    scored = [r for r in results if r.scores]
    mean = mean_scores([r.scores for r in scored])
    report = None
    if scored:
        pooled = {}
        for name in BACKBONES:
            frames = [pd.read_parquet(r.folder / "scores.parquet") for r in scored]
            table = pd.concat(frames)
            pooled[name] = (table.loc[table["instance"], f"{name}_score"].to_numpy(),
                            table.loc[~table["instance"], f"{name}_score"].to_numpy())
        plot_scores(pooled, out / "scores.png", title=f"{len(scored)} instance(s), pooled: mean PR-AUC " + ", ".join(
            f"{n} {mean[n]['pr_auc']:.3f}" for n in BACKBONES))
        report = _report(out, config, results, mean)
    write_json_atomic(out / SUMMARY_FILE, {
        "settings": config.settings(), "mean": mean,
        "instances": {r.name: {"scores": r.scores, "synthetic": r.synthetic, "held_out": r.held_out,
                               "distractors": r.distractors, "final_loss": r.losses[-1] if r.losses else None,
                               "first_loss": r.losses[0] if r.losses else None} for r in results}})
    return PersonalizeResult(out=out, config=config, instances=results, mean=mean, report=report)
