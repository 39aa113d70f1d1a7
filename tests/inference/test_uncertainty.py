"""Running dispersion (Gaia-RVS §3.4) and total sigma (robust σ itself: tests/test_stats.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kielnet.quality.uncertainty import RunningDispersion, fit_running_dispersion, total_sigma
from kielnet.stats import robust_sigma


@pytest.mark.parametrize("degree", [1, 3])
def test_recovers_a_linear_noise_law(degree):
    rng = np.random.default_rng(1)
    a, b = 0.1, 0.05
    x = rng.uniform(0.0, 10.0, 20000)
    resid = rng.normal(0.0, a + b * x)
    rd = fit_running_dispersion(x, resid, n_bins=20, degree=degree, min_per_bin=50)
    grid = np.linspace(1.0, 9.0, 9)
    np.testing.assert_allclose(rd(grid), a + b * grid, rtol=0.10)
    assert len(rd.bins) == 20
    assert sum(n for _, _, n in rd.bins) == len(x)
    assert rd.x_range[0] < 0.5 and rd.x_range[1] > 9.5


def test_internal_sigma_is_subtracted_in_quadrature():
    rng = np.random.default_rng(2)
    x = rng.uniform(4000.0, 7000.0, 30000)
    run_true = 40.0 + 0.02 * (x - 4000.0)       # 40 K .. 100 K
    internal = np.full_like(x, 60.0)            # model-to-model sigma
    resid = rng.normal(0.0, np.hypot(run_true, internal))
    rd = fit_running_dispersion(x, resid, n_bins=15, degree=1, min_per_bin=100, internal=internal)
    grid = np.linspace(4300.0, 6700.0, 7)
    np.testing.assert_allclose(rd(grid), 40.0 + 0.02 * (grid - 4000.0), rtol=0.10)
    # the total sigma reproduces the observed scatter
    np.testing.assert_allclose(total_sigma(60.0, rd(grid)), np.hypot(60.0, 40.0 + 0.02 * (grid - 4000.0)),
                               rtol=0.05)
    # without the internal part, the fit is the whole scatter
    rd_all = fit_running_dispersion(x, resid, n_bins=15, degree=1, min_per_bin=100)
    np.testing.assert_allclose(rd_all(grid), np.hypot(60.0, 40.0 + 0.02 * (grid - 4000.0)), rtol=0.10)


def test_internal_larger_than_scatter_gives_the_floor_not_nan():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, 2000)
    resid = rng.normal(0, 0.1, 2000)
    rd = fit_running_dispersion(x, resid, n_bins=5, degree=1, min_per_bin=50, internal=np.full(2000, 1.0))
    out = rd(np.linspace(0, 1, 5))
    assert np.isfinite(out).all() and (out >= 0).all()
    assert np.all(out <= 0.05)


def test_nan_inputs_are_ignored_and_propagate():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, 1000)
    r = rng.normal(0, 0.5, 1000)
    x[:100] = np.nan
    r[100:200] = np.nan
    rd = fit_running_dispersion(x, r, n_bins=4, degree=0, min_per_bin=50)
    assert sum(n for _, _, n in rd.bins) == 800
    assert rd(np.array([0.5]))[0] == pytest.approx(0.5, rel=0.1)
    assert np.isnan(rd(np.array([np.nan, 0.5]))[0])


def test_evaluation_is_clipped_to_the_fitted_range_and_floored():
    rd = RunningDispersion(coeffs=[2.0, -1.0], x_range=(1.0, 3.0), floor=0.5, bins=[])
    # sigma = 2x - 1 on [1, 3]; clipped outside; never below the floor
    np.testing.assert_allclose(rd(np.array([0.0, 1.0, 2.0, 3.0, 10.0])), [1.0, 1.0, 3.0, 5.0, 5.0])
    low = RunningDispersion(coeffs=[-1.0, 1.0], x_range=(0.0, 5.0), floor=0.5, bins=[])
    np.testing.assert_allclose(low(np.array([0.0, 4.0])), [1.0, 0.5])


def test_few_stars_give_a_constant():
    rng = np.random.default_rng(5)
    x, r = rng.uniform(0, 1, 30), rng.normal(0, 2.0, 30)
    rd = fit_running_dispersion(x, r, min_per_bin=20)
    assert len(rd.coeffs) == 1
    assert rd.coeffs[0] == pytest.approx(robust_sigma(r))
    np.testing.assert_allclose(rd(np.array([-5.0, 0.5, 5.0])), robust_sigma(r))
    empty = fit_running_dispersion(np.array([]), np.array([]))
    assert empty(np.array([1.0]))[0] == 0.0


def test_state_round_trips_through_json():
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 10, 3000)
    rd = fit_running_dispersion(x, rng.normal(0, 1 + 0.1 * x), n_bins=6, degree=2, min_per_bin=50)
    again = RunningDispersion.from_dict(json.loads(json.dumps(rd.to_dict())))
    grid = np.linspace(-1, 11, 25)
    np.testing.assert_array_equal(again(grid), rd(grid))


def test_total_sigma_is_a_quadrature_sum():
    np.testing.assert_allclose(total_sigma(np.array([3.0, 0.0, np.nan]), np.array([4.0, 2.0, 1.0])),
                               [5.0, 2.0, np.nan])
