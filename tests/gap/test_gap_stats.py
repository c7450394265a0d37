"""The report's statistics against values known without it: t quantiles from a printed table, the
exact bootstrap distribution of a tiny sample, the normal approximation of a large one."""

import math

import numpy as np
import pytest

from result_stat import gap_stats

# Student's t, two-sided 95% (the 97.5% quantile), from a printed table, by degrees of freedom
T_TABLE_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 29: 2.045, 60: 2.000, 120: 1.980}


def test_pooled_mean_weights_sites_by_images_and_skips_empty_ones():
    assert gap_stats.pooled_mean({"a": (2, 0.5), "b": (6, 0.9), "c": (0, math.nan)}) == (8, pytest.approx(0.8))
    count, value = gap_stats.pooled_mean({"a": (0, math.nan)})
    assert count == 0 and math.isnan(value)


def test_mean_std_is_the_sample_standard_deviation_over_seeds():
    assert gap_stats.mean_std([0.5, 0.7, 0.9]) == (pytest.approx(0.7), pytest.approx(0.2))
    mean, std = gap_stats.mean_std([0.5])
    assert mean == 0.5 and math.isnan(std)
    assert all(math.isnan(v) for v in gap_stats.mean_std([]))


def test_t_interval_of_three_seeds_by_hand():
    low, high = gap_stats.t_interval([1.0, 2.0, 3.0])  # mean 2, std 1, t(2) = 4.303
    assert low == pytest.approx(2 - 4.303 / math.sqrt(3), abs=1e-3)
    assert high == pytest.approx(2 + 4.303 / math.sqrt(3), abs=1e-3)
    assert all(math.isnan(v) for v in gap_stats.t_interval([1.0]))


@pytest.mark.parametrize("df, table", sorted(T_TABLE_975.items()))
def test_t_interval_half_width_is_the_tables_quantile_times_the_standard_error(df, table):
    differences = np.random.default_rng(df).normal(0.02, 0.01, df + 1)
    low, high = gap_stats.t_interval(differences)
    standard_error = np.std(differences, ddof=1) / math.sqrt(differences.size)
    assert (low + high) / 2 == pytest.approx(differences.mean())
    assert (high - low) / 2 / standard_error == pytest.approx(table, abs=5e-4)


def test_bootstrap_of_a_constant_difference_is_that_constant():
    assert gap_stats.bootstrap_interval(np.full((2, 30), 0.25)) == (pytest.approx(0.25), pytest.approx(0.25))
    assert gap_stats.bootstrap_interval(np.array([[0.3]])) == (0.3, 0.3)  # one image: every resample is it
    assert all(math.isnan(v) for v in gap_stats.bootstrap_interval(np.zeros((2, 0))))


def test_bootstrap_is_the_percentile_interval_not_bca():
    # Resampling [0, 0, 0, 0, 1] gives means K/5 with K ~ Binomial(5, 0.2): P(K = 0) = 0.33, P(K <= 2) = 0.94,
    # P(K <= 3) = 0.993, so the 2.5th and 97.5th percentiles are 0 and 0.6 (BCa would widen the top to 0.8,
    # the basic interval would reach below 0).
    assert gap_stats.bootstrap_interval(np.array([[0.0, 0.0, 0.0, 0.0, 1.0]])) == (0.0, pytest.approx(0.6))


def test_bootstrap_of_many_images_matches_the_normal_approximation_and_is_repeatable():
    differences = np.random.default_rng(1).normal(0.1, 0.2, (1, 2000))
    low, high = gap_stats.bootstrap_interval(differences)
    assert low < differences.mean() < high
    assert gap_stats.bootstrap_interval(differences) == (low, high)  # fixed resampling seed
    normal_width = 2 * 1.96 * differences.std(ddof=1) / math.sqrt(differences.size)
    assert high - low == pytest.approx(normal_width, rel=0.1)


def test_bootstrap_resamples_images_of_the_seed_mean_difference():
    # opposite seed effects cancel per image: the interval is about the seed-mean difference
    assert gap_stats.bootstrap_interval(np.array([[1.0] * 5, [-1.0] * 5])) == (0.0, 0.0)


def test_compare_pairs_seed_i_with_seed_i():
    images = np.linspace(0.5, 0.9, 10)
    seed_offsets = [0.0, 0.1, -0.05]  # run-to-run noise that both methods share within a seed
    fedavg = [images + offset for offset in seed_offsets]
    fedsm = [images + offset + 0.02 for offset in seed_offsets]
    result = gap_stats.compare("FedSM super model", "FedAvg", fedsm, fedavg)
    assert (result.method, result.other, result.seeds) == ("FedSM super model", "FedAvg", 3)
    assert result.difference == pytest.approx(0.02)
    assert result.t_low == pytest.approx(0.02) and result.t_high == pytest.approx(0.02)
    assert result.bootstrap_low == pytest.approx(0.02) and result.bootstrap_high == pytest.approx(0.02)
    shuffled = gap_stats.compare("a", "b", fedsm, fedavg[::-1])  # pairing across seeds: noise shows
    assert shuffled.t_high - shuffled.t_low > 0.1


def test_compare_leaves_out_images_without_dice():
    result = gap_stats.compare("x", "y", [np.array([0.5, np.nan, 0.7])], [np.array([0.4, np.nan, 0.4])])
    assert result.difference == pytest.approx(0.2)
    # two images, differences 0.1 and 0.3: resampled means 0.1, 0.2, 0.3 with probabilities 1/4, 1/2, 1/4
    assert result.bootstrap_low == pytest.approx(0.1) and result.bootstrap_high == pytest.approx(0.3)
