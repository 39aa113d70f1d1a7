"""The streamed Gaia XP continuous reader (:mod:`kielnet.io.streams.xp_continuous`):
bulk-download directories of ECSV-headed ``.csv.gz`` files, ECSV / FITS / VOTable forms,
``--format``, bounded pieces, ``start`` across files — rows equal to the whole-file
reader's (:func:`read_xp_continuous`, :func:`xp_sampled_spectra`)."""

from __future__ import annotations

import csv
import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.io import get_reader, open_stars, read_stars
from kielnet.io.gaia_xp import read_xp_continuous, xp_sampled_spectra
from kielnet.io.streams.xp_continuous import XpContinuousSource, count_file_rows
from xp_bulk import archive_lines, write_bulk

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
RAW = DATA / "gaia_xp" / "XP_CONTINUOUS_RAW_with_missing_BP.csv"
pytestmark = pytest.mark.skipif(not RAW.is_file(), reason=f"real XP data {RAW} is absent")


def concat(batches) -> StarTable:
    batches = list(batches)
    return batches[0] if len(batches) == 1 else StarTable.concat(batches)


def assert_same(a: StarTable, b: StarTable, *, extra=("source_id", "missing_bp", "missing_rp")) -> None:
    assert list(a.ids) == list(b.ids)
    assert set(a.scalars) == set(b.scalars)
    for k in a.scalars:
        np.testing.assert_array_equal(a.scalars[k], b.scalars[k], err_msg=k)
    for k in extra:
        np.testing.assert_array_equal(a.extra[k], b.extra[k], err_msg=k)
    for k in ("flux", "flux_err"):
        x, y = getattr(a, k), getattr(b, k)
        assert (x is None) == (y is None), k
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=k)


def whole(files, sampled: bool) -> StarTable:
    fn = xp_sampled_spectra if sampled else read_xp_continuous
    return concat(fn(f) for f in files)


