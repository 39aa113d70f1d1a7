"""Accuracy and calibration metrics of predicted labels against reference labels.

Residual = predicted − reference, in the label's unit (Teff in K).
"""

from __future__ import annotations

import numpy as np

from kielnet.stats import robust_sigma

__all__ = ["withheld_by", "label_metrics", "metrics_table", "REGIMES", "regime_masks", "coverage_summary",
           "calibration_report", "worst_bin", "BIN_SECTIONS", "CURVE_K", "G_BINS"]


def label_metrics(pred: np.ndarray, truth: np.ndarray, sigma: np.ndarray | None = None) -> dict:
    """``n``, ``bias`` (median residual), ``robust_sigma`` (1.4826 MAD), ``rms`` and,
    given ``sigma``, ``coverage_1sigma`` (fraction with |residual| < sigma).

    Stars whose prediction or reference is NaN are not counted (``n`` says how many are).
    """
    r = np.asarray(pred, dtype=float) - np.asarray(truth, dtype=float)
    ok = np.isfinite(r)
    if sigma is not None:
        ok &= np.isfinite(sigma)
    r_ok = r[ok]
    out = {"n": int(ok.sum()),
           "bias": float(np.median(r_ok)) if r_ok.size else None,
           "robust_sigma": robust_sigma(r_ok) if r_ok.size else None,
           "rms": float(np.sqrt(np.mean(r_ok ** 2))) if r_ok.size else None}
    if sigma is not None:
        s = np.asarray(sigma, dtype=float)[ok]
        out["coverage_1sigma"] = float(np.mean(np.abs(r_ok) < s)) if r_ok.size else None
    return out


#: Named regimes of the XP-library benchmark: callables of (labels dict, scalars dict) → mask.
#: Labels are the reference (APOGEE) values; ``snr`` is the star table's spectrum S/N, for the
#: XP library the XP sampled spectrum's median |flux| / error (its ``snr`` column, not APOGEE's).
REGIMES = {
    "teff_gt_7000": lambda lab, sc: lab["teff"] > 7000,
    "logg_lt_1": lambda lab, sc: lab["logg"] < 1,
    "feh_lt_m1": lambda lab, sc: lab["fe_h"] < -1,
    "cool_dwarfs_teff_lt_4000": lambda lab, sc: (lab["teff"] < 4000) & (lab["logg"] > 4.0),
    "xp_snr_lt_50": lambda lab, sc: sc["snr"] < 50,
    "xp_snr_lt_30": lambda lab, sc: sc["snr"] < 30,
    "teff_gt_10000": lambda lab, sc: lab["teff"] > 10000,
}


def regime_masks(labels: dict, scalars: dict) -> dict[str, np.ndarray]:
    """Boolean masks of :data:`REGIMES` (NaN comparisons count as outside)."""
    with np.errstate(invalid="ignore"):
        return {name: np.asarray(f(labels, scalars), dtype=bool) for name, f in REGIMES.items()}


def metrics_table(metrics: dict[str, dict], units: dict[str, str] | None = None) -> str:
    """Plain-text table of per-label metrics (for terminals and logs)."""
    units = units or {}
    cols = ["n", "bias", "robust_sigma", "rms", "coverage_1sigma"]
    lines = [f"{'label':<10}" + "".join(f"{c:>16}" for c in cols)]
    for lab, m in metrics.items():
        cells = []
        for c in cols:
            v = m.get(c)
            cells.append(f"{'-':>16}" if v is None else (f"{v:>16d}" if isinstance(v, int) else f"{v:>16.4g}"))
        lines.append(f"{lab + (' [' + units[lab] + ']' if units.get(lab) else ''):<10}" + "".join(cells))
    return "\n".join(lines)


