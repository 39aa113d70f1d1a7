"""Reader of APOGEE apStar files (real DR13/DR17 files and small synthetic ones)."""

from __future__ import annotations

import re
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits

from kielnet.errors import InputError
from kielnet.io.apstar import clip_flux_errors, read_apstar

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
APSTAR_DIR = DATA / "apogee" / "apStar"
N_PIX = 8575
EXTRA = {"file", "row_used", "n_visits", "n_clipped_err", "n_bad_err", "n_flagged_mask"}


# --------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def real_files() -> list[Path]:
    if not DATA.is_dir():
        pytest.skip(f"real data directory {DATA} is absent")
    files = sorted(APSTAR_DIR.glob("apStar*.fits"))
    if not files:
        pytest.skip(f"no apStar files in {APSTAR_DIR}")
    return files


@pytest.fixture(scope="module")
def real_table(real_files):
    return read_apstar(APSTAR_DIR)


def _shape(path: Path) -> tuple[int, ...]:
    with fits.open(path) as hdul:
        return hdul[1].data.shape


def make_apstar(path: Path, flux, err, mask=None, *, header: dict | None = None,
                crval: float = 4.179, cdelt: float = 6e-6, n_extra_hdus: int = 0) -> Path:
    """Write a minimal apStar-like file (HDU0 header, HDU1 flux, HDU2 err, HDU3 mask)."""
    flux = np.asarray(flux, dtype=np.float32)
    err = np.asarray(err, dtype=np.float32)
    mask = np.zeros(flux.shape, dtype=np.int16) if mask is None else np.asarray(mask, dtype=np.int16)
    primary = fits.PrimaryHDU()
    for key, value in {"CRVAL1": crval, "CDELT1": cdelt, "CRPIX1": 1, **(header or {})}.items():
        primary.header[key] = value
    hdus = [primary]
    for arr in (flux, err, mask):
        hdu = fits.ImageHDU(arr)
        hdu.header["CRVAL1"], hdu.header["CDELT1"], hdu.header["CRPIX1"] = crval, cdelt, 1
        hdus.append(hdu)
    hdus += [fits.ImageHDU(np.zeros(3)) for _ in range(n_extra_hdus)]
    fits.HDUList(hdus).writeto(path)
    return path


def simple_star(tmp_path: Path, name: str = "apStar-r6-2M00000000+0000000.fits", n_pix: int = 50,
                n_rows: int | None = None, **kw) -> Path:
    shape = (n_pix,) if n_rows is None else (n_rows, n_pix)
    rng = np.random.default_rng(len(name))
    flux = 1.0 + 0.01 * rng.standard_normal(shape)
    return make_apstar(tmp_path / name, flux, np.full(shape, 0.1), **kw)


# --------------------------------------------------------------------- real files
def test_all_real_files_read(real_table, real_files):
    st = real_table
    assert len(st) == len(real_files) == 26
    assert st.flux.shape == st.flux_err.shape == (26, N_PIX)
    assert st.wavelength.unit == u.AA
    wl = st.wavelength.to_value(u.AA)
    assert abs(wl[0] - 15100.8) < 1.0 and abs(wl[-1] - 16999.8) < 1.0
    assert np.all(np.diff(wl) > 0)
    np.testing.assert_allclose(wl, 10 ** (4.179 + 6e-6 * np.arange(N_PIX)), rtol=1e-12)
    assert set(st.extra) == EXTRA and set(st.scalars) == {"j", "h", "k", "snr"}
    assert list(st.extra["file"]) == [p.name for p in real_files]
    assert list(st.ids) == [p.name.split("-", 2)[2][:-5] for p in real_files]
    assert st.meta["loader"] == "apstar"
    assert st.source == ",".join(str(p) for p in real_files)
    assert np.all(st.extra["row_used"] == 0)
    # errors: finite and positive after clipping; DR13-era 1e10 "no data" errors are clipped
    assert np.all(np.isfinite(st.flux_err)) and np.all(st.flux_err > 0)
    assert st.flux_err.max() < 1e4 and np.all(st.extra["n_clipped_err"] > 0)
    assert np.all(st.extra["n_flagged_mask"] > 0)  # real apStar masks always flag some pixels
    for key in ("j", "h", "k", "snr"):
        assert np.all(np.isfinite(st.scalars[key]))


def test_header_values_match_astropy(real_table, real_files):
    for i in (0, len(real_files) - 1):
        hdr = fits.getheader(real_files[i], 0)
        for key in ("j", "h", "k"):
            assert real_table.scalars[key][i] == pytest.approx(float(hdr[key.upper()]))
        assert real_table.scalars["snr"][i] == pytest.approx(float(hdr["SNR"]))
        assert real_table.ids[i] == hdr["OBJID"].strip()
        assert real_table.extra["n_visits"][i] == hdr["NVISITS"]


