"""The per-star σ model (kielnet.quality.sigma) and the calibration metrics that judge it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kielnet.config import KielnetConfig
from kielnet.diagnostics.metrics import CURVE_K, calibration_report, coverage_summary, worst_bin
from kielnet.quality.sigma import (GAUSSIAN_1SIGMA, NO_MISSING, UNCOVERED, BinnedScale, OutOfFold, SigmaModel,
                                   combine_members, coverage_factor, fit_binned_scale, fit_sigma_model)
from conftest import tiny_config_dict

GAUSS_CURVE = {0.5: 0.3829, 1.0: 0.6827, 1.5: 0.8664, 2.0: 0.9545, 3.0: 0.9973}


# ------------------------------------------------------------------ coverage metrics
def test_coverage_of_a_constructed_case_with_known_sigma():
    rng = np.random.default_rng(0)
    n = 200_000
    sigma = rng.uniform(0.05, 0.5, n)  # every star its own σ
    truth = rng.normal(0, 1, n)
    pred = truth + rng.normal(0, 1, n) * sigma
    rep = calibration_report(pred, truth, sigma, snr=1 / sigma, g=rng.uniform(10, 17, n),
                             regimes={"half": np.arange(n) < n // 2})
    assert rep["overall"]["cov1"] == pytest.approx(0.6827, abs=0.004)
    assert rep["overall"]["cov2"] == pytest.approx(0.9545, abs=0.003)
    for k, want in GAUSS_CURVE.items():
        assert rep["curve"][str(k)] == pytest.approx(want, abs=0.004)
    assert set(rep["curve"]) == {str(k) for k in CURVE_K}
    assert len(rep["snr_bins"]) == 4 and sum(v["n"] for v in rep["snr_bins"].values()) == n
    assert set(rep["g_bins"]) == {"le_12", "12_14", "14_16", "gt_16"}
    for sec in ("snr_bins", "g_bins", "regimes"):
        for v in rep[sec].values():
            assert v["cov1"] == pytest.approx(0.6827, abs=0.01)
    assert abs(worst_bin(rep)["deviation"]) < 0.01
    json.dumps(rep)  # plain JSON


def test_coverage_detects_a_sigma_that_ignores_the_star():
    # the σ of every star is the average one: low-S/N stars are under-covered, high over-covered
    rng = np.random.default_rng(1)
    n = 100_000
    true_sigma = rng.uniform(0.05, 0.5, n)
    truth = np.zeros(n)
    pred = rng.normal(0, 1, n) * true_sigma
    flat = np.full(n, np.sqrt(np.mean(true_sigma ** 2)))
    rep = calibration_report(pred, truth, flat, snr=1 / true_sigma)
    covs = [v["cov1"] for v in rep["snr_bins"].values()]
    assert min(covs) < 0.55 and max(covs) > 0.95
    wb = worst_bin(rep)
    assert abs(wb["deviation"]) > 0.2 and wb["bin"].startswith("snr_bins.")


def test_coverage_summary_counts_only_finite_rows():
    out = coverage_summary(np.array([0.0, 1.0, np.nan, 3.0]), np.zeros(4), np.array([0.5, 0.8, 1.0, np.nan]))
    assert out == {"n": 2, "cov1": 0.5, "cov2": 1.0}


def test_coverage_factor_is_the_target_quantile():
    r = np.abs(np.random.default_rng(2).normal(0, 3.0, 400_000))
    assert coverage_factor(r) == pytest.approx(3.0, rel=0.01)
    assert coverage_factor(r / 3.0, 0.9545) == pytest.approx(2.0, rel=0.01)
    assert np.isnan(coverage_factor(np.array([np.nan])))


# ------------------------------------------------------------------ binned recalibration
def _cells(n=60_000, seed=3):
    """Stars whose true σ (relative to a base σ of 1) is 1, 2 or 4 by S/N and 1.5× at x > 0."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    snr = 10 ** rng.uniform(0.5, 2.5, n)
    true = np.where(snr < 10, 4.0, np.where(snr < 100, 2.0, 1.0)) * np.where(x > 0, 1.5, 1.0)
    r = rng.normal(0, 1, n) * true
    return x, snr, r, true


def test_binned_scale_recovers_the_factors():
    x, snr, r, true = _cells()
    fit = fit_binned_scale(x, snr, np.abs(r), label_bins=2, snr_bins=8, min_per_cell=200)
    f = fit(x, snr)
    # cells straddling an S/N break mix two factors; away from the breaks they are recovered
    far = (np.abs(np.log10(snr) - 1) > 0.2) & (np.abs(np.log10(snr) - 2) > 0.2)
    assert np.median(np.abs(f[far] / true[far] - 1)) < 0.06
    # after the scale, coverage is right in every S/N decade and both label halves
    for lo, hi in [(0.5, 1), (1, 2), (2, 2.5)]:
        for side in (x < 0, x > 0):
            m = side & (np.log10(snr) >= lo) & (np.log10(snr) < hi)
            assert np.mean(np.abs(r[m]) < f[m]) == pytest.approx(GAUSSIAN_1SIGMA, abs=0.04)