#: k of the calibration curve: fraction of stars with |residual| < k σ
CURVE_K = (0.5, 1.0, 1.5, 2.0, 3.0)
#: the binned sections of a :func:`calibration_report`, in its order
BIN_SECTIONS = ("snr_bins", "g_bins", "regimes")
#: Gaia G bins of the calibration report (mag): (name, lower, upper]
G_BINS = (("le_12", -np.inf, 12.0), ("12_14", 12.0, 14.0), ("14_16", 14.0, 16.0), ("gt_16", 16.0, np.inf))


def _coverage(r: np.ndarray, s: np.ndarray, k: float) -> float | None:
    return float(np.mean(np.abs(r) < k * s)) if r.size else None


def coverage_summary(pred: np.ndarray, truth: np.ndarray, sigma: np.ndarray,
                     mask: np.ndarray | None = None) -> dict:
    """``n``, ``cov1`` and ``cov2`` — the fractions of stars with |pred − truth| below
    1σ and 2σ — over the stars (in ``mask``) whose prediction, reference and σ are finite."""
    r = np.asarray(pred, dtype=float) - np.asarray(truth, dtype=float)
    s = np.asarray(sigma, dtype=float)
    ok = np.isfinite(r) & np.isfinite(s)
    if mask is not None:
        ok &= np.asarray(mask, dtype=bool)
    return {"n": int(ok.sum()), "cov1": _coverage(r[ok], s[ok], 1.0), "cov2": _coverage(r[ok], s[ok], 2.0)}


def calibration_report(pred: np.ndarray, truth: np.ndarray, sigma: np.ndarray, *,
                       snr: np.ndarray | None = None, g: np.ndarray | None = None,
                       regimes: dict[str, np.ndarray] | None = None) -> dict:
    """Calibration of one label's σ: ``overall`` (cov1, cov2), ``snr_bins`` (quartiles of
    ``snr``, named by their edges), ``g_bins`` (:data:`G_BINS`), ``regimes`` (named masks)
    — each with ``n``, ``cov1``, ``cov2`` — and ``curve``: the fraction with
    |residual| < kσ for each k of :data:`CURVE_K` (a Gaussian gives 0.383, 0.683, 0.866,
    0.954, 0.997)."""
    r = np.asarray(pred, dtype=float) - np.asarray(truth, dtype=float)
    s = np.asarray(sigma, dtype=float)
    ok = np.isfinite(r) & np.isfinite(s)
    out: dict = {"overall": coverage_summary(pred, truth, sigma)}
    if snr is not None:
        v = np.asarray(snr, dtype=float)
        fin = ok & np.isfinite(v)
        out["snr_bins"] = {}
        if fin.any():
            edges = np.quantile(v[fin], [0.0, 0.25, 0.5, 0.75, 1.0])
            for i in range(4):
                lo, hi = edges[i], edges[i + 1]
                m = fin & (v >= lo) & ((v < hi) if i < 3 else (v <= hi))
                out["snr_bins"][f"q{i + 1}_{lo:.0f}_{hi:.0f}"] = coverage_summary(pred, truth, sigma, m)
    if g is not None:
        gv = np.asarray(g, dtype=float)
        with np.errstate(invalid="ignore"):
            out["g_bins"] = {name: coverage_summary(pred, truth, sigma, (gv > lo) & (gv <= hi))
                             for name, lo, hi in G_BINS}
    if regimes is not None:
        out["regimes"] = {name: coverage_summary(pred, truth, sigma, m) for name, m in regimes.items()}
    out["curve"] = {str(k): _coverage(r[ok], s[ok], k) for k in CURVE_K}
    return out


def worst_bin(report: dict, *, target: float = 0.6827, min_n: int = 100) -> dict:
    """The bin of a :func:`calibration_report` (overall, S/N, G and regime bins with at
    least ``min_n`` stars) whose 1σ coverage is farthest from ``target``:
    ``{"bin", "n", "cov1", "deviation"}``."""
    cands = [("overall", report["overall"])]
    for sec in BIN_SECTIONS:
        cands += [(f"{sec}.{k}", v) for k, v in report.get(sec, {}).items()]
    best = {"bin": None, "n": 0, "cov1": None, "deviation": 0.0}
    for name, v in cands:
        if v["n"] >= min_n and v["cov1"] is not None and abs(v["cov1"] - target) >= abs(best["deviation"]):
            best = {"bin": name, "n": v["n"], "cov1": v["cov1"], "deviation": v["cov1"] - target}
    return best


