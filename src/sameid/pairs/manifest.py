"""Reading and validating a dataset dir's ``manifest.parquet``: the one place the pairs stage learns its input.

The contract is docs/architecture.md, "Dataset dir" (columns in :data:`sameid.records.MANIFEST_COLUMNS`). The
rows are turned once into plain Python lists so that sampling an example is a few list look-ups, cheap enough
for every DataLoader worker to do per item.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SameIdError, SchemaError
from ..records import MANIFEST_COLUMNS

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.parquet"
_HEX16 = re.compile(r"^[0-9a-fA-F]{16}$")


@dataclass
class DatasetManifest:
    """A validated manifest: ``frame`` as read, plus per-row lists indexed by row number.

    ``image_paths`` and ``mask_paths`` are absolute; ``head_boxes`` holds (x0, y0, x1, y1) tuples or None;
    ``near_duplicates`` holds the row numbers the build marked as near-duplicates (empty when the column is absent;
    the sampler also compares perceptual hashes itself); ``phash`` holds 64-bit ints; ``similar`` holds the row
    numbers of the other images of the row's identity (entries naming another identity are dropped and listed in
    ``cross_identity_similar``).
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
    #: (row id, named id) of every ``similar`` entry that named another identity's image: dropped, never sampled.
    cross_identity_similar: list[tuple[str, str]] = field(default_factory=list)

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

    Raises :class:`SchemaError`, one line naming the file, the column, the first few rows and what to do, when
    the file is not readable Parquet, a required column is missing, a required value is null (``id``, ``image``,
    ``identity``, ``width``, ``height``) or malformed (a size that is not a positive integer, a ``similar`` list
    that names the row itself or an unknown id, a head box that is not 4 numbers, a perceptual hash that is not 16
    hex digits, a duplicate id).

    A ``similar`` entry that names an image of *another* identity breaks the contract (``similar`` lists the other
    images of the row's own identity) and would make the sampler condition on the wrong subject: such entries are
    dropped, counted in :attr:`DatasetManifest.cross_identity_similar` and reported in one warning line. The
    ``identity`` column is the group key; ``similar`` never overrides it.
    """
    root = Path(dataset_dir)
    path = root / MANIFEST_FILE
    if not root.exists():
        raise SameIdError(f"{root}: no such folder; DATASET must be a dataset dir written by `sameid build`")
    if not root.is_dir():
        raise SameIdError(f"{root} is a file, not a folder; DATASET must be a dataset dir written by `sameid build`")
    if not path.is_file():
        raise SameIdError(f"{path} not found: DATASET must be a dataset dir written by `sameid build`")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a garbage or truncated file
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SchemaError(f"{path}: not a readable parquet file ({detail}); rebuild the dataset with `sameid build` "
                          "or restore the file") from None
    missing = [column for column in MANIFEST_COLUMNS if column not in frame.columns]
    if missing:
        raise SchemaError(f"{path}: missing required column{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(repr(c) for c in missing)} (required: {', '.join(MANIFEST_COLUMNS)})")
    frame = frame.reset_index(drop=True)
    fix = "fix those rows or rebuild the dataset with `sameid build`"

    def null(value) -> bool:
        return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA \
            or (isinstance(value, str) and not value.strip())

    bad = [row for row, value in enumerate(frame["id"]) if null(value)]
    if bad:
        raise SchemaError(f"{path}: column 'id' is empty in {_rows(bad, None)}; every image needs a unique id; "
                          f"{fix}")
    ids = [str(value) for value in frame["id"]]
    duplicated = pd.Index(ids).duplicated()
    if duplicated.any():
        raise SchemaError(f"{path}: column 'id' repeats {ids[int(np.argmax(duplicated))]!r}; ids must be unique")
    for column in ("image", "identity"):
        bad = [row for row, value in enumerate(frame[column]) if null(value)]
        if bad:
            raise SchemaError(f"{path}: column {column!r} is empty in {_rows(bad, ids)}; every image needs its "
                              f"{column}; {fix}")
    sizes = {}
    for column in ("width", "height"):
        values, bad = [], []
        for row, value in enumerate(frame[column]):
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = float("nan")
            if not np.isfinite(number) or number < 1 or number != int(number):
                bad.append(row)
            else:
                values.append(int(number))
        if bad:
            shown = ", ".join(repr(frame[column].iloc[row]) for row in bad[:3])
            raise SchemaError(f"{path}: column {column!r} is not a positive whole number of pixels in "
                              f"{_rows(bad, ids)} (got {shown}); {fix}")
        sizes[column] = values
    identities = [str(v) for v in frame["identity"]]
    row_of = {value: row for row, value in enumerate(ids)}
    root_abs = root.resolve()

    def rows_of(column: str) -> list[tuple[int, ...]]:
        out, unknown, itself, not_lists = [], [], [], []
        for row, values in enumerate(frame[column]):
            if values is None or (isinstance(values, float) and np.isnan(values)):
                out.append(())
                continue
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                not_lists.append(row)
                out.append(())
                continue
            found = []
            for value in values:
                other = row_of.get(str(value))
                if other is None:
                    unknown.append((row, value))
                elif other == row:
                    itself.append(row)
                else:
                    found.append(other)
            out.append(tuple(found))
        if not_lists:
            raise SchemaError(f"{path}: column {column!r} is not a list of ids in {_rows(not_lists, ids)}; {fix}")
        if unknown:
            named = ", ".join(f"row {ids[row]!r} names {value!r}" for row, value in unknown[:3])
            more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
            raise SchemaError(f"{path}: column {column!r} names ids that are not in the manifest ({named}{more}); "
                              f"remove them or rebuild the dataset with `sameid build`")
        if itself:
            raise SchemaError(f"{path}: column {column!r} names the row itself in {_rows(itself, ids)}; it lists "
                              f"the *other* images only; {fix}")
        return out

    similar = rows_of("similar")
    crossing: list[tuple[str, str]] = []
    for row, others in enumerate(similar):
        kept = tuple(other for other in others if identities[other] == identities[row])
        if len(kept) != len(others):
            crossing += [(ids[row], ids[other]) for other in others if identities[other] != identities[row]]
            similar[row] = kept
    if crossing:
        named = ", ".join(f"{a!r} -> {b!r}" for a, b in crossing[:3])
        logger.warning("%s: dropped %d 'similar' entr%s naming an image of another identity (%s%s); they are never "
                       "used as references", path, len(crossing), "y" if len(crossing) == 1 else "ies", named,
                       ", ..." if len(crossing) > 3 else "")
    if "near_duplicates" in frame.columns:
        near = [frozenset(rows) for rows in rows_of("near_duplicates")]
    else:
        near = [frozenset() for _ in ids]

    head_boxes = []
    for row, box in enumerate(frame["head_box"]):
        if box is None or (isinstance(box, float) and np.isnan(box)):
            head_boxes.append(None)
            continue
        try:
            values = np.asarray(box, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            values = np.asarray([np.nan])
        if values.size != 4 or not np.isfinite(values).all():
            raise SchemaError(f"{path}: column 'head_box', row {ids[row]!r}: expected 4 numbers x0,y0,x1,y1 or "
                              f"null, got {box!r}")
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
        root=root_abs, frame=frame, ids=ids, identities=identities,
        image_paths=[absolute(v) for v in frame["image"]], mask_paths=[absolute(v) for v in frame["mask"]],
        head_boxes=head_boxes, widths=sizes["width"], heights=sizes["height"],
        captions=["" if v is None else str(v) for v in frame["caption"]], phash=phash, similar=similar,
        near_duplicates=near, row_of=row_of, cross_identity_similar=crossing,
    )


def _rows(rows: list[int], ids: list[str] | None, limit: int = 3) -> str:
    """``row 'a'``, ``3 rows ('a', 'b', 'c')``, ``5 rows ('a', 'b', 'c', ...)``; row numbers when ids is None."""
    names = [f"{ids[row]!r}" if ids is not None else str(row) for row in rows[:limit]]
    shown = ", ".join(names) + (", ..." if len(rows) > limit else "")
    label = "row" if ids is not None else "row number"
    return f"{label} {shown}" if len(rows) == 1 else f"{len(rows)} {label}s ({shown})"


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
