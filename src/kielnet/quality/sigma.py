"""The per-star σ model: which terms make a star's σ, and how it is calibrated.

A catalogue's ``sigma_X`` is

    σ = quad(terms) × recalibration(X̂, S/N) × missing_input_factor(group)

* ``terms`` (``uncertainty.terms``), added in quadrature: ``spread`` (the members'
  standard deviation; with noise realisations it includes their scatter), ``running``
  (the running dispersion in the predicted label, Gaia-RVS §3.4:
  :mod:`kielnet.quality.uncertainty`) and ``head`` (the network's own σ output of a
  heteroscedastic model, :class:`kielnet.models.hybrid.HybridNet`).
* the **recalibration** (``uncertainty.recalibration``): in cells of predicted-label
  quantiles × S/N quantiles, the factor that makes the fraction of stars with
  |residual| < σ equal to the target (0.6827). It is fitted on *out-of-fold* stars only
  — each split's validation stars, predicted by that split's members, which never
  trained on them — and never on stars a benchmark tests on.
* the **missing-input factor**: for each input group (``config.input_groups`` plus
  ``all_inputs``), the same out-of-fold stars are predicted again with the group's
  columns hidden, and the factor that restores the target coverage is stored. A star
  with missing scalar inputs gets the factor of the smallest group that covers all its
  missing columns (``uncertainty.missing_inputs = calibrate``); a star no group covers,
  or any star with missing inputs under ``withhold``, gets no labels.

All fits are plain floats and lists (JSON in a bundle). The S/N is the spectrum's
median |flux| / error (:func:`kielnet.data.preprocess.spectrum_snr`) or a scalar column
(``uncertainty.snr``); a star without one gets the largest factor of its label bin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BinnedScale", "SigmaModel", "OutOfFold", "fit_binned_scale", "fit_sigma_model", "star_snr",
           "combine_members",
           "coverage_factor", "quadrature", "GAUSSIAN_1SIGMA", "NO_MISSING", "UNCOVERED"]

#: fraction of a Gaussian within ±1σ
GAUSSIAN_1SIGMA = 0.6826894921370859
#: group index of a star without missing inputs / whose missing inputs no group covers
NO_MISSING, UNCOVERED = -1, -2


def star_snr(source: str, prep_snr: np.ndarray | None, scalars: dict[str, np.ndarray], n: int) -> np.ndarray:
    """The S/N the recalibration uses (``uncertainty.snr``): the spectrum's
    (``prep_snr``, :func:`kielnet.data.preprocess.spectrum_snr`) or the scalar column
    named ``source``; NaN where unknown."""
    if source == "spectrum":
        return np.full(n, np.nan) if prep_snr is None else np.asarray(prep_snr, dtype=np.float64)
    return np.asarray(scalars[source], dtype=np.float64)


def combine_members(means: np.ndarray, head: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Ensemble mean, members' spread (ddof=1; 0 for one member) and the members' own σ
    combined as sqrt(mean σ²) (None without σ outputs), from (n_members, n, n_labels)."""
    mean = means.mean(axis=0)
    spread = means.std(axis=0, ddof=1) if means.shape[0] > 1 else np.zeros_like(mean)
    hs = None if head is None else np.sqrt(np.mean(np.asarray(head) ** 2, axis=0))
    return mean, spread, hs


def coverage_factor(ratio: np.ndarray, target: float = GAUSSIAN_1SIGMA) -> float:
    """The factor k such that a fraction ``target`` of the finite ``ratio`` = |r| / σ
    values lie below k (the ``target`` quantile; NaN if there are none)."""
    v = np.asarray(ratio, dtype=float)
    v = v[np.isfinite(v)]
    return float(np.quantile(v, target)) if v.size else float("nan")


def quadrature(parts: list[np.ndarray]) -> np.ndarray:
    """sqrt(Σ parts²), NaN where any part is NaN."""
    return np.sqrt(np.sum([np.asarray(p, dtype=float) ** 2 for p in parts], axis=0))


