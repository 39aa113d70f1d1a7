"""Where the tails of ``xp-apogee-dr17`` come from, measured on out-of-fold training
stars only (issue 20: "find out where the tails come from ... and what the data allow").

No test star is read: the shipped bundle's training stars (the XP library minus the test
fifth, after the label cleaning ``benchmarks/configs/xp_label_quality.yaml``) are split
again as in training and each split's validation stars are predicted by the members of
that split (:func:`kielnet.training.calibrate.bundle_out_of_fold`). Their σ is the one
``predict`` gives (σ model × the neighbour model's local factor, each star assessed
without itself); a label is *usable* when it is reported (enough label support) and the
star is not ``likely_outlier`` (``ensemble_disagreement`` is left out: its score is
calibrated for the 8-member spread of new stars, not the 2-member spread of these).

The questions, one section each of ``benchmarks/results/xp_tail_sources.json``:

``sigma_scale``
    Could a larger σ alone bring the usable rows beyond 3σ to ≤ 1 %? For each label: the
    fractions beyond 3σ / 5σ and the 1σ / 2σ coverage at σ × c, the largest c that keeps
    the coverage inside the issue's bands (1σ ≤ 0.73, 2σ ≤ 0.98), and the c that would
    give 1 % beyond 3σ with the coverage it implies.
``identifiability``
    Can the tail stars be told apart per star? A gradient-boosting classifier
    (``sklearn.ensemble.HistGradientBoostingClassifier``, 5-fold cross-validated on these
    stars) predicts "beyond 3σ" from 52 per-star quantities: predicted labels, σ, the
    members' spread, S/N, the outlier score, the predictions with each input group hidden,
    six colours and the first 20 principal components of the normalised XP spectrum. Its
    ROC AUC, and the usable fraction beyond 3σ left after flagging its top 1-15 %.
``hot_stars``
    The stars APOGEE puts above 10,000 K that land beyond 3σ in Teff: what they are
    predicted as, and whether their inputs look like a hot star's or like the cooler
    star they are predicted as — the RMS difference of each one's normalised XP spectrum
    from the median spectrum of the (well-fitted) stars of either kind with the same
    BP−RP (± 0.05), with the same numbers for well-fitted stars of both kinds as the
    control; APOGEE's A_K of these stars against that of the well-fitted hot stars of the
    same BP−RP; and how many of them a flag on the predicted-Teff range they fall in
    would catch, at what cost in usable rows.
``residual_correction``
    Are the residuals themselves predictable? A gradient-boosting regressor (the
    classifier's settings, absolute-error loss, 5-fold cross-validated) predicts each usable
    star's signed residual in σ units from the same 52 quantities; the residual minus that
    prediction is what a stacked correction of the labels would leave. Robust σ of the
    residual, 1σ coverage and the fraction beyond 3σ before and after, per label: a
    correction that cannot shrink them leaves the tails to flags or to better inputs.
``ensemble_size``
    How much of σ the members' spread is: these stars are predicted by the
    ``members_per_split`` members of one split, new stars by all members, whose mean
    scatters less by (1/m_split − 1/m_all) × spread². The σ factor that would remove that
    difference, per label (median over stars), bounds what an ensemble-size-aware σ model
    could change in the 1σ coverage of new stars.
``regimes``
    1σ / 2σ coverage and the fraction beyond 3σ per label in the regimes the XP-library
    benchmark reports on the test fifth (Teff > 7,000 K, cool dwarfs, low S/N, …), over
    every out-of-fold star with a prediction, flagged or not: whether a regime's miss on
    the test fifth is there out of fold too, where a recalibration could be fitted.

    python benchmarks/xp_tail_sources.py [--bundle xp-apogee-dr17]   # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, git_commit, git_dirty, provenance, write_result  # noqa: E402

LABEL_CLEANING = ROOT / "benchmarks" / "configs" / "xp_label_quality.yaml"
#: the issue's coverage bands: 1σ 0.68 ± 0.05, 2σ 0.95 ± 0.03
COV1_MAX, COV2_MAX = 0.73, 0.98
HOT_K = 10_000.0
BUDGETS = (0.01, 0.02, 0.05, 0.10, 0.15)
COLOURS = (("bp", "rp"), ("g", "k"), ("j", "k"), ("h", "k"), ("j", "h"), ("g", "rp"))


def out_of_fold_stars(bundle_name: str) -> dict:
    """Out-of-fold predictions, usable σ and flags of the bundle's training stars, with
    their inputs (colours, normalised XP spectra, A_K): a dict of arrays."""
    from kielnet.artifact.store import load_bundle
    from kielnet.data.selection import load_selection
    from kielnet.io import XP_LIBRARY, read_stars
    from kielnet.pipeline import holdout_split
    from kielnet.quality.neighbours import positions
    from kielnet.training.calibrate import bundle_out_of_fold, oof_sigma

    bundle = load_bundle(bundle_name)
    train, _ = holdout_split(read_stars(XP_LIBRARY))  # the test fifth is dropped here, unread
    cfg, table, tr, oof, nets = bundle_out_of_fold(bundle, train, selection=load_selection(LABEL_CLEANING),
                                                 log=lambda *a: None)
    sig = oof_sigma(bundle.sigma_model, bundle.running_dispersion, oof)
    a = bundle.neighbours.assess(positions(bundle.preprocessor.forward_labels(oof.pred), oof.snr), exclude_self=True)
    sig = sig * a.factor
    rows = oof.rows
    scal = {k: np.asarray(v, dtype=np.float64)[rows] for k, v in table.scalars.items()}
    flux = np.asarray(table.flux, dtype=np.float64)[rows]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = flux / np.nanmedian(flux, axis=1, keepdims=True)
    hidden = np.concatenate([p - oof.pred for p, _s, _h in oof.hidden.values()], axis=1) if oof.hidden else None
    score, members = split_spread_score(bundle, tr, oof, nets, a.disagreement_threshold)
    return {"names": cfg.label_names, "m_split": cfg.ensemble.members_per_split, "m_all": len(bundle.members),
            "ids": np.asarray(table.ids)[rows], "spread_score": score, "member_pred": members, "pred": oof.pred,
            "spread_local": a.disagreement_threshold is not None,
            "truth": oof.truth, "spread": oof.spread, "sigma": sig,
            "snr": oof.snr, "score": a.outlier_score, "outlier": bundle.neighbours.outliers(a),
            "withheld": bundle.neighbours.withheld(a), "scalars": scal, "flux": norm, "hidden": hidden}


def split_spread_score(bundle, tr, oof, nets, local: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """The ``ensemble_disagreement`` score of each out-of-fold star from the members of
    the split that held it out (the bundle's calibration, with the log-spread bias of that
    many members, as :class:`kielnet.quality.spread.EnsembleSpread` corrects it; with
    ``quality.ensemble_spread.local``, against ``local``, the threshold of each star's
    out-of-fold neighbours, itself left out; None without a calibration), and those members' own
    predictions, (members per split, n stars, labels) in physical units (a star held out
    twice keeps its last split's)."""
    from kielnet.compute import member_predictions
    from kielnet.quality.spread import log_disagreement

    sp = bundle.spread
    pre = bundle.preprocessor
    split_of = [m.split for m in bundle.member_info]
    pos = {int(r): i for i, r in enumerate(oof.rows)}
    score = np.full(len(oof.rows), np.nan)
    members_pred = np.full((bundle.config.ensemble.members_per_split, *oof.pred.shape), np.nan)
    for k in range(bundle.config.ensemble.n_splits):
        members = [net for net, s in zip(nets, split_of) if s == k]
        held = np.flatnonzero(tr.heldout[:, k])
        if not members or not len(held):
            continue
        p = member_predictions(members, tr.prep.take(held), pre.inverse_labels)
        idx = [pos[int(r)] for r in tr.rows[held]]
        members_pred[:len(members), idx] = p
        if local is not None and len(members) >= 2:
            score[idx] = np.exp(log_disagreement(np.stack([pre.forward_labels(m) for m in p])) - local[idx])
        elif sp is not None and sp.fitted and len(members) >= 2:
            score[idx] = sp.score(np.stack([pre.forward_labels(m) for m in p]), any_size=True)
    return (score if local is not None or (sp is not None and sp.fitted) else None), members_pred


def sigma_scale(z: np.ndarray) -> dict:
    """Coverage and tails of |residual|/σ values ``z`` at σ × c for a few c."""
    def at(c: float) -> dict:
        return {"scale": round(float(c), 4), "cov1": float(np.mean(z < c)), "cov2": float(np.mean(z < 2 * c)),
                "beyond_3sigma": float(np.mean(z > 3 * c)), "beyond_5sigma": float(np.mean(z > 5 * c))}

    grid = np.round(np.arange(0.80, 2.5001, 0.005), 4)
    inside = [c for c in grid if np.mean(z < c) <= COV1_MAX and np.mean(z < 2 * c) <= COV2_MAX]
    one_pct = next((c for c in grid if np.mean(z > 3 * c) <= 0.01), None)
    return {"n": int(len(z)), "as_shipped": at(1.0), "scales": [at(c) for c in (1.1, 1.2, 1.3)],
            "largest_scale_in_bands": at(max(inside)) if inside else None,
            "scale_for_1pct_beyond_3sigma": at(one_pct) if one_pct is not None else None}


def features(s: dict) -> tuple[np.ndarray, list[str]]:
    """The per-star quantities the tail classifier sees (module docstring)."""
    from sklearn.decomposition import PCA

    names = s["names"]
    cols, fnames = [], []
    cols += [s["pred"], np.log(s["spread"] + 1e-12), np.log(s["sigma"]), np.log(s["snr"])[:, None],
             s["score"][:, None]]
    fnames += [f"pred_{n}" for n in names] + [f"log_spread_{n}" for n in names] + \
              [f"log_sigma_{n}" for n in names] + ["log_snr", "outlier_score"]
    if s["hidden"] is not None:
        cols.append(s["hidden"])
        fnames += [f"hidden_delta_{i}" for i in range(s["hidden"].shape[1])]
    sc = s["scalars"]
    colour = np.column_stack([sc[a] - sc[b] for a, b in COLOURS])
    cols.append(colour)
    fnames += [f"{a}-{b}" for a, b in COLOURS]
    lf = np.log(np.clip(np.nan_to_num(s["flux"], nan=1.0), 1e-3, None))
    cols.append(PCA(20, random_state=0).fit_transform(lf))
    fnames += [f"xp_pc{i}" for i in range(20)]
    return np.column_stack(cols), fnames


#: the gradient-boosting settings of the tail classifier and the residual regressor
BOOSTING = {"max_iter": 200, "learning_rate": 0.05, "max_leaf_nodes": 15, "l2_regularization": 1.0}


def _settings(**extra) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in {**extra, **BOOSTING}.items())


