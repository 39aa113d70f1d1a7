"""KDE inverse-density weights (APOGEE Net II §3.2.1)."""

from __future__ import annotations

import numpy as np
import pytest

from kielnet.data.weighting import kde_inverse_density_weights


def _gauss_kde_density(z: np.ndarray, h: float) -> np.ndarray:
    """Gaussian KDE density written out by hand: mean over points of N(x; x_i, h² I)."""
    d = z.shape[1]
    sq = ((z[:, None, :] - z[None, :, :]) ** 2).sum(axis=2)
    return np.exp(-sq / (2 * h * h)).mean(axis=1) / (2 * np.pi * h * h) ** (d / 2)


@pytest.fixture
def clustered():
    """A dense core plus a sparse halo (like giants vs dwarfs in the Kiel diagram)."""
    rng = np.random.default_rng(0)
    core = rng.normal(0.0, 0.3, (300, 2))
    halo = rng.uniform(-6, 6, (30, 2))
    return np.concatenate([core, halo]), np.r_[np.zeros(300, bool), np.ones(30, bool)]


def test_mean_is_one_and_rare_points_weigh_more(clustered):
    pts, is_halo = clustered
    w = kde_inverse_density_weights(pts, bandwidth=0.5, cap=1e6)
    assert w.shape == (len(pts),)
    assert w.mean() == pytest.approx(1.0, rel=1e-12)
    assert (w > 0).all()
    assert np.median(w[is_halo]) > 3 * np.median(w[~is_halo])
    assert w[is_halo].min() > np.median(w[~is_halo])


@pytest.mark.parametrize("cap", [2.0, 5.0, 1e9])
def test_weights_match_min_of_inverse_density_and_cap(clustered, cap):
    pts, _ = clustered
    h = 0.7671
    w = kde_inverse_density_weights(pts, bandwidth=h, cap=cap)
    z = (pts - pts.mean(axis=0)) / pts.std(axis=0)
    dens = _gauss_kde_density(z, h)
    inv = dens.mean() / dens                    # inverse of the density relative to the mean
    c = 1.0 / np.minimum(inv, cap).mean()       # normalising constant: mean weight 1
    expect = np.minimum(c * inv, cap * c)
    np.testing.assert_allclose(w, expect, rtol=1e-6)
    assert w.max() <= cap * c * (1 + 1e-9)


def test_cap_limits_the_largest_weights(clustered):
    pts, is_halo = clustered
    free = kde_inverse_density_weights(pts, bandwidth=0.5, cap=1e9)
    capped = kde_inverse_density_weights(pts, bandwidth=0.5, cap=5.0)
    assert capped.mean() == pytest.approx(1.0)
    assert capped.max() / capped.min() < free.max() / free.min()
    top = capped == capped.max()
    assert top.sum() > 1  # several halo stars sit at the cap...
    assert is_halo[top].mean() >= 0.9  # ... and they are (nearly) all rare ones
    np.testing.assert_allclose(capped[top], capped.max())


def test_rows_with_nan_get_weight_one(clustered):
    pts, _ = clustered
    pts = pts.copy()
    pts[[0, 310], 1] = np.nan
    w = kde_inverse_density_weights(pts)
    assert w[[0, 310]] == pytest.approx([1.0, 1.0])
    assert w.mean() == pytest.approx(1.0)
    assert np.isfinite(w).all()


def test_standardisation_makes_weights_unit_free(clustered):
    pts, _ = clustered
    scaled = pts * np.array([1000.0, 0.01]) + np.array([5000.0, 3.0])
    np.testing.assert_allclose(kde_inverse_density_weights(scaled), kde_inverse_density_weights(pts),
                               rtol=1e-8)


def test_degenerate_inputs():
    assert kde_inverse_density_weights(np.array([[1.0, 2.0]])).tolist() == [1.0]
    assert kde_inverse_density_weights(np.full((3, 2), np.nan)).tolist() == [1.0, 1.0, 1.0]
    w1 = kde_inverse_density_weights(np.r_[np.zeros(50), 5.0])  # 1-D input
    assert w1.shape == (51,) and w1[-1] > w1[0]


def test_default_paper_parameters_do_not_flatten_the_weights():
    """With bandwidth 0.7671 and cap 5 (the paper's values) the weights must still vary:
    a standard-normal cloud has its dense centre down-weighted and its tails up-weighted.
    (Regression: with the cap applied to the absolute inverse KDE density, every star
    was capped and all weights were exactly 1.)"""
    rng = np.random.default_rng(2)
    pts = rng.normal(size=(400, 2))
    w = kde_inverse_density_weights(pts)
    r = np.hypot(*pts.T)
    assert w.std() > 0.1
    assert np.median(w[r < 0.5]) < 1.0 < np.median(w[r > 2.0])
    assert (w == w.max()).mean() < 0.5  # the cap binds for a minority only


def test_weights_on_the_real_kiel_diagram(xp_subset):
    pts = np.c_[np.log10(xp_subset.labels["teff"]), xp_subset.labels["logg"]]
    w = kde_inverse_density_weights(pts)
    assert w.mean() == pytest.approx(1.0)
    assert w.max() / w.min() > 2.0
    # giants with log g < 1.5 are rarer than stars on the main sequence/red clump
    logg = xp_subset.labels["logg"]
    assert np.median(w[logg < 1.0]) > np.median(w[(logg > 2.3) & (logg < 2.6)])
