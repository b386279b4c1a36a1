"""Typed records that cross rooms (see docs/architecture.md, "Contracts").

Tables are the unit of work in sameid (a source yields a pandas DataFrame whose columns are the fields of
:class:`Record`), because filtering and grouping a million rows is a columnar job; :class:`Record` documents the
columns and is the per-row view used by the per-image stages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Columns every source table carries (see :class:`Record`).
SOURCE_COLUMNS = (
    "id", "image", "path_error", "caption", "tags", "characters", "artists", "rating",
    "width", "height", "head_box", "mask", "identity_hint",
)

#: Required columns of ``manifest.parquet`` (docs/architecture.md, "Dataset dir").
MANIFEST_COLUMNS = (
    "id", "image", "identity", "similar", "caption", "tags", "head_box", "mask", "width", "height", "phash",
)


@dataclass
class Record:
    """One input image as a source describes it, before any pixel is read.

    ``image`` is an absolute path, or None when the source's path could not be resolved safely; then
    ``path_error`` says why (for example ``"path outside image root"``). ``head_box`` (x0, y0, x1, y1 in
    pixels) and ``mask`` (absolute path of a single-channel figure mask) are precomputed annotations that the
    builder uses instead of running a backend. ``identity_hint`` is a source-given identity label (the folder
    name of a one-folder-per-identity source), still subject to cleaning.
    """

    id: str
    image: str | None
    path_error: str | None = None
    caption: str = ""
    tags: list[str] = field(default_factory=list)
    characters: list[str] = field(default_factory=list)
    artists: list[str] = field(default_factory=list)
    rating: str | None = None
    width: int | None = None
    height: int | None = None
    head_box: list[float] | None = None
    mask: str | None = None
    identity_hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def source_schema():
    """The pyarrow schema of a source table (the fields of :class:`Record`, in order)."""
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()),
        ("image", pa.string()),
        ("path_error", pa.string()),
        ("caption", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("characters", pa.list_(pa.string())),
        ("artists", pa.list_(pa.string())),
        ("rating", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("head_box", pa.list_(pa.float64())),
        ("mask", pa.string()),
        ("identity_hint", pa.string()),
    ])


def records_to_table(records):
    """A source table from :class:`Record` objects (the small-source path; Danbooru builds its table directly)."""
    import pyarrow as pa

    return pa.Table.from_pylist([r.to_dict() for r in records], schema=source_schema())


@dataclass
class TrainingExample:
    """One training example for a reference-conditioned model (RetriBooru, arXiv 2312.02521, §5, A.4; loss masks
    of RetriBooru, arXiv 2312.02521, equation 3). Built by :class:`sameid.pairs.PairsDataset`.

    Pixels are uint8 torch tensors (C, H, W), so DataLoader workers stay cheap; ``sameid.pairs.normalize_pixels``
    maps them to [-1, 1] on the training device. ``target`` is resized to fit the training resolution and padded;
    ``valid_mask`` (1, H, W) is 1 exactly on the resized image (M_tgt: no loss on padding) and ``face_mask``
    (1, H, W) is 1 exactly on the head box (M_face; all zeros without a head box). ``references`` is (N, 3, H, W),
    each letterboxed the same way, with ``reference_valid_masks`` (N, 1, H, W); ``reference_concepts`` are their
    captions ("face", "clothes", "figure") and ``reference_boxes`` the crop boxes in source pixels. ``caption``
    is "" when the prompt was dropped (``caption_dropped``); ``full_caption`` keeps it. ``task`` is
    "reconstruction" or "composition" (a multitask example says which one it drew).
    """

    target_id: str
    identity: str
    target: Any
    valid_mask: Any
    face_mask: Any
    references: Any
    reference_valid_masks: Any
    reference_ids: list[str]
    reference_concepts: list[str]
    reference_boxes: list[tuple[int, int, int, int]]
    caption: str
    full_caption: str
    caption_dropped: bool
    task: str
    mode: str
    # Multi-subject examples (PairHuman, arXiv 2511.16712): ``subject_identities`` names the K >= 2 subjects of the
    # target, ``reference_subjects`` the subject index (0..K-1) of each reference, and ``subject_masks`` (K, 1, H, W)
    # each subject's region in the target's letterboxed frame. All None for a single-subject example.
    subject_identities: list[str] | None = None
    reference_subjects: list[int] | None = None
    subject_masks: Any = None


def read_json_lines(path) -> list[dict]:
    """The objects of a JSON-lines file; a bad line raises :class:`SchemaError` naming the file and line number."""
    import json

    from .errors import SchemaError

    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise SchemaError(f"{path}:{number}: not valid JSON ({error.msg}); fix or remove the line") from None
    return rows


#: The file in a dataset dir that records the settings the dataset was built with (``sameid build`` writes it;
#: later stages read thresholds such as ``near_duplicate_bits`` from it instead of assuming a default).
DATASET_SETTINGS_FILE = "build_settings.json"


def read_dataset_settings(dataset_dir) -> dict[str, Any]:
    """The settings a dataset dir was built with (``build_settings.json``), or ``{}`` for a dir built before
    sameid recorded them (callers then fall back to the defaults). A present but unreadable file is an error
    that names the file."""
    import json
    from pathlib import Path

    from .errors import SameIdError

    path = Path(dataset_dir) / DATASET_SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SameIdError(f"{path}: not readable JSON ({exc}); rebuild the dataset with `sameid build` "
                          "or delete the file to use the default settings") from None
    if not isinstance(settings, dict):
        raise SameIdError(f"{path}: expected a JSON object of setting: value")
    return settings


#: The generations manifest (JSON lines or Parquet, one row per generated image): what ``sameid generate`` writes
#: and ``sameid eval`` reads; any other tool can write it too.
GENERATIONS_REQUIRED_COLUMNS = ("image", "references", "prompt", "subject", "model")
#: ``subjects`` (multi-subject generations, docs/multi_subject.md): a list of ``{"identity": str, "references":
#: [paths]}`` per row, one entry per subject (K >= 2), null for a single-subject row.
GENERATIONS_OPTIONAL_COLUMNS = ("seed", "subjects")


def write_generations(frame, path):
    """Write a generations manifest atomically, as JSON lines or Parquet by the file's suffix; returns the path."""
    import json
    from pathlib import Path

    import pandas as pd

    from .atomic import write_parquet_atomic, write_text_atomic

    path = Path(path)
    columns = [c for c in (*GENERATIONS_REQUIRED_COLUMNS, *GENERATIONS_OPTIONAL_COLUMNS) if c in frame.columns]
    if path.suffix.lower() == ".parquet":
        return write_parquet_atomic(path, frame[columns].reset_index(drop=True))
    lines = []
    for record in frame[columns].to_dict("records"):
        record = {k: (None if v is pd.NA else v) for k, v in record.items()}
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return write_text_atomic(path, "".join(lines))


#: The first line of the README.md that ``sameid sample`` writes: a folder starting with it is the generated sample
#: collection (``sameid build`` then marks its dataset card as generated, not real, data).
SAMPLE_README_MARKER = "# sameid generated sample collection"


def is_generated_sample(folder) -> bool:
    """True for a folder written by :func:`sameid.demo.sample.make_sample` (its README starts with the marker)."""
    from pathlib import Path

    readme = Path(folder) / "README.md"
    return readme.is_file() and readme.read_text(encoding="utf-8", errors="replace").startswith(SAMPLE_README_MARKER)
