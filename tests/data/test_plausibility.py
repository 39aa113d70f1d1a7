"""Physical plausibility of spectra and scalar inputs, measured against the training set."""

from __future__ import annotations

import numpy as np
import pytest

from kielnet.data.plausibility import (SPECTRUM_TESTS, ColumnRanges, SpectrumPlausibility, placeholder_mask,
                                       spectrum_statistics)
from kielnet.data.preprocess import Preprocessor


def _spectra(n=200, n_pix=100, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, n_pix)
    return (1.0 + 0.5 * x[None, :] * rng.uniform(0.5, 1.5, (n, 1))
            + 0.02 * rng.normal(size=(n, n_pix))).astype(np.float32)


def test_statistics_of_constructed_spectra():
    f = np.array([[1.0, 2.0, 3.0, -1.0], [2.0, 2.0, 2.0, 2.0], [np.nan] * 4])
    s = spectrum_statistics(f)
    assert s["nonpositive"][0] == pytest.approx(0.25)
    assert s["scatter"][1] == 0.0 and s["spike"][1] == 0.0
    assert s["scale"][1] == pytest.approx(np.log10(2.0))
    assert all(np.isnan(v[2]) for v in s.values())


@pytest.mark.parametrize("case, test", [
    ("zero", "nonpositive"), ("negative", "nonpositive"), ("constant", "constant"),
    ("scaled_1e6", "scale"), ("spike_1e30", "spike"), ("tiny_1e-6", "scale")])
def test_garbage_fails_the_named_test(case, test):
    train = _spectra()
    chk = SpectrumPlausibility.fit(train, check_scale=True)
    assert not chk.failures(train).any()           # the training set passes its own tests
    f = _spectra(n=1, seed=5)[0].copy()
    bad = {"zero": np.zeros_like(f), "negative": -f, "constant": np.full_like(f, 1.3),
           "scaled_1e6": f * 1e6, "spike_1e30": np.where(np.arange(len(f)) == 40, 1e30, f),
           "tiny_1e-6": f * 1e-6}[case]
    fails = chk.failures(np.stack([f, bad]))
    assert not fails[0].any()
    assert fails[1, SPECTRUM_TESTS.index(test)]
    assert test in SpectrumPlausibility.describe(fails)[1].split(",")


def test_scale_is_not_tested_for_median_normalised_models():
    train = _spectra()
    chk = SpectrumPlausibility.fit(train, check_scale=False)
    assert not chk.failures(train[:3] * 1e6).any()


def test_ordinary_noise_and_a_few_odd_pixels_pass():
    train = _spectra()
    chk = SpectrumPlausibility.fit(train, check_scale=True)
    f = _spectra(n=50, seed=9)
    f[:, 10] *= 1.5          # a cosmic-ray-like pixel
    f *= 1.5                 # brighter than any training star, within a dex
    assert not chk.failures(f).any()


def test_round_trip():
    chk = SpectrumPlausibility.fit(_spectra(), check_scale=True, spike_factor=7.0)
    again = SpectrumPlausibility.from_dict(chk.to_dict())
    assert again == chk


def test_placeholders_and_far_values():
    v = np.array([12.0, 99.999, np.float32(99.999), -999.0, 99.0, 12.5, -9999.0])
    assert placeholder_mask(v, [99.999, -999.0, 99.0, -9999.0]).tolist() == [False, True, True, True, True,
                                                                               False, True]
    cr = ColumnRanges.fit({"g": np.array([8.0, 15.0, np.nan])}, span_margin=2.0)
    assert cr.far_outside("g", np.array([15.0, 28.9, 29.1, -6.1, np.nan, np.inf])).tolist() == [
        False, False, True, True, False, True]


def test_preprocessor_flags_implausible_spectra_and_keeps_state(tiny_config, make_table):
    table = make_table(n=120, n_pix=48, seed=3)
    pre = Preprocessor(tiny_config).fit(table)
    bad = table.take(np.arange(5))
    bad.flux[1] = 0.0
    bad.flux[2] = -bad.flux[2]
    bad.flux[3] = bad.flux[3] * 1e6
    bad.flux[4, 7] = 1e30
    prep = pre.transform(bad, with_labels=False)
    assert prep.implausible.tolist() == [False, True, True, True, True]
    assert prep.bad_spectrum.tolist() == [False, True, True, True, True]
    assert np.isfinite(prep.spectrum).all() and (prep.spectrum[1:] == 0).all()
    assert "scale" in prep.spectrum_issues[3] and "spike" in prep.spectrum_issues[4]
    again = Preprocessor.from_dict(tiny_config, pre.to_dict())
    np.testing.assert_array_equal(again.transform(bad, with_labels=False).implausible, prep.implausible)
    off = Preprocessor(tiny_config.with_overrides(checks={"spectra": False})).fit(table)
    assert not off.transform(bad, with_labels=False).implausible.any()
