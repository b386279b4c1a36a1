"""Danbooru metadata as it is published, as a source table, and the image paths of its rows.

RetriBooru (arXiv 2312.02521, section 3 and appendix A.1) is built from Danbooru 2019 Figures, whose
metadata carries Danbooru's own post fields. Posts are read in either of Danbooru's shapes (docs/build.md,
"Danbooru as published"):

- the API shape: ``id`` (int or str), ``file_ext``, ``tag_string_general``, ``tag_string_character``,
  ``tag_string_artist`` (each either Danbooru's space-separated string or a JSON list of tags; the two forms may
  be mixed across rows);
- the Danbooru2019/2021 metadata shape: ``id``, ``file_ext`` and ``tags``, a list of ``{"id", "name",
  "category"}`` objects whose category (a number or a string of one) says which field a tag belongs to: "0"
  general, "1" artist, "4" character ("3" copyright and "5" meta are not used);
- optional in both: ``md5``, ``rating``, ``image_width``, ``image_height`` (integers, or strings of digits as
  the Danbooru20xx dumps write every number), and the precomputed annotations of docs/architecture.md
  ("Contracts"): ``head_box`` [x0, y0, x1, y1] in pixels and ``mask`` (a path relative to the image root).
  Other keys are ignored.

The file is JSON lines (one post, or one API page of posts, per line), or one JSON document: an API page saved
as returned (a JSON array, over one line or many), an indented JSON object, or several of them in a row.

:func:`read_danbooru` reads a clean, uniformly typed JSON-lines file with ``pyarrow.json`` and
``pyarrow.compute`` (a million rows in seconds); a file whose fields change type between rows, or that has a
malformed line, is read again line by line, which is slower but names the line; a JSON document is read with
:mod:`json`, naming the line of a bad post. ``image`` and ``caption`` are left null by the reader:
:func:`resolve_danbooru_images` fills them after the tag filters, for the rows the filters keep, because
resolving stats files and building a caption costs nearly as much as splitting the tags (a million posts of
thirty tags make 300 MB of captions). It finds each file under the published folder layouts
(:mod:`sameid.sources.danbooru_layouts`).
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from ..errors import ImageError, SameIdError, SchemaError
from ..images import OUTSIDE_ROOT
from ..records import source_schema

REQUIRED_FIELDS = ("id", "file_ext", "tag_string_general", "tag_string_character", "tag_string_artist")
OPTIONAL_FIELDS = ("md5", "rating", "image_width", "image_height", "head_box", "mask")
#: Danbooru tag field -> source table column.
TAG_FIELDS = {"tag_string_general": "tags", "tag_string_character": "characters", "tag_string_artist": "artists"}
#: Source-specific columns kept after the columns of :data:`sameid.records.SOURCE_COLUMNS`.
EXTRA_COLUMNS = ("md5", "file_ext")

#: ``reason`` of a line that could not be read (``on_bad_line="skip"``).
MALFORMED_LINE = "malformed metadata line"

#: Danbooru2019/2021 metadata: a post's ``tags`` is a list of ``{"id", "name", "category"}``; the category says
#: which Danbooru tag field the tag belongs to (copyright "3" and meta "5" are not used).
TAG_CATEGORIES = {"0": "tag_string_general", "4": "tag_string_character", "1": "tag_string_artist"}
#: Required fields of a post in the Danbooru2019/2021 metadata shape.
CATEGORISED_FIELDS = ("id", "file_ext", "tags")

_STRING_FIELDS = ("file_ext", "md5", "rating", "mask")
_INT_FIELDS = ("image_width", "image_height")
# pyarrow.json parses blocks in parallel; larger blocks mean fewer chunks to stitch.
_BLOCK_SIZE = 16 << 20


def read_danbooru(metadata_path: str | os.PathLike, *, on_bad_line: str = "raise"):
    """Read Danbooru metadata (JSON lines or one JSON document, API or Danbooru2019 shape, see the module
    docstring) into a :class:`sameid.sources.SourceTable`.

    ``table`` has the columns of :data:`sameid.records.SOURCE_COLUMNS` followed by ``md5`` and ``file_ext``:
    tags split into lists, ``image`` and ``caption`` null (:func:`resolve_danbooru_images` fills them; the
    caption is :func:`danbooru_captions` of the general tags), ``mask`` still relative to the image root.

    A malformed line (not JSON, not an object, a required field missing or null, a value of the wrong type, a
    head box that is not 4 increasing numbers) raises :class:`SchemaError` naming the file and line number when
    ``on_bad_line="raise"`` (the default); with ``on_bad_line="skip"`` it becomes a row of ``rejected`` (columns
    ``id``, ``image``, ``reason`` = ``"malformed metadata line"``, ``detail`` = ``"line N: ..."``) and reading goes
    on. A post of a page written on one line is ``line N, post K``; a post of an indented document is named by
    the line it starts on. A required field that no row has, and a JSON syntax error in a JSON document (which
    nothing after it can be trusted past), are a :class:`SchemaError` in both modes.
    """
    from . import SourceTable

    if on_bad_line not in ("raise", "skip"):
        raise ValueError(f"on_bad_line must be 'raise' or 'skip', not {on_bad_line!r}")
    path = Path(metadata_path)
    if not path.is_file():
        raise SameIdError(f"{path}: Danbooru metadata file not found (expected JSON lines, one post per line, "
                          "or a JSON array of posts)")
    if _is_json_document(path):
        columns, rejected = _read_records(path, _document_records(path), on_bad_line)
        return SourceTable(_assemble(columns), rejected, "danbooru")
    columns = _read_fast(path)
    rejected = pd.DataFrame(columns=["id", "image", "reason", "detail"])
    if columns is None:
        columns, rejected = _read_records(path, _line_records(path), on_bad_line)
    return SourceTable(_assemble(columns), rejected, "danbooru")


# --- the file's shape: JSON lines, or one JSON document -------------------------------------------------------

def _first_lines(path: Path, count: int = 2) -> list[bytes]:
    """The first ``count`` non-blank lines (fewer in a shorter file)."""
    lines = []
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                lines.append(line)
                if len(lines) == count:
                    break
    return lines


def _is_json_document(path: Path) -> bool:
    """Whether the file is one indented JSON document (an array or object over several lines) rather than JSON
    lines. A first line that is valid JSON by itself (a post, or an API page on one line) means JSON lines; so
    does a first line that is a broken post, which the line reader then names."""
    lines = _first_lines(path)
    if not lines:
        return False
    first = lines[0].strip().removeprefix(codecs.BOM_UTF8)
    try:
        json.loads(first)
        return False
    except ValueError:
        pass
    if first in (b"[", b"{", b"[{"):
        return True
    return first[:1] in (b"[", b"{") and len(lines) > 1 and lines[1][:1] in (b" ", b"\t")


# --- fast path: pyarrow.json ------------------------------------------------------------------------------

def _first_record(path: Path) -> dict | None:
    lines = _first_lines(path, 1)
    if not lines:
        return None
    try:
        record = json.loads(lines[0])
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _is_categorised(record: dict) -> bool:
    """Whether a post is in the Danbooru2019/2021 metadata shape (``tags`` objects, no ``tag_string_*``)."""
    return isinstance(record.get("tags"), list) and all(record.get(name) is None for name in TAG_FIELDS)


def _tag_object_type(tags: list) -> pa.DataType | None:
    """The Arrow type of a Danbooru2019 ``tags`` list, from its first object (categories as strings, as the
    dumps write them, or as numbers); None when the first item is not such an object."""
    if not tags:
        return pa.list_(pa.struct([("name", pa.string()), ("category", pa.string())]))
    first = tags[0]
    if not isinstance(first, dict) or not isinstance(first.get("name"), str):
        return None
    category = first.get("category")
    kind = pa.string() if isinstance(category, str) else pa.int64() if type(category) is int else None
    return None if kind is None else pa.list_(pa.struct([("name", pa.string()), ("category", kind)]))


def _sniffed_schema(first: dict) -> pa.Schema | None:
    """The explicit schema the whole file must follow, guessed from its first row; None when not guessable."""
    fields = []
    required = CATEGORISED_FIELDS if _is_categorised(first) else REQUIRED_FIELDS
    for name in required + OPTIONAL_FIELDS:
        value = first.get(name)
        if name == "id":
            kind = pa.int64() if type(value) is int else pa.string() if isinstance(value, str) else None
        elif name == "tags":
            kind = _tag_object_type(value)
        elif name in TAG_FIELDS:
            kind = pa.string() if isinstance(value, str) else pa.list_(pa.string()) if isinstance(value, list) else None
        elif name in _INT_FIELDS:
            # Danbooru20xx dumps write numbers as strings; they are cast (a non-number sends the file to the
            # line-by-line reader, which names the line).
            kind = pa.string() if isinstance(value, str) else pa.int64()
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
    categorised = "tags" in batch.schema.names
    for name in CATEGORISED_FIELDS if categorised else REQUIRED_FIELDS:
        column = batch.column(name)
        if column.null_count or (pa.types.is_list(column.type) and pc.list_flatten(column).null_count):
            return None
        if name in ("id", "file_ext") and pa.types.is_string(column.type) and pc.any(pc.equal(column, "")).as_py():
            return None
    if not _head_boxes_valid(batch.column("head_box")):
        return None
    columns = {name: batch.column(name) for name in batch.schema.names}
    columns["id"] = columns["id"].cast(pa.string())
    for name in _INT_FIELDS:
        if pa.types.is_string(columns[name].type):
            columns[name] = columns[name].cast(pa.int64())  # raises ArrowInvalid on a non-number
    if categorised:
        tags = columns.pop("tags")
        items = pc.list_flatten(tags)
        if items.field("name").null_count or items.field("category").null_count:
            return None
        columns.update(_tags_by_category(tags))
    else:
        for name in TAG_FIELDS:
            columns[name] = _tag_lists(columns[name])
    return columns


def _tags_by_category(tags: pa.ListArray) -> dict[str, pa.ListArray]:
    """Danbooru2019 ``tags`` (lists of {name, category}) -> the three tag fields, as lists of names."""
    items = pc.list_flatten(tags)
    names, categories = items.field("name"), items.field("category")
    if not pa.types.is_string(categories.type):
        categories = categories.cast(pa.string())
    parents = pc.list_parent_indices(tags).to_numpy()
    split = {}
    for code, name in TAG_CATEGORIES.items():
        chosen = pc.equal(categories, code)
        counts = np.bincount(parents[chosen.to_numpy(zero_copy_only=False)], minlength=len(tags))
        offsets = np.zeros(len(tags) + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        split[name] = _clean_tag_lists(pa.ListArray.from_arrays(pa.array(offsets), names.filter(chosen)))
    return split


def _head_boxes_valid(boxes: pa.ChunkedArray) -> bool:
    if boxes.null_count == len(boxes):
        return True
    present = pc.drop_null(boxes)
    if not pc.all(pc.equal(pc.list_value_length(present), 4)).as_py():
        return False
    values = pc.list_flatten(present).to_numpy(zero_copy_only=False).reshape(-1, 4)
    return bool(np.isfinite(values).all() and (values[:, 2] > values[:, 0]).all()
                and (values[:, 3] > values[:, 1]).all())


# --- slow path: post by post ------------------------------------------------------------------------------

class _BadLine(Exception):
    pass


class _NotJson:
    """A line that is not JSON (the line reader goes on; ``on_bad_line`` decides)."""

    def __init__(self, message: str):
        self.message = message


def _tag_list(value, name: str) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(tag, str) for tag in value):
        return [tag for tag in value if tag.strip()]
    raise _BadLine(f"{name} must be a space-separated string or a list of strings, not {value!r}")


def _categorised_tags(tags) -> dict[str, list[str]]:
    """Danbooru2019 ``tags`` objects -> the three tag fields (a category is a number or a string of one)."""
    split: dict[str, list[str]] = {name: [] for name in TAG_FIELDS}
    for tag in tags:
        category = tag.get("category") if isinstance(tag, dict) else None
        if not isinstance(tag, dict) or not isinstance(tag.get("name"), str) or type(category) not in (str, int):
            raise _BadLine(f"tags must be a list of {{\"name\", \"category\"}} objects (Danbooru2019 metadata), "
                           f"not {tag!r}")
        field = TAG_CATEGORIES.get(str(category))
        if field is not None and tag["name"].strip():
            split[field].append(tag["name"])
    return split


def _optional_text(record: dict, name: str) -> str | None:
    value = record.get(name)
    if value is None or isinstance(value, str):
        return value
    raise _BadLine(f"{name} must be a string, not {value!r}")


_INTEGER_TEXT = re.compile(r"\s*[+-]?\d+\s*", re.ASCII)


def _optional_int(record: dict, name: str) -> int | None:
    value = record.get(name)
    if value is None:
        return None
    if type(value) is float and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
        value = int(value)  # "image_width": "1000", as the Danbooru20xx dumps write numbers
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
    categorised = _is_categorised(record)
    for name in CATEGORISED_FIELDS if categorised else REQUIRED_FIELDS:
        if record.get(name) is None:
            hint = " (or a Danbooru2019 'tags' list)" if name in TAG_FIELDS and "tags" not in record else ""
            raise _BadLine(f"missing required field {name!r}{hint}")
    post_id = record["id"]
    if type(post_id) is not int and not (isinstance(post_id, str) and post_id.strip()):
        raise _BadLine(f"id must be an integer or a non-empty string, not {post_id!r}")
    parsed = {"id": str(post_id)}
    if categorised:
        parsed.update(_categorised_tags(record["tags"]))
    else:
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


def _is_page(value) -> bool:
    """A JSON array of posts (an API page, maybe empty), as opposed to an array that is not meant as posts."""
    return isinstance(value, list) and (not value or any(isinstance(item, dict) for item in value))


def _line_records(path: Path) -> Iterator[tuple[int, str, object]]:
    """(line number, location, post) of a JSON-lines file; a line may hold one post or a page of posts."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                yield number, f"line {number}", _NotJson(f"not valid JSON ({exc})")
                continue
            if _is_page(value):
                for index, item in enumerate(value, start=1):
                    yield number, f"line {number}, post {index}", item
            else:
                yield number, f"line {number}", value


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _document_records(path: Path) -> Iterator[tuple[int, str, object]]:
    """(line number, location, post) of one JSON document: an array of posts or a post, indented or not, or
    several of them in a row. A syntax error ends the reading (nothing after it can be trusted)."""
    text = path.read_text(encoding="utf-8-sig")
    decoder = json.JSONDecoder()
    counted = {"position": 0, "line": 1}

    def line_at(position: int) -> int:
        counted["line"] += text.count("\n", counted["position"], position)
        counted["position"] = position
        return counted["line"]

    def skip(position: int) -> int:
        return _WHITESPACE.match(text, position).end()

    def decode(position: int):
        try:
            return decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg}); a JSON document cannot be "
                              "read past a syntax error: fix the file") from None

    position = skip(0)
    while position < len(text):
        if text[position] != "[":
            value, end = decode(position)
            number = line_at(position)
            yield number, f"line {number}", value
            position = skip(end)
            continue
        position = skip(position + 1)
        closed = position < len(text) and text[position] == "]"
        while not closed:
            value, end = decode(position)
            number = line_at(position)
            yield number, f"line {number}", value
            position = skip(end)
            separator = text[position: position + 1]
            if separator not in (",", "]"):
                raise SchemaError(f"{path}: line {line_at(position)}: not valid JSON (expected ',' or ']' after "
                                  "a post); a JSON document cannot be read past a syntax error: fix the file")
            closed = separator == "]"
            if not closed:
                position = skip(position + 1)
        position = skip(position + 1)


