"""Metric name -> factory: the one list of the metrics ``sameid eval`` knows.

Everything that names metrics reads this registry: the evaluator (which metrics to build, in which order), the
CLI's ``--metrics`` help and check, the report and summary (which columns are metrics), and SWD (which metrics are
diversities, named first in a pair). A new metric is one file (its metric class and a factory) and one
:func:`register_metric` line (below for the built-in ones, or anywhere before the run for a plugin).

A factory takes the run's :class:`MetricContext` (the :class:`~sameid.evaluate.evaluator.EvalConfig`, the
embedding cache, and shared backends and stores, so two metrics on one CLIP load it once and embed each image
once) and returns a torchmetrics-style object: ``update(*inputs)`` with the inputs its ``inputs`` attribute
names, from ``images`` (paths), ``references`` (lists of paths) and ``prompts``, then ``compute()`` -> one value
per generation. Optionally ``extra_columns(values) -> {column: values}`` adds per-generation columns (clip_t's
``clip_score``, face's ``face_detected``) and a ``detection_rate`` attribute the evaluation keeps. Factories are
named ``"module:function"`` and imported only when their metric is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import SameIdError

#: similarity and diversity metrics pair up in SWD; a rate (subject_missing, subject_mixing) is reported alone.
ROLES = ("similarity", "diversity", "rate")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    factory: str | Callable[[MetricContext], Any]  # "module:function" or the function
    help: str
    role: str = "similarity"  # diversity metrics are SWD's div and come first in a pair's name
    default: bool = False  # measured when --metrics is not given
    check: str | Callable[[Any], None] | None = None  # config -> None or a SameIdError, run before any work

    def build(self, context: MetricContext) -> Any:
        return _resolve(self.factory)(context)

    def check_config(self, config) -> None:
        if self.check is not None:
            _resolve(self.check)(config)


def _resolve(target):
    if isinstance(target, str):
        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)
    return target


_REGISTRY: dict[str, MetricSpec] = {}


def register_metric(name: str, factory: str | Callable[[MetricContext], Any], *, help: str,
                    role: str = "similarity", default: bool = False, check=None,
                    replace: bool = False) -> MetricSpec:
    """Add a metric (registration order is the order of columns, summaries and ``--help``)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"metric {name!r} is already registered")
    spec = MetricSpec(name, factory, help, role, default, check)
    _REGISTRY[name] = spec
    return spec


def metric_spec(name: str) -> MetricSpec:
    return _REGISTRY[name]


def metric_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def default_metrics() -> tuple[str, ...]:
    return tuple(name for name, spec in _REGISTRY.items() if spec.default)


def metrics_of_role(role: str) -> tuple[str, ...]:
    return tuple(name for name, spec in _REGISTRY.items() if spec.role == role)


def pair_order() -> tuple[str, ...]:
    """How a SWD pair's two metrics are ordered: diversities first (SWD(CLIP-T, CLIP-I)), then similarities
    (rates take no part in SWD)."""
    return metrics_of_role("diversity") + metrics_of_role("similarity")


def check_metrics(metrics, config=None) -> tuple[str, ...]:
    """The requested names, deduplicated in the order given; a SameIdError naming every unknown one, or (with
    ``config``) what a metric's check finds missing (vqa without a VQA model)."""
    metrics = tuple(dict.fromkeys(m.strip() for m in metrics if m and m.strip()))
    unknown = [m for m in metrics if m not in _REGISTRY]
    if unknown:
        raise SameIdError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(_REGISTRY)}")
    if not metrics:
        raise SameIdError("no metric chosen")
    if config is not None:
        for name in metrics:
            _REGISTRY[name].check_config(config)
    return metrics


def metrics_help() -> str:
    """``--metrics``' help text: every registered metric with its one-line description."""
    return "Comma-separated, from: " + "; ".join(f"{s.name} ({s.help})" for s in _REGISTRY.values()) + "."


