"""The papers' validation figures for any catalogue, one function per figure (PNG).

Every function takes plain arrays (labels in physical units: Teff in K, log g, [M/H],
[α/M] in dex; S/N dimensionless), draws densities (``hexbin``) so that 10^6 stars stay
legible, skips non-finite values and returns the path of the PNG it wrote. Only values
the caller passes as finite are drawn: the report (:mod:`kielnet.diagnostics.report`)
sets withheld labels and rows whose ``status`` is not ``ok`` to NaN first.

No pyplot and no backend switch: figures are :class:`matplotlib.figure.Figure` objects
rendered by :class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`. Figure numbers
refer to Guiglion, Nepal et al. (2024), the Gaia-RVS hybrid CNN.
"""

from __future__ import annotations

from math import erf, sqrt
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from kielnet.diagnostics.metrics import CURVE_K, calibration_report, label_metrics
from kielnet.labels import display_name

__all__ = ["save_png", "snr_bins", "kiel_by_snr", "residual_density", "sigma_vs_label", "sigma_vs_snr",
           "calibration_figure", "correlation_matrix", "alpha_vs_metal_kiel_bins", "alpha_vs_metal_rz",
           "flag_statistics", "seismic_comparison", "cluster_comparison"]

#: axis names of the usual labels
#: S/N bins of Gaia-RVS Fig. 11
RVS_SNR_EDGES = (15.0, 25.0, 35.0, 75.0, np.inf)
GRID = 70  # hexagons across an axis, at most


def _grid(n: int) -> int:
    """Hexagons across an axis for ``n`` stars: fewer for small samples, :data:`GRID` from ~10^4."""
    return int(np.clip(np.sqrt(max(n, 1)) / 1.5, 20, GRID))


def _name(label: str, units: dict[str, str] | None = None) -> str:
    u = (units or {}).get(label, "")
    return display_name(label) + (f" [{u}]" if u else "")


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG to ``path`` (parent folders created) with the Agg canvas."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png")
    return path


def _f(x) -> np.ndarray:
    return np.asarray(np.ma.filled(np.ma.asarray(x, dtype=float), np.nan), dtype=float)


def _empty(ax, text: str = "no values to draw") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _extent(x: np.ndarray, y: np.ndarray, q: tuple[float, float]) -> tuple[float, ...] | None:
    """Hexbin extent from the ``q`` percentiles of the finite ``x`` and ``y`` (None when
    there is nothing, or a side would have zero width)."""
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if not (x.size and y.size):
        return None
    ext = (*np.percentile(x, q), *np.percentile(y, q))
    return None if ext[0] == ext[1] or ext[2] == ext[3] else ext


def _hex_by_value(ax, x: np.ndarray, y: np.ndarray, c: np.ndarray, *, gridsize: int, extent, cmap: str,
                  vmin: float | None = None, vmax: float | None = None):
    """Hexagons coloured by the median ``c`` of their points; points without a finite ``c``
    (a withheld label) are a grey density underneath, never dropped and never coloured.
    Returns the coloured collection (None without one) and the (coloured, grey) counts."""
    fin = np.isfinite(c)
    grey, col = ~fin, fin
    coll = None
    if grey.any():
        ax.hexbin(x[grey], y[grey], gridsize=gridsize, cmap="Greys", bins="log", mincnt=1, extent=extent,
                  alpha=0.6, linewidths=0)
    if col.any():
        coll = ax.hexbin(x[col], y[col], C=c[col], reduce_C_function=np.median, gridsize=gridsize, cmap=cmap,
                         vmin=vmin, vmax=vmax, mincnt=1, extent=extent, linewidths=0)
    return coll, (int(col.sum()), int(grey.sum()))


