"""Cross-matching by id and by sky position on constructed tables; the comparison table."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table

from kielnet.diagnostics.crossmatch import (comparison_table, crossmatch, match_by_id, match_by_position,
                                            matched_table, reference_regimes)


def test_match_by_id_text_and_integers():
    cat = Table({"id": ["a", "b", "c", "d"], "source_id": np.array([11, 12, 13, 14], dtype=np.int64)})
    ref = Table({"gaiaedr3_source_id": np.array([14, 99, 12, 12], dtype=np.int64), "teff": [1.0, 2.0, 3.0, 4.0]})
    m = crossmatch(cat, ref)
    assert m.by == "id:source_id=gaiaedr3_source_id"
    assert list(m.cat_index) == [1, 3] and list(m.ref_index) == [2, 0]  # duplicate 12: first row
    m2 = match_by_id(np.array([" x", "", "y"]), np.array(["y", "x ", ""]))
    assert list(m2.cat_index) == [0, 2] and list(m2.ref_index) == [1, 0]  # empty never matches
    # float ids with NaN (a masked integer column read back) never match NaN
    m3 = match_by_id(np.array([5.0, np.nan]), np.array([np.nan, 5.0]))
    assert list(m3.cat_index) == [0] and list(m3.ref_index) == [1]


def test_match_by_position_radius_and_one_to_one():
    ra = np.array([10.0, 10.0, 50.0, np.nan])
    dec = np.array([20.0, 20.0 + 0.5 / 3600, -5.0, 0.0])
    # ref 0 is 0.3" from cat 0 and 0.2" from cat 1; ref 1 is 5" from cat 2
    rra = np.array([10.0, 50.0 + 5.0 / 3600 / np.cos(np.radians(5.0))])
    rdec = np.array([20.0 + 0.3 / 3600, -5.0])
    m = match_by_position(ra, dec, rra, rdec, radius=1 * u.arcsec)
    assert list(m.cat_index) == [1] and list(m.ref_index) == [0]
    np.testing.assert_allclose(m.separation, [0.2], atol=1e-3)
    m = match_by_position(ra, dec, rra, rdec, radius=6 * u.arcsec)
    assert list(m.cat_index) == [1, 2] and list(m.ref_index) == [0, 1]
    np.testing.assert_allclose(m.separation, [0.2, 5.0], atol=1e-2)
    cat = Table({"id": ["p", "q", "r", "s"], "ra": ra, "dec": dec})
    ref = Table({"RA": rra, "DEC": rdec, "logg": [2.5, 4.4]})
    m = crossmatch(cat, ref, radius=6 * u.arcsec)
    assert m.by.startswith("position")
    out = matched_table(cat, ref, m)
    assert len(out) == 4
    np.testing.assert_allclose(out["ref_logg"], [np.nan, 2.5, 4.4, np.nan])
    assert out["ref_separation"].unit == u.arcsec


def test_comparison_table_counts_only_finite_rows():
    rng = np.random.default_rng(0)
    ref = {"teff": rng.uniform(4000, 8000, 400), "logg": rng.uniform(0.5, 5, 400)}
    pred = {"teff": ref["teff"] + 100 + rng.normal(0, 50, 400), "logg": ref["logg"] + rng.normal(0, 0.1, 400)}
    pred["teff"][:10] = np.nan  # withheld / unlabelled rows
    sigma = {"teff": np.full(400, 50.0), "logg": np.full(400, 0.1)}
    t = comparison_table(pred, ref, sigma, reference_regimes(ref, snr=rng.uniform(10, 100, 400)),
                         units={"teff": "K"})
    row = t[(t["label"] == "teff") & (t["regime"] == "all")][0]
    assert row["n"] == 390 and row["unit"] == "K"
    assert abs(row["bias"] - 100) < 15 and abs(row["robust_sigma"] - 50) < 10
    r = pred["teff"] - ref["teff"]
    assert row["cov1"] == np.mean(np.abs(r[10:]) < 50) and row["cov2"] == np.mean(np.abs(r[10:]) < 100)
    assert 0.1 < row["cov1"] < 0.3  # a 2-sigma bias: few within 1 sigma
    hot = t[(t["label"] == "teff") & (t["regime"] == "teff_gt_7000")][0]
    assert hot["n"] == int(np.sum((ref["teff"] > 7000) & np.isfinite(pred["teff"])))
    assert sum(r.startswith("snr_q") for r in set(t["regime"])) == 4


def test_comparison_table_gives_the_tails_and_the_interval_misses():
    """beyond_3sigma counts |residual| > 3 sigma; outside_ci95 / outside_ci997 count residuals
    beyond the given half-widths, NaN where the catalogue has none (or no sigma)."""
    n = 1000
    ref = {"teff": np.full(n, 5000.0), "logg": np.full(n, 4.0)}
    r = np.zeros(n)
    r[:40], r[40:45] = 160.0, 400.0  # 4.5 % beyond 150 K (3 sigma), 0.5 % beyond 350 K
    pred = {"teff": ref["teff"] + r, "logg": ref["logg"]}
    sigma = {"teff": np.full(n, 50.0)}
    widths = {"ci95": {"teff": np.full(n, 100.0)}, "ci997": {"teff": np.r_[np.full(n - 1, 350.0), np.nan]}}
    t = comparison_table(pred, ref, sigma, units={"teff": "K"}, intervals=widths)
    row = t[t["label"] == "teff"][0]
    assert row["beyond_3sigma"] == pytest.approx(45 / n)
    assert row["outside_ci95"] == pytest.approx(45 / n) and row["outside_ci997"] == pytest.approx(5 / (n - 1))
    g = t[t["label"] == "logg"][0]  # no sigma, no intervals: NaN, not 0
    assert np.isnan(g["beyond_3sigma"]) and np.isnan(g["outside_ci95"]) and np.isnan(g["outside_ci997"])