def test_flux_and_mask_count_match_the_file(real_table, real_files):
    i = 0  # a DR17 file: NaN flux in the chip gaps stays NaN
    with fits.open(real_files[i]) as hdul:
        flux, mask = hdul[1].data[0], hdul[3].data[0]
    np.testing.assert_array_equal(np.isnan(real_table.flux[i]), np.isnan(flux))
    np.testing.assert_allclose(real_table.flux[i], flux.astype(np.float32), equal_nan=True)
    assert real_table.extra["n_flagged_mask"][i] == np.count_nonzero(mask)


def test_single_visit_1d_file(real_files):
    one_d = [p for p in real_files if len(_shape(p)) == 1]
    assert len(one_d) == 1
    path = one_d[0]
    st = read_apstar(path, row=5)  # any row: the one spectrum is used
    assert st.extra["row_used"][0] == 0 and st.extra["n_visits"][0] == 1
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(st.flux[0], hdul[1].data.astype(np.float32))


def test_dr17_single_visit_two_row_file_uses_row0(real_files):
    """DR17 writes a 1-visit star as 2 rows (NVISITS=1) whose row 1 is empty."""
    cands = [p for p in real_files if _shape(p)[0] == 2 and fits.getheader(p, 0).get("NVISITS") == 1]
    if not cands:
        pytest.skip("no 2-row single-visit file")
    st = read_apstar(cands[0], row=1)
    assert st.extra["row_used"][0] == 0
    np.testing.assert_array_equal(st.flux, read_apstar(cands[0]).flux)


def test_row1_differs_from_row0_for_multi_visit(real_files):
    path = next(p for p in real_files if len(_shape(p)) == 2 and _shape(p)[0] >= 4)
    st0, st1 = read_apstar(path, row=0), read_apstar(path, row=1)
    st2 = read_apstar(path, row=2)
    assert st0.extra["row_used"][0] == 0 and st1.extra["row_used"][0] == 1
    assert not np.array_equal(st0.flux, st1.flux, equal_nan=True)
    assert not np.array_equal(st0.flux_err, st1.flux_err)
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(st2.flux[0], hdul[1].data[2].astype(np.float32))
    n_rows = _shape(path)[0]
    with pytest.raises(InputError, match=re.escape(path.name)) as exc:
        read_apstar(path, row=n_rows)
    assert exc.value.field == "row" and exc.value.source == str(path)


# --------------------------------------------------------------------- clipping
def test_clipping_exactly_the_huge_errors(tmp_path):
    n = 200
    err = np.full(n, 2.0)  # median of the finite positive errors: 2.0 → limit 10
    huge = [5, 17, 123]
    err[huge] = [16.0, 1e10, 500.0]
    err[[60, 61]] = [9.9, 10.0]  # at or just below the limit: kept
    err[[40, 41, 42]] = [0.0, np.nan, -1.0]  # bad: excluded from the median, set to the limit
    flux = np.ones(n)
    flux[7] = np.nan
    mask = np.zeros(n, dtype=np.int16)
    mask[[1, 2, 3]] = [1, 512, -32768]
    path = make_apstar(tmp_path / "apStar-r6-2M12345678+1234567.fits", flux, err, mask)

    st = read_apstar(path)
    limit = 5.0 * 2.0
    out = st.flux_err[0]
    np.testing.assert_allclose(out[huge], limit)
    np.testing.assert_allclose(out[[40, 41, 42]], limit)
    keep = np.setdiff1d(np.arange(n), huge + [40, 41, 42])
    np.testing.assert_array_equal(out[keep], err[keep].astype(np.float32))
    assert out[60] == pytest.approx(9.9) and out[61] == pytest.approx(10.0)
    assert st.extra["n_clipped_err"][0] == 3
    assert st.extra["n_bad_err"][0] == 3
    assert st.extra["n_flagged_mask"][0] == 3
    assert np.isnan(st.flux[0, 7]) and np.isfinite(np.delete(st.flux[0], 7)).all()
    # a tighter factor (limit 2.4) also clips the 9.9 and 10.0 errors
    st2 = read_apstar(path, clip_factor=1.2)
    assert st2.extra["n_clipped_err"][0] == 5
    np.testing.assert_allclose(st2.flux_err[0, huge + [60, 61]], 2.4, rtol=1e-6)


def test_clip_flux_errors_function():
    err = np.array([[1.0, 1.0, 1.0, 10.0, -1.0], [np.inf, 0.0, np.nan, -2.0, 0.0]])
    out, n_clip, n_bad = clip_flux_errors(err, 5.0)
    np.testing.assert_allclose(out[0], [1.0, 1.0, 1.0, 5.0, 5.0])
    assert np.isnan(out[1]).all()
    assert list(n_clip) == [1, 0] and list(n_bad) == [1, 5]
    with pytest.raises(InputError):
        clip_flux_errors(err, 0.0)


