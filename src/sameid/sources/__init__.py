"""Readers that turn an image collection into a source table (columns of :data:`sameid.records.SOURCE_COLUMNS`).

- ``danbooru``: Danbooru-style JSON lines + an image root (:mod:`.danbooru`)
- ``imagefolder``: a Hugging Face imagefolder with ``metadata.jsonl`` (:mod:`.imagefolder`)
- ``folders``: one folder per identity (:mod:`.folders`)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from ..errors import SameIdError

FORMATS = ("danbooru", "imagefolder", "folders")
REJECTED_COLUMNS = ("id", "image", "reason", "detail")


@dataclass
class SourceTable:
    """A source's rows (``table``), the inputs it could not even describe (``rejected``), and its format."""

    table: pa.Table
    rejected: pd.DataFrame
    format: str

    def __post_init__(self):
        self.rejected = self.rejected.reindex(columns=list(REJECTED_COLUMNS))


def detect_format(path: str | Path) -> str:
    path = Path(path)
    if path.is_file():
        return "danbooru"
    if (path / "metadata.jsonl").exists() or (path / "metadata.csv").exists():
        return "imagefolder"
    if path.is_dir():
        return "folders"
    raise SameIdError(f"{path}: not found; give a Danbooru metadata .jsonl file, an imagefolder, or a folder of identity folders")


def read_source(path: str | Path, source_format: str | None = None) -> SourceTable:
    """Read any supported source. Danbooru image paths are resolved later, after filtering (it stats files)."""
    source_format = source_format or detect_format(path)
    if source_format == "danbooru":
        from .danbooru import read_danbooru

        return read_danbooru(path)
    if source_format == "imagefolder":
        from .imagefolder import read_imagefolder

        return read_imagefolder(path)
    if source_format == "folders":
        from .folders import read_identity_folders

        return read_identity_folders(path)
    raise SameIdError(f"unknown source format {source_format!r}; choose one of {', '.join(FORMATS)}")
