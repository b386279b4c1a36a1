"""Danbooru-style metadata (JSON lines) as a source table, and the image paths of its rows.

RetriBooru (arXiv 2312.02521, section 3 and appendix A.1) is built from Danbooru 2019 Figures, whose
metadata carries Danbooru's own post fields. One JSON object per line, with these keys:

- required: ``id`` (int or str), ``file_ext``, ``tag_string_general``, ``tag_string_character``,
  ``tag_string_artist`` (each either Danbooru's space-separated string or a JSON list of tags; the two forms may
  be mixed across rows);
- optional: ``md5``, ``rating``, ``image_width``, ``image_height``, and the precomputed annotations of
  docs/architecture.md ("Contracts"): ``head_box`` [x0, y0, x1, y1] in pixels and ``mask`` (a path relative to
  the image root). Other keys are ignored.

:func:`read_danbooru` reads a clean, uniformly typed file with ``pyarrow.json`` and ``pyarrow.compute`` (a
million rows in seconds); a file whose fields change type between rows, or that has a malformed line, is read
again line by line, which is slower but names the line. ``image`` and ``caption`` are left null by the reader:
:func:`resolve_danbooru_images` fills them after the tag filters, for the rows the filters keep, because
resolving stats files and building a caption costs nearly as much as splitting the tags (a million posts of
thirty tags make 300 MB of captions).
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from ..errors import ImageError, SameIdError, SchemaError
from ..images import OUTSIDE_ROOT, resolve_inside
from ..records import source_schema

REQUIRED_FIELDS = ("id", "file_ext", "tag_string_general", "tag_string_character", "tag_string_artist")
OPTIONAL_FIELDS = ("md5", "rating", "image_width", "image_height", "head_box", "mask")
#: Danbooru tag field -> source table column.
TAG_FIELDS = {"tag_string_general": "tags", "tag_string_character": "characters", "tag_string_artist": "artists"}
#: Source-specific columns kept after the columns of :data:`sameid.records.SOURCE_COLUMNS`.
EXTRA_COLUMNS = ("md5", "file_ext")

#: ``reason`` of a line that could not be read (``on_bad_line="skip"``).
MALFORMED_LINE = "malformed metadata line"

_STRING_FIELDS = ("file_ext", "md5", "rating", "mask")
_INT_FIELDS = ("image_width", "image_height")
# pyarrow.json parses blocks in parallel; larger blocks mean fewer chunks to stitch.
_BLOCK_SIZE = 16 << 20


def read_danbooru(metadata_path: str | os.PathLike, *, on_bad_line: str = "raise"):
    """Read Danbooru-style JSON lines into a :class:`sameid.sources.SourceTable`.

    ``table`` has the columns of :data:`sameid.records.SOURCE_COLUMNS` followed by ``md5`` and ``file_ext``:
    tags split into lists, ``image`` and ``caption`` null (:func:`resolve_danbooru_images` fills them; the
    caption is :func:`danbooru_captions` of the general tags), ``mask`` still relative to the image root.

    A malformed line (not JSON, not an object, a required field missing or null, a value of the wrong type, a
    head box that is not 4 increasing numbers) raises :class:`SchemaError` naming the file and line number when
    ``on_bad_line="raise"`` (the default); with ``on_bad_line="skip"`` it becomes a row of ``rejected`` (columns
    ``id``, ``image``, ``reason`` = ``"malformed metadata line"``, ``detail`` = ``"line N: ..."``) and reading goes
    on. A required field that no row has is a :class:`SchemaError` in both modes.
    """
    from . import SourceTable

    if on_bad_line not in ("raise", "skip"):
        raise ValueError(f"on_bad_line must be 'raise' or 'skip', not {on_bad_line!r}")
    path = Path(metadata_path)
    if not path.is_file():
        raise SameIdError(f"{path}: Danbooru metadata file not found (expected JSON lines, one post per line)")
    columns = _read_fast(path)
    rejected = pd.DataFrame(columns=["id", "image", "reason", "detail"])
    if columns is None:
        columns, rejected = _read_line_by_line(path, on_bad_line)
    return SourceTable(_assemble(columns), rejected, "danbooru")


# --- fast path: pyarrow.json ------------------------------------------------------------------------------

def _first_record(path: Path) -> dict | None:
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    return None
                return record if isinstance(record, dict) else None
    return None


def _sniffed_schema(first: dict) -> pa.Schema | None:
    """The explicit schema the whole file must follow, guessed from its first row; None when not guessable."""
    fields = []
    for name in REQUIRED_FIELDS + OPTIONAL_FIELDS:
        value = first.get(name)
        if name == "id":
            kind = pa.int64() if type(value) is int else pa.string() if isinstance(value, str) else None
        elif name in TAG_FIELDS:
            kind = pa.string() if isinstance(value, str) else pa.list_(pa.string()) if isinstance(value, list) else None
        elif name in _INT_FIELDS:
            kind = pa.int64()
        elif name == "head_box":
            kind = pa.list_(pa.float64())
        else:
            kind = pa.string()
        if kind is None:
            return None
        fields.append(pa.field(name, kind))
    return pa.schema(fields)


def _read_fast(path: Path) -> dict[str, pa.ChunkedArray] | None:
    """Columns of a uniformly typed, well-formed file (tag fields already split into lists), or None when the
    line-by-line reader must decide."""
    first = _first_record(path)
    schema = _sniffed_schema(first) if first is not None else None
    if schema is None:
        return None
    try:
        reader = pa_json.open_json(
            path,
            read_options=pa_json.ReadOptions(block_size=_BLOCK_SIZE),
            parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
        # Each block is checked and its tags split on a worker as soon as pyarrow has parsed it, while pyarrow
        # parses the next blocks, so the whole file's tag strings never sit in memory beside their split: on a
        # 2-core VM (1M posts, 540 MB) this read peaks at 600 MiB of Arrow memory instead of 800 and spends
        # 0.3 s instead of 1-4 s in the kernel on page faults (read_json, then split).
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            futures = [pool.submit(_checked_block, batch) for batch in reader]
        blocks = [future.result() for future in futures]
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if not blocks or any(block is None for block in blocks):
        return None  # the line-by-line reader names the line
    return {name: pa.chunked_array([block[name] for block in blocks]) for name in blocks[0]}


def _checked_block(batch: pa.RecordBatch) -> dict[str, pa.Array] | None:
    """The columns of one parsed block with its tags split, or None when a row is malformed."""
    for name in REQUIRED_FIELDS:
        column = batch.column(name)
        if column.null_count or (pa.types.is_list(column.type) and pc.list_flatten(column).null_count):
            return None
        if name in ("id", "file_ext") and pa.types.is_string(column.type) and pc.any(pc.equal(column, "")).as_py():
            return None
    if not _head_boxes_valid(batch.column("head_box")):
        return None
    columns = {name: batch.column(name) for name in batch.schema.names}
    columns["id"] = columns["id"].cast(pa.string())
    for name in TAG_FIELDS:
        columns[name] = _tag_lists(columns[name])
    return columns


def _head_boxes_valid(boxes: pa.ChunkedArray) -> bool:
    if boxes.null_count == len(boxes):
        return True
    present = pc.drop_null(boxes)
    if not pc.all(pc.equal(pc.list_value_length(present), 4)).as_py():
        return False
    values = pc.list_flatten(present).to_numpy(zero_copy_only=False).reshape(-1, 4)
    return bool(np.isfinite(values).all() and (values[:, 2] > values[:, 0]).all()
                and (values[:, 3] > values[:, 1]).all())


# --- slow path: line by line ------------------------------------------------------------------------------

class _BadLine(Exception):
    pass


def _tag_list(value, name: str) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(tag, str) for tag in value):
        return [tag for tag in value if tag.strip()]
    raise _BadLine(f"{name} must be a space-separated string or a list of strings, not {value!r}")


def _optional_text(record: dict, name: str) -> str | None:
    value = record.get(name)
    if value is None or isinstance(value, str):
        return value
    raise _BadLine(f"{name} must be a string, not {value!r}")


def _optional_int(record: dict, name: str) -> int | None:
    value = record.get(name)
    if value is None:
        return None
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int:
        raise _BadLine(f"{name} must be an integer, not {value!r}")
    return value


def _head_box(value) -> list[float] | None:
    if value is None:
        return None
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
        raise _BadLine(f"head_box {value!r} must be 4 finite numbers x0,y0,x1,y1 with x1>x0 and y1>y0")
    return box


def _parse_record(record) -> dict:
    if not isinstance(record, dict):
        raise _BadLine(f"expected a JSON object, got {type(record).__name__}")
    for name in REQUIRED_FIELDS:
        if record.get(name) is None:
            raise _BadLine(f"missing required field {name!r}")
    post_id = record["id"]
    if type(post_id) is not int and not (isinstance(post_id, str) and post_id.strip()):
        raise _BadLine(f"id must be an integer or a non-empty string, not {post_id!r}")
    parsed = {"id": str(post_id)}
    for name in TAG_FIELDS:
        parsed[name] = _tag_list(record[name], name)
    for name in _STRING_FIELDS:
        parsed[name] = _optional_text(record, name)
    if not isinstance(record["file_ext"], str) or not record["file_ext"]:
        raise _BadLine(f"file_ext must be a non-empty string, not {record['file_ext']!r}")
    for name in _INT_FIELDS:
        parsed[name] = _optional_int(record, name)
    parsed["head_box"] = _head_box(record.get("head_box"))
    return parsed


def _read_line_by_line(path: Path, on_bad_line: str) -> tuple[dict[str, pa.Array], pd.DataFrame]:
    names = ("id",) + tuple(TAG_FIELDS) + _STRING_FIELDS + _INT_FIELDS + ("head_box",)
    values: dict[str, list] = {name: [] for name in names}
    seen_fields: set[str] = set()
    objects = 0
    rejected = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = None
            try:
                record = json.loads(line)
                if isinstance(record, dict):
                    objects += 1
                    seen_fields.update(name for name in REQUIRED_FIELDS if record.get(name) is not None)
                parsed = _parse_record(record)
            except (ValueError, _BadLine) as exc:
                message = f"not valid JSON ({exc})" if not isinstance(exc, _BadLine) else str(exc)
                if on_bad_line == "raise":
                    raise SchemaError(f"{path}: line {number}: {message}; fix the line or read with "
                                      "on_bad_line='skip' to reject it") from None
                post_id = record.get("id") if isinstance(record, dict) else None
                rejected.append({"id": f"{path.name}:{number}" if post_id is None else str(post_id),
                                 "image": None, "reason": MALFORMED_LINE, "detail": f"line {number}: {message}"})
                continue
            for name in names:
                values[name].append(parsed[name])
    missing = [name for name in REQUIRED_FIELDS if name not in seen_fields]
    if missing and objects:
        raise SchemaError(f"{path}: no row has the required field(s) {', '.join(map(repr, missing))}; Danbooru "
                          f"metadata needs {', '.join(REQUIRED_FIELDS)} on every line")
    types = {"id": pa.string(), "head_box": pa.list_(pa.float64()),
             **{name: pa.list_(pa.string()) for name in TAG_FIELDS},
             **{name: pa.string() for name in _STRING_FIELDS}, **{name: pa.int64() for name in _INT_FIELDS}}
    columns = {name: pa.array(values[name], type=types[name]) for name in names}
    return columns, pd.DataFrame(rejected, columns=["id", "image", "reason", "detail"])


# --- shared: columns -> source table ----------------------------------------------------------------------

def _chunks(column) -> list[pa.Array]:
    return column.chunks if isinstance(column, pa.ChunkedArray) else [column]


def _map_chunks(function: Callable[[pa.Array], pa.Array], column) -> pa.ChunkedArray:
    """``function`` on each chunk, on all cores (pyarrow kernels release the GIL)."""
    chunks = _chunks(column)
    if len(chunks) <= 1:
        return pa.chunked_array([function(chunk) for chunk in chunks], type=None if chunks else column.type)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return pa.chunked_array(list(pool.map(function, chunks)))


def _without_blank_tags(lists: pa.ListArray, blank: pa.BooleanArray) -> pa.ListArray:
    """``lists`` without the values marked ``blank`` (checked first: blank tags are rare)."""
    if not pc.any(blank).as_py():
        return lists
    kept = pc.indices_nonzero(pc.invert(blank)).to_numpy().astype(np.int64)
    row_offsets = np.asarray(lists.offsets, dtype=np.int64)
    offsets = np.searchsorted(kept, row_offsets - row_offsets[0]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pc.list_flatten(lists).take(pa.array(kept)),
                                    mask=lists.is_null())


def _string_bytes(strings: pa.Array) -> np.ndarray:
    """The UTF-8 bytes of all values of a string array, as one zero-copy uint8 array."""
    _, offsets, data = strings.buffers()
    if data is None or not len(strings):
        return np.zeros(0, np.uint8)
    bounds = np.frombuffer(offsets, np.int32)[strings.offset: strings.offset + len(strings) + 1]
    start, end = int(bounds[0]), int(bounds[-1])
    return np.frombuffer(data, np.uint8, count=end - start, offset=start)


def _split_tags(strings: pa.Array) -> pa.ListArray:
    """Danbooru's space-separated tag strings -> lists of tags (split on runs of ASCII whitespace)."""
    text = _string_bytes(strings)
    # Splitting on " " is ~30% faster than on any whitespace; it is the same split when no byte is a control
    # character (every ASCII whitespace but " " is one), which holds for real Danbooru metadata.
    if not len(text) or text.min() >= 0x20:
        split = pc.split_pattern(strings, " ")
    else:
        split = pc.ascii_split_whitespace(strings)
    # Runs of spaces, leading or trailing spaces and empty strings leave empty tokens.
    tokens = pc.list_flatten(split)
    bounds = np.frombuffer(tokens.buffers()[1], np.int32)[tokens.offset: tokens.offset + len(tokens) + 1]
    if not len(tokens) or np.all(bounds[1:] != bounds[:-1]):
        return split
    return _without_blank_tags(split, pc.equal(pc.binary_length(tokens), 0))


