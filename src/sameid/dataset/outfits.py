"""Outfit identities: same character, same artist, same answer to one question about the clothes' colours.

RetriBooru (arXiv 2312.02521, appendix A.1, "Clustering clothes") groups posts by (character, artist),
asks a VQA model "List top two colors of the character's cloths" for each post, and puts two posts of a group
together when their answers match. The match is strict and order-sensitive: "black and pink" and "pink and
black" are different outfits. The paper's Algorithm 1 compares answers pairwise within each group; here the
(character, artist, answer) triple is hashed once per row (:func:`group_ids`) and each row's siblings are
gathered with numpy offsets (:func:`similar_lists`), so a million rows group in well under a second.

Matching is strict by default, as in the paper (:data:`ANSWER_MATCHINGS`): answers are compared after case,
whitespace and punctuation are normalised and the two colour phrases are taken out of the answer
(:func:`normalize_answer`), so "Black and pink." = "black & pink" = "The top two colors are black and pink", while
the colour words themselves must be the same words in the same order ("navy and white" is not "light blue and
white", "grey" is not "gray"). ``matching="color-family"`` also reduces each colour to its basic colour term
(:func:`sameid.backends.colors.normalize_color_word`: navy = light blue = blue), a looser grouping that tolerates a
VQA model's wording.

Posts without an artist tag are refused by the filters by default (A.1: "a single character and artist"); a build
that allows them groups them under the explicit artist key :data:`UNKNOWN_ARTIST`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SameIdError

#: The question asked of the VQA backend for every post (the paper writes "cloths").
OUTFIT_QUESTION = "List top two colors of the character's clothes"

#: Separator of the parts of an ``identity`` string: ``"character|artist|outfit"``.
IDENTITY_SEPARATOR = "|"

#: How answers are compared: "strict" (the paper's heuristic: the same colour words in the same order) or
#: "color-family" (each colour reduced to its basic colour term before the comparison).
ANSWER_MATCHINGS = ("strict", "color-family")

#: The artist key of posts without an artist tag (only when a build allows them). Not a possible Danbooru tag
#: (tags have no spaces), so it never merges with a real artist.
UNKNOWN_ARTIST = "(unknown artist)"

# A preamble the model may put before the colours: "The top two colors are ...", "Colors: ...".
_PREAMBLE = re.compile(r"^.*?\b(?:are|is)\b\s+|^[^:]*:\s*")
# What separates the two colours: commas, "and", "&", "/", "+", ";", "then", "followed by".
_SEPARATORS = re.compile(r"\s*(?:,|;|/|&|\+|\band\b|\bthen\b|\bfollowed by\b)\s*")
# The end of a sentence separates like ";". Other punctuation becomes a space ("light-blue" = "light blue").
_SENTENCE_END = re.compile(r"[.!?]+")
_PUNCTUATION = re.compile(r"[^a-z,;:/&+\s]")
# A colour phrase that describes these is not about the clothes ("pink hair", "blue-eyed").
_NOT_CLOTHES = frozenset({"hair", "haired", "hairstyle", "eye", "eyes", "eyed", "skin", "skinned", "lips"})
_HAIR_COLOURS = frozenset({"blond", "blonde"})


def _check_matching(matching: str) -> None:
    if matching not in ANSWER_MATCHINGS:
        raise SameIdError(f"unknown answer matching {matching!r}; choose one of: {', '.join(ANSWER_MATCHINGS)}")


def _is_colour(token: str) -> bool:
    from ..backends.colors import normalize_color_word  # imports OpenCV; only needed when answers are grouped

    return normalize_color_word(token) is not None


def _colour_phrase(words: list[str]) -> bool:
    """True for "pink", "light blue", "navy blue": colour words and modifiers, at least one colour word."""
    from ..backends.colors import is_color_modifier

    return bool(words) and any(_is_colour(w) for w in words) and all(
        _is_colour(w) or is_color_modifier(w) for w in words)


def _phrases_in_prose(text: str) -> list[str]:
    """The colour phrases of a sentence answer in reading order, without those of hair, eyes or skin:
    "She wears a black dress with pink ribbons; her hair is blonde" -> ["black", "pink"]."""
    from ..backends.colors import is_color_modifier

    words = re.sub(r"([,;:/&+])", r" \1 ", text).split()  # separators are words that end a colour phrase
    phrases, run = [], []
    for index, word in enumerate(words + [""]):
        if word and (_is_colour(word) or (is_color_modifier(word) and index + 1 < len(words))):
            run.append(word)
            continue
        while run and not _is_colour(run[-1]):  # "light" before a non-colour word is not a colour
            run.pop()
        if run and word not in _NOT_CLOTHES and not _HAIR_COLOURS & set(run):
            phrases.append(" ".join(run))
        run = []
    return phrases


def answer_colours(answer: str | None) -> list[str] | None:
    """The colour phrases of a VQA answer, exactly as worded (lowercase, single spaces), in the answer's order.

    A list answer ("black and pink", "Colors: grey / navy", "The top two colors are black and pink") gives all its
    parts, which must each be a colour phrase ("light blue", "navy blue"); a sentence answer ("She is wearing a
    black shirt and a white skirt; her hair is pink") gives its first two colour phrases that do not describe
    hair, eyes or skin. None when the answer is not text.
    """
    if not isinstance(answer, str):
        return None
    text = _SENTENCE_END.sub(";", answer.lower().replace("\u2019", "'"))
    text = " ".join(_PUNCTUATION.sub(" ", text).split())
    listed = _PREAMBLE.sub("", text, count=1).replace(":", " ")
    parts = [" ".join(w for w in part.split() if w != "the") for part in _SEPARATORS.split(listed)]
    parts = [part for part in parts if part]
    if parts and all(_colour_phrase(part.split()) for part in parts):
        return parts
    return _phrases_in_prose(text)[:2]


def normalize_answer(answer: str | None, matching: str = "strict") -> str | None:
    """The outfit key of a VQA answer: ``"<colour> and <colour>"`` in the answer's order, or None.

    The colours are :func:`answer_colours`: case, whitespace and punctuation normalised, a preamble ("The top two
    colors are", "Colors:") and the article "the" dropped. The answer must name exactly two colours: one colour,
    a list of three, or no colour ("I don't know") gives None, as the paper's strict heuristic rejects such
    answers. ``matching="strict"`` (the default) keeps the colour words as worded ("navy blue and white");
    ``"color-family"`` maps each onto the eleven basic colour terms (:func:`sameid.backends.colors.
    normalize_color_word`: "grey" = "gray", "light blue" = "navy" = "blue"). Order is kept in both:
    ``normalize_answer("pink and black") != normalize_answer("black and pink")``.
    """
    _check_matching(matching)
    colours = answer_colours(answer)
    if colours is None or len(colours) != 2:
        return None
    if matching == "color-family":
        from ..backends.colors import normalize_color_word

        colours = [normalize_color_word(colour) for colour in colours]
    return " and ".join(colours)


def normalize_answers(answers: pa.Array | pa.ChunkedArray, matching: str = "strict") -> pa.Array:
    """:func:`normalize_answer` over a column: each distinct answer is normalised once."""
    _check_matching(matching)
    answers = answers.combine_chunks() if isinstance(answers, pa.ChunkedArray) else answers
    encoded = pc.dictionary_encode(answers.cast(pa.string()))
    normalized = pa.array([normalize_answer(a, matching) for a in encoded.dictionary.to_pylist()], pa.string())
    return normalized.take(encoded.indices)


def _codes(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Dense codes of a column's values (-1 for null) and the number of distinct values."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    encoded = pc.dictionary_encode(column)
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, len(encoded.dictionary)


def group_ids(table: pa.Table, key_columns: Sequence[str]) -> np.ndarray:
    """An int64 group id per row: rows with equal values in all ``key_columns`` share an id.

    Ids are 0, 1, 2, ... in order of first appearance; a row with a null in any key column gets -1 (it belongs
    to no group). Hash-based (pyarrow ``dictionary_encode`` per column, pandas ``factorize`` to combine).
    """
    if not key_columns:
        raise ValueError("group_ids needs at least one key column")
    combined = np.zeros(table.num_rows, dtype=np.int64)
    valid = np.ones(table.num_rows, dtype=bool)
    for name in key_columns:
        codes, cardinality = _codes(table.column(name))
        valid &= codes >= 0
        # Mixed radix keeps keys unique; re-factorising after each column keeps them below rows * cardinality.
        combined = combined * max(cardinality, 1) + np.maximum(codes, 0)
        combined = pd.factorize(combined)[0].astype(np.int64)
    groups = np.full(table.num_rows, -1, dtype=np.int64)
    if valid.any():
        groups[valid] = pd.factorize(combined[valid])[0]
    return groups


def similar_lists(ids: pa.Array | pa.ChunkedArray, groups: np.ndarray, limit: int | None = None) -> pa.ListArray:
    """For each row, the ids of the other rows of its group (never itself), in row order.

    ``groups`` is an int64 group id per row (:func:`group_ids`); -1 means no group and gives an empty list.
    Without ``limit`` the relation is symmetric (a in b's list iff b in a's list); with ``limit`` each list holds
    the first ``limit`` others of the group in row order, which bounds the output of very large groups (the lists
    of a group of size k hold k * (k - 1) ids in total).
    """
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    groups = np.asarray(groups, dtype=np.int64)
    rows = len(groups)
    if len(ids) != rows:
        raise ValueError(f"similar_lists: {len(ids)} ids but {rows} group ids")
    member = groups >= 0
    # Rows of each group, contiguous and in row order (stable sort); groups without members are absent.
    order = np.flatnonzero(member)
    order = order[np.argsort(groups[order], kind="stable")]
    sorted_groups = groups[order]
    starts_of_runs = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]) if len(order) else \
        np.zeros(0, dtype=np.int64)
    run_sizes = np.diff(np.r_[starts_of_runs, len(order)])
    start = np.zeros(rows, dtype=np.int64)
    size = np.zeros(rows, dtype=np.int64)
    rank = np.zeros(rows, dtype=np.int64)
    start[order] = np.repeat(starts_of_runs, run_sizes)
    size[order] = np.repeat(run_sizes, run_sizes)
    rank[order] = np.arange(len(order)) - start[order]
    lengths = np.maximum(size - 1, 0)
    if limit is not None:
        lengths = np.minimum(lengths, limit)
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    # Position j of a row's list is the j-th member of its group, skipping the row itself.
    within = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    within += within >= np.repeat(rank, lengths)
    values = ids.take(pa.array(order[np.repeat(start, lengths) + within]))
    offset_type = pa.int32() if total < 2**31 else pa.int64()
    list_class = pa.ListArray if offset_type == pa.int32() else pa.LargeListArray
    return list_class.from_arrays(pa.array(offsets, offset_type), values)


def _single(lists: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The only element of each list, or null where the list does not have exactly one element."""
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
    starts = np.asarray(lists.offsets)[:-1] - lists.offsets[0].as_py()
    flat = pc.list_flatten(lists)
    position = np.where(lengths == 1, starts, -1)
    return flat.take(pa.array(position, mask=lengths != 1))


def group_by_outfit(table: pa.Table, answer_column: str = "answer", limit: int | None = None,
                    matching: str = "strict") -> pa.Table:
    """Add the outfit identity columns to a table with ``id``, ``characters``, ``artists`` and an answer column.

    Added (or replaced) columns: ``character`` (the post's one character tag, null when it has none or several),
    ``artist`` (its artist tags joined by "+", :data:`UNKNOWN_ARTIST` when it has none), ``outfit``
    (:func:`normalize_answer` of the answer under ``matching``), ``identity`` (``"character|artist|outfit"``, null when character or outfit is null) and ``similar``
    (:func:`similar_lists` over the identities; empty for a row without identity or alone in it).
    """
    character = _single(table.column("characters"))
    artists = table.column("artists").combine_chunks()
    artist = pc.binary_join(artists, "+")
    artist = pc.if_else(pc.fill_null(pc.equal(artist, ""), True), UNKNOWN_ARTIST, artist)
    outfit = normalize_answers(table.column(answer_column), matching)
    identity = pc.binary_join_element_wise(character, artist, outfit, IDENTITY_SEPARATOR)
    # Grouped on the parts rather than the joined string, so a "|" inside a tag cannot merge two identities.
    groups = group_ids(pa.table({"character": character, "artist": artist, "outfit": outfit}),
                       ["character", "artist", "outfit"])
    similar = similar_lists(table.column("id"), groups, limit=limit)
    for name, values in (("character", character), ("artist", artist), ("outfit", outfit),
                         ("identity", identity), ("similar", similar)):
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values)
        else:
            table = table.append_column(name, values)
    return table
