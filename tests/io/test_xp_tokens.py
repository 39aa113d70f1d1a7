"""The fast path of the streamed XP continuous reader (:mod:`kielnet.io.streams.xp_tokens`):
blocks of whole lines cut at every comma give the numbers the general reader
(``pyarrow.csv`` + :func:`kielnet.io.xp_arrays.parse_array_strings`) gives, and every
block that reader would read differently or refuse is handed back to it (``None``)."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

from kielnet.io.streams import xp_continuous as xc
from kielnet.io.streams.xp_continuous import XpContinuousSource
from kielnet.io.streams.xp_tokens import ParsedBlock, line_blocks, parse_block, split_lines
from xp_bulk import archive_lines, write_bulk

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
RAW = DATA / "gaia_xp" / "XP_CONTINUOUS_RAW_with_missing_BP.csv"
needs_raw = pytest.mark.skipif(not RAW.is_file(), reason=f"real XP data {RAW} is absent")


class _ReadOnly:
    """A stream with ``read`` but no ``readinto``."""

    def __init__(self, data: bytes) -> None:
        self.stream = io.BytesIO(data)

    def read(self, n: int) -> bytes:
        return self.stream.read(n)


@pytest.mark.parametrize("read_bytes", [5, 1 << 22])
@pytest.mark.parametrize("stream", [io.BytesIO, _ReadOnly])
def test_line_blocks_gives_the_whole_lines_after_the_header(monkeypatch, stream, read_bytes):
    """Any block size, read into each block in slices (``READ_BYTES``) or in one, with
    ``readinto`` or ``read``: the lines after the header, once each, in whole lines."""
    import kielnet.io.streams.xp_tokens as xt

    monkeypatch.setattr(xt, "READ_BYTES", read_bytes)
    body = b"".join(b"%d,%s\n" % (i, b"x" * i) for i in range(60)) + b"last,no line end"
    text = b"# one\n# two, with a comma\nname,value\n" + body
    for size in (1, 3, 7, 64, 1 << 20):
        blocks = [bytes(b) for b in line_blocks(stream(text), size, skip_lines=3)]
        assert all(b.endswith(b"\n") for b in blocks)
        assert b"".join(blocks) == body + b"\n"
        if size < 64:
            assert len(blocks) > 1
        if size == 64:  # a line of up to 64 bytes in a block of about 64 bytes
            assert all(len(b) <= 64 + 64 for b in blocks)
    assert list(line_blocks(stream(b"# one\n# two"), 7, skip_lines=3)) == []
    with pytest.raises(ValueError, match="no line end"):
        list(line_blocks(io.BytesIO(b"x" * 100), 10, longest=50))


def test_split_lines_cuts_at_line_ends_only():
    block = memoryview(b"".join(b"%d,%s\n" % (i, b"y" * (i % 13)) for i in range(200)))
    for parts in (1, 2, 3, 8):
        got = [bytes(p) for p in split_lines(block, parts)]
        assert b"".join(got) == bytes(block) and len(got) <= parts
        assert all(p.endswith(b"\n") for p in got) and (parts == 1 or len(got) > 1)


def _cells(row: str) -> list[str]:
    return next(csv.reader([row]))


def _row(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)
    return out.getvalue()


def _sizes(names):
    return {c.lower(): xc._ARRAY_SIZES[c.lower()] for c in names if c.lower() in xc._ARRAY_SIZES}


def _parse(block: bytes, names):
    return parse_block(block, names, _sizes(names), xc._NULLS, xc._scalar_column)


def _general(block: bytes, names):
    """The general reader's columns of the same lines."""
    from kielnet.io.xp_arrays import parse_array_strings

    batch = pcsv.read_csv(pa.py_buffer(block), **xc._csv_options(names, 0, ",", None, 1 << 20)).combine_chunks()
    out = {}
    for name in names:
        col = batch.column(name).combine_chunks()
        k = _sizes(names).get(name.lower())
        out[name] = xc._scalar_column(col) if k is None else parse_array_strings(col, k)[0]
    return out