def _clean_tag_lists(lists: pa.Array) -> pa.ListArray:
    """JSON lists of tags: as given, less empty or blank items (as the line-by-line reader does)."""
    lists = lists.cast(pa.list_(pa.string()))
    trimmed = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    return _without_blank_tags(lists, pc.equal(pc.binary_length(trimmed), 0))


def _tag_lists(column: pa.Array) -> pa.ListArray:
    return _clean_tag_lists(column) if pa.types.is_list(column.type) else _split_tags(column)


# Bytes translated per step: small enough for the comparison's temporary to stay in the CPU cache.
_TRANSLATE_BLOCK = 1 << 18


def _caption(tags: pa.ListArray) -> pa.Array:
    """Danbooru tags as a prompt: ``long_hair`` -> ``long hair``, comma separated."""
    joined = pc.binary_join(tags, ", ")
    # "_" -> " " in place in the joined text, which binary_join has just allocated and nothing else shares:
    # ten times faster than replace_substring per value, and safe on UTF-8, where the byte of "_" never occurs
    # inside a multi-byte character.
    text = _string_bytes(joined)  # writable: a view of the mutable buffer binary_join returned
    if not text.flags.writeable:
        return pc.replace_substring(joined, "_", " ")
    for start in range(0, len(text), _TRANSLATE_BLOCK):
        block = text[start: start + _TRANSLATE_BLOCK]
        block -= (block == ord("_")).view(np.uint8) * np.uint8(ord("_") - ord(" "))
    return joined