def test_lower_snr_gets_a_larger_sigma():
    x, snr, r, _ = _cells()
    fit = fit_binned_scale(x, snr, np.abs(r), label_bins=2, snr_bins=4, min_per_cell=200)
    xs = np.array([0.3, 0.3, 0.3])
    f = fit(xs, np.array([300.0, 30.0, 4.0]))
    assert f[0] < f[1] < f[2]
    # no S/N: the largest factor of the label bin (conservative), NaN label: NaN
    assert fit(np.array([0.3]), np.array([np.nan]))[0] == pytest.approx(max(f))
    assert np.isnan(fit(np.array([np.nan]), np.array([30.0]))[0])


def test_binned_scale_round_trip_and_validation():
    x, snr, r, _ = _cells(5000)
    fit = fit_binned_scale(x, snr, np.abs(r), label_bins=3, snr_bins=2, min_per_cell=100)
    again = BinnedScale.from_dict(json.loads(json.dumps(fit.to_dict())))
    np.testing.assert_array_equal(again(x, snr), fit(x, snr))
    bad = fit.to_dict()
    bad["factors"][0][0] = -1.0
    with pytest.raises(ValueError, match="positive"):
        BinnedScale.from_dict(bad)
    bad = fit.to_dict()
    bad["factors"] = bad["factors"][:1]
    with pytest.raises(ValueError, match="label bins"):
        BinnedScale.from_dict(bad)


