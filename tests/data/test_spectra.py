"""clip_flux_errors and noise_realisations (APOGEE Net II §3.2.3 error handling)."""

from __future__ import annotations

import numpy as np
import pytest

from kielnet.data.spectra import clip_flux_errors, noise_realisations
from kielnet.errors import InputError


# ------------------------------------------------------------------ clip_flux_errors
def test_clip_flux_errors_known_numbers():
    err = np.array([[1.0, 2.0, 3.0, 100.0, 0.0, np.nan, -1.0, np.inf],
                    [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 2.6, 2.5]])
    out, n_clipped, n_bad = clip_flux_errors(err, clip_factor=5.0)
    # row 0: good = [1, 2, 3, 100] -> median 2.5 -> limit 12.5
    np.testing.assert_array_equal(out[0], [1.0, 2.0, 3.0, 12.5, 12.5, 12.5, 12.5, 12.5])
    # row 1: good = all 8 -> median 0.5 -> limit 2.5; 2.6 is clipped, 2.5 (== limit) is not
    np.testing.assert_array_equal(out[1], [0.5] * 6 + [2.5, 2.5])
    np.testing.assert_array_equal(n_clipped, [1, 1])
    np.testing.assert_array_equal(n_bad, [4, 0])  # 0, NaN, negative, inf
    assert out.dtype == np.float64 and n_clipped.dtype == np.int64 and n_bad.dtype == np.int64


def test_clip_factor_scales_the_limit_and_1d_input_becomes_one_row():
    err = np.array([1.0, 1.0, 1.0, 4.0, 10.0])  # median 1
    out3, nc3, _ = clip_flux_errors(err, clip_factor=3.0)
    assert out3.shape == (1, 5)
    np.testing.assert_array_equal(out3[0], [1.0, 1.0, 1.0, 3.0, 3.0])
    assert nc3.tolist() == [2]
    out20, nc20, _ = clip_flux_errors(err, clip_factor=20.0)
    np.testing.assert_array_equal(out20[0], err)
    assert nc20.tolist() == [0]


def test_row_without_a_good_error_is_all_nan_and_input_is_untouched():
    err = np.array([[0.0, np.nan, -2.0], [1.0, 1.0, 1.0]])
    before = err.copy()
    out, n_clipped, n_bad = clip_flux_errors(err)
    assert np.isnan(out[0]).all()
    np.testing.assert_array_equal(out[1], [1.0, 1.0, 1.0])
    assert n_bad.tolist() == [3, 0] and n_clipped.tolist() == [0, 0]
    np.testing.assert_array_equal(err, before)


@pytest.mark.parametrize("factor", [0.0, -1.0, np.nan, np.inf])
def test_bad_clip_factor_is_an_input_error(factor):
    with pytest.raises(InputError) as exc:
        clip_flux_errors(np.ones((1, 4)), clip_factor=factor)
    assert exc.value.field == "clip_factor"


# ------------------------------------------------------------------ noise_realisations
def test_noise_realisations_shape_and_dtype():
    rng = np.random.default_rng(0)
    flux = np.ones((3, 7))
    out = noise_realisations(flux, np.full((3, 7), 0.1), 5, rng)
    assert out.shape == (5, 3, 7) and out.dtype == np.float32
    one = noise_realisations(np.ones(7), np.full(7, 0.1), 2, rng)
    assert one.shape == (2, 1, 7)
    # realisations differ from each other and from the input
    assert not np.allclose(out[0], out[1])
    assert not np.allclose(out[0], flux)


def test_noise_realisations_statistics_follow_the_errors():
    rng = np.random.default_rng(42)
    n_pix = 400
    flux = np.linspace(1.0, 2.0, n_pix)[None, :].repeat(2, axis=0)
    err = np.stack([np.full(n_pix, 0.05), np.full(n_pix, 0.2)])
    out = noise_realisations(flux, err, 500, rng).astype(np.float64)
    resid = out - flux[None]
    # mean of the noise is zero (500 x 400 draws: s.e. of the mean 0.2/sqrt(2e5) ~ 4.5e-4)
    assert abs(resid[:, 0].mean()) < 5 * 0.05 / np.sqrt(500 * n_pix)
    assert abs(resid[:, 1].mean()) < 5 * 0.2 / np.sqrt(500 * n_pix)
    # standard deviation equals the given error per star (to 1 %)
    assert resid[:, 0].std() == pytest.approx(0.05, rel=0.01)
    assert resid[:, 1].std() == pytest.approx(0.2, rel=0.01)
    # per pixel the scatter over realisations also follows err
    np.testing.assert_allclose(resid[:, 1].std(axis=0).mean(), 0.2, rtol=0.02)


def test_noise_realisations_are_reproducible_with_a_seed():
    flux, err = np.ones((2, 10)), np.full((2, 10), 0.3)
    a = noise_realisations(flux, err, 4, np.random.default_rng(7))
    b = noise_realisations(flux, err, 4, np.random.default_rng(7))
    c = noise_realisations(flux, err, 4, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_non_finite_errors_give_no_noise_and_non_finite_flux_stays():
    flux = np.array([[1.0, 2.0, 3.0, np.nan, 5.0]])
    err = np.array([[np.nan, np.inf, 0.1, 0.1, -np.inf]])
    out = noise_realisations(flux, err, 50, np.random.default_rng(1))
    np.testing.assert_array_equal(out[:, 0, 0], 1.0)   # NaN error: no noise
    np.testing.assert_array_equal(out[:, 0, 1], 2.0)   # inf error: no noise
    np.testing.assert_array_equal(out[:, 0, 4], 5.0)   # -inf error: no noise
    assert np.isnan(out[:, 0, 3]).all()                # NaN flux stays NaN
    assert out[:, 0, 2].std() > 0.05                   # the good pixel is perturbed
