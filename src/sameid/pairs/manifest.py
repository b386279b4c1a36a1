"""Reading and validating a dataset dir's ``manifest.parquet``: the one place the pairs stage learns its input.

The contract is docs/architecture.md, "Dataset dir" (columns in :data:`sameid.records.MANIFEST_COLUMNS`). The
rows are turned once into plain Python lists so that sampling an example is a few list look-ups, cheap enough
for every DataLoader worker to do per item.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SameIdError, SchemaError
from ..records import MANIFEST_COLUMNS

MANIFEST_FILE = "manifest.parquet"
_HEX16 = re.compile(r"^[0-9a-fA-F]{16}$")


@dataclass
class DatasetManifest:
    """A validated manifest: ``frame`` as read, plus per-row lists indexed by row number.

    ``image_paths`` and ``mask_paths`` are absolute; ``head_boxes`` holds (x0, y0, x1, y1) tuples or None;
    ``near_duplicates`` holds the row numbers the build marked as near-duplicates (empty when the column is absent;
    the sampler also compares perceptual hashes itself); ``phash`` holds 64-bit ints.
    """

    root: Path
    frame: pd.DataFrame
    ids: list[str]
    identities: list[str]
    image_paths: list[str]
    mask_paths: list[str | None]
    head_boxes: list[tuple[float, float, float, float] | None]
    widths: list[int]
    heights: list[int]
    captions: list[str]
    phash: list[int]
    similar: list[tuple[int, ...]]
    near_duplicates: list[frozenset[int]]
    row_of: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def identity_rows(self) -> dict[str, list[int]]:
        """Row numbers per identity, in manifest order."""
        groups: dict[str, list[int]] = {}
        for row, identity in enumerate(self.identities):
            groups.setdefault(identity, []).append(row)
        return groups


def load_manifest(dataset_dir: str | os.PathLike) -> DatasetManifest:
    """Read ``DATASET/manifest.parquet`` and check it against the contract.

    Raises :class:`SchemaError` naming the column and the file when a required column is missing or a value is
    malformed (a ``similar`` list that names the row itself or an unknown id, a head box that is not 4 numbers,
    a perceptual hash that is not 16 hex digits, a duplicate id).
    """
    root = Path(dataset_dir)
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise SameIdError(f"{path} not found: DATASET must be a dataset dir written by `sameid build`")
    frame = pd.read_parquet(path)
    missing = [column for column in MANIFEST_COLUMNS if column not in frame.columns]
    if missing:
        raise SchemaError(f"{path}: missing required column{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(repr(c) for c in missing)} (required: {', '.join(MANIFEST_COLUMNS)})")
    frame = frame.reset_index(drop=True)
    ids = [str(value) for value in frame["id"]]
    duplicated = pd.Index(ids).duplicated()
    if duplicated.any():
        raise SchemaError(f"{path}: column 'id' repeats {ids[int(np.argmax(duplicated))]!r}; ids must be unique")
    row_of = {value: row for row, value in enumerate(ids)}
    root_abs = root.resolve()

    def rows_of(column: str, row: int, values) -> tuple[int, ...]:
        if values is None or (isinstance(values, float) and np.isnan(values)):
            return ()
        out = []
        for value in values:
            other = row_of.get(str(value))
            if other is None:
                raise SchemaError(f"{path}: column {column!r}, row {ids[row]!r} names unknown id {value!r}")
            if other == row:
                raise SchemaError(f"{path}: column {column!r}, row {ids[row]!r} names the row itself")
            out.append(other)
        return tuple(out)

    similar = [rows_of("similar", row, values) for row, values in enumerate(frame["similar"])]
    if "near_duplicates" in frame.columns:
        near = [frozenset(rows_of("near_duplicates", row, v)) for row, v in enumerate(frame["near_duplicates"])]
    else:
        near = [frozenset() for _ in ids]

    head_boxes = []
    for row, box in enumerate(frame["head_box"]):
        if box is None or (isinstance(box, float) and np.isnan(box)):
            head_boxes.append(None)
            continue
        values = np.asarray(box, dtype=np.float64).ravel()
        if values.size != 4 or not np.isfinite(values).all():
            raise SchemaError(f"{path}: column 'head_box', row {ids[row]!r}: expected 4 numbers x0,y0,x1,y1 or "
                              f"null, got {list(values)}")
        head_boxes.append(tuple(float(v) for v in values))

    phash = []
    for row, value in enumerate(frame["phash"]):
        if not isinstance(value, str) or not _HEX16.match(value):
            raise SchemaError(f"{path}: column 'phash', row {ids[row]!r}: expected 16 hex digits, got {value!r}")
        phash.append(int(value, 16))

    def absolute(value) -> str | None:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
            return None
        candidate = Path(value)
        return str(candidate if candidate.is_absolute() else root_abs / candidate)

    return DatasetManifest(
        root=root_abs, frame=frame, ids=ids, identities=[str(v) for v in frame["identity"]],
        image_paths=[absolute(v) for v in frame["image"]], mask_paths=[absolute(v) for v in frame["mask"]],
        head_boxes=head_boxes, widths=[int(v) for v in frame["width"]], heights=[int(v) for v in frame["height"]],
        captions=["" if v is None else str(v) for v in frame["caption"]], phash=phash, similar=similar,
        near_duplicates=near, row_of=row_of,
    )


def dataset_near_duplicate_bits(dataset: str | os.PathLike | DatasetManifest) -> int:
    """The near-duplicate threshold a dataset dir was built with (:data:`sameid.records.DATASET_SETTINGS_FILE`),
    or ``sameid.dataset.clean.DEFAULT_NEAR_DUPLICATE_BITS`` for a dir built before sameid recorded its settings."""
    from ..dataset.clean import DEFAULT_NEAR_DUPLICATE_BITS  # the same threshold as `sameid build`
    from ..records import DATASET_SETTINGS_FILE, read_dataset_settings
    from ..settings import as_int

    root = dataset.root if isinstance(dataset, DatasetManifest) else dataset
    value = read_dataset_settings(root).get("near_duplicate_bits")
    if value is None:
        return DEFAULT_NEAR_DUPLICATE_BITS
    return as_int(f"{os.path.join(root, DATASET_SETTINGS_FILE)}", "near_duplicate_bits", value, minimum=0,
                  maximum=64)
