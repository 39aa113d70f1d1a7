"""``benchmarks/xp_hot_references.py``'s nested judgement of the tail-rule choice: the
stars a choice is judged on never enter it, and the halvings it uses are random splits."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from kielnet.quality.tails import salted_halves

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("xp_hot_references_bench",
                                                  ROOT / "benchmarks" / "xp_hot_references.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _stars(n: int = 3000, seed: int = 0):
    """Teff predictions with a band (6,500–8,000 K) where 30 % of the stars are hot stars
    predicted far off; elsewhere Gaussian residuals."""
    rng = np.random.default_rng(seed)
    pred = rng.uniform(4000, 12000, n)
    z = np.abs(rng.normal(size=n))
    band = (pred > 6500) & (pred < 8000)
    hot = (rng.random(n) < 0.3) & band
    z[hot] = rng.uniform(3.5, 8, hot.sum())
    hot |= pred > 10000
    return pred, z, np.ones(n, bool), hot, np.array([f"star{i}" for i in range(n)])


def test_a_choice_never_sees_the_stars_it_is_judged_on(bench):
    pred, z, usable, hot, ids = _stars()
    fit_rows = np.flatnonzero(salted_halves(ids, "t") == 0)
    halvings = [salted_halves(ids[fit_rows], f"in/{k}") for k in range(2)]
    before = bench.teff_settings(pred, z, usable, hot, fit_rows, halvings)
    judge = np.setdiff1d(np.arange(len(ids)), fit_rows)
    z2, hot2, pred2 = z.copy(), hot.copy(), pred.copy()
    z2[judge], hot2[judge], pred2[judge] = 0.0, True, 7000.0  # the other half changed entirely
    after = bench.teff_settings(pred2, z2, usable, hot2, fit_rows, halvings)
    assert after == before
    # the rule finds the band: withholding it cuts the hot stars beyond 3 sigma
    assert before["bins 150, rate 0.1"]["watched_beyond"] < 0.5 * before["none"]["watched_beyond"]
    judged = bench._judged(pred, z, usable, hot, fit_rows, judge, before["bins 150, rate 0.1"])
    assert judged["beyond"] < 0.5 * bench._judged(pred, z, usable, hot, fit_rows, judge, before["none"])["beyond"]


def test_a_split_alone_predicts_as_an_out_of_fold_star_is(bench, xp_subset):
    from kielnet.artifact import load_bundle
    from kielnet.inference.predict import predict

    bundle = load_bundle("xp-apogee-dr17")
    split = bundle.member_info[-1].split
    sub = bench.split_ensemble(bundle, split)
    assert len(sub.members) == sum(m.split == split for m in bundle.member_info) < len(bundle.members)
    assert all(m.split == split for m in sub.member_info)
    assert bundle.spread.n_members == len(bundle.members)  # the shipped bundle is left as it was
    stars = xp_subset.take(np.arange(60))
    full, alone = predict(bundle, stars), predict(sub, stars)
    # fewer members: another mean and another spread, each scored (no refusal of the ensemble size)
    assert np.isfinite(np.asarray(alone["spread_score"], float)).all()
    assert not np.allclose(np.asarray(full["teff"], float), np.asarray(alone["teff"], float), equal_nan=True)
    assert not np.allclose(np.asarray(full["spread_score"], float), np.asarray(alone["spread_score"], float))
