"""Vectorised parsing of the Gaia archive's array strings, ``"(c1, c2, …)"``.

The archive's CSV form of ``xp_continuous_mean_spectrum`` writes every array cell
(coefficients, errors, correlations) as one string. :func:`parse_array_strings` turns
a whole column of them into an ``(n, k)`` float64 array with pyarrow compute kernels
so no Python code runs per cell. The common case (every non-empty cell bracketed and
well formed) takes a fast path: the commas are found in the cells' bytes (NumPy), their
positions become the offsets of a string array of the values over the same bytes, and
Arrow strips the separators, brackets and whitespace and casts every value at once, in
parts run on threads (Arrow's kernels release the GIL; no list array is built: half the
CPU of splitting on ``","`` and trimming). Anything else — a value that is
not a number, a wrong count, stray text — falls back to the general path (bracket strip,
split on ``","``, whitespace trim, one cast of all values at once), which gives the same
numbers and finds the bad cells; only those are re-read one by one, to say why
(:func:`bad_cell_reasons`).

Cell rules (those of :func:`kielnet.io.gaia_rvs._parse_array_cell`, the per-cell reader):

* a null / masked cell, an empty or blank string, ``"()"`` and a cell whose values are
  all NaN are *empty*: a NaN row, not a problem;
* one pair of enclosing brackets, ``(…)`` or ``[…]``, is stripped when the cell has
  both; values are separated by ``","`` with optional whitespace;
* a cell with a value that is not a number (``"(1.0, abc)"``, ``"(1.0, , 2.0)"``) or
  with a number of values other than ``n_values`` is *bad*: a NaN row, flagged.

Numbers are decimal floats as the archive writes them (``1.5``, ``-2e-05``, ``.5``,
``NaN``, ``inf``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kielnet.io.checks import shown
from kielnet.threads import thread_map, thread_parts

__all__ = ["parse_array_strings", "bad_cell_reasons", "array_strings"]

#: A value the cast accepts (Arrow's string → float64 rules, the archive's spelling).
_NUMBER = r"(?i)^[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?|nan|inf(?:inity)?)$"
#: Opening and closing bracket bytes of a cell (the fast path).
_OPEN = np.frombuffer(b"([", np.uint8)
_CLOSE = np.frombuffer(b")]", np.uint8)
#: One enclosing bracket pair and surrounding whitespace.
_BRACKETS = r"(?s)^\s*[(\[](.*)[)\]]\s*$"


def array_strings(column: Any) -> pa.Array:
    """A column of array strings (astropy (masked) column, NumPy array, list, pyarrow
    array) as a pyarrow ``large_string`` array, masked / ``None`` cells as nulls.

    Bytes cells are decoded as UTF-8 (undecodable bytes become U+FFFD, so the cell
    fails to parse and is reported as bad).
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(column, pa.Array):
        return column.cast(pa.large_string())
    mask = np.ma.getmaskarray(column).ravel() if np.ma.isMaskedArray(column) else None
    data = np.asarray(np.ma.getdata(column)).ravel()
    if data.dtype.kind == "S":
        data = np.char.decode(data, "utf-8", errors="replace")
    if data.dtype.kind == "O":  # None / NaN cells are nulls
        try:
            arr = pa.array(data, type=pa.large_string(), from_pandas=True)
        except (pa.ArrowTypeError, pa.ArrowInvalid):  # bytes cells: decoded one by one
            data = np.array([bytes(v).decode("utf-8", errors="replace")
                             if isinstance(v, (bytes, np.bytes_)) else v for v in data],
                            dtype=object)
            arr = pa.array(data, type=pa.large_string(), from_pandas=True)
        if mask is not None and mask.any():
            arr = pc.if_else(pa.array(mask), pa.scalar(None, pa.large_string()), arr)
        return arr
    return pa.array(data.astype(str), type=pa.large_string(), mask=mask)


