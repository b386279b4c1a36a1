"""Writing a dataset dir made by a synth stage (``sameid synth``, ``sameid augment``): the same files as ``sameid
build`` (docs/architecture.md, "Dataset dir"), through the same writers, so every later stage reads it unchanged."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ..atomic import write_json_atomic
from ..dataset.clean import near_duplicate_lists
from ..dataset.outfits import similar_lists
from ..dataset.pipeline import REJECTED_SCHEMA
from ..dataset.stats import write_stats
from ..dataset.writer import write_parquet_atomic
from ..records import DATASET_SETTINGS_FILE, MANIFEST_COLUMNS

#: ``source`` values: where an identity's images came from (Hybrid Generative Fusion, arXiv 2508.10672: cleaned
#: real identities and generated ones, fused into one training set).
SOURCES = ("synthetic", "real")


def safe_name(text: str, limit: int = 60) -> str:
    """A file name for ``text``: letters, digits, ``.``, ``_`` and ``-`` kept, and a checksum so two texts that
    clean to the same name stay apart."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:limit] or "x"
    return f"{cleaned}-{zlib.crc32(text.encode('utf-8')):08x}"


def link_lists(frame: pd.DataFrame, near_duplicate_bits: int, family: list[str] | None = None) -> pd.DataFrame:
    """``frame`` (columns id, identity, phash) with ``similar`` (the other rows of the identity) and
    ``near_duplicates`` (rows of the identity within ``near_duplicate_bits`` of its perceptual hash, and every other
    row of the same ``family``: an image and its augmentations, which a geometric augmentation can move far in
    perceptual-hash bits while it is still the same photo)."""
    frame = frame.reset_index(drop=True)
    ids = frame["id"].astype(str).tolist()
    identities = frame["identity"].astype(str).tolist()
    groups = pd.factorize(frame["identity"])[0].astype(np.int64)
    frame["similar"] = similar_lists(pa.array(ids), groups).to_pylist() if len(frame) else []
    near = near_duplicate_lists(ids, frame["phash"].astype(str).tolist(), identities, near_duplicate_bits)
    if family is not None:
        members: dict[tuple[str, str], list[str]] = {}
        for identifier, identity, key in zip(ids, identities, family, strict=True):
            members.setdefault((identity, key), []).append(identifier)
        for row, (identifier, identity, key) in enumerate(zip(ids, identities, family, strict=True)):
            relatives = [other for other in members[(identity, key)] if other != identifier]
            near[row] = list(dict.fromkeys([*near[row], *relatives]))
    frame["near_duplicates"] = near
    return frame


def write_dataset(build_dir: Path, manifest: pd.DataFrame, rejected: pd.DataFrame, settings: dict) -> dict:
    """``manifest.parquet``, ``rejected.parquet``, ``stats.json``, the card and ``build_settings.json`` into
    ``build_dir``, each atomically; returns the statistics. The manifest's first columns must be
    :data:`sameid.records.MANIFEST_COLUMNS`."""
    assert tuple(manifest.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    rejected = rejected.reindex(columns=REJECTED_SCHEMA.names).astype(object).where(rejected.notna(), None) \
        if len(rejected) else pd.DataFrame({name: pd.Series(dtype=object) for name in REJECTED_SCHEMA.names})
    write_parquet_atomic(build_dir / "manifest.parquet", manifest.reset_index(drop=True))
    write_parquet_atomic(build_dir / "rejected.parquet",
                         pa.Table.from_pandas(rejected, schema=REJECTED_SCHEMA, preserve_index=False))
    stats = write_stats(build_dir, manifest, rejected, build_config=settings)
    write_json_atomic(build_dir / DATASET_SETTINGS_FILE, settings)
    return stats
