"""Regimes where a label is too often wrong by more than 3 σ: there it is withheld.

A Gaussian σ says that 0.27 % of stars lie beyond 3 σ. Where the inputs cannot tell two
kinds of star apart, a label fails in a way no σ describes: the XP spectrum and colours
of some B and A stars (APOGEE Teff > 10,000 K) look like those of 6,500–8,000 K stars,
so among the stars predicted there about one in seven is a hot star labelled thousands
of kelvin too cool. Their σ is right for the cool majority and wrong for the hot ones,
and no per-star score tells them apart.

:class:`TailRegimes` finds such regimes on the ensemble's *out-of-fold* training stars
(each split's validation stars, predicted by that split's members), for every label
alike:

1. the stars with a reference value are sorted by their predicted label and cut into
   consecutive bins of ``bin_stars`` stars;
2. in each bin, the **tail rate** is the fraction of stars whose
   ``|predicted − reference| / σ`` exceeds ``tail`` (3), σ being the uncertainty the
   catalogue reports for them (the σ model times the neighbour model's local factor);
3. bins whose tail rate exceeds ``max_rate`` are the label's **withheld intervals** of
   the predicted value (adjacent bins merged; a first or last bin extends to −∞ / +∞,
   and interval edges lie halfway between the neighbouring bins' stars).

``predict`` withholds the label of any star predicted inside an interval (NaN, flag bit
``label_not_reported``, ``not_reported`` naming it ``<label>:tails``); the star's other
labels are unaffected. The rule needs no label-specific cut: on a training set without
such a degeneracy it withholds nothing. ``max_rate`` is a rate, not a budget, so the
withheld fraction follows the data. The state is a few numbers per label, stored in the
bundle's JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["TailRegimes"]

_FORMAT = 1


def _edge(v: float | None, default: float) -> float:
    return default if v is None else float(v)


@dataclass
class TailRegimes:
    """See the module docstring. Build with :meth:`fit`.

    ``intervals[label]``: list of ``(lo, hi, tail_rate, n_stars)``, the predicted-value
    interval ``lo <= value < hi`` (the label's physical unit) where the label is withheld,
    the tail rate and number of out-of-fold stars measured there."""

    label_names: list[str]
    intervals: dict[str, list[tuple[float, float, float, int]]]
    bin_stars: int = 250
    max_rate: float = 0.10
    tail: float = 3.0
    #: numbers measured on the out-of-fold stars when fitted (in sample)
    report: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, label_names: list[str], pred: np.ndarray, z: np.ndarray, *, bin_stars: int = 250,
            max_rate: float = 0.10, tail: float = 3.0) -> "TailRegimes":
        """Fit on out-of-fold stars: ``pred`` (n, L) predicted labels (physical units),
        ``z`` (n, L) ``|predicted − reference| / σ`` (NaN without a reference). A label
        with fewer than 2 × ``bin_stars`` such stars gets no interval."""
        pred = np.asarray(pred, dtype=np.float64)
        z = np.asarray(z, dtype=np.float64)
        if pred.shape != z.shape or pred.ndim != 2 or pred.shape[1] != len(label_names):
            raise ValueError(f"pred {pred.shape} and z {z.shape} must both be (n_stars, {len(label_names)})")
        if bin_stars < 1 or not 0 < max_rate <= 1 or tail <= 0:
            raise ValueError("need bin_stars >= 1, 0 < max_rate <= 1 and tail > 0")
        intervals: dict[str, list[tuple[float, float, float, int]]] = {}
        report: dict = {"labels": {}}
        for j, name in enumerate(label_names):
            ok = np.isfinite(pred[:, j]) & np.isfinite(z[:, j])
            p, beyond = pred[ok, j], z[ok, j] > tail
            order = np.argsort(p, kind="stable")
            p, beyond = p[order], beyond[order]
            n_bins = len(p) // int(bin_stars)
            found: list[tuple[float, float, float, int]] = []
            rates = []
            if n_bins >= 2:
                parts = np.array_split(np.arange(len(p)), n_bins)
                rates = [float(beyond[ix].mean()) for ix in parts]
                for b, ix in enumerate(parts):
                    if rates[b] <= max_rate:
                        continue
                    lo = -np.inf if b == 0 else 0.5 * (p[parts[b - 1][-1]] + p[ix[0]])
                    hi = np.inf if b == n_bins - 1 else 0.5 * (p[ix[-1]] + p[parts[b + 1][0]])
                    if found and found[-1][1] == lo:  # adjacent: merge
                        plo, _, prate, pn = found[-1]
                        n_all = pn + len(ix)
                        found[-1] = (plo, float(hi), (prate * pn + rates[b] * len(ix)) / n_all, n_all)
                    else:
                        found.append((float(lo), float(hi), rates[b], int(len(ix))))
            intervals[name] = found
            model = cls([name], {name: found}, int(bin_stars), float(max_rate), float(tail))
            w = model.withheld(p[:, None])[:, 0]
            report["labels"][name] = {
                "n_reference": int(len(p)), "n_bins": int(n_bins),
                "max_bin_tail_rate": max(rates) if rates else None,
                "withheld_fraction": float(w.mean()) if len(p) else 0.0,
                "beyond_tail_all": float(beyond.mean()) if len(p) else None,
                "beyond_tail_kept": float(beyond[~w].mean()) if (~w).any() else None,
            }
        return cls(list(label_names), intervals, int(bin_stars), float(max_rate), float(tail), report)

    def withheld(self, pred: np.ndarray) -> np.ndarray:
        """(n, n_labels) bool: the predicted label lies in one of its withheld intervals
        (NaN predictions are never withheld here)."""
        pred = np.asarray(pred, dtype=np.float64)
        out = np.zeros(pred.shape, dtype=bool)
        with np.errstate(invalid="ignore"):
            for j, name in enumerate(self.label_names):
                for lo, hi, _, _ in self.intervals.get(name, []):
                    out[:, j] |= (pred[:, j] >= lo) & (pred[:, j] < hi)
        return out

    def describe(self, units: dict[str, str] | None = None) -> str:
        """One paragraph for catalogue headers, ``predict --help`` and model cards."""
        units = units or {}
        parts = []
        for name in self.label_names:
            u = f" {units[name]}" if units.get(name) else ""
            for lo, hi, rate, n in self.intervals.get(name, []):
                rng = (f"below {hi:.4g}{u}" if not np.isfinite(lo) else f"above {lo:.4g}{u}" if not np.isfinite(hi)
                       else f"in [{lo:.4g}, {hi:.4g}){u}")
                parts.append(f"{name} predicted {rng} ({rate:.1%} of {n} out-of-fold stars there beyond "
                             f"{self.tail:g} sigma)")
        rule = (f"tail regimes: a label is withheld where more than {self.max_rate:.0%} of the out-of-fold "
                f"training stars predicted alike (bins of {self.bin_stars}) lay beyond {self.tail:g} sigma")
        return rule + (": " + "; ".join(parts) if parts else ": none found")

    # ------------------------------------------------------------------ state
    def to_dict(self) -> dict:
        return {"format": _FORMAT, "kind": "tail_regimes", "label_names": list(self.label_names),
                "bin_stars": self.bin_stars, "max_rate": self.max_rate, "tail": self.tail,
                "intervals": {n: [[None if not np.isfinite(lo) else lo, None if not np.isfinite(hi) else hi,
                                   rate, n_s] for lo, hi, rate, n_s in iv] for n, iv in self.intervals.items()},
                "report": self.report}

    @classmethod
    def from_dict(cls, d: dict) -> "TailRegimes":
        if d.get("format") != _FORMAT or d.get("kind") != "tail_regimes":
            raise ValueError(f"not a tail-regime state (format={d.get('format')!r}, kind={d.get('kind')!r})")
        names = list(d["label_names"])
        raw = d["intervals"]
        if set(raw) - set(names):
            raise ValueError(f"intervals for labels {sorted(set(raw) - set(names))} not in {names}")
        intervals = {}
        for n in names:
            iv = []
            for item in raw.get(n, []):
                lo, hi, rate, n_s = item
                lo, hi = _edge(lo, -np.inf), _edge(hi, np.inf)
                if not lo < hi:
                    raise ValueError(f"tail-regime interval [{lo}, {hi}) of {n} is empty")
                iv.append((lo, hi, float(rate), int(n_s)))
            intervals[n] = iv
        return cls(names, intervals, int(d["bin_stars"]), float(d["max_rate"]), float(d["tail"]),
                   dict(d.get("report", {})))