def _read_records(path: Path, records: Iterable[tuple[int, str, object]],
                  on_bad_line: str) -> tuple[dict[str, pa.Array], pd.DataFrame]:
    names = ("id",) + tuple(TAG_FIELDS) + _STRING_FIELDS + _INT_FIELDS + ("head_box",)
    values: dict[str, list] = {name: [] for name in names}
    seen_fields: set[str] = set()
    objects = 0
    rejected = []
    for number, location, record in records:
        try:
            if isinstance(record, _NotJson):
                raise _BadLine(record.message)
            if isinstance(record, dict):
                objects += 1
                seen_fields.update(name for name in REQUIRED_FIELDS if record.get(name) is not None)
                if _is_categorised(record):
                    seen_fields.update(TAG_FIELDS)
            parsed = _parse_record(record)
        except _BadLine as exc:
            if on_bad_line == "raise":
                raise SchemaError(f"{path}: {location}: {exc}; fix the line or read with on_bad_line='skip' to "
                                  "reject it") from None
            post_id = record.get("id") if isinstance(record, dict) else None
            rejected.append({"id": f"{path.name}:{number}" if post_id is None else str(post_id),
                             "image": None, "reason": MALFORMED_LINE, "detail": f"{location}: {exc}"})
            continue
        for name in names:
            values[name].append(parsed[name])
    missing = [name for name in REQUIRED_FIELDS if name not in seen_fields]
    if missing and objects:
        raise SchemaError(f"{path}: no row has the required field(s) {', '.join(map(repr, missing))}; Danbooru "
                          f"metadata needs id, file_ext and either {', '.join(TAG_FIELDS)} (the API shape) or "
                          "tags, a list of {name, category} (the Danbooru2019 shape), on every post")
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

