"""Catalogue text made per distinct pattern, not per star.

Bottom layer: imports numpy only, so that every other module can use it.

* :func:`joined_names` — per row of a boolean mask, the names of its set columns joined
  by a separator (``"bp_rp,g_rp"``; ``""`` for a row with none set): the catalogue's
  ``missing_inputs`` and ``spectrum_issues`` columns. A chunk of 10^4 stars holds a handful
  of distinct patterns, so each string is made once and gathered.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["joined_names"]

#: Columns packed into one int64 code per row at a time
_PACKED = 62


def _pattern_index(m: np.ndarray) -> np.ndarray:
    """(n,) int64: the same value for rows of ``m`` (n, k) bool with the same pattern,
    distinct values for different patterns (0 … patterns − 1). Blocks of up to
    :data:`_PACKED` columns are packed into int64 codes and combined block by block, so
    any ``k`` costs a few 1-D ``numpy.unique`` calls (``unique(axis=0)`` sorts rows as
    opaque records, ~20× slower on 10^4 rows of 118 columns)."""
    index = np.zeros(len(m), dtype=np.int64)
    for lo in range(0, m.shape[1], _PACKED):
        block = m[:, lo:lo + _PACKED]
        codes = block.astype(np.int64) @ (np.int64(1) << np.arange(block.shape[1], dtype=np.int64))
        _, in_block = np.unique(codes, return_inverse=True)
        _, index = np.unique(index * (int(in_block.max()) + 1) + in_block, return_inverse=True)
    return index.reshape(-1)


def joined_names(mask: np.ndarray, names: Sequence[str], sep: str = ",") -> np.ndarray:
    """Per row of ``mask`` (n, k) bool, the ``names`` (k) of its true columns, in column
    order, joined by ``sep``: a NumPy string array (n,), ``""`` where no column is set —
    the same strings, and dtype, as ``numpy.asarray([sep.join(...) for row in mask], dtype=str)``.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2 or m.shape[1] != len(names):
        raise ValueError(f"mask must be (n, {len(names)}) for {len(names)} names, got shape {m.shape}")
    if not len(m):
        return np.zeros(0, dtype=str)
    index = _pattern_index(m)
    _, first = np.unique(index, return_index=True)
    words = np.asarray([sep.join(n for n, on in zip(names, row) if on) for row in m[first]], dtype=str)
    return words[index]
