"""The Gaia-RVS CNN catalogue format (Guiglion et al. 2024, Table 2)."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from kielnet.errors import InputError
from kielnet.inference.rvs_catalogue import RVS_COLUMNS, to_rvs_catalogue, write_rvs_catalogue
from kielnet.io.tables import read_catalogue
from kielnet.quality.boundary import describe_boundary_flag

TABLE2 = ["source_id", "teff", "eteff", "sigma_teff", "logg", "elogg", "sigma_logg", "mh", "emh", "sigma_mh",
          "feh", "efeh", "sigma_feh", "alpham", "ealpham", "sigma_alpham", "flag_boundary"]
LOGG_UNIT = u.dex(u.cm / u.s ** 2)
UNITS = [None, u.K, u.K, u.K, LOGG_UNIT, LOGG_UNIT, LOGG_UNIT] + [u.dex] * 9 + [None]
KIEL = {"teff": u.K, "logg": u.dex, "m_h": u.dex, "fe_h": u.dex, "alpha_m": u.dex}
# Table 2 name -> kielnet column
SOURCE = {"teff": "teff", "eteff": "e_teff", "sigma_teff": "sigma_teff", "logg": "logg", "elogg": "e_logg",
          "sigma_logg": "sigma_logg", "mh": "m_h", "emh": "e_m_h", "sigma_mh": "sigma_m_h", "feh": "fe_h",
          "efeh": "e_fe_h", "sigma_feh": "sigma_fe_h", "alpham": "alpha_m", "ealpham": "e_alpha_m",
          "sigma_alpham": "sigma_alpha_m"}
IDS = np.array([4295806720, 6917528997577384320, 5933051914143228928], dtype=np.int64)
FLAGS = np.array(["00000000", "00000001", "10010000"])


def _kielnet_catalogue() -> Table:
    """A catalogue as kielnet.inference.predict writes it; every column holds distinct values."""
    cat = Table()
    cat["id"] = ["a", "b", "c"]
    cat["source_id"] = IDS
    for j, (lab, unit) in enumerate(KIEL.items()):
        for k, prefix in enumerate(("", "e_", "sigma_")):
            cat[f"{prefix}{lab}"] = np.array([100.0 * j + 10.0 * k + 1, 100.0 * j + 10.0 * k + 2, np.nan])
            cat[f"{prefix}{lab}"].unit = unit
    cat["flag"] = np.array([0, 8, 256])
    cat["status"] = ["ok", "input_outside_training", "outside_training_teff"]
    cat["n_bad_pixels"] = [0, 0, 3]
    cat["missing_inputs"] = ["", "", ""]
    cat.meta.update({"KIELNET": "0.1.0", "MODEL": "gaia_rvs_hybrid", "NMEMBERS": 28,
                     "comments": ["flag bits: bit 0: bad_spectrum"]})
    return cat


def test_schema_exact():
    out = to_rvs_catalogue(_kielnet_catalogue(), IDS, FLAGS)
    assert out.colnames == TABLE2
    assert list(RVS_COLUMNS) == TABLE2
    for name, unit in zip(TABLE2, UNITS):
        assert out[name].unit == unit, name
    assert out["logg"].unit.physical_unit == u.cm / u.s ** 2
    for name in TABLE2[1:-1]:
        assert out[name].dtype.kind == "f"
    assert out["source_id"].dtype.kind == "U" and out["flag_boundary"].dtype == np.dtype("<U8")


def test_descriptions_follow_table2():
    out = to_rvs_catalogue(_kielnet_catalogue(), IDS, FLAGS)
    assert out["source_id"].description == "Gaia Source ID"
    assert out["teff"].description == "Effective temperature"
    assert out["eteff"].description == "Model-to-model dispersion of Teff"
    assert out["sigma_teff"].description == "Overall dispersion of Teff"
    assert out["logg"].description == "Surface gravity"
    assert out["elogg"].description == "Model-to-model dispersion of log(g)"
    assert out["mh"].description == "Overall metallicity"
    assert out["sigma_mh"].description == "Overall dispersion of [M/H]"
    assert out["feh"].description == "[Fe/H] ratio"
    assert out["alpham"].description == "[alpha/M] ratio"
    assert out["ealpham"].description == "Model-to-model dispersion of [alpha/M]"
    assert out["flag_boundary"].description == "Boundary flag composed of 8 digits"
    assert all(out[c].description.isascii() for c in TABLE2)


def test_values_map_to_the_right_columns():
    cat = _kielnet_catalogue()
    out = to_rvs_catalogue(cat, IDS, FLAGS)
    for name, src in SOURCE.items():
        np.testing.assert_array_equal(np.asarray(out[name]), np.asarray(cat[src]), err_msg=name)
    assert out["source_id"].tolist() == ["4295806720", "6917528997577384320", "5933051914143228928"]
    assert out["flag_boundary"].tolist() == FLAGS.tolist()


def test_header_and_provenance():
    out = to_rvs_catalogue(_kielnet_catalogue(), IDS, FLAGS)
    assert out.meta["comments"] == describe_boundary_flag().splitlines()
    assert out.meta["MODEL"] == "gaia_rvs_hybrid" and out.meta["NMEMBERS"] == 28
    assert not any("bad_spectrum" in c for c in out.meta["comments"])  # kielnet's own flag bits dropped


def test_defaults_from_catalogue_columns():
    cat = _kielnet_catalogue()
    cat["flag_boundary"] = FLAGS
    out = to_rvs_catalogue(cat)
    assert out["source_id"].tolist()[1] == "6917528997577384320"
    assert out["flag_boundary"].tolist() == FLAGS.tolist()
    del cat["source_id"]
    with pytest.raises(InputError) as err:
        to_rvs_catalogue(cat)
    assert err.value.field == "source_id"


@pytest.mark.parametrize("ids, row", [
    (np.array([1, 2, 1]), 0),                                  # duplicated source id
    (np.ma.masked_array([1, 2, 3], mask=[False, True, False]), 1),  # missing
    (np.array(["1", " ", "3"]), 1),                            # blank
])
def test_bad_source_ids(ids, row):
    with pytest.raises(InputError) as err:
        to_rvs_catalogue(_kielnet_catalogue(), ids, FLAGS)
    assert err.value.field == "source_id" and err.value.row == row


def test_float_and_wrong_length_source_ids_refused():
    with pytest.raises(InputError) as err:
        to_rvs_catalogue(_kielnet_catalogue(), IDS.astype(float), FLAGS)
    assert "floating point" in str(err.value)
    with pytest.raises(InputError):
        to_rvs_catalogue(_kielnet_catalogue(), IDS[:2], FLAGS)


def test_bad_flags_refused():
    with pytest.raises(InputError) as err:
        to_rvs_catalogue(_kielnet_catalogue(), IDS, np.array(["00000000", "1", "00000000"]))
    assert err.value.field == "flag_boundary" and err.value.row == 1
    with pytest.raises(InputError) as err:
        to_rvs_catalogue(_kielnet_catalogue(), IDS, np.array([0, 1, 10010000]))
    assert err.value.field == "flag_boundary"
    with pytest.raises(InputError):
        to_rvs_catalogue(_kielnet_catalogue(), IDS, FLAGS[:2])


def test_missing_label_column_named():
    cat = _kielnet_catalogue()
    del cat["e_m_h"]
    with pytest.raises(InputError) as err:
        to_rvs_catalogue(cat, IDS, FLAGS)
    assert err.value.field == "e_m_h"


def test_wrong_unit_refused():
    cat = _kielnet_catalogue()
    cat["teff"].unit = u.dex
    with pytest.raises(InputError) as err:
        to_rvs_catalogue(cat, IDS, FLAGS)
    assert err.value.field == "teff"


@pytest.mark.parametrize("name", ["cat.fits", "cat.parquet"])
def test_round_trip(tmp_path, name):
    out = to_rvs_catalogue(_kielnet_catalogue(), IDS, FLAGS)
    path = write_rvs_catalogue(out, tmp_path / name)
    assert path == tmp_path / name
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left
    back = read_catalogue(path)
    assert back.colnames == TABLE2
    for col, unit in zip(TABLE2, UNITS):
        assert back[col].unit == unit, col
    for col in TABLE2[1:-1]:
        np.testing.assert_array_equal(np.asarray(back[col], dtype=float), np.asarray(out[col]), err_msg=col)
    assert np.asarray(back["source_id"]).astype(str).tolist() == out["source_id"].tolist()
    assert np.asarray(back["flag_boundary"]).astype(str).tolist() == ["00000000", "00000001", "10010000"]
    assert back.meta["comments"] == describe_boundary_flag().splitlines()
    assert back.meta["MODEL"] == "gaia_rvs_hybrid"


def test_fits_header_units_and_descriptions(tmp_path):
    path = write_rvs_catalogue(to_rvs_catalogue(_kielnet_catalogue(), IDS, FLAGS), tmp_path / "cat.fits")
    hdr = fits.getheader(path, 1)
    names = [hdr[f"TTYPE{i}"] for i in range(1, 18)]
    assert names == TABLE2 and "TTYPE18" not in hdr
    assert hdr["TUNIT2"] == "K"
    assert hdr["TUNIT5"] == "dex(cm s-2)"
    # 'dex' is not a FITS unit: the column carries none, and its TCOMMn states it (Table.read stays quiet)
    assert "TUNIT8" not in hdr and hdr["TCOMM8"].startswith("[dex]"), repr(hdr)
    assert hdr.comments["TTYPE3"] == "Model-to-model dispersion of Teff"


def test_write_refuses_other_schemas(tmp_path):
    out = to_rvs_catalogue(_kielnet_catalogue(), IDS, FLAGS)
    with pytest.raises(InputError):
        write_rvs_catalogue(_kielnet_catalogue(), tmp_path / "x.fits")
    out.rename_column("source_id", "sourceid")
    with pytest.raises(InputError):
        write_rvs_catalogue(out, tmp_path / "x.parquet")
    assert not list(tmp_path.iterdir())
