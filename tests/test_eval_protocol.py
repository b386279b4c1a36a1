"""The RetriBooru evaluation grid (RetriBooru, arXiv 2312.02521, section 3.1) and its coverage check."""

import pytest

from sameid.errors import SameIdError
from sameid.evaluate.protocol import protocol_coverage, protocol_grid


def test_grid_size_matches_the_paper():
    subjects = {f"character_{i}": [f"refs/{i}.png"] for i in range(50)}
    prompts = [f"prompt {k}" for k in range(5)]
    grid = protocol_grid(subjects, prompts, "retrinet")
    assert len(grid) == 5000  # 50 characters x 5 prompts x 5 seeds x 4 samples
    assert grid["image"].is_unique
    assert grid.iloc[0]["image"] == "retrinet/character_0/p00_seed0_0.png"
    assert grid.groupby(["subject", "prompt"]).size().eq(20).all()
    assert protocol_coverage(grid)["complete"].all()


def test_coverage_reports_missing_seeds_and_per_subject_prompts():
    grid = protocol_grid({"a": ["a.png"], "b": ["b.png"]}, {"a": ["x"], "b": ["y", "z"]}, "m", seeds=(1, 2),
                         samples_per_seed=2)
    assert len(grid) == 2 * 2 + 2 * 2 * 2
    incomplete = grid[~((grid["subject"] == "b") & (grid["prompt"] == "z") & (grid["seed"] == 2))]
    coverage = protocol_coverage(incomplete, seeds=(1, 2), samples_per_seed=2).set_index(["subject", "prompt"])
    assert coverage.loc[("b", "z"), "images"] == 2 and coverage.loc[("b", "z"), "missing_seeds"] == [2]
    assert not coverage.loc[("b", "z"), "complete"] and coverage.loc[("a", "x"), "complete"]


def test_bad_grids_are_refused():
    with pytest.raises(SameIdError, match="no reference"):
        protocol_grid({"a": []}, ["p"], "m")
    with pytest.raises(SameIdError, match="at least one seed"):
        protocol_grid({"a": ["a.png"]}, ["p"], "m", seeds=())
