"""Cell-level checks shared by the readers.

Every reader turns file columns into numbers or text through these helpers, so that a
bad cell is reported the same way everywhere: an :class:`~kielnet.errors.InputError`
naming the file, the column, the row (zero-based, in file order) and, where known,
the star — never a ``UnicodeDecodeError`` or ``ValueError`` from numpy.

* :func:`as_text` — a text column as ``str``; bytes (FITS text) decoded as UTF-8;
* :func:`parse_floats` — a column as float64 (masked / empty cells → NaN) plus the
  first cell that is not a number, without raising;
* :func:`as_floats` — the same, raising for a cell that is not a number;
* :func:`check_csv_complete` — a CSV file cut off in the middle of its last line;
* :func:`truncation_as_error` — turns astropy's "file may have been truncated"
  warning into an exception, so that a truncated FITS file fails where it is read;
* :func:`read_error_message` — what to say when astropy cannot read a text file
  (the line of the first byte that is not UTF-8, if that was the problem).
"""

from __future__ import annotations

import contextlib
import csv
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from kielnet.errors import InputError

__all__ = ["as_text", "parse_floats", "as_floats", "shown", "check_csv_complete",
           "truncation_as_error", "is_truncation", "read_error_message"]

#: Longest cell text quoted in an error message (characters).
_SHOWN = 40


def shown(value: Any) -> str:
    """A cell as it may be quoted in a message: text, undecodable bytes replaced by
    U+FFFD, at most ``_SHOWN`` characters."""
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).decode("utf-8", errors="replace")
    text = str(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN - 1] + "…"


def _star_of(ids: Sequence[Any] | np.ndarray | None, row: int) -> str | None:
    if ids is None or not 0 <= row < len(ids):
        return None
    return shown(ids[row]).strip() or None


def as_text(col: Any, *, source: str, field: str, ids: Sequence[Any] | np.ndarray | None = None
            ) -> np.ndarray:
    """A column as a ``str`` array (masked cells → ``""``).

    Parameters
    ----------
    col
        Column (astropy column, numpy or masked array) of any dtype; bytes (``S``) are
        decoded as UTF-8, other dtypes converted with ``str``.
    source, field
        File and column, for the error message.
    ids
        Star ids per row, to name the star in the message (``None``: the star is
        shown as the cell itself, with undecodable bytes replaced).

    Raises
    ------
    InputError
        For bytes that are not valid UTF-8, naming the first such row.
    """
    data = np.asarray(np.ma.getdata(col))
    mask = np.ma.getmaskarray(col) if np.ma.isMaskedArray(col) else None
    if data.dtype.kind == "S":
        try:
            text = np.char.decode(data, "utf-8")
        except UnicodeDecodeError:
            row = _first_undecodable(data)
            star = _star_of(ids, row) if ids is not None else shown(data.ravel()[row])
            raise InputError(f"text is not valid UTF-8 (the cell reads {shown(data.ravel()[row])!r}): "
                             "the file is corrupt or not UTF-8",
                             source=source, field=field, star=star, row=row) from None
    elif data.dtype.kind == "U":
        text = data
    elif data.dtype.kind == "O":  # rare (e.g. variable-length cells): cell by cell
        cells = []
        for row, v in enumerate(data.ravel()):
            try:
                cells.append(_cell_text(v, "strict"))
            except UnicodeDecodeError:
                raise InputError(f"text is not valid UTF-8 (the cell reads {shown(v)!r}): the file "
                                 "is corrupt or not UTF-8", source=source, field=field,
                                 star=_star_of(ids, row) if ids is not None else shown(v),
                                 row=row) from None
        text = np.array(cells, dtype=str).reshape(data.shape)
    else:
        text = data.astype(str)
    if mask is not None and mask.any():
        text = np.where(mask, "", text)
    return text


