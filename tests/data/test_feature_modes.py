"""Feature modes of the Preprocessor: invalid_above placeholders, sentinel missing
values, fixed feature scaling, and the two bad-pixel repairs ('zero', 'interpolate')."""

from __future__ import annotations

import numpy as np
import pytest

from kielnet.config import load_config
from kielnet.data.preprocess import Preprocessor
from kielnet.data.startable import StarTable

PLACEHOLDER = 99.999
#: the global placeholder / far-outside rule off, to test a feature option alone
NO_CHECKS = {"placeholders": [], "span_margin": 1e9}


def _features(**g_options):
    """Features of the tiny config with options added to 'g' (a column feature)."""
    return [
        {"name": "g", "columns": ["g"], **g_options},
        {"name": "bp_rp", "kind": "difference", "columns": ["bp", "rp"]},
        {"name": "g_rp", "kind": "difference", "columns": ["g", "rp"]},
        {"name": "j_k", "kind": "difference", "columns": ["j", "k"]},
    ]


@pytest.fixture
def table(make_table):
    return make_table(n=60, n_pix=32, seed=3)


def _with_g(table: StarTable, rows, value) -> StarTable:
    out = table.take(np.arange(len(table)))
    g = out.scalars["g"].copy()
    g[rows] = value
    out.scalars["g"] = g
    return out


# ------------------------------------------------------------------ invalid_above
def test_invalid_above_turns_placeholders_into_missing(tiny_config_factory, table):
    cfg = tiny_config_factory(features=_features(invalid_above=98.0), checks=NO_CHECKS)
    pre = Preprocessor(cfg).fit(table)
    bad = _with_g(table, [2, 5], PLACEHOLDER)
    raw = pre.raw_features(bad)
    assert np.isnan(raw[[2, 5], 0]).all()
    # invalid_above is per feature: g_rp (no threshold) still uses the placeholder
    assert np.isfinite(raw[:, 1:]).all()
    assert np.isfinite(np.delete(raw, [2, 5], axis=0)).all()
    prep = pre.transform(bad, with_labels=False)
    expect = np.zeros((len(bad), 4), dtype=bool)
    expect[[2, 5], 0] = True
    np.testing.assert_array_equal(prep.missing_features, expect)
    # mean imputation (no sentinel): scaled value 0, missing indicator 1
    phot = prep.branches["phot"]
    assert (phot[[2, 5], 0] == 0.0).all() and (phot[[2, 5], 4] == 1.0).all()
    assert (np.delete(phot[:, 4], [2, 5]) == 0.0).all()


def test_invalid_above_on_a_difference_applies_to_its_raw_columns(tiny_config_factory, table):
    feats = _features()
    feats[2] = {"name": "g_rp", "kind": "difference", "columns": ["g", "rp"], "invalid_above": 98.0}
    pre = Preprocessor(tiny_config_factory(features=feats, checks=NO_CHECKS)).fit(table)
    bad = _with_g(table, [3], PLACEHOLDER)
    raw = pre.raw_features(bad)
    # the difference itself (~ 99.999 - rp ~ 90) is below 98, yet it is missing
    assert PLACEHOLDER - bad.scalars["rp"][3] < 98.0
    assert np.isnan(raw[3, 2]) and np.isfinite(raw[3, 0])
    prep = pre.transform(bad, with_labels=False)
    assert prep.missing_features[3].tolist() == [False, False, True, False]


def test_without_any_check_the_placeholder_is_used_as_a_value(tiny_config_factory, table):
    pre = Preprocessor(tiny_config_factory(checks=NO_CHECKS)).fit(table)
    prep = pre.transform(_with_g(table, [2], PLACEHOLDER), with_labels=False)
    assert not prep.missing_features.any()
    sc = pre.feature_scalers["g"]
    assert prep.branches["phot"][2, 0] == pytest.approx((PLACEHOLDER - sc.centre) / sc.scale, rel=1e-5)


@pytest.mark.parametrize("value", [PLACEHOLDER, 99.0, -999.0, -9999.0, np.float32(99.999)])
def test_survey_placeholders_are_missing_by_default(tiny_config, table, value):
    pre = Preprocessor(tiny_config).fit(table)
    prep = pre.transform(_with_g(table, [2], value), with_labels=False)
    # g feeds the features g and g_rp: both missing for that star, nothing else
    assert prep.missing_features[2].tolist() == [True, False, True, False]
    assert prep.missing_features.sum() == 2


