"""The generations manifest (docs/architecture.md, Contracts): one row per generated image.

Columns: ``image`` (path), ``references`` (list of paths), ``prompt`` (str), ``subject`` (str), ``model`` (str),
``seed`` (int, may be null), and for multi-subject generations ``subjects`` (a list of ``{"identity": str,
"references": [paths]}``, one per subject; null on a single-subject row; ``references`` may then be empty: it
becomes every subject's references in order). Files are JSON lines (``.jsonl``) or parquet. Relative paths are resolved against the
manifest's folder; absolute paths are kept. A ``references`` value that is a single string is a list of one.

Problems are reported, not guessed around. A missing column, or a file that is not a readable JSON-lines or parquet
table (garbage, truncated), is a :class:`~sameid.errors.SchemaError` at once, in one line naming the file.
Row-level problems (image file missing or empty, a reference missing or empty, no references, an empty prompt, a
reference count that differs from the most common count, a seed that is not an integer, the image of an earlier row
with other values) are collected into a problems table with one row
per (row, problem): ``row`` (0-based row number; the JSON line number is ``row + 1``), ``image`` and ``problem``.
:func:`read_generations` raises a SchemaError listing them unless ``skip_invalid=True``, in which case the bad rows
are dropped and the problems table is returned beside the valid rows, so a caller can write it out.

A row equal to an earlier one in every column (after resolving paths) is a **duplicate**: it is counted once (the
first is kept), listed in ``Generations.duplicates`` (same columns, problem ``duplicate of row N``), and never
stops the run: a duplicate would only weigh its generation twice in every mean.

:func:`import_dreambench` converts the DreamBench-style sample layout (see its docstring) into a manifest.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import SchemaError
from ..records import (  # noqa: F401  (write_generations: the contract, re-exported where eval users look)
    GENERATIONS_OPTIONAL_COLUMNS,
    GENERATIONS_REQUIRED_COLUMNS,
    read_json_lines,
    write_generations,
)

REQUIRED_COLUMNS = GENERATIONS_REQUIRED_COLUMNS
OPTIONAL_COLUMNS = GENERATIONS_OPTIONAL_COLUMNS
PROBLEM_COLUMNS = ("row", "image", "problem")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_SHOWN_PROBLEMS = 10


@dataclass
class Generations:
    """Valid rows (absolute paths, ``row`` = original row number), the problems of the rows left out, and the
    duplicate rows dropped (each a copy of an earlier row)."""

    frame: pd.DataFrame
    problems: pd.DataFrame
    duplicates: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(PROBLEM_COLUMNS)))

    @property
    def left_out(self) -> pd.DataFrame:
        """Problems and duplicates together, by row: what ``problems.parquet`` lists."""
        if self.duplicates.empty:
            return self.problems
        if self.problems.empty:
            return self.duplicates.reset_index(drop=True)
        return (pd.concat([self.problems, self.duplicates], ignore_index=True)
                .sort_values("row", kind="stable").reset_index(drop=True))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise SchemaError(f"generations manifest {path} does not exist")
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as error:  # noqa: BLE001 - pyarrow raises many types for a garbage or truncated file
            raise SchemaError(f"generations manifest {path} is not a readable parquet file (garbage or truncated? "
                              f"{_first_line(error)})") from None
    if suffix in (".jsonl", ".json"):
        try:
            rows = read_json_lines(path)
        except UnicodeDecodeError as error:
            raise SchemaError(f"generations manifest {path} is not UTF-8 JSON lines (byte {error.start}: "
                              f"{error.reason})") from None
        bad = next((number for number, row in enumerate(rows, start=1) if not isinstance(row, dict)), None)
        if bad is not None:
            raise SchemaError(f"generations manifest {path}: record {bad} is not a JSON object; each line must be "
                              "one generation {\"image\": ..., \"references\": [...], ...}")
        return pd.DataFrame(rows)
    raise SchemaError(f"generations manifest {path}: use .jsonl or .parquet (got {suffix or 'no suffix'})")


def _as_list(value) -> list[str] | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, str):
        return [value]
    try:
        return [str(item) for item in value]
    except TypeError:
        return None


def _resolve(root: Path, value: str) -> str:
    path = Path(os.path.expanduser(value))
    return str(path if path.is_absolute() else (root / path).resolve())


def _seed(value):
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return None
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, float) and not value.is_integer():
        raise ValueError
    return int(value)


def check_generations(frame: pd.DataFrame, root: str | os.PathLike, *, source: str = "manifest") -> Generations:
    """Resolve paths against ``root`` and split ``frame`` into valid rows and a problems table (see module doc)."""
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise SchemaError(f"{source}: missing column(s) {', '.join(missing)}; a generations manifest needs "
                          f"{', '.join(REQUIRED_COLUMNS)} (and optionally seed)")
    root = Path(root)
    problems: list[tuple[int, str, str]] = []
    rows = []
    subject_lists = [_subjects(value) for value in frame["subjects"]] if "subjects" in frame.columns \
        else [None] * len(frame)
    reference_lists = [_as_list(value) for value in frame["references"]]
    for row, subjects in enumerate(subject_lists):
        if isinstance(subjects, list) and not reference_lists[row]:
            reference_lists[row] = [path for subject in subjects for path in subject["references"]]
    # The usual reference count, per number of subjects (a two-subject row has twice a one-subject row's).
    counts: dict[int, Counter] = {}
    for refs, subjects in zip(reference_lists, subject_lists):
        if refs:
            counts.setdefault(len(subjects) if isinstance(subjects, list) else 1, Counter())[len(refs)] += 1
    usual_counts = {k: c.most_common(1)[0][0] for k, c in counts.items()}
    seeds = frame["seed"] if "seed" in frame.columns else [None] * len(frame)
    duplicates: list[tuple[int, str, str]] = []
    first_of: dict[tuple, int] = {}  # every column of a valid row -> its row
    image_row: dict[str, tuple[int, tuple]] = {}  # image path of a valid row -> (row, every column)
    for row, (record, references, seed_value, subjects) in enumerate(
        zip(frame.to_dict("records"), reference_lists, seeds, subject_lists, strict=True)
    ):
        image_value = record["image"]
        row_problems = []
        image = ""
        if not isinstance(image_value, str) or not image_value.strip():
            row_problems.append("no image path")
        else:
            image = _resolve(root, image_value)
            row_problems.extend(_file_problems(image, "image"))
        if not references:
            row_problems.append("no references")
            references = []
        else:
            resolved = [_resolve(root, reference) for reference in references]
            for reference in resolved:
                row_problems.extend(_file_problems(reference, "reference"))
            n_subjects = len(subjects) if isinstance(subjects, list) else 1
            usual_count = usual_counts.get(n_subjects, 0)
            if len(resolved) != usual_count:
                rows_like = "most rows" if n_subjects == 1 else f"most rows of {n_subjects} subjects"
                row_problems.append(f"{len(resolved)} references where {rows_like} have {usual_count}")
            references = resolved
        if isinstance(subjects, str):
            row_problems.append(subjects)
            subjects = None
        elif subjects is not None:
            subjects = [{"identity": s["identity"], "references": [_resolve(root, p) for p in s["references"]]}
                        for s in subjects]
            for subject in subjects:
                for reference in subject["references"]:
                    if reference not in references:
                        row_problems.extend(_file_problems(reference, "subject reference"))
        prompt = record["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            row_problems.append("empty prompt")
        for column in ("subject", "model"):
            if not isinstance(record[column], str) or not record[column].strip():
                row_problems.append(f"empty {column}")
        try:
            seed = _seed(seed_value)
        except (TypeError, ValueError):
            row_problems.append(f"seed {seed_value!r} is not an integer")
            seed = None
        if not row_problems:
            identity = (image, tuple(references), prompt, record["subject"], record["model"], seed,
                        None if subjects is None else tuple((s["identity"], tuple(s["references"])) for s in subjects))
            if identity in first_of:
                duplicates.append((row, str(image_value), f"duplicate of row {first_of[identity]}"))
                continue
            if image in image_row:
                row_problems.append(f"image also in row {image_row[image][0]} with another "
                                    f"{_differing(image_row[image][1], identity)}")
        if row_problems:
            problems.extend((row, str(image_value), problem) for problem in row_problems)
            continue
        first_of[identity] = row
        image_row[image] = (row, identity)
        rows.append({"row": row, "image": image, "references": references, "prompt": prompt,
                     "subject": record["subject"], "model": record["model"], "seed": seed, "subjects": subjects})
    columns = ["row", "image", "references", "prompt", "subject", "model", "seed", "subjects"]
    valid = pd.DataFrame(rows, columns=columns)
    if valid["subjects"].isna().all():
        valid = valid.drop(columns="subjects")
    valid["seed"] = valid["seed"].astype("Int64")
    return Generations(valid, pd.DataFrame(problems, columns=list(PROBLEM_COLUMNS)),
                       pd.DataFrame(duplicates, columns=list(PROBLEM_COLUMNS)))


def _file_problems(path: str, what: str) -> list[str]:
    try:
        size = os.stat(path).st_size
    except OSError:
        return [f"{what} file not found: {path}"]
    if not Path(path).is_file():
        return [f"{what} file not found: {path} is not a file"]
    return [f"{what} file is empty (0 bytes): {path}"] if size == 0 else []


_IDENTITY_COLUMNS = ("image", "references", "prompt", "subject", "model", "seed", "subjects")


def _subjects(value):
    """A ``subjects`` cell: None (single subject), a list of {identity, references}, or a problem (str)."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    try:
        entries = list(value)
    except TypeError:
        return "subjects is not a list of {identity, references}"
    out = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("identity"), str) or not entry["identity"].strip():
            return f"subject {number}: expected {{\"identity\": <non-empty str>, \"references\": [paths]}}"
        references = _as_list(entry.get("references"))
        if not references:
            return f"subject {number} ({entry['identity']}): no references"
        out.append({"identity": entry["identity"], "references": references})
    if len(out) < 2:
        return "subjects lists fewer than 2 subjects (leave it null for a single-subject generation)"
    return out