def _cell_text(value: Any, errors: str) -> str:
    """One object cell as text: bytes decoded as UTF-8 (``errors`` as in ``bytes.decode``),
    ``None`` → ``""``, anything else ``str``."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors=errors)
    return "" if value is None else str(value)


def _first_undecodable(data: np.ndarray) -> int:
    """Row of the first bytes cell that is not UTF-8 (called only after decoding failed)."""
    flat = data.ravel()
    replaced = np.char.decode(flat, "utf-8", errors="replace")
    for i in np.flatnonzero(np.char.find(replaced, "\ufffd") >= 0):  # candidates only
        try:
            bytes(flat[i]).decode("utf-8")
        except UnicodeDecodeError:
            return int(i)
    return 0  # pragma: no cover - decoding failed, so one candidate fails


def parse_floats(col: Any) -> tuple[np.ndarray, int | None, str | None]:
    """A column as float64 without raising.

    Numbers are converted; text cells are parsed as floats after stripping blanks
    (``"12.3"`` → 12.3; ``"nan"``, ``"inf"`` allowed). Masked and empty cells become
    NaN (missing values, reported downstream).

    Returns
    -------
    values : ndarray of float64, the column's shape
        NaN where a cell is masked, empty or not a number.
    bad_row : int or None
        Row (first axis) of the first cell that is not a number, ``None`` if all are.
    bad_value : str or None
        That cell's text (shortened), for the message.
    """
    data = np.asarray(np.ma.getdata(col))
    mask = np.ma.getmaskarray(col) if np.ma.isMaskedArray(col) else np.zeros(data.shape, bool)
    if data.dtype.kind in "fiub":
        values = data.astype(np.float64)
        values[mask] = np.nan
        return values, None, None
    if data.dtype.kind == "O":
        try:
            values = data.astype(np.float64)  # numbers and None
            values[mask] = np.nan
            return values, None, None
        except (TypeError, ValueError):
            pass
    if data.dtype.kind not in "USO":
        values = np.full(data.shape, np.nan)
        return values, (0 if data.size else None), (shown(data.ravel()[0]) if data.size else None)
    if data.dtype.kind == "S":
        text = np.char.decode(data, "utf-8", errors="replace")
    elif data.dtype.kind == "O":
        text = np.array([_cell_text(v, "replace") for v in data.ravel()], dtype=str).reshape(data.shape)
    else:
        text = data
    text = np.char.strip(text) if text.size else text.astype(str)
    empty = mask | (text == "")
    values = np.full(data.shape, np.nan)
    try:
        values[~empty] = text[~empty].astype(np.float64)
        return values, None, None
    except ValueError:
        pass
    # only after the vectorised parse failed: parse each distinct text once
    uniq, inverse = np.unique(text[~empty], return_inverse=True)
    parsed = np.array([_float_or_none(t) for t in uniq], dtype=object)
    is_bad = np.array([p is None for p in parsed], dtype=bool)
    values[~empty] = np.where(is_bad, np.nan, parsed).astype(np.float64)[inverse]
    bad = np.zeros(data.shape, bool)
    bad[~empty] = is_bad[inverse]
    first = int(np.flatnonzero(bad.ravel())[0])
    row = int(np.unravel_index(first, data.shape)[0])
    return values, row, shown(text.ravel()[first])


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def as_floats(col: Any, *, source: str, field: str,
              ids: Sequence[Any] | np.ndarray | None = None) -> np.ndarray:
    """A column as float64 (masked / empty cells → NaN), see :func:`parse_floats`.

    Raises
    ------
    InputError
        ``column is not numeric (row 3 holds 'abc')``, naming the file, column, row
        and (with ``ids``) star of the first cell that is not a number.
    """
    values, row, value = parse_floats(col)
    if row is not None:
        raise InputError(f"column is not numeric (row {row} holds {value!r})", source=source,
                         field=field, star=_star_of(ids, row), row=row)
    return values


def is_truncation(exc: BaseException) -> bool:
    """Whether an exception is astropy's truncated-file warning raised as an error."""
    return isinstance(exc, Warning) and "truncated" in str(exc)


@contextlib.contextmanager
def truncation_as_error() -> Iterator[None]:
    """Within the block, astropy's "File may have been truncated" warning is raised as
    an exception (test it with :func:`is_truncation`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*truncated.*")
        yield


def _last_line(fh: Any, size: int, chunk: int = 1 << 16) -> bytes:
    """The bytes after the last newline of a file of ``size`` bytes (no newline at end)."""
    end = size
    tail = b""
    while end > 0:
        start = max(0, end - chunk)
        fh.seek(start)
        tail = fh.read(end - start) + tail
        cut = max(tail.rfind(b"\n"), tail.rfind(b"\r"))
        if cut >= 0:
            return tail[cut + 1:]
        end = start
    return tail


def check_csv_complete(path: str | Path, source: str, n_rows: int) -> None:
    """Raise :class:`InputError` if a CSV file was cut off inside its last line.

    A file that does not end with a newline and whose last line has fewer fields than
    the header (or an unclosed quote) is truncated: astropy would silently read the
    missing cells as empty. Gzipped files are not checked (gzip reports truncation).

    Parameters
    ----------
    path, source
        The file, and its name for the message.
    n_rows
        Data rows read from it (the last one is named in the message).
    """
    path = Path(path)
    if path.name.lower().endswith(".gz"):
        return
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) in (b"\n", b"\r"):
            return
        last = _last_line(fh, size)
        fh.seek(0)
        header = b""
        for line in fh:
            if line.strip() and not line.lstrip().startswith(b"#"):
                header = line
                break
    if not header or header.rstrip(b"\r\n") == last:
        return
    n_head = len(next(csv.reader([header.decode("utf-8", "replace").rstrip("\r\n")])))
    n_last = len(next(csv.reader([last.decode("utf-8", "replace")])))
    if n_last < n_head or last.count(b'"') % 2:
        what = (f"its last line has {n_last} of {n_head} fields" if n_last < n_head
                else "its last line ends inside a quoted field")
        raise InputError(f"file is truncated: {what} and no line end", source=source,
                         row=max(n_rows - 1, 0))


def read_error_message(path: str | Path, fmt: str, exc: BaseException) -> str:
    """Message for a text table (CSV / ECSV / VOTable) that astropy could not read.

    For a ``UnicodeDecodeError`` the file is scanned for its first byte that is not
    UTF-8 and the message names its line (1-based) and byte offset; otherwise
    ``cannot read as <fmt>: <type>: <message>``.
    """
    if isinstance(exc, UnicodeDecodeError) and not str(path).lower().endswith(".gz"):
        try:
            data = Path(path).read_bytes()
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            return (f"cannot read as {fmt}: text is not valid UTF-8 at line {line} (byte {err.start}, "
                    f"{data[err.start:err.start + 1]!r}): the file is corrupt or not UTF-8")
        except OSError:
            pass
    return f"cannot read as {fmt}: {type(exc).__name__}: {exc}"
