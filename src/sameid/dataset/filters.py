"""Tag filters: the first, cheap stage of a build, on the whole source table at once.

RetriBooru (arXiv 2312.02521, appendix A.1, "Filtering") removes posts with unwanted tags such as
``monochrome`` and ``sketch``, posts with more than one character tag, and posts without any of its clothing
tags (Danbooru's clothing tags minus shoes and accessories); what remains has "a single character and artist". The
outfit grouping that follows (:mod:`sameid.dataset.outfits`) groups by (character, artist), so a post without an
artist tag is refused (``no artist tag``) unless ``require_artist`` is off. sameid also refuses questionable and
explicit ratings (the paper's source, Danbooru 2019 Figures, was already safe-for-work).

Everything is columnar (pyarrow kernels on the flattened tags, numpy on the per-row results, slices on all
cores): each tag is hashed once, and a million posts of thirty tags take about two CPU-seconds
(``benchmarks/bench_tag_grouping.py``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SameIdError, SchemaError
from ..records import SOURCE_COLUMNS

#: Tags of posts that cannot show one figure's outfit in colour. The paper names monochrome and sketch; the
#: others are their Danbooru siblings: no colour (greyscale, sepia, lineart, silhouette, partially_colored,
#: spot_color) or several panels / views of the figure (comic, 2koma, 4koma, multiple_views, reference_sheet),
#: or no figure at all (text_only_page).
DEFAULT_UNWANTED_TAGS = frozenset({
    "monochrome", "greyscale", "sepia", "sketch", "lineart", "silhouette", "partially_colored", "spot_color",
    "comic", "2koma", "4koma", "multiple_views", "reference_sheet", "text_only_page",
})

#: Danbooru's general and sensitive ratings, in both spellings ("s" is "safe" in Danbooru before 2022 and
#: "sensitive" after; both are kept). "q"/"questionable" and "e"/"explicit" are refused as "unsafe rating".
DEFAULT_ALLOWED_RATINGS = frozenset({"g", "s", "general", "sensitive", "safe"})

# Reason strings written to rejected.parquet (exact; tests and stats read them).
UNSAFE_RATING = "unsafe rating"
UNWANTED_TAG = "unwanted tag: "  # followed by the first unwanted tag of the post
NO_CHARACTER = "no character tag"
MANY_CHARACTERS = "more than one character"
NO_ARTIST = "no artist tag"
MANY_ARTISTS = "more than one artist"
NO_CLOTHING = "no clothing tag"

_BUNDLED_VOCABULARY = "clothing_tags.txt"


def _normalize_tag(tag: str) -> str:
    return "_".join(tag.strip().lower().split())


def load_vocabulary(path: str | os.PathLike | None = None) -> tuple[str, ...]:
    """Tags of a vocabulary file (one per line, ``#`` comment lines), in file order, without repeats.

    ``None`` reads the bundled Danbooru clothing vocabulary (``sameid/data/clothing_tags.txt``). Tags are
    lowercased and spaces become underscores, so ``School Uniform`` matches Danbooru's ``school_uniform``.
    """
    if path is None:
        text = resources.files("sameid.data").joinpath(_BUNDLED_VOCABULARY).read_text(encoding="utf-8")
        where = f"sameid/data/{_BUNDLED_VOCABULARY}"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SameIdError(f"{path}: vocabulary file not found (one tag per line)") from None
        where = str(path)
    tags = [_normalize_tag(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not tags:
        raise SameIdError(f"{where}: the vocabulary has no tags (one tag per line, '#' starts a comment)")
    return tuple(dict.fromkeys(tags))


@dataclass(frozen=True)
class FilterConfig:
    """What :func:`apply_tag_filters` keeps. Tag sets may be any iterable of tags; they are normalised.

    A row with a null rating (a source that does not rate its images) passes the rating filter: only a
    rating outside ``allowed_ratings`` is refused. ``require_artist`` (on by default; RetriBooru, arXiv
    2312.02521, A.1: every image has "a single character and artist") refuses posts without an artist tag, whose
    style the (character, artist) grouping cannot pin. ``require_single_artist`` also refuses posts of several
    artists (off by default: a collaboration's joined artist key, "a+b", is one style).
    """

    unwanted_tags: frozenset[str] = DEFAULT_UNWANTED_TAGS
    clothing_vocabulary: tuple[str, ...] = field(default_factory=load_vocabulary)
    require_single_character: bool = True
    require_clothing_tag: bool = True
    require_artist: bool = True
    require_single_artist: bool = False
    allowed_ratings: frozenset[str] = DEFAULT_ALLOWED_RATINGS

    def __post_init__(self):
        object.__setattr__(self, "unwanted_tags", frozenset(_normalize_tag(t) for t in self.unwanted_tags))
        object.__setattr__(self, "clothing_vocabulary",
                           tuple(dict.fromkeys(_normalize_tag(t) for t in self.clothing_vocabulary)))
        object.__setattr__(self, "allowed_ratings", frozenset(r.strip().lower() for r in self.allowed_ratings))


@dataclass
class _TagHits:
    """Per-row results of matching one slice of the tag lists against the unwanted and clothing tags."""

    first_unwanted: pa.Array | pa.ChunkedArray  # the row's first unwanted tag, or null
    unwanted: pa.ListArray | pa.ChunkedArray  # all of the row's unwanted tags
    cloth_tags: pa.ListArray | pa.ChunkedArray  # the row's clothing tags, in the row's tag order


def _lists_at(flat: pa.Array, positions: np.ndarray, row_offsets: np.ndarray) -> pa.ListArray:
    """The values of ``flat`` at sorted ``positions``, grouped into the rows that ``row_offsets`` delimit."""
    offsets = np.searchsorted(positions, row_offsets).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat.take(pa.array(positions)))


def _match_tags(tags: pa.ListArray, value_set: pa.Array, unwanted_count: int) -> _TagHits:
    """One hash lookup per tag (``index_in`` against unwanted + clothing tags); all else touches only the hits,
    so no numpy array as long as the flattened tags is ever made."""
    flat = pc.list_flatten(tags)
    row_offsets = np.asarray(tags.offsets, dtype=np.int64)
    row_offsets -= row_offsets[0]
    codes = pc.index_in(flat, value_set=value_set)
    hits = pc.indices_nonzero(codes.is_valid()).to_numpy().astype(np.int64)
    is_unwanted = codes.take(pa.array(hits)).to_numpy(zero_copy_only=False) < unwanted_count
    unwanted = _lists_at(flat, hits[is_unwanted], row_offsets)
    lengths = pc.list_value_length(unwanted).to_numpy()
    first = np.asarray(unwanted.offsets)[:-1]
    first_unwanted = unwanted.values.take(pa.array(first, mask=lengths == 0))
    return _TagHits(first_unwanted, unwanted, _lists_at(flat, hits[~is_unwanted], row_offsets))


# Rows filtered per task. Small enough that each kernel's output fits in the allocator's reusable memory (large
# fresh allocations cost page faults, which dominated on small machines), large enough to amortise ~30 calls.
_SLICE_ROWS = 32_768


def _row_ranges(table: pa.Table, step: int = _SLICE_ROWS) -> list[tuple[int, int]]:
    """(start, length) slices of about ``step`` rows to filter in parallel, cut at the tags column's chunk
    bounds (a reader's many small chunks are grouped, a large chunk is cut)."""
    ranges: list[tuple[int, int]] = []
    start, length = 0, 0
    for chunk in table.column("tags").chunks:
        for offset in range(0, len(chunk), step):
            piece = min(step, len(chunk) - offset)
            if length and length + piece > step:
                ranges.append((start, length))
                start, length = start + length, 0
            length += piece
    if length:
        ranges.append((start, length))
    return ranges


def _count(lists: pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(pc.list_value_length(lists), 0).to_numpy()


def apply_tag_filters(table: pa.Table, config: FilterConfig | None = None) -> tuple[pa.Table, pa.Table]:
    """Split a source table into ``(kept, rejected)`` by tags and rating.

    ``kept`` is the input's kept rows with a ``cloth_tags`` column (list of str: the row's tags found in the
    clothing vocabulary, in the row's own tag order). ``rejected`` is the other rows with ``reason`` and
    ``detail`` columns; a row is given the first reason it meets, in this order: ``"unsafe rating"``,
    ``"unwanted tag: <first unwanted tag>"``, ``"no character tag"``, ``"more than one character"``, (with
    ``require_artist`` or ``require_single_artist``) ``"no artist tag"``, (with ``require_single_artist``)
    ``"more than one artist"``, ``"no clothing tag"``.
    Row order is kept in both tables.
    """
    config = config or FilterConfig()
    for name in ("tags", "characters", "artists", "rating"):
        if name not in table.column_names:
            raise SchemaError(f"apply_tag_filters: the table has no {name!r} column (a source table has "
                              f"{', '.join(SOURCE_COLUMNS)})")
    unwanted_list = sorted(config.unwanted_tags)
    cloth_list = [tag for tag in config.clothing_vocabulary if tag not in config.unwanted_tags]
    value_set = pa.array(unwanted_list + cloth_list, pa.string())
    ratings = pa.array(sorted(config.allowed_ratings), pa.string())
    ranges = _row_ranges(table)
    if not ranges:
        empty = pa.chunked_array([], pa.string())
        return (_with_column(table, "cloth_tags", pa.chunked_array([], pa.list_(pa.string()))),
                _with_column(_with_column(table, "reason", empty), "detail", empty))

    def filter_slice(bounds: tuple[int, int]) -> tuple[pa.Table, pa.Table]:
        return _filter_slice(table.slice(*bounds), config, value_set, len(unwanted_list), ratings)

    # pyarrow kernels release the GIL, so slices are filtered on all cores.
    with ThreadPoolExecutor(max_workers=min(len(ranges), os.cpu_count() or 1)) as pool:
        parts = list(pool.map(filter_slice, ranges))
    return pa.concat_tables([p[0] for p in parts]), pa.concat_tables([p[1] for p in parts])


def _filter_slice(table: pa.Table, config: FilterConfig, value_set: pa.Array, unwanted_count: int,
                  ratings: pa.Array) -> tuple[pa.Table, pa.Table]:
    parts = [_match_tags(chunk, value_set, unwanted_count) for chunk in table.column("tags").chunks]
    hits = _TagHits(*(pa.chunked_array([getattr(part, name) for part in parts], kind) for name, kind in (
        ("first_unwanted", pa.string()), ("unwanted", pa.list_(pa.string())), ("cloth_tags", pa.list_(pa.string())))))
    rating = pc.utf8_lower(pc.utf8_trim_whitespace(table.column("rating").cast(pa.string())))
    allowed = pc.is_in(rating, value_set=ratings)
    unsafe = pc.and_(pc.is_valid(rating), pc.invert(allowed)).to_numpy(zero_copy_only=False)
    characters = _count(table.column("characters"))
    artists = _count(table.column("artists"))
    # Reason codes in order of precedence; 0 = kept. np.select takes the first condition that holds.
    conditions = [
        unsafe,
        hits.first_unwanted.is_valid().to_numpy(zero_copy_only=False),
        config.require_single_character & (characters == 0),
        config.require_single_character & (characters > 1),
        (config.require_artist or config.require_single_artist) & (artists == 0),
        config.require_single_artist & (artists > 1),
        config.require_clothing_tag & (_count(hits.cloth_tags) == 0),
    ]
    code = np.select(conditions, np.arange(1, len(conditions) + 1), 0)
    # take() with row indices: several times faster than filter() with a mask on list columns.
    kept_rows, rejected_rows = pa.array(np.flatnonzero(code == 0)), pa.array(np.flatnonzero(code != 0))
    rejected = table.take(rejected_rows)
    reason, detail = _reasons(rejected, code[code != 0], hits.first_unwanted.take(rejected_rows),
                              hits.unwanted.take(rejected_rows))
    kept = _with_column(table.take(kept_rows), "cloth_tags", hits.cloth_tags.take(kept_rows))
    return kept, _with_column(_with_column(rejected, "reason", reason), "detail", detail)


_FIXED_REASONS = [None, UNSAFE_RATING, None, NO_CHARACTER, MANY_CHARACTERS, NO_ARTIST, MANY_ARTISTS, NO_CLOTHING]


def _reasons(rejected: pa.Table, code: np.ndarray, first_unwanted, unwanted) -> tuple[pa.Array, pa.Array]:
    """``reason`` and ``detail`` strings of the rejected rows, built column-wise from the reason codes."""
    if len(code) == 0:
        return pa.array([], pa.string()), pa.array([], pa.string())
    fixed = pa.DictionaryArray.from_arrays(pa.array(code, pa.int8()), pa.array(_FIXED_REASONS, pa.string()))
    fixed = fixed.cast(pa.string())
    is_unwanted = pa.array(code == 2)
    reason = pc.if_else(is_unwanted, pc.binary_join_element_wise(UNWANTED_TAG, first_unwanted, ""), fixed)

    details = [
        pc.binary_join_element_wise("rating ", _column(rejected, "rating"), ""),
        pc.binary_join_element_wise("unwanted tags: ", pc.binary_join(unwanted, ", "), ""),
        pa.scalar(""),
        pc.binary_join_element_wise("characters: ", pc.binary_join(_column(rejected, "characters"), ", "), ""),
        pa.scalar(""),
        pc.binary_join_element_wise("artists: ", pc.binary_join(_column(rejected, "artists"), ", "), ""),
        pa.scalar("none of the post's tags is in the clothing vocabulary"),
    ]
    # case_when picks, per row, the detail of the row's reason code (1..7).
    conditions = pa.StructArray.from_arrays([pa.array(code == value) for value in range(1, len(details) + 1)],
                                            names=[str(value) for value in range(1, len(details) + 1)])
    detail = pc.case_when(conditions, *[d.combine_chunks() if isinstance(d, pa.ChunkedArray) else d
                                        for d in details])
    return reason, detail


def _column(table: pa.Table, name: str) -> pa.Array:
    return table.column(name).combine_chunks()


def _with_column(table: pa.Table, name: str, values) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)

