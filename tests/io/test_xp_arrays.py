"""Vectorised parsing of the archive's "(c1, c2, …)" array strings (kielnet.io.xp_arrays):
the per-cell reader's rules, bad cells and their reasons, and the CSV reader built on it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from astropy.table import Table

from kielnet.data.xp import correlation_matrix, xp_coefficients
from kielnet.io.gaia_rvs import _parse_array_cell
from kielnet.io.xp_arrays import _parse_fast, array_strings, bad_cell_reasons, parse_array_strings

XP_DIR = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gaia_xp").resolve()
RAW = XP_DIR / "XP_CONTINUOUS_RAW.csv"
RAW_MISSING = XP_DIR / "XP_CONTINUOUS_RAW_with_missing_BP.csv"
needs_data = pytest.mark.skipif(not RAW.is_file(), reason=f"real XP data {XP_DIR} is absent")


def _legacy(cells, n):
    """The per-cell reader's result for comparison: values, bad rows."""
    out, bad = np.full((len(cells), n), np.nan), np.zeros(len(cells), bool)
    for i, c in enumerate(cells):
        try:
            a = _parse_array_cell(c)
        except ValueError:
            bad[i] = True
            continue
        if a is None or a.size == 0 or np.isnan(a).all():
            continue
        if a.size != n:
            bad[i] = True
        else:
            out[i] = a
    return out, bad


CELLS = ["(1.5, -2e-05, 3)", "[4,5 ,6]", "  (7.0,8.0,9.0)  ", "", "()", "   ", None,
         "(nan, NaN, nan)", "(1.0, two, 3.0)", "(1.0, 2.0)", "(1, 2, 3, 4)", "(1.0, , 3.0)",
         "(1, 2, 3", "1, 2, 3", "(.5, +1., -inf)", "(1e3, 2E-3, 3.25e+2)", "(nan, 1, 2)",
         "(1; 2; 3)", "(0x10, 1, 2)"]


def test_cells_follow_the_per_cell_rules():
    values, bad = parse_array_strings(CELLS, 3)
    ref, ref_bad = _legacy(CELLS, 3)
    np.testing.assert_array_equal(bad, ref_bad)
    np.testing.assert_array_equal(values, ref)
    assert values.dtype == np.float64 and values.shape == (len(CELLS), 3)
    np.testing.assert_array_equal(values[0], [1.5, -2e-05, 3.0])
    assert np.isnan(values[3:8]).all() and not bad[3:8].any()  # empty cells: NaN, not bad
    assert list(np.flatnonzero(bad)) == [8, 9, 10, 11, 12, 17, 18]
    np.testing.assert_array_equal(values[13], [1, 2, 3])  # no brackets: still values
    np.testing.assert_array_equal(values[14], [0.5, 1.0, -np.inf])
    assert np.isnan(values[16, 0]) and values[16, 2] == 2  # a NaN value in a cell is kept


GOOD = [c for i, c in enumerate(CELLS) if i not in (2, 5, 8, 9, 10, 11, 12, 13, 17, 18)]


def test_fast_path_takes_well_formed_cells_and_equals_the_per_cell_reader():
    """Bracketed cells (and null / "" / "()") go through the split-and-cast fast path; its
    numbers are the per-cell reader's, an all-NaN cell is empty there too."""
    fast = _parse_fast(array_strings(GOOD), 3)
    assert fast is not None
    ref, ref_bad = _legacy(GOOD, 3)
    assert not ref_bad.any()
    np.testing.assert_array_equal(fast, ref)
    np.testing.assert_array_equal(parse_array_strings(GOOD, 3)[0], ref)


@pytest.mark.parametrize("odd", [2, 5, 8, 9, 10, 11, 12, 13, 17, 18])
def test_fast_path_hands_anything_else_to_the_general_path(odd):
    """One cell that is not a well-formed bracketed list (bad, blank, stray whitespace,
    no brackets) among good ones: the fast path declines, the result is still the
    per-cell reader's and the bad cell is found."""
    cells = GOOD[:3] + [CELLS[odd]] + GOOD[3:]
    assert _parse_fast(array_strings(cells), 3) is None
    values, bad = parse_array_strings(cells, 3)
    ref, ref_bad = _legacy(cells, 3)
    np.testing.assert_array_equal(values, ref)
    np.testing.assert_array_equal(bad, ref_bad)


@pytest.mark.parametrize("odd", ["(1.0, 2.0), 3.0)", "(1.0, (2.0, 3.0)", "(1.0, 2(.0, 3.0)", "((1.0, 2.0, 3.0))",
                                 "(1.0, 2.0, 3.0]]", "(1.0,\t2.0, 3.0)", "(1.0, 2 .0, 3.0)", "(1.0, 2.0, 3.0,)",
                                 "(,1.0, 2.0, 3.0)", "(1.0, 2.0,, 3.0)"])