def snr_bins(snr: np.ndarray, edges: Sequence[float] | None = None) -> list[tuple[str, np.ndarray]]:
    """(name, mask) of S/N bins: ``edges`` (default the Gaia-RVS Fig. 11 bins 15–25, 25–35,
    35–75, ≥75 when most stars are above 15, else quartiles of the finite S/N). Every star is
    in one bin: those below the first edge, above the last or without an S/N get bins of
    their own, listed only when they hold a star."""
    s = _f(snr)
    fin = np.isfinite(s)
    if not fin.any():
        return []
    if edges is None:
        edges = RVS_SNR_EDGES if np.mean(s[fin] >= 15) > 0.9 else tuple(np.quantile(s[fin], [0, .25, .5, .75, 1]))
    out = []
    with np.errstate(invalid="ignore"):
        below, above = fin & (s < edges[0]), fin & (s > edges[-1])
    if below.any():
        out.append((f"S/N < {edges[0]:.0f}", below))
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = k == len(edges) - 2
        with np.errstate(invalid="ignore"):
            m = fin & (s >= lo) & ((s <= hi) if last else (s < hi))
        name = f"S/N ≥ {lo:.0f}" if not np.isfinite(hi) else f"{lo:.0f} ≤ S/N {'≤' if last else '<'} {hi:.0f}"
        out.append((name, m))
    if above.any():
        out.append((f"S/N > {edges[-1]:.0f}", above))
    if not fin.all():
        out.append(("no S/N", ~fin))
    return out


def _kiel_axes(ax) -> None:
    ax.invert_xaxis()
    ax.invert_yaxis()
    ax.set_xlabel(_name("teff", {"teff": "K"}))
    ax.set_ylabel(_name("logg", {"logg": "dex"}))


def kiel_by_snr(teff, logg, metal, path: str | Path, *, snr=None, metal_name: str = "fe_h",
                snr_edges: Sequence[float] | None = None, title: str = "Kiel diagrams") -> Path:
    """Gaia-RVS Fig. 11: log g vs Teff in S/N bins, hexagons coloured by the median
    metallicity (dex) of their stars; stars with Teff and log g but no metallicity (withheld)
    are drawn as a grey density underneath, never coloured. Teff in K, log g in dex."""
    t, g, m = _f(teff), _f(logg), _f(metal)
    pos = np.isfinite(t) & np.isfinite(g)
    bins = snr_bins(snr, snr_edges) if snr is not None else []
    bins = [(n, b) for n, b in bins if (b & pos).any()] or [("all S/N", np.ones(t.size, bool))]
    n = len(bins)
    fig = Figure(layout="constrained", figsize=(4.2 * n + 1.2, 4.4), dpi=110)
    axes = fig.subplots(1, n, sharex=True, sharey=True, squeeze=False)[0]
    extent = _extent(t[pos], g[pos], (0.1, 99.9))
    coll = None
    for ax, (name, b) in zip(axes, bins):
        s = b & pos
        drawn, (n_col, n_grey) = _hex_by_value(ax, t[s], g[s], m[s], gridsize=_grid(int(s.sum())), extent=extent,
                                               cmap="viridis", vmin=-2.0, vmax=0.5)
        coll = drawn if drawn is not None else coll
        if not s.any():
            _empty(ax)
        ax.set_title(f"{name} ({n_col} + {n_grey} grey)", fontsize=9)
    _kiel_axes(axes[0])
    for ax in axes[1:]:
        ax.set_xlabel(_name("teff", {"teff": "K"}))
    if coll is not None:
        fig.colorbar(coll, ax=list(axes), label=f"median {_name(metal_name, {metal_name: 'dex'})}")
    fig.suptitle(f"{title}: coloured by {display_name(metal_name)}; grey: no {display_name(metal_name)}"
                 " reported", fontsize=10)
    return save_png(fig, path)


def _running(x: np.ndarray, y: np.ndarray, n_bins: int = 20, min_n: int = 10):
    """Median and 16/84 % of ``y`` in quantile bins of ``x``."""
    if x.size < 2 * min_n:
        return None
    edges = np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)))
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    mid, lo, med, hi = [], [], [], []
    for k in range(len(edges) - 1):
        sel = idx == k
        if sel.sum() >= min_n:
            a, b, c = np.percentile(y[sel], [16, 50, 84])
            mid.append(np.median(x[sel])); lo.append(a); med.append(b); hi.append(c)
    return (np.array(mid), np.array(lo), np.array(med), np.array(hi)) if mid else None


