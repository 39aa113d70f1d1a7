"""What the out-of-fold training stars nearest a star say about it: label support,
a local σ calibration, a heavy-tail-aware 95 % interval and a local outlier score.

The reference set is the ensemble's *out-of-fold* training stars (each split's
validation stars, predicted by that split's members only; :mod:`kielnet.training.out_of_fold`).
Each reference star has

* a **position**: its predicted labels in the networks' scaled output space (z-scored,
  log Teff where the label is log-transformed) and its standardised log10 S/N
  (``snr_weight`` × the z-score), so that "near" means "predicted to be a similar star,
  observed at a similar S/N";
* which labels it carried a reference value for (``has_label``);
* its normalised residual ``z = |predicted − reference| / σ`` per label, σ being the
  bundle's calibrated σ model (:mod:`kielnet.quality.sigma`); NaN without a reference.

For a new star, the ``k_support`` nearest reference stars give each label's
**support**: the fraction of them that carried that label. Below ``min_support`` the
training set had (almost) no reference value for that label near the star, so the
label is withheld (NaN, flag ``label_not_reported``): any number would be extrapolation.
The rule is the same for every label and training set; it needs no label-specific cut.

The ``k_local`` nearest reference stars with a residual give

* the **local factor** of σ: the 68.27 % quantile of their ``z`` (1 where fewer than
  ``min_local`` have one); with ``fit_to = "1and2sigma"`` the factor between that and
  half their 95.45 % quantile that best meets both the 1σ (±0.05) and 2σ (±0.03)
  coverage bands — for residuals heavier-tailed than a Gaussian no single factor gives
  both 68.27 % and 95.45 %. ``σ × factor`` covers 68.27 % of the stars like this one —
  calibration in every regime the position resolves (hot stars, M dwarfs, the red clump,
  metal-poor stars, low S/N), not only in the (label, S/N) cells of the global σ model;
* the **95 % half-width** ``ci95 = σ × (0.95 quantile of their z)``: where residuals are
  heavier-tailed than a Gaussian, it is wider than 1.96 σ;
* the **99.73 % half-width** ``ci997 = ci95 × c``, the probability of a Gaussian's ±3σ:
  150 neighbours cannot give a 0.9973 quantile, so ``c`` is one number per label, the
  split-conformal 99.73 % quantile of |residual| / ci95 over all reference stars whose
  label would be reported (each assessed without itself; :func:`conformal_factor`). On
  the XP library c is 2.2–3.1, against 1.53 for a Gaussian: the stars a Gaussian σ puts
  beyond 3σ lie inside ci997 (its miss rate, cross-fitted on two halves of the reference
  stars, is in ``report``);
* the **outlier score**: the largest, over labels, fraction of those neighbours whose
  ``z`` exceeds ``tail`` (3) times the local factor — how often stars like this one are
  wrong by more than 3 σ. A score above ``outlier_threshold`` sets flag bit
  ``likely_outlier``; the threshold is chosen on the reference stars themselves (each
  scored without itself) as the score's ``1 − outlier_budget`` quantile, never on test
  stars.

With ``quality.ensemble_spread.local``, each reference star also keeps its members'
**disagreement** (:func:`kielnet.quality.spread.log_disagreement`, from the members that
did not train on it), and the ``disagreement_quantile`` of it among the ``k_local``
nearest is the star's threshold for the ``ensemble_disagreement`` flag
(:mod:`kielnet.quality.spread`).

All arrays are stored in a safetensors file in the bundle, the settings in its JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kielnet.threads import thread_map, thread_parts

__all__ = ["NeighbourModel", "NeighbourAssessment", "INTERVAL_PREFIXES", "conformal_factor", "interval_columns",
           "positions"]

_FORMAT = 1
GAUSSIAN_1SIGMA = 0.6826894921370859
GAUSSIAN_2SIGMA = 0.9544997361036416
#: probability within ±3σ of a Gaussian: the level of the ``ci997`` interval
GAUSSIAN_3SIGMA = 0.9973002039367398
#: |residual| / σ at which a Gaussian's two-sided 95 % interval ends (``ci95`` where a star
#: has too few neighbours for its own quantile)
GAUSSIAN_95 = 1.959963984540054
#: half-widths of the coverage bands the "1and2sigma" local factor balances (1σ, 2σ)
COVERAGE_BANDS = (0.05, 0.03)
#: factors are kept within this range (a handful of near-zero residuals must not shrink σ to 0)
FACTOR_RANGE = (0.25, 10.0)


#: prefixes of the interval half-width columns (``ci95_X``, ``ci997_X``) a neighbour model
#: gives a catalogue
INTERVAL_PREFIXES = ("ci95", "ci997")


def interval_columns(name: str) -> list[str]:
    """The interval half-width columns a catalogue may hold for label ``name``."""
    return [f"{p}_{name}" for p in INTERVAL_PREFIXES]


def positions(pred_scaled: np.ndarray, snr: np.ndarray | None) -> np.ndarray:
    """Raw (unstandardised) coordinates: the scaled predicted labels and log10 S/N
    (NaN where the S/N is unknown or not positive)."""
    p = np.asarray(pred_scaled, dtype=np.float64)
    n = len(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.full(n, np.nan) if snr is None else np.log10(np.asarray(snr, dtype=np.float64))
    ls[~np.isfinite(ls)] = np.nan
    return np.concatenate([p, ls[:, None]], axis=1)


@dataclass
class NeighbourAssessment:
    """Per star (n rows) and label (columns): ``support`` (fraction of the nearest
    reference stars carrying the label), ``factor`` (local σ factor), ``q95`` (0.95
    quantile of the neighbours' |residual| / σ), ``tail_rate`` (fraction of the
    neighbours with a residual beyond ``tail`` local σ; 0 where too few have one) and
    ``outlier_score`` (n,), the largest ``tail_rate`` over labels; with reference
    disagreements, ``disagreement_threshold`` (n,), their ``disagreement_quantile`` among
    the ``k_local`` nearest (NaN where fewer than ``min_local`` have one; None without).
    NaN for stars without a finite position."""

    support: np.ndarray
    factor: np.ndarray
    q95: np.ndarray
    tail_rate: np.ndarray
    outlier_score: np.ndarray
    disagreement_threshold: np.ndarray | None = None


@dataclass
class NeighbourModel:
    """See the module docstring. Build with :meth:`fit`."""

    label_names: list[str]
    coords: np.ndarray
    has_label: np.ndarray
    z: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    k_support: int = 50
    min_support: float = 0.5
    k_local: int = 150
    min_local: int = 30
    local_calibration: bool = True
    tail: float = 3.0
    outlier_budget: float = 0.0
    outlier_threshold: float = float("inf")
    target: float = GAUSSIAN_1SIGMA
    #: "1sigma": the local factor puts ``target`` of the neighbours within 1 σ; "1and2sigma":
    #: it balances the 1σ and 2σ coverage (bands ±0.05 and ±0.03 around 68.27 % / 95.45 %)
    fit_to: str = "1sigma"
    #: numbers measured on the reference stars when fitted (each without itself)
    report: dict = field(default_factory=dict)
    #: (n_ref,) each reference star's members' log disagreement
    #: (:func:`kielnet.quality.spread.log_disagreement`); None: no local disagreement threshold
    disagreement: np.ndarray | None = None
    #: the quantile of the neighbours' disagreement that is the local threshold
    disagreement_quantile: float = 0.90
    #: (n_labels,) ``ci997 = ci95 × ci997_factor`` (:func:`conformal_factor`; NaN where too
    #: few reference stars); None: a model fitted before it existed (no ``ci997`` column)
    ci997_factor: np.ndarray | None = None
    _nn: object = field(default=None, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ geometry
    def standardise(self, raw: np.ndarray) -> np.ndarray:
        """Raw coordinates (:func:`positions`) → the model's space; an unknown S/N sits
        at the reference median."""
        x = (np.asarray(raw, dtype=np.float64) - self.center) / self.scale
        x[:, -1] = np.where(np.isfinite(x[:, -1]), x[:, -1], 0.0)
        return x

    def _index(self):
        if self._nn is None:
            from scipy.spatial import cKDTree

            self._nn = cKDTree(self.coords.astype(np.float64))
        return self._nn

    def _neighbours(self, x: np.ndarray, k: int, exclude_self: bool, first: int = 0) -> np.ndarray:
        """(m, k) indices of the reference stars nearest ``x`` (Euclidean), nearest first.
        ``exclude_self``: ``x`` are the reference stars ``first``, ``first + 1``, … themselves,
        each left out of its own neighbours."""
        n_ref = len(self.coords)
        k = min(k + int(exclude_self), n_ref)
        idx = self._index().query(x, k=k)[1].reshape(len(x), k)  # k = 1 gives (m,)
        if exclude_self:
            own = idx == np.arange(first, first + len(x))[:, None]
            drop = np.where(own.any(axis=1), own.argmax(axis=1), k - 1)
            keep = np.ones_like(idx, dtype=bool)
            keep[np.arange(len(x)), drop] = False
            idx = idx[keep].reshape(len(x), k - 1)
        return idx

    # ------------------------------------------------------------------ apply
    def assess(self, raw: np.ndarray, *, exclude_self: bool = False, chunk: int = 4096) -> NeighbourAssessment:
        """Support, local factor, 95 % quantile and outlier score for stars at raw
        coordinates ``raw`` (:func:`positions`). ``exclude_self``: ``raw`` are the
        reference stars themselves (in order), each assessed without itself."""
        raw = np.asarray(raw, dtype=np.float64)
        n, nl = len(raw), len(self.label_names)
        out = NeighbourAssessment(*(np.full((n, nl), np.nan) for _ in range(4)), np.full(n, np.nan),
                                  None if self.disagreement is None else np.full(n, np.nan))
        good = np.flatnonzero(np.isfinite(raw[:, :-1]).all(axis=1))
        if not len(good):
            return out
        x = self.standardise(raw[good])
        # parts of at most ``chunk`` stars, one per thread at least (KD-tree queries and
        # NumPy sorts release the GIL); each star's numbers do not depend on its part

        def part(bounds: tuple[int, int]) -> None:
            rows = good[bounds[0]:bounds[1]]
            xs = x[bounds[0]:bounds[1]]
            idx = self._neighbours(xs, max(self.k_support, self.k_local), exclude_self, bounds[0])
            out.support[rows] = self.has_label[idx[:, :self.k_support]].mean(axis=1)
            zn = _sorted_rows(self.z[idx[:, :self.k_local]])  # (m, L, k), NaN last
            count = np.isfinite(zn).sum(axis=2)
            enough = count >= self.min_local
            with np.errstate(invalid="ignore"):
                f = _sorted_quantile(zn, count, self.target)
                q = _sorted_quantile(zn, count, 0.95)
                if self.fit_to == "1and2sigma":
                    f = _joint_factor(zn, count, f, _sorted_quantile(zn, count, GAUSSIAN_2SIGMA) / 2.0, self.target)
            f = np.where(enough, np.clip(f, *FACTOR_RANGE), 1.0)
            q = np.where(enough, q, np.nan)
            with np.errstate(invalid="ignore"):
                beyond = (zn > self.tail * f[:, :, None]).sum(axis=2) / np.maximum(count, 1)
            beyond = np.where(enough, beyond, 0.0)
            out.factor[rows] = f if self.local_calibration else 1.0
            out.q95[rows] = q
            out.tail_rate[rows] = beyond
            out.outlier_score[rows] = beyond.max(axis=1)
            if out.disagreement_threshold is not None:
                dn = _sorted_rows(self.disagreement[idx[:, :self.k_local]][:, :, None])  # (m, 1, k)
                dc = np.isfinite(dn).sum(axis=2)
                with np.errstate(invalid="ignore"):
                    t = _sorted_quantile(dn, dc, self.disagreement_quantile)[:, 0]
                out.disagreement_threshold[rows] = np.where(dc[:, 0] >= self.min_local, t, np.nan)

        self._index()  # built once, before the threads share it
        thread_map(part, thread_parts(len(good), 1, chunk))
        return out

    def ci95_scale(self, a: NeighbourAssessment) -> np.ndarray:
        """(n, n_labels) the 95 % half-width in units of the bundle's σ (before the local
        factor): the neighbours' 0.95 quantile of |residual| / σ, or 1.96 × the local factor
        where too few neighbours have a residual."""
        return np.where(np.isfinite(a.q95), a.q95, GAUSSIAN_95 * a.factor)

    def ci997_scale(self, a: NeighbourAssessment) -> np.ndarray | None:
        """(n, n_labels) the 99.73 % half-width in the same units: :meth:`ci95_scale` ×
        ``ci997_factor`` (None for a model without one)."""
        return None if self.ci997_factor is None else self.ci95_scale(a) * self.ci997_factor

    def withheld(self, a: NeighbourAssessment) -> np.ndarray:
        """(n, n_labels) bool: labels without support near the star."""
        with np.errstate(invalid="ignore"):
            return a.support < self.min_support

    def outliers(self, a: NeighbourAssessment) -> np.ndarray:
        """(n,) bool: stars whose outlier score exceeds the fitted threshold."""
        with np.errstate(invalid="ignore"):
            return a.outlier_score > self.outlier_threshold

    def describe(self) -> str:
        """One paragraph for catalogue headers, ``predict --help`` and model cards."""
        txt = (f"label support: a label is reported only where at least {self.min_support:.0%} of the "
               f"{self.k_support} nearest out-of-fold training stars (in predicted labels x S/N) carried a "
               "reference value for it")
        if self.local_calibration:
            what = ("the 68.27 % quantile of their |residual|/sigma" if self.fit_to == "1sigma" else
                    "the factor that best brings 68.27 % (+-5 %) of their |residual|/sigma within 1 and 95.45 % "
                    "(+-3 %) within 2")
            txt += f"; sigma x {what}, for the {self.k_local} nearest out-of-fold training stars"
        txt += "; ci95_X = sigma x their 0.95 quantile (before that factor)"
        if self.ci997_factor is not None:
            fs = ", ".join(f"{n} {f:.2f}" for n, f in zip(self.label_names, self.ci997_factor) if np.isfinite(f))
            txt += (f"; ci997_X (99.73 %, a Gaussian's 3 sigma) = ci95_X x the 99.73 % conformal quantile of "
                    f"|residual|/ci95 over all out-of-fold training stars ({fs or 'too few stars'})")
        if np.isfinite(self.outlier_threshold):
            txt += (f"; likely_outlier: more than {self.outlier_threshold:.3f} of those neighbours lie beyond "
                    f"{self.tail:g} local sigma in some label")
        if self.disagreement is not None:
            txt += (f"; ensemble_disagreement: the members disagree more than the "
                    f"{self.disagreement_quantile:.0%} quantile of the disagreement of those neighbours (each "
                    "predicted by the members that did not train on it)")
        return txt

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, label_names: list[str], pred_scaled: np.ndarray, snr: np.ndarray | None, has_label: np.ndarray,
            z: np.ndarray, *, k_support: int = 50, min_support: float = 0.5, k_local: int = 150,
            min_local: int = 30, local_calibration: bool = True, tail: float = 3.0, outlier_budget: float = 0.0,
            snr_weight: float = 1.0, target: float = GAUSSIAN_1SIGMA, fit_to: str = "1sigma",
            disagreement: np.ndarray | None = None, disagreement_quantile: float = 0.90) -> "NeighbourModel":
        """Fit on the reference (out-of-fold) stars.

        ``pred_scaled`` (n, L): predicted labels in the networks' scaled space;
        ``snr`` (n,) or None; ``has_label`` (n, L) bool: the star carried a reference
        value; ``z`` (n, L): |residual| / σ (NaN where unknown, e.g. no reference or
        missing inputs). ``outlier_budget``: the fraction of reference stars the
        ``likely_outlier`` flag may take (0 = no flag). ``disagreement`` (n,): each star's
        members' log disagreement (:func:`kielnet.quality.spread.log_disagreement`, NaN
        where unknown); given, :meth:`assess` also returns its ``disagreement_quantile``
        among each star's ``k_local`` nearest reference stars."""
        raw = positions(pred_scaled, snr)
        ok = np.isfinite(raw[:, :-1]).all(axis=1)
        if ok.sum() < 2:
            raise ValueError("need at least 2 reference stars with finite predictions for the neighbour model")
        if disagreement is not None and np.shape(disagreement) != (len(raw),):
            raise ValueError(f"disagreement {np.shape(disagreement)} must give one value per star ({len(raw)})")
        if not 0 < disagreement_quantile <= 1:
            raise ValueError(f"disagreement_quantile must be in (0, 1], got {disagreement_quantile}")
        raw, has_label, z = raw[ok], np.asarray(has_label, bool)[ok], np.asarray(z, np.float64)[ok]
        center = np.nanmedian(raw, axis=0)
        center = np.where(np.isfinite(center), center, 0.0)
        scale = np.nanstd(raw, axis=0)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        scale[-1] /= max(float(snr_weight), 1e-6)
        model = cls(list(label_names), np.zeros((0, raw.shape[1])), has_label, z.astype(np.float32), center, scale,
                    k_support=int(k_support), min_support=float(min_support), k_local=int(k_local),
                    min_local=int(min_local), local_calibration=bool(local_calibration), tail=float(tail),
                    outlier_budget=float(outlier_budget), target=float(target), fit_to=str(fit_to),
                    disagreement=None if disagreement is None else np.asarray(disagreement, np.float32)[ok],
                    disagreement_quantile=float(disagreement_quantile))
        if model.fit_to not in ("1sigma", "1and2sigma"):
            raise ValueError(f"fit_to must be '1sigma' or '1and2sigma', not {fit_to!r}")
        model.coords = model.standardise(raw).astype(np.float32)
        a = model.assess(raw, exclude_self=True)
        thr = float("inf")
        if outlier_budget > 0:
            s = a.outlier_score[np.isfinite(a.outlier_score)]
            thr = float(np.quantile(s, 1.0 - outlier_budget)) if s.size else float("inf")
        model.outlier_threshold = thr
        model.report = model._self_report(a, z, has_label)
        model._fit_ci997(a, z)
        return model

    def _fit_ci997(self, a: NeighbourAssessment, z: np.ndarray, seed: int = 0) -> None:
        """``ci997_factor`` from the reference stars (each assessed without itself) whose
        label would be reported: not withheld, not ``likely_outlier``; at least 1, so that
        ci997 contains ci95. In ``report``: the factor, the rate outside ci95, and the miss
        rate of ci997 cross-fitted on two random halves (each half's factor judged on the
        other half)."""
        u = z / self.ci95_scale(a)
        keep = np.isfinite(u) & ~self.withheld(a) & ~self.outliers(a)[:, None]
        half = np.random.default_rng(seed).random(len(u)) < 0.5
        # never narrower than ci95 (the intervals nest); NaN stays NaN
        factors = [conformal_factor(u[keep[:, j], j]) for j in range(u.shape[1])]
        self.ci997_factor = np.maximum(np.array(factors), 1.0)
        for j, name in enumerate(self.label_names):
            k = keep[:, j]
            missed = judged = 0
            for h in (half, ~half):
                c = conformal_factor(u[k & h, j])
                if np.isfinite(c):
                    missed += int((u[k & ~h, j] > c).sum())
                    judged += int((k & ~h).sum())
            self.report["labels"][name].update({
                "ci997_factor": float(self.ci997_factor[j]) if np.isfinite(self.ci997_factor[j]) else None,
                "outside_ci95_kept": float(np.mean(u[k, j] > 1.0)) if k.any() else None,
                "outside_ci997_cross_fitted": missed / judged if judged else None})

    def _self_report(self, a: NeighbourAssessment, z: np.ndarray, has_label: np.ndarray) -> dict:
        """Coverage and tails of the reference stars, each assessed without itself."""
        flagged = self.outliers(a)
        rep: dict = {"n_reference": int(len(z)), "outlier_threshold": self.outlier_threshold,
                     "flagged_fraction": float(flagged.mean()), "labels": {}}
        w = self.withheld(a)
        any_beyond = np.zeros(len(z), dtype=bool)
        for j, name in enumerate(self.label_names):
            zz = z[:, j] / a.factor[:, j]
            fin = np.isfinite(zz)
            any_beyond |= fin & (zz > self.tail)
            keep = fin & ~flagged & ~w[:, j]
            rep["labels"][name] = {
                "withheld_fraction": float(w[:, j].mean()),
                "withheld_with_reference": int((w[:, j] & has_label[:, j]).sum()),
                "reported_without_reference_fraction": float((~w[:, j] & ~has_label[:, j]).mean()),
                "cov1_before": float(np.mean(z[fin, j] < 1)) if fin.any() else None,
                "cov1": float(np.mean(zz[fin] < 1)) if fin.any() else None,
                "cov2": float(np.mean(zz[fin] < 2)) if fin.any() else None,
                "beyond_3sigma_kept": float(np.mean(zz[keep] > 3)) if keep.any() else None,
                "beyond_5sigma_kept": float(np.mean(zz[keep] > 5)) if keep.any() else None,
            }
        rep["false_flag_rate"] = float(np.mean(~any_beyond[flagged])) if flagged.any() else None
        return rep

    # ------------------------------------------------------------------ state
    def _meta(self) -> dict:
        return {"format": _FORMAT, "kind": "neighbours", "label_names": list(self.label_names),
                "center": [float(v) for v in self.center], "scale": [float(v) for v in self.scale],
                "k_support": self.k_support, "min_support": self.min_support, "k_local": self.k_local,
                "min_local": self.min_local, "local_calibration": self.local_calibration, "tail": self.tail,
                "outlier_budget": self.outlier_budget,
                "outlier_threshold": self.outlier_threshold if np.isfinite(self.outlier_threshold) else None,
                "target": self.target, "fit_to": self.fit_to, "report": self.report,
                "disagreement_quantile": self.disagreement_quantile,
                "ci997_factor": None if self.ci997_factor is None else
                [float(v) if np.isfinite(v) else None for v in self.ci997_factor]}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"coords": np.ascontiguousarray(self.coords, dtype=np.float32),
               "has_label": np.ascontiguousarray(self.has_label, dtype=np.uint8),
               "z": np.ascontiguousarray(self.z, dtype=np.float32)}
        if self.disagreement is not None:
            out["disagreement"] = np.ascontiguousarray(self.disagreement, dtype=np.float32)
        return out

    def save(self, path: str | Path) -> Path:
        """One safetensors file: the arrays, the settings as JSON metadata."""
        from kielnet.quality.store import save_state

        return save_state(path, self.arrays(), "kielnet_neighbours", self._meta())

    @classmethod
    def load(cls, path: str | Path) -> "NeighbourModel":
        from kielnet.quality.store import load_state

        return cls.from_parts(*load_state(path, "kielnet_neighbours", "a neighbour-model"))

    @classmethod
    def from_parts(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "NeighbourModel":
        if meta.get("format") != _FORMAT or meta.get("kind") != "neighbours":
            raise ValueError(f"not a neighbour-model state (format={meta.get('format')!r})")
        names = list(meta["label_names"])
        coords, has, z = arrays["coords"], arrays["has_label"].astype(bool), arrays["z"]
        d = len(names) + 1
        if coords.ndim != 2 or coords.shape[1] != d or has.shape != (len(coords), len(names)) \
                or z.shape != has.shape:
            raise ValueError(f"neighbour-model arrays have inconsistent shapes {coords.shape}, {has.shape}, {z.shape}")
        if not np.isfinite(coords).all():
            raise ValueError("neighbour-model coordinates hold non-finite values")
        dis = arrays.get("disagreement")
        if dis is not None and dis.shape != (len(coords),):
            raise ValueError(f"neighbour-model disagreement has shape {dis.shape}, not ({len(coords)},)")
        thr = meta.get("outlier_threshold")
        c997 = meta.get("ci997_factor")
        if c997 is not None:
            c997 = np.array([np.nan if v is None else float(v) for v in c997])
            if c997.shape != (len(names),) or (c997[np.isfinite(c997)] < 1.0).any() or np.isinf(c997).any():
                raise ValueError(f"neighbour-model ci997_factor {meta.get('ci997_factor')!r} must give one factor "
                                 f">= 1 (or null) per label {names}")
        return cls(names, coords, has, z, np.asarray(meta["center"], float), np.asarray(meta["scale"], float),
                   k_support=int(meta["k_support"]), min_support=float(meta["min_support"]),
                   k_local=int(meta["k_local"]), min_local=int(meta["min_local"]),
                   local_calibration=bool(meta["local_calibration"]), tail=float(meta["tail"]),
                   outlier_budget=float(meta["outlier_budget"]),
                   outlier_threshold=float("inf") if thr is None else float(thr), target=float(meta["target"]),
                   fit_to=str(meta.get("fit_to", "1sigma")), report=dict(meta.get("report", {})),
                   disagreement=dis, disagreement_quantile=float(meta.get("disagreement_quantile", 0.90)),
                   ci997_factor=c997)


def conformal_factor(u: np.ndarray, level: float = GAUSSIAN_3SIGMA) -> float:
    """The split-conformal ``level`` quantile of the finite scores ``u`` (here |residual| /
    ci95 of reference stars): the ⌈(n + 1) level⌉-th smallest of n, so that a new star
    exchangeable with them scores above it with probability at most 1 − ``level``. NaN
    where n is too small for that rank (n < level / (1 − level): fewer than 370 stars for
    99.73 %)."""
    u = np.sort(np.asarray(u, dtype=np.float64)[np.isfinite(u)])
    rank = int(np.ceil((len(u) + 1) * level))
    return float(u[rank - 1]) if 1 <= rank <= len(u) else float("nan")


def _joint_factor(zn: np.ndarray, count: np.ndarray, f1: np.ndarray, f2: np.ndarray, target: float,
                  steps: int = 17) -> np.ndarray:
    """Per star and label, the factor between ``f1`` (1σ coverage = ``target``) and ``f2``
    (2σ coverage = 95.45 %) that minimises the larger of |cov1 − target| / 0.05 and
    |cov2 − 0.9545| / 0.03 over the neighbours' ``zn`` (m, L, k); NaN rows stay NaN."""
    lo, hi = np.fmin(f1, f2), np.fmax(f1, f2)
    grid = lo[..., None] + (hi - lo)[..., None] * np.linspace(0.0, 1.0, steps)  # (m, L, steps)
    n = np.maximum(count, 1)[..., None]
    with np.errstate(invalid="ignore"):
        cov1 = _count_below(zn, grid) / n
        cov2 = _count_below(zn, 2.0 * grid) / n
    cost = np.maximum(np.abs(cov1 - target) / COVERAGE_BANDS[0], np.abs(cov2 - GAUSSIAN_2SIGMA) / COVERAGE_BANDS[1])
    best = np.take_along_axis(grid, cost.argmin(axis=-1)[..., None], axis=-1)[..., 0]
    return np.where(np.isfinite(f1) & np.isfinite(f2), best, f1)


def _sorted_rows(z: np.ndarray) -> np.ndarray:
    """The neighbours' values ``z`` (m, k, L) as a contiguous float64 (m, L, k) array, each
    row sorted with NaN last. Sorted in the stored dtype, then widened: the same numbers
    as widening first (the cast is exact and keeps the order), and a contiguous float32
    sort along the last axis is ~3× faster than a float64 one along the middle axis."""
    return np.sort(np.ascontiguousarray(np.moveaxis(z, 1, 2)), axis=2).astype(np.float64)


def _count_below(zs: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``(zs[m, l, :] < g[m, l, s]).sum()`` for every star ``m``, label ``l`` and value ``s``:
    ``zs`` (m, L, k) sorted along its last axis with NaN last, ``g`` (m, L, S) → (m, L, S)
    int64. ``z < g`` holds for a prefix of a sorted row, so its length is found bit by bit
    (power-of-two steps from the largest ≤ k: log2 k rounds of one flat gather each, all
    rows at once): the same counts as comparing every neighbour with every value, without
    the (m, L, k, S) array. A NaN ``g`` counts 0, as its comparisons do."""
    m, n_labels, k = zs.shape
    if k == 0:
        return np.zeros(g.shape, np.int64)
    flat = np.ascontiguousarray(zs).reshape(-1)
    start = np.broadcast_to((np.arange(m * n_labels, dtype=np.int64) * k).reshape(m, n_labels, 1), g.shape)
    end, last = start + k, start + (k - 1)
    at = start.copy()  # the row's start + the prefix found so far
    step = 1 << (k.bit_length() - 1)
    while step:
        probe = at + (step - 1)
        with np.errstate(invalid="ignore"):
            at += step * ((probe < end) & (flat.take(np.minimum(probe, last)) < g))
        step >>= 1
    return at - start


def _sorted_quantile(zs: np.ndarray, count: np.ndarray, q: float) -> np.ndarray:
    """``numpy.nanquantile(z, q, axis=-1)`` (linear interpolation) of ``zs`` (m, L, k), sorted
    along its last axis with its ``count`` (m, L) finite values first — in one vectorised
    step (``nanquantile`` loops over the rows in Python, which made it most of ``predict``'s
    time). NaN where a row has no finite value."""
    k = zs.shape[-1]
    h = q * (count - 1)
    lo = np.clip(np.floor(h), 0, k - 1).astype(np.int64)
    hi = np.clip(np.minimum(lo + 1, count - 1), 0, k - 1).astype(np.int64)
    a = np.take_along_axis(zs, lo[..., None], axis=-1)[..., 0]
    b = np.take_along_axis(zs, hi[..., None], axis=-1)[..., 0]
    t = h - lo
    d = b - a
    out = np.where(t >= 0.5, b - d * (1 - t), a + d * t)  # numpy's _lerp
    return np.where(count > 0, out, np.nan)
