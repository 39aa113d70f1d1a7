"""Nothing silently wrong: every bad file ends in an InputError naming the file, the field
and the row / star it concerns — never a numpy / astropy / pyarrow traceback — and a bad
row is kept as NaN (flagged downstream) where that is possible.

Synthetic tables are written with astropy / pyarrow into ``tmp_path``; the real files
of ``../shared/data`` are copied there and corrupted (the tests skip without them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.table import Table

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.io import read_stars, read_table
from kielnet.io.apstar import read_apstar
from kielnet.io.gaia_rvs import read_rvs_spectra
from kielnet.io.gaia_xp import read_xp_continuous
from kielnet.io.xp_library import load_xp_library

pytestmark = pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyUserWarning",
                                        "ignore::astropy.io.fits.verify.VerifyWarning")

APSTAR = "apogee/apStar/apStar-r6-2M00452143+1634446.fits"
RVS = "gaia_rvs/Kepler-93.csv"
XP = "gaia_xp/XP_CONTINUOUS_RAW.csv"


def _raises(func, *args, **kwargs) -> InputError:
    """The InputError ``func(*args)`` raises (any other exception fails the test)."""
    with pytest.raises(InputError) as info:
        func(*args, **kwargs)
    return info.value


def _real(shared_data: Path, rel: str, tmp_path: Path) -> Path:
    """A copy of a real file in ``tmp_path`` (skip when absent)."""
    src = shared_data / rel
    if not src.is_file():
        pytest.skip(f"{src} is absent")
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    return dst


def _corrupt_data_bytes(path: Path, needle: bytes, byte: int = 0xFF) -> None:
    """Overwrite the first byte of ``needle`` in the FITS data (after the first 2 blocks)."""
    raw = bytearray(path.read_bytes())
    at = raw.find(needle, 2 * 2880)
    assert at > 0, needle
    raw[at] = byte
    path.write_bytes(bytes(raw))


# --------------------------------------------------------------- 1. bytes that are not UTF-8
def test_corrupt_bytes_in_the_fits_id_column(tmp_path):
    path = tmp_path / "ids.fits"
    Table({"id": np.array([b"QQa1", b"QQb2", b"QQc3"]), "g": [1.0, 2.0, 3.0],
           "flux": np.ones((3, 4))}).write(path)
    _corrupt_data_bytes(path, b"QQb2")
    err = _raises(read_table, path)
    assert err.field == "id" and err.row == 1 and err.source == str(path)
    assert "UTF-8" in str(err) and str(path) in str(err)
    assert err.star is not None and "Qb2" in err.star  # what can be shown of the id
    assert "UTF-8" in str(_raises(read_stars, path))


def test_corrupt_bytes_in_a_fits_pass_through_column(tmp_path):
    path = tmp_path / "pass.fits"
    Table({"id": ["a", "b", "c"], "source_id": np.array([b"QQ11", b"QQ22", b"QQ33"]),
           "g": [1.0, 2.0, 3.0]}).write(path)
    _corrupt_data_bytes(path, b"QQ33", 0xFE)
    err = _raises(read_table, path)
    assert err.field == "source_id" and err.row == 2 and err.star == "c"
    assert str(path) in str(err)


def test_intact_fits_text_columns_come_back_as_str(tmp_path):
    path = tmp_path / "ok.fits"
    Table({"id": ["a", "b"], "source_id": np.array([b"11", b"22"]), "g": [1.0, 2.0]}).write(path)
    st = read_table(path)
    assert st.ids.tolist() == ["a", "b"] and st.extra["source_id"].tolist() == ["11", "22"]


def test_corrupt_bytes_in_a_csv_name_the_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"id,g\na,1.0\nb\xe9,2.0\n")
    err = _raises(read_table, path)
    assert "not valid UTF-8 at line 3" in str(err) and str(path) in str(err)


# --------------------------------------------------------------- 2. truncated FITS
@pytest.mark.parametrize("cut", ["half", "block"])
def test_truncated_fits_table(tmp_path, cut):
    path = tmp_path / "big.fits"
    Table({"id": [f"s{i}" for i in range(200)], "flux": np.ones((200, 100))}).write(path)
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2] if cut == "half" else raw[:4 * 2880])
    for reader in (read_table, read_stars):
        err = _raises(reader, path)
        assert "file is truncated or corrupt" in str(err) and err.source == str(path)
        assert str(path) in str(err)


# --------------------------------------------------------------- 3. a Parquet file with no rows
def test_zero_row_parquet_with_a_list_column(tmp_path):
    path = tmp_path / "none.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()),
                             "flux": pa.array([], pa.list_(pa.float64()))}), path)
    err = _raises(read_table, path)
    assert str(err).startswith("table has no rows") and str(path) in str(err)


# --------------------------------------------------------------- 4. a column that is not numeric
def _write_g_table(path: Path) -> None:
    g = ["12.1", "12.2", "12.3", "abc"]
    bp = ["12.5", " 13.1", "", "14"]  # text that holds numbers (and one empty cell)
    if path.suffix == ".parquet":
        pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "g": g, "bp": bp}), path)
    elif path.suffix == ".csv":
        path.write_text("id,g,bp\n" + "".join(f"{i},{x},{y}\n" for i, x, y in zip("abcd", g, bp)))
    else:
        Table({"id": list("abcd"), "g": np.array(g, dtype="S"), "bp": np.array(bp, dtype="S")}).write(path)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".fits"])
def test_non_numeric_magnitude_is_named_when_required(tmp_path, suffix):
    path = tmp_path / f"phot{suffix}"
    _write_g_table(path)
    st = read_table(path)
    assert len(st) == 4 and "g" not in st.scalars
    assert st.meta["non_numeric_columns"]["g"] == (3, "abc")
    np.testing.assert_array_equal(st.scalars["bp"], [12.5, 13.1, np.nan, 14.0])
    st.require(scalars=["bp"])  # numeric text: usable
    err = _raises(st.require, scalars=["bp", "g"])
    assert "column 'g' is not numeric (row 3 holds 'abc')" in str(err)
    assert err.field == "g" and err.row == 3 and err.source == str(path) and str(path) in str(err)
    assert "is missing" in str(_raises(st.require, scalars=["rp"]))  # absent stays "missing"


def test_non_numeric_label_names_row_and_star(tmp_path):
    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "teff": ["5000", "hot", "6000"]}), path)
    err = _raises(read_table, path)
    assert err.field == "teff" and err.row == 1 and err.star == "b"
    assert "'hot'" in str(err) and str(path) in str(err)


def test_empty_id_is_named(tmp_path):
    path = tmp_path / "noid.parquet"
    pq.write_table(pa.table({"id": ["a", None, "c"], "g": [1.0, 2.0, 3.0]}), path)
    err = _raises(read_table, path)
    assert "id is empty" in str(err) and err.field == "id" and err.row == 1


# --------------------------------------------------------------- 5. null / ragged Parquet spectra
@pytest.mark.parametrize("fixed", [False, True], ids=["list", "fixed_size_list"])
def test_one_null_spectrum_is_kept_as_nan(tmp_path, fixed):
    width = 5
    flux = [[1.0, 1.1, 1.2, 1.3, 1.4], [2.0, None, 2.2, 2.3, 2.4], None, [4.0, 4.1, 4.2, 4.3, 4.4]]
    err = [[0.1] * width, [0.1] * width, None, [0.1] * width]
    typ = pa.list_(pa.float64(), width) if fixed else pa.list_(pa.float64())
    path = tmp_path / "nullspec.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "flux": pa.array(flux, typ),
                             "flux_err": pa.array(err, typ), "g": [1.0, None, 3.0, 4.0]}), path)
    st = read_table(path)
    assert len(st) == 4 and st.ids.tolist() == ["a", "b", "c", "d"] and st.n_pix == width
    assert np.isnan(st.flux[2]).all() and np.isnan(st.flux_err[2]).all()
    np.testing.assert_allclose(st.flux[0], flux[0])
    np.testing.assert_allclose(st.flux[3], flux[3])
    assert np.isnan(st.flux[1, 1]) and np.isfinite(np.delete(st.flux[1], 1)).all()  # null pixel
    assert np.isnan(st.scalars["g"][1]) and st.scalars["g"][2] == 3.0
    assert st.missing_report() == {"scalar:g": 1, "spectrum:nonfinite_pixels": 2}


def test_null_spectrum_is_flagged_bad_spectrum_downstream(tmp_path, make_table, tiny_config):
    from kielnet.data.preprocess import Preprocessor
    from kielnet.io.tables import startable_to_table, _write_parquet

    t = make_table(n=12, n_pix=48, seed=3)
    tab = startable_to_table(t)
    path = tmp_path / "stars.parquet"
    _write_parquet(tab, path)
    pt = pq.read_table(path)
    flux = pt.column("flux").combine_chunks()
    nulls = pa.array([i == 4 for i in range(len(flux))])
    pt = pt.set_column(pt.column_names.index("flux"), "flux",
                       pa.FixedSizeListArray.from_arrays(flux.values, 48, mask=nulls))
    pq.write_table(pt, path)
    st = read_table(path)
    assert len(st) == 12 and np.isnan(st.flux[4]).all()
    np.testing.assert_allclose(np.delete(st.flux, 4, axis=0), np.delete(t.flux, 4, axis=0), rtol=1e-6)
    prep = Preprocessor(tiny_config).fit(t).transform(st)
    assert prep.bad_spectrum.tolist() == [i == 4 for i in range(12)]


def test_ragged_list_column_names_row_and_star(tmp_path):
    path = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"source_id": [11, 12, 13, 14],
                             "flux": pa.array([[1.0, 2.0], None, [1.0, 2.0, 3.0], [1.0]])}), path)
    err = _raises(read_table, path)
    assert "different lengths" in str(err) and err.field == "flux"
    assert err.row == 2 and err.star == "13" and str(path) in str(err)


def test_list_column_of_text_is_named(tmp_path):
    path = tmp_path / "textlist.parquet"
    pq.write_table(pa.table({"id": ["a"], "flux": pa.array([["x", "y"]])}), path)
    err = _raises(read_table, path)
    assert err.field == "flux" and "not numbers" in str(err)


# --------------------------------------------------------------- 6. read_stars: every failure named
@pytest.mark.parametrize("reader, words", [("read_apstar", "an apStar file"),
                                           ("read_table", "a star table")])
def test_read_stars_wraps_foreign_exceptions(tmp_path, monkeypatch, reader, words):
    from kielnet.io.formats import apstar, table

    def boom(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(apstar if reader == "read_apstar" else table, reader, boom)
    path = tmp_path / ("apStar-r6-2MX.fits" if reader == "read_apstar" else "t.csv")
    path.write_text("id,g\na,1\n")
    err = _raises(read_stars, path)
    assert str(err).startswith(f"cannot read as {words}: ZeroDivisionError: boom")
    assert isinstance(err.__cause__, ZeroDivisionError) and err.source == str(path)


def test_read_stars_paths_that_are_not_files(tmp_path):
    err = _raises(read_stars, tmp_path / "nope.parquet")
    assert "does not exist" in str(err) and str(tmp_path / "nope.parquet") in str(err)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    err = _raises(read_stars, empty_dir)
    assert "no files to read" in str(err) and str(empty_dir) in str(err)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert "no files to read" in str(_raises(read_stars, other))
    for name in ("empty.csv", "empty.parquet", "empty.npz", "apStar-r6-2MEMPTY.fits"):
        (tmp_path / name).write_bytes(b"")
        err = _raises(read_stars, tmp_path / name)
        assert "empty" in str(err) and str(tmp_path / name) in str(err)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="permissions cannot be tested as root")
def test_read_stars_unreadable_file(tmp_path):
    path = tmp_path / "secret.csv"
    path.write_text("id,g\na,1\n")
    path.chmod(0)
    try:
        err = _raises(read_stars, path)
    finally:
        path.chmod(0o600)
    assert "not readable" in str(err) and str(path) in str(err)


# --------------------------------------------------------------- 7. corrupted real files
def test_apstar_truncated_to_half(shared_data, tmp_path):
    path = _real(shared_data, APSTAR, tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])
    err = _raises(read_stars, path)
    assert "file is truncated" in str(err) and err.source == str(path) and str(path) in str(err)


@pytest.mark.parametrize("where", ["whole", "header"])
def test_apstar_garbage_bytes(shared_data, tmp_path, where):
    path = _real(shared_data, APSTAR, tmp_path)
    raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(5)
    if where == "whole":
        raw = bytearray(rng.bytes(len(raw)))
    else:
        raw[100:3000] = rng.bytes(2900)
    path.write_bytes(bytes(raw))
    err = _raises(read_stars, path)
    assert "corrupt" in str(err) and err.source == str(path)


def test_apstar_flux_hdu_wrong_pixel_count_or_missing(shared_data, tmp_path):
    src = _real(shared_data, APSTAR, tmp_path)
    with fits.open(src) as hdul:
        hdus = [h.copy() for h in hdul]
    wrong = tmp_path / "apStar-r6-2MWRONGPIX.fits"
    hdus[1].data = hdus[1].data[..., :100]
    fits.HDUList(hdus).writeto(wrong)
    err = _raises(read_stars, wrong)
    assert err.field == "HDU1" and "(5, 100)" in str(err) and str(wrong) in str(err)
    missing = tmp_path / "apStar-r6-2MNOFLUX.fits"
    fits.HDUList([hdus[0]]).writeto(missing)
    err = _raises(read_stars, missing)
    assert err.field == "HDU1" and "missing" in str(err) and str(missing) in str(err)


def test_rvs_csv_truncated_mid_row(shared_data, tmp_path):
    path = _real(shared_data, RVS, tmp_path)
    raw = path.read_bytes()
    cut = raw.index(b",", len(raw) // 2) + 3  # inside a row, after its first field
    path.write_bytes(raw[:cut])
    err = _raises(read_stars, path)
    assert "file is truncated" in str(err) and str(path) in str(err)
    assert err.row is not None and err.row > 0


def test_rvs_csv_missing_column(shared_data, tmp_path):
    path = _real(shared_data, RVS, tmp_path)
    tab = Table.read(path, format="ascii.csv")
    tab.remove_column("flux_error")
    tab.write(path, format="ascii.csv", overwrite=True)
    err = _raises(read_stars, path)
    assert err.field == "flux_error" and "missing" in str(err) and str(path) in str(err)


def test_rvs_csv_non_numeric_flux(shared_data, tmp_path):
    path = _real(shared_data, RVS, tmp_path)
    lines = path.read_text().splitlines()
    col = lines[0].split(",").index("flux")
    cells = lines[11].split(",")
    star = cells[0]
    cells[col] = "abc"
    lines[11] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    err = _raises(read_rvs_spectra, path)
    assert err.field == "flux" and err.row == 10 and err.star == star
    assert "'abc'" in str(err) and str(path) in str(err)


def test_rvs_one_source_with_the_wrong_pixel_count(shared_data, tmp_path):
    """A source with the wrong pixel count in an otherwise intact file is kept with an
    all-NaN spectrum and named (warning, meta['bad_rows']); the other source is read."""
    path = _real(shared_data, RVS, tmp_path)
    tab = Table.read(path, format="ascii.csv")
    other = tab.copy()
    other["source_id"] = 42
    two = Table(np.concatenate([np.asarray(other[:-3]), np.asarray(tab)]))
    two.write(path, format="ascii.csv", overwrite=True)
    with pytest.warns(UserWarning, match="1 of 2 stars") as record:
        st = read_stars(path)
    assert st.ids.tolist() == ["42", str(tab["source_id"][0])]
    assert np.isnan(st.flux[0]).all() and np.isnan(st.flux_err[0]).all()
    assert np.isfinite(st.flux[1]).all()
    assert st.meta["bad_rows"] == {"42": "flux: 2398 pixels, expected 2401 (846-870 nm in 0.01 nm steps)"}
    assert any("42 (flux: 2398 pixels" in str(w.message) and str(path) in str(w.message) for w in record)


def test_rvs_every_source_with_the_wrong_pixel_count(shared_data, tmp_path):
    path = _real(shared_data, RVS, tmp_path)
    tab = Table.read(path, format="ascii.csv")
    other = tab.copy()
    other["source_id"] = 42
    two = Table(np.concatenate([np.asarray(other[:-3]), np.asarray(tab[1:])]))
    two.write(path, format="ascii.csv", overwrite=True)
    err = _raises(read_stars, path)
    assert "no star has usable data" in str(err) and str(path) in str(err) and err.field == "flux"


def test_xp_garbled_coefficient_string(shared_data, tmp_path):
    """A garbled coefficient string: that star is kept with NaN coefficients and named."""
    path = _real(shared_data, XP, tmp_path)
    tab = Table.read(path, format="ascii.csv")
    tab["rp_coefficients"] = tab["rp_coefficients"].astype(object)
    tab["rp_coefficients"][1] = "(1.0, abc, 3.0)"
    tab.write(path, format="ascii.csv", overwrite=True)
    star = str(tab["source_id"][1])
    with pytest.warns(UserWarning, match="kept with NaN") as record:
        st = read_stars(path)
    assert st.ids.tolist() == [str(s) for s in tab["source_id"]]
    assert np.isnan([st.scalars[f"{b}_{i}"][1] for b in ("bp", "rp") for i in range(55)]).all()
    assert np.isfinite([st.scalars[f"{b}_{i}"][0] for b in ("bp", "rp") for i in range(55)]).all()
    reason = st.meta["bad_rows"][star]
    assert reason.startswith("rp_coefficients: cannot parse") and "'abc'" in reason
    assert any(star in str(w.message) and str(path) in str(w.message) for w in record)


def test_xp_every_coefficient_string_garbled(shared_data, tmp_path):
    path = _real(shared_data, XP, tmp_path)
    tab = Table.read(path, format="ascii.csv")
    tab["rp_coefficients"] = tab["rp_coefficients"].astype(object)
    tab["rp_coefficients"][:] = "(1.0, abc, 3.0)"
    tab.write(path, format="ascii.csv", overwrite=True)
    err = _raises(read_stars, path)
    assert "no star has usable data" in str(err) and err.field == "rp_coefficients"
    assert "'abc'" in str(err) and str(path) in str(err)


def test_xp_missing_rp_coefficients_column(shared_data, tmp_path):
    path = _real(shared_data, XP, tmp_path)
    tab = Table.read(path, format="ascii.csv")
    tab.remove_column("rp_coefficients")
    tab.write(path, format="ascii.csv", overwrite=True)
    err = _raises(read_xp_continuous, path)
    assert err.field == "rp_coefficients" and "missing" in str(err) and str(path) in str(err)


def test_xp_library_npz_truncated(xp_subset_path, tmp_path):
    path = tmp_path / "subset.npz"
    raw = xp_subset_path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])
    err = _raises(read_stars, path)
    assert "truncated or corrupt" in str(err) and err.source == str(path)


def test_xp_library_npz_missing_array(xp_subset_path, tmp_path):
    with np.load(xp_subset_path) as data:
        arrays = {k: data[k] for k in data.files if k != "flux_error_norm"}
    path = tmp_path / "noerr.npz"
    np.savez(path, **arrays)
    err = _raises(load_xp_library, path)
    assert err.field == "flux_error_norm" and "missing" in str(err) and str(path) in str(err)


def test_xp_library_npz_text_in_a_number_array(xp_subset_path, tmp_path):
    with np.load(xp_subset_path) as data:
        arrays = {k: data[k] for k in data.files}
    g = arrays["gaiaedr3_phot_g_mean_mag"].astype(str)
    g[7] = "bright"
    arrays["gaiaedr3_phot_g_mean_mag"] = g
    path = tmp_path / "textg.npz"
    np.savez(path, **arrays)
    err = _raises(load_xp_library, path)
    assert err.field == "gaiaedr3_phot_g_mean_mag" and err.row == 7
    assert err.star == str(arrays["apogee_id"][7]).strip() and str(path) in str(err)


def test_apstar_directory_with_one_corrupt_file_names_it(shared_data, tmp_path):
    src = _real(shared_data, APSTAR, tmp_path)
    good = tmp_path / "dir"
    good.mkdir()
    shutil.copyfile(src, good / src.name)
    bad = good / "apStar-r6-2MBAD.fits"
    bad.write_bytes(src.read_bytes()[:50_000])
    err = _raises(read_apstar, good)
    assert err.source == str(bad) and str(bad) in str(err)
    assert isinstance(read_apstar(good / src.name), StarTable)