def _assert_columns_equal(got: ParsedBlock, ref: dict, names):
    assert got.colnames == list(names)
    for name in names:
        a, b = got[name], ref[name]
        assert type(a) is type(b), name
        np.testing.assert_array_equal(np.ma.getdata(a), np.ma.getdata(b), err_msg=name)
        np.testing.assert_array_equal(np.ma.getmaskarray(a), np.ma.getmaskarray(b), err_msg=name)
        assert np.asarray(a).dtype == np.asarray(b).dtype, name


@needs_raw
@pytest.mark.parametrize("line_end", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_real_archive_rows_parse_to_the_general_readers_numbers(line_end):
    """The real rows (one star without BP: empty cells) with a missing and a ``nan``
    scalar: the same arrays, scalars, dtypes and masks; a slice is rows of the block."""
    header, rows = archive_lines(RAW)
    names = header.split(",")
    odd = _cells(rows[0])
    odd[names.index("rp_standard_deviation")] = ""
    odd[names.index("rp_chi_squared")] = "nan"
    last = _cells(rows[2])
    last[-1] = "NaN"                                      # a null spelling in the line's last cell
    assert _row(_cells(rows[0])) == rows[0]
    lines = rows + [_row(odd), _row(last)] + rows
    block = (line_end.join(lines) + line_end).encode()
    got = _parse(block, names)
    assert got is not None and got.num_rows == len(lines)
    _assert_columns_equal(got, _general(block, names), names)
    assert np.isnan(got["bp_coefficient_correlations"]).all(axis=1).sum() == 2      # the star without BP, twice
    assert np.ma.getmaskarray(got["rp_standard_deviation"]).sum() == 1
    assert np.ma.getmaskarray(got[names[-1]]).sum() == 1
    part = got.slice(2, 3)
    assert part.num_rows == 3
    np.testing.assert_array_equal(part["rp_coefficients"], got["rp_coefficients"][2:5])


def _without_second_value(row: str) -> str:
    """The first array cell's second value deleted, its separators kept: ``"(v1,, v3, …"``."""
    i = row.index('"(')
    j = row.index(", ", i)
    k = row.index(", ", j + 2)
    return row[:j] + ",," + row[k + 2:]


def _mutations(names, row):
    cells = _cells(row)
    at = {n: i for i, n in enumerate(names)}
    first_array = at["rp_coefficients"]

    def with_cell(name, text):
        c = list(cells)
        c[at[name]] = text
        return _row(c).replace('"""', '"')                 # a quoted scalar stays one pair of quotes

    body = row[row.index('"(') + 2:]                          # the first array cell, after its bracket
    return {
        "bracket inside a cell": row.replace('"(', '"((', 1),
        "a value that is not a number": row.replace('"(', '"(abc, ', 1),
        "a null value": row.replace('"(', '"(null, ', 1),
        "an empty value": row.replace('"(', '"(, ', 1),
        "an empty value without spaces": _without_second_value(row),
        "one value too few": row[:row.index('"(') + 2] + body.split(", ", 1)[1],
        "a quoted scalar": with_cell("solution_id", f'"{cells[at["solution_id"]]}"'),
        "an unbracketed array cell": with_cell(names[first_array], "1.5"),
        "an unquoted array cell": row.replace('"(', "(", 1).replace(')"', ")", 1),
        "an empty bracket pair": row.replace(row[row.index('"('):row.index(')"') + 2], '"()"', 1),
        "text in a scalar": with_cell("rp_chi_squared", "abc"),
        "a space inside a value": row.replace('"(', '"(1 2, ', 1),
    }


@needs_raw
def test_anything_else_is_handed_back_to_the_general_reader():
    """Each row the general reader reads differently (or refuses) makes its block ``None``:
    a bracket inside a cell, text, ``null``, a miscounted cell, a quoted scalar, a blank
    line ... — never numbers that differ."""
    header, rows = archive_lines(RAW)
    names = header.split(",")
    good = rows[1]
    assert _parse((good + "\n").encode(), names) is not None
    for why, bad in _mutations(names, good).items():
        assert bad != good, why
        assert _parse(("\n".join([rows[0], bad, rows[2]]) + "\n").encode(), names) is None, why
    assert _parse(("\n".join([rows[0], "", rows[2]]) + "\n").encode(), names) is None, "a blank line"
    assert _parse(("\n".join(rows)).encode(), names) is None, "no line end at the end"
    assert _parse(("\n".join(rows) + ",1\n").encode(), names) is None, "an extra cell"


def _spy_parse(monkeypatch) -> list[bool]:
    """Record, for every call of the fast path's ``parse_block``, whether it took the part."""
    taken: list[bool] = []
    real = xc.parse_block

    def spy(*args, **kw):
        out = real(*args, **kw)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(xc, "parse_block", spy)
    return taken


@needs_raw
def test_a_file_mixing_fast_and_handed_back_blocks_reads_as_the_general_reader(tmp_path, monkeypatch):
    """A bulk file in small blocks with a garbled cell in one of them: that block goes to
    ``pyarrow.csv`` (its star kept with NaN and named as before), the others take the fast
    path, and the rows, numbers and ``bad_rows`` equal the general reader's alone."""
    (f,) = write_bulk(tmp_path, RAW, [60], ecsv=True)
    import gzip

    with gzip.open(f, "rt", newline="") as fh:
        text = fh.read()
    lines = text.split("\n")
    k = next(i for i, ln in enumerate(lines) if ln.startswith("1000000000000030,"))
    lines[k] = lines[k].replace('"(', '"(abc, ', 1)
    f.write_bytes(gzip.compress("\n".join(lines).encode()))

    def read(fast: bool):
        taken = _spy_parse(monkeypatch)
        if not fast:
            monkeypatch.setattr(xc, "_plain_lines", lambda p: False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pieces = list(XpContinuousSource(f, sampled=True, block_size=1 << 17).pieces())
        monkeypatch.undo()
        return pieces, [str(w.message) for w in caught if "unusable" in str(w.message)], taken

    fast, fast_warn, taken = read(True)
    assert any(taken) and not all(taken)                  # both paths were taken
    general, general_warn, taken = read(False)
    assert not taken
    a = fast[0] if len(fast) == 1 else fast[0].concat(fast)
    b = general[0] if len(general) == 1 else general[0].concat(general)
    assert list(a.ids) == list(b.ids) and len(a) == 60
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_array_equal(a.flux_err, b.flux_err)
    assert np.isnan(a.flux[30]).all() and np.isfinite(a.flux[29]).any()
    bad = [p.meta.get("bad_rows") for p in fast if p.meta.get("bad_rows")]
    assert bad == [p.meta.get("bad_rows") for p in general if p.meta.get("bad_rows")] and bad
    named = [w.split("kept with NaN:")[1] for w in fast_warn]     # the star and why (pieces may differ)
    assert named == [w.split("kept with NaN:")[1] for w in general_warn] and named


def _general_or_none(block: bytes, names):
    """The general reader's columns and whether it found every cell good; ``None`` when it
    refuses the block."""
    from kielnet.io.xp_arrays import parse_array_strings

    try:
        batch = pcsv.read_csv(pa.py_buffer(block), **xc._csv_options(names, 0, ",", None, 1 << 20)).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    out, clean = {}, True
    for name in names:
        col = batch.column(name).combine_chunks()
        k = _sizes(names).get(name.lower())
        if k is None:
            out[name] = xc._scalar_column(col)
            clean &= np.asarray(out[name]).dtype.kind in "if"
        else:
            out[name], bad = parse_array_strings(col, k)
            clean &= not bad.any()
    return out, clean


@needs_raw
def test_random_damage_never_gives_numbers_the_general_reader_would_not():
    """A differential test: 400 rows damaged at random (a character deleted, doubled or
    replaced by one of ``,"()[] .-e\\n`` or a letter), each in a block with good rows.
    Whenever the fast path takes a block, the general reader reads it too, finds every
    cell good, and gives the same numbers."""
    header, rows = archive_lines(RAW)
    names = header.split(",")
    rng = np.random.default_rng(20261204)
    alphabet = list(',"()[] .-e\nxN0')
    taken = 0
    for _ in range(400):
        row = rows[rng.integers(len(rows))]
        i = int(rng.integers(len(row)))
        kind = rng.integers(3)
        if kind == 0:
            bad = row[:i] + row[i + 1:]
        elif kind == 1:
            bad = row[:i] + row[i] + row[i:]
        else:
            bad = row[:i] + str(rng.choice(alphabet)) + row[i + 1:]
        block = ("\n".join([rows[0], bad, rows[2]]) + "\n").encode()
        got = _parse(block, names)
        if got is None:
            continue
        taken += 1
        ref = _general_or_none(block, names)
        assert ref is not None and ref[1], (bad[max(0, i - 20):i + 20], "taken by the fast path only")
        _assert_columns_equal(got, ref[0], names)
    assert 0 < taken < 400          # some damage is harmless (a digit for a digit), most is not


@needs_raw
def test_stopping_early_stops_the_inflating_thread_before_the_file_closes(tmp_path, monkeypatch):
    """A caller that takes one piece and stops: the thread inflating the next lines is
    joined before the file is closed (not left reading a closed file), and no prefetch
    thread is left behind."""
    import threading

    monkeypatch.setenv("KIELNET_THREADS", "2")
    (f,) = write_bulk(tmp_path, RAW, [60], ecsv=False)
    before = {t.ident for t in threading.enumerate()}

    def ours():
        return [t for t in threading.enumerate() if t.name == "kielnet-prefetch" and t.ident not in before]

    alive_at_close = []
    real = xc._raw_stream

    class Watched:
        def __init__(self, path):
            self.stream = real(path)

        def read(self, n):
            return self.stream.read(n)

        def close(self):
            alive_at_close.append(len([t for t in ours() if t.is_alive() and t is not threading.current_thread()]))
            self.stream.close()

    monkeypatch.setattr(xc, "_raw_stream", Watched)
    pieces = XpContinuousSource(f, sampled=True, block_size=1 << 17).pieces()
    assert len(next(pieces)) > 0
    pieces.close()
    # (the file is opened twice: the peek at its line ends, then the reading)
    assert alive_at_close == [0, 0]
    assert not ours()


@needs_raw
def test_a_file_the_fast_path_never_takes_stops_being_tried(tmp_path, monkeypatch):
    """A bulk file with a text column (a designation): every part is handed back, so after
    a few tries the rest of the file goes to ``pyarrow.csv`` directly, with the same rows."""
    (f,) = write_bulk(tmp_path, RAW, [80], ecsv=False)
    import gzip

    with gzip.open(f, "rt", newline="") as fh:
        lines = fh.read().rstrip("\n").split("\n")
    lines = [lines[0] + ",designation"] + [ln + f",Gaia DR3 {i}" for i, ln in enumerate(lines[1:])]
    f.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    calls = _spy_parse(monkeypatch)
    got = list(XpContinuousSource(f, sampled=False, block_size=1 << 16).pieces())
    assert sum(len(p) for p in got) == 80
    assert not any(calls) and len(calls) == xc._GIVE_UP          # tried, then no more
    monkeypatch.undo()
    monkeypatch.setattr(xc, "_plain_lines", lambda p: False)
    ref = list(XpContinuousSource(f, sampled=False, block_size=1 << 16).pieces())
    assert [i for p in got for i in p.ids] == [i for p in ref for i in p.ids]
    np.testing.assert_array_equal(np.concatenate([p.scalars['bp_0'] for p in got]),
                                  np.concatenate([p.scalars['bp_0'] for p in ref]))
