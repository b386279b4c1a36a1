"""Scoring a generations manifest: build the embedders once, run every metric, one row per generation.

The metrics are :mod:`sameid.evaluate.metrics`; the embedders come from the backend registry by spec
(``clip:<id or path>``, ``dino:<id or path>``, face embedder ``dlib``), so a user swaps one by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..backends.registry import create_backend
from ..errors import SameIdError
from .embeddings import EmbeddingCache, EmbeddingStore
from .metrics import DEFAULT_METRICS, METRICS, FaceSimilarity, ReferenceSimilarity, TextAlignment, face_store
from .vqa_score import DEFAULT_QUESTIONS, AnswerStore, VQAScore

# first_reference: the reference the report's best and worst examples show beside the generation
PER_IMAGE_COLUMNS = ("row", "image", "subject", "model", "seed", "prompt", "n_references", "first_reference")


@dataclass
class EvalConfig:
    """Which metrics, and which model plays each part (registry specs)."""

    metrics: tuple[str, ...] = DEFAULT_METRICS
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


@dataclass
class Evaluation:
    per_image: pd.DataFrame
    stores: dict[str, EmbeddingStore] = field(default_factory=dict)  # what was embedded, for counts and tests
    face_detection_rate: float | None = None

    @property
    def model_calls(self) -> int:
        return sum(store.model_calls for store in self.stores.values())


def _check_metrics(metrics) -> tuple[str, ...]:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise SameIdError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if not metrics:
        raise SameIdError("no metric chosen")
    return tuple(dict.fromkeys(metrics))


def evaluate_generations(generations: pd.DataFrame, config: EvalConfig | None = None) -> Evaluation:
    """Score every row of a checked manifest frame (:func:`sameid.evaluate.manifest.read_generations`)."""
    config = config or EvalConfig()
    metrics = _check_metrics(config.metrics)
    cache = EmbeddingCache(config.cache_dir)
    images = generations["image"].tolist()
    references = [list(refs) for refs in generations["references"]]
    per_image = pd.DataFrame({
        "row": generations["row"].to_numpy() if "row" in generations else np.arange(len(generations)),
        "image": images, "subject": generations["subject"].to_numpy(), "model": generations["model"].to_numpy(),
        "seed": generations["seed"].astype("Int64").to_numpy() if "seed" in generations else pd.NA,
        "prompt": generations["prompt"].to_numpy(), "n_references": [len(refs) for refs in references],
        "first_reference": [refs[0] if refs else None for refs in references],
    })
    stores: dict[str, EmbeddingStore] = {}
    detection_rate = None

    def image_store(embedder) -> EmbeddingStore:
        # an embedder with a pixel_preparer has its pixels prepared in the decode workers, beside the model
        preparer = getattr(embedder, "pixel_preparer", None)
        embed = embedder.embed_pixels if preparer is not None else embedder.embed_images
        return EmbeddingStore(embed, f"{embedder.identity}:image", inputs="image", cache=cache,
                              batch_size=config.batch_size, prepare=preparer, decode_workers=config.decode_workers)

    def text_store(embedder) -> EmbeddingStore:
        # one store per text model: two stores of one model would overwrite each other's cache file
        name = f"{embedder.identity}:text"
        if name not in stores:
            stores[name] = EmbeddingStore(embedder.embed_texts, name, inputs="text", cache=cache,
                                          batch_size=config.batch_size)
        return stores[name]

    if "vqa" in metrics:
        if not config.vqa:
            raise SameIdError("the vqa metric needs a VQA model: --vqa transformers:<id or path> "
                              "(the paper uses an InstructBLIP model)")
        # "clip" reuses the image embedder's CLIP (one model in memory, one text store and cache file)
        text = (create_backend("image_embedder", config.clip) if config.vqa_text == "clip"
                else create_backend("text_embedder", config.vqa_text))
        answers = AnswerStore(create_backend("vqa", config.vqa), folder=config.cache_dir)
        metric = VQAScore(answers, text_store(text), config.vqa_questions)
        metric.update(images, references)
        per_image["vqa"] = metric.compute()
    if "clip_i" in metrics or "clip_t" in metrics:
        clip = create_backend("image_embedder", config.clip)
        stores["clip_image"] = image_store(clip)
        if "clip_i" in metrics:
            metric = ReferenceSimilarity(stores["clip_image"], "clip_i")
            metric.update(images, references)
            per_image["clip_i"] = metric.compute()
        if "clip_t" in metrics:
            metric = TextAlignment(stores["clip_image"], text_store(clip), "clip_t")
            metric.update(images, generations["prompt"].tolist())
            per_image["clip_t"] = metric.compute()
            per_image["clip_score"] = TextAlignment.clip_score(per_image["clip_t"].to_numpy())
    if "dino" in metrics:
        dino = create_backend("image_embedder", config.dino)
        stores["dino"] = image_store(dino)
        metric = ReferenceSimilarity(stores["dino"], "dino")
        metric.update(images, references)
        per_image["dino"] = metric.compute()
    if "effnet" in metrics:
        stores["effnet"] = image_store(create_backend("image_embedder", config.effnet))
        metric = ReferenceSimilarity(stores["effnet"], "effnet")
        metric.update(images, references)
        per_image["effnet"] = metric.compute()
    if "face" in metrics:
        stores["face"] = face_store(create_backend("face_embedder", config.face), cache=cache,
                                    decode_workers=config.decode_workers)
        metric = FaceSimilarity(stores["face"], "face")
        metric.update(images, references)
        per_image["face"] = metric.compute()
        per_image["face_detected"] = metric.detected
        detection_rate = metric.detection_rate
    return Evaluation(per_image, stores, detection_rate)
