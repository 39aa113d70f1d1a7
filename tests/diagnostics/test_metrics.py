"""Accuracy and calibration metrics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import median_abs_deviation

from kielnet.diagnostics.metrics import label_metrics, metrics_table, regime_masks


def test_label_metrics_hand_example():
    pred = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 10.0])
    truth = np.array([0.0, 0.0, 0.0, 0.0, 0.0, np.nan])
    sigma = np.array([2.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    m = label_metrics(pred, truth, sigma)
    # residuals 1, 2, 3, 4: median 2.5; |dev| 1.5, .5, .5, 1.5 -> MAD 1
    assert m["n"] == 4
    assert m["bias"] == pytest.approx(2.5)
    assert m["robust_sigma"] == pytest.approx(median_abs_deviation([1.0, 2.0, 3.0, 4.0], scale="normal"), rel=1e-12)
    assert m["rms"] == pytest.approx(np.sqrt(30.0 / 4))
    assert m["coverage_1sigma"] == pytest.approx(0.25)  # only |1| < 2
    assert "coverage_1sigma" not in label_metrics(pred, truth)


def test_stars_without_sigma_are_not_counted():
    m = label_metrics(np.array([1.0, 2.0, 3.0]), np.zeros(3), np.array([5.0, np.nan, 5.0]))
    assert m["n"] == 2
    assert m["bias"] == pytest.approx(2.0)
    assert m["coverage_1sigma"] == 1.0


def test_empty_metrics_are_none():
    m = label_metrics(np.array([np.nan]), np.array([1.0]), np.array([1.0]))
    assert m == {"n": 0, "bias": None, "robust_sigma": None, "rms": None, "coverage_1sigma": None}


def test_coverage_of_honest_gaussian_errors_is_68_percent():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.5, 2.0, 40000)
    truth = rng.normal(size=40000)
    pred = truth + rng.normal(0.0, sigma)
    assert label_metrics(pred, truth, sigma)["coverage_1sigma"] == pytest.approx(0.6827, abs=0.01)
    assert label_metrics(pred, truth, sigma / 2)["coverage_1sigma"] == pytest.approx(0.3829, abs=0.01)


def test_metrics_table_lists_labels_units_and_dashes():
    text = metrics_table({"teff": {"n": 3, "bias": 1.5, "robust_sigma": 80.0, "rms": 90.0,
                                   "coverage_1sigma": None}}, {"teff": "K"})
    header, row = text.splitlines()
    assert header.split() == ["label", "n", "bias", "robust_sigma", "rms", "coverage_1sigma"]
    assert row.split() == ["teff", "[K]", "3", "1.5", "80", "90", "-"]


def test_regime_masks_treat_nan_as_outside():
    labels = {"teff": np.array([8000.0, 3500.0, np.nan]), "logg": np.array([4.5, 4.6, 0.5]),
              "fe_h": np.array([0.0, -1.5, np.nan])}
    masks = regime_masks(labels, {"snr": np.array([100.0, 20.0, np.nan])})
    assert masks["teff_gt_7000"].tolist() == [True, False, False]
    assert masks["cool_dwarfs_teff_lt_4000"].tolist() == [False, True, False]
    assert masks["logg_lt_1"].tolist() == [False, False, True]
    assert masks["feh_lt_m1"].tolist() == [False, True, False]
    assert masks["xp_snr_lt_50"].tolist() == [False, True, False]


def _trust_catalogue():
    """40 rows: label x = truth + residual, σ = 1; rows 0-1 wrong by 4σ and 6σ, row 2 flagged
    likely_outlier (wrong by 10σ), row 3 has x withheld for lack of support (y still usable)."""
    from astropy.table import Table

    from kielnet.quality.flags import FLAG_BITS

    n = 40
    truth = {"x": np.zeros(n), "y": np.zeros(n)}
    x = np.linspace(-0.9, 0.9, n)
    x[0], x[1], x[2] = 4.0, 6.0, 10.0
    flag = np.zeros(n, dtype=np.int64)
    flag[2] = 1 << FLAG_BITS["likely_outlier"]
    flag[3] = 1 << FLAG_BITS["label_not_reported"]
    x[3] = np.nan
    cat = Table({"x": x, "sigma_x": np.ones(n), "ci95_x": np.full(n, 2.0), "ci997_x": np.full(n, 5.0),
                 "y": np.zeros(n) + 0.1,
                 "sigma_y": np.ones(n), "flag": flag, "support_x": np.where(np.arange(n) == 3, 0.1, 0.9),
                 "not_reported": np.where(np.arange(n) == 3, "x:support", "")})
    return cat, truth


def test_tail_metrics_count_usable_rows_only():
    from kielnet.diagnostics.metrics import tail_metrics

    cat, truth = _trust_catalogue()
    hot = np.zeros(40, dtype=bool)
    hot[:5] = True
    t = tail_metrics(cat, truth, ["x", "y"], hot=hot)
    # x: rows 2 (flagged) and 3 (withheld) are not usable -> 38 rows, 2 beyond 3σ, 1 beyond 5σ
    assert t["x"]["n_ok"] == 38 and t["x"]["ok_fraction"] == pytest.approx(38 / 40)
    assert t["x"]["ok_beyond_3sigma"] == pytest.approx(2 / 38)
    assert t["x"]["ok_beyond_5sigma"] == pytest.approx(1 / 38)
    assert t["x"]["ok_outside_ci95"] == pytest.approx(2 / 38)
    assert t["x"]["ok_outside_ci997"] == pytest.approx(1 / 38)  # row 1 (|6 - 0| > 5)
    assert "ok_outside_ci997" not in t["y"]  # no ci997_y column
    assert t["x"]["hot_ok_beyond_3sigma"] == pytest.approx(2 / 3)  # rows 0, 1, 4 of the hot ones
    # y is usable on the withheld-x row too: only the flagged row is excluded
    assert t["y"]["n_ok"] == 39 and t["y"]["ok_beyond_3sigma"] == 0.0
    assert t["rows_ok_fraction"] == pytest.approx(39 / 40) and t["rows_status_ok_fraction"] == pytest.approx(38 / 40)


def test_support_and_flag_metrics():
    from kielnet.diagnostics.metrics import flag_metrics, support_metrics

    cat, truth = _trust_catalogue()
    s = support_metrics(cat, truth, ["x"], min_support=0.5)["x"]
    assert s["n_withheld"] == 1 and s["n_withheld_with_reference"] == 1 and s["n_reported_outside_support"] == 0
    cat["support_x"][5] = 0.2  # a reported value below the support threshold is counted as a broken rule
    assert support_metrics(cat, truth, ["x"], min_support=0.5)["x"]["n_reported_outside_support"] == 1
    f = flag_metrics(cat, truth, ["x", "y"], ["likely_outlier", "outside_training_x"])
    assert f["likely_outlier"]["n"] == 1 and f["likely_outlier"]["false_flag_rate"] == 0.0
    assert f["likely_outlier"]["beyond_3sigma_rate_unflagged"] == pytest.approx(2 / 39)
    assert f["outside_training_x"]["n"] == 0


def test_withheld_by_reads_each_label_and_reason():
    from kielnet.diagnostics.metrics import withheld_by

    reasons = ["", "fe_h:support,alpha_m:support", "teff:tails", "fe_h:rule+support", "teff:support+tails",
               "teff_x:tails"]
    assert withheld_by(reasons, "teff", "tails").tolist() == [False, False, True, False, True, False]
    assert withheld_by(reasons, "fe_h", "support").tolist() == [False, True, False, True, False, False]
    assert withheld_by(reasons, "fe_h", "rule").tolist() == [False, False, False, True, False, False]
    assert withheld_by(reasons, "teff", "support").tolist() == [False, False, False, False, True, False]
    assert withheld_by([], "teff", "tails").shape == (0,)
