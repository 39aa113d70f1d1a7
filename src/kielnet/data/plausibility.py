"""Physical plausibility of inputs, measured against the training set.

A network labels whatever it is given: an all-zero, negative, constant, rescaled or
spiked "spectrum" gets ordinary-looking labels, and a magnitude placeholder (99,
−999) gets used as a magnitude. This module decides, per star, what cannot be a star
*for this model*, so that such a star is flagged and not labelled.

Spectra
-------
Four statistics of each spectrum's flux ``f`` (after bad-pixel repair, before the
model's own normalisation; :func:`spectrum_statistics`):

=================  =================================================================
statistic          definition
=================  =================================================================
``nonpositive``    fraction of pixels with f ≤ 0
``scatter``        std(f) / mean(|f|) — 0 for a constant spectrum
``scale``          log10 median(|f|) [dex of the flux unit]
``spike``          max |f − median f| / (1.4826 MAD f) — the largest robust deviation
=================  =================================================================

:class:`SpectrumPlausibility` stores the training set's range of each (its 0.1 % and
99.9 % quantiles, so a few odd training stars do not widen it) and fails a spectrum

* ``nonpositive``: more non-positive pixels than ``nonpositive_margin`` above the
  training range's top, or every pixel ≤ 0;
* ``constant``: scatter below the training range's bottom / ``flat_factor`` (or 0);
* ``scale``: median |flux| more than ``scale_margin_dex`` outside the training range —
  only when the model sees the flux unnormalised (``spectrum.normalise = none``): a
  median-normalised model is blind to the scale;
* ``spike``: largest robust deviation above the training range's top × ``spike_factor``.

Scalar inputs
-------------
:class:`ColumnRanges` stores each scalar column's training range; a value equal to a
survey placeholder (``placeholders``) or farther than ``span_margin`` × the training
span outside the training range is treated as missing (NaN), never used as an input:
the star is then flagged ``missing_input`` like any other missing value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kielnet.stats import NORMAL_MAD_SCALE, row_nanmedian
from kielnet.threads import thread_map, thread_parts
from kielnet.words import joined_names

__all__ = ["SPECTRUM_TESTS", "spectrum_statistics", "SpectrumPlausibility", "ColumnRanges",
           "placeholder_mask"]

#: Names of the spectrum tests, in the order of their bits in :meth:`SpectrumPlausibility.failures`.
SPECTRUM_TESTS = ("nonpositive", "constant", "scale", "spike")
_QUANTILES = (0.001, 0.999)


def _rows_statistics(x: np.ndarray, fin: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The statistics of rows that each hold a finite pixel. ``fin``: the finite pixels of
    rows with a non-finite one (``x`` NaN there; NaN-aware reductions); ``None``: every
    pixel finite (plain reductions, the row median reused as the MAD's centre)."""
    nan = fin is not None
    median = row_nanmedian if nan else (lambda a: np.median(a, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        absx = np.abs(x)
        mean_abs = np.nanmean(absx, axis=1) if nan else absx.mean(axis=1)
        std = np.nanstd(x, axis=1) if nan else x.std(axis=1)
        nonpositive = ((x <= 0) & fin).sum(axis=1) / fin.sum(axis=1) if nan else (x <= 0).sum(axis=1) / x.shape[1]
        med = median(x)
        med_abs = med.copy()  # median |x| = median x for rows without a pixel <= 0
        signed = np.flatnonzero((x <= 0).any(axis=1))
        if len(signed):
            med_abs[signed] = median(absx[signed])
        dev = np.abs(x - med[:, None])
        peak = np.nanmax(dev, axis=1) if nan else dev.max(axis=1)
        # scipy.stats.median_abs_deviation(x, axis=1, scale="normal", nan_policy="omit") to the bit
        # (tests/test_stats.py), from the deviations already at hand
        mad = median(dev) / NORMAL_MAD_SCALE
        return {"nonpositive": nonpositive, "scatter": np.where(mean_abs == 0, 0.0, std / mean_abs),
                "scale": np.log10(med_abs), "spike": np.where(peak == 0, 0.0, peak / mad)}


#: Rows per part below which the statistics are not split between threads.
_MIN_PART = 1024


def _statistics_rows(f: np.ndarray, finite: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics of rows that each hold at least one finite pixel. Rows without a
    non-finite pixel take the plain path (:func:`_rows_statistics`), in parts run on threads
    (NumPy's reductions release the GIL); the numbers do not depend on the parts."""
    n = len(f)
    out = {k: np.empty(n) for k in ("nonpositive", "scatter", "scale", "spike")}
    full = finite.all(axis=1)
    rows = np.flatnonzero(full)
    if len(rows):
        chunks = [rows[a:b] for a, b in thread_parts(len(rows), _MIN_PART)]
        for idx, part in zip(chunks, thread_map(lambda r: _rows_statistics(f[r]), chunks)):
            for k in out:
                out[k][idx] = part[k]
    rows = np.flatnonzero(~full)
    if len(rows):
        part = _rows_statistics(np.where(finite[rows], f[rows], np.nan), finite[rows])
        for k in out:
            out[k][rows] = part[k]
    return out


def spectrum_statistics(flux: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics of the module docstring for each row of ``flux`` (n, n_pix).

    Non-finite pixels are ignored; a row without a finite pixel gives NaN everywhere.
    The MAD is scaled to a normal σ (the numbers of ``scipy.stats.median_abs_deviation``
    with ``scale="normal"`` and ``nan_policy="omit"``, as :func:`kielnet.stats.robust_sigma`).
    """
    f = np.asarray(flux, dtype=np.float64)
    out = {k: np.full(len(f), np.nan) for k in ("nonpositive", "scatter", "scale", "spike")}
    if f.ndim != 2 or not f.shape[1]:
        return out
    finite = np.isfinite(f)
    rows = np.flatnonzero(finite.any(axis=1))
    if len(rows):
        part = _statistics_rows(f[rows], finite[rows])
        for k in out:
            out[k][rows] = part[k]
    return out


@dataclass
class SpectrumPlausibility:
    """Training ranges of the spectrum statistics and the tests against them.

    Attributes
    ----------
    ranges
        statistic name → (low, high): the training stars' 0.1 % and 99.9 % quantiles.
    check_scale
        Whether the ``scale`` test applies (the model sees unnormalised flux).
    nonpositive_margin, flat_factor, scale_margin_dex, spike_factor
        Tolerances of the tests (see module docstring).
    """

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    check_scale: bool = True
    nonpositive_margin: float = 0.25
    flat_factor: float = 10.0
    scale_margin_dex: float = 1.0
    spike_factor: float = 10.0

    @classmethod
    def fit(cls, flux: np.ndarray, *, check_scale: bool, **tolerances: float) -> "SpectrumPlausibility":
        """Measure the training ranges on the training spectra ``flux`` (n, n_pix).

        Spectra that fail the absolute tests (every pixel ≤ 0, constant) are left out.
        """
        stats = spectrum_statistics(flux)
        keep = np.isfinite(stats["scatter"]) & (stats["scatter"] > 0) & (stats["nonpositive"] < 1)
        ranges = {}
        for name, vals in stats.items():
            v = vals[keep & np.isfinite(vals)]
            if v.size:
                lo, hi = np.quantile(v, _QUANTILES)
                ranges[name] = (float(lo), float(hi))
        return cls(ranges=ranges, check_scale=check_scale, **tolerances)

    def failures(self, flux: np.ndarray) -> np.ndarray:
        """(n, len(SPECTRUM_TESTS)) bool: which tests each spectrum fails.

        Rows without a finite pixel fail none (they are ``bad_spectrum`` already).
        """
        s = spectrum_statistics(flux)
        n = len(s["scale"])
        out = np.zeros((n, len(SPECTRUM_TESTS)), dtype=bool)
        have = np.isfinite(s["nonpositive"])
        r = self.ranges
        with np.errstate(invalid="ignore"):
            nonpos = s["nonpositive"] >= 1.0
            if "nonpositive" in r:
                nonpos |= s["nonpositive"] > r["nonpositive"][1] + self.nonpositive_margin
            flat = ~(s["scatter"] > 0)
            if "scatter" in r:
                flat |= s["scatter"] < r["scatter"][0] / self.flat_factor
            scale = np.zeros(n, dtype=bool)
            if self.check_scale and "scale" in r:
                lo, hi = r["scale"]
                scale = ~((s["scale"] >= lo - self.scale_margin_dex) & (s["scale"] <= hi + self.scale_margin_dex))
            spike = np.zeros(n, dtype=bool)
            if "spike" in r:
                spike = s["spike"] > r["spike"][1] * self.spike_factor
        for j, test in enumerate((nonpos, flat, scale, spike)):
            out[:, j] = test & have
        return out

    @staticmethod
    def describe(failures: np.ndarray) -> np.ndarray:
        """Comma-separated names of the failed tests per star (``""`` if none)."""
        return joined_names(np.reshape(failures, (-1, len(SPECTRUM_TESTS))), SPECTRUM_TESTS)

    def to_dict(self) -> dict:
        return {"ranges": {k: list(v) for k, v in self.ranges.items()}, "check_scale": self.check_scale,
                "nonpositive_margin": self.nonpositive_margin, "flat_factor": self.flat_factor,
                "scale_margin_dex": self.scale_margin_dex, "spike_factor": self.spike_factor}

    @classmethod
    def from_dict(cls, d: dict) -> "SpectrumPlausibility":
        d = dict(d)
        d["ranges"] = {k: (float(v[0]), float(v[1])) for k, v in d.get("ranges", {}).items()}
        return cls(**d)


def placeholder_mask(values: np.ndarray, placeholders: list[float] | tuple[float, ...]) -> np.ndarray:
    """True where a value equals one of the survey placeholders (to float32 precision,
    so that 99.999 stored as float32 still matches)."""
    v = np.asarray(values, dtype=np.float64)
    out = np.zeros(v.shape, dtype=bool)
    for p in placeholders:
        out |= np.isclose(v, p, rtol=1e-6, atol=0.0)
    return out


@dataclass
class ColumnRanges:
    """Training range of each scalar column and the rule that turns values far outside
    it into missing values (see module docstring).

    Attributes
    ----------
    ranges
        column → (min, max) over the training stars, in the column's unit.
    span_margin
        Values more than ``span_margin`` × max(max − min, 1) outside the range are missing.
    """

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    span_margin: float = 2.0

    @classmethod
    def fit(cls, columns: dict[str, np.ndarray], span_margin: float) -> "ColumnRanges":
        ranges = {}
        for name, v in columns.items():
            v = np.asarray(v, dtype=np.float64)
            v = v[np.isfinite(v)]
            if v.size:
                ranges[name] = (float(v.min()), float(v.max()))
        return cls(ranges, span_margin)

    def far_outside(self, name: str, values: np.ndarray) -> np.ndarray:
        """True where ``values`` of column ``name`` lie beyond the margin (±inf included)."""
        v = np.asarray(values, dtype=np.float64)
        if name not in self.ranges:
            return np.isinf(v)
        lo, hi = self.ranges[name]
        w = self.span_margin * max(hi - lo, 1.0)
        with np.errstate(invalid="ignore"):
            return ~np.isnan(v) & ((v < lo - w) | (v > hi + w))

    def to_dict(self) -> dict:
        return {"ranges": {k: list(v) for k, v in self.ranges.items()}, "span_margin": self.span_margin}

    @classmethod
    def from_dict(cls, d: dict) -> "ColumnRanges":
        return cls({k: (float(v[0]), float(v[1])) for k, v in d.get("ranges", {}).items()},
                   float(d.get("span_margin", 2.0)))