def test_tail_bins_give_the_rare_end_of_a_label_its_own_factor():
    """A rare population (4 % of stars, like the hot stars of the XP library) with 5x the
    scatter: sharing the top equal-count bin it is badly under-covered; a tail edge fixes it."""
    rng = np.random.default_rng(5)
    n = 40_000
    x = rng.uniform(0, 1, n)
    x[: n // 25] = rng.uniform(1.5, 3.0, n // 25)   # the rare tail, beyond everyone else
    true = np.where(x > 1.0, 5.0, 1.0)
    r = rng.normal(0, 1, n) * true
    tail = x > 1.0
    plain = fit_binned_scale(x, None, np.abs(r), label_bins=8, snr_bins=1, min_per_cell=100)
    tailed = fit_binned_scale(x, None, np.abs(r), label_bins=8, snr_bins=1, min_per_cell=100,
                              tails=[0.04, 0.02])
    assert len(tailed.label_edges) == len(plain.label_edges) + 4
    cov = lambda fit, m: np.mean(np.abs(r[m]) < fit(x[m]))  # noqa: E731
    assert cov(plain, tail) < 0.55                               # the top bin's factor is too small
    assert cov(tailed, tail) == pytest.approx(GAUSSIAN_1SIGMA, abs=0.04)
    assert cov(tailed, ~tail) == pytest.approx(GAUSSIAN_1SIGMA, abs=0.02)


def test_tails_must_split_the_outermost_bins():
    from kielnet.config import RecalibrationConfig
    assert RecalibrationConfig(label_bins=8, tails=[0.05, 0.02]).tails == [0.05, 0.02]
    with pytest.raises(ValueError, match="tails"):
        RecalibrationConfig(label_bins=8, tails=[0.2])


def test_small_cells_fall_back_to_their_label_bin():
    x, snr, r, _ = _cells(3000)
    fit = fit_binned_scale(x, snr, np.abs(r), label_bins=2, snr_bins=4, min_per_cell=10_000)
    f = np.asarray(fit.factors)
    assert np.all(f == f[:, :1])  # no cell has enough stars: each row is its label bin's factor


# ------------------------------------------------------------------ missing inputs
def _model(rule="calibrate"):
    return SigmaModel(terms=["spread"], labels=["a"], recalibration=None,
                      missing={"twomass": {"a": 2.0}, "gaia": {"a": 3.0}, "all_inputs": {"a": 5.0}},
                      groups={"twomass": ["j", "h", "k"], "gaia": ["bp", "rp"],
                              "all_inputs": ["g", "bp", "rp", "j", "h", "k"]},
                      columns=["g", "bp", "rp", "j", "h", "k"], rule=rule)


def test_group_index_picks_the_smallest_covering_group():
    sm = _model()
    cols = sm.columns
    rows = [[], ["h"], ["j", "h", "k"], ["bp"], ["bp", "j"], ["g"]]
    m = np.array([[c in r for c in cols] for r in rows])
    gi = sm.group_index(m)
    assert gi.tolist() == [NO_MISSING, 0, 0, 1, 2, 2]
    s = sm.sigma("a", np.ones(len(rows)), np.zeros(len(rows)), None, gi)
    assert s.tolist() == [1.0, 2.0, 2.0, 3.0, 5.0, 5.0]
    assert not sm.withheld(gi).any()


def test_rules_withhold_and_uncovered():
    sm = _model("withhold")
    m = np.array([[False] * 6, [False, False, False, True, False, False]])
    assert sm.withheld(sm.group_index(m)).tolist() == [False, True]
    # a calibrate model without a factor for the only covering group cannot label the star
    sm = _model()
    del sm.missing["all_inputs"]
    gi = sm.group_index(np.array([[True, False, False, False, False, False]]))
    assert gi.tolist() == [UNCOVERED] and sm.withheld(gi).tolist() == [True]


def test_sigma_model_round_trip_and_validation():
    sm = _model()
    again = SigmaModel.from_dict(json.loads(json.dumps(sm.to_dict())))
    assert again.to_dict() == sm.to_dict()
    d = sm.to_dict()
    d["terms"] = ["spread", "guess"]
    with pytest.raises(ValueError, match="terms"):
        SigmaModel.from_dict(d)
    d = sm.to_dict()
    d["missing"]["twomass"]["a"] = float("nan")
    with pytest.raises(ValueError, match="twomass"):
        SigmaModel.from_dict(d)


def test_combine_members():
    means = np.array([[[1.0]], [[3.0]]])
    head = np.array([[[3.0]], [[4.0]]])
    m, s, h = combine_members(means, head)
    assert m[0, 0] == 2.0 and s[0, 0] == pytest.approx(np.sqrt(2.0)) and h[0, 0] == pytest.approx(np.sqrt(12.5))
    assert combine_members(means[:1], None)[1][0, 0] == 0.0


def test_fit_sigma_model_on_out_of_fold_stars():
    """The spread says 1, the truth is 2 at low S/N and 1 at high; hiding 2MASS triples the
    scatter: the fit must restore 1σ coverage in each case, from out-of-fold stars only."""
    cfg = KielnetConfig.from_dict(tiny_config_dict(
        input_groups={"twomass": ["j", "k"]},
        uncertainty={"terms": ["spread"], "recalibration": {"kind": "binned", "label_bins": 2, "snr_bins": 2,
                                                            "min_per_cell": 100}}))
    rng = np.random.default_rng(4)
    n, nl = 40_000, len(cfg.labels)
    snr = np.where(rng.random(n) < 0.5, 5.0, 50.0)
    true = np.where(snr < 10, 2.0, 1.0)[:, None] * np.ones((1, nl))
    truth = rng.normal(0, 1, (n, nl))
    pred = truth + rng.normal(0, 1, (n, nl)) * true
    pred_hidden = truth + rng.normal(0, 1, (n, nl)) * true * 3
    spread = np.ones((n, nl))
    complete = np.ones(n, bool)
    oof = OutOfFold(pred, spread, None, truth, snr, complete,
                    hidden={"twomass": (pred_hidden, spread, None), "all_inputs": (pred_hidden, spread, None)})
    sm = fit_sigma_model(cfg, oof, running=None)
    assert sm.terms == ["spread"] and set(sm.missing) == {"twomass", "all_inputs"}
    for j, name in enumerate(cfg.label_names):
        s = sm.sigma(name, sm.base(spread[:, j], None, None), pred[:, j], snr)
        for lo in (True, False):
            m = (snr < 10) == lo
            assert np.mean(np.abs(pred[m, j] - truth[m, j]) < s[m]) == pytest.approx(GAUSSIAN_1SIGMA, abs=0.02)
        assert sm.missing["twomass"][name] == pytest.approx(3.0, rel=0.05)
        assert sm.oof_coverage[name]["all_inputs_present"] == pytest.approx(GAUSSIAN_1SIGMA, abs=0.01)
    # stars missing an input are not used for the recalibration
    oof2 = OutOfFold(pred * np.where(np.arange(n) < n // 2, 1.0, 50.0)[:, None], spread, None, truth, snr,
                     np.arange(n) < n // 2, hidden={})
    sm2 = fit_sigma_model(cfg.with_overrides(uncertainty={"missing_inputs": "flag"}), oof2, running=None)
    assert sum(map(sum, sm2.recalibration["teff"].counts)) == n // 2


def test_config_validation_of_sigma_sections():
    with pytest.raises(Exception, match="heteroscedastic"):
        KielnetConfig.from_dict(tiny_config_dict(uncertainty={"terms": ["head"]}))
    with pytest.raises(Exception, match="input group"):
        KielnetConfig.from_dict(tiny_config_dict(input_groups={"wise": ["w1"]}))
    with pytest.raises(Exception, match="reserved"):
        KielnetConfig.from_dict(tiny_config_dict(input_groups={"all_inputs": ["g"]}))
    with pytest.raises(Exception, match="uncertainty.snr"):
        KielnetConfig.from_dict(tiny_config_dict(uncertainty={"snr": "w1"}))
    cfg = KielnetConfig.from_dict(tiny_config_dict(input_groups={"gaia": ["bp", "rp"]}))
    assert list(cfg.groups()) == ["gaia", "all_inputs"]
    assert cfg.groups()["all_inputs"] == cfg.scalar_columns()