def _differing(first: tuple, other: tuple) -> str:
    return ", ".join(name for name, a, b in zip(_IDENTITY_COLUMNS, first, other, strict=True) if a != b)


def format_problems(problems: pd.DataFrame, source: str) -> str:
    lines = [f"{source}: {problems['row'].nunique()} row(s) with problems:"]
    for row, image, problem in problems.head(_SHOWN_PROBLEMS).itertuples(index=False):
        lines.append(f"  row {row} ({image}): {problem}")
    if len(problems) > _SHOWN_PROBLEMS:
        lines.append(f"  ... and {len(problems) - _SHOWN_PROBLEMS} more")
    return "\n".join(lines)


def read_generations(path: str | os.PathLike, *, skip_invalid: bool = False,
                     frame: pd.DataFrame | None = None) -> Generations:
    """Read and check a generations manifest (see module doc); raise SchemaError on any problem unless
    ``skip_invalid``, which drops the bad rows and returns their problems. ``frame``: check these rows (paths
    relative to ``path``'s folder) instead of reading ``path``, e.g. a manifest not written yet."""
    path = Path(path)
    table = _read_table(path) if frame is None else frame
    generations = check_generations(table, path.resolve().parent, source=str(path))
    if len(generations.problems) and not skip_invalid:
        raise SchemaError(format_problems(generations.problems, str(path)) +
                          "\n(fix them, or pass skip_invalid / --skip-invalid to evaluate the other rows)")
    if generations.frame.empty:
        raise SchemaError(f"{path}: no valid generations to evaluate")
    return generations


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


