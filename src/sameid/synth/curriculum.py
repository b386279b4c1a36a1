"""The curriculum written into a dataset: identities ranked easy to hard (Hybrid Generative Fusion, arXiv
2508.10672, curriculum-based training: synthetic identities, consistent and of low variance, first; then
cleaned real ones, ordered by how much their images vary).

The spread of an identity is measured by :mod:`sameid.pairs.curriculum` (mean pairwise perceptual-hash distance, or
mean cosine distance of embeddings to their centroid), on the identity's own images before any augmentation. The
rank goes into the manifest as ``curriculum_rank`` (0 = easiest) with the measured ``curriculum_spread``; training
reads it with ``curriculum: dataset`` (``sameid train --curriculum dataset``, ``sameid recognition train --order
curriculum``).
"""

from __future__ import annotations

import math

from ..errors import SameIdError
from ..pairs.curriculum import RANK_COLUMN, embedding_spread, phash_spread
from ..pairs.manifest import DatasetManifest

SPREADS = ("phash", "embedding")
SPREAD_COLUMN = "curriculum_spread"
__all__ = ["RANK_COLUMN", "SPREAD_COLUMN", "SPREADS", "identity_spread", "rank_identities"]


def identity_spread(manifest: DatasetManifest, by: str = "phash", embedder=None) -> dict[str, float]:
    """Per identity of ``manifest``, its spread: ``phash`` or ``embedding`` (with ``embedder``, a face or image
    embedder backend; an identity with fewer than two embeddable images gets +inf: unknown, hardest)."""
    if by == "phash":
        return phash_spread(manifest)
    if by == "embedding":
        if embedder is None:
            raise SameIdError("curriculum spread 'embedding' needs an embedder (face:dlib, image:clip:<id or path>)")
        from ..pairs.audit import embed_rows

        return embedding_spread(manifest, embed_rows(manifest, embedder, manifest.ids))
    raise SameIdError(f"unknown curriculum spread {by!r}; choose one of: {', '.join(SPREADS)}")


def rank_identities(spread: dict[str, float], sources: dict[str, str],
                    source_order: tuple[str, ...] = ("synthetic", "real")) -> dict[str, int]:
    """Identity -> rank (0 = easiest): by the rank of its source in ``source_order`` (a source not listed comes
    after those listed), then by spread, then by name, so the order is deterministic."""
    position = {name: i for i, name in enumerate(source_order)}

    def key(identity: str):
        value = spread.get(identity, math.inf)
        return (position.get(sources.get(identity, ""), len(position)), value if math.isfinite(value) else math.inf,
                identity)

    return {identity: rank for rank, identity in enumerate(sorted(spread, key=key))}
