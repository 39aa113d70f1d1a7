"""FITS / Parquet / CSV / ECSV tables <-> StarTable; atomic writes; clear input errors."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from kielnet.errors import InputError
from kielnet.io import ColumnMap, atomic_write_table, read_catalogue, read_stars, read_table, write_table
from kielnet.io.tables import startable_to_table, table_to_startable

N_PIX = 12

pytestmark = pytest.mark.filterwarnings("ignore:Keyword name .wavelength_nm.:astropy.io.fits.verify.VerifyWarning")


@pytest.fixture
def astro_table():
    rng = np.random.default_rng(0)
    t = Table()
    t["id"] = ["2M0001 ", "2M0002", "2M0003"]
    t["source_id"] = np.array([11, 12, 13], dtype=np.int64)
    t["flux"] = rng.uniform(0.5, 1.5, (3, N_PIX)).astype(np.float32)
    t["flux_error"] = np.full((3, N_PIX), 0.01, dtype=np.float32)
    t["g"] = [12.0, 13.0, 14.0]
    t["bp"] = np.ma.masked_array([12.5, 13.5, 14.5], mask=[False, True, False])
    t["teff"] = [5000.0, 6000.0, np.nan]
    t["teff_err"] = [50.0, 60.0, np.nan]
    t["logg"] = [4.0, 2.5, 1.0]
    t["name"] = ["a", "b", "c"]  # non-numeric: not a scalar input
    t.meta["wavelength_nm"] = list(np.linspace(400.0, 900.0, N_PIX))
    return t


def _check_star_table(st, t, source):
    assert st.source == source
    assert st.ids.tolist() == ["2M0001", "2M0002", "2M0003"]
    np.testing.assert_allclose(st.flux, np.asarray(t["flux"]), rtol=1e-6)
    np.testing.assert_allclose(st.flux_err, 0.01, rtol=1e-6)
    assert set(st.scalars) == {"g", "bp"}
    np.testing.assert_array_equal(st.scalars["g"], [12.0, 13.0, 14.0])
    assert np.isnan(st.scalars["bp"][1]) and st.scalars["bp"][2] == 14.5
    assert set(st.labels) == {"teff", "logg"}
    np.testing.assert_array_equal(st.labels["teff"][:2], [5000.0, 6000.0])
    assert np.isnan(st.labels["teff"][2])
    np.testing.assert_array_equal(st.label_errs["teff"][:2], [50.0, 60.0])
    assert st.extra["source_id"].tolist() == [11, 12, 13]
    assert st.wavelength.unit == u.nm
    np.testing.assert_allclose(st.wavelength.value, np.linspace(400.0, 900.0, N_PIX))
    assert st.missing_report() == {"scalar:bp": 1, "label:teff": 1}


@pytest.mark.parametrize("suffix", [".fits", ".ecsv"])
def test_read_astropy_formats(tmp_path, astro_table, suffix):
    path = tmp_path / f"stars{suffix}"
    astro_table.write(path)
    _check_star_table(read_table(path), astro_table, str(path))
    assert read_stars(path).ids.tolist() == ["2M0001", "2M0002", "2M0003"]


def test_read_parquet_written_by_pyarrow(tmp_path):
    rng = np.random.default_rng(1)
    flux = rng.uniform(0.5, 1.5, (4, N_PIX))
    tbl = pa.table({
        "source_id": pa.array([5, 6, 7, 8], pa.int64()),
        "flux": pa.array([list(f) for f in flux], pa.list_(pa.float32())),
        "g": pa.array([10.0, None, 11.0, 12.0]),
        "j": pa.array([9, 8, None, 7], pa.int32()),
        "fe_h": pa.array([0.1, -0.2, None, 0.0]),
    })
    path = tmp_path / "stars.parquet"
    pq.write_table(tbl, path)
    st = read_table(path)
    assert st.ids.tolist() == ["5", "6", "7", "8"]   # source_id serves as the id
    np.testing.assert_allclose(st.flux, flux, rtol=1e-6)
    assert np.isnan(st.scalars["g"][1]) and np.isnan(st.scalars["j"][2])
    assert st.scalars["j"][3] == 7.0
    assert np.isnan(st.labels["fe_h"][2])
    assert st.missing_report() == {"scalar:g": 1, "scalar:j": 1, "label:fe_h": 1}


def test_read_csv_with_flux_columns(tmp_path):
    rng = np.random.default_rng(2)
    flux = rng.uniform(0.5, 1.5, (3, N_PIX))
    # columns deliberately out of numeric order: flux_10 must follow flux_9
    order = [0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    header = ["id", "g", "teff"] + [f"flux_{i}" for i in order] + [f"flux_err_{i}" for i in order]
    rows = []
    for r in range(3):
        g = "" if r == 1 else "12.5"
        cells = [f"s{r}", g, "5000"] + [repr(float(flux[r, i])) for i in order] + ["0.02"] * N_PIX
        if r == 2:
            cells[3 + order.index(5)] = ""    # one missing pixel
        rows.append(",".join(cells))
    path = tmp_path / "stars.csv"
    path.write_text(",".join(header) + "\n" + "\n".join(rows) + "\n")
    st = read_table(path)
    assert st.ids.tolist() == ["s0", "s1", "s2"]
    assert st.n_pix == N_PIX
    expect = flux.copy()
    expect[2, 5] = np.nan
    np.testing.assert_allclose(st.flux, expect, rtol=1e-6)
    np.testing.assert_allclose(st.flux_err, 0.02)
    assert set(st.scalars) == {"g"}          # pixel columns are not scalar inputs
    assert np.isnan(st.scalars["g"][1])
    assert st.missing_report() == {"scalar:g": 1, "spectrum:nonfinite_pixels": 1}


def test_column_map(tmp_path, astro_table):
    t = astro_table.copy()
    t.rename_column("id", "my_star")
    t.rename_column("g", "phot_g")
    t.rename_column("teff", "TEFF_SPEC")
    path = tmp_path / "mapped.fits"
    t.write(path)
    cm = ColumnMap(id="my_star", scalars={"g": "phot_g"}, labels={"teff": "TEFF_SPEC"}, extra=["name"])
    st = read_table(path, cm)
    assert st.ids[0] == "2M0001"
    assert list(st.scalars) == ["g"] and st.scalars["g"][2] == 14.0
    assert list(st.labels) == ["teff"] and st.labels["teff"][1] == 6000.0
    assert [x.decode() if isinstance(x, bytes) else x for x in st.extra["name"].tolist()] == ["a", "b", "c"]
    for bad, field in [(ColumnMap(id="nope"), "nope"), (ColumnMap(scalars={"g": "G_MAG"}), "G_MAG"),
                       (ColumnMap(labels={"teff": "T"}), "T")]:
        with pytest.raises(InputError) as info:
            read_table(path, bad)
        assert info.value.field == field and str(path) in str(info.value)
    with pytest.raises(InputError, match="not numeric") as info:
        read_table(path, ColumnMap(id="my_star", scalars={"g": "name"}))
    assert info.value.field == "name"


def test_missing_id_column_is_named(tmp_path):
    t = Table({"g": [1.0, 2.0], "flux": np.ones((2, 4))})
    path = tmp_path / "noid.fits"
    t.write(path)
    with pytest.raises(InputError, match="no id column") as info:
        read_table(path)
    assert info.value.field == "id" and str(path) in str(info.value)


@pytest.mark.parametrize("name, content, needle", [
    ("garbage.fits", b"\x00\x01 this is not a FITS file " * 50, "cannot read"),
    ("garbage.parquet", b"PAR1 but not really" * 20, "cannot read"),
    ("garbage.csv", b"\xff\xfe\x00\x01binary\n" * 30, "cannot read"),
    ("empty.fits", b"", "empty"),
    ("empty.csv", b"", "empty"),
    ("stars.txt", b"id,g\na,1\n", "unknown table format"),
])
def test_unreadable_files_name_the_file(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=needle) as info:
        read_table(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)


def test_nonexistent_file(tmp_path):
    with pytest.raises(InputError, match="does not exist") as info:
        read_stars(tmp_path / "nope.fits")
    assert str(tmp_path / "nope.fits") in str(info.value)


@pytest.mark.parametrize("suffix", [".fits", ".csv", ".parquet"])
def test_file_with_no_rows(tmp_path, suffix):
    t = Table({"id": np.array([], dtype=str), "g": np.array([], dtype=float)})
    path = tmp_path / f"norows{suffix}"
    atomic_write_table(t, path)
    with pytest.raises(InputError, match="no rows") as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_all_stars_without_flux_is_an_error_but_one_bad_star_is_kept(tmp_path):
    flux = np.ones((3, N_PIX))
    flux[1] = np.nan
    path = tmp_path / "one_bad.fits"
    Table({"id": ["a", "b", "c"], "flux": flux}).write(path)
    st = read_table(path)
    assert len(st) == 3 and np.isnan(st.flux[1]).all()
    path2 = tmp_path / "all_bad.fits"
    Table({"id": ["a", "b"], "flux": np.full((2, N_PIX), np.nan)}).write(path2)
    with pytest.raises(InputError, match="finite flux") as info:
        read_table(path2)
    assert info.value.field == "flux" and str(path2) in str(info.value)


def test_ragged_parquet_list_column(tmp_path):
    path = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "flux": pa.array([[1.0, 2.0], [1.0]])}), path)
    with pytest.raises(InputError) as info:
        read_table(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".fits", ".parquet", ".ecsv"])
def test_write_table_round_trip(tmp_path, make_table, suffix):
    st = make_table(n=7, n_pix=10, seed=4)
    st.scalars["g"][2] = np.nan
    path = write_table(st, tmp_path / f"out{suffix}")
    back = read_table(path)
    np.testing.assert_array_equal(back.ids, st.ids)
    np.testing.assert_allclose(back.flux, st.flux, rtol=1e-6)
    np.testing.assert_allclose(back.flux_err, st.flux_err, rtol=1e-6)
    np.testing.assert_allclose(back.wavelength.to_value(u.nm), st.wavelength.to_value(u.nm))
    assert set(back.scalars) == set(st.scalars)
    for k in st.scalars:
        np.testing.assert_allclose(back.scalars[k], st.scalars[k], equal_nan=True)
    for k in st.labels:
        np.testing.assert_allclose(back.labels[k], st.labels[k])
        np.testing.assert_allclose(back.label_errs[k], st.label_errs[k])
    assert back.extra["source_id"].tolist() == st.extra["source_id"].tolist()


def test_startable_to_table_and_back_in_memory(make_table):
    st = make_table(n=5, n_pix=8, seed=3)
    back = table_to_startable(startable_to_table(st))
    np.testing.assert_array_equal(back.ids, st.ids)
    np.testing.assert_array_equal(back.flux, st.flux)
    assert back.source == "<memory>"


@pytest.fixture
def catalogue():
    cat = Table()
    cat["id"] = np.array(["a", "bb", "ccc"])
    cat["source_id"] = np.array([1, 2, 3], dtype=np.int64)
    cat["teff"] = np.array([5000.0, np.nan, 6000.0]) * u.K
    cat["e_teff"] = np.array([10.0, np.nan, 20.0]) * u.K
    cat["logg"] = np.array([4.0, np.nan, 1.0])
    cat["logg"].unit = u.dex
    cat["teff"].description = "teff: mean of 2 ensemble members"
    cat["flag"] = np.array([0, 1, 256], dtype=np.int64)
    cat["status"] = np.array(["ok", "bad_spectrum", "outside_training_teff"])
    cat["n_bad_pixels"] = np.array([0, 343, 0])
    cat.meta["MODEL"] = "xp_hybrid"
    return cat


@pytest.mark.parametrize("suffix", [".parquet", ".fits"])
def test_catalogue_round_trip_keeps_values_and_units(tmp_path, catalogue, suffix):
    path = atomic_write_table(catalogue, tmp_path / "deep" / f"cat{suffix}")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left
    back = read_catalogue(path)
    assert back.colnames == catalogue.colnames
    assert back["id"].tolist() == ["a", "bb", "ccc"]
    assert back["status"].tolist() == ["ok", "bad_spectrum", "outside_training_teff"]
    np.testing.assert_array_equal(np.asarray(back["flag"]), [0, 1, 256])
    np.testing.assert_array_equal(np.asarray(back["source_id"]), [1, 2, 3])
    np.testing.assert_allclose(np.asarray(back["teff"]), [5000.0, np.nan, 6000.0])
    assert back["teff"].unit == u.K
    assert back["e_teff"].unit == u.K
    assert back["logg"].unit == u.dex
    assert back.meta["MODEL"] == "xp_hybrid"


def test_parquet_catalogue_keeps_descriptions(tmp_path, catalogue):
    back = read_catalogue(atomic_write_table(catalogue, tmp_path / "cat.parquet"))
    assert back["teff"].description == "teff: mean of 2 ensemble members"


def test_atomic_write_replaces_existing_file(tmp_path, catalogue):
    path = tmp_path / "cat.parquet"
    atomic_write_table(catalogue, path)
    atomic_write_table(catalogue[:1], path)
    assert len(read_catalogue(path)) == 1
    with pytest.raises(InputError, match="unknown table format"):
        atomic_write_table(catalogue, tmp_path / "cat.xlsx")


def test_parquet_write_of_columns_read_from_fits(tmp_path, astro_table):
    """FITS columns are big-endian and may be masked; writing them to Parquet (as
    `kielnet predict` does for pass-through columns of a FITS input) must work."""
    from astropy.table import MaskedColumn

    astro_table["medflux"] = MaskedColumn([1e-17, 2e-17, 3e-17], mask=[False, True, False])
    fits_path = tmp_path / "in.fits"
    astro_table.write(fits_path)
    t = Table.read(fits_path)
    assert t["source_id"].dtype.byteorder == ">"
    path = atomic_write_table(t, tmp_path / "out.parquet")
    back = read_catalogue(path)
    np.testing.assert_array_equal(np.asarray(back["source_id"]), [11, 12, 13])
    np.testing.assert_allclose(np.asarray(back["flux"]), np.asarray(astro_table["flux"]), rtol=1e-6)
    med = back["medflux"]
    assert np.ma.is_masked(med[1]) or np.isnan(med[1])   # a null, not the FITS fill value
    assert float(med[2]) == pytest.approx(3e-17)
