"""Similarity Weighted Diversity (SWD), RetriBooru, arXiv 2312.02521, section 4, equation 1.

For a model ``f`` that turns references ``r`` and parameters ``theta_r`` (prompt, seed, ...) into a generation
``g``, and a pair of per-generation measurements ``div(r, g)`` (diversity: CLIP-T, a VQA score) and ``sim(r, g)``
(similarity: CLIP-I, DINO, face similarity)::

    SWD(div, sim)(f) = 1/|(r, theta_r)| * sum over generations of div(r, g) * sim(r, g)        (1)

The mean of the product rewards generations that are good at both at once; the product of the means does not.
Their difference is the (population) covariance of div and sim, so a model whose generations split into "copies
the reference" and "follows the prompt" halves scores below the product of its means, and a balanced model at or
above it. By Cauchy-Schwarz (the paper's inequality 2), ``SWD <= sqrt(mean(div^2) * mean(sim^2))``; the bound is
reported beside SWD so a reader sees how far from perfectly aligned div and sim are.

Rows where either measurement is missing (NaN, e.g. no face detected) are left out of that pair's figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np

from .registry import pair_order

# Order in which a pair's two metrics are named: diversity measurements first, as the paper writes
# SWD(CLIP-T, CLIP-I) and SWD(VQA, CLIP-T); the registry's roles decide (sameid.evaluate.registry).
# Metrics not registered follow, in the order given.
PAIR_ORDER = pair_order()


@dataclass(frozen=True)
class SWD:
    """Equation 1 for one (div, sim) pair, with the figures a reader compares it to."""

    div: str
    sim: str
    swd: float  # mean over generations of div * sim (equation 1)
    product_of_means: float  # mean(div) * mean(sim): what decoupled averages suggest
    covariance: float  # swd - product_of_means: > 0 balanced, < 0 split into one-sided generations
    cauchy_schwarz_bound: float  # sqrt(mean(div^2) * mean(sim^2)) >= |swd| (inequality 2)
    n: int  # generations where both measurements exist

    @property
    def key(self) -> str:
        return swd_key(self.div, self.sim)

    def as_dict(self) -> dict:
        return asdict(self)


def swd_key(div: str, sim: str) -> str:
    """The name used in ``summary.json``: ``"swd(div,sim)"``."""
    return f"swd({div},{sim})"


def similarity_weighted_diversity(div: Sequence[float] | np.ndarray, sim: Sequence[float] | np.ndarray,
                                  *, div_name: str = "div", sim_name: str = "sim") -> SWD:
    """Equation 1 over paired per-generation values; pairs with a NaN on either side are left out."""
    div_values = np.asarray(div, dtype=np.float64)
    sim_values = np.asarray(sim, dtype=np.float64)
    if div_values.shape != sim_values.shape or div_values.ndim != 1:
        raise ValueError(f"div and sim must be 1-d and of equal length, got {div_values.shape} and {sim_values.shape}")
    both = ~(np.isnan(div_values) | np.isnan(sim_values))
    div_values, sim_values = div_values[both], sim_values[both]
    n = int(both.sum())
    if n == 0:
        nan = float("nan")
        return SWD(div_name, sim_name, nan, nan, nan, nan, 0)
    swd = float(np.mean(div_values * sim_values))
    product = float(div_values.mean() * sim_values.mean())
    bound = float(np.sqrt(np.mean(div_values**2) * np.mean(sim_values**2)))
    return SWD(div_name, sim_name, swd, product, swd - product, bound, n)


def metric_pairs(metrics: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of ``metrics`` once, each named (div, sim) in :data:`PAIR_ORDER`.

    SWD is symmetric in its two arguments, so each pair is reported once.
    """
    from .registry import metrics_of_role

    order = pair_order()
    rank = {name: i for i, name in enumerate(order)}
    rates = set(metrics_of_role("rate"))
    metrics = [m for m in metrics if m not in rates]
    ordered = sorted(dict.fromkeys(metrics), key=lambda m: (rank.get(m, len(order)), list(metrics).index(m)))
    return list(combinations(ordered, 2))


def swd_table(values: Mapping[str, Sequence[float] | np.ndarray], metrics: Sequence[str] | None = None) -> dict[str, SWD]:
    """SWD for every pair of ``metrics`` (default: every key of ``values``), keyed ``"swd(div,sim)"``.

    ``values`` maps a metric name to its per-generation values (a dict of arrays or a pandas DataFrame).
    """
    names = list(metrics) if metrics is not None else list(values.keys())
    table = {}
    for div, sim in metric_pairs(names):
        result = similarity_weighted_diversity(np.asarray(values[div], dtype=np.float64),
                                               np.asarray(values[sim], dtype=np.float64), div_name=div, sim_name=sim)
        table[result.key] = result
    return table
