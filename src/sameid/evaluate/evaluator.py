"""Scoring a generations manifest: build the embedders once, run every metric, one row per generation.

The metrics are the registry's (:mod:`sameid.evaluate.registry`: name -> factory); the embedders come from the backend registry by spec
(``clip:<id or path>``, ``dino:<id or path>``, face embedder ``dlib``), so a user swaps one by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .embeddings import EmbeddingCache, EmbeddingStore
from .registry import MetricContext, check_metrics, default_metrics, metric_names, metric_spec
from .vqa_score import DEFAULT_QUESTIONS

# first_reference: the reference the report's best and worst examples show beside the generation
PER_IMAGE_COLUMNS = ("row", "image", "subject", "model", "seed", "prompt", "n_references", "first_reference")


@dataclass
class EvalConfig:
    """Which metrics, and which model plays each part (registry specs)."""

    metrics: tuple[str, ...] = field(default_factory=default_metrics)  # names in the metric registry
    clip: str = "clip"  # image_embedder spec: clip | clip:<id or path>
    dino: str = "dino"  # image_embedder spec: dino | dino:<id or path>
    effnet: str = "efficientnet-lite0"  # image_embedder spec of the offline effnet metric
    face: str = "dlib"  # face_embedder spec
    vqa: str | None = None  # vqa spec (transformers:<id or path>), needed for the vqa metric
    vqa_text: str = "clip"  # text_embedder for the answers; "clip" = the CLIP of ``clip`` (as the paper)
    vqa_questions: tuple[str, ...] = DEFAULT_QUESTIONS
    cache_dir: str | os.PathLike | None = None  # None: embed everything afresh, keep nothing
    batch_size: int = 32
    decode_workers: int | None = None  # image loading processes beside the model; None: one per two cores
    progress: bool = False  # progress bars (stderr) over the per-image work


@dataclass
class Evaluation:
    per_image: pd.DataFrame
    stores: dict[str, EmbeddingStore] = field(default_factory=dict)  # what was embedded, for counts and tests
    face_detection_rate: float | None = None

    @property
    def model_calls(self) -> int:
        return sum(store.model_calls for store in self.stores.values())


def _check_metrics(metrics) -> tuple[str, ...]:
    return check_metrics(metrics)


def evaluate_generations(generations: pd.DataFrame, config: EvalConfig | None = None) -> Evaluation:
    """Score every row of a checked manifest frame (:func:`sameid.evaluate.manifest.read_generations`): one
    metric object per requested name, built by its registry factory, in registry order."""
    config = config or EvalConfig()
    requested = set(check_metrics(config.metrics, config))
    metrics = [name for name in metric_names() if name in requested]
    context = MetricContext(config, EmbeddingCache(config.cache_dir))
    images = generations["image"].tolist()
    references = [list(refs) for refs in generations["references"]]
    inputs = {"images": images, "references": references, "prompts": generations["prompt"].tolist(),
              # multi-subject rows: [{identity, references}, ...]; None for a single-subject row
              "subjects": generations["subjects"].tolist() if "subjects" in generations else [None] * len(images)}
    per_image = pd.DataFrame({
        "row": generations["row"].to_numpy() if "row" in generations else np.arange(len(generations)),
        "image": images, "subject": generations["subject"].to_numpy(), "model": generations["model"].to_numpy(),
        "seed": generations["seed"].astype("Int64").to_numpy() if "seed" in generations else pd.NA,
        "prompt": generations["prompt"].to_numpy(), "n_references": [len(refs) for refs in references],
        "first_reference": [refs[0] if refs else None for refs in references],
    })
    detection_rate = None
    for name in metrics:
        metric = metric_spec(name).build(context)
        metric.update(*(inputs[key] for key in getattr(metric, "inputs", ("images", "references"))))
        values = metric.compute()
        per_image[name] = values
        extra = getattr(metric, "extra_columns", None)
        for column, column_values in (extra(values) if extra is not None else {}).items():
            per_image[column] = column_values
        if getattr(metric, "detection_rate", None) is not None:
            detection_rate = metric.detection_rate
    return Evaluation(per_image, context.stores, detection_rate)
