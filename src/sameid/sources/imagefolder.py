"""Hugging Face ``imagefolder`` layout: images under a folder, described by ``metadata.jsonl`` (or ``metadata.csv``).

Each metadata row names its image with ``file_name`` (relative to the metadata file's folder, as ``datasets``
expects). Columns sameid reads when present: ``text`` or ``caption``; ``tags`` (list or space-separated);
``character`` / ``artist``; ``identity`` (or ``subject`` / ``label``: a given identity, checked like a folder's);
``head_box`` and ``mask`` (precomputed annotations; the mask path is relative to the metadata file's folder).
Without a metadata file, every image under the folder is an input with its relative path as id.

**Splits.** A folder whose sub-folders are all split names (``train``, ``test``, ``validation`` and the other
names ``datasets`` knows) holds one imagefolder per split, each with its own metadata file or none (then the
folder below the split is the identity, as ``datasets`` makes it the ``label``: ``train/<identity>/<image>``).
All splits are read into one source (the same label in two splits is one identity); an id starts with its split
folder (``train/cat/1.jpg``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import ImageError, SameIdError, SchemaError
from ..images import resolve_inside
from ..records import Record, read_json_lines, records_to_table
from ._common import IMAGE_EXTENSIONS, parse_head_box, parse_tags

IDENTITY_COLUMNS = ("identity", "subject", "label")


#: Folder names that ``datasets`` reads as splits (``datasets.data_files.SPLIT_KEYWORDS``).
SPLIT_NAMES = frozenset({"train", "training", "validation", "valid", "dev", "val", "test", "testing", "eval",
                         "evaluation"})
#: Files of an imagefolder that describe the images (never inputs themselves).
METADATA_NAMES = ("metadata.jsonl", "metadata.csv")


def split_folders(folder: Path) -> list[Path]:
    """The split folders of ``folder`` when every visible sub-folder is named as a split, else []."""
    folders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if folders and all(p.name.lower() in SPLIT_NAMES for p in folders):
        return folders
    return []


def _read_metadata(folder: Path) -> pd.DataFrame | None:
    jsonl, csv = folder / "metadata.jsonl", folder / "metadata.csv"
    if jsonl.exists():
        path, frame = jsonl, pd.DataFrame(read_json_lines(jsonl))
    elif csv.exists():
        try:
            path, frame = csv, pd.read_csv(csv, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            path, frame = csv, pd.DataFrame()
    else:
        return None
    if frame.empty:
        raise SameIdError(f"{path}: no metadata rows (each row names an image in 'file_name'); "
                          "add rows, or remove the file to read every image of the folder")
    return frame


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)) or str(value) == "":
        return None
    return str(value)


def read_imagefolder(folder: str | Path):
    """Read an imagefolder (with or without split folders) into a source table (see :mod:`sameid.sources`)."""
    from . import SourceTable

    folder = Path(folder)
    if not folder.is_dir():
        raise SameIdError(f"{folder}: imagefolder not found (expected a folder with images and metadata.jsonl)")
    metadata = _read_metadata(folder)
    splits = split_folders(folder) if metadata is None else []
    records: list[Record] = []
    rejected: list[dict] = []
    if splits:
        for split in splits:
            _read_part(split, _read_metadata(split), f"{split.name}/", records, rejected, labels_from_folders=True)
    else:
        _read_part(folder, metadata, "", records, rejected, labels_from_folders=False)
    return SourceTable(records_to_table(records), pd.DataFrame(rejected), "imagefolder")


def _read_part(folder: Path, metadata: pd.DataFrame | None, prefix: str, records: list[Record],
               rejected: list[dict], *, labels_from_folders: bool) -> None:
    """The rows of one imagefolder (the whole source, or one split of it); ids start with ``prefix``."""
    if metadata is None:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder)
            if any(part.startswith(".") for part in relative.parts) or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            hint = relative.parts[0] if labels_from_folders and len(relative.parts) > 1 else None
            records.append(Record(id=prefix + relative.as_posix(), image=str(path.resolve()), identity_hint=hint))
        return

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
            rejected.append({"id": f"{prefix}row-{number}", "image": None, "reason": "missing file_name",
                             "detail": where})
            continue
        row_id = prefix + file_name
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
                rejected.append({"id": row_id, "image": image, "reason": exc.reason, "detail": f"mask {mask!r}"})
                continue
        characters = parse_tags(row.get("character")) if "character" in row else []
        records.append(Record(
            id=row_id,
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
