"""Spectral-type parsing, the SpT → (Teff, log g) calibration and the §3.1 sample rules."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kielnet.data.spectral_types import (SpTCalibration, fill_hot_star_metallicity, parse_spectral_type,
                                         parse_spectral_types, training_sample_rule)
from kielnet.errors import InputError

NAN = math.nan

# (string, spt, lum_class, multiple) for strings that must parse
PARSED = [
    # letters, subclasses
    ("O3", 3.0, NAN, False),
    ("B2.5", 12.5, NAN, False),
    ("G2", 42.0, NAN, False),
    ("K", 50.0, NAN, False),
    ("M", 60.0, NAN, False),
    ("A0V", 20.0, 5.0, False),
    ("F5V", 35.0, 5.0, False),
    ("O9.7Iab", 9.7, 1.0, False),
    ("M0.5V", 60.5, 5.0, False),
    ("L3", 73.0, NAN, False),
    ("T4.5", 84.5, NAN, False),
    # luminosity classes
    ("B1Ia", 11.0, 1.0, False),
    ("B1Ia+", 11.0, 1.0, False),
    ("B1Ib", 11.0, 1.0, False),
    ("B5Iab", 15.0, 1.0, False),
    ("B1 0-Ia", 11.0, 1.0, False),
    ("A2II", 22.0, 2.0, False),
    ("K0III", 50.0, 3.0, False),
    ("K0IIIb", 50.0, 3.0, False),
    ("G8IV", 48.0, 4.0, False),
    ("A0Va", 20.0, 5.0, False),
    # ranges
    ("B2IV-V", 12.0, 4.5, False),
    ("B2IV/V", 12.0, 4.5, False),
    ("G8III-IV", 48.0, 3.5, False),
    ("B1-2", 11.5, NAN, False),
    ("B1-2V", 11.5, 5.0, False),
    ("B8/9V", 18.5, 5.0, False),
    ("G8/K0", 49.0, NAN, False),
    ("G8/K0III", 49.0, 3.0, False),
    ("O9.5-B0V", 9.75, 5.0, False),
    ("B2.5IV-Ve", 12.5, 4.5, False),
    # multiples
    ("O5+O9.5", 5.0, NAN, True),
    ("B2V+B3V", 12.0, 5.0, True),
    ("B2V + A0", 12.0, 5.0, True),
    ("K0III+DA", 50.0, 3.0, True),
    ("B2V+?", 12.0, 5.0, True),
    ("B2V SB2", 12.0, 5.0, True),
    # odd strings
    ("g2v", 42.0, 5.0, False),
    ("  B2   V  ", 12.0, 5.0, False),
    ("b2iiie", 12.0, 3.0, False),
    ("B2IIIe", 12.0, 3.0, False),
    ("B2Vnne", 12.0, 5.0, False),
    ("B3V(n)", 13.0, 5.0, False),
    ("O6.5V((f))", 6.5, 5.0, False),
    ("O4If+", 4.0, 1.0, False),
    ("Be", 10.0, NAN, False),
    ("B2e", 12.0, NAN, False),
    ("M2.5V:", 62.5, 5.0, False),
    ("M3var", 63.0, NAN, False),
    ("A0Vp(SiCr)", 20.0, 5.0, False),
    ("B9IIIpHgMn", 19.0, 3.0, False),
    ("G5IV-V Fe-0.5", 45.0, 4.5, False),
    ("kA2hA5mA7V", 25.0, 5.0, False),
    # prefixes
    ("sdB5", 15.0, 6.0, False),
    ("sdM1.5", 61.5, 6.0, False),
    ("esdM2", 62.0, 6.0, False),
    ("dM3e", 63.0, 5.0, False),
    ("gK0", 50.0, 3.0, False),
]

# strings that must give ok=False (never an exception)
REFUSED = ["", "   ", "...", "xyz", "Kxyz", "IV-V", "B12", "B1-M2", "DA2", "DA", "WD", "WN7", "WC8",
           "C5,4", "S4", "12.5", None, float("nan"), 3]


@pytest.mark.parametrize("text,spt,lc,multiple", PARSED)
def test_parse_spectral_type(text, spt, lc, multiple):
    p = parse_spectral_type(text)
    assert p.ok, p.reason
    assert p.spt == pytest.approx(spt)
    if math.isnan(lc):
        assert math.isnan(p.lum_class)
    else:
        assert p.lum_class == pytest.approx(lc)
    assert p.multiple is multiple


@pytest.mark.parametrize("text", REFUSED)
def test_parse_refuses_with_reason(text):
    p = parse_spectral_type(text)
    assert not p.ok
    assert p.reason
    assert math.isnan(p.spt) and math.isnan(p.lum_class)


def test_parse_reasons_name_the_problem():
    assert "white dwarf" in parse_spectral_type("DA2").reason
    assert "Wolf-Rayet" in parse_spectral_type("WN7").reason
    assert "subclass" in parse_spectral_type("B12").reason
    assert "'xyz'" in parse_spectral_type("Kxyz").reason
    assert "subdwarf" in parse_spectral_type("sdB5").reason  # ok, with a note


def test_parse_spectral_types_vectorised():
    spt, lc, multiple, ok = parse_spectral_types(["B2.5IV-V", "G8/K0", "O5+O9.5", "DA2", None])
    np.testing.assert_allclose(spt[:3], [12.5, 49.0, 5.0])
    np.testing.assert_allclose(lc[:1], [4.5])
    assert np.isnan(lc[1]) and np.isnan(lc[2]) and np.isnan(spt[3:]).all()
    assert multiple.tolist() == [False, False, True, False, False]
    assert ok.tolist() == [True, True, True, False, False]
    assert spt.dtype == np.float64 and ok.dtype == bool


# ------------------------------------------------------------------ calibration
def _synthetic_grid(classes=(1.0, 3.0, 5.0)):
    """Smooth made-up calibration: log Teff falls with SpT, log g rises with LC."""
    spt = np.arange(0.0, 40.0, 1.0)
    s, c = np.meshgrid(spt, np.asarray(classes))
    s, c = s.ravel(), c.ravel()
    teff = 10 ** (4.65 - 0.022 * s + 0.002 * (c - 5))
    logg = 1.0 + 0.6 * c + 0.01 * s
    return s, c, teff, logg


@pytest.fixture(scope="module")
def grid_calibration():
    s, c, teff, logg = _synthetic_grid()
    keep = ~((s == 12.0) & (c == 3.0))  # hold out B2 III
    return SpTCalibration(n_restarts=0).fit(s[keep], c[keep], teff[keep], logg[keep])


def test_calibration_interpolates_held_out_point(grid_calibration):
    pred = grid_calibration.predict([12.0], [3.0])
    assert pred.teff[0] == pytest.approx(10 ** (4.65 - 0.022 * 12 - 0.004), rel=0.02)
    assert pred.logg[0] == pytest.approx(1.0 + 1.8 + 0.12, abs=0.05)
    assert not pred.outside_support[0]
    assert pred.teff_err[0] > 0 and pred.logg_err[0] > 0


def test_calibration_support(grid_calibration):
    spt = np.array([12.0, 12.0, 12.0, 12.0, 45.0, -3.0, 12.0, np.nan, 12.0])
    lc = np.array([1.0, 1.5, 2.0, 5.5, 3.0, 3.0, 6.0, 3.0, np.nan])
    out = grid_calibration.outside_support(spt, lc)
    # I: fitted; 1.5: within 0.5 of I; II: 1 away from I and III; 5.5: beyond V;
    # SpT 45 / −3 outside the fitted range; VI not fitted; NaNs
    assert out.tolist() == [False, False, True, True, True, True, True, True, True]
    pred = grid_calibration.predict(spt, lc)
    assert np.isnan(pred.teff[7:]).all() and np.isnan(pred.logg[7:]).all()
    np.testing.assert_array_equal(pred.outside_support, out)
    assert grid_calibration.lum_classes.tolist() == [1.0, 3.0, 5.0]
    assert grid_calibration.spt_range(3.0) == (0.0, 39.0)


def test_calibration_gap_is_outside_support():
    s, c, teff, logg = _synthetic_grid(classes=(5.0,))
    keep = (s < 10) | (s > 25)
    cal = SpTCalibration(n_restarts=0, max_gap=3.0).fit(s[keep], c[keep], teff[keep], logg[keep])
    assert cal.outside_support([11.0, 18.0, 27.0], [5, 5, 5]).tolist() == [False, True, False]


def test_calibration_json_round_trip(grid_calibration):
    state = json.loads(json.dumps(grid_calibration.to_dict()))
    again = SpTCalibration.from_dict(state)
    spt, lc = np.array([3.0, 12.0, 33.3]), np.array([5.0, 3.0, 1.0])
    a, b = grid_calibration.predict(spt, lc), again.predict(spt, lc)
    np.testing.assert_allclose(b.teff, a.teff, rtol=1e-9)
    np.testing.assert_allclose(b.logg, a.logg, rtol=1e-9)
    np.testing.assert_allclose(b.logg_err, a.logg_err, rtol=1e-6)
    np.testing.assert_array_equal(b.outside_support, a.outside_support)
    with pytest.raises(ValueError):
        SpTCalibration.from_dict({"kind": "Scaler"})


def test_calibration_rejects_bad_input():
    s, c, teff, logg = _synthetic_grid(classes=(5.0,))
    teff = teff.copy()
    teff[4] = np.nan
    with pytest.raises(InputError) as exc:
        SpTCalibration().fit(s, c, teff, logg)
    assert exc.value.field == "teff" and exc.value.row == 4
    with pytest.raises(InputError):
        SpTCalibration().fit(s, c[:3], teff, logg)
    with pytest.raises(RuntimeError):
        SpTCalibration().predict([1.0], [5.0])


# ------------------------------------------------------------------ sample rules
def test_training_sample_rule_hand_points():
    # limit 11.3·log10(T) − 40: T = 10000 K → 5.2; T = 8000 K → 4.1049; T = 20000 K → 8.6016
    teff = [5000.0, 6699.0, 10000.0, 10000.0, 8000.0, 8000.0, 20000.0, 6700.0, np.nan, 7000.0, 5000.0]
    logg = [4.5, 4.5, 5.1, 5.3, 4.0, 4.2, 4.0, 3.2, 2.0, np.nan, np.nan]
    want = [True, True, True, False, True, False, True, True, False, False, True]
    assert training_sample_rule(teff, logg).tolist() == want
    # at 6700 K the limit is 11.3·log10(6700) − 40 = 3.2346
    assert training_sample_rule([6700.0, 6700.0], [3.23, 3.24]).tolist() == [True, False]


def test_fill_hot_star_metallicity():
    teff = np.array([5000.0, 6500.0, 6501.0, 9000.0, 20000.0, np.nan])
    feh = np.array([np.nan, np.nan, np.nan, -0.3, np.nan, np.nan])
    filled, forced = fill_hot_star_metallicity(teff, feh)
    assert forced.tolist() == [False, False, True, False, True, False]
    np.testing.assert_array_equal(filled[[2, 3, 4]], [0.0, -0.3, 0.0])
    assert np.isnan(filled[[0, 1, 5]]).all()
    assert np.isnan(feh[2])  # input untouched
    _, forced = fill_hot_star_metallicity(teff, feh, teff_min=4000.0)
    assert forced.tolist() == [True, True, True, False, True, False]
    with pytest.raises(InputError):
        fill_hot_star_metallicity([1.0, 2.0], [0.0])