# ----------------------------------------------------------------------------- trust
def _col(cat, name: str) -> np.ndarray:
    return np.asarray(cat[name], dtype=float)


def tail_metrics(cat, truth: dict, names: list[str], *, label_errs: dict | None = None,
                 hot: np.ndarray | None = None) -> dict:
    """Is every usable label right within its σ? Per label, over the catalogue rows whose
    value is usable (:func:`kielnet.quality.flags.usable_mask`: reported, and no flag but
    ``label_not_reported``) and whose reference in ``truth`` is finite:

    ``ok_fraction`` (usable rows / all rows), ``n_ok``, ``ok_beyond_3sigma`` and
    ``ok_beyond_5sigma`` (fractions with |residual| > 3σ / 5σ, σ = ``sigma_X``; a
    Gaussian gives 0.0027 and 5.7e-7), ``ok_beyond_3sigma_clean`` (the same on stars
    whose reference error in ``label_errs`` is below its median), ``hot_ok_beyond_3sigma``
    (on the rows of the ``hot`` mask), ``cov1`` / ``cov2`` and, with ``ci95_X`` /
    ``ci997_X``, ``ok_outside_ci95`` / ``ok_outside_ci997`` (a Gaussian: 0.05 / 0.0027).
    ``rows_ok_fraction``: rows with no flag but ``label_not_reported``."""
    from kielnet.quality.flags import FLAG_BITS, usable_mask
    from kielnet.quality.neighbours import INTERVAL_PREFIXES

    flags = np.asarray(cat["flag"], dtype=np.int64)
    other = flags & ~np.int64(1 << FLAG_BITS["label_not_reported"])
    out: dict = {"rows": int(len(flags)), "rows_ok_fraction": float(np.mean(other == 0)) if len(flags) else None,
                 "rows_status_ok_fraction": float(np.mean(flags == 0)) if len(flags) else None,
                 "definition": "ok = the label is reported and the row has no flag except label_not_reported; "
                               "fractions of those ok rows with a finite reference label"}
    for name in names:
        v, s = _col(cat, name), _col(cat, f"sigma_{name}")
        t = np.asarray(truth[name], dtype=float)
        use = usable_mask(flags, v)
        ok = use & np.isfinite(t) & np.isfinite(s)
        z = np.abs(v - t) / s

        def frac(mask, k):
            m = ok & mask
            return float(np.mean(z[m] > k)) if m.any() else None

        every = np.ones(len(v), dtype=bool)
        d = {"ok_fraction": float(np.mean(use)), "n_ok": int(ok.sum()),
             "ok_beyond_3sigma": frac(every, 3.0), "ok_beyond_5sigma": frac(every, 5.0),
             "cov1": float(np.mean(z[ok] < 1)) if ok.any() else None,
             "cov2": float(np.mean(z[ok] < 2)) if ok.any() else None}
        if label_errs is not None and name in label_errs:
            e = np.asarray(label_errs[name], dtype=float)
            fin = np.isfinite(e) & np.isfinite(t)
            if fin.any():
                clean = fin & (e < np.median(e[fin]))
                d["ok_beyond_3sigma_clean"] = frac(clean, 3.0)
                d["ok_beyond_5sigma_clean"] = frac(clean, 5.0)
        if hot is not None:
            d["n_hot_ok"] = int((ok & hot).sum())
            d["hot_ok_beyond_3sigma"] = frac(np.asarray(hot, dtype=bool), 3.0)
        for pre in INTERVAL_PREFIXES:
            if f"{pre}_{name}" in cat.colnames:
                c = _col(cat, f"{pre}_{name}")
                m = ok & np.isfinite(c)
                d[f"ok_outside_{pre}"] = float(np.mean(np.abs(v - t)[m] > c[m])) if m.any() else None
        out[name] = d
    return out


