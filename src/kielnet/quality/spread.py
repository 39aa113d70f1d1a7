"""Ensemble-disagreement out-of-distribution score (no maps, no reference spectra).

A deep ensemble's members agree on stars like the ones they were trained on and
disagree where they extrapolate (Lakshminarayanan et al. 2017). This module turns
that disagreement into a calibrated score:

1. **Spread.** For each star and label ``l``, ``s_l`` is the standard deviation over
   the members of their predictions *in the networks' scaled output space* (the space
   the members were trained in, so that a log-Teff label and a linear one are treated
   alike; for min-max or z-scaled labels it is the physical spread divided by a
   constant).
2. **Relative spread.** ``r = mean_l (log s_l − b(n) − log m_l)``, with ``m_l`` the
   median of ``s_l`` over the reference stars: the log of the geometric mean, over
   labels, of the spread in units of its typical training value. Every label counts
   equally whatever its units or how well it is learned. ``b(n)`` is the bias of the
   log of a standard deviation over ``n`` normal draws,
   ``(ψ((n−1)/2) − log((n−1)/2)) / 2``, so that spreads over different numbers of
   members compare (see the out-of-bag calibration below).
3. **Calibration.** ``t`` is the ``quantile`` (default 0.90) quantile of ``r`` over the
   reference stars; the **score** is ``exp(r − t)``: score 1 is the ensemble's
   disagreement on the ``quantile``-th training star, score 2 is twice that (geometric
   mean over labels). ``score > 1`` flags a star (flag bit ``ensemble_disagreement``).

**Out-of-bag calibration.** The reference stars are training stars, and a training
star's members mostly saw it (each split trains on 75 % of the stars), so they agree on
it more than on a new star of the same kind: calibrated on all members, a held-out
population is flagged more often than ``1 − quantile`` (11.4 % instead of 10 % with
the 28-member ensemble of issue 4). :meth:`EnsembleSpread.fit` therefore takes a
``member_mask``: each reference star's spread is computed over the members that did
*not* train on it (the members of the splits that held it out), exactly the situation
of a new star. :func:`kielnet.training.quality.attach_quality` uses the stars held out
by at least two splits, so that the spread mixes splits as it does for new stars.
Fewer members (about 8 of 28) make that spread noisier, so the calibration errs on the
conservative side; ``calibration`` in the state says which was used. Measured on the
XP library: ``benchmarks/results/rvs_validation.json`` (``ood.ensemble_spread``).

**Local calibration** (``quality.ensemble_spread.local``). Where the training set is
sparse — hot stars in the XP library, say — the members disagree on correctly labelled
stars too, and a threshold over all training stars flags nearly all of them while the
stars the members agree on, wrongly, pass: with the 8 members of ``xp-apogee-dr17`` it
flagged 93 % of the hot stars the training-label cleaning dropped, and 5 of the 26 it
left usable lay beyond 3σ (``benchmarks/results/xp_hot_references.json``). Locally,
score 1 is the ``quantile`` of :func:`log_disagreement` among the out-of-fold training
stars nearest the star in predicted labels × S/N (:mod:`kielnet.quality.neighbours`,
which stores it per reference star): a star is flagged where its members disagree more
than on stars predicted alike. Both are in log units less the bias of their number of
members, so a new star's 8 members compare with a reference star's 2.

The state is a few numbers per label, stored in the bundle's JSON.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EnsembleSpread", "member_spread", "log_disagreement"]

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


def log_disagreement(preds_scaled: np.ndarray) -> np.ndarray:
    """(n_stars,) how much the members disagree on each star: the mean over labels of the
    log of their spread (:func:`member_spread`, scaled outputs) less its bias for that
    many normal members, so that ensembles of different sizes compare (natural log of a
    spread in scaled units). NaN where a prediction is not finite."""
    preds_scaled = np.asarray(preds_scaled, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.mean(EnsembleSpread._log_spread(member_spread(preds_scaled), preds_scaled.shape[0]), axis=1)


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
        self.calibration = ""                      # "out_of_bag" or "training"

    @property
    def fitted(self) -> bool:
        return self.n_reference > 0

    @staticmethod
    def _log_spread(spread: np.ndarray, n_used: np.ndarray | int) -> np.ndarray:
        """log of the spread minus its bias for ``n_used`` normal members,
        E[log s] − log σ = (ψ((n−1)/2) − log((n−1)/2)) / 2, so that spreads over
        different numbers of members compare (out-of-bag calibration)."""
        from scipy.special import digamma

        half = (np.asarray(n_used, dtype=np.float64) - 1.0) / 2.0
        bias = 0.5 * (digamma(half) - np.log(half))
        tiny = np.finfo(np.float64).tiny
        return np.log(np.maximum(spread, tiny)) - np.reshape(bias, (-1, 1) if np.ndim(bias) else ())

    def _relative(self, log_spread: np.ndarray) -> np.ndarray:
        return np.mean(log_spread - self.log_median, axis=1)

    def fit(self, preds_scaled: np.ndarray, label_names: list[str], *,
            member_mask: np.ndarray | None = None) -> "EnsembleSpread":
        """Calibrate on the reference stars' member predictions (n_members, n_stars,
        n_labels), scaled outputs. Stars with a non-finite prediction are left out.

        ``member_mask`` (n_stars, n_members) bool: the members whose predictions count
        for each star (out-of-bag calibration: those that did not train on it); stars
        with fewer than 2 are left out. ``None``: all members count for every star.
        """
        preds_scaled = np.asarray(preds_scaled, dtype=np.float64)
        spread = member_spread(preds_scaled)
        if member_mask is not None:
            mask = np.asarray(member_mask, dtype=bool)
            if mask.shape != (preds_scaled.shape[1], preds_scaled.shape[0]):
                raise ValueError(f"member_mask must be (n_stars, n_members) = "
                                 f"{(preds_scaled.shape[1], preds_scaled.shape[0])}, got {mask.shape}")
            n_used = mask.sum(axis=1)
            keep = n_used >= 2
            masked = np.where(mask.T[:, keep, None], preds_scaled[:, keep], np.nan)
            spread = np.nanstd(masked, axis=0, ddof=1)
            n_used = n_used[keep]
        else:
            n_used = np.full(len(spread), preds_scaled.shape[0])
        if spread.shape[1] != len(label_names):
            raise ValueError(f"{spread.shape[1]} labels predicted, {len(label_names)} names given")
        ok = np.isfinite(spread).all(axis=1)
        if ok.sum() < 2:
            raise ValueError("need at least 2 reference stars with finite predictions")
        spread, n_used = spread[ok], n_used[ok]
        med = np.median(spread, axis=0)
        if not np.all(med > 0):
            raise ValueError("the members agree exactly on most reference stars (zero median spread of "
                             f"{[n for n, m in zip(label_names, med) if not m > 0]}); are they identical?")
        log_spread = self._log_spread(spread, n_used)
        self.label_names = list(label_names)
        self.log_median = np.median(log_spread, axis=0)
        self.threshold = float(np.quantile(self._relative(log_spread), self.quantile))
        self.n_reference = int(len(spread))
        self.n_members = int(preds_scaled.shape[0])
        self.calibration = "training" if member_mask is None else "out_of_bag"
        return self

    def score(self, preds_scaled: np.ndarray, *, any_size: bool = False) -> np.ndarray:
        """(n_stars,) ``exp(r − t)``; > 1 = the members disagree more than on the
        ``quantile``-th training star. NaN where a prediction is not finite.

        ``preds_scaled`` must come from as many members as the calibration's
        (``n_members``): a catalogue's flag is defined for the whole ensemble. With
        ``any_size`` (diagnostics, e.g. a split's members on its held-out stars) any
        number ≥ 2 is scored with the log-spread bias of that number, as the out-of-bag
        calibration does — comparable in the mean, noisier with fewer members."""
        if not self.fitted:
            raise RuntimeError("EnsembleSpread.score called before fit/from_dict")
        preds_scaled = np.asarray(preds_scaled)
        if preds_scaled.ndim != 3 or preds_scaled.shape[2] != len(self.label_names):
            raise ValueError(f"expected (n_members, n_stars, {len(self.label_names)}), got {preds_scaled.shape}")
        m = preds_scaled.shape[0]
        if m != self.n_members and not (any_size and m >= 2):
            raise ValueError(f"calibrated with {self.n_members} members, got {m}: "
                             "the score of another ensemble size is not comparable; refit")
        with np.errstate(invalid="ignore"):
            log_spread = self._log_spread(member_spread(preds_scaled), m)
            return np.exp(self._relative(log_spread) - self.threshold)

    def flag(self, preds_scaled: np.ndarray) -> np.ndarray:
        """(n_stars,) bool: True where ``score > 1``."""
        with np.errstate(invalid="ignore"):
            return self.score(preds_scaled) > 1.0

    # ------------------------------------------------------------------ state
    def to_dict(self) -> dict:
        """JSON-able state."""
        return {"format": _FORMAT, "kind": "ensemble_spread", "quantile": self.quantile,
                "label_names": list(self.label_names), "log_median": [float(v) for v in self.log_median],
                "threshold": self.threshold, "n_reference": self.n_reference, "n_members": self.n_members,
                "calibration": self.calibration}

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
        obj.calibration = str(d.get("calibration", "training"))
        return obj
