"""One folder per identity (typical for photos of people): ``root/<identity>/<image>``.

The folder name is the identity label as given; the builder checks each folder's faces (face-embedding
clusters, ``sameid.dataset.cluster``, after Hybrid Generative Fusion, arXiv 2508.10672) where it finds faces,
because such labels are noisy, and trusts the label of a folder without faces (``--label-check``).

A root whose sub-folders are all split names (``train/``, ``test/``, ...) is a Hugging Face imagefolder with
splits, read by :func:`sameid.sources.imagefolder.read_imagefolder` (the identity is the folder below the split,
or the metadata's); metadata files (``metadata.jsonl``/``.csv``) are never inputs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import SameIdError
from ..records import Record, records_to_table
from ._common import IMAGE_EXTENSIONS


def read_identity_folders(root: str | Path):
    """Read ``root/<identity>/<image>`` into a source table (see :mod:`sameid.sources`)."""
    from . import SourceTable
    from .imagefolder import METADATA_NAMES, read_imagefolder, split_folders

    root = Path(root)
    if not root.is_dir():
        raise SameIdError(f"{root}: folder not found (expected one sub-folder of images per identity)")
    if split_folders(root):
        return read_imagefolder(root)
    records: list[Record] = []
    rejected: list[dict] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue  # hidden files (.DS_Store, editor swap files) are not inputs
        if path.name in METADATA_NAMES:
            continue  # describes images; a metadata file below the root is not read as a source here
        row_id = relative.as_posix()
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            rejected.append({"id": row_id, "image": str(path), "reason": "not an image file",
                             "detail": f"extension {path.suffix or '(none)'}"})
        elif len(relative.parts) < 2:
            rejected.append({"id": row_id, "image": str(path), "reason": "not in an identity folder",
                             "detail": "put each identity's images in a folder named after it"})
        else:
            records.append(Record(id=row_id, image=str(path.resolve()), identity_hint=relative.parts[0]))
    if not records:
        raise SameIdError(f"{root}: no images in identity sub-folders (expected {root}/<identity>/<image>.jpg)")
    return SourceTable(records_to_table(records), pd.DataFrame(rejected), "folders")
