"""Reference sampling: the paper's -a and -b settings (RetriBooru, arXiv 2312.02521, §3.1, §5).

``same`` (-a, the baseline the paper argues against) uses the target itself as its reference, under a different
augmentation. ``identity`` (-b) draws references from the target's ``similar`` list: same identity, but never the
target and never a near-duplicate of it, so no pixel of the target leaks into its conditioning. An identity with
fewer than N eligible references is either sampled with replacement (``shortfall="repeat"``, every distinct
reference first) or refused (``shortfall="refuse"``).
"""

from __future__ import annotations

import numpy as np

from ..dataset.clean import DEFAULT_NEAR_DUPLICATE_BITS  # the same threshold as `sameid build`
from ..errors import SameIdError
from ..images import hamming_distance
from .manifest import DatasetManifest

MODES = ("same", "identity")
SHORTFALLS = ("repeat", "refuse")


class ReferenceShortfallError(SameIdError):
    """A target has fewer eligible references than asked for, and the sampler was told to refuse."""


class ReferenceSampler:
    """Draws ``n_references`` reference rows for a target row of a :class:`DatasetManifest`.

    Eligibility in ``identity`` mode is computed once: ``similar`` minus the target, minus the rows the build
    listed as near-duplicates, minus any row whose perceptual hash is within ``near_duplicate_bits`` of the
    target's (a manifest edited by hand, or built with a laxer threshold, is still safe).

    The settings are :class:`sameid.pairs.PairsConfig`'s, which checks them; the sampler does not check again.
    """

    def __init__(self, manifest: DatasetManifest, mode: str = "identity", n_references: int = 4,
                 shortfall: str = "repeat", near_duplicate_bits: int = DEFAULT_NEAR_DUPLICATE_BITS):
        self.manifest = manifest
        self.mode = mode
        self.n_references = n_references
        self.shortfall = shortfall
        self.near_duplicate_bits = near_duplicate_bits
        self.eligible: list[tuple[int, ...]] = [self._eligible(row) for row in range(len(manifest))]

    def _eligible(self, row: int) -> tuple[int, ...]:
        if self.mode == "same":
            return (row,)
        manifest = self.manifest
        target_hash = manifest.phash[row]
        return tuple(
            other for other in manifest.similar[row]
            if other != row and other not in manifest.near_duplicates[row]
            and (target_hash ^ manifest.phash[other]).bit_count() > self.near_duplicate_bits
        )

    def is_short(self, row: int) -> bool:
        """True when ``row`` has fewer eligible references than ``n_references`` (never in ``same`` mode)."""
        return self.mode == "identity" and len(self.eligible[row]) < self.n_references

    def can_sample(self, row: int) -> bool:
        """False when sampling ``row`` would raise: no eligible reference, or short under ``refuse``."""
        if not self.eligible[row]:
            return False
        return not (self.is_short(row) and self.shortfall == "refuse")

    def sample(self, row: int, rng: np.random.Generator) -> list[int]:
        """``n_references`` reference rows for target ``row``; in ``same`` mode, the target repeated."""
        eligible = self.eligible[row]
        if self.mode == "same":
            return [row] * self.n_references
        if not eligible:
            raise ReferenceShortfallError(
                f"target {self.manifest.ids[row]!r} has no eligible reference (every same-identity image is it or "
                f"a near-duplicate of it)")
        n = self.n_references
        if len(eligible) >= n:
            return [eligible[i] for i in rng.choice(len(eligible), size=n, replace=False)]
        if self.shortfall == "refuse":
            raise ReferenceShortfallError(
                f"target {self.manifest.ids[row]!r} (identity {self.manifest.identities[row]!r}) has "
                f"{len(eligible)} eligible references, fewer than {n}; use shortfall='repeat' to sample with "
                f"replacement")
        # Every distinct reference once, then the remainder with replacement: repetition only where unavoidable.
        order = [eligible[i] for i in rng.permutation(len(eligible))]
        extra = [eligible[i] for i in rng.integers(0, len(eligible), size=n - len(eligible))]
        return order + extra


def phash_distance(manifest: DatasetManifest, row_a: int, row_b: int) -> int:
    """Perceptual-hash bits that differ between two rows (:func:`sameid.images.hamming_distance`)."""
    return hamming_distance(f"{manifest.phash[row_a]:016x}", f"{manifest.phash[row_b]:016x}")
