"""Accuracy and calibration metrics of predicted labels against reference labels.

Residual = predicted − reference, in the label's unit (Teff in K).
"""

from __future__ import annotations

import numpy as np

from kielnet.inference.uncertainty import robust_sigma

__all__ = ["label_metrics", "metrics_table", "REGIMES", "regime_masks"]


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