def residual_density(pred: dict[str, np.ndarray], ref: dict[str, np.ndarray], path: str | Path, *,
                     units: dict[str, str] | None = None, ref_name: str = "reference") -> Path:
    """Gaia-RVS Fig. 7: per label, the density (log counts) of residual (catalogue −
    reference) against the reference label, the running median and 16–84 % band, and
    bias (median), robust σ (1.4826 MAD) and n in the panel. Units as the labels'."""
    names = [n for n in pred if n in ref]
    fig = Figure(layout="constrained", figsize=(4.3 * max(len(names), 1), 4.0), dpi=110)
    axes = fig.subplots(1, max(len(names), 1), squeeze=False)[0]
    for ax, name in zip(axes, names):
        x, y = _f(ref[name]), _f(pred[name])
        ok = np.isfinite(x) & np.isfinite(y)
        r = y[ok] - x[ok]
        u = f" [{units[name]}]" if units and units.get(name) else ""
        ax.set_xlabel(f"{ref_name} {_name(name)}{u}")
        ax.set_ylabel(f"Δ{_name(name)} (catalogue − {ref_name}){u}", fontsize=8)
        if not ok.any():
            _empty(ax)
            continue
        lim = float(np.nanpercentile(np.abs(r), 99.5)) or 1.0
        xlo, xhi = np.percentile(x[ok], [0.2, 99.8])
        if xlo == xhi:
            xlo, xhi = xlo - 1, xhi + 1
        hb = ax.hexbin(x[ok], np.clip(r, -lim, lim), gridsize=_grid(int(ok.sum())), bins="log", mincnt=1, cmap="magma_r",
                       extent=(xlo, xhi, -lim, lim), linewidths=0)
        run = _running(x[ok], r)
        if run is not None:
            ax.plot(run[0], run[2], color="C0", lw=1.2)
            ax.fill_between(run[0], run[1], run[3], color="C0", alpha=0.2)
        ax.axhline(0, color="k", lw=0.7)
        m = label_metrics(y, x)
        ax.text(0.03, 0.96, f"bias {m['bias']:.3g}\nσ {m['robust_sigma']:.3g}\nn {m['n']}", transform=ax.transAxes,
                va="top", fontsize=8, bbox=dict(boxstyle="round", fc="white", alpha=0.8))
        fig.colorbar(hb, ax=ax, label="stars", shrink=0.8)
    if not names:
        _empty(axes[0], "no reference labels")
    fig.suptitle(f"residuals against {ref_name} labels (σ: 1.4826 MAD)", fontsize=10)
    return save_png(fig, path)


def sigma_vs_label(values: dict[str, np.ndarray], sigma: dict[str, np.ndarray], path: str | Path, *,
                   units: dict[str, str] | None = None, kind: str = "sigma") -> Path:
    """Gaia-RVS Figs. 8 / 13: per label, the density of its uncertainty (``sigma_X``, same
    unit as the label) against the label, with the running median."""
    names = [n for n in values if n in sigma]
    fig = Figure(layout="constrained", figsize=(4.2 * max(len(names), 1), 3.8), dpi=110)
    axes = fig.subplots(1, max(len(names), 1), squeeze=False)[0]
    for ax, name in zip(axes, names):
        x, s = _f(values[name]), _f(sigma[name])
        ok = np.isfinite(x) & np.isfinite(s) & (s > 0)
        ax.set_xlabel(_name(name, units))
        ax.set_ylabel(f"{kind}({display_name(name)})" + (f" [{units[name]}]" if units and units.get(name) else ""))
        if not ok.any():
            _empty(ax)
            continue
        ax.hexbin(x[ok], s[ok], gridsize=_grid(int(ok.sum())), bins="log", mincnt=1, cmap="viridis", yscale="log", linewidths=0)
        run = _running(x[ok], s[ok])
        if run is not None:
            ax.plot(run[0], run[2], color="C3", lw=1.2, label="median")
        ax.set_title(f"median {np.median(s[ok]):.3g}, n {int(ok.sum())}", fontsize=9)
    return save_png(fig, path)


