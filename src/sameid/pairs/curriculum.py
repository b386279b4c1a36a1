"""Curriculum ordering of identities, easy to hard (Hybrid Generative Fusion, arXiv 2508.10672, curriculum-based training).

The paper orders low-variance identities (synthetic, consistent) before high-variance ones (cleaned real data).
Here difficulty is measurable offline: the mean pairwise perceptual-hash distance of an identity's images (a
consistent identity's images look alike), or the mean cosine distance of its image embeddings to their centroid
when embeddings are given; or identities are ordered by a source column, in a given order of sources; or by the
order written into the dataset (``dataset``: the ``curriculum_rank`` column that ``sameid augment --curriculum``
writes, :mod:`sameid.synth.curriculum`). Off by default: :class:`sameid.pairs.PairsConfig` ``curriculum=None``
keeps manifest order.
"""

from __future__ import annotations

import numpy as np

from ..errors import SameIdError
from .manifest import DatasetManifest

CURRICULA = ("phash", "embedding", "source", "dataset")
#: The manifest column holding each row's identity rank, easy (0) to hard, for curriculum "dataset".
RANK_COLUMN = "curriculum_rank"


def phash_spread(manifest: DatasetManifest) -> dict[str, float]:
    """Per identity, the mean Hamming distance (bits of 64) over all pairs of its images' perceptual hashes."""
    spread = {}
    for identity, rows in manifest.identity_rows().items():
        hashes = [manifest.phash[r] for r in rows]
        distances = [(a ^ b).bit_count() for i, a in enumerate(hashes) for b in hashes[i + 1:]]
        spread[identity] = float(np.mean(distances)) if distances else 0.0
    return spread


def embedding_spread(manifest: DatasetManifest, embeddings: dict[str, np.ndarray]) -> dict[str, float]:
    """Per identity, the mean cosine distance of its images' embeddings (keyed by id) to their centroid."""
    spread = {}
    for identity, rows in manifest.identity_rows().items():
        vectors = [np.asarray(embeddings[manifest.ids[r]], dtype=np.float64) for r in rows
                   if manifest.ids[r] in embeddings]
        if len(vectors) < 2:
            spread[identity] = float("inf")  # unknown spread: last
            continue
        matrix = np.stack(vectors)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        centroid = matrix.mean(axis=0)
        centroid /= np.linalg.norm(centroid)
        spread[identity] = float(np.mean(1.0 - matrix @ centroid))
    return spread


def curriculum_order(manifest: DatasetManifest, rows: list[int], by: str = "phash",
                     embeddings: dict[str, np.ndarray] | None = None, source_column: str = "source",
                     source_order: tuple[str, ...] = ()) -> list[int]:
    """``rows`` reordered identity by identity from easy to hard; within an identity, manifest order.

    Ties are broken by identity name, so the order is deterministic.
    """
    if by == "phash":
        difficulty = phash_spread(manifest)
    elif by == "embedding":
        if embeddings is None:
            raise SameIdError("curriculum 'embedding' needs embeddings (a dict of id -> vector)")
        difficulty = embedding_spread(manifest, embeddings)
    elif by == "source":
        if source_column not in manifest.frame.columns:
            raise SameIdError(f"curriculum 'source' needs a {source_column!r} column in "
                              f"{manifest.root / 'manifest.parquet'}")
        if not source_order:
            raise SameIdError("curriculum 'source' needs source_order: the sources from easy to hard")
        rank = {name: i for i, name in enumerate(source_order)}
        sources = manifest.frame[source_column].astype(str).tolist()
        difficulty = {}
        for identity, identity_rows in manifest.identity_rows().items():
            difficulty[identity] = min(rank.get(sources[r], len(rank)) for r in identity_rows)
    elif by == "dataset":
        if RANK_COLUMN not in manifest.frame.columns:
            raise SameIdError(f"curriculum 'dataset' needs a {RANK_COLUMN!r} column in "
                              f"{manifest.root / 'manifest.parquet'}: write one with `sameid augment --curriculum`")
        ranks = manifest.frame[RANK_COLUMN].tolist()
        difficulty = {manifest.identities[r]: int(ranks[r]) for r in range(len(manifest))}
    else:
        raise SameIdError(f"unknown curriculum {by!r}; choose one of: {', '.join(CURRICULA)}")
    return sorted(rows, key=lambda r: (difficulty[manifest.identities[r]], manifest.identities[r], r))
