"""Uncertainties of ensemble predictions.

* internal (model-to-model) σ: the standard deviation of the members' predictions;
* running dispersion (Gaia-RVS §3.4): the robust scatter (:func:`kielnet.stats.robust_sigma`,
  the normal-consistent MAD) of held-out
  residuals (prediction − reference) in bins of the *predicted* label, fitted with a
  low-order polynomial so that it can be evaluated for any new star;
* total σ = internal ⊕ running dispersion (quadrature sum).

Fits are plain dicts of floats, so they live in a bundle's JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kielnet.stats import robust_sigma

__all__ = ["RunningDispersion", "fit_running_dispersion", "total_sigma"]


@dataclass
class RunningDispersion:
    """σ(x) = polynomial(x) evaluated with x clipped to the fitted range, floored at ``floor``.

    ``coeffs`` are numpy ``polyval`` coefficients (highest power first), in the label's
    physical unit; ``x_range`` is the range of bin centres used in the fit.
    """

    coeffs: list[float]
    x_range: tuple[float, float]
    floor: float
    bins: list[tuple[float, float, int]]  # (centre, sigma, n) used in the fit, for diagnostics

    def __call__(self, x: np.ndarray) -> np.ndarray:
        xc = np.clip(np.asarray(x, dtype=float), *self.x_range)
        out = np.polyval(self.coeffs, xc)
        out = np.maximum(out, self.floor)
        return np.where(np.isfinite(x), out, np.nan)

    def to_dict(self) -> dict:
        return {"coeffs": list(map(float, self.coeffs)), "x_range": list(self.x_range),
                "floor": float(self.floor), "bins": [list(b) for b in self.bins]}

    @classmethod
    def from_dict(cls, d: dict) -> "RunningDispersion":
        return cls(coeffs=list(d["coeffs"]), x_range=tuple(d["x_range"]), floor=float(d["floor"]),
                   bins=[tuple(b) for b in d["bins"]])


def fit_running_dispersion(predicted: np.ndarray, residual: np.ndarray, *, n_bins: int = 20,
                           degree: int = 3, min_per_bin: int = 20,
                           internal: np.ndarray | None = None) -> RunningDispersion:
    """Fit the running robust dispersion of ``residual`` as a function of ``predicted``.

    Bins are quantiles of ``predicted`` (equal counts), each with at least
    ``min_per_bin`` stars. If ``internal`` (the members' σ for the same stars) is
    given, the fitted quantity is the part of the scatter *not* already explained by
    it — sqrt(max(σ_bin² − median(internal_bin)², 0)) — so that internal ⊕ running
    reproduces the observed scatter rather than exceeding it.
    """
    x = np.asarray(predicted, dtype=float)
    r = np.asarray(residual, dtype=float)
    ok = np.isfinite(x) & np.isfinite(r)
    if internal is not None:
        internal = np.asarray(internal, dtype=float)
        ok &= np.isfinite(internal)
    x, r = x[ok], r[ok]
    if internal is not None:
        internal = internal[ok]
    if x.size < 2 * min_per_bin:
        s = robust_sigma(r) if x.size else 0.0
        s = 0.0 if not np.isfinite(s) else s
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        return RunningDispersion([s], (lo, hi), s, [(float(np.median(x)) if x.size else 0.0, s, int(x.size))])
    n_b = int(max(1, min(n_bins, x.size // min_per_bin)))
    edges = np.quantile(x, np.linspace(0, 1, n_b + 1))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_b - 1)
    bins = []
    for b in range(n_b):
        sel = which == b
        if sel.sum() < min_per_bin // 2:
            continue
        s = robust_sigma(r[sel])
        if internal is not None:
            s = float(np.sqrt(max(s ** 2 - np.median(internal[sel]) ** 2, 0.0)))
        bins.append((float(np.median(x[sel])), s, int(sel.sum())))
    centres = np.array([b[0] for b in bins])
    sig = np.array([b[1] for b in bins])
    cnt = np.array([b[2] for b in bins], dtype=float)
    deg = int(min(degree, max(len(bins) - 1, 0)))
    coeffs = np.polyfit(centres, sig, deg, w=np.sqrt(cnt)) if len(bins) > 1 else np.array([sig[0]])
    floor = float(max(0.25 * np.min(sig), 0.0))
    return RunningDispersion([float(c) for c in coeffs], (float(centres.min()), float(centres.max())),
                             floor, [tuple(b) for b in bins])


def total_sigma(internal: np.ndarray, running: np.ndarray) -> np.ndarray:
    """Quadrature sum ``sqrt(internal² + running²)``."""
    return np.hypot(np.asarray(internal, dtype=float), np.asarray(running, dtype=float))