_TRAILING_NUMBER = re.compile(r"(\d+)$")


def import_dreambench(samples: str | os.PathLike, out: str | os.PathLike, *, write: bool = True) -> pd.DataFrame:
    """Write a generations manifest for a DreamBench-style folder and return it.

    Layout: ``samples/<run>/src_image/<subject>/*`` (the references), ``samples/<run>/tgt_image/<subject>/<name>.*``
    (the generations) and ``samples/<run>/text/<subject>/<name>.txt`` (the prompt of the generation with the same
    file stem). Mapping: ``model`` = ``<run>``, ``subject`` = ``<subject>``, ``references`` = every image in
    ``src_image/<subject>/`` (sorted by name), ``prompt`` = the stem-matched text file's content, stripped; when
    ``text/<subject>/`` holds exactly one ``.txt``, it is the prompt of every generation of that subject.
    ``seed`` = the number ending the generation's stem (``..._3.png`` -> 3), else null. A generation without a
    prompt is written with an empty prompt, which :func:`read_generations` then reports. Paths are written
    relative to ``out``'s folder, so the manifest moves with the samples. ``write=False``: only return the rows
    (check them with ``read_generations(out, frame=rows)`` before writing).
    """
    samples, out = Path(samples), Path(out)
    if not samples.is_dir():
        raise SchemaError(f"{samples}: not a folder (expected samples/<run>/{{src_image,text,tgt_image}}/<subject>/)")
    base = out.resolve().parent
    rows = []
    for run in sorted(p for p in samples.iterdir() if (p / "tgt_image").is_dir()):
        for subject_dir in sorted(p for p in (run / "tgt_image").iterdir() if p.is_dir()):
            subject = subject_dir.name
            references = [os.path.relpath(p.resolve(), base) for p in _images(run / "src_image" / subject)]
            texts = sorted((run / "text" / subject).glob("*.txt")) if (run / "text" / subject).is_dir() else []
            by_stem = {p.stem: p for p in texts}
            for image in _images(subject_dir):
                text = by_stem.get(image.stem) or (texts[0] if len(texts) == 1 else None)
                prompt = text.read_text(encoding="utf-8").strip() if text else ""
                number = _TRAILING_NUMBER.search(image.stem)
                rows.append({"image": os.path.relpath(image.resolve(), base), "references": references,
                             "prompt": prompt, "subject": subject, "model": run.name,
                             "seed": int(number.group(1)) if number else None})
    if not rows:
        raise SchemaError(f"{samples}: no <run>/tgt_image/<subject>/ images found")
    frame = pd.DataFrame(rows)
    if write:
        write_generations(frame, out)
    return frame