#: Column :func:`resolve_danbooru_images` adds: for a post whose file is under no layout, the paths tried (the
#: ``detail`` of its ``missing file`` rejection); null for the others.
NOT_FOUND_COLUMN = "image_not_found"


def resolve_danbooru_images(table: pa.Table, image_root: str | os.PathLike, layout: str = "auto") -> pa.Table:
    """Fill ``image`` (absolute path) and ``caption``, and make ``mask`` absolute, for the rows of a Danbooru
    source table (a row's caption, when not null, is kept; a null one becomes :func:`danbooru_captions` of its
    tags).

    The image is found under the folder layouts Danbooru images are published in
    (:mod:`sameid.sources.danbooru_layouts`: ``flat`` ``<md5>.<ext>`` / ``<id>.<ext>``, ``original``
    ``[original/]<id % 1000:04d>/<id>.<ext>``, ``512px`` ``[512px/]<id % 1000:04d>/<id>.jpg``, ``cdn``
    ``<md5[:2]>/<md5[2:4]>/<md5>.<ext>``); ``layout`` pins one, ``"auto"`` tries them all, the one that found
    most files first. When none holds the file, ``image`` is its path under that layout, so the image loader
    rejects it as ``"missing file"``, and the added column ``image_not_found`` lists the paths tried (relative to
    the root); it is null for the other rows. A candidate or mask path that escapes the root (an md5 of
    ``"../x"``, an absolute or symlinked path) is refused: the row gets ``image`` = null and ``path_error`` =
    ``"path outside image root"`` (metadata that points outside the root is not trusted for any of its paths).
    Stats files (one ``lstat`` per row once the layout shows), so call it on the rows left after filtering.
    """
    from .danbooru_layouts import LayoutResolver

    root = Path(image_root)
    resolver = LayoutResolver(root, layout)
    if not root.is_dir():
        raise SameIdError(f"{root}: image root not found (the folder holding the Danbooru images)")
    inside = resolver.inside
    ids = table.column("id").to_pylist()
    md5s = table.column("md5").to_pylist() if "md5" in table.column_names else [None] * len(ids)
    exts = table.column("file_ext").to_pylist()
    masks = table.column("mask").to_pylist()
    path_errors = table.column("path_error").to_pylist()
    images: list[str | None] = []
    resolved_masks: list[str | None] = []
    not_found: list[str | None] = []
    for index, (post_id, md5, ext, mask) in enumerate(zip(ids, md5s, exts, masks, strict=True)):
        image, mask_path, tried = None, None, []
        try:
            image, tried = resolver.find(post_id, md5, ext)
            if mask is not None:
                mask_path = inside.join(mask)[0]
        except ImageError as exc:
            if exc.reason != OUTSIDE_ROOT:
                raise
            image, mask_path, tried = None, None, []
            path_errors[index] = OUTSIDE_ROOT
        images.append(image)
        resolved_masks.append(mask_path)
        not_found.append(f"not found under {resolver.describe()}; tried {', '.join(tried)}"
                         if tried else None)
    table = table.set_column(table.column_names.index("image"), "image", pa.array(images, pa.string()))
    table = table.set_column(table.column_names.index("path_error"), "path_error",
                             pa.array(path_errors, pa.string()))
    table = table.set_column(table.column_names.index("mask"), "mask", pa.array(resolved_masks, pa.string()))
    not_found_column = pa.array(not_found, pa.string())
    if NOT_FOUND_COLUMN in table.column_names:
        table = table.set_column(table.column_names.index(NOT_FOUND_COLUMN), NOT_FOUND_COLUMN, not_found_column)
    else:
        table = table.append_column(NOT_FOUND_COLUMN, not_found_column)
    caption = table.column("caption")
    if caption.null_count:
        captions = danbooru_captions(table.column("tags"))
        if caption.null_count < len(caption):
            captions = pc.coalesce(caption, captions)
        table = table.set_column(table.column_names.index("caption"), "caption", captions)
    return table
