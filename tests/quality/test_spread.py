"""Ensemble-disagreement score (kielnet.quality.spread)."""

from __future__ import annotations

import numpy as np
import pytest

from kielnet.quality.spread import EnsembleSpread, member_spread

NAMES = ["teff", "logg", "fe_h"]


def ensemble_preds(rng, n_stars, n_members=7, spread=(0.01, 0.02, 0.05)):
    """Member predictions around a per-star truth, member scatter ``spread`` per label
    times a per-star lognormal factor (so that the reference has a spread distribution)."""
    truth = rng.normal(size=(n_stars, len(spread)))
    factor = np.exp(rng.normal(0.0, 0.3, size=(n_stars, 1)))
    noise = rng.normal(size=(n_members, n_stars, len(spread))) * np.asarray(spread) * factor
    return truth[None] + noise


def test_member_spread_is_the_sample_std_over_members():
    p = np.array([[[0.0, 1.0]], [[2.0, 1.0]]])
    np.testing.assert_allclose(member_spread(p), [[np.sqrt(2.0), 0.0]])
    with pytest.raises(ValueError, match="at least 2 members"):
        member_spread(p[:1])
    with pytest.raises(ValueError, match="n_members, n_stars, n_labels"):
        member_spread(p[0])


def test_calibration_flags_the_quantile_of_new_stars_from_the_same_population():
    rng = np.random.default_rng(0)
    sp = EnsembleSpread(quantile=0.9).fit(ensemble_preds(rng, 20_000), NAMES)
    frac = sp.flag(ensemble_preds(rng, 20_000)).mean()
    assert abs(frac - 0.10) < 0.01
    # the reference itself sits exactly at the quantile
    strict = EnsembleSpread(quantile=0.75).fit(ensemble_preds(np.random.default_rng(1), 4000), NAMES)
    assert abs(strict.flag(ensemble_preds(np.random.default_rng(1), 4000)).mean() - 0.25) < 0.002


def test_disagreeing_members_score_high_and_agreeing_ones_low():
    rng = np.random.default_rng(2)
    sp = EnsembleSpread().fit(ensemble_preds(rng, 5000), NAMES)
    wild = ensemble_preds(rng, 200, spread=(0.05, 0.1, 0.25))   # 5x the training disagreement
    tame = ensemble_preds(rng, 200, spread=(0.002, 0.004, 0.01))
    assert sp.flag(wild).mean() > 0.95
    assert sp.flag(tame).mean() < 0.01
    # score is the geometric-mean spread ratio: 5x everywhere -> about 5x the median star's score
    median_star = np.exp(-sp.threshold)
    assert np.median(sp.score(wild)) == pytest.approx(5 * median_star, rel=0.15)


def test_one_label_alone_can_raise_the_score():
    rng = np.random.default_rng(3)
    ref = ensemble_preds(rng, 5000)
    sp = EnsembleSpread().fit(ref, NAMES)
    odd = ensemble_preds(rng, 300)
    odd[:, :, 2] = odd[:, :, 2] + rng.normal(size=odd.shape[:2]) * 1.0  # only [Fe/H] disagrees (20x)
    assert sp.flag(odd).mean() > 0.9


def test_score_does_not_depend_on_the_units_of_a_label():
    rng = np.random.default_rng(4)
    ref, new = ensemble_preds(rng, 3000), ensemble_preds(rng, 100)
    a = EnsembleSpread().fit(ref, NAMES).score(new)
    scale = np.array([1000.0, 1.0, 0.01])
    b = EnsembleSpread().fit(ref * scale + 3.0, NAMES).score(new * scale + 3.0)
    np.testing.assert_allclose(a, b, rtol=1e-9)


def test_round_trip_and_bad_input():
    rng = np.random.default_rng(5)
    sp = EnsembleSpread(quantile=0.8).fit(ensemble_preds(rng, 500, n_members=4), NAMES)
    back = EnsembleSpread.from_dict(sp.to_dict())
    new = ensemble_preds(rng, 50, n_members=4)
    np.testing.assert_array_equal(back.score(new), sp.score(new))
    assert back.to_dict() == sp.to_dict()
    with pytest.raises(ValueError, match="calibrated with 4 members"):
        sp.score(new[:3])
    with pytest.raises(ValueError, match="expected"):
        sp.score(new[:, :, :2])
    with pytest.raises(ValueError, match="not an EnsembleSpread"):
        EnsembleSpread.from_dict({"format": 1, "kind": "embedding_ood"})
    with pytest.raises(RuntimeError, match="before fit"):
        EnsembleSpread().score(new)
    with pytest.raises(ValueError, match="identical"):
        EnsembleSpread().fit(np.repeat(new[:1], 3, axis=0), NAMES)
    with pytest.raises(ValueError, match="quantile"):
        EnsembleSpread(quantile=0.0)