def _split(strings: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """→ (list<string> of trimmed values per cell, empty-cell mask, cell lengths)."""
    body = pc.replace_substring_regex(strings, _BRACKETS, r"\1")
    body = pc.utf8_trim_whitespace(body)
    empty = np.asarray(pc.fill_null(pc.equal(body, ""), True).to_numpy(zero_copy_only=False),
                       dtype=bool)
    # empty cells become null lists (length 0), so they add no values
    body = pc.if_else(pa.array(empty), pa.scalar(None, pa.large_string()), body)
    lists = pc.split_pattern(body, ",")
    lengths = np.asarray(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(
        zero_copy_only=False), dtype=np.int64)
    return lists, empty, lengths


def _values(lists: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """All values of all cells flattened → (float64 values, valid-number mask)."""
    flat = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    ok = np.asarray(pc.match_substring_regex(flat, _NUMBER).to_numpy(zero_copy_only=False),
                    dtype=bool)
    cleaned = pc.if_else(pa.array(ok), flat, pa.scalar("nan", pa.large_string()))
    try:
        values = pc.cast(cleaned, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:  # a spelling the pattern lets through but the cast refuses
        values = np.empty(len(flat))
        for i, v in enumerate(cleaned.to_pylist()):
            try:
                values[i] = float(v)
            except ValueError:
                values[i], ok[i] = np.nan, False
    return np.asarray(values, dtype=np.float64), ok


#: Cells per part below which the fast path does not split its work between threads.
_MIN_PART = 256


#: Bytes stripped from both ends of every value by the fast path: the separator, the
#: brackets and spaces (a value's text runs from after one comma to after the next).
_STRIP = " ,()[]"


def _split_cast(cells: pa.Array, n_values: int) -> np.ndarray | None:
    """Bracketed cells (a ``large_string`` array) → ``(len(cells), n_values)`` values, or
    None when a cell holds another number of values, a bracket inside, or a value the
    float cast refuses.

    No list array is built: the commas are found in the cells' bytes at once (NumPy),
    their positions become the offsets of a string array over the same bytes (every
    value's text from after one comma to after the next, so it carries that comma and,
    last in a cell, the brackets), and Arrow strips those (:data:`_STRIP`) and casts —
    half the CPU of splitting into a list and trimming. What was stripped is then
    accounted for: exactly the commas, the spaces and the cells' own brackets, so a
    bracket inside a cell is never stripped silently."""
    m = len(cells)
    off = np.frombuffer(cells.buffers()[1], np.int64)[cells.offset:cells.offset + m + 1]
    data = cells.buffers()[2]
    seg = np.frombuffer(data, np.uint8)[off[0]:off[-1]]
    commas = np.flatnonzero(seg == ord(","))
    if len(commas) != m * (n_values - 1):
        return None
    new = np.empty(m * n_values + 1, np.int64)
    starts = new[:-1].reshape(m, n_values)
    starts[:, 0] = off[:-1] + 1                                        # after the opening bracket
    if n_values > 1:
        commas = (commas + off[0]).reshape(m, n_values - 1)
        # every cell holds its own n_values - 1 commas (sorted positions, the right total)
        if not ((commas[:, 0] > off[:-1]).all() and (commas[:, -1] < off[1:]).all()):
            return None
        starts[:, 1:] = commas + 1
    new[-1] = off[-1]
    values = pa.LargeStringArray.from_buffers(m * n_values, pa.py_buffer(new), data)
    trimmed = pc.ascii_trim(values, _STRIP)
    kept = np.frombuffer(trimmed.buffers()[1], np.int64)[[trimmed.offset, trimmed.offset + len(trimmed)]]
    stripped = (len(seg) - 1) - int(kept[1] - kept[0])                 # the values cover all but the first bracket
    if stripped != m * (n_values - 1) + np.count_nonzero(seg == ord(" ")) + 2 * m - 1:
        return None                                                    # a bracket inside a cell
    try:
        out = pc.cast(trimmed, pa.float64())
    except pa.ArrowInvalid:  # an empty value, stray text, not a number
        return None
    return out.to_numpy(zero_copy_only=False).reshape(m, n_values)


def _parse_fast(arr: pa.Array, n_values: int) -> np.ndarray | None:
    """``arr`` a ``large_string`` array (:func:`array_strings`). Every cell null, ``""``,
    ``"()"`` / ``"[]"``, or bracketed with ``n_values`` numbers separated by ``","`` and
    ASCII whitespace → ``(n, n_values)`` values (NaN rows for empty cells); anything
    else → ``None``.

    The bracketed cells are split on ``","``, trimmed and all their values cast to float64
    at once by Arrow kernels, in a few parts run on threads (:func:`kielnet.threads.thread_map`;
    the kernels release the GIL), each part writing its rows of the result itself.
    """
    n = len(arr)
    valid = (np.ones(n, bool) if arr.null_count == 0 else
             np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool))
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + n + 1]
    size = np.diff(offsets)
    full = valid & (size > 2)
    short = valid & (size > 0) & ~full
    if short.any() and not np.isin(arr.filter(pa.array(short)).to_numpy(zero_copy_only=False),
                                   ["()", "[]"]).all():
        return None
    if not full.any():
        return np.full((n, n_values), np.nan)
    cells = arr if full.all() else arr.filter(pa.array(full))
    offsets = np.frombuffer(cells.buffers()[1], np.int64)[cells.offset:cells.offset + len(cells) + 1]
    data = np.frombuffer(cells.buffers()[2], np.uint8)
    if not (np.isin(data[offsets[:-1]], _OPEN).all() and np.isin(data[offsets[1:] - 1], _CLOSE).all()):
        return None
    # every row written below when every cell is full; else NaN rows for the empty ones
    rows = None if full.all() else np.flatnonzero(full)
    values = np.empty((n, n_values)) if rows is None else np.full((n, n_values), np.nan)

    def part(bounds: tuple[int, int]) -> bool:
        """Cells ``lo:hi`` parsed and written into their rows of ``values`` (on a pool thread)."""
        lo, hi = bounds
        got = _split_cast(cells.slice(lo, hi - lo), n_values)
        if got is None:
            return False
        if rows is None:
            values[lo:hi] = got
        else:
            values[rows[lo:hi]] = got
        return True

    return values if all(thread_map(part, thread_parts(len(cells), _MIN_PART))) else None


def parse_array_strings(strings: Any, n_values: int, *, null_as_nan: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Parse a column of ``"(c1, c2, …)"`` strings into a float64 array, vectorised.

    Parameters
    ----------
    strings
        ``n`` array strings: a pyarrow string array, a NumPy / astropy (masked) column
        or a list; ``None`` / masked cells are empty.
    n_values
        Values expected in each non-empty cell (55 for XP coefficients and errors,
        1,485 for correlations).
    null_as_nan
        A value spelled ``null`` is NaN (ECSV's JSON arrays write a missing element so);
        otherwise it is not a number and its cell is bad. The cells are rewritten
        (``null`` → ``nan``) only when the fast path fails on them.

    Returns
    -------
    values, bad
        ``values`` ``(n, n_values)`` float64 in the unit of the cells; NaN rows for
        empty and for bad cells. ``bad`` ``(n,)`` bool: the cell holds a value that is
        not a number or a number of values other than ``n_values`` (see
        :func:`bad_cell_reasons` for why).
    """
    arr = array_strings(strings)
    n = len(arr)
    fast = _parse_fast(arr, n_values) if n else None
    if fast is None and n and null_as_nan:
        arr = _nulls_as_nan(arr)
        fast = _parse_fast(arr, n_values)
    if fast is not None:
        return fast, np.zeros(n, bool)  # an all-NaN cell is empty, as below
    lists, empty, lengths = _split(arr)
    flat, ok = _values(lists)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if n else np.zeros(0, np.int64)
    nonempty = lengths > 0
    # per cell: any value that is not a number, all values NaN
    bad_number = np.zeros(n, bool)
    all_nan = np.zeros(n, bool)
    if flat.size:
        idx = starts[nonempty]
        bad_number[nonempty] = np.add.reduceat(~ok, idx) > 0
        all_nan[nonempty] = np.add.reduceat(~np.isnan(flat), idx) == 0
    all_nan &= ~bad_number
    empty = empty | all_nan
    bad = ~empty & (bad_number | (lengths != n_values))
    good = ~empty & ~bad
    values = np.full((n, n_values), np.nan)
    if good.any():
        rows = np.flatnonzero(good)
        take = (starts[rows][:, None] + np.arange(n_values)[None, :])
        values[rows] = flat[take]
    return values, bad


def _nulls_as_nan(arr: pa.Array) -> pa.Array:
    """The cells with every ``null`` value spelled ``nan``."""
    return pc.replace_substring(arr, "null", "nan")


def bad_cell_reasons(strings: Any, rows: Sequence[int] | np.ndarray, n_values: int, *,
                     null_as_nan: bool = False) -> dict[int, str]:
    """Why each of ``rows`` (bad cells of :func:`parse_array_strings`) is bad.

    Returns ``{row: reason}`` with the reader's wording: ``"cannot parse the cell: value
    1 of the cell is 'abc', not a number"`` or ``"54 values, expected 55"``. Only the
    given rows are read (one by one: they are few).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return {}
    arr = array_strings(strings).take(pa.array(rows))
    if null_as_nan:
        arr = _nulls_as_nan(arr)
    lists, _, lengths = _split(arr)
    out: dict[int, str] = {}
    for row, cell, count in zip(rows.tolist(), lists.to_pylist(), lengths.tolist()):
        parts = [v.strip() for v in (cell or [])]
        _, ok = _values(pa.array([parts], type=pa.list_(pa.large_string())))
        if not ok.all():
            first = int(np.flatnonzero(~ok)[0])
            out[row] = (f"cannot parse the cell: value {first} of the cell is "
                        f"{shown(parts[first])!r}, not a number")
        else:
            out[row] = f"{count} values, expected {n_values}"
    return out
