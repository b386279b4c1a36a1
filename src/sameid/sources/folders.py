"""One folder per identity (typical for photos of people): ``root/<identity>/<image>``.

The folder name is the identity label as given; the builder cleans each folder by clustering face embeddings
(``sameid.dataset.cluster``, after 002) because such labels are noisy.
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

    root = Path(root)
    if not root.is_dir():
        raise SameIdError(f"{root}: folder not found (expected one sub-folder of images per identity)")
    records: list[Record] = []
    rejected: list[dict] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue  # hidden files (.DS_Store, editor swap files) are not inputs
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