@pytest.fixture(scope="module")
def bulk(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bulk") / "XpContinuousMeanSpectrum"
    files = write_bulk(folder, RAW, [5, 4])
    (folder / "_MD5SUM.txt").write_text("not a data file\n")
    return folder, files


@pytest.mark.parametrize("sampled", [False, True])
def test_bulk_directory_streams_every_row_as_the_whole_file_reader(bulk, sampled):
    folder, files = bulk
    assert get_reader(folder).name == "gaia-xp"          # not the RVS reader of directories
    src = open_stars(folder, sampled=sampled)
    assert isinstance(src, XpContinuousSource) and src.files() == files and src.n_rows is None
    ref = whole(files, sampled)
    assert len(ref) == 9 and len(set(ref.ids)) == 9
    for size in (1, 4, 20):
        assert_same(concat(src.batches(size)), ref)
    for start in (3, 5, 7):                               # in the first file, at a file start, in the second
        assert_same(concat(src.batches(3, start=start)), ref.take(np.arange(start, 9)))
    assert list(src.batches(3, start=9)) == []
    if sampled:
        b = next(iter(src.batches(9)))
        assert b.flux.shape == (9, 343) and files[0].name in b.meta["source"]
        assert b.extra["missing_bp"].sum() == 3           # one star of three in the real rows lacks BP
    assert src.identity()["xp"] == ("sampled" if sampled else "coefficients")


def test_read_stars_glob_and_format_override(bulk):
    folder, files = bulk
    ref = whole(files, False)
    assert_same(read_stars(folder), ref)
    pattern = str(folder / "XpContinuousMeanSpectrum_*.csv.gz")
    assert_same(concat(open_stars(pattern).batches(4)), ref)
    forced = open_stars(folder, format="gaia-xp", sampled=True)
    assert_same(concat(forced.batches(4)), whole(files, True))
    with pytest.raises(Exception, match="wavelength|flux"):   # what the RVS reader makes of it
        concat(open_stars(folder, format="gaia-rvs").batches(4))


def test_a_file_is_read_in_bounded_pieces(tmp_path):
    """40 rows (~1.7 MB of text) in 1 MiB blocks and pieces of 7 rows: several blocks,
    several pieces, the whole file's rows."""
    (f,) = write_bulk(tmp_path, RAW, [40], ecsv=False)
    src = XpContinuousSource(f, block_size=1 << 20, piece_rows=7)
    blocks = [sum(b.num_rows for b in parts) for parts, _, _ in src._blocks(f, "text")]
    assert len(blocks) > 1 and sum(blocks) == 40
    pieces = [len(p) for p in src.pieces()]
    assert len(pieces) >= 6 and max(pieces) <= 7 and sum(pieces) == 40
    assert_same(concat(src.batches(16)), read_xp_continuous(f))
    sampled = XpContinuousSource(f, sampled=True, block_size=1 << 20, piece_rows=7)
    assert_same(concat(sampled.batches(16, start=11)), xp_sampled_spectra(f).take(np.arange(11, 40)))
    assert count_file_rows(str(f), 1 << 20) == 40


@pytest.mark.parametrize("start", [0, 5])
def test_blocks_are_read_ahead_but_not_past_a_complete_batch(tmp_path, monkeypatch, start):
    """The next block is decompressed and parsed on threads while this one's parts are
    converted (:func:`kielnet.threads.prefetch`), except after the block that completes a
    batch: the caller then runs the networks on every core. Two files, blocks of a few
    rows, batches of 10 from ``start``: the blocks that complete a batch are exactly
    those whose rows reach or cross a multiple of 10 rows from ``start``."""
    import kielnet.io.streams.xp_continuous as xc

    monkeypatch.setenv("KIELNET_THREADS", "2")
    files = write_bulk(tmp_path, RAW, [23, 17], ecsv=False)
    calls = []
    real = xc.prefetch

    def spy(items, depth=1, pause=None):
        if pause is None:  # the fast path's inflating of the next lines, under the blocks
            return real(items, depth)

        def recorded(item):
            complete = pause(item)
            calls.append((sum(part.num_rows for part in item[0]), complete))
            return complete
        return real(items, depth, recorded)

    monkeypatch.setattr(xc, "prefetch", spy)
    src = XpContinuousSource(files, sampled=True, block_size=1 << 17)
    got = concat(src.batches(10, start=start))
    assert_same(got, whole(files, True).take(np.arange(start, 40)))
    rows = np.cumsum([n for n, _ in calls])
    assert len(calls) > 8 and rows[-1] == 40                 # several blocks per batch
    handed = np.maximum(rows - start, 0)                     # rows from `start` after each block
    expected = handed // 10 > np.concatenate([[0], handed[:-1]]) // 10
    assert [c for _, c in calls] == expected.tolist() and expected.sum() == 4 - (start > 0)


def test_row_counts_planned_with_a_map(bulk):
    folder, files = bulk
    src = open_stars(folder, sampled=True)
    calls = []
    src.plan_rows(lambda fn, items: calls.append(items) or [fn(i) for i in items])
    assert calls == [[str(f) for f in files]] and [src.file_rows(i) for i in range(2)] == [5, 4]
    src.plan_rows(lambda fn, items: calls.append(items) or [])   # counted already: nothing to do
    assert len(calls) == 1


def _json_ecsv(tmp_path: Path) -> Path:
    """The real rows in the bulk download's spelling: JSON arrays, null for missing values."""
    header, rows = archive_lines(RAW)
    cells = list(csv.reader([header] + rows))
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(cells[0])
    for r in cells[1:]:
        w.writerow(["null" if c == "" else "[" + c[1:-1] + "]" if c.startswith("(") else c for c in r])
    path = tmp_path / "XpContinuousMeanSpectrum_json.ecsv"
    path.write_text("# %ECSV 1.0\n# ---\n# delimiter: ','\n" + out.getvalue())
    return path


def test_json_arrays_and_null_cells(tmp_path):
    path = _json_ecsv(tmp_path)
    ref = read_xp_continuous(RAW)
    got = concat(XpContinuousSource(path, piece_rows=2).batches(2))
    assert_same(got, ref)
    np.testing.assert_array_equal(got.extra["bp_coefficient_correlations"], ref.extra["bp_coefficient_correlations"])


@pytest.mark.filterwarnings("ignore::astropy.io.votable.exceptions.VOWarning")
@pytest.mark.parametrize("fmt,suffix", [("ascii.ecsv", ".ecsv"), ("fits", ".fits"), ("votable", ".vot")])
def test_astropy_written_forms_stream_as_read_whole(tmp_path, fmt, suffix):
    st = read_xp_continuous(RAW)
    tab = Table({"source_id": st.extra["source_id"], "solution_id": st.extra["solution_id"],
                 "phot_g_mean_mag": np.array([12.5, 13.5, 14.5])})
    for band in ("bp", "rp"):
        tab[f"{band}_coefficients"] = np.stack([st.scalars[f"{band}_{i}"] for i in range(55)], axis=1)
        for kind in ("coefficient_errors", "coefficient_correlations", "standard_deviation", "n_relevant_bases"):
            tab[f"{band}_{kind}"] = st.extra[f"{band}_{kind}"]
    path = tmp_path / f"xp{suffix}"
    tab.write(path, format=fmt)
    assert get_reader(path).name == "gaia-xp"
    for sampled in (False, True):
        ref = (xp_sampled_spectra if sampled else read_xp_continuous)(path)
        src = XpContinuousSource(path, sampled=sampled, piece_rows=2)
        assert_same(concat(src.batches(2)), ref)
        assert_same(concat(src.batches(2, start=1)), ref.take(np.arange(1, 3)))
    assert read_xp_continuous(path).scalars["g"].tolist() == [12.5, 13.5, 14.5]


def test_a_garbled_cell_keeps_the_star_with_nan(tmp_path):
    header, rows = archive_lines(RAW)
    bad = rows[0].replace("(", "(abc, ", 1)
    path = tmp_path / "garbled.csv"
    path.write_text("\n".join([header, rows[1], bad, rows[2]]) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = concat(XpContinuousSource(path, sampled=True, piece_rows=2).batches(3))
    assert len(got) == 3 and np.isnan(got.flux[1]).all() and np.isfinite(got.flux[2]).any()
    assert any("unusable" in str(w.message) for w in caught)
    whole_ = xp_sampled_spectra(path)
    np.testing.assert_array_equal(got.flux, whole_.flux)


def test_a_byte_order_mark_before_the_header_is_ignored(bulk, tmp_path):
    """A file saved with a UTF-8 byte-order mark (a plain CSV, and an ECSV-headed bulk
    .csv.gz whose ``# %ECSV`` line then starts with it) is recognised as XP continuous and
    gives the same rows, streamed and whole."""
    import gzip

    _, files = bulk
    plain = tmp_path / "XpContinuousMeanSpectrum_bom.csv"
    plain.write_bytes(b"\xef\xbb\xbf" + RAW.read_bytes())
    ecsv = tmp_path / "XpContinuousMeanSpectrum_bom_ecsv.csv.gz"
    with gzip.open(files[0], "rb") as fh:
        text = fh.read()
    assert text.startswith(b"# %ECSV")
    ecsv.write_bytes(gzip.compress(b"\xef\xbb\xbf" + text))
    for marked, original in ((plain, RAW), (ecsv, files[0])):
        assert get_reader(marked).name == "gaia-xp"
        for sampled in (False, True):
            ref = (xp_sampled_spectra if sampled else read_xp_continuous)(original)
            assert_same(concat(XpContinuousSource(marked, sampled=sampled, piece_rows=2).batches(3)), ref)
            assert_same((xp_sampled_spectra if sampled else read_xp_continuous)(marked), ref)


@pytest.mark.parametrize("isal", [True, False], ids=["isal", "zlib"])
def test_gzip_streams_equal_and_a_truncated_file_is_named(bulk, tmp_path, monkeypatch, isal):
    """The .gz files decompress to the same rows with ISA-L's igzip and with pyarrow's zlib
    stream; a truncated .gz is an InputError naming the file, not a bare EOFError."""
    pytest.importorskip("isal") if isal else monkeypatch.setitem(sys.modules, "isal", None)
    folder, files = bulk
    assert_same(concat(XpContinuousSource(folder, sampled=True).batches(100)), whole(files, True))
    cut = tmp_path / "XpContinuousMeanSpectrum_cut.csv.gz"
    data = Path(files[0]).read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match="truncated or not valid gzip") as err:
        concat(XpContinuousSource(cut, sampled=True).batches(100))
    assert str(cut) in str(err.value)


def test_coefficients_only_reads_the_same_coefficients_without_uncertainties(bulk):
    """open_stars(coefficients_only=True) (a model on coefficients, no spectrum): the same
    coefficient scalars and flags as the full reader, no error / correlation arrays; a
    different run identity; sampled spectra cannot be had without the uncertainties."""
    folder, files = bulk
    full = concat(XpContinuousSource(folder).batches(4))
    src = open_stars(folder, coefficients_only=True)
    assert isinstance(src, XpContinuousSource) and not src.uncertainties
    only = concat(src.batches(4))
    assert_same(only, full, extra=("source_id", "missing_bp", "missing_rp"))
    assert "bp_coefficient_correlations" in full.extra
    assert not any(k.endswith(("_coefficient_errors", "_coefficient_correlations")) for k in only.extra)
    assert src.identity()["xp"] == "coefficients only" != XpContinuousSource(folder).identity()["xp"]
    with pytest.raises(ValueError, match="need the coefficient uncertainties"):
        XpContinuousSource(folder, sampled=True, uncertainties=False)


def test_null_inside_a_json_array_is_nan_in_ecsv_only():
    """ECSV arrays write a missing element as null: with null_as_nan (the streamed ECSV
    reader's setting) it reads as NaN; elsewhere it is not a number and its cell is bad."""
    from kielnet.io.xp_arrays import bad_cell_reasons, parse_array_strings

    cells = ["[1.0, null, 3.0]", "[4.0, 5.0, 6.0]", None]
    values, bad = parse_array_strings(cells, 3, null_as_nan=True)
    np.testing.assert_array_equal(values[:2], [[1.0, np.nan, 3.0], [4.0, 5.0, 6.0]])
    assert np.isnan(values[2]).all() and not bad.any()
    values, bad = parse_array_strings(cells, 3)
    assert list(np.flatnonzero(bad)) == [0] and np.isnan(values[0]).all()
    assert bad_cell_reasons(cells, [0], 3) == {0: "cannot parse the cell: value 1 of the cell is 'null', not a number"}


def test_a_reader_left_unfinished_closes_quietly_at_exit(tmp_path):
    """A caller that takes one batch and exits: the suspended reader is closed during the
    interpreter's shutdown, and its error handling must not need modules torn down by
    then (it printed "Exception ignored ... TypeError: catching classes that do not
    inherit from BaseException")."""
    import subprocess

    (f,) = write_bulk(tmp_path, RAW, [6])
    code = ("import kielnet.inference.streaming\n"
            "from kielnet.io.streams.xp_continuous import XpContinuousSource\n"
            f"it = iter(XpContinuousSource({str(f)!r}, sampled=True, piece_rows=2).batches(2))\n"
            "next(it)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Exception ignored" not in run.stderr and "Traceback" not in run.stderr, run.stderr