CLASSIFIER = f"HistGradientBoostingClassifier({_settings()}), 5-fold stratified CV"


def cv_scores(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Out-of-fold class-1 probabilities of :data:`CLASSIFIER` for ``X`` → ``y``."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    clf = HistGradientBoostingClassifier(**BOOSTING, random_state=0)
    return cross_val_predict(clf, X, y, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                             method="predict_proba")[:, 1]


def identifiability(s: dict, X: np.ndarray, z: np.ndarray, usable: np.ndarray) -> dict:
    """Cross-validated classifier of "beyond 3σ" per label (module docstring)."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for j, name in enumerate(s["names"]):
        m = usable[:, j]
        y = (z[m, j] > 3).astype(int)
        p = cv_scores(X[m], y)
        after = {}
        for q in BUDGETS:
            keep = p <= np.quantile(p, 1 - q)
            after[f"{q:.2f}"] = {"beyond_3sigma": float(y[keep].mean()),
                                 "beyond_5sigma": float(np.mean(z[m, j][keep] > 5)),
                                 "flagged_tail_fraction": float(y[~keep].sum() / max(y.sum(), 1))}
        out[name] = {"n": int(m.sum()), "n_beyond_3sigma": int(y.sum()), "beyond_3sigma": float(y.mean()),
                     "roc_auc": float(roc_auc_score(y, p)), "after_flagging_top": after}
        print(f"{name}: AUC {out[name]['roc_auc']:.3f}, beyond 3 sigma {100 * y.mean():.2f} % -> "
              f"{100 * after['0.15']['beyond_3sigma']:.2f} % after flagging the top 15 %")
    return out


REGRESSOR = f"HistGradientBoostingRegressor({_settings(loss='absolute_error')}), 5-fold CV"


def residual_correction(s: dict, X: np.ndarray, usable: np.ndarray) -> dict:
    """Cross-validated regression of the signed residual in σ units (module docstring)."""
    from scipy.stats import median_abs_deviation
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.model_selection import KFold, cross_val_predict

    out = {}
    for j, name in enumerate(s["names"]):
        m = usable[:, j]
        sig = s["sigma"][m, j]
        y = (s["pred"][m, j] - s["truth"][m, j]) / sig
        reg = HistGradientBoostingRegressor(loss="absolute_error", **BOOSTING, random_state=0)
        fit = cross_val_predict(reg, X[m], y, cv=KFold(5, shuffle=True, random_state=0))
        row = {"n": int(m.sum())}
        for key, r in (("before", y), ("after", y - fit)):
            row[key] = {"robust_sigma": float(median_abs_deviation(r * sig, scale="normal")),
                        "cov1": float(np.mean(np.abs(r) < 1)), "beyond_3sigma": float(np.mean(np.abs(r) > 3))}
        out[name] = row
        print(f"{name}: residual correction: robust sigma {row['before']['robust_sigma']:.4g} -> "
              f"{row['after']['robust_sigma']:.4g}, beyond 3 sigma {100 * row['before']['beyond_3sigma']:.2f} % -> "
              f"{100 * row['after']['beyond_3sigma']:.2f} %")
    return out


def _twin_rms(stars: np.ndarray, twins: np.ndarray, bprp: np.ndarray, flux: np.ndarray) -> dict:
    """Median over ``stars`` of the RMS difference between a star's normalised spectrum
    and the median spectrum of the ``twins`` (itself excluded) within ±0.05 in BP−RP."""
    rms = []
    for i in np.flatnonzero(stars):
        near = twins & (np.abs(bprp - bprp[i]) < 0.05)
        near[i] = False
        if near.sum() >= 3:
            rms.append(float(np.sqrt(np.nanmean((flux[i] - np.nanmedian(flux[near], axis=0)) ** 2))))
    return {"n": len(rms), "median_rms": float(np.median(rms)) if rms else None}


def hot_stars(s: dict, X: np.ndarray, z: np.ndarray, usable: np.ndarray) -> dict:
    """The hot-star section (module docstring); ``X`` from :func:`features`."""
    from sklearn.metrics import roc_auc_score

    t = s["names"].index("teff")
    pred, truth = s["pred"][:, t], s["truth"][:, t]
    sc = s["scalars"]
    bprp = sc["bp"] - sc["rp"]
    use = usable[:, t]
    hot = use & (truth > HOT_K)
    miss_all = hot & (z[:, t] > 3)
    miss = miss_all & (pred < HOT_K)  # the misses predicted as cooler stars
    lo, hi = np.percentile(pred[miss], [5, 95]) if miss.any() else (np.nan, np.nan)
    good = use & (z[:, t] < 2)
    hot_good = good & (truth > HOT_K)
    cool_like = good & (truth >= lo) & (truth <= hi)  # well-fitted stars whose APOGEE Teff is what the misses are predicted
    ak = sc.get("ak_targ")
    ak_twins = []
    if ak is not None:
        for i in np.flatnonzero(miss & np.isfinite(ak)):
            near = hot_good & np.isfinite(ak) & (np.abs(bprp - bprp[i]) < 0.05)
            if near.sum() >= 3:
                ak_twins.append((ak[i], float(np.nanmedian(ak[near]))))
    in_range = use & (pred >= lo) & (pred <= hi)
    # a classifier of "APOGEE Teff > 10,000 K" among the stars predicted in that range
    y = (truth[in_range] > HOT_K).astype(int)
    p = cv_scores(X[in_range], y)
    miss_r = miss[in_range]
    caught = {f"{q:.2f}": int(miss_r[p > np.quantile(p, 1 - q)].sum()) for q in (0.02, 0.05, 0.10, 0.25)}
    res = {
        "n_usable_hot": int(hot.sum()), "n_beyond_3sigma": int(miss_all.sum()),
        "beyond_3sigma": float(miss_all.sum() / max(hot.sum(), 1)),
        "n_beyond_3sigma_predicted_below_10000K": int(miss.sum()),
        "misses": "below: the usable hot stars beyond 3 sigma in Teff that are predicted below 10,000 K",
        "predicted_teff_of_those_p5_p50_p95": [float(v) for v in np.percentile(pred[miss], [5, 50, 95])],
        "apogee_teff_of_those_p5_p50_p95": [float(v) for v in np.percentile(truth[miss], [5, 50, 95])],
        "spectrum_rms": {
            "definition": "median RMS of (normalised XP spectrum - median normalised spectrum of well-fitted "
                          "(|residual| < 2 sigma) stars of the same BP-RP within 0.05); 'cool' = APOGEE Teff in "
                          "the 5-95 % range of the misses' predicted Teff, 'hot' = APOGEE Teff > 10,000 K",
            "misses_to_cool": _twin_rms(miss, cool_like, bprp, s["flux"]),
            "misses_to_hot": _twin_rms(miss, hot_good, bprp, s["flux"]),
            "control_cool_to_cool": _twin_rms(cool_like, cool_like, bprp, s["flux"]),
            "control_cool_to_hot": _twin_rms(cool_like, hot_good, bprp, s["flux"]),
            "control_hot_to_hot": _twin_rms(hot_good, hot_good, bprp, s["flux"]),
            "control_hot_to_cool": _twin_rms(hot_good, cool_like, bprp, s["flux"])},
        "ak_targ": None if not ak_twins else {
            "n": len(ak_twins), "misses_median": float(np.median([a for a, _ in ak_twins])),
            "well_fitted_hot_same_bp_rp_median": float(np.median([b for _, b in ak_twins])),
            "definition": "APOGEE's A_K (ak_targ) of each miss, and the median A_K of the well-fitted hot stars "
                          "within 0.05 of its BP-RP: a hot star as red as the miss needs that much extinction"},
        "predicted_range_flag": {
            "teff_range": [float(lo), float(hi)],
            "n_usable_in_range": int(in_range.sum()), "fraction_of_usable": float(in_range.mean() / use.mean()),
            "misses_in_range": int(miss_r.sum()),
            "hot_vs_cool_classifier_auc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
            "misses_caught_when_flagging_top_fraction_of_range": caught},
    }
    print(f"hot stars: {miss_all.sum()}/{hot.sum()} usable beyond 3 sigma, {miss.sum()} of them predicted {lo:.0f}-{hi:.0f} K; spectrum RMS to "
          f"cool twins {res['spectrum_rms']['misses_to_cool']['median_rms']:.4f} vs hot twins "
          f"{res['spectrum_rms']['misses_to_hot']['median_rms']:.4f}")
    return res


def ensemble_size(s: dict, usable: np.ndarray) -> dict:
    """The ``ensemble_size`` section (module docstring)."""
    share = (s["spread"] / s["sigma"]) ** 2
    d = 1.0 / s["m_split"] - 1.0 / s["m_all"]
    factor = np.sqrt(np.clip(1.0 - d * share, 0.0, None))
    return {"members_per_split": s["m_split"], "members": s["m_all"],
            "labels": {n: {"median_spread2_over_sigma2": float(np.median(share[usable[:, j], j])),
                           "mean_spread2_over_sigma2": float(np.mean(share[usable[:, j], j])),
                           "median_sigma_factor_for_all_members": float(np.median(factor[usable[:, j], j]))}
                       for j, n in enumerate(s["names"])}}


def ensemble_disagreement(s: dict, z: np.ndarray, usable: np.ndarray) -> dict | None:
    """What the ``ensemble_disagreement`` flag does to the tails, out of fold: at score
    thresholds 1 (the shipped flag), 1.5, 2 and 3, the fraction flagged, the fraction of
    flagged / unflagged stars beyond 3σ in some usable label, and the usable fraction
    beyond 3σ per label (and for hot stars' Teff) left unflagged."""
    sc = s["spread_score"]
    if sc is None:
        return None
    anyt = np.nanmax(np.where(usable, z, 0.0), axis=1) > 3
    t = s["names"].index("teff") if "teff" in s["names"] else None
    hot = s["truth"][:, t] > HOT_K if t is not None else np.zeros(len(z), bool)
    rows = []
    for thr in (1.0, 1.5, 2.0, 3.0, float("inf")):
        f = sc > thr
        row = {"threshold": thr if np.isfinite(thr) else None, "flagged": float(f.mean()),
               "beyond_3sigma_any_label_flagged": float(anyt[f].mean()) if f.any() else None,
               "beyond_3sigma_any_label_unflagged": float(anyt[~f].mean()),
               "unflagged_beyond_3sigma": {n: float(np.mean(z[usable[:, j] & ~f, j] > 3))
                                           for j, n in enumerate(s["names"])}}
        if t is not None:
            uh = usable[:, t] & ~f & hot
            row["hot_unflagged"] = int(uh.sum())
            row["hot_unflagged_beyond_3sigma"] = float(np.mean(z[uh, t] > 3)) if uh.any() else None
        rows.append(row)
    where = ("against the local threshold of the star's out-of-fold neighbours (itself left out)"
             if s.get("spread_local") else "against the threshold over all training stars")
    return {"score": "the bundle's ensemble_disagreement calibration on the spread of the "
                     f"{s['m_split']} members that did not train on the star (new stars get all {s['m_all']}), "
                     + where,
            "thresholds": rows}


def regimes(s: dict, z: np.ndarray) -> dict:
    """1σ / 2σ coverage and the fraction beyond 3σ in the regimes of
    ``benchmarks/xp_library.py`` (:data:`kielnet.diagnostics.metrics.REGIMES`, on APOGEE's
    labels and the XP spectrum's S/N) over every out-of-fold star with a prediction and a reference label,
    flagged or not, as that benchmark's regime coverage is counted on the test fifth."""
    from kielnet.diagnostics.metrics import regime_masks

    names = s["names"]
    masks = regime_masks({n: s["truth"][:, j] for j, n in enumerate(names)}, s["scalars"])
    out = {}
    for rname, m in masks.items():
        labels = {}
        for j, n in enumerate(names):
            zz = z[m & np.isfinite(z[:, j]), j]
            labels[n] = ({"n": int(zz.size), "cov1": float(np.mean(zz < 1)), "cov2": float(np.mean(zz < 2)),
                          "beyond_3sigma": float(np.mean(zz > 3))} if zz.size else {"n": 0})
        out[rname] = {"n_stars": int(m.sum()), "labels": labels}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="xp-apogee-dr17")
    ap.add_argument("--out", default=str(RESULTS / "xp_tail_sources.json"))
    args = ap.parse_args(argv)
    commit, dirty = git_commit(), git_dirty()
    s = out_of_fold_stars(args.bundle)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(s["pred"] - s["truth"]) / s["sigma"]
    usable = np.isfinite(z) & ~s["withheld"] & ~s["outlier"][:, None]
    X, fnames = features(s)
    result = {
        "bundle": args.bundle, "test_fifth_read": False,
        "stars": "out-of-fold training stars of the bundle (XP library minus the test fifth, label-cleaned), each "
                 "predicted by the members of the split that held it out",
        "n_out_of_fold": int(len(z)),
        "usable_definition": "label reported (support) and not likely_outlier; ensemble_disagreement not applied",
        "coverage_bands": {"cov1_max": COV1_MAX, "cov2_max": COV2_MAX},
        "sigma_scale": {n: sigma_scale(z[usable[:, j], j]) for j, n in enumerate(s["names"])},
        "identifiability": {"classifier": CLASSIFIER, "features": fnames,
                            "labels": identifiability(s, X, z, usable)},
        "residual_correction": {"regressor": REGRESSOR, "labels": residual_correction(s, X, usable)},
        "hot_stars": hot_stars(s, X, z, usable),
        "ensemble_size": ensemble_size(s, usable),
        "ensemble_disagreement": ensemble_disagreement(s, z, usable),
        "regimes": regimes(s, z),
        **provenance(commit, dirty),
    }
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