def _bin_index(inner: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.searchsorted(inner, v, side="right")


def _quantile_edges(v: np.ndarray, n: int, tails: Sequence[float] = ()) -> np.ndarray:
    """Inner edges of ``n`` equal-count bins of ``v``, plus edges at the quantiles q and
    1 − q of each q in ``tails`` (duplicates dropped)."""
    qs = list(np.linspace(0, 1, n + 1)[1:-1]) if n > 1 else []
    qs += [q for t in tails for q in (t, 1.0 - t)]
    if not qs or v.size == 0:
        return np.zeros(0)
    return np.unique(np.quantile(v, qs))


@dataclass
class BinnedScale:
    """Piecewise-constant factor in cells of (predicted label, log10 S/N).

    ``label_edges`` / ``snr_edges`` are the inner bin edges (label unit, log10 S/N);
    ``factors[i, j]`` the factor of label bin i and S/N bin j; ``counts`` the fitting
    stars per cell; ``label_factors[i]`` the factor of label bin i over all S/N (used
    for a star without an S/N)."""

    label_edges: list[float]
    snr_edges: list[float]
    factors: list[list[float]]
    counts: list[list[int]]
    label_factors: list[float]

    def __call__(self, x: np.ndarray, snr: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        f = np.asarray(self.factors, dtype=float)
        i = _bin_index(np.asarray(self.label_edges), x)
        if snr is None:
            out = np.asarray(self.label_factors, dtype=float)[i]
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                ls = np.log10(np.asarray(snr, dtype=float))
            has = np.isfinite(ls)
            j = _bin_index(np.asarray(self.snr_edges), np.where(has, ls, 0.0))
            out = np.where(has, f[i, j], f[i].max(axis=1))
        return np.where(np.isfinite(x), out, np.nan)

    def to_dict(self) -> dict:
        return {"label_edges": list(map(float, self.label_edges)), "snr_edges": list(map(float, self.snr_edges)),
                "factors": [list(map(float, r)) for r in self.factors],
                "counts": [list(map(int, r)) for r in self.counts],
                "label_factors": list(map(float, self.label_factors))}

    @classmethod
    def from_dict(cls, d: dict) -> "BinnedScale":
        out = cls(list(d["label_edges"]), list(d["snr_edges"]), [list(r) for r in d["factors"]],
                  [list(r) for r in d["counts"]], list(d["label_factors"]))
        shape = (len(out.label_edges) + 1, len(out.snr_edges) + 1)
        if np.shape(out.factors) != shape or np.shape(out.counts) != shape or len(out.label_factors) != shape[0]:
            raise ValueError(f"factors/counts must be {shape[0]} x {shape[1]} (label bins x S/N bins)")
        if not np.all(np.isfinite(np.asarray(out.factors, float))) or np.any(np.asarray(out.factors, float) <= 0):
            raise ValueError("factors must be finite and positive")
        return out


def fit_binned_scale(x: np.ndarray, snr: np.ndarray | None, ratio: np.ndarray, *, label_bins: int = 8,
                     snr_bins: int = 4, min_per_cell: int = 100, target: float = GAUSSIAN_1SIGMA,
                     tails: Sequence[float] = ()) -> BinnedScale:
    """Fit a :class:`BinnedScale` so that in each cell the fraction of ``ratio`` = |r| / σ
    below the factor is ``target``. Bins are quantiles of the fitting stars' ``x`` (plus
    edges at the ``tails`` quantiles q and 1 − q) and log10 ``snr``; a cell with fewer
    than ``min_per_cell`` stars takes its label bin's factor, a label bin with fewer stars
    the overall one."""
    x = np.asarray(x, dtype=float)
    ratio = np.asarray(ratio, dtype=float)
    ok = np.isfinite(x) & np.isfinite(ratio)
    if not ok.any():
        raise ValueError("no star with a finite prediction, residual and σ to fit the recalibration on")
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.full(len(x), np.nan) if snr is None else np.log10(np.asarray(snr, dtype=float))
    overall = coverage_factor(ratio[ok], target)
    l_edges = _quantile_edges(x[ok], label_bins, tails)
    has = ok & np.isfinite(ls)
    s_edges = _quantile_edges(ls[has], snr_bins) if has.sum() >= 2 * min_per_cell else np.zeros(0)
    li = _bin_index(l_edges, x)
    sj = _bin_index(s_edges, np.where(np.isfinite(ls), ls, 0.0))
    nl, ns = len(l_edges) + 1, len(s_edges) + 1
    label_f, factors, counts = [], [], []
    for i in range(nl):
        in_bin = ok & (li == i)
        lf = coverage_factor(ratio[in_bin], target) if in_bin.sum() >= min_per_cell else overall
        label_f.append(lf)
        row_f, row_n = [], []
        for j in range(ns):
            cell = in_bin & has & (sj == j)
            row_n.append(int(cell.sum()))
            row_f.append(coverage_factor(ratio[cell], target) if cell.sum() >= min_per_cell else lf)
        factors.append(row_f)
        counts.append(row_n)
    fix = lambda v: v if np.isfinite(v) and v > 0 else 1.0  # noqa: E731 - all-zero residuals
    return BinnedScale([float(e) for e in l_edges], [float(e) for e in s_edges],
                       [[fix(v) for v in r] for r in factors], counts, [fix(v) for v in label_f])


@dataclass
class OutOfFold:
    """Out-of-fold predictions of the training stars that some split held out (physical
    units): ``pred``, ``spread``, ``head`` (None without σ outputs) and ``truth``, each
    (n, n_labels); ``snr`` (n,); ``complete`` (n,) — the star has all scalar inputs;
    ``hidden``: group name → (pred, spread, head) of the same stars with that group's
    columns hidden."""

    pred: np.ndarray
    spread: np.ndarray
    head: np.ndarray | None
    truth: np.ndarray
    snr: np.ndarray
    complete: np.ndarray
    hidden: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    #: row indices of these stars in the training table
    rows: np.ndarray | None = None
    #: (n, n_columns) which scalar columns each star lacks (config.scalar_columns() order)
    missing_columns: np.ndarray | None = None
    #: (n,) the split members' :func:`~kielnet.quality.spread.log_disagreement` (mean over
    #: the splits holding the star out); None where not computed (quality.ensemble_spread.local
    #: off, or a file saved before it existed)
    disagreement: np.ndarray | None = None


@dataclass
class SigmaModel:
    """How ``sigma_X`` is made for every label (see the module docstring)."""

    terms: list[str]
    labels: list[str]
    recalibration: dict[str, BinnedScale] | None
    missing: dict[str, dict[str, float]]
    groups: dict[str, list[str]]
    columns: list[str]
    rule: str = "calibrate"
    snr: str = "spectrum"
    target: float = GAUSSIAN_1SIGMA
    #: out-of-fold coverage after calibration, per label (diagnostic)
    oof_coverage: dict = field(default_factory=dict)
    #: label → (a, b): σ → a σ + b, applied last (``uncertainty.inflation``)
    inflation: dict[str, tuple[float, float]] = field(default_factory=dict)

    # ---------------------------------------------------------------- apply
    def base(self, spread: np.ndarray, running: np.ndarray | None, head: np.ndarray | None) -> np.ndarray:
        """quad(terms) for one label (arrays (n,)); a term the model lacks counts as 0."""
        parts = {"spread": spread, "running": running, "head": head}
        use = [parts[t] for t in self.terms if parts[t] is not None]
        if not use:
            return np.zeros_like(np.asarray(spread, dtype=float))
        return quadrature(use)

    def group_index(self, missing_columns: np.ndarray | None) -> np.ndarray:
        """Per star: :data:`NO_MISSING`, the index (in ``groups`` order) of the smallest
        group covering its missing columns, or :data:`UNCOVERED`."""
        if missing_columns is None or missing_columns.size == 0:
            n = 0 if missing_columns is None else len(missing_columns)
            return np.full(n, NO_MISSING, dtype=np.int64)
        m = np.asarray(missing_columns, dtype=bool)
        out = np.full(len(m), NO_MISSING, dtype=np.int64)
        anym = m.any(axis=1)
        out[anym] = UNCOVERED
        names = list(self.groups)
        order = sorted(range(len(names)), key=lambda g: len(self.groups[names[g]]))
        if self.rule == "calibrate":  # only groups with a fitted factor can cover a star
            order = [g for g in order if names[g] in self.missing]
        col_idx = {c: i for i, c in enumerate(self.columns)}
        for g in order:
            inside = np.zeros(m.shape[1], dtype=bool)
            inside[[col_idx[c] for c in self.groups[names[g]] if c in col_idx]] = True
            covered = anym & (out == UNCOVERED) & ~(m & ~inside).any(axis=1)
            out[covered] = g
        return out

    def withheld(self, group_idx: np.ndarray) -> np.ndarray:
        """Stars whose labels the missing-input rule withholds."""
        if self.rule == "withhold":
            return group_idx != NO_MISSING
        if self.rule == "calibrate":
            return group_idx == UNCOVERED
        return np.zeros(len(group_idx), dtype=bool)

    def sigma(self, label: str, base: np.ndarray, pred: np.ndarray, snr: np.ndarray | None,
              group_idx: np.ndarray | None = None, spread: np.ndarray | None = None) -> np.ndarray:
        """Calibrated σ of ``label`` from its base σ (:meth:`base`), the prediction and
        the S/N; ``group_idx`` from :meth:`group_index` applies the missing-input factor.
        ``spread`` (the members' spread), if given, is a floor: a total σ is never
        smaller than the part of it the members' disagreement shows."""
        s = np.asarray(base, dtype=float).copy()
        if self.recalibration is not None:
            s = s * self.recalibration[label](pred, snr)
        if group_idx is not None and self.rule == "calibrate" and self.missing:
            names = list(self.groups)
            fac = np.ones(len(s))
            for g, name in enumerate(names):
                sel = group_idx == g
                if sel.any():
                    fac[sel] = self.missing.get(name, {}).get(label, np.nan)
            s = s * fac
        if spread is not None and self.recalibration is not None:
            with np.errstate(invalid="ignore"):
                s = np.maximum(s, np.asarray(spread, dtype=float))  # NaN stays NaN
        if label in self.inflation:
            a, b = self.inflation[label]
            s = a * s + b
        return s

    def describe(self) -> str:
        """One paragraph for catalogue headers, ``predict --help`` and model cards."""
        terms = " (+) ".join({"spread": "members' spread", "running": "running dispersion in the label",
                              "head": "network sigma output"}[t] for t in self.terms)
        txt = f"sigma = [{terms}]"
        if self.recalibration is not None:
            txt += (f" x factor in (label, S/N from {self.snr}) cells fitted on out-of-fold training stars "
                    f"so that {self.target:.4f} of them lie within 1 sigma")
        if self.rule == "calibrate":
            txt += ("; missing scalar inputs: x the out-of-fold factor of the smallest input group covering "
                    "them (groups: " + ", ".join(self.groups) + ")")
        elif self.rule == "withhold":
            txt += "; stars with missing scalar inputs get no labels"
        if self.inflation:
            txt += "; then sigma -> " + ", ".join(f"{a:g} sigma + {b:g} ({k})" for k, (a, b) in self.inflation.items())
        return txt

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        return {"terms": list(self.terms), "labels": list(self.labels),
                "recalibration": None if self.recalibration is None else
                {k: v.to_dict() for k, v in self.recalibration.items()},
                "missing": {g: {k: float(v) for k, v in d.items()} for g, d in self.missing.items()},
                "groups": {g: list(c) for g, c in self.groups.items()}, "columns": list(self.columns),
                "rule": self.rule, "snr": self.snr, "target": float(self.target),
                "oof_coverage": self.oof_coverage,
                "inflation": {k: [float(a), float(b)] for k, (a, b) in self.inflation.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "SigmaModel":
        rec = d.get("recalibration")
        out = cls(terms=list(d["terms"]), labels=list(d["labels"]),
                  recalibration=None if rec is None else {k: BinnedScale.from_dict(v) for k, v in rec.items()},
                  missing={g: {k: float(v) for k, v in m.items()} for g, m in d["missing"].items()},
                  groups={g: list(c) for g, c in d["groups"].items()}, columns=list(d["columns"]),
                  rule=str(d.get("rule", "calibrate")), snr=str(d.get("snr", "spectrum")),
                  target=float(d.get("target", GAUSSIAN_1SIGMA)), oof_coverage=dict(d.get("oof_coverage", {})),
                  inflation={k: (float(v[0]), float(v[1])) for k, v in d.get("inflation", {}).items()})
        if set(out.inflation) - set(out.labels) or not all(np.isfinite(a) and a > 0 and np.isfinite(b) and b >= 0
                                                             for a, b in out.inflation.values()):
            raise ValueError("inflation must map labels to (a > 0, b >= 0)")
        bad = set(out.terms) - {"spread", "running", "head"}
        if bad or not out.terms:
            raise ValueError(f"unknown σ terms {sorted(bad)}")
        if out.rule not in ("calibrate", "withhold", "flag"):
            raise ValueError(f"unknown missing-input rule {out.rule!r}")
        if out.recalibration is not None and set(out.recalibration) != set(out.labels):
            raise ValueError("recalibration must cover exactly the labels")
        for g, cols in out.groups.items():
            if set(cols) - set(out.columns):
                raise ValueError(f"group {g!r} names columns that are not inputs")
        for g, m in out.missing.items():
            if g not in out.groups or set(m) != set(out.labels) or not all(np.isfinite(v) and v > 0 for v in m.values()):
                raise ValueError(f"missing-input factors of group {g!r} must be finite, positive, one per label")
        return out


def fit_sigma_model(config, oof: OutOfFold, running: dict | None) -> SigmaModel:
    """Fit the config's σ model (``config.uncertainty``) on out-of-fold predictions.

    ``running``: label → running-dispersion callable (already fitted), used when
    ``running`` is one of the terms. Only ``oof`` is used: the stars a benchmark tests
    on never enter the fit.
    """
    u = config.uncertainty
    names = config.label_names
    rc = u.recalibration
    target = rc.target
    terms = list(u.terms)
    if oof.head is None and "head" in terms:
        raise ValueError("uncertainty.terms has 'head' but the members have no σ outputs")

    def base_of(j: int, pred: np.ndarray, spread: np.ndarray, head: np.ndarray | None) -> np.ndarray:
        run = running[names[j]](pred[:, j]) if (running and "running" in terms) else None
        parts = {"spread": spread[:, j], "running": run, "head": None if head is None else head[:, j]}
        return quadrature([parts[t] for t in terms if parts[t] is not None])

    groups = config.groups()
    model = SigmaModel(terms=terms, labels=names, recalibration=None, missing={}, groups=groups,
                       columns=config.scalar_columns(), rule=u.missing_inputs, snr=u.snr, target=target)
    snr = oof.snr
    if rc.kind == "binned":
        rec = {}
        for j, name in enumerate(names):
            b = base_of(j, oof.pred, oof.spread, oof.head)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.abs(oof.pred[:, j] - oof.truth[:, j]) / b
            ratio[~oof.complete] = np.nan
            rec[name] = fit_binned_scale(oof.pred[:, j], snr, ratio, label_bins=rc.label_bins,
                                         snr_bins=rc.snr_bins, min_per_cell=rc.min_per_cell, target=target,
                                         tails=rc.tails)
        model.recalibration = rec
    cov = {}
    for j, name in enumerate(names):
        s = model.sigma(name, base_of(j, oof.pred, oof.spread, oof.head), oof.pred[:, j], snr,
                        spread=oof.spread[:, j])
        r = np.abs(oof.pred[:, j] - oof.truth[:, j])
        ok = np.isfinite(r) & np.isfinite(s) & oof.complete
        cov[name] = {"all_inputs_present": float(np.mean(r[ok] < s[ok])) if ok.any() else None}
    if u.missing_inputs == "calibrate":
        for g, (pred_g, spread_g, head_g) in oof.hidden.items():
            model.missing[g] = {}
            for j, name in enumerate(names):
                b = base_of(j, pred_g, spread_g, head_g)
                s = model.sigma(name, b, pred_g[:, j], snr)
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.abs(pred_g[:, j] - oof.truth[:, j]) / s
                ratio[~oof.complete] = np.nan
                f = coverage_factor(ratio, target)
                model.missing[g][name] = f if np.isfinite(f) and f > 0 else 1.0
                cov[name][f"hidden_{g}_before_factor"] = float(np.mean(ratio[np.isfinite(ratio)] < 1.0)) \
                    if np.isfinite(ratio).any() else None
    model.oof_coverage = cov
    model.inflation = {k: tuple(v) for k, v in u.inflation.items()}  # after the fits: not part of them
    return model