def sigma_vs_snr(sigma: dict[str, np.ndarray], snr, path: str | Path, *, units: dict[str, str] | None = None,
                 snr_name: str = "S/N") -> Path:
    """Gaia-RVS Fig. 16: per label, the density of its uncertainty against the S/N
    (log–log), with the running median."""
    s_n = _f(snr)
    names = list(sigma)
    fig = Figure(layout="constrained", figsize=(4.2 * max(len(names), 1), 3.8), dpi=110)
    axes = fig.subplots(1, max(len(names), 1), squeeze=False)[0]
    for ax, name in zip(axes, names):
        s = _f(sigma[name])
        ok = np.isfinite(s) & (s > 0) & np.isfinite(s_n) & (s_n > 0)
        ax.set_xlabel(snr_name)
        ax.set_ylabel(f"σ({display_name(name)})" + (f" [{units[name]}]" if units and units.get(name) else ""))
        if not ok.any():
            _empty(ax)
            continue
        ax.hexbin(s_n[ok], s[ok], gridsize=_grid(int(ok.sum())), bins="log", mincnt=1, cmap="viridis", xscale="log", yscale="log",
                  linewidths=0)
        run = _running(s_n[ok], s[ok])
        if run is not None:
            ax.plot(run[0], run[2], color="C3", lw=1.2)
    return save_png(fig, path)


def calibration_figure(pred: dict[str, np.ndarray], ref: dict[str, np.ndarray], sigma: dict[str, np.ndarray],
                       path: str | Path, *, snr=None) -> Path:
    """Calibration of the σ per label: top, the fraction of stars with |residual| < kσ
    against k, overall and per S/N quartile, with the Gaussian expectation; bottom, the
    1σ and 2σ coverage in each S/N quartile (targets 0.683 and 0.954)."""
    names = [n for n in pred if n in ref and n in sigma]
    fig = Figure(layout="constrained", figsize=(4.0 * max(len(names), 1), 6.6), dpi=110)
    axes = fig.subplots(2, max(len(names), 1), squeeze=False)
    ks = np.array(CURVE_K)
    kk = np.linspace(0, max(ks), 60)
    for j, name in enumerate(names):
        top, bot = axes[0, j], axes[1, j]
        p, r, s = _f(pred[name]), _f(ref[name]), _f(sigma[name])
        rep = calibration_report(p, r, s, snr=None if snr is None else _f(snr))
        top.plot(kk, [erf(k / sqrt(2)) for k in kk], color="k", lw=0.8, ls="--", label="Gaussian")
        curve = [rep["curve"][str(k)] for k in ks]
        if curve[0] is None:
            _empty(top)
            _empty(bot)
            continue
        top.plot(ks, curve, "o-", color="C0", label=f"all (n {rep['overall']['n']})")
        res = p - r
        for q, (bname, b) in enumerate(rep.get("snr_bins", {}).items()):
            m = np.isfinite(res) & np.isfinite(s) & _snr_mask(snr, bname)
            if m.sum():
                top.plot(ks, [np.mean(np.abs(res[m]) < k * s[m]) for k in ks], ".-", lw=0.8, color=f"C{q + 1}",
                         label=bname.replace("_", " "))
        top.set_xlabel("k"); top.set_ylabel("fraction with |Δ| < kσ")
        top.set_title(display_name(name)); top.legend(fontsize=6)
        bins = rep.get("snr_bins", {})
        if bins:
            labels = list(bins)
            x = np.arange(len(labels))
            bot.bar(x - 0.2, [np.nan if bins[b]["cov1"] is None else bins[b]["cov1"] for b in labels], 0.4, label="1σ")
            bot.bar(x + 0.2, [np.nan if bins[b]["cov2"] is None else bins[b]["cov2"] for b in labels], 0.4, label="2σ")
            bot.set_xticks(x)
            bot.set_xticklabels([b.split("_", 1)[1].replace("_", "–") for b in labels], fontsize=7)
            bot.set_xlabel("S/N quartile")
        else:
            bot.bar([0, 1], [rep["overall"]["cov1"], rep["overall"]["cov2"]], 0.5, color=["C0", "C1"])
            bot.set_xticks([0, 1]); bot.set_xticklabels(["1σ", "2σ"])
        bot.axhline(0.6827, color="C0", ls="--", lw=0.8)
        bot.axhline(0.9545, color="C1", ls="--", lw=0.8)
        bot.set_ylim(0, 1.05); bot.set_ylabel("coverage")
    if not names:
        _empty(axes[0, 0], "no reference labels with σ")
    return save_png(fig, path)


