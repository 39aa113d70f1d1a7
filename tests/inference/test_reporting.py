"""Reporting rules: a label is withheld (NaN + flag label_not_reported) where another
predicted label crosses a threshold (APOGEE Net II: no [Fe/H] above 6500 K)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from kielnet.config import KielnetConfig, ReportingRule
from kielnet.errors import ConfigError
from kielnet.artifact import load_bundle, save_bundle
from kielnet.inference.predict import predict
from kielnet.quality.flags import FLAG_BITS

BIT = 1 << FLAG_BITS["label_not_reported"]


@pytest.fixture
def stars(make_table):
    torch.set_num_threads(1)
    return make_table(n=40, n_pix=48, seed=33)


@pytest.fixture
def plain(synthetic_bundle, stars):
    return predict(synthetic_bundle, stars, n_realisations=0)


def _arr(cat, name):
    return np.asarray(cat[name], dtype=float)


def _with_rules(bundle, rules):
    return replace(bundle, config=bundle.config.with_overrides(reporting=rules))


def _has_flag(cat):
    return (np.asarray(cat["flag"]) & BIT) > 0


def _status_has(cat):
    return np.array(["label_not_reported" in s.split(",") for s in cat["status"]])


def test_fe_h_withheld_exactly_above_the_median_teff(synthetic_bundle, stars, plain):
    teff = _arr(plain, "teff")
    x = float(np.median(teff))
    hot = teff > x
    assert 0 < hot.sum() < len(teff)
    bundle = _with_rules(synthetic_bundle, [{"label": "fe_h", "when": "teff", "above": x}])
    cat = predict(bundle, stars, n_realisations=0)
    for col in ("fe_h", "e_fe_h", "sigma_fe_h"):
        v = _arr(cat, col)
        assert np.isnan(v[hot]).all(), col
        assert np.isfinite(v[~hot]).all(), col
        np.testing.assert_array_equal(v[~hot], _arr(plain, col)[~hot])
    np.testing.assert_array_equal(_has_flag(cat), hot)
    np.testing.assert_array_equal(_status_has(cat), hot)
    # the other labels are reported for every star, unchanged
    for name in ("teff", "logg", "alpha_m"):
        np.testing.assert_array_equal(_arr(cat, name), _arr(plain, name))
        np.testing.assert_array_equal(_arr(cat, f"sigma_{name}"), _arr(plain, f"sigma_{name}"))
    # the flag bit is the only difference in the flags
    np.testing.assert_array_equal(np.asarray(cat["flag"]) & ~BIT, np.asarray(plain["flag"]))


def test_below_rule_and_both_bounds(synthetic_bundle, stars, plain):
    logg = _arr(plain, "logg")
    lo, hi = np.quantile(logg, [0.25, 0.75])
    below = _with_rules(synthetic_bundle, [{"label": "alpha_m", "when": "logg", "below": float(lo)}])
    cat = predict(below, stars, n_realisations=0)
    np.testing.assert_array_equal(np.isnan(_arr(cat, "alpha_m")), logg < lo)
    np.testing.assert_array_equal(_has_flag(cat), logg < lo)
    both = _with_rules(synthetic_bundle, [{"label": "teff", "when": "logg", "below": float(lo),
                                           "above": float(hi)}])
    cat2 = predict(both, stars, n_realisations=0)
    outside = (logg < lo) | (logg > hi)
    assert outside.any() and (~outside).any()
    np.testing.assert_array_equal(np.isnan(_arr(cat2, "teff")), outside)
    np.testing.assert_array_equal(np.isnan(_arr(cat2, "sigma_teff")), outside)
    assert np.isfinite(_arr(cat2, "logg")).all()


def test_two_rules_flag_the_union(synthetic_bundle, stars, plain):
    teff, logg = _arr(plain, "teff"), _arr(plain, "logg")
    xt, xg = float(np.quantile(teff, 0.7)), float(np.quantile(logg, 0.3))
    bundle = _with_rules(synthetic_bundle, [{"label": "fe_h", "when": "teff", "above": xt},
                                            {"label": "alpha_m", "when": "logg", "below": xg}])
    cat = predict(bundle, stars, n_realisations=0)
    np.testing.assert_array_equal(np.isnan(_arr(cat, "fe_h")), teff > xt)
    np.testing.assert_array_equal(np.isnan(_arr(cat, "alpha_m")), logg < xg)
    np.testing.assert_array_equal(_has_flag(cat), (teff > xt) | (logg < xg))


def test_rule_with_realisations_hides_the_noise_term(synthetic_bundle, stars):
    ref = predict(synthetic_bundle, stars, n_realisations=3, rng=np.random.default_rng(4))
    teff = _arr(ref, "teff")
    x = float(np.median(teff))
    bundle = _with_rules(synthetic_bundle, [{"label": "fe_h", "when": "teff", "above": x}])
    cat = predict(bundle, stars, n_realisations=3, rng=np.random.default_rng(4))
    hot = teff > x
    assert np.isnan(_arr(cat, "e_fe_h_noise")[hot]).all()
    assert np.isfinite(_arr(cat, "e_fe_h_noise")[~hot]).all()
    assert np.isfinite(_arr(cat, "e_teff_noise")).all()
    np.testing.assert_array_equal(_has_flag(cat), hot)


def test_rules_survive_the_bundle_round_trip(synthetic_bundle, stars, plain, tmp_path):
    x = float(np.median(_arr(plain, "teff")))
    bundle = _with_rules(synthetic_bundle, [{"label": "fe_h", "when": "teff", "above": x}])
    loaded = load_bundle(save_bundle(bundle, tmp_path / "b"))
    assert loaded.config.reporting == bundle.config.reporting
    a = predict(bundle, stars, n_realisations=0)
    b = predict(loaded, stars, n_realisations=0)
    np.testing.assert_array_equal(_arr(a, "fe_h"), _arr(b, "fe_h"))
    np.testing.assert_array_equal(np.asarray(a["status"]), np.asarray(b["status"]))


def test_no_rule_means_no_flag(plain):
    assert not _has_flag(plain).any()
    assert np.isfinite(_arr(plain, "fe_h")).all()


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("rule, needle", [
    ({"label": "mg_fe", "when": "teff", "above": 6500.0}, "mg_fe"),
    ({"label": "fe_h", "when": "vmacro", "above": 10.0}, "vmacro"),
    ({"label": "fe_h", "when": "teff"}, "above"),
    ({"label": "fe_h", "when": "teff", "above": 6500.0, "wen": "x"}, "wen"),
])
def test_config_rejects_bad_rules(tiny_config_dict, rule, needle):
    with pytest.raises(ConfigError) as exc:
        KielnetConfig.from_dict(tiny_config_dict(reporting=[rule]))
    assert needle in str(exc.value)


def test_with_overrides_revalidates_rules(tiny_config):
    with pytest.raises(ConfigError):
        tiny_config.with_overrides(reporting=[{"label": "teff", "when": "nope", "below": 1.0}])
    ok = tiny_config.with_overrides(reporting=[{"label": "teff", "when": "logg", "below": 1.0}])
    assert ok.reporting[0].below == 1.0 and ok.reporting[0].above is None


def test_reporting_rule_needs_a_bound():
    with pytest.raises(ValidationError, match="above"):
        ReportingRule(label="fe_h", when="teff")
    assert ReportingRule(label="fe_h", when="teff", below=3000.0).below == 3000.0


def test_apogee_net_2_presets_withhold_fe_h_above_6500():
    from kielnet.config import load_config

    for name in ("apogee_net_2", "apogee_net_2_official"):
        rules = load_config(name).reporting
        assert [(r.label, r.when, r.above, r.below) for r in rules] == [("fe_h", "teff", 6500.0, None)]