def test_fast_path_never_strips_a_bracket_or_separator_inside_a_cell(odd):
    """The fast path strips the separators and the cells' own brackets from the values'
    ends; a bracket, comma or whitespace of another kind inside a cell makes it decline,
    and the result is the per-cell reader's (the cell bad where that reader finds it bad)."""
    cells = GOOD[:3] + [odd] + GOOD[3:]
    assert _parse_fast(array_strings(cells), 3) is None
    values, bad = parse_array_strings(cells, 3)
    ref, ref_bad = _legacy(cells, 3)
    np.testing.assert_array_equal(values, ref)
    np.testing.assert_array_equal(bad, ref_bad)


def test_fast_path_in_parts_on_threads(monkeypatch):
    """Cut into parts run on threads (2 cells a part here), the same numbers; one bad cell
    in a late part still hands the whole column to the general path."""
    from kielnet.io import xp_arrays

    monkeypatch.setattr(xp_arrays, "_MIN_PART", 2)
    monkeypatch.setenv("KIELNET_THREADS", "3")
    cells = GOOD * 4
    fast = _parse_fast(array_strings(cells), 3)
    assert fast is not None
    np.testing.assert_array_equal(fast, _legacy(cells, 3)[0])
    broken = cells[:-1] + ["(1.0, two, 3.0)"]
    assert _parse_fast(array_strings(broken), 3) is None
    values, bad = parse_array_strings(broken, 3)
    assert list(np.flatnonzero(bad)) == [len(broken) - 1]
    np.testing.assert_array_equal(values[:-1], fast[:-1])


def test_bad_cells_say_why():
    values, bad = parse_array_strings(CELLS, 3)
    reasons = bad_cell_reasons(CELLS, np.flatnonzero(bad), 3)
    assert reasons == {
        8: "cannot parse the cell: value 1 of the cell is 'two', not a number",
        9: "2 values, expected 3",
        10: "4 values, expected 3",
        11: "cannot parse the cell: value 1 of the cell is '', not a number",
        12: "cannot parse the cell: value 0 of the cell is '(1', not a number",
        17: "cannot parse the cell: value 0 of the cell is '1; 2; 3', not a number",
        18: "cannot parse the cell: value 0 of the cell is '0x10', not a number"}
    assert bad_cell_reasons(CELLS, [], 3) == {}


def test_input_kinds_and_empty_columns():
    masked = np.ma.array(["(1, 2)", "(3, 4)", "(5, 6)"], mask=[False, True, False])
    values, bad = parse_array_strings(masked, 2)
    assert np.isnan(values[1]).all() and not bad.any() and values[2, 1] == 6
    for column in (pa.array(["(1, 2)", None]), pa.chunked_array([["(1, 2)"], [None]]),
                   np.array([b"(1, 2)", b""]), np.array(["(1, 2)", np.nan], dtype=object)):
        values, bad = parse_array_strings(column, 2)
        np.testing.assert_array_equal(values[0], [1, 2])
        assert np.isnan(values[1]).all() and not bad.any()
    undecodable = np.array([b"(1, \xff)"], dtype=object)
    assert parse_array_strings(undecodable, 2)[1].all()
    values, bad = parse_array_strings(np.array([], dtype=str), 55)
    assert values.shape == (0, 55) and bad.shape == (0,)
    values, bad = parse_array_strings(["", None, "()"], 55)  # an all-empty band
    assert np.isnan(values).all() and not bad.any()


@needs_data
def test_real_columns_equal_the_per_cell_reader():
    tab = Table.read(RAW_MISSING, format="ascii.csv")
    for band in ("bp", "rp"):
        for kind, n in (("coefficients", 55), ("coefficient_errors", 55),
                        ("coefficient_correlations", 1485)):
            col = tab[f"{band}_{kind}"]
            values, bad = parse_array_strings(col, n)
            cells = [None if m else str(v) for v, m in zip(np.ma.getdata(col),
                                                            np.ma.getmaskarray(col))]
            ref, ref_bad = _legacy(cells, n)
            assert not bad.any() and not ref_bad.any()
            np.testing.assert_array_equal(values, ref)
            assert np.isnan(values).all(axis=1).sum() == (1 if band == "bp" else 0)


@needs_data
def test_csv_reader_packs_full_correlation_strings(tmp_path):
    from kielnet.io.gaia_xp import read_xp_continuous

    ref = read_xp_continuous(RAW)
    with open(RAW, newline="") as fh:
        rows = list(csv.DictReader(fh))
    full = correlation_matrix(ref.extra["bp_coefficient_correlations"][1])
    rows[1]["bp_coefficient_correlations"] = "(" + ", ".join(repr(v) for v in full.ravel().tolist()) + ")"
    path = tmp_path / "full.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    back = read_xp_continuous(path)
    assert "bad_rows" not in back.meta
    np.testing.assert_array_equal(back.extra["bp_coefficient_correlations"],
                                  ref.extra["bp_coefficient_correlations"])
    for a, b in zip(xp_coefficients(back), xp_coefficients(ref)):
        np.testing.assert_array_equal(a, b)
