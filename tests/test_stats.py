"""kielnet.stats: robust σ is scipy's normal-consistent MAD, Cohen's κ is scikit-learn's."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import median_abs_deviation
from sklearn.metrics import cohen_kappa_score

from kielnet.data.plausibility import spectrum_statistics
from kielnet.stats import cohen_kappa, robust_sigma, row_nanmedian
from kielnet.training.trainer import robust_score


def test_robust_sigma_equals_scipy():
    x = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    # median 3, |dev| = [2, 1, 0, 1, 97] -> MAD 1 -> 1 / Φ⁻¹(3/4); the outlier does not matter
    assert robust_sigma(x) == median_abs_deviation(x, scale="normal") == pytest.approx(1.482602218505602)
    # non-finite values are left out
    assert robust_sigma(np.r_[x, np.nan, np.inf, -np.inf]) == robust_sigma(x)
    assert np.isnan(robust_sigma(np.array([np.nan]))) and np.isnan(robust_sigma(np.array([])))
    g = np.random.default_rng(0).normal(3.0, 2.5, 40000)
    assert robust_sigma(g) == pytest.approx(2.5, rel=0.03)
    assert robust_sigma(g) == median_abs_deviation(g, scale="normal")


def test_robust_sigma_along_an_axis_equals_scipy_per_slice():
    x = np.random.default_rng(1).standard_normal((6, 50)) * np.arange(1, 7)[:, None]
    x[1, :10] = np.nan
    x[2, 5] = np.inf
    x[4] = np.nan
    got = robust_sigma(x, axis=1)
    for i, row in enumerate(x):
        fin = row[np.isfinite(row)]
        want = median_abs_deviation(fin, scale="normal") if fin.size else np.nan
        np.testing.assert_allclose(got[i], want, rtol=1e-15, equal_nan=True)
    np.testing.assert_allclose(robust_sigma(x.T, axis=0), got, rtol=0, equal_nan=True)
    assert robust_sigma(np.zeros((0, 3)), axis=0).shape == (3,)


def test_the_callers_use_scipys_robust_sigma():
    rng = np.random.default_rng(2)
    flux = 1.0 + 0.01 * rng.standard_normal((4, 300))
    flux[1, 7] = np.nan
    flux[2, 20] = 3.0
    s = spectrum_statistics(flux)
    for i, row in enumerate(flux):
        row = row[np.isfinite(row)]
        spike = np.abs(row - np.median(row)).max() / median_abs_deviation(row, scale="normal")
        assert s["spike"][i] == pytest.approx(spike, rel=1e-12)
    pred, target = rng.standard_normal((100, 3)), rng.standard_normal((100, 3))
    target[:10, 1] = np.nan
    want = np.mean([median_abs_deviation(c[np.isfinite(c)], scale="normal") for c in (pred - target).T])
    assert robust_score(pred, target) == pytest.approx(want, rel=1e-12)


def test_the_spectrum_statistics_mad_is_scipys_to_the_bit():
    """spectrum_statistics takes the MAD from the deviations it already holds: scipy's numbers
    exactly, on rows with and without non-finite pixels, odd and even pixel counts."""
    from scipy.special import ndtri

    from kielnet.stats import NORMAL_MAD_SCALE

    assert NORMAL_MAD_SCALE == ndtri(0.75)
    rng = np.random.default_rng(5)
    for n_pix in (343, 344):
        flux = rng.lognormal(0.0, 0.7, (3000, n_pix))  # > the rows one thread takes: split rows too
        flux[::7, 20:40] = np.nan                     # a band missing
        flux[3::11, 5] = np.inf
        flux[1::13, :60] -= 3.0                       # pixels <= 0
        s = spectrum_statistics(flux)
        for i in range(0, len(flux), 37):
            row = flux[i][np.isfinite(flux[i])]
            dev = np.abs(row - np.median(row))
            mad = median_abs_deviation(row, scale="normal")
            assert s["spike"][i] == (dev.max() / mad if dev.max() else 0.0), i
        full = np.isfinite(flux).all(axis=1)
        want = median_abs_deviation(flux[full], axis=1, scale="normal")
        dev = np.abs(flux[full] - np.median(flux[full], axis=1)[:, None]).max(axis=1)
        np.testing.assert_array_equal(s["spike"][full], dev / want)


def test_predicting_does_not_import_scipy_stats():
    """scipy.stats costs ~0.4 s of every command's start-up; the prediction path does not need it."""
    import subprocess
    import sys

    code = ("import sys, kielnet.cli, kielnet.io, kielnet.inference.predict, kielnet.inference.streaming, "
            "kielnet.artifact; print('scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("seed", range(4))
def test_cohen_kappa_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    a = rng.random(60) < 0.3 + 0.1 * seed
    b = np.where(rng.random(60) < 0.8, a, ~a)
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-15)


def test_cohen_kappa_hand_values_and_the_undefined_case():
    a = np.array([1, 1, 1, 0, 0, 0, 1, 0], bool)
    b = np.array([1, 1, 0, 0, 0, 1, 1, 0], bool)
    assert cohen_kappa(a, b) == pytest.approx(0.5)  # p_o = 0.75, p_e = 0.5
    assert cohen_kappa(a, a) == pytest.approx(1.0) and cohen_kappa(a, ~a) == pytest.approx(-1.0)
    assert np.isnan(cohen_kappa(np.ones(5, bool), np.ones(5, bool)))  # p_e = 1
    assert cohen_kappa(np.ones(5, bool), np.zeros(5, bool)) == 0.0
    assert np.isnan(cohen_kappa(np.zeros(0, bool), np.zeros(0, bool)))


def test_row_nanmedian_equals_numpy_nanmedian():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 343))
    x[::4, :7] = np.nan          # some NaN pixels
    x[5] = np.nan                # an all-NaN row: NaN, no warning
    x[6, :3] = [np.inf, -np.inf, np.inf]
    x[7] = np.round(x[7])        # ties
    x[8, :] = 2.0
    for i in range(9, 50, 3):    # an odd and an even number of values left, infinities among them
        x[i, rng.choice(343, size=i, replace=False)] = np.nan
        x[i, i % 343] = np.inf if i % 2 else -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.nanmedian(x, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = row_nanmedian(x)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(row_nanmedian(x[::4]), ref[::4])     # every row with a NaN
    np.testing.assert_array_equal(row_nanmedian(x[1:4]), ref[1:4])     # none with a NaN
    assert row_nanmedian(np.empty((3, 0))).shape == (3,) and np.isnan(row_nanmedian(np.empty((3, 0)))).all()
    with pytest.raises(ValueError, match="2-D"):
        row_nanmedian(x[0])
