"""Accuracy and calibration metrics of predicted labels against reference labels.

Residual = predicted − reference, in the label's unit (Teff in K).
"""

from __future__ import annotations

import numpy as np

from kielnet.quality.uncertainty import robust_sigma

__all__ = ["label_metrics", "metrics_table", "REGIMES", "regime_masks", "coverage_summary", "calibration_report",
           "worst_bin", "CURVE_K", "G_BINS"]


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
REGIMES = {
    "teff_gt_7000": lambda lab, sc: lab["teff"] > 7000,
    "logg_lt_1": lambda lab, sc: lab["logg"] < 1,
    "feh_lt_m1": lambda lab, sc: lab["fe_h"] < -1,
    "cool_dwarfs_teff_lt_4000": lambda lab, sc: (lab["teff"] < 4000) & (lab["logg"] > 4.0),
    "apogee_snr_lt_50": lambda lab, sc: sc["snr"] < 50,
    "apogee_snr_lt_30": lambda lab, sc: sc["snr"] < 30,
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
    for sec in ("snr_bins", "g_bins", "regimes"):
        cands += [(f"{sec}.{k}", v) for k, v in report.get(sec, {}).items()]
    best = {"bin": None, "n": 0, "cov1": None, "deviation": 0.0}
    for name, v in cands:
        if v["n"] >= min_n and v["cov1"] is not None and abs(v["cov1"] - target) >= abs(best["deviation"]):
            best = {"bin": name, "n": v["n"], "cov1": v["cov1"], "deviation": v["cov1"] - target}
    return best
