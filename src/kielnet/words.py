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

#: Columns up to which a row's pattern is packed into one int64 code (else ``numpy.unique`` on rows)
_PACKED = 62


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
    if m.shape[1] <= _PACKED:
        codes = m.astype(np.int64) @ (np.int64(1) << np.arange(m.shape[1], dtype=np.int64))
        keys, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
        patterns = m[first]
    else:
        patterns, inverse = np.unique(m, axis=0, return_inverse=True)
    words = np.asarray([sep.join(n for n, on in zip(names, row) if on) for row in patterns], dtype=str)
    return words[inverse.reshape(-1)]