class MetricContext:
    """What a metric factory builds from: the config, the cache, and backends and stores shared across metrics."""

    def __init__(self, config, cache):
        from .embeddings import EmbeddingStore

        self.config, self.cache = config, cache
        self.stores: dict[str, EmbeddingStore] = {}  # name -> store, in creation order (Evaluation.stores)
        self._backends: dict[tuple[str, str], Any] = {}
        self._store_class = EmbeddingStore

    @property
    def progress(self) -> bool:
        return bool(getattr(self.config, "progress", False))

    def backend(self, kind: str, spec: str) -> Any:
        """One backend per (kind, spec) per run: clip_i, clip_t and vqa share one CLIP."""
        from ..backends.registry import create_backend

        if (kind, spec) not in self._backends:
            self._backends[kind, spec] = create_backend(kind, spec)
        return self._backends[kind, spec]

    def store(self, name: str, make: Callable[[], Any]) -> Any:
        if name not in self.stores:
            self.stores[name] = make()
        return self.stores[name]

    def image_store(self, name: str, embedder) -> Any:
        """The image store ``name`` over ``embedder``; one with a ``pixel_preparer`` has its pixels prepared in
        the decode workers, beside the model."""
        def make():
            preparer = getattr(embedder, "pixel_preparer", None)
            embed = embedder.embed_pixels if preparer is not None else embedder.embed_images
            return self._store_class(embed, f"{embedder.identity}:image", inputs="image", cache=self.cache,
                                     batch_size=self.config.batch_size, prepare=preparer,
                                     decode_workers=self.config.decode_workers, progress=self.progress)
        return self.store(name, make)

    def text_store(self, embedder) -> Any:
        """One store per text model: two stores of one model would embed each prompt twice."""
        name = f"{embedder.identity}:text"
        return self.store(name, lambda: self._store_class(embedder.embed_texts, name, inputs="text",
                                                          cache=self.cache, batch_size=self.config.batch_size,
                                                          progress=self.progress))


# The built-in metrics, in the order of columns and summaries (SWD pairs put the diversities first).
register_metric("vqa", "sameid.evaluate.vqa_score:vqa_metric", role="diversity",
                help="VQA score, a diversity; needs --vqa", check="sameid.evaluate.vqa_score:check_vqa_config")
register_metric("clip_i", "sameid.evaluate.metrics:clip_i_metric", default=True,
                help="CLIP image similarity to the references")
register_metric("clip_t", "sameid.evaluate.metrics:clip_t_metric", role="diversity", default=True,
                help="CLIP image-prompt alignment, with clip_score")
register_metric("dino", "sameid.evaluate.metrics:dino_metric", default=True,
                help="DINO similarity to the references")
register_metric("face", "sameid.evaluate.metrics:face_metric", default=True,
                help="face identity similarity, with face_detected")
register_metric("effnet", "sameid.evaluate.metrics:effnet_metric",
                help="offline image similarity: EfficientNet-Lite0 features")
register_metric("subject_face", "sameid.evaluate.subjects:subject_face_metric",
                help="multi-subject: face similarity per given subject after Hungarian matching of the faces found")
register_metric("subject_figure", "sameid.evaluate.subjects:subject_figure_metric",
                help="multi-subject: figure (colour) similarity per given subject after matching, for drawings")
register_metric("subject_missing", "sameid.evaluate.subjects:subject_missing_metric", role="rate",
                help="multi-subject: share of given subjects with no matching face/figure")
register_metric("subject_mixing", "sameid.evaluate.subjects:subject_mixing_metric", role="rate",
                help="multi-subject: share of found subjects that look like another given subject (identity mixing)")
register_metric("world_identity", "sameid.evaluate.world_metrics:world_identity_metric",
                help="small world: share of hair/top/bottom colours that are the first reference's (from pixels)")
register_metric("world_prompt", "sameid.evaluate.world_metrics:world_prompt_metric", role="diversity",
                help="small world: share of background/position/size that the prompt asks for (from pixels)")
register_metric("world_copy", "sameid.evaluate.world_metrics:world_copy_metric", role="rate",
                help="small world: share of background/position/size copied from the first reference")
