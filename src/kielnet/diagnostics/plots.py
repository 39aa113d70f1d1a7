"""Diagnostic figures (written as PNG files).

No pyplot and no backend switch: figures are :class:`matplotlib.figure.Figure` objects
rendered by :class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`, so a user's
notebook backend is left alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["kiel_diagram", "residual_plot", "save_figure"]


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Lay out ``fig`` and write it to ``path`` with the Agg canvas (format from the
    suffix, parent folders created)."""
    path = Path(path)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def kiel_diagram(teff: np.ndarray, logg: np.ndarray, feh: np.ndarray, path: str | Path,
                 *, title: str = "kielnet Kiel diagram") -> Path:
    """log g vs Teff (both axes reversed, as astronomers draw it) coloured by [Fe/H].

    Parameters: Teff in K, log g in dex, [Fe/H] in dex. Stars without Teff or log g are
    skipped; stars with both but no [Fe/H] (withheld, e.g. hot stars beyond the reference
    metallicities) are drawn in grey, never left out.
    """
    path = Path(path)
    teff, logg, feh = (np.asarray(a, dtype=float) for a in (teff, logg, feh))
    ok = np.isfinite(teff) & np.isfinite(logg)
    grey = ok & ~np.isfinite(feh)
    col = ok & ~grey
    fig = Figure(figsize=(6.5, 5), dpi=120)
    ax = fig.subplots()
    if grey.any():
        ax.scatter(teff[grey], logg[grey], s=2, color="0.65", rasterized=True, label=f"no [Fe/H] ({grey.sum()})")
    sc = ax.scatter(teff[col], logg[col], c=feh[col], s=2, cmap="viridis", vmin=-2.0, vmax=0.5, rasterized=True)
    ax.invert_xaxis()
    ax.invert_yaxis()
    ax.set_xlabel(r"$T_{\rm eff}$ [K]")
    ax.set_ylabel(r"$\log g$ [dex]")
    ax.set_title(f"{title} ({ok.sum()} stars)")
    if grey.any():
        ax.legend(loc="lower left", markerscale=4, fontsize=8)
    fig.colorbar(sc, ax=ax, label="[Fe/H] [dex]")
    return save_figure(fig, path)


def residual_plot(pred: dict[str, np.ndarray], truth: dict[str, np.ndarray], path: str | Path,
                  *, units: dict[str, str] | None = None) -> Path:
    """One panel per label: residual (predicted − reference) vs reference, with the
    running median and 16–84 % band; title gives bias and robust σ."""
    from kielnet.diagnostics.metrics import label_metrics

    units = units or {}
    names = list(pred)
    fig = Figure(figsize=(4.2 * len(names), 3.6), dpi=110)
    axes = fig.subplots(1, len(names), squeeze=False)
    for ax, name in zip(axes[0], names):
        x, y = np.asarray(truth[name], float), np.asarray(pred[name], float)
        ok = np.isfinite(x) & np.isfinite(y)
        r = y[ok] - x[ok]
        ax.scatter(x[ok], r, s=1.5, alpha=0.35, color="0.3", rasterized=True)
        if ok.sum() > 50:
            edges = np.quantile(x[ok], np.linspace(0, 1, 21))
            mid, q16, q50, q84 = [], [], [], []
            for lo, hi in zip(edges[:-1], edges[1:]):
                sel = (x[ok] >= lo) & (x[ok] <= hi)
                if sel.sum() >= 5:
                    mid.append(np.median(x[ok][sel]))
                    a, b, c = np.percentile(r[sel], [16, 50, 84])
                    q16.append(a); q50.append(b); q84.append(c)
            ax.plot(mid, q50, color="C3")
            ax.fill_between(mid, q16, q84, color="C3", alpha=0.25)
        ax.axhline(0, color="k", lw=0.8)
        m = label_metrics(y, x)
        u = f" [{units[name]}]" if units.get(name) else ""
        ax.set_xlabel(f"reference {name}{u}")
        ax.set_ylabel(f"predicted − reference{u}")
        if m["n"]:
            ax.set_title(f"{name}: bias {m['bias']:.3g}, σ_rob {m['robust_sigma']:.3g}, n={m['n']}", fontsize=9)
        lim = np.nanpercentile(np.abs(r), 99.5) if r.size else 1
        ax.set_ylim(-lim, lim)
    return save_figure(fig, path)