def test_non_finite_predictions_give_nan_scores_and_are_not_calibrated_on():
    rng = np.random.default_rng(6)
    ref = ensemble_preds(rng, 1000)
    ref[0, :10, 0] = np.nan
    sp = EnsembleSpread().fit(ref, NAMES)
    assert sp.n_reference == 990
    new = ensemble_preds(rng, 5)
    new[1, 2, 1] = np.nan
    s = sp.score(new)
    assert np.isnan(s[2]) and np.isfinite(np.delete(s, 2)).all()


def test_out_of_bag_calibration_uses_only_the_unmasked_members():
    rng = np.random.default_rng(7)
    preds = ensemble_preds(rng, 2000, n_members=6)
    mask = np.zeros((2000, 6), dtype=bool)
    mask[:, :3] = True           # members 0-2 count for every star ...
    mask[:100, :] = True         # ... all six for the first 100
    mask[100:150, 1:] = False    # only member 0 for these 50: left out (fewer than 2)
    sp = EnsembleSpread().fit(preds, NAMES, member_mask=mask)
    assert sp.calibration == "out_of_bag" and sp.n_reference == 1950
    spread = np.concatenate([preds[:, :100].std(axis=0, ddof=1), preds[:3, 150:].std(axis=0, ddof=1)])
    from scipy.special import digamma

    n_used = np.r_[np.full(100, 6), np.full(1850, 3)]
    bias = 0.5 * (digamma((n_used - 1) / 2) - np.log((n_used - 1) / 2))
    np.testing.assert_allclose(sp.log_median, np.median(np.log(spread) - bias[:, None], axis=0))
    # members that saw a star agree on it artificially; out of bag, only the others count
    preds = ensemble_preds(rng, 8000, n_members=16)
    seen = preds.copy()
    seen[8:] = preds[:8].mean(axis=0)          # members 8-15 "memorised" the reference stars
    naive = EnsembleSpread().fit(seen, NAMES)
    oob = EnsembleSpread().fit(seen, NAMES, member_mask=np.repeat([[True] * 8 + [False] * 8], 8000, axis=0))
    new = ensemble_preds(rng, 8000, n_members=16)
    assert naive.flag(new).mean() > 0.3          # badly over-flags new stars
    assert 0.06 < oob.flag(new).mean() <= 0.11   # 8 members' noisier spread: a little conservative
    with pytest.raises(ValueError, match="member_mask"):
        EnsembleSpread().fit(preds, NAMES, member_mask=mask[:, :5])


def test_any_size_scores_fewer_members_comparably_in_the_mean():
    rng = np.random.default_rng(11)
    sp = EnsembleSpread(quantile=0.9).fit(ensemble_preds(rng, 20_000, n_members=8), NAMES)
    small = ensemble_preds(rng, 20_000, n_members=3)
    with pytest.raises(ValueError, match="calibrated with 8 members"):
        sp.score(small)
    s3 = sp.score(small, any_size=True)
    s8 = sp.score(ensemble_preds(rng, 20_000, n_members=8))
    # the bias of the log spread is corrected: same median score, wider spread of scores
    assert abs(np.median(np.log(s3)) - np.median(np.log(s8))) < 0.03
    assert np.std(np.log(s3)) > np.std(np.log(s8))
    with pytest.raises(ValueError, match="calibrated with 8 members"):
        sp.score(small[:1], any_size=True)


def test_log_disagreement_compares_two_members_with_eight():
    """A split's 2 members (an out-of-fold star) and all 8 (a new star) measure the same
    disagreement in the mean once the bias of the log of a sample std is removed; without
    it 2 members read ~0.6 lower in log."""
    from kielnet.quality.spread import log_disagreement

    rng = np.random.default_rng(3)
    preds = rng.normal(size=(8, 40_000, 3)) * 0.05  # true member scatter 0.05 in every label
    two, eight = log_disagreement(preds[:2]), log_disagreement(preds)
    assert abs(two.mean() - np.log(0.05)) < 0.02 and abs(eight.mean() - np.log(0.05)) < 0.01
    raw_two = np.log(member_spread(preds[:2])).mean(axis=1)
    assert np.log(0.05) - raw_two.mean() > 0.5
    assert two.std() > 2 * eight.std()  # 2 members: the same in the mean, far noisier
    bad = preds[:, :2].copy()
    bad[0, 1, 0] = np.nan
    assert np.isnan(log_disagreement(bad)[1]) and np.isfinite(log_disagreement(bad)[0])
