"""The archive's CSV rows of XP continuous spectra cut at every comma, vectorised: the
fast path of :mod:`kielnet.io.streams.xp_continuous`.

A row of an archive or bulk-download file is ``source_id,solution_id,…,"(c1, c2, …)",…``:
every value of every cell, a scalar or an element of one of the six array cells, ends
at a comma or at the line's end. So a block of whole lines (:func:`line_blocks`) is cut
at every comma and newline at once (NumPy); the pieces become one Arrow string array over
the block's own bytes; the separators, brackets, quotes and spaces are stripped and every
value is cast to float64 in one call (:func:`parse_block`). No CSV tokeniser runs and no
cell's text is copied into a string column. The cells are then found row by row by
walking the header's columns: an array cell is either empty (one empty piece) or holds
its 55 / 1,485 values between brackets.

Only blocks that the general reader (``pyarrow.csv`` and
:func:`kielnet.io.xp_arrays.parse_array_strings`) reads to the same numbers take this
path. :func:`parse_block` returns ``None`` for anything else: a blank line, a quoted scalar,
a ``null`` value, an array cell without quotes (which a CSV reader splits), a cell with
another number of values, an empty value or a bracket inside a cell, text that is not a
number. The caller then reads that block with ``pyarrow.csv``, which finds and names the
bad cells.

In ``benchmarks/xp_archive.py`` (runs 4 and 5, README) the whole ``kielnet predict`` on
10^5 archive rows is as fast as with ``pyarrow.csv`` alone and peaks 0.3 GiB lower.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["line_blocks", "split_lines", "parse_block", "ParsedBlock", "STRIP"]

_COMMA, _NEWLINE, _QUOTE, _CR = (ord(c) for c in ',\n"\r')
_OPEN = np.frombuffer(b"([", np.uint8)
_CLOSE = np.frombuffer(b")]", np.uint8)
#: Bytes stripped from both ends of every piece: its separator, brackets, quotes, spaces.
STRIP = ' ,()[]"\r\n'
#: Longest line, in blocks (at least 64 MiB), before :func:`line_blocks` gives up.
_LONGEST = 4
#: Bytes per read from the stream in :func:`line_blocks`.
READ_BYTES = 1 << 22


def line_blocks(stream: BinaryIO, block_size: int, skip_lines: int = 0,
                longest: int | None = None) -> Iterator[memoryview]:
    """The whole lines of a binary stream in blocks of about ``block_size`` bytes, each
    ending with a newline (one is added after a last line that has none), after the first
    ``skip_lines`` lines (a header). A line longer than ``longest`` bytes (default the
    larger of 4 blocks and 64 MiB) is a ``ValueError``.

    Each block is one array: the partial line the previous block ended with, then the
    stream read into it in :data:`READ_BYTES` slices (``readinto``; no other copy). One
    large read is slower: ISA-L's igzip inflates 32 MiB reads at ~0.7 GB/s and 4 MiB reads
    at ~1.0 GB/s here (ad hoc, on a bulk-download file)."""
    longest = max(_LONGEST * block_size, 1 << 26) if longest is None else int(longest)
    carry = _after_header(stream, int(skip_lines), min(max(1, int(block_size)), 1 << 16))
    if carry is None:
        return
    while True:
        block = np.empty(len(carry) + max(1, int(block_size)), np.uint8)
        block[:len(carry)] = np.frombuffer(carry, np.uint8)
        got = _fill(stream, memoryview(block)[len(carry):])
        if not got:
            break
        end = len(carry) + got
        cut = _last_newline(block, len(carry), end)
        if cut < 0:  # a line longer than the block: read on
            carry = block[:end].tobytes()
            if len(carry) > longest:
                raise ValueError(f"no line end in {len(carry)} bytes")
            continue
        carry = block[cut + 1:end].tobytes()
        yield memoryview(block)[:cut + 1]
    if carry:
        yield memoryview(carry + b"\n")


def _after_header(stream: BinaryIO, skip_lines: int, read: int) -> bytes | None:
    """The bytes read past the first ``skip_lines`` lines (``None``: the stream ends
    before), in reads of ``read`` bytes: a header is short, and what is read past it
    starts the first block."""
    data, start = b"", 0
    while skip_lines:
        cut = data.find(b"\n", start)
        if cut < 0:
            more = stream.read(read)
            if not more:
                return None
            data, start = data[start:] + more, 0
            continue
        start, skip_lines = cut + 1, skip_lines - 1
    return data[start:]


def _fill(stream: BinaryIO, out: memoryview) -> int:
    """Read the stream into ``out`` in :data:`READ_BYTES` slices until it is full or the
    stream ends; the bytes read. A stream without ``readinto`` is read and copied."""
    readinto = getattr(stream, "readinto", None)
    got = 0
    while got < len(out):
        if readinto is not None:
            n = readinto(out[got:got + READ_BYTES])
        else:
            data = stream.read(min(READ_BYTES, len(out) - got))
            n = len(data)
            out[got:got + n] = data
        if not n:
            break
        got += n
    return got


def _last_newline(buf: np.ndarray, lo: int, hi: int) -> int:
    """Index of the last newline in ``buf[lo:hi]``, -1 if none (searched backwards in
    growing windows: a line is short beside a block)."""
    window = 1 << 16
    top = hi
    while top > lo:
        a = max(lo, top - window)
        found = bytes(buf[a:top]).rfind(b"\n")
        if found >= 0:
            return a + found
        top, window = a, window * 2
    return -1


def split_lines(block: memoryview, parts: int) -> list[memoryview]:
    """``block`` (whole lines) cut into up to ``parts`` consecutive runs of whole lines of
    about equal size (to be parsed on threads)."""
    n = len(block)
    cuts = [0]
    for i in range(1, max(1, parts)):
        at, window = max(n * i // parts, cuts[-1]), 1 << 16
        while at < n:
            found = bytes(block[at:at + window]).find(b"\n")
            if found >= 0:
                at += found + 1
                break
            at, window = at + window, window * 2
        if cuts[-1] < at < n:
            cuts.append(at)
    cuts.append(n)
    return [block[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


class ParsedBlock:
    """The rows of a block as :func:`~kielnet.io.gaia_xp.xp_star_table` reads them:
    ``colnames``, ``num_rows``, ``block[name]`` (a scalar column as a (masked) NumPy
    column, an array column as a ``(rows, values)`` float64 array with NaN rows for empty
    cells) and ``slice(start, length)``."""

    def __init__(self, columns: dict[str, Any], num_rows: int) -> None:
        self.columns = columns
        self.colnames = list(columns)
        self.num_rows = int(num_rows)

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, name: str) -> Any:
        return self.columns[name]

    def slice(self, start: int, length: int) -> "ParsedBlock":
        stop = min(self.num_rows, start + length)
        return ParsedBlock({k: v[start:stop] for k, v in self.columns.items()}, max(0, stop - start))


def _close_ok(buf: np.ndarray, end: np.ndarray, quoted: np.ndarray) -> np.ndarray:
    """Whether each full cell's last piece, whose separator is at ``end``, ends with a
    closing bracket (then the quote that opened the cell, for a quoted cell)."""
    last = buf[end - 1]
    inner = buf[np.maximum(end - 2, 0)]
    return np.where(quoted, (last == _QUOTE) & np.isin(inner, _CLOSE), np.isin(last, _CLOSE))


def parse_block(block: bytes | memoryview, names: Sequence[str], array_sizes: Mapping[str, int],
                nulls: Sequence[str], scalar_column: Callable[[pa.Array], Any]) -> ParsedBlock | None:
    """Whole comma-separated lines (:func:`line_blocks`) → their columns, or ``None`` when
    the block is not in the plain archive layout (module docstring).

    Parameters
    ----------
    block
        Bytes of whole lines, the last ending with a newline; no header.
    names
        The file's columns, in order.
    array_sizes
        Values of each array column's full cell, by lower-case name (55 coefficients or
        errors, 1,485 packed correlations); every other column is a scalar.
    nulls
        Cell texts that are a missing scalar (as ``pyarrow.csv``'s ``null_values``).
    scalar_column
        Converts a scalar column's cell texts (a string array, nulls for missing cells)
        as the general reader does.
    """
    buf = np.frombuffer(block, np.uint8)
    if not len(buf) or buf[-1] != _NEWLINE:
        return None
    sep = np.flatnonzero((buf == _COMMA) | (buf == _NEWLINE))
    n = len(sep)
    off = np.empty(n + 1, np.int64)
    off[0] = 0
    off[1:] = sep + 1
    size = np.diff(off)                                   # each piece with its separator
    ends = np.flatnonzero(buf[sep] == _NEWLINE)           # each row's last piece
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    # an empty piece: the separator alone, "" (a quoted empty cell) or "\r\n"
    empty = size == 1
    two = np.flatnonzero(size == 2)
    empty[two[(buf[off[two]] == _CR) & (buf[sep[two]] == _NEWLINE)]] = True
    three = np.flatnonzero(size == 3)
    empty[three[(buf[off[three]] == _QUOTE) & (buf[off[three] + 1] == _QUOTE)]] = True

    p = starts.copy()
    at: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    n_full = n_quoted = 0
    top = len(buf) - 1
    empties = np.cumsum(empty)                            # empty pieces up to and including each
    for name in names:
        if (p > ends).any():
            return None
        k = array_sizes.get(name.lower())
        if k is None:
            at[name] = (p.copy(), None)
            p = p + 1
            continue
        first = off[p]
        quoted = buf[first] == _QUOTE
        full = np.isin(buf[np.minimum(first + quoted, top)], _OPEN) & ~empty[p]
        if not (full | empty[p]).all() or (k > 1 and not quoted[full].all()):
            return None                                   # not an array cell, or one a CSV reader splits
        last = p + np.where(full, k - 1, 0)
        if (last > ends).any():
            return None
        if full.any() and not _close_ok(buf, sep[last[full]], quoted[full]).all():
            return None
        if (empties[last[full]] != empties[p[full]]).any():  # an empty value inside a full cell
            return None
        at[name] = (p.copy(), full)
        n_full += int(full.sum())
        n_quoted += int((full & quoted).sum())
        p = last + 1
    if not (p == ends + 1).all():
        return None

    valid = ~empty
    arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(off), pa.py_buffer(block),
                                           pa.py_buffer(np.packbits(valid, bitorder="little")),
                                           null_count=int(n - valid.sum()))
    trimmed = pc.ascii_trim(arr, STRIP)
    toff = np.frombuffer(trimmed.buffers()[1], np.int64)[trimmed.offset:trimmed.offset + n + 1]
    kept = np.diff(toff)
    # a line's last piece ending "\r\n": its CR is stripped with the separator
    crlf = np.zeros(n, bool)
    crlf[ends] = buf[np.maximum(sep[ends] - 1, 0)] == _CR
    # exactly the separators, spaces, line-end CRs, brackets and cell quotes are stripped:
    # never a bracket inside a cell or a quote around a scalar
    cr = int(np.count_nonzero(crlf & valid))
    expected = (int(valid.sum()) + int(np.count_nonzero(buf == ord(" "))) + cr + 2 * n_full + 2 * n_quoted)
    if int(size[valid].sum() - kept[valid].sum()) != expected:
        return None
    try:
        values = pc.cast(trimmed, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    # the values without a copy: the null slots (empty cells, missing scalars) are never read below
    vals = np.frombuffer(values.buffers()[1], np.float64, count=n, offset=8 * values.offset)
    rows = len(ends)
    columns: dict[str, Any] = {}
    null_set = pa.array(list(nulls), type=pa.large_string())
    for name in names:
        idx, full = at[name]
        if full is None:
            text = trimmed.take(pa.array(idx))
            # a missing cell: empty, or its whole text (nothing but the separator and a line-end
            # CR stripped) a null value
            whole = kept[idx] == size[idx] - 1 - crlf[idx]
            null = empty[idx] | (whole & np.asarray(pc.fill_null(pc.is_in(text, value_set=null_set), False)
                                                    .to_numpy(zero_copy_only=False), dtype=bool))
            if null.any():
                text = pc.if_else(pa.array(null), pa.scalar(None, pa.large_string()), text)
            columns[name] = scalar_column(text)
            continue
        k = array_sizes[name.lower()]
        out = np.full((rows, k), np.nan)
        if full.any():
            out[full] = sliding_window_view(vals, k)[idx[full]]
        columns[name] = out
    return ParsedBlock(columns, rows)
