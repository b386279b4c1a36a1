"""Cleaning after grouping: near-duplicates and identities too small to give a reference.

RetriBooru (RetriBooru, arXiv 2312.02521, §3) keeps only samples with at least one other image of the same
identity in ``similar``. A near-duplicate (re-encode, resize, small edit) of the target is not a *different*
image: it would leak the target into the reference, so near-duplicates within an identity are marked
(``near_duplicates``) for the pair sampler to refuse, and an image whose only siblings are its own
near-duplicates has no usable reference and is rejected.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: phash bits (of 64) at or below which two images of one identity count as near-duplicates.
DEFAULT_NEAR_DUPLICATE_BITS = 6

SINGLE_IMAGE = "identity has a single image"
NO_DISTINCT_SIBLING = "no distinct same-identity sibling"


def near_duplicate_lists(ids: list[str], hashes: list[str], identities: list[str], max_bits: int) -> list[list[str]]:
    """For each row, the ids of the other rows of its identity whose perceptual hash is within ``max_bits``."""
    values = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    result: list[list[str]] = [[] for _ in ids]
    frame = pd.DataFrame({"identity": identities})
    for members in frame.groupby("identity", sort=False).indices.values():
        if len(members) < 2:
            continue
        codes = values[members]
        xor = codes[:, None] ^ codes[None, :]
        bits = np.unpackbits(xor.view(np.uint8).reshape(len(members), len(members), 8), axis=-1).sum(axis=-1)
        close = (bits <= max_bits) & ~np.eye(len(members), dtype=bool)
        for i, j in zip(*np.nonzero(close)):
            result[members[i]].append(ids[members[j]])
    return result


def drop_unreferenceable(frame: pd.DataFrame, max_bits: int = DEFAULT_NEAR_DUPLICATE_BITS):
    """Split ``frame`` (columns id, identity, phash) into kept rows with ``similar`` and ``near_duplicates``, and
    rejected rows (id, reason, detail), repeating until every kept row has a sibling that is not its near-duplicate.
    """
    frame = frame.reset_index(drop=True)
    rejected = []
    while True:
        near = near_duplicate_lists(frame["id"].tolist(), frame["phash"].tolist(), frame["identity"].tolist(), max_bits)
        sizes = frame.groupby("identity", sort=False)["id"].transform("size").to_numpy()
        distinct = sizes - 1 - np.array([len(n) for n in near], dtype=np.int64)
        drop = distinct < 1
        if not drop.any():
            break
        for index in np.nonzero(drop)[0]:
            single = sizes[index] < 2
            rejected.append({
                "id": frame.at[index, "id"],
                "reason": SINGLE_IMAGE if single else NO_DISTINCT_SIBLING,
                "detail": f"identity {frame.at[index, 'identity']!r}"
                + ("" if single else f"; near-duplicates: {', '.join(near[index])}"),
            })
        frame = frame.loc[~drop].reset_index(drop=True)
    frame = frame.assign(near_duplicates=near)
    return frame, pd.DataFrame(rejected, columns=["id", "reason", "detail"])