def danbooru_captions(tags: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """The ``caption`` of Danbooru posts from their general tags (a list column): ``["long_hair", "skirt"]`` ->
    ``"long hair, skirt"``. :func:`resolve_danbooru_images` fills the caption of the rows it resolves with it."""
    return _map_chunks(_caption, tags)


def _assemble(columns: dict) -> pa.Table:
    count = len(columns["id"])
    data = {
        "id": columns["id"],
        "image": pa.nulls(count, pa.string()),
        "path_error": pa.nulls(count, pa.string()),
        # Filled by resolve_danbooru_images for the rows the tag filters keep (building it for every row took a
        # fifth of the reader's time).
        "caption": pa.nulls(count, pa.string()),
        "tags": columns["tag_string_general"],
        "characters": columns["tag_string_character"],
        "artists": columns["tag_string_artist"],
        "rating": columns["rating"],
        "width": columns["image_width"],
        "height": columns["image_height"],
        "head_box": columns["head_box"],
        "mask": columns["mask"],
        "identity_hint": pa.nulls(count, pa.string()),
    }
    schema = source_schema()
    arrays = [_chunked(data[field.name], field.type) for field in schema]
    arrays += [_chunked(columns[name], pa.string()) for name in EXTRA_COLUMNS]
    names = list(schema.names) + list(EXTRA_COLUMNS)
    return pa.table(arrays, names=names)


def _chunked(column, kind: pa.DataType) -> pa.ChunkedArray:
    column = column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column], type=column.type)
    return column if column.type == kind else column.cast(kind)