def withheld_by(reasons, name: str, reason: str) -> np.ndarray:
    """(n,) bool: the ``not_reported`` strings (``"fe_h:support,teff:rule+tails"``,
    :func:`kielnet.inference.predict.not_reported_reasons`) that withhold label ``name``
    for ``reason`` (``rule``, ``support`` or ``tails``)."""
    def hit(r: str) -> bool:
        for item in r.split(","):
            label, _, why = item.partition(":")
            if label == name and reason in why.split("+"):
                return True
        return False

    return np.fromiter((hit(str(r)) for r in reasons), dtype=bool, count=len(reasons))


def support_metrics(cat, truth: dict, names: list[str], *, min_support: float | None = None) -> dict:
    """Label support on a labelled catalogue, per label: ``n_withheld`` (rows whose
    ``not_reported`` names the label for lack of support), ``n_reported_outside_support``
    (reported although ``support_X`` < ``min_support``: the rule broken; must be 0),
    ``n_withheld_with_reference`` (withheld though the star has a reference value) and
    ``n_reported_without_reference`` (reported where the star has none, with the reference
    Teff range of those stars when ``teff`` is in ``truth``)."""
    reasons = np.asarray(cat["not_reported"]).astype(str) if "not_reported" in cat.colnames else None
    out: dict = {}
    for name in names:
        v = _col(cat, name)
        t = np.asarray(truth[name], dtype=float)
        withheld = withheld_by(reasons, name, "support") if reasons is not None else np.zeros(len(v), dtype=bool)
        d = {"n_withheld": int(withheld.sum()),
             "n_withheld_with_reference": int((withheld & np.isfinite(t)).sum())}
        if f"support_{name}" in cat.colnames and min_support is not None:
            sup = _col(cat, f"support_{name}")
            with np.errstate(invalid="ignore"):
                d["n_reported_outside_support"] = int((np.isfinite(v) & (sup < min_support)).sum())
        without = np.isfinite(v) & ~np.isfinite(t)
        d["n_reported_without_reference"] = int(without.sum())
        if "teff" in truth and without.any():
            te = np.asarray(truth["teff"], dtype=float)[without]
            te = te[np.isfinite(te)]
            if te.size:
                d["reported_without_reference_teff_range"] = [float(te.min()), float(te.max())]
        out[name] = d
    return out


def flag_metrics(cat, truth: dict, names: list[str], bits: list[str]) -> dict:
    """Per flag bit: the fraction of rows it flags and, where the row still has labels
    and σ, its ``false_flag_rate``: the fraction of flagged rows with every finite
    reference label within 3σ (flagged although nothing was wrong by that measure)."""
    from kielnet.quality.flags import flag_names

    bit_of = {v: k for k, v in flag_names(names).items()}  # including outside_training_<label>
    flags = np.asarray(cat["flag"], dtype=np.int64)
    beyond = np.zeros(len(flags), dtype=bool)
    judged = np.zeros(len(flags), dtype=bool)
    for name in names:
        z = np.abs(_col(cat, name) - np.asarray(truth[name], dtype=float)) / _col(cat, f"sigma_{name}")
        fin = np.isfinite(z)
        judged |= fin
        beyond |= fin & (z > 3)
    out = {}
    for b in bits:
        f = (flags >> bit_of[b]) & 1 == 1
        m = f & judged
        out[b] = {"fraction": float(np.mean(f)) if len(f) else None, "n": int(f.sum()),
                  "false_flag_rate": float(np.mean(~beyond[m])) if m.any() else None,
                  "beyond_3sigma_rate_flagged": float(np.mean(beyond[m])) if m.any() else None,
                  "beyond_3sigma_rate_unflagged": float(np.mean(beyond[~f & judged])) if (~f & judged).any()
                  else None}
    return out