def _snr_mask(snr, bname: str) -> np.ndarray:
    """The mask of a ``q{k}_{lo}_{hi}`` S/N quartile bin of :func:`calibration_report`."""
    s = _f(snr)
    fin = np.isfinite(s)
    edges = np.quantile(s[fin], [0.0, 0.25, 0.5, 0.75, 1.0])
    k = int(bname[1]) - 1
    lo, hi = edges[k], edges[k + 1]
    return fin & (s >= lo) & ((s < hi) if k < 3 else (s <= hi))


def correlation_matrix(columns: dict[str, np.ndarray], path: str | Path, *, method: str = "spearman") -> Path:
    """Gaia-RVS Fig. 5: the correlation matrix of labels and inputs (Spearman rank by
    default, or Pearson), each pair over the stars where both are finite; values written
    in the cells."""
    from scipy.stats import rankdata

    names = list(columns)
    k = len(names)
    data = [_f(columns[n]) for n in names]
    corr = np.full((k, k), np.nan)
    for a in range(k):
        for b in range(a, k):
            ok = np.isfinite(data[a]) & np.isfinite(data[b])
            if ok.sum() > 2:
                x, y = data[a][ok], data[b][ok]
                if method == "spearman":
                    x, y = rankdata(x), rankdata(y)
                if x.std() > 0 and y.std() > 0:
                    corr[a, b] = corr[b, a] = float(np.corrcoef(x, y)[0, 1])
    size = max(4.5, 0.45 * k + 2)
    fig = Figure(layout="constrained", figsize=(size + 1, size), dpi=110)
    ax = fig.subplots()
    im = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(k)); ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticks(range(k)); ax.set_yticklabels(names, fontsize=7)
    if k <= 24:
        for a in range(k):
            for b in range(k):
                if np.isfinite(corr[a, b]):
                    ax.text(b, a, f"{corr[a, b]:.2f}", ha="center", va="center", fontsize=5.5,
                            color="white" if abs(corr[a, b]) > 0.6 else "black")
    fig.colorbar(im, ax=ax, label=f"{method} correlation")
    ax.set_title("correlations of labels and inputs", fontsize=10)
    return save_png(fig, path)


