"""SWD (equation 1 of RetriBooru, arXiv 2312.02521, section 4): hand-computed values and the balanced-vs-split ordering."""

import math

import numpy as np
import pytest

from sameid.evaluate.swd import metric_pairs, similarity_weighted_diversity, swd_key, swd_table


def test_hand_computed_example():
    div = [0.2, 0.3, 0.1]
    sim = [0.5, 0.7, 0.9]
    result = similarity_weighted_diversity(div, sim, div_name="clip_t", sim_name="clip_i")
    # (0.2*0.5 + 0.3*0.7 + 0.1*0.9) / 3 = (0.10 + 0.21 + 0.09) / 3
    assert result.swd == pytest.approx(0.40 / 3)
    assert result.product_of_means == pytest.approx(0.2 * 0.7)
    assert result.covariance == pytest.approx(0.40 / 3 - 0.14)
    # sqrt(mean(div^2) * mean(sim^2)) = sqrt(0.14/3 * 1.55/3)
    assert result.cauchy_schwarz_bound == pytest.approx(math.sqrt(0.14 / 3 * 1.55 / 3))
    assert result.swd <= result.cauchy_schwarz_bound
    assert result.n == 3 and result.key == "swd(clip_t,clip_i)" == swd_key("clip_t", "clip_i")


def test_missing_values_leave_the_pair_out():
    result = similarity_weighted_diversity([0.2, np.nan, 0.4], [1.0, 0.5, np.nan])
    assert result.n == 1 and result.swd == pytest.approx(0.2)
    empty = similarity_weighted_diversity([np.nan], [1.0])
    assert empty.n == 0 and math.isnan(empty.swd)


def test_balanced_beats_split_with_equal_means():
    # Both models: mean clip_t 0.25, mean clip_i 0.70. The split one has half "copies the reference"
    # (high clip_i, low clip_t) and half "follows the prompt" (low clip_i, high clip_t).
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.005, 100)
    balanced_t, balanced_i = 0.25 + noise, 0.70 + noise
    split_t = np.r_[np.full(50, 0.15), np.full(50, 0.35)]
    split_i = np.r_[np.full(50, 0.90), np.full(50, 0.50)]
    for values in (balanced_t, split_t):
        assert values.mean() == pytest.approx(0.25, abs=2e-3)
    for values in (balanced_i, split_i):
        assert values.mean() == pytest.approx(0.70, abs=2e-3)
    balanced = similarity_weighted_diversity(balanced_t, balanced_i)
    split = similarity_weighted_diversity(split_t, split_i)
    assert balanced.product_of_means == pytest.approx(split.product_of_means, abs=2e-3)
    assert balanced.swd > split.swd
    assert split.covariance < 0 < balanced.covariance
    assert split.swd == pytest.approx((0.15 * 0.9 + 0.35 * 0.5) / 2)
    for result in (balanced, split):
        assert abs(result.swd) <= result.cauchy_schwarz_bound + 1e-12


def test_every_pair_once_diversity_first():
    assert metric_pairs(["clip_i", "clip_t", "face"]) == [("clip_t", "clip_i"), ("clip_t", "face"), ("clip_i", "face")]
    table = swd_table({"clip_i": [1.0, 0.5], "clip_t": [0.2, 0.4], "dino": [0.3, 0.3]})
    assert sorted(table) == ["swd(clip_i,dino)", "swd(clip_t,clip_i)", "swd(clip_t,dino)"]
    assert table["swd(clip_t,clip_i)"].swd == pytest.approx((0.2 + 0.2) / 2)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        similarity_weighted_diversity([1.0, 2.0], [1.0])
