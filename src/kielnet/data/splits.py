"""Splits of a star table that keep every star on one side only.

The XP library holds some APOGEE stars twice; splitting by *id* (not by row)
prevents the same star from being in both the train and the validation/test set.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["crc32_holdout", "crc32_buckets", "group_split", "ensemble_heldout", "random_subset"]


def crc32_holdout(ids: np.ndarray, modulus: int = 5, remainder: int = 0) -> np.ndarray:
    """Boolean mask of stars with ``zlib.crc32(id.strip()) % modulus == remainder``.

    Deterministic across machines and Python versions; used for the fixed test set
    of the XP-library benchmark (modulus 5, remainder 0 → 20 % of stars).
    """
    return crc32_buckets(ids, modulus) == remainder


def crc32_buckets(ids: np.ndarray, modulus: int) -> np.ndarray:
    """``zlib.crc32(id.strip()) % modulus`` per star (int64): a reproducible split by id."""
    return np.fromiter((zlib.crc32(str(i).strip().encode()) % modulus for i in np.asarray(ids).tolist()),
                       dtype=np.int64, count=len(ids))


def group_split(ids: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split by unique id.

    Returns row-index arrays ``(train, val)``; all rows of one id fall on the same
    side, and about ``val_fraction`` of the unique ids go to validation.
    """
    ids = np.asarray(ids)
    uniq, inverse = np.unique(ids, return_inverse=True)
    rng = np.random.default_rng(seed)
    is_val = rng.random(len(uniq)) < val_fraction
    row_val = is_val[inverse]
    return np.flatnonzero(~row_val), np.flatnonzero(row_val)


def ensemble_heldout(ids: np.ndarray, n_splits: int, val_fraction: float, seed: int) -> np.ndarray:
    """The validation sides of a deep ensemble's random splits: bool array
    (n_rows, n_splits), True where row ``i`` is held out of split ``k``, split ``k``
    being :func:`group_split` with seed ``seed + k`` (the rule of
    :func:`kielnet.training.ensemble.train_ensemble`)."""
    held = np.zeros((len(ids), n_splits), dtype=bool)
    for k in range(n_splits):
        held[group_split(ids, val_fraction, seed + k)[1], k] = True
    return held


def random_subset(rows: np.ndarray, size: int, seed: int) -> np.ndarray:
    """At most ``size`` of the indices ``rows``: all of them if there are no more, else
    a sorted random choice without replacement (``numpy.random.default_rng(seed)``)."""
    rows = np.asarray(rows)
    if len(rows) <= size:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size, replace=False))