# --- image paths ------------------------------------------------------------------------------------------

def _candidates(post_id: str, md5: str | None, ext: str) -> list[str]:
    """Relative paths a Danbooru image may have, in the order they are tried."""
    names = []
    if md5:
        names.append(f"{md5}.{ext}")
    names.append(f"{post_id}.{ext}")
    if post_id.isdigit():
        # Danbooru2019 "original/0123/1234123.jpg": buckets by id modulo 1000, zero padded to 4 digits.
        names.append(f"{int(post_id) % 1000:04d}/{post_id}.{ext}")
    return names


class _InsideRoot:
    """Joins relative paths to a root and refuses those that escape it, with the verdict of
    :func:`sameid.images.resolve_inside` but without resolving every path: a lexically inside path can only
    escape through a symbolic link, so only paths with a link among their components are fully resolved."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.prefix = str(self.root)
        self._directory_is_link: dict[str, bool] = {}

    def join(self, relative: str) -> tuple[str, bool]:
        """(absolute path, whether it is an existing regular file); raises ImageError(OUTSIDE_ROOT)."""
        normalized = os.path.normpath(relative)
        if os.path.isabs(normalized) or normalized == os.pardir or normalized.startswith(os.pardir + os.sep):
            raise ImageError(OUTSIDE_ROOT, f"{relative!r} is outside {self.prefix}")
        path = os.path.join(self.prefix, normalized)
        directory = self.prefix
        for part in normalized.split(os.sep)[:-1]:
            directory = os.path.join(directory, part)
            is_link = self._directory_is_link.get(directory)
            if is_link is None:
                is_link = self._directory_is_link[directory] = os.path.islink(directory)
            if is_link:
                return self._resolved(relative)
        try:
            status = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return path, False
        if stat.S_ISLNK(status.st_mode):
            return self._resolved(relative)
        return path, stat.S_ISREG(status.st_mode)

    def _resolved(self, relative: str) -> tuple[str, bool]:
        resolved = resolve_inside(self.root, relative)
        return str(resolved), resolved.is_file()


def resolve_danbooru_images(table: pa.Table, image_root: str | os.PathLike) -> pa.Table:
    """Fill ``image`` (absolute path) and ``caption``, and make ``mask`` absolute, for the rows of a Danbooru
    source table (a row's caption, when not null, is kept; a null one becomes :func:`danbooru_captions` of its
    tags).

    The image is the first existing file among ``<root>/<md5>.<ext>``, ``<root>/<id>.<ext>`` and
    ``<root>/<id % 1000:04d>/<id>.<ext>`` (the Danbooru2019 layout); when none exists it is the first candidate,
    so the image loader reports ``"missing file"`` for it. A candidate or mask path that escapes the root (an md5
    of ``"../x"``, an absolute or symlinked path) is refused: the row gets ``image`` = null and ``path_error`` =
    ``"path outside image root"`` (metadata that points outside the root is not trusted for any of its paths).
    Stats files (one ``lstat`` per candidate tried), so call it on the rows left after filtering.
    """
    root = Path(image_root)
    if not root.is_dir():
        raise SameIdError(f"{root}: image root not found (the folder holding the Danbooru images)")
    inside = _InsideRoot(root)
    ids = table.column("id").to_pylist()
    md5s = table.column("md5").to_pylist() if "md5" in table.column_names else [None] * len(ids)
    exts = table.column("file_ext").to_pylist()
    masks = table.column("mask").to_pylist()
    path_errors = table.column("path_error").to_pylist()
    images: list[str | None] = []
    resolved_masks: list[str | None] = []
    for index, (post_id, md5, ext, mask) in enumerate(zip(ids, md5s, exts, masks, strict=True)):
        image, mask_path = None, None
        try:
            for position, relative in enumerate(_candidates(post_id, md5, ext)):
                candidate, exists = inside.join(relative)
                if position == 0 or exists:
                    image = candidate
                if exists:
                    break
            if mask is not None:
                mask_path = inside.join(mask)[0]
        except ImageError as exc:
            if exc.reason != OUTSIDE_ROOT:
                raise
            image, mask_path = None, None
            path_errors[index] = OUTSIDE_ROOT
        images.append(image)
        resolved_masks.append(mask_path)
    table = table.set_column(table.column_names.index("image"), "image", pa.array(images, pa.string()))
    table = table.set_column(table.column_names.index("path_error"), "path_error",
                             pa.array(path_errors, pa.string()))
    table = table.set_column(table.column_names.index("mask"), "mask", pa.array(resolved_masks, pa.string()))
    caption = table.column("caption")
    if caption.null_count:
        captions = danbooru_captions(table.column("tags"))
        if caption.null_count < len(caption):
            captions = pc.coalesce(caption, captions)
        table = table.set_column(table.column_names.index("caption"), "caption", captions)
    return table
