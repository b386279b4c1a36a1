"""Atomic writes and the output directory's life cycle: a killed run never leaves half a file, and a build never
deletes or overwrites anything it did not write itself."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import SameIdError

#: What a build writes into its output directory; ``--overwrite`` removes these and nothing else.
OUTPUTS = ("manifest.parquet", "rejected.parquet", "stats.json", "dataset_card.md", "plots", "masks", ".work")


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_parquet_atomic(data: pd.DataFrame | pa.Table, path: str | Path, schema: pa.Schema | None = None) -> None:
    path = Path(path)
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, schema=schema, preserve_index=False)
    tmp = _temporary(path)
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_json_atomic(obj, path: str | Path) -> None:
    path = Path(path)
    tmp = _temporary(path)
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_text_atomic(text: str, path: str | Path) -> None:
    path = Path(path)
    tmp = _temporary(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def prepare_output_dir(out: Path, config: dict, *, resume: bool, overwrite: bool) -> Path:
    """Create ``out`` (and its ``.work`` folder) for a new or resumed build; returns the work folder.

    A non-empty ``out`` is refused unless ``resume`` (same configuration only) or ``overwrite`` (which removes
    only the files a build writes). ``config`` is stored so a resume with a different configuration is refused
    instead of silently mixing two builds.
    """
    out = Path(out)
    work = out / ".work"
    saved = work / "config.json"
    if out.exists() and not out.is_dir():
        raise SameIdError(f"{out} exists and is not a directory; choose another --out")
    existing = [p.name for p in out.iterdir()] if out.exists() else []
    if resume:
        if saved.exists():
            previous = json.loads(saved.read_text(encoding="utf-8"))
            if previous != config:
                changed = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
                raise SameIdError(
                    f"{out}: --resume with a different configuration ({', '.join(changed)} changed); "
                    "rerun with the original options, or use --overwrite to start again"
                )
    elif existing:
        if not overwrite:
            raise SameIdError(
                f"{out} is not empty; pass --resume to continue an interrupted build, --overwrite to replace "
                "an earlier build's outputs, or choose another --out"
            )
        foreign = [n for n in existing if n not in OUTPUTS and not (n.startswith(".") and ".tmp-" in n)]
        if foreign:
            raise SameIdError(
                f"{out} holds files a build did not write ({', '.join(sorted(foreign)[:5])}); "
                "refusing to overwrite: choose another --out"
            )
        for name in existing:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(config, saved)
    return work
