"""Outfit grouping (dataset/outfits.py): answer normalisation, hashed group ids, sibling lists."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sameid.dataset.outfits import (
    OUTFIT_QUESTION,
    group_by_outfit,
    group_ids,
    normalize_answer,
    normalize_answers,
    similar_lists,
)


@pytest.mark.parametrize("answer, expected", [
    ("black and pink", "black and pink"),
    ("Black and pink.", "black and pink"),
    ("black & pink", "black and pink"),
    ("black, pink", "black and pink"),
    ("The top two colors are black and pink", "black and pink"),
    ("Colors: grey / navy", "gray and blue"),
    ("the white and the red", "white and red"),
    ("light blue and white", "blue and white"),
    ("blue and light blue", "blue and blue"),
    ("pink and black", "pink and black"),
])
def test_normalize_answer_keeps_two_colours_in_order(answer, expected):
    assert normalize_answer(answer) == expected


@pytest.mark.parametrize("answer", [
    None, "", "black", "black, white and red", "black shirt and white skirt", "I don't know", "black pink",
    "yes and no",
])
def test_normalize_answer_rejects_answers_without_exactly_two_colours(answer):
    assert normalize_answer(answer) is None


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
    assert [r["artist"] for r in grouped] == ["p+q", "p+q", ""]
    assert [r["similar"] for r in grouped] == [["2"], ["1"], []]