def _plane(ax, x: np.ndarray, y: np.ndarray, extent) -> int:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum():
        ax.hexbin(x[ok], y[ok], gridsize=max(12, _grid(int(ok.sum())) // 2), bins="log", mincnt=1, cmap="viridis", extent=extent, linewidths=0)
    else:
        _empty(ax, "no stars")
    return int(ok.sum())


def alpha_vs_metal_kiel_bins(teff, logg, metal, alpha, path: str | Path, *, metal_name: str = "m_h",
                             teff_step: float = 500.0, logg_step: float = 1.0, max_panels: int = 16,
                             min_stars: int = 20) -> Path:
    """Gaia-RVS Fig. 14: [α/M] vs [M/H] (dex) densities in Teff × log g cells (500 K × 1 dex
    by default; the ``max_panels`` most populated cells with ≥ ``min_stars`` stars)."""
    t, g, m, a = _f(teff), _f(logg), _f(metal), _f(alpha)
    ok = np.isfinite(t) & np.isfinite(g) & np.isfinite(m) & np.isfinite(a)
    cells: dict[tuple[float, float], np.ndarray] = {}
    if ok.any():
        ti = np.floor(t / teff_step) * teff_step
        gi = np.floor(g / logg_step) * logg_step
        keys, inv, counts = np.unique(np.stack([ti[ok], gi[ok]], 1), axis=0, return_inverse=True, return_counts=True)
        idx = np.flatnonzero(ok)
        for c in np.argsort(-counts)[:max_panels]:
            if counts[c] >= min_stars:
                cells[(float(keys[c, 0]), float(keys[c, 1]))] = idx[inv.reshape(-1) == c]
    keys_sorted = sorted(cells, key=lambda kv: (kv[1], -kv[0]))
    n = max(len(keys_sorted), 1)
    ncol = min(4, n)
    nrow = -(-n // ncol)
    fig = Figure(layout="constrained", figsize=(max(3.3 * ncol, 5.6), 2.9 * nrow + 0.6), dpi=110)
    axes = np.atleast_1d(fig.subplots(nrow, ncol, sharex=True, sharey=True, squeeze=False).ravel())
    extent = _extent(m[ok], a[ok], (0.5, 99.5)) if ok.sum() > 1 else None
    for ax, key in zip(axes, keys_sorted):
        sel = cells[key]
        cnt = _plane(ax, m[sel], a[sel], extent)
        ax.set_title(f"{key[0]:.0f}–{key[0] + teff_step:.0f} K, log g {key[1]:.1f}–{key[1] + logg_step:.1f} ({cnt})",
                     fontsize=7)
    if not keys_sorted:
        _empty(axes[0], f"no Teff-log g cell with ≥ {min_stars} stars having both labels")
    for ax in axes[len(keys_sorted):] if keys_sorted else axes[1:]:
        ax.set_visible(False)
    for ax in axes[-ncol:]:
        ax.set_xlabel(_name(metal_name, {metal_name: "dex"}))
    for ax in axes[::ncol]:
        ax.set_ylabel(_name("alpha_m", {"alpha_m": "dex"}))
    shown = sum(len(v) for v in cells.values())
    fig.suptitle(f"[α/M] vs {display_name(metal_name)} in cells of {teff_step:.0f} K × {logg_step:g} dex:\n"
                 f"{shown} of the {int(ok.sum())} stars with both labels (the fullest cells with ≥ {min_stars})",
                 fontsize=10)
    return save_png(fig, path)


def alpha_vs_metal_rz(r_kpc, z_kpc, metal, alpha, path: str | Path, *, metal_name: str = "m_h",
                      r_edges: Sequence[float] = (0, 4, 6, 8, 10, 12, 20),
                      z_edges: Sequence[float] = (0, 0.5, 1.0, 1.5, 4.0)) -> Path:
    """Gaia-RVS Fig. 24: [α/M] vs [M/H] (dex) densities in bins of Galactocentric radius R
    (columns) and height |Z| (rows, highest at the top), both in kpc."""
    r, z, m, a = _f(r_kpc), np.abs(_f(z_kpc)), _f(metal), _f(alpha)
    ok = np.isfinite(r) & np.isfinite(z) & np.isfinite(m) & np.isfinite(a)
    nr, nz = len(r_edges) - 1, len(z_edges) - 1
    fig = Figure(layout="constrained", figsize=(2.6 * nr, 2.3 * nz + 0.6), dpi=110)
    axes = fig.subplots(nz, nr, sharex=True, sharey=True, squeeze=False)
    extent = _extent(m[ok], a[ok], (0.5, 99.5)) if ok.sum() > 1 else None
    for iz in range(nz):
        for ir in range(nr):
            ax = axes[nz - 1 - iz, ir]
            sel = ok & (r >= r_edges[ir]) & (r < r_edges[ir + 1]) & (z >= z_edges[iz]) & (z < z_edges[iz + 1])
            cnt = _plane(ax, m[sel], a[sel], extent)
            ax.set_title(f"{r_edges[ir]:g}<R<{r_edges[ir + 1]:g}, {z_edges[iz]:g}<|Z|<{z_edges[iz + 1]:g} ({cnt})",
                         fontsize=6.5)
    for ax in axes[-1]:
        ax.set_xlabel(_name(metal_name, {metal_name: "dex"}))
    for ax in axes[:, 0]:
        ax.set_ylabel(_name("alpha_m", {"alpha_m": "dex"}))
    inside = ok & (r >= r_edges[0]) & (r < r_edges[-1]) & (z >= z_edges[0]) & (z < z_edges[-1])
    fig.suptitle(f"[α/M] vs [M/H] in Galactocentric R, |Z| bins (kpc; R0 = 8.19 kpc):\n{int(inside.sum())} of the "
                 f"{int(ok.sum())} stars with both labels and a position", fontsize=10)
    return save_png(fig, path)


def flag_statistics(bit_counts: dict[str, int], status_counts: dict[str, int], n_rows: int,
                    path: str | Path, *, max_status: int = 15) -> Path:
    """Rows per flag bit (left) and per ``status`` value (right, the most frequent
    ``max_status``), as horizontal bars with counts and percentages of ``n_rows``."""
    fig = Figure(layout="constrained", figsize=(12, max(3.0, 0.32 * max(len(bit_counts), min(len(status_counts), max_status)) + 1.2)),
                 dpi=110)
    ax1, ax2 = fig.subplots(1, 2)
    for ax, counts, title in ((ax1, bit_counts, "rows with each flag bit set"),
                              (ax2, dict(sorted(status_counts.items(), key=lambda kv: -kv[1])[:max_status]),
                               "rows per status")):
        names = list(counts)
        vals = np.array([counts[k] for k in names], dtype=float)
        y = np.arange(len(names))
        ax.barh(y, vals, color="C0")
        ax.set_yticks(y)
        ax.set_yticklabels([n if len(n) < 48 else n[:45] + "…" for n in names], fontsize=7)
        ax.invert_yaxis()
        for yy, v in zip(y, vals):
            ax.text(v, yy, f" {int(v)} ({100 * v / max(n_rows, 1):.1f}%)", va="center", fontsize=7)
        ax.set_xlim(0, max(vals.max() if vals.size else 1, 1) * 1.35)
        ax.set_title(title, fontsize=9)
        if not names:
            _empty(ax, "none")
    fig.suptitle(f"flags and status of {n_rows} rows", fontsize=10)
    return save_png(fig, path)


def seismic_comparison(logg_pred, logg_seismic, path: str | Path, *, teff=None) -> Path:
    """Gaia-RVS §6: catalogue log g against asteroseismic log g (dex), one-to-one line,
    bias and robust σ of the difference; coloured by Teff (K) when given."""
    x, y = _f(logg_seismic), _f(logg_pred)
    ok = np.isfinite(x) & np.isfinite(y)
    fig = Figure(layout="constrained", figsize=(5.2, 4.6), dpi=110)
    ax = fig.subplots()
    if ok.any():
        c = None if teff is None else _f(teff)
        if c is not None and np.isfinite(c[ok]).any():
            # no Teff (withheld): grey, never dropped
            hb, (_, n_grey) = _hex_by_value(ax, x[ok], y[ok], c[ok], gridsize=40, cmap="plasma",
                                            extent=_extent(x[ok], y[ok], (0, 100)))
            fig.colorbar(hb, ax=ax, label=r"median $T_{\rm eff}$ [K]" + (" (grey: no Teff)" if n_grey else ""))
        else:
            hb = ax.hexbin(x[ok], y[ok], gridsize=40, bins="log", mincnt=1, cmap="viridis", linewidths=0)
        lo, hi = np.percentile(np.r_[x[ok], y[ok]], [0.5, 99.5])
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        m = label_metrics(y, x)
        ax.set_title(f"Δlog g bias {m['bias']:.3f}, σ {m['robust_sigma']:.3f} dex, n {m['n']}", fontsize=9)
    else:
        _empty(ax, "no star with both log g values")
    ax.set_xlabel(r"asteroseismic $\log g$ [dex]")
    ax.set_ylabel(r"catalogue $\log g$ [dex]")
    return save_png(fig, path)


def cluster_comparison(stats, path: str | Path, *, label: str = "fe_h", reference: dict[str, float] | None = None,
                       max_clusters: int = 40) -> Path:
    """Open clusters: mean ± standard deviation of a label (dex) per cluster (a table from
    :func:`kielnet.diagnostics.external.cluster_metallicity`, most populated first), with
    reference values (e.g. literature [Fe/H]) as crosses when given."""
    rows = sorted(range(len(stats)), key=lambda i: -int(stats["n"][i]))[:max_clusters]
    fig = Figure(layout="constrained", figsize=(max(5, 0.32 * len(rows) + 2), 4.2), dpi=110)
    ax = fig.subplots()
    if rows:
        x = np.arange(len(rows))
        mean = np.array([stats["mean"][i] for i in rows])
        std = np.array([stats["std"][i] for i in rows])
        ax.errorbar(x, mean, yerr=np.nan_to_num(std), fmt="o", color="C0", ms=4, capsize=2, label="mean ± std")
        if reference:
            ref = [reference.get(str(stats["cluster"][i]), np.nan) for i in rows]
            ax.plot(x, ref, "x", color="C3", label="reference")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{stats['cluster'][i]} ({stats['n'][i]})" for i in rows], rotation=90, fontsize=7)
        ax.legend(fontsize=7)
    else:
        _empty(ax, "no cluster members with values")
    ax.set_ylabel(_name(label, {label: "dex"}))
    ax.set_title(f"{display_name(label)} per open cluster", fontsize=10)
    return save_png(fig, path)