# --------------------------------------------------------------------- headers
def test_header_sentinels_become_nan_and_id_from_name(tmp_path):
    path = simple_star(tmp_path, "apStar-dr17-2M01020304-0506070.fits",
                       header={"J": 99.999, "H": -9999.0, "SNR": "n/a", "NVISITS": 1})
    st = read_apstar(path)
    assert np.isnan(st.scalars["j"][0]) and np.isnan(st.scalars["h"][0])
    assert np.isnan(st.scalars["k"][0]) and np.isnan(st.scalars["snr"][0])  # K absent, SNR text
    assert st.ids[0] == "2M01020304-0506070"
    assert st.missing_report() == {"scalar:j": 1, "scalar:h": 1, "scalar:k": 1, "scalar:snr": 1}
    path2 = simple_star(tmp_path, "apStar-r6-x.fits", n_rows=4,
                        header={"OBJID": "  2MFOO  ", "J": 10.5, "H": 10.0, "K": 9.9, "SNR": 55.0})
    st2 = read_apstar(path2, row=3)
    assert st2.ids[0] == "2MFOO" and st2.scalars["k"][0] == pytest.approx(9.9)
    assert st2.extra["n_visits"][0] == 2 and st2.extra["row_used"][0] == 3  # inferred: rows - 2


# --------------------------------------------------------------------- bad input
@pytest.mark.parametrize("content", [b"", np.random.default_rng(1).bytes(4000)], ids=["empty", "random"])
def test_unreadable_file_names_the_file(tmp_path, content):
    path = tmp_path / "apStar-r6-2MBROKEN.fits"
    path.write_bytes(content)
    with pytest.raises(InputError, match="apStar-r6-2MBROKEN.fits") as exc:
        read_apstar(path)
    assert exc.value.source == str(path)


def test_truncated_file(tmp_path):
    good = simple_star(tmp_path, n_rows=5, n_pix=400)
    bad = tmp_path / "apStar-r6-2MTRUNC.fits"
    bad.write_bytes(good.read_bytes()[:9000])
    with pytest.raises(InputError, match="apStar-r6-2MTRUNC.fits"):
        read_apstar(bad)


def test_missing_hdu_and_wrong_shapes(tmp_path):
    path = tmp_path / "apStar-r6-2MONLYFLUX.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones(10, np.float32))]).writeto(path)
    with pytest.raises(InputError, match="apStar-r6-2MONLYFLUX.fits") as exc:
        read_apstar(path)
    assert exc.value.field == "HDU2"
    path2 = tmp_path / "apStar-r6-2MSHAPE.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones(10, np.float32)),
                  fits.ImageHDU(np.ones(9, np.float32)), fits.ImageHDU(np.zeros(10, np.int16))]).writeto(path2)
    with pytest.raises(InputError, match="HDU 2") as exc:
        read_apstar(path2)
    assert exc.value.field == "HDU2"


def test_missing_path_and_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_apstar(tmp_path / "apStar-nope.fits")
    with pytest.raises(InputError, match="no apStar"):
        read_apstar(tmp_path)
    with pytest.raises(InputError):
        read_apstar([])
    path = simple_star(tmp_path)
    with pytest.raises(InputError, match="row"):
        read_apstar(path, row=-1)
    with pytest.raises(InputError, match="clip_factor"):
        read_apstar(path, clip_factor=-5)


def test_row_out_of_range_and_empty_row(tmp_path):
    path = simple_star(tmp_path, n_rows=3)
    assert read_apstar(path, row=2).extra["row_used"][0] == 2
    with pytest.raises(InputError, match=re.escape(path.name)) as exc:
        read_apstar(path, row=3)
    assert exc.value.field == "row"
    empty = make_apstar(tmp_path / "apStar-r6-2MEMPTYROW.fits", np.zeros((3, 20)), np.zeros((3, 20)))
    with pytest.raises(InputError, match="apStar-r6-2MEMPTYROW.fits") as exc:
        read_apstar(empty, row=1)
    assert exc.value.field == "row"


def test_directory_input_and_grid_checks(tmp_path):
    d = tmp_path / "stars"
    d.mkdir()
    b = simple_star(d, "apStar-r6-2MB.fits", header={"OBJID": "B"})
    a = simple_star(d, "apStar-r6-2MA.fits", n_rows=4, header={"OBJID": "A"})
    (d / "notes.txt").write_text("not a spectrum")
    (d / "allStar.fits").write_bytes(b"")  # not an apStar* name: ignored
    st = read_apstar(d)
    assert list(st.ids) == ["A", "B"] and list(st.extra["file"]) == [a.name, b.name]
    assert st.source == f"{a},{b}"
    assert st.flux.shape == (2, 50)
    # a list mixing a directory and a file
    assert len(read_apstar([d, b])) == 3

    other = tmp_path / "other"
    other.mkdir()
    wide = simple_star(other, "apStar-r6-2MWIDE.fits", n_pix=60)
    with pytest.raises(InputError, match="apStar-r6-2MWIDE.fits") as exc:
        read_apstar([a, wide])
    assert "pixels" in str(exc.value)
    shifted = simple_star(other, "apStar-r6-2MSHIFT.fits", crval=4.18)
    with pytest.raises(InputError, match="apStar-r6-2MSHIFT.fits"):
        read_apstar([a, shifted])