def test_values_far_outside_the_training_range_are_missing(tiny_config, table):
    pre = Preprocessor(tiny_config).fit(table)
    lo, hi = pre.column_ranges.ranges["g"]
    span = max(hi - lo, 1.0)
    near = hi + 1.5 * span     # extrapolation, but within the margin: a value (flagged downstream)
    far = hi + 2.5 * span      # beyond the margin: missing
    prep = pre.transform(_with_g(table, [1, 2], [near, far]), with_labels=False)
    assert not prep.missing_features[1].any() and prep.missing_features[2, 0]
    # the ranges travel with the fitted state
    again = Preprocessor.from_dict(pre.config, pre.to_dict())
    np.testing.assert_array_equal(again.transform(_with_g(table, [1, 2], [near, far]),
                                                  with_labels=False).missing_features, prep.missing_features)


def test_invalid_above_placeholders_do_not_enter_the_fitted_statistics(tiny_config_factory, table):
    cfg = tiny_config_factory(features=_features(invalid_above=98.0), checks=NO_CHECKS)
    train = _with_g(table, [0, 1, 2], PLACEHOLDER)
    pre = Preprocessor(cfg).fit(train)
    good = np.delete(table.scalars["g"], [0, 1, 2])
    assert pre.feature_scalers["g"].centre == pytest.approx(good.mean(), rel=1e-12)
    assert pre.feature_scalers["g"].scale == pytest.approx(good.std(), rel=1e-12)


# ------------------------------------------------------------------ missing_value (sentinel)
def test_missing_value_sentinel_replaces_mean_imputation(tiny_config_factory, table):
    sentinel = 21.40844
    cfg = tiny_config_factory(features=_features(invalid_above=98.0, missing_value=sentinel), checks=NO_CHECKS)
    pre = Preprocessor(cfg).fit(table)
    sc = pre.feature_scalers["g"]
    bad = _with_g(table, [1], PLACEHOLDER)
    bad = _with_g(bad, [4], np.nan)
    prep = pre.transform(bad, with_labels=False)
    expect = (sentinel - sc.centre) / sc.scale
    assert abs(expect) > 1.0  # distinguishable from the mean imputation (0)
    np.testing.assert_allclose(prep.branches["phot"][[1, 4], 0], expect, rtol=1e-6)
    # still reported as missing (flag + indicator)
    assert prep.missing_features[[1, 4], 0].all()
    assert (prep.branches["phot"][[1, 4], 4] == 1.0).all()
    # other stars are scaled normally
    np.testing.assert_allclose(prep.branches["phot"][0, 0], (table.scalars["g"][0] - sc.centre) / sc.scale,
                               rtol=1e-5)


# ------------------------------------------------------------------ fixed_scaling
def test_fixed_feature_scaling_is_used_instead_of_fitted_stats(tiny_config_factory, table):
    fitted = Preprocessor(tiny_config_factory()).fit(table)
    cfg = tiny_config_factory(features=_features(fixed_scaling=[10.0, 4.0]))
    pre = Preprocessor(cfg).fit(table)
    sc = pre.feature_scalers["g"]
    assert (sc.centre, sc.scale) == (10.0, 4.0)
    assert (fitted.feature_scalers["g"].centre, fitted.feature_scalers["g"].scale) != (10.0, 4.0)
    # other features keep their fitted statistics
    assert pre.feature_scalers["bp_rp"].centre == pytest.approx(fitted.feature_scalers["bp_rp"].centre)
    prep = pre.transform(table, with_labels=False)
    np.testing.assert_allclose(prep.branches["phot"][:, 0], (table.scalars["g"] - 10.0) / 4.0, rtol=1e-5)
    # and the fixed scaling survives serialisation
    again = Preprocessor.from_dict(cfg, pre.to_dict())
    assert (again.feature_scalers["g"].centre, again.feature_scalers["g"].scale) == (10.0, 4.0)


