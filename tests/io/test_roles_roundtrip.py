"""Column roles (kielnet_roles metadata) survive write_table -> read_stars, and
metadata tables join onto spectra by star id (StarTable.join_scalars)."""

from __future__ import annotations

import json

import astropy.units as u
import numpy as np
import pytest

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.io import read_stars, write_table
from kielnet.io.tables import startable_to_table, table_to_startable


def _table(n: int = 6, n_pix: int = 25) -> StarTable:
    rng = np.random.default_rng(8)
    return StarTable(
        ids=np.array([f"2M{i:08d}+0000000" for i in range(n)]),
        flux=rng.uniform(0.5, 1.5, (n, n_pix)), flux_err=rng.uniform(0.01, 0.02, (n, n_pix)),
        wavelength=np.linspace(1510.0, 1690.0, n_pix) * u.nm,
        scalars={"g": rng.uniform(9, 14, n), "parallax": np.r_[np.nan, rng.uniform(0.5, 5, n - 1)]},
        labels={"teff": rng.uniform(4200, 7000, n), "logg": rng.uniform(4, 5, n),
                "fe_h": np.r_[rng.uniform(-0.8, 0.4, n - 1), np.nan],
                "mg_fe": rng.uniform(-0.1, 0.4, n), "vmacro": rng.uniform(1, 20, n)},
        label_errs={"teff": np.full(n, 50.0), "mg_fe": np.full(n, 0.03)},
        extra={"source_id": np.arange(n, dtype=np.int64) + 7_000_000_000_000,
               "snr": rng.uniform(20, 100, n),          # numeric, but not an input
               "n_visits": np.arange(n, dtype=np.int64),
               "file": np.array([f"apStar-{i}.fits" for i in range(n)])},
        meta={"source": "<roles test>"})


