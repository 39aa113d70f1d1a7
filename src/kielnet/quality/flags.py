"""Per-star quality flags of a kielnet catalogue.

``flag`` is an integer bitmask; ``status`` spells the set bits out as a
comma-separated list (``ok`` when none is set). Bits:

==========================  =====  ==========================================================
name                        bit    meaning
==========================  =====  ==========================================================
bad_spectrum                0      spectrum missing/unusable (too many non-finite pixels);
                                   labels are NaN
interpolated_pixels         1      some non-finite pixels were interpolated (count in
                                   ``n_bad_pixels``)
missing_input               2      a scalar input was missing and imputed with the training
                                   mean (named in ``missing_inputs``); with a σ model the
                                   star's σ carries the calibrated factor of the input
                                   group covering it (:mod:`kielnet.quality.sigma`)
input_outside_training      3      a scalar input lies outside its training range
label_not_reported          4      a label was withheld (value NaN; which and why in
                                   ``not_reported``): a reporting rule, no reference
                                   values for it near the star (label support,
                                   :mod:`kielnet.quality.neighbours`), or a predicted
                                   range where out-of-fold stars were too often > 3σ off
                                   (tail regimes, :mod:`kielnet.quality.tails`). The row's
                                   other labels are unaffected (:func:`usable_mask`)
out_of_distribution         5      the fast embedding score (``ood_score``) exceeds 1: the
                                   star is farther from the training stars than 99 % of
                                   them are from each other (bundles with embedding_ood)
ensemble_disagreement       6      the ensemble-disagreement score (``spread_score``)
                                   exceeds 1: the members disagree more than on the
                                   calibration quantile (default 90 %) of the training
                                   stars (bundles with ensemble_spread)
implausible_spectrum        7      the spectrum cannot be a star for this model (non-positive,
                                   constant, absurd scale or extreme spikes relative to the
                                   training spectra; tests named in ``spectrum_issues``,
                                   :mod:`kielnet.data.plausibility`); labels are NaN
outside_training_<label>    8+j    predicted label j lies outside its training range
prediction_failed           16     a member network produced a non-finite output (or a
                                   label or its σ came out non-finite); labels are NaN
label_unphysical            17     a predicted label lies outside the label's physically
                                   valid range (config ``labels[].valid_range``): the
                                   network extrapolated wildly; labels are NaN
missing_input_unlabelled    18     scalar inputs are missing and the bundle's σ model
                                   cannot cover them (``uncertainty.missing_inputs =
                                   withhold``, or no calibrated input group contains all
                                   the missing columns); labels are NaN
likely_outlier              19     the out-of-fold training stars nearest this one are
                                   wrong by more than 3 local σ unusually often
                                   (``outlier_score`` above the threshold fitted on them,
                                   :mod:`kielnet.quality.neighbours`)
==========================  =====  ==========================================================

Rows whose labels are NaN always carry a flag that says why; a row with status ``ok``
has finite labels and uncertainties (:func:`enforce_status` guarantees it).
"""

from __future__ import annotations

import numpy as np

__all__ = ["FLAG_BITS", "UNLABELLED_BITS", "label_bit", "flag_names", "status_strings", "describe_flags",
           "range_flags", "unlabelled_mask", "usable_mask"]

FLAG_BITS: dict[str, int] = {
    "bad_spectrum": 0,
    "interpolated_pixels": 1,
    "missing_input": 2,
    "input_outside_training": 3,
    "label_not_reported": 4,
    "out_of_distribution": 5,
    "ensemble_disagreement": 6,
    "implausible_spectrum": 7,
    "prediction_failed": 16,
    "label_unphysical": 17,
    "missing_input_unlabelled": 18,
    "likely_outlier": 19,
}
LABEL_BIT0 = 8
#: bits whose stars get no labels (NaN)
UNLABELLED_BITS = ("bad_spectrum", "implausible_spectrum", "prediction_failed", "label_unphysical",
                   "missing_input_unlabelled")


