"""kielnet's catalogues open cleanly in the ecosystem: astropy ``Table.read`` (Parquet and
FITS) without any warning, pandas, and the column meanings (units, descriptions) travel."""

from __future__ import annotations

import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from kielnet.inference.streaming import concat_parquet
from kielnet.io import atomic_write_table
from kielnet.io.tables import read_catalogue


def _catalogue(n: int = 5, seed: int = 0) -> Table:
    rng = np.random.default_rng(seed)
    t = Table()
    t["id"] = np.array([f"star{i + seed * 100:04d}" for i in range(n)])
    t["source_id"] = np.arange(n, dtype=np.int64) + 4_000_000_000_000_000_000
    t["teff"] = rng.uniform(4000, 6000, n)
    t["teff"][1] = np.nan
    t["teff"].unit = u.K
    t["teff"].description = "teff: mean of 2 ensemble members"
    t["fe_h"] = rng.uniform(-1, 0.3, n)
    t["fe_h"].unit = u.dex
    t["fe_h"].description = "fe_h: mean of 2 ensemble members"
    t["flag"] = np.zeros(n, dtype=np.int64)
    t["flag"][1] = 1
    t["status"] = np.where(t["flag"] == 0, "ok", "bad_spectrum" + "x" * seed)
    t.meta.update({"KIELNET": "0.1.0", "MODEL": "tiny", "NMEMBERS": 2, "comments": ["flag bits: bit 0: bad"]})
    return t


@pytest.mark.parametrize("suffix", [".parquet", ".fits"])
def test_table_read_without_warnings(tmp_path, suffix):
    cat = _catalogue()
    path = atomic_write_table(cat, tmp_path / f"cat{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = Table.read(path)
    assert back.colnames == cat.colnames
    assert list(back["id"]) == list(cat["id"])
    assert list(back["status"]) == list(cat["status"])
    assert back["teff"].unit == u.K
    assert np.isnan(np.ma.filled(back["teff"].astype(float), np.nan)[1])  # FITS: NaN read as masked
    np.testing.assert_allclose(np.asarray(back["fe_h"]), np.asarray(cat["fe_h"]))
    assert back["fe_h"].description == "fe_h: mean of 2 ensemble members"
    if suffix == ".parquet":
        assert back["fe_h"].unit == u.dex
        assert back.meta["MODEL"] == "tiny"
    else:  # dex is not a FITS unit: no TUNIT, stated in TCOMM
        hdr = fits.getheader(path, 1)
        j = cat.colnames.index("fe_h") + 1
        assert f"TUNIT{j}" not in hdr
        assert hdr[f"TCOMM{j}"].startswith("[dex] fe_h: mean")
        assert hdr[f"TUNIT{cat.colnames.index('teff') + 1}"] == "K"
    # kielnet's own reader restores dex from the file
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = read_catalogue(path)
    assert ours["fe_h"].unit == u.dex and ours["teff"].unit == u.K
    assert not any(k.startswith("TCOMM") for k in ours.meta)


def test_pandas_reads_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    cat = _catalogue()
    path = atomic_write_table(cat, tmp_path / "cat.parquet")
    df = pd.read_parquet(path)
    assert list(df.columns) == cat.colnames
    assert df["source_id"].dtype == np.int64 and int(df["source_id"][0]) == int(cat["source_id"][0])


def test_concatenated_parquet_reads_with_table_read(tmp_path):
    """The streamed catalogue (parts concatenated) carries astropy's header with the longest
    text of all parts, so astropy neither warns nor truncates."""
    a = atomic_write_table(_catalogue(4, seed=0), tmp_path / "a.parquet")
    b = atomic_write_table(_catalogue(3, seed=3), tmp_path / "b.parquet")  # longer status text
    out = tmp_path / "all.parquet"
    assert concat_parquet([a, b], out) == 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = Table.read(out)
    assert len(back) == 7
    assert back["status"][5] == "bad_spectrumxxx"
    assert back["fe_h"].unit == u.dex
