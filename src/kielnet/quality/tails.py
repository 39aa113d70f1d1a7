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
withheld fraction follows the data; a label may have its own (``label_max_rate``), chosen
like the others on out-of-fold stars. The state is a few numbers per label, stored in the
bundle's JSON.

Choosing ``bin_stars`` and ``max_rate`` must not use the stars the rule is judged on: a
rule fitted on a set of stars and judged on the same stars finds every unlucky bin.
:func:`cross_fitted_withheld` fits on all groups of out-of-fold stars but one and applies
the rule to the one left out; :func:`choose_setting` picks, among candidate settings
judged that way, the one that keeps the most of a label while a *watched* set of stars
(the hot stars, whose misses made the rule necessary) stays within a tail budget. One
split of the stars into groups is luck: repeat the cross-fitting over several random
halvings (:func:`salted_halves`) and judge each setting by its mean.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TailRegimes", "choose_setting", "cross_fitted_withheld", "salted_halves"]

_FORMAT = 1


def _edge(v: float | None, default: float) -> float:
    return default if v is None else float(v)


@dataclass
class TailRegimes:
    """See the module docstring. Build with :meth:`fit`.

    ``intervals[label]``: list of ``(lo, hi, tail_rate, n_stars)``, the predicted-value
    interval ``lo <= value < hi`` (the label's physical unit) where the label is withheld,
    the tail rate and number of out-of-fold stars measured there. ``label_max_rate``: the
    labels fitted with another rate than ``max_rate``."""

    label_names: list[str]
    intervals: dict[str, list[tuple[float, float, float, int]]]
    bin_stars: int = 250
    max_rate: float = 0.10
    tail: float = 3.0
    #: numbers measured on the out-of-fold stars when fitted (in sample)
    report: dict = field(default_factory=dict)
    label_max_rate: dict[str, float] = field(default_factory=dict)

    def rate_of(self, name: str) -> float:
        """The max_rate label ``name`` was fitted with."""
        return float(self.label_max_rate.get(name, self.max_rate))

    @classmethod
    def fit(cls, label_names: list[str], pred: np.ndarray, z: np.ndarray, *, bin_stars: int = 250,
            max_rate: float = 0.10, tail: float = 3.0,
            label_max_rate: dict[str, float] | None = None) -> "TailRegimes":
        """Fit on out-of-fold stars: ``pred`` (n, L) predicted labels (physical units),
        ``z`` (n, L) ``|predicted − reference| / σ`` (NaN without a reference). A label
        with fewer than 2 × ``bin_stars`` such stars gets no interval. ``label_max_rate``
        gives some labels another rate than ``max_rate`` (each label is fitted on its own)."""
        pred = np.asarray(pred, dtype=np.float64)
        z = np.asarray(z, dtype=np.float64)
        label_max_rate = {k: float(v) for k, v in (label_max_rate or {}).items()}
        if pred.shape != z.shape or pred.ndim != 2 or pred.shape[1] != len(label_names):
            raise ValueError(f"pred {pred.shape} and z {z.shape} must both be (n_stars, {len(label_names)})")
        if set(label_max_rate) - set(label_names):
            raise ValueError(f"label_max_rate names labels {sorted(set(label_max_rate) - set(label_names))} "
                             f"not in {label_names}")
        rates = [max_rate, *label_max_rate.values()]
        if bin_stars < 1 or not all(0 < r <= 1 for r in rates) or tail <= 0:
            raise ValueError("need bin_stars >= 1, 0 < max_rate <= 1 (every label's) and tail > 0")
        intervals: dict[str, list[tuple[float, float, float, int]]] = {}
        report: dict = {"labels": {}}
        for j, name in enumerate(label_names):
            rate_j = label_max_rate.get(name, float(max_rate))
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
                    if rates[b] <= rate_j:
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
            model = cls([name], {name: found}, int(bin_stars), rate_j, float(tail))
            w = model.withheld(p[:, None])[:, 0]
            report["labels"][name] = {
                "n_reference": int(len(p)), "n_bins": int(n_bins), "max_rate": rate_j,
                "max_bin_tail_rate": max(rates) if rates else None,
                "withheld_fraction": float(w.mean()) if len(p) else 0.0,
                "beyond_tail_all": float(beyond.mean()) if len(p) else None,
                "beyond_tail_kept": float(beyond[~w].mean()) if (~w).any() else None,
            }
        return cls(list(label_names), intervals, int(bin_stars), float(max_rate), float(tail), report,
                   label_max_rate)

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
        own = ", ".join(f"{n} {r:.0%}" for n, r in self.label_max_rate.items())
        rate = f"{self.max_rate:.0%}" + (f" ({own})" if own else "")
        rule = (f"tail regimes: a label is withheld where more than {rate} of the out-of-fold training stars "
                f"predicted alike (bins of {self.bin_stars}) lay beyond {self.tail:g} sigma")
        return rule + (": " + "; ".join(parts) if parts else ": none found")

    # ------------------------------------------------------------------ state
    def to_dict(self) -> dict:
        return {"format": _FORMAT, "kind": "tail_regimes", "label_names": list(self.label_names),
                "bin_stars": self.bin_stars, "max_rate": self.max_rate, "tail": self.tail,
                "label_max_rate": dict(self.label_max_rate),
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
        own = {str(k): float(v) for k, v in d.get("label_max_rate", {}).items()}
        if set(own) - set(names):
            raise ValueError(f"label_max_rate for labels {sorted(set(own) - set(names))} not in {names}")
        return cls(names, intervals, int(d["bin_stars"]), float(d["max_rate"]), float(d["tail"]),
                   dict(d.get("report", {})), own)


def cross_fitted_withheld(label_names: list[str], pred: np.ndarray, z: np.ndarray, groups: np.ndarray, *,
                          bin_stars: int = 250, max_rate: float = 0.10, tail: float = 3.0,
                          label_max_rate: dict[str, float] | None = None) -> np.ndarray:
    """(n, n_labels) bool: what :meth:`TailRegimes.withheld` says of each star when the
    regimes are fitted on the *other* groups' stars only (``groups``: an integer per star,
    e.g. ``crc32(id) % 2``). ``bin_stars`` is the full-sample bin size; each fit uses
    ``bin_stars`` × its share of the stars (at least 20), so that a bin spans about the same
    range of the predicted label as in the full fit."""
    pred = np.asarray(pred, dtype=np.float64)
    groups = np.asarray(groups)
    if groups.shape != (len(pred),):
        raise ValueError(f"groups {groups.shape} must give one group per star ({len(pred)})")
    out = np.zeros(pred.shape, dtype=bool)
    keys = np.unique(groups)
    if len(keys) < 2:
        raise ValueError("cross-fitting needs at least two groups of stars")
    for g in keys:
        fit_on = groups != g
        bins = max(int(round(bin_stars * fit_on.mean())), 20)
        model = TailRegimes.fit(label_names, pred[fit_on], np.asarray(z)[fit_on], bin_stars=bins,
                                max_rate=max_rate, tail=tail, label_max_rate=label_max_rate)
        out[~fit_on] = model.withheld(pred[~fit_on])
    return out


def salted_halves(ids: Any, salt: str) -> np.ndarray:
    """A random half (0 / 1) per star from a keyed hash (BLAKE2b) of its id: the same for
    the same id and ``salt``, independent between salts and of ``crc32(id) % 2`` (crc32 is
    linear in its input, so halvings by salted crc32 would be one split or its mirror).
    Groups for :func:`cross_fitted_withheld`, repeated over salts to average out the luck
    of one halving."""
    key = salt.encode()[:64]
    return np.array([hashlib.blake2b(str(i).encode(), key=key, digest_size=1).digest()[0] & 1
                     for i in np.asarray(ids).tolist()], dtype=np.int64)


def choose_setting(results: dict[str, dict], *, budget: float) -> str:
    """The key of ``results`` to use: each value holds ``watched_beyond`` (the fraction of
    the watched stars kept whose label lies beyond the tail, cross-fitted) and ``kept``
    (the fraction of the label's stars kept). Among the settings with ``watched_beyond``
    ≤ ``budget`` the one keeping the most stars; when none meets the budget, the one with
    the smallest ``watched_beyond``. Ties go to the first key."""
    if not results:
        raise ValueError("no candidate settings")
    within = [k for k, r in results.items() if r["watched_beyond"] is not None and r["watched_beyond"] <= budget]
    if within:
        return max(within, key=lambda k: results[k]["kept"])
    scored = [k for k, r in results.items() if r["watched_beyond"] is not None]
    if not scored:
        raise ValueError("no candidate setting kept any watched star")
    return min(scored, key=lambda k: results[k]["watched_beyond"])
