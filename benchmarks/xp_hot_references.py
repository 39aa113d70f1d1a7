"""Hot stars and their APOGEE references outside the test fifth (issue 20: "hot stars ...
should come out ok only when they are right"): ``python benchmarks/xp_hot_references.py``
writes ``benchmarks/results/xp_hot_references.json``.

No test star is read. The training part of the XP library (``crc32(apogee_id) % 5 != 0``)
is split by the training-label cleaning the shipped model used
(``benchmarks/configs/xp_label_quality.yaml``: APOGEE Teff error < 250 K, log g error
< 0.08 dex, XP S/N > 15) into the stars the members trained or were validated on and the
stars the cleaning dropped. The dropped ones were never seen by any member and are not in
the test fifth, so the shipped ``xp-apogee-dr17`` predicts them as new stars. For them:
the usable Teff rows (reported, no flag but ``label_not_reported``) and the fraction lying
beyond 3σ of APOGEE's Teff, split by APOGEE Teff > 10,000 K and by APOGEE's Teff error.
Beside it: how many hot stars the cleaning kept and dropped, by Teff error.

``dropped_hot_stars_by_members``: the same dropped stars predicted by all members (as the
catalogue predicts a new star) and by each split's members alone (as the out-of-fold stars
are predicted): whether the number of members averaged changes which hot stars are usable.

``out_of_fold`` (when the first seed's work directory ``benchmarks/.work/xp_library`` with its
``out_of_fold.parquet`` is present, e.g. rebuilt by ``benchmarks/workdir_from_bundle.py``): the
usable hot stars beyond 3σ in Teff among the shipped bundle's out-of-fold stars, with the
tail rule of Teff alone at several rates, each cross-fitted on the stars' two halves
(``crc32(id) % 2``) as ``benchmarks/xp_library.py`` chooses the rate: the fraction of Teff
withheld and, of the rest, the fractions beyond 3σ overall and among the hot stars.

``out_of_fold_gap_checks`` (the shipped bundle's own out-of-fold predictions, rebuilt from
its members as ``benchmarks/xp_tail_sources.py`` does): whether the catalogue's
``ensemble_disagreement`` flag, which the rates above leave out, or the number of members
averaged (two per split out of fold, eight for a new star: the Teff tail interval was
fitted on two-member means) makes the test fifth's hot tail larger than the out-of-fold one.

``nested_selection`` (the same out-of-fold stars): how far the tail-rule choice of
``benchmarks/xp_library.py`` can be trusted. The whole choice is made on one random half of
the stars and judged on the other, over many halvings; the choice's own estimate against the
judged one shows how optimistic picking the best of the grid on the same stars is, for one
halving (the protocol until the neighbour fix) and for the mean over several (the shipped
protocol, which ``benchmarks/xp_library.py`` applies to all the out-of-fold stars over
``TAIL_HALVINGS`` halvings). Beside it, every setting on all the out-of-fold stars, over
as many halvings, with its standard error.

The question: the benchmark's ``hot_ok_beyond_3sigma`` is scored on every test star,
whatever APOGEE's Teff error, while the tail regimes and σ were fitted on out-of-fold
stars of the cleaned training set. Hot stars have far larger APOGEE Teff errors than the
rest (the cleaning drops about 30 % of them); how do the dropped ones fare as new stars?
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, git_commit, git_dirty, provenance, write_result  # noqa: E402
from xp_library import HOT_K, TAIL_HALVINGS, tail_halvings  # noqa: E402

BUNDLE = "xp-apogee-dr17"
CLEANING = ROOT / "benchmarks" / "configs" / "xp_label_quality.yaml"
TEFF_ERR_CUT = 250.0


def _rates(z: np.ndarray, usable: np.ndarray, mask: np.ndarray) -> dict:
    keep = mask & usable & np.isfinite(z)
    n_bad = int(np.sum(z[keep] > 3))
    return {"n": int(mask.sum()), "n_usable": int(keep.sum()),
            "usable_fraction": float(keep.sum() / mask.sum()) if mask.any() else None,
            "n_beyond_3sigma": n_bad, "beyond_3sigma": n_bad / int(keep.sum()) if keep.any() else None}


WORKDIR = ROOT / "benchmarks" / ".work" / "xp_library"
TEFF_RATES = (None, 0.10, 0.07, 0.05)


def _halves(ids) -> np.ndarray:
    """``crc32(id) % 2`` per star: the two halves the tail rules are cross-fitted on."""
    import zlib

    return np.array([zlib.crc32(str(i).encode()) % 2 for i in ids])


def cross_fitted_teff_rule(pred: np.ndarray, z: np.ndarray, half: np.ndarray, fit_on: np.ndarray, bins: int,
                           rate: float | None) -> np.ndarray:
    """Per star, whether a Teff-only tail rule of ``rate`` fitted on the other half's
    ``fit_on`` stars withholds its Teff (``pred``, ``z``: Teff and |residual|/σ); none
    withheld when ``rate`` is None."""
    from kielnet.quality.tails import TailRegimes

    w = np.zeros(len(z), bool)
    if rate is not None:
        for h in (0, 1):
            m = (half == h) & fit_on
            fit = TailRegimes.fit(["teff"], pred[m][:, None], z[m][:, None], bin_stars=bins, max_rate=rate, tail=3.0)
            w[half != h] = fit.withheld(pred[half != h][:, None])[:, 0]
    return w


def out_of_fold(bundle) -> dict | None:
    """Teff-only tail rules at :data:`TEFF_RATES` on the out-of-fold stars (module docstring)."""
    from kielnet.training.calibrate import oof_sigma, reported_z
    from kielnet.training.out_of_fold import load_out_of_fold

    path = WORKDIR / "out_of_fold.parquet"
    if not path.is_file() or bundle.sigma_model is None:
        return None
    oof, ids = load_out_of_fold(path)
    nb = bundle.neighbours
    z, a = reported_z(bundle.preprocessor, oof, oof_sigma(bundle.sigma_model, bundle.running_dispersion, oof), nb)
    j = bundle.config.label_names.index("teff")
    fin = np.isfinite(z[:, j]) & (True if a is None else ~nb.withheld(a)[:, j])
    half = _halves(ids)
    hot = oof.truth[:, j] > HOT_K
    bins = max(bundle.config.quality.tail_regimes.bin_stars // 2, 20)
    rates = {}
    for rate in TEFF_RATES:
        w = cross_fitted_teff_rule(oof.pred[:, j], z[:, j], half, np.ones(len(z), bool), bins, rate)
        keep = fin & ~w
        kh = keep & hot
        rates["none" if rate is None else f"{rate:g}"] = {
            "teff_withheld_fraction": float(w[fin].mean()), "beyond_3sigma_kept": float(np.mean(z[keep, j] > 3)),
            "n_hot_kept": int(kh.sum()), "n_hot_beyond_3sigma": int(np.sum(z[kh, j] > 3)),
            "hot_beyond_3sigma_kept": float(np.mean(z[kh, j] > 3)) if kh.any() else None}
    return {"stars": int(len(z)), "hot": int(hot.sum()), "workdir": str(WORKDIR.relative_to(ROOT)),
            "method": f"Teff alone, cross-fitted on the two halves (crc32(id) % 2), bins of {bins} stars per half; "
                      "usable = Teff reported with label support (likely_outlier not applied)",
            "rates": rates}


def out_of_fold_gap_checks(bundle, s: dict) -> dict:
    """Two causes the gap between the test fifth's hot tail and the out-of-fold one could
    have, checked out of fold (module docstring): the ``ensemble_disagreement`` flag, which
    the catalogue applies and the out-of-fold rates above do not, and the number of members
    averaged (two per split out of fold, all eight for a new star). ``s``: the bundle's
    out-of-fold stars (:func:`xp_tail_sources.out_of_fold_stars`)."""
    j = s["names"].index("teff")
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(s["pred"][:, j] - s["truth"][:, j]) / s["sigma"][:, j]
    usable = np.isfinite(z) & ~s["withheld"][:, j] & ~s["outlier"]
    hot = s["truth"][:, j] > HOT_K
    half = _halves(s["ids"])
    bins = max(bundle.config.quality.tail_regimes.bin_stars // 2, 20)
    ed = s["spread_score"] > 1.0 if s["spread_score"] is not None else np.zeros(len(z), bool)
    flag_rows = {}
    for rate in (None, bundle.config.quality.tail_regimes.rate_of("teff")):
        w = cross_fitted_teff_rule(s["pred"][:, j], z, half, usable, bins, rate)
        for applied in (False, True):
            keep = usable & ~w & (~ed if applied else True)
            kh = keep & hot
            flag_rows[f"rate {'none' if rate is None else f'{rate:g}'}, ensemble_disagreement "
                      f"{'applied' if applied else 'not applied'}"] = {
                "n_hot_kept": int(kh.sum()), "n_hot_beyond_3sigma": int(np.sum(z[kh] > 3)),
                "hot_beyond_3sigma_kept": float(np.mean(z[kh] > 3)) if kh.any() else None,
                "beyond_3sigma_kept": float(np.mean(z[keep] > 3))}
        kh = usable & ~w & hot
        wrong, right = kh & (z > 3), kh & (z <= 3)
        flag_rows[f"rate {'none' if rate is None else f'{rate:g}'}, hot stars flagged"] = {
            "beyond_3sigma": {"n": int(wrong.sum()), "flagged": float(ed[wrong].mean()) if wrong.any() else None},
            "within_3sigma": {"n": int(right.sum()), "flagged": float(ed[right].mean()) if right.any() else None}}
    members = s["member_pred"][:, :, j]
    mean = np.nanmean(members, axis=0)
    confused = hot & (mean < 9_000.0)
    tails = bundle.tail_regimes
    window = tails.intervals.get("teff", []) if tails is not None else []

    def in_window(t: np.ndarray) -> float:
        if tails is None:
            return 0.0
        p = np.full((len(t), len(tails.label_names)), np.nan)  # NaN: never withheld
        p[:, tails.label_names.index("teff")] = t
        return float(tails.withheld(p).any(axis=1).mean())

    size = {"definition": "hot stars whose split members' mean Teff is below 9,000 K ('confused'); the fraction "
                          "of them inside the bundle's Teff tail-regime intervals and their median predicted Teff, "
                          "from each member alone and from the members' mean",
            "teff_intervals": [[float(lo), float(hi)] for lo, hi, _, _ in window], "n_confused": int(confused.sum()),
            "members": [{"in_intervals": in_window(members[k, confused]),
                         "median_teff": float(np.median(members[k, confused]))} for k in range(len(members))],
            "mean_of_members": {"in_intervals": in_window(mean[confused]),
                                "median_teff": float(np.median(mean[confused]))}}
    return {"stars": int(len(z)), "hot": int(hot.sum()),
            "method": "the shipped bundle's members of each split predict that split's held-out stars; sigma as "
                      "predict gives it; usable = Teff reported with label support and not likely_outlier; the "
                      f"Teff-only tail rule cross-fitted on the halves crc32(id) % 2, bins of {bins}; "
                      "ensemble_disagreement = the split members' spread score > 1; 'hot stars flagged': of the "
                      "usable hot stars a rule keeps, the fractions ensemble_disagreement flags among those beyond "
                      "and within 3 sigma",
            "ensemble_disagreement": flag_rows, "ensemble_size": size}


def split_ensemble(bundle, split: int):
    """The bundle with only the members of ``split`` (two for the XP preset): a new star
    predicted as an out-of-fold star is. Its ``ensemble_disagreement`` scores that many
    members with their log-spread bias, as the out-of-bag calibration does
    (:meth:`kielnet.quality.spread.EnsembleSpread.score` with ``any_size``)."""
    import copy
    import dataclasses

    idx = [i for i, m in enumerate(bundle.member_info) if m.split == split]
    spread = copy.deepcopy(bundle.spread)
    if spread is not None:
        spread.n_members = len(idx)
    return dataclasses.replace(bundle, members=[bundle.members[i] for i in idx],
                               member_info=[bundle.member_info[i] for i in idx], spread=spread)


def members_per_prediction(bundle, dropped, teff: np.ndarray, cat) -> dict:
    """The stars the training-label cleaning dropped (never seen by a member) predicted by
    all members, as the catalogue predicts a new star, and by each split's members alone,
    as the out-of-fold stars are: the hot stars (APOGEE Teff > 10,000 K) usable and beyond
    3σ, and the fraction ``ensemble_disagreement`` flags. The same stars and references
    both ways: only the number of members averaged differs. ``cat``: the whole bundle's
    catalogue of ``dropped``, already made."""
    from xp_library import quiet_predict, teff_tail_counts

    def counts(b, c) -> dict:
        return {"members": len(b.members), **teff_tail_counts(c, teff)}

    splits = [split_ensemble(bundle, k) for k in sorted({m.split for m in bundle.member_info})]
    return {"stars": int(len(teff)), "hot": int((teff > HOT_K).sum()),
            "all_members": counts(bundle, cat),
            "each_split_alone": {str(b.member_info[0].split): counts(b, quiet_predict(b, dropped)) for b in splits},
            "definition": "usable = Teff reported and no flag but label_not_reported; beyond 3 sigma of APOGEE's "
                          "Teff; the same dropped training-part stars (never trained on) predicted by all members "
                          "and by each split's members alone"}


#: outer random halvings of the nested judgement; inner halvings of the repeated procedure;
#: random halvings behind the shipped setting's estimate on all out-of-fold stars
NESTED_OUTER, NESTED_INNER, FULL_HALVINGS = 20, 8, TAIL_HALVINGS


def teff_settings(pred: np.ndarray, z: np.ndarray, usable: np.ndarray, hot: np.ndarray, rows: np.ndarray,
                  halvings: list[np.ndarray]) -> dict:
    """The Teff tail rule at each setting of ``benchmarks/xp_library.py``'s grid, judged on
    the stars ``rows`` alone, cross-fitted on each of ``halvings`` (a group per row) as that
    benchmark chooses the setting: per setting, the mean over the halvings of the kept hot
    stars' fraction beyond 3σ (``watched_beyond``), its binomial standard error, the mean
    number of hot stars kept and the fraction of Teff kept. ``pred``, ``z``: Teff (K) and
    |residual| / σ of every star; ``usable``, ``hot``: bool per star. Bins span the same
    share of the stars as in a fit on all of them."""
    from xp_library import TAIL_BINS, TAIL_RATES

    from kielnet.quality.tails import cross_fitted_withheld

    share = len(rows) / len(pred)
    p, zr, hr = pred[rows], z[rows], hot[rows]
    fin = np.isfinite(zr) & usable[rows]
    out: dict = {}
    for bins in TAIL_BINS:
        for rate in TAIL_RATES:
            key = "none" if rate is None else f"bins {bins}, rate {rate:g}"
            if key in out:
                continue
            beyond, n_hot, kept = [], [], []
            for groups in halvings:
                w = (np.zeros(len(rows), bool) if rate is None else
                     cross_fitted_withheld(["teff"], p[:, None], zr[:, None], groups,
                                           bin_stars=max(int(round(bins * share)), 20), max_rate=rate)[:, 0])
                kh = fin & ~w & hr
                beyond.append(float(np.mean(zr[kh] > 3)) if kh.any() else np.nan)
                n_hot.append(int(kh.sum()))
                kept.append(1.0 - float(w[fin].mean()))
            f, n = float(np.nanmean(beyond)), float(np.mean(n_hot))
            out[key] = {"bin_stars": bins, "rate": rate, "watched_beyond": f,
                        "standard_error": float(np.sqrt(f * (1 - f) / n)) if n else None,
                        "n_hot_kept": n, "kept": float(np.mean(kept))}
    return out


def _judged(pred: np.ndarray, z: np.ndarray, usable: np.ndarray, hot: np.ndarray, fit_rows: np.ndarray,
            judge_rows: np.ndarray, setting: dict) -> dict:
    """``setting`` fitted on the stars ``fit_rows`` (bins of the same share of the stars as
    in a full fit) and applied to ``judge_rows``: the kept hot stars beyond 3σ there."""
    from kielnet.quality.tails import TailRegimes

    w = np.zeros(len(judge_rows), bool)
    if setting["rate"] is not None:
        bins = max(int(round(setting["bin_stars"] * len(fit_rows) / len(pred))), 20)
        rule = TailRegimes.fit(["teff"], pred[fit_rows][:, None], z[fit_rows][:, None], bin_stars=bins,
                               max_rate=setting["rate"])
        w = rule.withheld(pred[judge_rows][:, None])[:, 0]
    fin = np.isfinite(z[judge_rows]) & usable[judge_rows]
    kh = fin & ~w & hot[judge_rows]
    return {"beyond": float(np.mean(z[judge_rows][kh] > 3)) if kh.any() else np.nan, "n_hot": int(kh.sum()),
            "kept": 1.0 - float(w[fin].mean())}


def nested_selection(bundle, s: dict) -> dict:
    """How far the tail-rule choice of ``benchmarks/xp_library.py`` can be trusted, out of
    fold (no test star): the whole choice (each setting cross-fitted, then
    :func:`kielnet.quality.tails.choose_setting` with the hot-star budget) is made on one
    random half of the out-of-fold stars, the chosen setting fitted there and judged on the
    other half; :data:`NESTED_OUTER` random halvings, both ways. A choice's own estimate
    (``inner``) against the judged one (``outer``) measures how optimistic picking the best of
    the grid on the same stars is. Two procedures: one halving by ``crc32(id) % 2`` (the
    protocol before), and the mean over :data:`NESTED_INNER` random halvings (as shipped, on
    half the stars). Beside it: the
    shipped setting and every other one on all out-of-fold stars over :data:`FULL_HALVINGS`
    random halvings. ``s``: :func:`xp_tail_sources.out_of_fold_stars`."""
    from xp_library import HOT_BUDGET

    from kielnet.quality.tails import choose_setting, salted_halves

    j = s["names"].index("teff")
    pred, truth = s["pred"][:, j], s["truth"][:, j]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(pred - truth) / s["sigma"][:, j]
    usable = ~s["withheld"][:, j] & ~s["outlier"]
    hot = truth > HOT_K
    ids = np.asarray(s["ids"])
    procedures = {
        "one halving, crc32(id) % 2 (the protocol before)": lambda rows, salt: [_halves(ids[rows])],
        f"mean over {NESTED_INNER} random halvings": lambda rows, salt: [
            salted_halves(ids[rows], f"inner/{salt}/{k}") for k in range(NESTED_INNER)]}
    out: dict = {}
    for name, halvings in procedures.items():
        runs = []
        for r in range(NESTED_OUTER):
            outer = salted_halves(ids, f"outer/{r}")
            for a in (0, 1):
                fit_rows, judge_rows = np.flatnonzero(outer == a), np.flatnonzero(outer != a)
                est = teff_settings(pred, z, usable, hot, fit_rows, halvings(fit_rows, f"{r}/{a}"))
                key = choose_setting(est, budget=HOT_BUDGET)
                judged = _judged(pred, z, usable, hot, fit_rows, judge_rows, est[key])
                runs.append({"chosen": key, "inner": est[key]["watched_beyond"], **judged})
        outer_rates = np.array([x["beyond"] for x in runs])
        chosen = [x["chosen"] for x in runs]
        out[name] = {"inner_mean": round(float(np.mean([x["inner"] for x in runs])), 4),
                     "outer_mean": round(float(np.nanmean(outer_rates)), 4),
                     "outer_sd": round(float(np.nanstd(outer_rates)), 4),
                     "outer_above_budget": round(float(np.mean(outer_rates > HOT_BUDGET)), 3),
                     "n_hot_judged_mean": round(float(np.mean([x["n_hot"] for x in runs])), 1),
                     "teff_kept_mean": round(float(np.mean([x["kept"] for x in runs])), 3),
                     "chosen": {k: chosen.count(k) for k in sorted(set(chosen))}}
    every = np.arange(len(ids))
    full = teff_settings(pred, z, usable, hot, every, tail_halvings(ids))
    tc = bundle.config.quality.tail_regimes
    shipped = f"bins {tc.bin_stars}, rate {tc.rate_of('teff'):g}"
    return {"stars": int(len(ids)), "hot": int(hot.sum()), "budget": HOT_BUDGET,
            "method": f"{NESTED_OUTER} random halvings of the out-of-fold stars (keyed hash of the id), both ways: "
                      "the tail-rule grid of benchmarks/xp_library.py cross-fitted and chosen on one half "
                      "(choose_setting: most Teff kept with the kept hot stars beyond 3 sigma <= budget), the "
                      "chosen setting fitted on that half and judged on the other; usable = Teff with label "
                      "support and no likely_outlier; inner = the choice's own estimate, outer = judged",
            "procedures": out,
            "shipped_setting": {"setting": shipped, **full[shipped]},
            "all_out_of_fold": {"halvings": FULL_HALVINGS, "settings": full,
                                "mean_over_halvings_would_choose": choose_setting(full, budget=HOT_BUDGET)}}


def main() -> int:
    from xp_library import quiet_predict
    from xp_tail_sources import out_of_fold_stars

    from kielnet.artifact import load_bundle
    from kielnet.data.selection import load_selection, star_columns
    from kielnet.io import XP_LIBRARY, read_stars
    from kielnet.pipeline import holdout_split
    from kielnet.quality.flags import usable_mask

    commit, dirty = git_commit(), git_dirty()
    table = read_stars(XP_LIBRARY)
    train, test = holdout_split(table)
    columns = star_columns(train)
    kept, _ = load_selection(CLEANING).apply(columns, source=train.source)
    dropped = train.take(~kept)
    assert not np.isin(np.asarray(dropped.ids), np.asarray(test.ids)).any()  # no test star is read
    teff, err = np.asarray(train.labels["teff"], float), np.asarray(columns["teff_err"], float)
    hot = teff > HOT_K
    cleaning = {
        "training_part": int(len(train)), "kept": int(kept.sum()), "dropped": int((~kept).sum()),
        "hot_in_training_part": int(hot.sum()),
        "hot_kept": int((hot & kept).sum()), "hot_dropped": int((hot & ~kept).sum()),
        "hot_with_teff_err_ge_250": int((hot & (err >= TEFF_ERR_CUT)).sum()),
        "hot_teff_err_p16_p50_p84": [float(v) for v in np.nanpercentile(err[hot], [16, 50, 84])],
        "not_hot_teff_err_p16_p50_p84": [float(v) for v in np.nanpercentile(err[~hot], [16, 50, 84])]}

    bundle = load_bundle(BUNDLE)
    cat = quiet_predict(bundle, dropped)
    t = np.asarray(dropped.labels["teff"], float)
    p, s = np.asarray(cat["teff"], float), np.asarray(cat["sigma_teff"], float)
    usable = usable_mask(np.asarray(cat["flag"], np.int64), p)
    z = np.abs(p - t) / s
    e = np.asarray(star_columns(dropped)["teff_err"], float)
    h = t > HOT_K
    dropped_rates = {
        "all": _rates(z, usable, np.ones(len(t), bool)),
        "hot": _rates(z, usable, h),
        "hot_teff_err_ge_250": _rates(z, usable, h & (e >= TEFF_ERR_CUT)),
        "not_hot": _rates(z, usable, ~h),
        "not_hot_teff_err_ge_250": _rates(z, usable, ~h & (e >= TEFF_ERR_CUT))}
    by_members = members_per_prediction(bundle, dropped, t, cat)
    oof = out_of_fold(bundle)
    stars = out_of_fold_stars(BUNDLE)
    gap = out_of_fold_gap_checks(bundle, stars)
    nested = nested_selection(bundle, stars)
    res = {"bundle": BUNDLE, "test_fifth_read": False,
           "cleaning": {"file": str(CLEANING.relative_to(ROOT)), **cleaning},
           "dropped_stars_predicted": dropped_rates,
           "dropped_hot_stars_by_members": by_members,
           "out_of_fold": oof,
           "out_of_fold_gap_checks": gap,
           "nested_selection": nested,
           "definition": "usable = Teff reported and no flag but label_not_reported; beyond_3sigma = fraction of "
                         "the usable rows with |Teff - APOGEE Teff| > 3 sigma_teff; hot = APOGEE Teff > 10,000 K",
           **provenance(commit, dirty)}
    out = RESULTS / "xp_hot_references.json"
    write_result(res, out)
    print(f"cleaning: {cleaning}")
    for k, v in dropped_rates.items():
        print(f"{k:26s} {v}")
    print(f"dropped stars, all members: {by_members['all_members']}")
    for k, v in by_members["each_split_alone"].items():
        print(f"dropped stars, split {k} alone: {v}")
    for k, v in ((oof or {}).get("rates") or {}).items():
        print(f"out of fold, Teff rate {k:5s} {v}")
    for k, v in gap["ensemble_disagreement"].items():
        print(f"out of fold, {k}: {v}")
    print(f"out of fold, members averaged: {gap['ensemble_size']}")
    for k, v in nested["procedures"].items():
        print(f"nested, {k}: " + ", ".join(f"{m} {v[m]}" for m in ("inner_mean", "outer_mean", "outer_sd",
                                                                    "outer_above_budget", "teff_kept_mean")))
    print(f"nested, shipped setting: {nested['shipped_setting']}")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