@pytest.mark.parametrize("suffix", [".parquet", ".fits"])
def test_roles_survive_the_round_trip(tmp_path, suffix):
    st = _table()
    back = read_stars(write_table(st, tmp_path / f"stars{suffix}"))
    assert sorted(back.labels) == ["fe_h", "logg", "mg_fe", "teff", "vmacro"]
    assert sorted(back.scalars) == ["g", "parallax"]          # snr / n_visits stay extra
    assert sorted(back.extra) == ["file", "n_visits", "snr", "source_id"]
    assert sorted(back.label_errs) == ["mg_fe", "teff"]
    np.testing.assert_array_equal(back.ids, st.ids)
    for name in st.labels:
        np.testing.assert_allclose(back.labels[name], st.labels[name], rtol=1e-12, equal_nan=True)
    for name in st.scalars:
        np.testing.assert_allclose(back.scalars[name], st.scalars[name], rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(back.label_errs["mg_fe"], 0.03)
    np.testing.assert_array_equal(back.extra["source_id"], st.extra["source_id"])
    np.testing.assert_array_equal(back.extra["n_visits"], st.extra["n_visits"])
    np.testing.assert_allclose(back.extra["snr"], st.extra["snr"], rtol=1e-12)
    files = [x.decode() if isinstance(x, bytes) else str(x) for x in back.extra["file"]]
    assert files == list(st.extra["file"])
    np.testing.assert_allclose(back.flux, st.flux, rtol=1e-6)
    np.testing.assert_allclose(back.flux_err, st.flux_err, rtol=1e-6)
    np.testing.assert_allclose(back.wavelength.to_value(u.nm), st.wavelength.to_value(u.nm))


@pytest.mark.parametrize("suffix", [
    ".parquet",
    ".fits",
])
def test_string_extra_columns_come_back_as_str(tmp_path, suffix):
    back = read_stars(write_table(_table(), tmp_path / f"s{suffix}"))
    assert back.extra["file"].dtype.kind == "U"
    assert back.extra["file"][0] == "apStar-0.fits"


@pytest.mark.parametrize("suffix", [".parquet", ".fits"])
def test_second_round_trip_is_stable(tmp_path, suffix):
    once = read_stars(write_table(_table(), tmp_path / f"a{suffix}"))
    twice = read_stars(write_table(once, tmp_path / f"b{suffix}"))
    assert (sorted(twice.labels), sorted(twice.scalars), sorted(twice.extra)) == \
        (sorted(once.labels), sorted(once.scalars), sorted(once.extra))


def test_without_roles_the_conventions_apply():
    """A table not written by kielnet: only known label names are labels, every other
    numeric column is a scalar -- which is why the roles metadata is needed."""
    tab = startable_to_table(_table())
    assert set(json.loads(tab.meta["kielnet_roles"])) >= {"mg_fe", "vmacro", "snr", "g"}
    del tab.meta["kielnet_roles"]
    st = table_to_startable(tab)
    assert sorted(st.labels) == ["fe_h", "logg", "teff"]
    assert {"mg_fe", "vmacro", "snr", "n_visits"} <= set(st.scalars)


def test_roles_ignore_columns_that_were_dropped(tmp_path):
    tab = startable_to_table(_table())
    tab.remove_columns(["vmacro", "snr"])
    path = tmp_path / "pruned.parquet"
    from kielnet.io import atomic_write_table

    atomic_write_table(tab, path)
    back = read_stars(path)
    assert "vmacro" not in back.labels and "snr" not in back.extra
    assert "mg_fe" in back.labels


def test_roles_are_not_used_with_an_explicit_column_map():
    from kielnet.io.tables import ColumnMap

    tab = startable_to_table(_table())
    st = table_to_startable(tab, ColumnMap(labels={"teff": "teff"}, scalars={"g": "g"}))
    assert sorted(st.labels) == ["teff"] and sorted(st.scalars) == ["g"]


# ------------------------------------------------------------------ join_scalars
def _spectra(ids):
    n = len(ids)
    return StarTable(ids=np.array(ids), flux=np.ones((n, 5)), flux_err=np.full((n, 5), 0.1),
                     scalars={"j": np.arange(n, dtype=float) + 10.0},
                     extra={"file": np.array([f"f{i}" for i in range(n)])}, meta={"source": "spectra.fits"})


def _meta(ids, **cols):
    return StarTable(ids=np.array(ids), scalars={k: np.asarray(v, float) for k, v in cols.items()},
                     meta={"source": "meta.parquet"})


def test_join_scalars_matches_by_id_and_fills_nan():
    spec = _spectra(["a", "b", "c", "d"])
    meta = _meta(["d", "x", "b", "a"], parallax=[4.0, 9.0, 2.0, 1.0], g=[14.0, 9.0, 12.0, 11.0])
    out = spec.join_scalars(meta)
    np.testing.assert_array_equal(out.scalars["parallax"], [1.0, 2.0, np.nan, 4.0])
    np.testing.assert_array_equal(out.scalars["g"], [11.0, 12.0, np.nan, 14.0])
    np.testing.assert_array_equal(out.scalars["j"], spec.scalars["j"])      # kept
    np.testing.assert_array_equal(out.ids, spec.ids)                          # order kept
    np.testing.assert_array_equal(out.flux, spec.flux)
    np.testing.assert_array_equal(out.extra["file"], spec.extra["file"])
    assert out.meta["metadata_source"] == "meta.parquet"
    assert out.missing_report() == {"scalar:parallax": 1, "scalar:g": 1}
    assert "parallax" not in spec.scalars  # the input table is not modified


def test_join_scalars_selected_columns_and_repeated_spectra():
    spec = _spectra(["a", "b", "a"])
    meta = _meta(["a", "b"], parallax=[1.0, 2.0], g=[11.0, 12.0])
    out = spec.join_scalars(meta, columns=["g"])
    assert "parallax" not in out.scalars
    np.testing.assert_array_equal(out.scalars["g"], [11.0, 12.0, 11.0])
    with pytest.raises(InputError) as exc:
        spec.join_scalars(meta, columns=["bp"])
    assert exc.value.field == "bp"


def test_join_scalars_rejects_duplicate_metadata_ids():
    spec = _spectra(["a", "b"])
    meta = _meta(["a", "b", "a"], parallax=[1.0, 2.0, 3.0])
    with pytest.raises(InputError) as exc:
        spec.join_scalars(meta)
    assert exc.value.field == "id" and "meta.parquet" in str(exc.value) and "a" in str(exc.value)


def test_join_scalars_ids_are_compared_after_stripping():
    spec = _spectra(["2M1 ", " 2M2"])
    meta = _meta(["2M2", "2M1"], parallax=[2.0, 1.0])
    np.testing.assert_array_equal(spec.join_scalars(meta).scalars["parallax"], [1.0, 2.0])


def test_join_scalars_with_a_metadata_file(tmp_path):
    meta = _meta(["c", "a"], parallax=[3.0, 1.0], bp=[13.0, 11.0])
    path = write_table(meta, tmp_path / "meta.parquet")
    back = read_stars(path)
    assert sorted(back.scalars) == ["bp", "parallax"] and back.flux is None
    out = _spectra(["a", "b", "c"]).join_scalars(back)
    np.testing.assert_array_equal(out.scalars["bp"], [11.0, np.nan, 13.0])
    assert out.meta["metadata_source"] == str(path)


def test_join_scalars_with_an_empty_metadata_table():
    spec = _spectra(["a", "b"])
    empty = _meta([], parallax=[])
    out = spec.join_scalars(empty)
    assert np.isnan(out.scalars["parallax"]).all()