#: bits of 'label j outside its training range': 8-15 for the first eight labels, then 20-62
LABEL_BITS: tuple[int, ...] = tuple(range(LABEL_BIT0, 16)) + tuple(range(20, 63))


def label_bit(j: int) -> int:
    """Bit index of 'label j outside its training range' (``j`` < 51)."""
    if not 0 <= j < len(LABEL_BITS):
        raise ValueError(f"label index {j} has no flag bit (at most {len(LABEL_BITS)} labels)")
    return LABEL_BITS[j]


def flag_names(label_names: list[str]) -> dict[int, str]:
    """Bit index → name, including the per-label bits."""
    out = {b: n for n, b in FLAG_BITS.items()}
    out.update({label_bit(j): f"outside_training_{name}" for j, name in enumerate(label_names)})
    return out


def status_strings(flags: np.ndarray, label_names: list[str]) -> np.ndarray:
    """Human-readable status per star (``ok`` or comma-separated flag names)."""
    names = flag_names(label_names)
    values, inverse = np.unique(np.asarray(flags, dtype=np.int64), return_inverse=True)
    words = []
    for f in values:  # one string per distinct flag value, not per star
        set_bits = [names[b] for b in sorted(names) if int(f) >> b & 1]
        words.append(",".join(set_bits) if set_bits else "ok")
    return np.asarray(words, dtype=str)[inverse.reshape(-1)] if len(values) else np.zeros(0, dtype=str)


def describe_flags(label_names: list[str]) -> str:
    """One line per bit, for ``--help`` texts and catalogue headers."""
    docs = {
        "bad_spectrum": "spectrum unusable, labels NaN",
        "interpolated_pixels": "non-finite pixels interpolated (see n_bad_pixels)",
        "missing_input": "a scalar input was missing, imputed by the training mean (sigma widened for it)",
        "input_outside_training": "a scalar input outside its training range",
        "label_not_reported": "a label withheld (NaN; see not_reported): a reporting rule, no label support or a "
                              "tail regime",
        "out_of_distribution": "ood_score > 1: far from every training star (embedding)",
        "ensemble_disagreement": "spread_score > 1: members disagree more than on most training stars (with "
                                 "quality.ensemble_spread.local: than on most stars predicted alike)",
        "implausible_spectrum": "spectrum cannot be a star for this model (see spectrum_issues), labels NaN",
        "prediction_failed": "a network output or sigma was non-finite, labels NaN",
        "label_unphysical": "a predicted label outside its physically valid range, labels NaN",
        "missing_input_unlabelled": "scalar inputs missing that the sigma model cannot cover, labels NaN",
        "likely_outlier": "stars like this one (out-of-fold neighbours) are often wrong by > 3 sigma",
    }
    lines = {b: f"bit {b}: {n} - {docs[n]}" for n, b in FLAG_BITS.items()}
    lines.update({label_bit(j): f"bit {label_bit(j)}: outside_training_{n} - predicted {n} outside the "
                                f"training range" for j, n in enumerate(label_names)})
    return "\n".join(lines[b] for b in sorted(lines))


def unlabelled_mask(flags: np.ndarray) -> np.ndarray:
    """True for stars whose flags say they get no labels (:data:`UNLABELLED_BITS`)."""
    mask = sum(1 << FLAG_BITS[n] for n in UNLABELLED_BITS)
    return (np.asarray(flags, dtype=np.int64) & mask) != 0


def range_flags(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(n, k) bool: value outside [lo, hi] per column; ±inf counts as outside, NaN
    (no value) does not."""
    v = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        return ~np.isnan(v) & ((v < lo) | (v > hi))


def usable_mask(flags: np.ndarray, values: np.ndarray) -> np.ndarray:
    """True where a label value is good to use: it is reported (finite) and the row has
    no flag other than ``label_not_reported`` (which concerns only the labels it
    withheld, NaN in the catalogue). ``status == "ok"`` is the same test for all labels
    at once."""
    other = np.asarray(flags, dtype=np.int64) & ~np.int64(1 << FLAG_BITS["label_not_reported"])
    return (other == 0) & np.isfinite(np.asarray(values, dtype=float))
