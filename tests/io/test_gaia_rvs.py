"""Gaia DR3 RVS mean-spectrum reader: real datalink CSVs, ECSV/FITS/VOTable, long and
wide forms, §2.1 NaN filling, and errors that name the file and star."""

from __future__ import annotations

import csv
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table, vstack

from kielnet.errors import InputError
from kielnet.io.gaia_rvs import (RVS_N_PIX, RVS_Q3_WINDOWS_NM, RVS_WAVELENGTH_NM, fill_nan_q3,
                                 read_rvs_spectra, read_rvs_wavelength)

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
RVS_DIR = DATA / "gaia_rvs"
CSV_FILES = sorted(RVS_DIR.glob("*.csv")) if RVS_DIR.is_dir() else []
needs_data = pytest.mark.skipif(not CSV_FILES, reason=f"real RVS data {RVS_DIR} is absent")


def raw_csv(path: Path) -> dict[str, np.ndarray]:
    """Parse a datalink CSV with the csv module alone (independent of the reader)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))

    def col(name: str) -> np.ndarray:
        return np.array([float(r[name]) if r[name] != "" else np.nan for r in rows])

    return {"source_id": np.array([int(r["source_id"]) for r in rows]),
            "wavelength": col("wavelength"), "flux": col("flux"), "flux_error": col("flux_error")}


@pytest.fixture(scope="module")
def raw() -> dict[str, dict[str, np.ndarray]]:
    if not CSV_FILES:
        pytest.skip(f"real RVS data {RVS_DIR} is absent")
    return {p.name: raw_csv(p) for p in CSV_FILES}


@pytest.fixture(scope="module")
def long_tables() -> list[Table]:
    if len(CSV_FILES) < 2:
        pytest.skip(f"real RVS data {RVS_DIR} is absent")
    # two stars with NaN edge pixels (18 and 10 of them)
    names = ["GaiaDR3-3174658066485297152.csv", "Kepler-409.csv"]
    return [Table.read(RVS_DIR / n, format="ascii.csv") for n in names]


def window_q3(wl: np.ndarray, flux: np.ndarray) -> float:
    sel = np.zeros(wl.shape, bool)
    for lo, hi in RVS_Q3_WINDOWS_NM:
        sel |= (wl >= lo - 1e-9) & (wl <= hi + 1e-9)
    return float(np.percentile(flux[sel & np.isfinite(flux)], 75))


# ------------------------------------------------------------------ real files
@needs_data
@pytest.mark.parametrize("path", CSV_FILES, ids=[p.name for p in CSV_FILES])
def test_every_real_csv(path, raw):
    r = raw[path.name]
    st = read_rvs_spectra(path)
    assert len(st) == 1 and st.n_pix == RVS_N_PIX == 2401
    assert st.flux.shape == st.flux_err.shape == (1, 2401)
    wl = st.wavelength.to_value(u.nm)
    assert st.wavelength.unit == u.nm and wl[0] == 846.0 and wl[-1] == 870.0
    np.testing.assert_allclose(np.diff(wl), 0.01, atol=1e-9)
    np.testing.assert_allclose(wl, r["wavelength"], atol=1e-9)
    assert st.ids[0] == str(r["source_id"][0])
    assert st.extra["source_id"].dtype == np.int64 and st.extra["source_id"][0] == r["source_id"][0]
    assert st.scalars == {} and st.labels == {}
    nan = np.isnan(r["flux"])
    assert st.extra["n_filled_pixels"][0] == nan.sum()
    assert np.isfinite(st.flux).all() and st.missing_report() == {}
    np.testing.assert_allclose(st.flux[0, ~nan], r["flux"][~nan], rtol=1e-6)
    np.testing.assert_allclose(st.flux_err[0, ~nan], r["flux_error"][~nan], rtol=1e-6)
    if nan.any():
        np.testing.assert_allclose(st.flux[0, nan], window_q3(r["wavelength"], r["flux"]), rtol=1e-6)
        assert np.isnan(st.flux_err[0, nan]).all()  # filled pixels keep no error


@needs_data
def test_directory_reads_all_stars_and_skips_the_grid_image(raw):
    st = read_rvs_spectra(RVS_DIR)
    assert len(st) == len(CSV_FILES) == 6
    assert list(st.extra["file"]) == [p.name for p in CSV_FILES]
    assert st.meta["loader"] == "gaia_rvs" and st.meta["formats"] == ["ascii.csv"]
    assert [Path(s).name for s in st.meta.get("skipped_files", [])] == ["gaia_rvs_wavelength.fits"]
    total_nan = sum(int(np.isnan(r["flux"]).sum()) for r in raw.values())
    assert st.extra["n_filled_pixels"].sum() == total_nan == 42
    for key in ("solution_id", "ra", "dec", "combined_transits", "combined_ccds", "deblended_ccds"):
        assert key in st.extra
    assert st.extra["combined_transits"].dtype == np.int64


@needs_data
def test_wavelength_fits_is_the_grid():
    wl = read_rvs_wavelength(RVS_DIR / "gaia_rvs_wavelength.fits")
    assert wl.unit == u.nm and wl.shape == (2401,)
    np.testing.assert_allclose(wl.value, RVS_WAVELENGTH_NM, atol=1e-9)


# ------------------------------------------------------------------ archive forms
def _expected(long_tables):
    return read_rvs_spectra([RVS_DIR / "GaiaDR3-3174658066485297152.csv", RVS_DIR / "Kepler-409.csv"])


@needs_data
@pytest.mark.parametrize("suffix", [".csv", ".ecsv", ".fits", ".vot"])
def test_long_form_many_stars_per_file(tmp_path, long_tables, suffix):
    tab = vstack(long_tables)
    # the second star's rows in reverse order: the reader sorts by wavelength
    n = len(long_tables[0])
    tab = tab[np.r_[np.arange(n), np.arange(len(tab) - 1, n - 1, -1)]]
    tab["wavelength"].unit = u.nm
    path = tmp_path / f"rvs{suffix}"
    fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits", ".vot": "votable"}[suffix]
    tab.write(path, format=fmt)
    st = read_rvs_spectra(path)
    ref = _expected(long_tables)
    assert list(st.ids) == list(ref.ids)
    np.testing.assert_array_equal(st.flux, ref.flux)
    np.testing.assert_array_equal(st.flux_err, ref.flux_err)
    np.testing.assert_array_equal(st.extra["n_filled_pixels"], [18, 10])
    np.testing.assert_array_equal(st.extra["source_id"], ref.extra["source_id"])


@needs_data
@pytest.mark.filterwarnings("ignore::astropy.units.UnitsWarning")
@pytest.mark.parametrize("suffix", [".ecsv", ".fits", ".vot"])
def test_wide_form_one_row_per_star(tmp_path, long_tables, suffix):
    ref = _expected(long_tables)
    raw_flux = np.vstack([np.ma.filled(np.ma.asarray(t["flux"]).astype(float), np.nan)
                          for t in long_tables])
    raw_err = np.vstack([np.ma.filled(np.ma.asarray(t["flux_error"]).astype(float), np.nan)
                         for t in long_tables])
    wide = Table({"source_id": ref.extra["source_id"], "flux": raw_flux, "flux_error": raw_err,
                  "wavelength": np.tile(RVS_WAVELENGTH_NM * 10, (2, 1))})
    wide["wavelength"].unit = u.AA  # a unit is honoured
    path = tmp_path / f"wide{suffix}"
    wide.write(path, format={".ecsv": "ascii.ecsv", ".fits": "fits", ".vot": "votable"}[suffix])
    st = read_rvs_spectra(path)
    assert list(st.ids) == list(ref.ids)
    np.testing.assert_array_equal(st.flux, ref.flux)
    np.testing.assert_array_equal(st.extra["n_filled_pixels"], ref.extra["n_filled_pixels"])


@needs_data
def test_wide_csv_with_bracket_strings(tmp_path, long_tables):
    ref = _expected(long_tables)
    lines = ["source_id,flux,flux_error"]
    for t in long_tables:
        f = np.ma.filled(np.ma.asarray(t["flux"]).astype(float), np.nan)
        e = np.ma.filled(np.ma.asarray(t["flux_error"]).astype(float), np.nan)
        fs, es = (", ".join(repr(float(x)) for x in a) for a in (f, e))
        lines.append(f'{t["source_id"][0]},"({fs})","[{es}]"')
    path = tmp_path / "wide.csv"
    path.write_text("\n".join(lines) + "\n")
    st = read_rvs_spectra(path)
    np.testing.assert_array_equal(st.flux, ref.flux)
    np.testing.assert_array_equal(st.flux_err, ref.flux_err)


def test_no_fill_keeps_nan_and_fill_function():
    wl = RVS_WAVELENGTH_NM
    flux = np.ones((3, wl.size))
    flux[0, :5] = np.nan
    flux[1, [0, -1]] = np.nan
    flux[1, 150:340] = np.linspace(0.5, 1.5, 190)  # covers the first window
    flux[2] = np.nan  # nothing to compute Q3 from
    filled, n, q3 = fill_nan_q3(flux, wl)
    assert list(n) == [5, 2, 0]
    assert filled[0, 0] == 1.0 and np.isnan(q3[2]) and np.isnan(filled[2]).all()
    sel = np.zeros(wl.size, bool)
    for lo, hi in RVS_Q3_WINDOWS_NM:
        sel |= (wl >= lo) & (wl <= hi)
    assert sel.sum() == 201 + 211 + 211
    assert filled[1, 0] == filled[1, -1] == q3[1] == np.percentile(flux[1, sel & np.isfinite(flux[1])], 75)


@needs_data
def test_fill_nan_false(long_tables):
    st = read_rvs_spectra(RVS_DIR / "Kepler-409.csv", fill_nan=False)
    assert st.extra["n_filled_pixels"][0] == 0 and np.isnan(st.flux).sum() == 10
    assert st.missing_report() == {"spectrum:nonfinite_pixels": 1}


# ------------------------------------------------------------------ bad input
def _bad_star_warning(record) -> str:
    """The one 'kept with NaN' warning of a read (fails if there is not exactly one)."""
    texts = [str(w.message) for w in record if "kept with NaN" in str(w.message)]
    assert len(texts) == 1, texts
    return texts[0]


@needs_data
def test_wrong_pixel_count_keeps_the_star_with_nan(tmp_path, long_tables):
    """One star of a multi-star file with a pixel missing: kept, all-NaN, named in the
    warning and in meta['bad_rows']; the other star reads as from its own file."""
    tab = vstack(long_tables)
    tab.remove_row(len(long_tables[0]) + 7)  # second star loses a pixel (not at an end)
    path = tmp_path / "short.csv"
    tab.write(path, format="ascii.csv")
    with pytest.warns(UserWarning, match="kept with NaN") as record:
        st = read_rvs_spectra(path)
    bad_id = str(tab["source_id"][-1])
    ref = _expected(long_tables)
    assert list(st.ids) == list(ref.ids) and st.ids[1] == bad_id
    assert np.isnan(st.flux[1]).all() and np.isnan(st.flux_err[1]).all()  # never filled
    assert st.flux.shape == (2, RVS_N_PIX) and st.extra["n_filled_pixels"][1] == 0
    np.testing.assert_array_equal(st.flux[0], ref.flux[0])
    np.testing.assert_array_equal(st.flux_err[0], ref.flux_err[0])
    assert st.extra["n_filled_pixels"][0] == 18
    assert st.meta["bad_rows"] == {bad_id: f"flux: 2400 pixels, expected {RVS_N_PIX} (846-870 nm "
                                           "in 0.01 nm steps)"}
    text = _bad_star_warning(record)
    assert text.startswith(f"1 of 2 stars in {path} have unusable data")
    assert f"{bad_id} (flux: 2400 pixels, expected 2401" in text
    assert st.missing_report() == {"spectrum:nonfinite_pixels": 1}


@needs_data
def test_wrong_grid_of_one_star_keeps_it_with_nan(tmp_path, long_tables):
    first, second = long_tables[0].copy(), long_tables[1].copy()
    second["wavelength"] = second["wavelength"] + 0.005  # off the grid
    path = tmp_path / "shifted2.csv"
    vstack([first, second]).write(path, format="ascii.csv")
    with pytest.warns(UserWarning, match="kept with NaN") as record:
        st = read_rvs_spectra(path)
    bad_id = str(second["source_id"][0])
    assert np.isnan(st.flux[1]).all() and np.isfinite(st.flux[0]).all()
    assert st.meta["bad_rows"][bad_id].startswith("wavelength: grid differs from the DR3 RVS grid")
    assert "pixel 0 is at 846.005" in st.meta["bad_rows"][bad_id]
    assert bad_id in _bad_star_warning(record)


@needs_data
def test_every_star_bad_is_an_error(tmp_path, long_tables):
    tab = vstack(long_tables)
    tab.remove_row(len(long_tables[0]) + 7)  # second star: 2400 pixels
    tab.remove_row(3)  # first star: 2400 pixels
    path = tmp_path / "allbad.csv"
    tab.write(path, format="ascii.csv")
    with pytest.raises(InputError, match="no star has usable data") as exc:
        read_rvs_spectra(path)
    msg = str(exc.value)
    assert "allbad.csv" in msg and "all 2 unusable" in msg and exc.value.field == "flux"
    for sid in {str(s) for s in tab["source_id"]}:
        assert f"{sid} (flux: 2400 pixels" in msg
    # one star, wrong count: named with its field, star and row
    one = long_tables[0].copy()
    one.remove_row(100)
    one.write(tmp_path / "one.csv", format="ascii.csv")
    with pytest.raises(InputError, match="2400 pixels") as exc:
        read_rvs_spectra(tmp_path / "one.csv")
    assert "one.csv" in str(exc.value) and exc.value.star == str(one["source_id"][0])
    assert exc.value.row == 0


@needs_data
def test_file_cut_off_at_a_line_end_is_an_error(tmp_path, long_tables):
    """The last star stopping short of the grid's end and ending the file is a truncated
    file, not a star to keep: an error even though the first star is whole."""
    tab = vstack(long_tables)[:len(long_tables[0]) + 1000]
    path = tmp_path / "cut.csv"
    tab.write(path, format="ascii.csv")  # ends with a newline: the CSV check cannot see it
    with pytest.raises(InputError, match="file is truncated") as exc:
        read_rvs_spectra(path)
    assert "cut.csv" in str(exc.value) and exc.value.star == str(tab["source_id"][-1])
    assert "1000 of 2401 pixels" in str(exc.value)
    # a star written in descending order, cut off: the same
    second = long_tables[1][::-1][:1000]
    vstack([long_tables[0], second]).write(tmp_path / "cut_desc.csv", format="ascii.csv")
    with pytest.raises(InputError, match="file is truncated"):
        read_rvs_spectra(tmp_path / "cut_desc.csv")
    # one star cut off at a line end
    long_tables[0][:1500].write(tmp_path / "cut_one.csv", format="ascii.csv")
    with pytest.raises(InputError, match="file is truncated: its last star has 1500 of 2401"):
        read_rvs_spectra(tmp_path / "cut_one.csv")
    # the last star missing its *first* pixel is not a cut-off file: kept with NaN
    vstack([long_tables[0], long_tables[1][1:]]).write(tmp_path / "nofirst.csv", format="ascii.csv")
    with pytest.warns(UserWarning, match="1 of 2 stars"):
        st = read_rvs_spectra(tmp_path / "nofirst.csv")
    assert np.isnan(st.flux[1]).all() and np.isfinite(st.flux[0]).all()


@needs_data
@pytest.mark.filterwarnings("ignore::astropy.units.UnitsWarning")
def test_wide_form_bad_cells_keep_the_star_with_nan(tmp_path, long_tables):
    ref = _expected(long_tables)
    flux = [np.ma.filled(np.ma.asarray(t["flux"]).astype(float), np.nan) for t in long_tables]
    err = [np.ma.filled(np.ma.asarray(t["flux_error"]).astype(float), np.nan) for t in long_tables]
    ids = [str(i) for i in ref.ids] + ["101", "102", "103"]

    def cell(a: np.ndarray) -> str:
        return "(" + ", ".join(repr(float(x)) for x in a) + ")"

    rows = [(ids[0], cell(flux[0]), cell(err[0])),
            (ids[1], cell(flux[1]), cell(err[1])),
            (ids[2], cell(flux[0][:-5]), cell(err[0][:-5])),           # 2396 values
            (ids[3], cell(flux[0]).replace(", ", ", abc, ", 1), cell(err[0])),  # garbled
            (ids[4], "", cell(err[0]))]                                 # empty
    lines = ["source_id,flux,flux_error"] + [f'{i},"{f}","{e}"' for i, f, e in rows]
    path = tmp_path / "wide.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="3 of 5 stars") as record:
        st = read_rvs_spectra(path)
    assert list(st.ids) == ids
    np.testing.assert_array_equal(st.flux[:2], ref.flux)
    assert np.isnan(st.flux[2:]).all() and np.isnan(st.flux_err[2:]).all()
    bad = st.meta["bad_rows"]
    assert list(bad) == ids[2:]
    assert bad[ids[2]] == ("flux: 2396 values, expected 2401 (846-870 nm in 0.01 nm steps); "
                           "flux_error: 2396 values, expected 2401 (846-870 nm in 0.01 nm steps)")
    assert bad[ids[3]].startswith("flux: cannot parse the cell: value 1 of the cell is 'abc'")
    assert bad[ids[4]] == "flux: spectrum cell is empty"
    text = _bad_star_warning(record)
    assert all(i in text for i in ids[2:]) and str(path) in text


@needs_data
@pytest.mark.filterwarnings("ignore::astropy.units.UnitsWarning")
def test_wide_form_wrong_wavelength_cell_keeps_the_star_with_nan(tmp_path, long_tables):
    ref = _expected(long_tables)
    flux = np.vstack([np.ma.filled(np.ma.asarray(t["flux"]).astype(float), np.nan) for t in long_tables])
    wl = np.tile(RVS_WAVELENGTH_NM, (2, 1))
    wl[1] = wl[1, ::-1]  # descending: does not match the flux cells' order
    wide = Table({"source_id": ref.extra["source_id"], "flux": flux, "flux_error": flux * 0.01,
                  "wavelength": wl})
    wide.write(tmp_path / "wide.fits")
    with pytest.warns(UserWarning, match="1 of 2 stars"):
        st = read_rvs_spectra(tmp_path / "wide.fits")
    np.testing.assert_array_equal(st.flux[0], ref.flux[0])
    assert np.isnan(st.flux[1]).all() and np.isnan(st.flux_err[1]).all()
    assert st.meta["bad_rows"] == {ref.ids[1]: "wavelength: grid differs from the DR3 RVS grid "
                                   "(846-870 nm, 0.01 nm steps; wavelengths in nm unless a unit is "
                                   "given): pixel 0 is at 870.0, expected 846.0"}


@needs_data
def test_warning_names_at_most_five_stars(tmp_path, long_tables):
    base = long_tables[0]
    tabs = [base.copy()]
    for k in range(7):  # seven stars with 2399 pixels (gaps inside the grid)
        t = base.copy()
        t["source_id"] = 1000 + k
        t.remove_rows([50, 60])
        tabs.append(t)
    path = tmp_path / "many.csv"
    vstack(tabs).write(path, format="ascii.csv")
    with pytest.warns(UserWarning, match="kept with NaN") as record:
        st = read_rvs_spectra(path)
    assert len(st) == 8 and len(st.meta["bad_rows"]) == 7
    text = _bad_star_warning(record)
    assert text.startswith("7 of 8 stars") and "and 2 more (meta['bad_rows'])" in text
    assert "1004 (flux" in text and "1005 (" not in text


@needs_data
def test_wrong_grid_names_file_and_star(tmp_path, long_tables):
    tab = long_tables[0].copy()
    tab["wavelength"] = tab["wavelength"] * 10  # Angstrom without a unit
    path = tmp_path / "angstrom.ecsv"
    tab.write(path, format="ascii.ecsv")
    with pytest.raises(InputError, match="grid") as exc:
        read_rvs_spectra(path)
    assert "angstrom.ecsv" in str(exc.value) and exc.value.star == str(tab["source_id"][0])
    shifted = long_tables[0].copy()
    shifted["wavelength"] = shifted["wavelength"] + 0.005
    shifted.write(tmp_path / "shifted.csv", format="ascii.csv")
    with pytest.raises(InputError, match="grid"):
        read_rvs_spectra(tmp_path / "shifted.csv")


def test_empty_garbage_missing_column_and_unknown_suffix(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="empty") as exc:
        read_rvs_spectra(empty)
    assert "empty.csv" in str(exc.value)
    header_only = tmp_path / "header.csv"
    header_only.write_text("source_id,wavelength,flux,flux_error\n")
    with pytest.raises(InputError, match="header.csv"):
        read_rvs_spectra(header_only)
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"\x00\x01 not a fits file" * 50)
    with pytest.raises(InputError, match="garbage.fits"):
        read_rvs_spectra(garbage)
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("source_id,wavelength,flux_error\n1,846.0,0.1\n")
    with pytest.raises(InputError, match="'flux'") as exc:
        read_rvs_spectra(nocol)
    assert "nocol.csv" in str(exc.value) and exc.value.field == "flux"
    floatid = tmp_path / "floatid.csv"
    floatid.write_text("source_id,wavelength,flux,flux_error\n1.5,846.0,1.0,0.1\n")
    with pytest.raises(InputError, match="source_id"):
        read_rvs_spectra(floatid)
    with pytest.raises(InputError, match="unknown file format"):
        (tmp_path / "x.txt").write_text("a")
        read_rvs_spectra(tmp_path / "x.txt")
    with pytest.raises(InputError, match="does not exist"):
        read_rvs_spectra(tmp_path / "nope.csv")
