"""XP array work: §3.1 normaliser (fit / transform / serialise), correlation matrices,
median normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kielnet.data.startable import StarTable
from kielnet.data.xp import (N_XP_CORRELATIONS, XPNormaliser, coefficient_names, correlation_matrix,
                             normalise_by_median, pack_correlations, xp_coefficients)
from kielnet.errors import InputError

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
XP_RAW = DATA / "gaia_xp" / "XP_CONTINUOUS_RAW_with_missing_BP.csv"


def synthetic(n: int = 40, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(8, 1.5, size=(n, 1)))
    shape = rng.normal(0, 0.3, size=(n, 55)) * np.exp(-np.arange(55) / 15)
    shape[:, 0] = 1.0
    bp = scale * shape
    rp = 2.0 * scale * np.abs(shape)
    return bp, rp


def table_of(bp: np.ndarray, rp: np.ndarray) -> StarTable:
    scalars = {name: bp[:, i] for i, name in enumerate(coefficient_names("bp"))}
    scalars.update({name: rp[:, i] for i, name in enumerate(coefficient_names("rp"))})
    scalars["g"] = np.arange(len(bp), dtype=float)
    return StarTable(ids=np.arange(len(bp)).astype(str), scalars=scalars, meta={"source": "synthetic"})


def test_normaliser_follows_section_3_1():
    bp, rp = synthetic()
    norm = XPNormaliser().fit(bp, rp)
    y_bp, y_rp = norm.transform(bp, rp)
    r_bp = bp / bp[:, :1]
    expected = (r_bp - r_bp.min(axis=0)) / np.where(np.ptp(r_bp, axis=0) > 0, np.ptp(r_bp, axis=0), 1)
    np.testing.assert_allclose(y_bp, expected, rtol=1e-12, atol=1e-12)
    assert (y_bp[:, 0] == 0).all() and (y_rp[:, 0] == 0).all()  # c0/c0 = 1 has no range
    for y in (y_bp[:, 1:], y_rp[:, 1:]):
        np.testing.assert_allclose(y.min(axis=0), 0.0, atol=1e-12)
        np.testing.assert_allclose(y.max(axis=0), 1.0, atol=1e-12)
    # invariant to the overall flux scale of a star
    y2, _ = norm.transform(bp * 7.5, rp)
    np.testing.assert_allclose(y2, y_bp, atol=1e-12)
    # values outside the training range are not clipped
    out, _ = norm.transform(bp[:1] * np.r_[1.0, np.full(54, 50.0)], rp[:1])
    assert (np.abs(out[0, 1:]) > 1).any()
    ratios_bp, ratios_rp = norm.inverse_transform(y_bp, y_rp)
    np.testing.assert_allclose(ratios_bp, r_bp, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ratios_rp, rp / rp[:, :1], rtol=1e-10, atol=1e-12)


def test_normaliser_serialisation_round_trip():
    bp, rp = synthetic()
    norm = XPNormaliser().fit(bp, rp)
    state = json.loads(json.dumps(norm.to_dict()))
    assert state["n_coefficients"] == 55 and len(state["bp_min"]) == 55
    again = XPNormaliser.from_dict(state)
    for a, b in zip(again.transform(bp, rp), norm.transform(bp, rp)):
        np.testing.assert_array_equal(a, b)
    bad = dict(state, rp_max=state["rp_max"][:-1])
    with pytest.raises(InputError, match="rp_max"):
        XPNormaliser.from_dict(bad)
    with pytest.raises(InputError, match="malformed"):
        XPNormaliser.from_dict({"bp_min": []})
    with pytest.raises(InputError, match="not fitted"):
        XPNormaliser().transform(bp, rp)
    with pytest.raises(InputError, match="not fitted"):
        XPNormaliser().to_dict()


def test_missing_band_and_bad_first_coefficient_give_nan():
    bp, rp = synthetic()
    bp[3] = np.nan  # missing BP
    rp[5, 0] = -1.0  # unusable first coefficient
    norm = XPNormaliser().fit(bp, rp)  # NaN rows are ignored when fitting
    y_bp, y_rp = norm.transform(bp, rp)
    assert np.isnan(y_bp[3]).all() and np.isfinite(y_rp[3]).all()
    assert np.isnan(y_rp[5]).all() and np.isfinite(y_bp[5]).all()
    assert np.isfinite(np.delete(y_bp, 3, axis=0)).all()
    with pytest.raises(InputError, match="shape"):
        norm.transform(bp[:, :54], rp)
    with pytest.raises(InputError, match="no finite value"):
        XPNormaliser().fit(np.full((3, 55), np.nan), rp[:3])


def test_normaliser_on_star_tables():
    bp, rp = synthetic()
    st = table_of(bp, rp)
    got_bp, got_rp = xp_coefficients(st)
    np.testing.assert_array_equal(got_bp, bp)
    norm = XPNormaliser().fit_table(st)
    out = norm.transform_table(st)
    y_bp, _ = norm.transform(bp, rp)
    np.testing.assert_allclose(out.scalars["bp_7"], y_bp[:, 7])
    np.testing.assert_array_equal(out.scalars["g"], st.scalars["g"])
    np.testing.assert_array_equal(st.scalars["bp_7"], bp[:, 7])  # input untouched
    with pytest.raises(InputError, match="bp_0"):
        xp_coefficients(StarTable(ids=["a"], scalars={"g": [1.0]}))


@pytest.mark.skipif(not XP_RAW.is_file(), reason=f"real XP data {XP_RAW} is absent")
def test_normaliser_on_real_coefficients():
    from kielnet.io.gaia_xp import read_xp_continuous

    st = read_xp_continuous(XP_RAW)
    out = XPNormaliser().fit_table(st).transform_table(st)
    missing = st.extra["missing_bp"]
    assert np.isnan(out.scalars["bp_3"][missing]).all()
    assert np.isfinite(out.scalars["bp_3"][~missing]).all()
    assert set(np.round(out.scalars["bp_3"][~missing], 12)) == {0.0, 1.0}  # two stars: min and max
    assert np.isfinite(out.scalars["rp_3"]).all()


def test_correlation_matrix_round_trip():
    rng = np.random.default_rng(0)
    packed = rng.uniform(-1, 1, size=(3, N_XP_CORRELATIONS))
    packed[2] = np.nan
    m = correlation_matrix(packed)
    assert m.shape == (3, 55, 55)
    np.testing.assert_array_equal(m[:2], np.swapaxes(m[:2], -1, -2))
    np.testing.assert_array_equal(np.diagonal(m[:2], axis1=-2, axis2=-1), 1.0)
    assert np.isnan(m[2]).all()
    np.testing.assert_array_equal(pack_correlations(m[:2]), packed[:2])
    # element order: row-major strict lower triangle = column-major strict upper triangle
    assert m[0, 1, 0] == packed[0, 0] and m[0, 2, 0] == packed[0, 1] and m[0, 2, 1] == packed[0, 2]
    with pytest.raises(ValueError):
        correlation_matrix(packed[:, :-1])


def test_correlation_convention_matches_gaiaxpy():
    from kielnet.io.gaia_xp import _require_gaiaxpy

    try:
        _require_gaiaxpy()
    except InputError:
        pytest.skip("optional package gaiaxpy is absent")
    from gaiaxpy.core.generic_functions import array_to_symmetric_matrix

    packed = np.random.default_rng(2).uniform(-1, 1, N_XP_CORRELATIONS)
    np.testing.assert_array_equal(correlation_matrix(packed), array_to_symmetric_matrix(packed, 55))


def test_normalise_by_median():
    flux = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [2.0, np.nan, 4.0, 6.0, 8.0], [-1, -1, -1, -1, -1.0]])
    err = np.full_like(flux, 0.5)
    f, e, med = normalise_by_median(flux, err)
    np.testing.assert_array_equal(med[:2], [3.0, 5.0])
    np.testing.assert_allclose(f[0], flux[0] / 3) and np.testing.assert_allclose(e[1], 0.1)
    assert np.isnan(f[1, 1]) and np.isnan(f[2]).all() and np.isnan(e[2]).all()