def test_official_preset_sentinels_and_scaling():
    """apogee_net_2_official: placeholder 99.999 -> sentinel, scaled with the fixed (mean, std)."""
    cfg = load_config("apogee_net_2_official")
    n, n_pix = 4, 8575
    rng = np.random.default_rng(0)
    cols = ["parallax", "g", "bp", "rp", "j", "h", "k"]
    scalars = {c: rng.uniform(8.0, 14.0, n) for c in cols}
    scalars["g"][1] = PLACEHOLDER
    scalars["parallax"][2] = np.nan
    table = StarTable(ids=[f"s{i}" for i in range(n)], flux=1.0 + 0.01 * rng.standard_normal((n, n_pix)),
                      scalars=scalars,
                      labels={"teff": np.full(n, 5000.0), "logg": np.full(n, 4.0), "fe_h": np.zeros(n)})
    pre = Preprocessor(cfg).fit(table)
    prep = pre.transform(table, with_labels=False)
    meta = prep.branches["metadata"]
    assert meta.shape == (n, 7)  # no missing indicators
    feats = {f.name: f for f in cfg.features}
    for row, name in ((1, "g"), (2, "parallax")):
        f = feats[name]
        centre, scale = f.fixed_scaling
        assert meta[row, cols.index(name)] == pytest.approx((f.missing_value - centre) / scale, rel=1e-6)
        assert prep.missing_features[row, cols.index(name)]
    assert prep.missing_features.sum() == 2
    centre, scale = feats["j"].fixed_scaling
    np.testing.assert_allclose(meta[:, cols.index("j")], (scalars["j"] - centre) / scale, rtol=1e-5)


# ------------------------------------------------------------------ bad_pixels
def _flux_with_gaps(n_pix=20):
    x = np.arange(n_pix, dtype=float)
    flux = np.stack([1.0 + 0.1 * x, 2.0 + 0.05 * x])
    flux[0, 5] = np.nan
    flux[0, 6] = np.inf
    flux[1, 10] = np.nan
    return flux


@pytest.mark.parametrize("mode", ["zero", "interpolate"])
def test_bad_pixels_modes(tiny_config_factory, make_table, mode):
    n_pix = 20
    cfg = tiny_config_factory(spectrum={"normalise": "none", "log": False, "standardise": False,
                                        "max_bad_fraction": 0.2, "bad_pixels": mode})
    pre = Preprocessor(cfg).fit(make_table(n=30, n_pix=n_pix, seed=4))
    t = make_table(n=2, n_pix=n_pix, seed=5)
    t.flux = _flux_with_gaps(n_pix).astype(np.float32)
    prep = pre.transform(t, with_labels=False)
    x = np.arange(n_pix, dtype=float)
    clean = np.stack([1.0 + 0.1 * x, 2.0 + 0.05 * x])
    if mode == "zero":
        expect = clean.copy()
        expect[0, [5, 6]] = 0.0
        expect[1, 10] = 0.0
    else:
        expect = clean  # linear spectra: interpolation recovers them exactly
    np.testing.assert_allclose(prep.spectrum, expect, rtol=1e-6, atol=1e-6)
    assert prep.n_bad_pixels.tolist() == [2, 1]
    assert not prep.bad_spectrum.any()


def test_bad_pixels_zero_with_log_gives_the_log_floor(tiny_config_factory, make_table):
    cfg = tiny_config_factory(spectrum={"normalise": "none", "log": True, "standardise": False,
                                        "bad_pixels": "zero"})
    pre = Preprocessor(cfg).fit(make_table(n=30, n_pix=20, seed=4))
    t = make_table(n=2, n_pix=20, seed=5)
    t.flux = _flux_with_gaps(20).astype(np.float32)
    prep = pre.transform(t, with_labels=False)
    assert prep.spectrum[0, 5] == pytest.approx(-4.0) and prep.spectrum[1, 10] == pytest.approx(-4.0)
    assert np.isfinite(prep.spectrum).all()


def test_official_preset_zeroes_and_default_preset_interpolates():
    assert load_config("apogee_net_2_official").spectrum.bad_pixels == "zero"
    assert load_config("apogee_net_2").spectrum.bad_pixels == "interpolate"
    assert all(f.invalid_above == 98.0 for f in load_config("apogee_net_2").features if f.name != "parallax")
