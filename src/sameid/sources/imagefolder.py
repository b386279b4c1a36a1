"""Hugging Face ``imagefolder`` layout: images under a folder, described by ``metadata.jsonl`` (or ``metadata.csv``).

Each metadata row names its image with ``file_name`` (relative to the folder, as ``datasets`` expects). Columns
sameid reads when present: ``text`` or ``caption``; ``tags`` (list or space-separated); ``character`` /
``artist``; ``identity`` (or ``subject`` / ``label``: a given identity, cleaned like a folder); ``head_box`` and
``mask`` (precomputed annotations; the mask path is relative to the folder). Without a metadata file, every image
under the folder is an input with its relative path as id.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import ImageError, SameIdError, SchemaError
from ..images import resolve_inside
from ..records import Record, read_json_lines, records_to_table
from ._common import IMAGE_EXTENSIONS, parse_head_box, parse_tags

IDENTITY_COLUMNS = ("identity", "subject", "label")


def _read_metadata(folder: Path) -> pd.DataFrame | None:
    jsonl, csv = folder / "metadata.jsonl", folder / "metadata.csv"
    if jsonl.exists():
        rows = read_json_lines(jsonl)
        return pd.DataFrame(rows)
    if csv.exists():
        return pd.read_csv(csv, dtype=str, keep_default_na=False)
    return None


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)) or str(value) == "":
        return None
    return str(value)


def read_imagefolder(folder: str | Path):
    """Read an imagefolder into a source table (see :mod:`sameid.sources`)."""
    from . import SourceTable

    folder = Path(folder)
    if not folder.is_dir():
        raise SameIdError(f"{folder}: imagefolder not found (expected a folder with images and metadata.jsonl)")
    metadata = _read_metadata(folder)
    records: list[Record] = []
    rejected: list[dict] = []
    if metadata is None:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                records.append(Record(id=path.relative_to(folder).as_posix(), image=str(path.resolve())))
        return SourceTable(records_to_table(records), pd.DataFrame(rejected), "imagefolder")

    if "file_name" not in metadata.columns:
        raise SchemaError(
            f"{folder}/metadata.*: no 'file_name' column (columns: {', '.join(map(str, metadata.columns))}); "
            "imagefolder metadata names each image in 'file_name'"
        )
    identity_column = next((c for c in IDENTITY_COLUMNS if c in metadata.columns), None)
    for number, row in enumerate(metadata.to_dict("records"), start=1):
        where = f"{folder}/metadata row {number}"
        file_name = _text(row.get("file_name"))
        if file_name is None:
            rejected.append({"id": f"row-{number}", "image": None, "reason": "missing file_name", "detail": where})
            continue
        image, path_error = None, None
        try:
            image = str(resolve_inside(folder, file_name))
        except ImageError as exc:
            path_error = exc.reason
        mask = _text(row.get("mask"))
        if mask is not None:
            try:
                mask = str(resolve_inside(folder, mask))
            except ImageError as exc:
                rejected.append({"id": file_name, "image": image, "reason": exc.reason, "detail": f"mask {mask!r}"})
                continue
        characters = parse_tags(row.get("character")) if "character" in row else []
        records.append(Record(
            id=file_name,
            image=image,
            path_error=path_error,
            caption=_text(row.get("text")) or _text(row.get("caption")) or "",
            tags=parse_tags(row.get("tags")),
            characters=characters,
            artists=parse_tags(row.get("artist")) if "artist" in row else [],
            rating=_text(row.get("rating")),
            head_box=parse_head_box(row.get("head_box"), where),
            mask=mask,
            identity_hint=_text(row.get(identity_column)) if identity_column else None,
        ))
    return SourceTable(records_to_table(records), pd.DataFrame(rejected), "imagefolder")
