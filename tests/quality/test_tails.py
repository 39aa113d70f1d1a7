"""Tail regimes: a predicted-label range where too many out-of-fold stars lie beyond 3 σ
is withheld; Gaussian residuals withhold nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kielnet.quality.tails import TailRegimes

NAMES = ["teff", "logg"]


def _stars(n=6000, seed=0, impostors=0.15, lo=6500.0, hi=7500.0):
    """Gaussian z everywhere; inside [lo, hi) of predicted teff a fraction ``impostors``
    of the stars are wrong by 10 σ (the hot stars that look like F stars)."""
    rng = np.random.default_rng(seed)
    pred = np.column_stack([rng.uniform(4000.0, 9000.0, n), rng.uniform(1.0, 5.0, n)])
    z = np.abs(rng.normal(size=(n, 2)))
    inside = (pred[:, 0] >= lo) & (pred[:, 0] < hi)
    bad = inside & (rng.random(n) < impostors)
    z[bad, 0] = 10.0
    return pred, z, inside


def test_heavy_tailed_regime_is_withheld_and_nothing_else():
    pred, z, inside = _stars()
    tr = TailRegimes.fit(NAMES, pred, z, bin_stars=200, max_rate=0.10)
    assert len(tr.intervals["teff"]) == 1
    lo, hi, rate, n = tr.intervals["teff"][0]
    assert 6400 < lo < 6700 and 7300 < hi < 7600 and rate > 0.10 and n >= 200
    assert tr.intervals["logg"] == []  # Gaussian: 0.27 % beyond 3 sigma, never above 10 %
    w = tr.withheld(pred)
    assert w[:, 0][inside].mean() > 0.8 and w[:, 0][~inside].mean() < 0.05 and not w[:, 1].any()
    rep = tr.report["labels"]["teff"]
    assert rep["beyond_tail_kept"] < rep["beyond_tail_all"] and rep["withheld_fraction"] > 0.1
    assert "teff predicted in [" in tr.describe({"teff": "K"}) and " K " in tr.describe({"teff": "K"})


def test_no_degeneracy_no_interval_and_a_lower_rate_catches_milder_tails():
    pred, z, _ = _stars(impostors=0.0)
    assert TailRegimes.fit(NAMES, pred, z, bin_stars=200, max_rate=0.10).intervals == {"teff": [], "logg": []}
    pred, z, inside = _stars(impostors=0.06, seed=3)
    assert TailRegimes.fit(NAMES, pred, z, bin_stars=200, max_rate=0.10).intervals["teff"] == []
    assert TailRegimes.fit(NAMES, pred, z, bin_stars=400, max_rate=0.03).intervals["teff"]


def test_edges_adjacent_bins_and_missing_references():
    rng = np.random.default_rng(1)
    n = 3000
    pred = np.column_stack([np.linspace(0.0, 1.0, n), rng.uniform(size=n)])
    z = np.abs(rng.normal(size=(n, 2))) * 0.5
    z[pred[:, 0] > 0.8, 0] = 5.0            # the top fifth: wrong by 5 sigma
    z[::3, 1] = np.nan                       # no reference for a third of logg
    tr = TailRegimes.fit(NAMES, pred, z, bin_stars=100, max_rate=0.1)
    (lo, hi, rate, n_s), = tr.intervals["teff"]  # adjacent bins merged into one interval
    assert lo == pytest.approx(0.8, abs=0.01) and hi == np.inf and rate == pytest.approx(1.0, abs=0.05)
    assert n_s == pytest.approx(600, abs=40)
    assert tr.withheld(np.array([[5.0, 0.5], [np.nan, 0.5]]))[:, 0].tolist() == [True, False]
    assert tr.report["labels"]["logg"]["n_reference"] == n - len(range(0, n, 3))
    small = TailRegimes.fit(NAMES, pred[:150], z[:150], bin_stars=100)
    assert small.intervals == {"teff": [], "logg": []} and small.report["labels"]["teff"]["n_bins"] == 1


def test_state_round_trip_and_refusals():
    pred, z, _ = _stars()
    tr = TailRegimes.fit(NAMES, pred, z, bin_stars=200)
    back = TailRegimes.from_dict(json.loads(json.dumps(tr.to_dict(), allow_nan=False)))
    assert back.intervals == tr.intervals and back.max_rate == tr.max_rate and back.bin_stars == tr.bin_stars
    np.testing.assert_array_equal(back.withheld(pred), tr.withheld(pred))
    bad = tr.to_dict()
    bad["intervals"]["teff"] = [[7000.0, 6000.0, 0.2, 10]]
    with pytest.raises(ValueError, match="empty"):
        TailRegimes.from_dict(bad)
    with pytest.raises(ValueError, match="not a tail-regime state"):
        TailRegimes.from_dict({**tr.to_dict(), "kind": "neighbours"})
    with pytest.raises(ValueError, match="not in"):
        TailRegimes.from_dict({**tr.to_dict(), "intervals": {"fe_h": []}})
    with pytest.raises(ValueError, match="must both be"):
        TailRegimes.fit(NAMES, pred, z[:, :1])


def test_cross_fitted_rule_never_sees_the_stars_it_judges():
    from kielnet.quality.tails import cross_fitted_withheld

    pred, z, inside = _stars(n=4000, impostors=0.0)
    groups = np.arange(len(pred)) % 2
    z[(groups == 0) & inside, 0] = 10.0      # only group 0's stars are wrong in the regime
    w = cross_fitted_withheld(NAMES, pred, z, groups, bin_stars=200, max_rate=0.10)
    # group 1 is judged by the rule group 0's stars fitted, and the other way round
    assert w[(groups == 1) & inside, 0].mean() > 0.8
    assert not w[groups == 0, 0].any() and not w[:, 1].any()
    with pytest.raises(ValueError, match="two groups"):
        cross_fitted_withheld(NAMES, pred, z, np.zeros(len(pred), int))
    with pytest.raises(ValueError, match="one group per star"):
        cross_fitted_withheld(NAMES, pred, z, groups[:-1])


def test_cross_fitting_does_not_reward_unlucky_bins():
    """On Gaussian residuals a rule with small bins and a low rate finds bins above it by
    chance; judged in sample it looks like a gain, cross-fitted it is not."""
    from kielnet.quality.tails import cross_fitted_withheld

    pred, z, _ = _stars(n=8000, impostors=0.0, seed=5)
    in_sample = TailRegimes.fit(NAMES, pred, z, bin_stars=40, max_rate=0.02).withheld(pred)
    assert in_sample[:, 0].any()
    gain_in = np.mean(z[:, 0] > 3) - np.mean(z[~in_sample[:, 0], 0] > 3)
    w = cross_fitted_withheld(NAMES, pred, z, np.arange(len(pred)) % 2, bin_stars=40, max_rate=0.02)
    gain_cross = np.mean(z[:, 0] > 3) - np.mean(z[~w[:, 0], 0] > 3)
    assert gain_in > 0.001 and gain_cross < gain_in / 2


def test_choose_setting_keeps_most_within_budget():
    from kielnet.quality.tails import choose_setting

    res = {"none": {"watched_beyond": 0.12, "kept": 1.0}, "a": {"watched_beyond": 0.045, "kept": 0.96},
           "b": {"watched_beyond": 0.03, "kept": 0.90}, "c": {"watched_beyond": 0.049, "kept": 0.97}}
    assert choose_setting(res, budget=0.05) == "c"
    assert choose_setting(res, budget=0.04) == "b"
    assert choose_setting(res, budget=0.01) == "b"  # none within: the smallest tail
    with pytest.raises(ValueError):
        choose_setting({}, budget=0.05)


def test_a_label_may_have_its_own_rate():
    pred, z, inside = _stars(impostors=0.06, seed=3)
    z[:, 1] = z[:, 0]                          # logg fails where teff does
    tr = TailRegimes.fit(NAMES, pred, z, bin_stars=400, max_rate=0.10, label_max_rate={"teff": 0.03})
    assert tr.intervals["teff"] and tr.intervals["logg"] == []
    assert tr.rate_of("teff") == 0.03 and tr.rate_of("logg") == 0.10
    assert tr.report["labels"]["teff"]["max_rate"] == 0.03
    assert "10% (teff 3%)" in tr.describe()
    back = TailRegimes.from_dict(json.loads(json.dumps(tr.to_dict(), allow_nan=False)))
    assert back.label_max_rate == {"teff": 0.03} and back.intervals == tr.intervals
    with pytest.raises(ValueError, match="not in"):
        TailRegimes.fit(NAMES, pred, z, label_max_rate={"fe_h": 0.05})
    with pytest.raises(ValueError, match="every label"):
        TailRegimes.fit(NAMES, pred, z, label_max_rate={"teff": 0.0})


def test_salted_halves_are_repeatable_balanced_and_independent():
    """The same id and salt give the same half; halves are about even; two salts, and a
    salt and crc32(id) % 2, agree on about half the stars (independent halvings)."""
    import zlib

    from kielnet.quality.tails import salted_halves

    ids = [f"2M{i:08d}+0000000" for i in range(4000)]
    a, b = salted_halves(ids, "full/0"), salted_halves(ids, "full/1")
    np.testing.assert_array_equal(a, salted_halves(ids, "full/0"))
    assert set(np.unique(a)) == {0, 1} and abs(a.mean() - 0.5) < 0.03
    crc = np.array([zlib.crc32(i.encode()) % 2 for i in ids])
    for other in (b, crc):
        assert abs(np.mean(a == other) - 0.5) < 0.04
