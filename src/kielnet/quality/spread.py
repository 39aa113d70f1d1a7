"""Ensemble-disagreement out-of-distribution score (no maps, no reference spectra).

A deep ensemble's members agree on stars like the ones they were trained on and
disagree where they extrapolate (Lakshminarayanan et al. 2017). This module turns
that disagreement into a calibrated score:

1. **Spread.** For each star and label ``l``, ``s_l`` is the standard deviation over
   the members of their predictions *in the networks' scaled output space* (the space
   the members were trained in, so that a log-Teff label and a linear one are treated
   alike; for min-max or z-scaled labels it is the physical spread divided by a
   constant).
2. **Relative spread.** ``r = mean_l log(s_l / m_l)``, with ``m_l`` the median of
   ``s_l`` over the reference stars: the log of the geometric mean, over labels, of the
   spread in units of its typical training value. Every label counts equally whatever
   its units or how well it is learned.
3. **Calibration.** ``t`` is the ``quantile`` (default 0.90) quantile of ``r`` over the
   reference stars; the **score** is ``exp(r − t)``: score 1 is the ensemble's
   disagreement on the ``quantile``-th training star, score 2 is twice that (geometric
   mean over labels). ``score > 1`` flags a star (flag bit ``ensemble_disagreement``).

The reference is the training set itself (the only stars the bundle knows). Every
training star was seen by most members (each split trains on 75 % of them), so its
spread is a little smaller than that of a new star from the same population: a held-out
population is flagged slightly more often than ``1 − quantile``. On the XP library
(issue 4, ``benchmarks/rvs_validation.py``), ``quantile`` 0.90 flagged 11 % of held-out
in-range stars with 7 members; the benchmark JSON holds the measured value.

The state is a few numbers per label, stored in the bundle's JSON.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EnsembleSpread", "member_spread"]

_FORMAT = 1


def member_spread(preds_scaled: np.ndarray) -> np.ndarray:
    """(n_stars, n_labels) standard deviation over members (axis 0, ``ddof=1``) of
    ``preds_scaled`` (n_members, n_stars, n_labels)."""
    preds_scaled = np.asarray(preds_scaled, dtype=np.float64)
    if preds_scaled.ndim != 3:
        raise ValueError(f"expected (n_members, n_stars, n_labels), got shape {preds_scaled.shape}")
    if preds_scaled.shape[0] < 2:
        raise ValueError("the ensemble-disagreement score needs at least 2 members")
    return preds_scaled.std(axis=0, ddof=1)


class EnsembleSpread:
    """Ensemble-disagreement score (module docstring).

    Parameters
    ----------
    quantile
        Quantile of the reference stars' relative spread that defines score 1.
    """

    def __init__(self, *, quantile: float = 0.90) -> None:
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        self.quantile = float(quantile)
        self.label_names: list[str] = []
        self.log_median: np.ndarray = np.zeros(0)  # per label: log of the median reference spread
        self.threshold = float("nan")              # t: quantile of the reference relative spread
        self.n_reference = 0
        self.n_members = 0

    @property
    def fitted(self) -> bool:
        return self.n_reference > 0

    def _relative(self, spread: np.ndarray) -> np.ndarray:
        tiny = np.finfo(np.float64).tiny
        return np.mean(np.log(np.maximum(spread, tiny)) - self.log_median, axis=1)

    def fit(self, preds_scaled: np.ndarray, label_names: list[str]) -> "EnsembleSpread":
        """Calibrate on the reference stars' member predictions (n_members, n_stars,
        n_labels), scaled outputs. Stars with a non-finite prediction are left out."""
        spread = member_spread(preds_scaled)
        if spread.shape[1] != len(label_names):
            raise ValueError(f"{spread.shape[1]} labels predicted, {len(label_names)} names given")
        ok = np.isfinite(spread).all(axis=1)
        if ok.sum() < 2:
            raise ValueError("need at least 2 reference stars with finite predictions")
        spread = spread[ok]
        med = np.median(spread, axis=0)
        if not np.all(med > 0):
            raise ValueError("the members agree exactly on most reference stars (zero median spread of "
                             f"{[n for n, m in zip(label_names, med) if not m > 0]}); are they identical?")
        self.label_names = list(label_names)
        self.log_median = np.log(med)
        self.threshold = float(np.quantile(self._relative(spread), self.quantile))
        self.n_reference = int(len(spread))
        self.n_members = int(np.asarray(preds_scaled).shape[0])
        return self

    def score(self, preds_scaled: np.ndarray) -> np.ndarray:
        """(n_stars,) ``exp(r − t)``; > 1 = the members disagree more than on the
        ``quantile``-th training star. NaN where a prediction is not finite."""
        if not self.fitted:
            raise RuntimeError("EnsembleSpread.score called before fit/from_dict")
        preds_scaled = np.asarray(preds_scaled)
        if preds_scaled.ndim != 3 or preds_scaled.shape[2] != len(self.label_names):
            raise ValueError(f"expected (n_members, n_stars, {len(self.label_names)}), got {preds_scaled.shape}")
        if preds_scaled.shape[0] != self.n_members:
            raise ValueError(f"calibrated with {self.n_members} members, got {preds_scaled.shape[0]}: "
                             "the score of another ensemble size is not comparable; refit")
        with np.errstate(invalid="ignore"):
            return np.exp(self._relative(member_spread(preds_scaled)) - self.threshold)

    def flag(self, preds_scaled: np.ndarray) -> np.ndarray:
        """(n_stars,) bool: True where ``score > 1``."""
        with np.errstate(invalid="ignore"):
            return self.score(preds_scaled) > 1.0

    # ------------------------------------------------------------------ state
    def to_dict(self) -> dict:
        """JSON-able state."""
        return {"format": _FORMAT, "kind": "ensemble_spread", "quantile": self.quantile,
                "label_names": list(self.label_names), "log_median": [float(v) for v in self.log_median],
                "threshold": self.threshold, "n_reference": self.n_reference, "n_members": self.n_members}

    @classmethod
    def from_dict(cls, d: dict) -> "EnsembleSpread":
        if d.get("format") != _FORMAT or d.get("kind") != "ensemble_spread":
            raise ValueError(f"not an EnsembleSpread state (format={d.get('format')!r}, kind={d.get('kind')!r})")
        obj = cls(quantile=d["quantile"])
        obj.label_names = list(d["label_names"])
        obj.log_median = np.asarray(d["log_median"], dtype=np.float64)
        if len(obj.log_median) != len(obj.label_names):
            raise ValueError("EnsembleSpread state: log_median and label_names differ in length")
        obj.threshold = float(d["threshold"])
        obj.n_reference = int(d["n_reference"])
        obj.n_members = int(d["n_members"])
        return obj
