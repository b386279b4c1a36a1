"""Outfit grouping (dataset/outfits.py): answer normalisation, hashed group ids, sibling lists."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sameid.dataset.outfits import (
    OUTFIT_QUESTION,
    UNKNOWN_ARTIST,
    group_by_outfit,
    group_ids,
    normalize_answer,
    normalize_answers,
    similar_lists,
)
from sameid.errors import SameIdError


@pytest.mark.parametrize("answer, strict, family", [
    ("black and pink", "black and pink", "black and pink"),
    ("Black and pink.", "black and pink", "black and pink"),
    ("black & pink", "black and pink", "black and pink"),
    ("black, pink", "black and pink", "black and pink"),
    ("  BLACK   and\tpink ", "black and pink", "black and pink"),
    ("The top two colors are black and pink", "black and pink", "black and pink"),
    ("Colors: grey / navy", "grey and navy", "gray and blue"),
    ("the white and the red", "white and red", "white and red"),
    ("light blue and white", "light blue and white", "blue and white"),
    ("light-blue and white", "light blue and white", "blue and white"),
    ("navy blue and white", "navy blue and white", "blue and white"),
    ("blue and light blue", "blue and light blue", "blue and blue"),
    ("pink and black", "pink and black", "pink and black"),
])
def test_normalize_answer_keeps_two_colours_in_order(answer, strict, family):
    assert normalize_answer(answer) == strict  # strict is the default
    assert normalize_answer(answer, "strict") == strict
    assert normalize_answer(answer, "color-family") == family


def test_strict_matching_is_the_default_and_tells_colour_words_apart():
    # The example: the colour-family reduction merges these, strict matching (A.1) does not.
    assert normalize_answer("navy and white") != normalize_answer("light blue and white")
    assert normalize_answer("grey and black") != normalize_answer("gray and black")
    assert normalize_answer("navy and white", "color-family") == normalize_answer("light blue and white",
                                                                                 "color-family")
    table = pa.table({"id": ["1", "2", "3"], "characters": [["a"]] * 3, "artists": [["x"]] * 3,
                      "answer": ["navy and white", "Light blue and white.", "light blue & white"]})
    assert [r["similar"] for r in group_by_outfit(table).to_pylist()] == [[], ["3"], ["2"]]
    assert [r["similar"] for r in group_by_outfit(table, matching="color-family").to_pylist()] == [
        ["2", "3"], ["1", "3"], ["1", "2"]]
    with pytest.raises(SameIdError, match="unknown answer matching 'loose'"):
        normalize_answer("black and pink", "loose")


@pytest.mark.parametrize("answer, expected", [
    # A long answer (max_new_tokens 128) still gives its two clothing colours, hair, eyes and skin left out.
    ("The character with pink hair is wearing a black dress with white frills. The top two colors of her clothes "
     "are black and white.", "black and white"),
    ("The top two colors of the character's clothes are dark blue and white. She also has blonde hair and blue "
     "eyes, and she is smiling at the viewer while holding a red umbrella.", "dark blue and white"),
    ("She is wearing a black shirt and a pink skirt.", "black and pink"),
    ("black shirt and white skirt", "black and white"),
    ("It is black. Pink too", "black and pink"),
    ("She has blue eyes and wears a red coat over a yellow sweater", "red and yellow"),
])
def test_normalize_answer_finds_the_two_colours_of_a_sentence_answer(answer, expected):
    assert normalize_answer(answer) == expected


@pytest.mark.parametrize("answer", [
    None, "", "black", "Navy.", "black, white and red", "I don't know", "black pink", "yes and no",
    "She wears a light outfit", "The character has pink hair and wears a black dress.",
])
def test_normalize_answer_rejects_answers_without_exactly_two_colours(answer):
    assert normalize_answer(answer) is None
    assert normalize_answer(answer, "color-family") is None


def test_order_matters_as_in_the_paper():
    assert normalize_answer("black and pink") != normalize_answer("pink and black")
    assert "colors" in OUTFIT_QUESTION and "clothes" in OUTFIT_QUESTION


def test_normalize_answers_over_a_column():
    column = pa.chunked_array([["Black and pink.", None], ["black"], ["black and pink"]])
    assert normalize_answers(column).to_pylist() == ["black and pink", None, None, "black and pink"]


def test_group_ids_hash_all_key_columns_and_mark_nulls():
    table = pa.table({"a": ["x", "x", "y", "x", None, "x|y"], "b": ["p", "q", "p", "p", "p", ""],
                      "c": ["1", "1", "1", "1", "1", "1"]})
    ids = group_ids(table, ["a", "b", "c"])
    assert ids.dtype == np.int64
    assert ids.tolist() == [0, 1, 2, 0, -1, 3]
    # Columns are combined as a tuple, not as a joined string: ("x|y", "") differs from ("x", "y|").
    split = pa.table({"a": ["x|y", "x"], "b": ["", "y|"]})
    assert group_ids(split, ["a", "b"]).tolist() == [0, 1]
    with pytest.raises(ValueError):
        group_ids(table, [])


def brute_force_similar(ids, groups):
    return [[ids[j] for j in range(len(ids)) if j != i and groups[i] >= 0 and groups[j] == groups[i]]
            for i in range(len(ids))]


def test_similar_lists_match_brute_force_never_contain_self_and_are_symmetric():
    rng = np.random.default_rng(0)
    groups = rng.integers(-1, 40, size=600)
    ids = [f"post{i}" for i in range(len(groups))]
    lists = similar_lists(pa.chunked_array([ids[:250], ids[250:]]), groups).to_pylist()
    assert lists == brute_force_similar(ids, groups)
    members = {i: set(s) for i, s in zip(ids, lists, strict=True)}
    for i, others in members.items():
        assert i not in others
        for other in others:
            assert i in members[other]


def test_similar_lists_limit_and_edge_cases():
    ids = pa.array(["a", "b", "c", "d", "e"])
    groups = np.array([0, 0, 0, -1, 0])
    assert similar_lists(ids, groups, limit=2).to_pylist() == [["b", "c"], ["a", "c"], ["a", "b"], [], ["a", "b"]]
    assert similar_lists(ids, np.full(5, -1)).to_pylist() == [[]] * 5
    assert similar_lists(pa.array([], pa.string()), np.array([], dtype=np.int64)).to_pylist() == []
    with pytest.raises(ValueError):
        similar_lists(ids, groups[:3])


def test_group_by_outfit_is_order_sensitive_and_needs_one_character():
    table = pa.table({
        "id": ["1", "2", "3", "4", "5", "6", "7", "8"],
        "characters": [["miku"], ["miku"], ["miku"], ["miku"], ["miku", "rin"], ["miku"], ["miku"], []],
        "artists": [["x"], ["x"], ["x"], ["y"], ["x"], ["x"], ["x"], ["x"]],
        "answer": ["black and pink", "Pink and black.", "black & pink", "black and pink", "black and pink",
                   "pink and black", "no idea", "black and pink"],
    })
    grouped = group_by_outfit(table)
    rows = {r["id"]: r for r in grouped.to_pylist()}
    assert rows["1"]["identity"] == "miku|x|black and pink"
    assert rows["1"]["similar"] == ["3"] and rows["3"]["similar"] == ["1"]
    assert rows["2"]["similar"] == ["6"] and rows["6"]["similar"] == ["2"]
    assert rows["4"]["similar"] == []  # another artist
    for lonely in ("5", "7", "8"):  # two characters, unusable answer, no character
        assert rows[lonely]["identity"] is None and rows[lonely]["similar"] == []
    assert rows["5"]["character"] is None and rows["7"]["outfit"] is None
    assert grouped.column_names[-5:] == ["character", "artist", "outfit", "identity", "similar"]
    # Grouping again replaces the columns instead of adding copies.
    assert group_by_outfit(grouped).column_names == grouped.column_names


def test_group_by_outfit_joins_several_artists():
    table = pa.table({"id": ["1", "2", "3"], "characters": [["a"], ["a"], ["a"]],
                      "artists": [["p", "q"], ["p", "q"], []], "answer": ["red and blue"] * 3})
    grouped = group_by_outfit(table).to_pylist()
    assert [r["artist"] for r in grouped] == ["p+q", "p+q", UNKNOWN_ARTIST]
    assert [r["similar"] for r in grouped] == [["2"], ["1"], []]


def test_posts_without_an_artist_share_the_explicit_unknown_artist_key():
    table = pa.table({"id": ["1", "2", "3"], "characters": [["a"]] * 3,
                      "artists": pa.array([[], None, ["unknown_artist"]], pa.list_(pa.string())),
                      "answer": ["red and blue"] * 3})
    grouped = group_by_outfit(table).to_pylist()
    assert [r["identity"] for r in grouped] == [f"a|{UNKNOWN_ARTIST}|red and blue"] * 2 + [
        "a|unknown_artist|red and blue"]  # the key cannot be a Danbooru tag: a real tag stays apart
    assert [r["similar"] for r in grouped] == [["2"], ["1"], []]
