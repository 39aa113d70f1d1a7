"""Bad input never crashes inside torch and never loses a row: either a clear
InputError naming file / column / star, or a flagged catalogue row."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from kielnet.errors import InputError
from kielnet.inference.predict import predict
from kielnet.io import read_stars
from kielnet.quality.flags import FLAG_BITS

PHOT = ("g", "bp", "rp", "j", "h", "k")
BAD = 1 << FLAG_BITS["bad_spectrum"]
INTERP = 1 << FLAG_BITS["interpolated_pixels"]
MISSING = 1 << FLAG_BITS["missing_input"]


@pytest.fixture(scope="module")
def stars(tiny_holdout):
    """Six held-out stars with complete photometry."""
    t = tiny_holdout.test
    ok = np.all([np.isfinite(t.scalars[c]) for c in PHOT], axis=0)
    return t.take(np.flatnonzero(ok)[:6])


def _columns(st):
    """Plain column dict (id, flux 2-D, photometry) of a star table."""
    cols = {"id": st.ids.copy(), "flux": st.flux.astype(np.float64).copy()}
    cols.update({c: st.scalars[c].copy() for c in PHOT})
    return cols


def _write(cols, path):
    """Write columns as FITS / Parquet (array column) or CSV (flux_0..flux_N columns)."""
    suffix = path.suffix
    if suffix == ".csv":
        flat = {k: v for k, v in cols.items() if k != "flux"}
        for i in range(cols["flux"].shape[1]):
            flat[f"flux_{i}"] = cols["flux"][:, i]
        Table(flat).write(path, format="ascii.csv")
    elif suffix == ".parquet":
        arrays = {k: pa.array(v.tolist()) for k, v in cols.items() if k != "flux"}
        arrays["flux"] = pa.array([list(r) for r in cols["flux"]], pa.list_(pa.float64()))
        pq.write_table(pa.table(arrays), path)
    else:
        Table(cols).write(path)
    return path


def test_wrong_spectrum_length_names_flux_and_the_file(tiny_bundle, stars, tmp_path):
    cols = _columns(stars)
    cols["flux"] = cols["flux"][:, :300]
    path = _write(cols, tmp_path / "short.fits")
    with pytest.raises(InputError) as info:
        predict(tiny_bundle, read_stars(path))
    assert info.value.field == "flux"
    msg = str(info.value)
    assert str(path) in msg and "300" in msg and "343" in msg


@pytest.mark.parametrize("suffix", [".fits", ".parquet", ".csv"])
def test_bad_rows_are_flagged_and_kept(tiny_bundle, stars, tmp_path, suffix):
    cols = _columns(stars)
    cols["flux"][1, [10, 11, 200]] = np.nan            # a few bad pixels: interpolated
    cols["flux"][2, 5] = np.inf
    cols["flux"][3, :] = np.nan                        # nothing left: bad spectrum
    cols["flux"][4, :100] = np.inf                     # > 10 % bad: bad spectrum
    cols["g"][5] = np.nan                              # missing photometry: imputed
    path = _write(cols, tmp_path / f"mixed{suffix}")
    table = read_stars(path)
    cat = predict(tiny_bundle, table)

    assert len(cat) == 6 and cat["id"].tolist() == stars.ids.tolist()
    flag = np.asarray(cat["flag"])
    status = cat["status"].tolist()
    teff = np.asarray(cat["teff"], float)
    n_bad = np.asarray(cat["n_bad_pixels"]).tolist()

    assert flag[0] & (BAD | INTERP | MISSING) == 0
    for i, n in [(1, 3), (2, 1)]:
        assert flag[i] & INTERP and not flag[i] & BAD
        assert "interpolated_pixels" in status[i]
        assert n_bad[i] == n
    for i, n in [(3, 343), (4, 100)]:
        # only bad_spectrum: nothing was interpolated and no (NaN) label is "outside training"
        assert status[i] == "bad_spectrum" and flag[i] == BAD
        assert n_bad[i] == n
        for name in ("teff", "logg", "fe_h", "alpha_m"):
            for col in (name, f"e_{name}", f"sigma_{name}"):
                assert np.isnan(float(cat[col][i]))
    assert flag[5] & MISSING and "missing_input" in status[5]
    feats = [f.name for f in tiny_bundle.config.features if "g" in f.columns]
    assert cat["missing_inputs"][5] == ",".join(feats)
    # every usable star gets finite labels
    good = [0, 1, 2, 5]
    assert np.isfinite(teff[good]).all() and np.isfinite(np.asarray(cat["sigma_logg"], float)[good]).all()
    # a few interpolated pixels hardly move the labels of a star
    clean = predict(tiny_bundle, stars)
    assert abs(teff[1] - float(clean["teff"][1])) < 3 * float(clean["sigma_teff"][1])


def test_missing_column_is_named_when_no_input_group_covers_it(tiny_bundle, stars, tmp_path):
    cols = _columns(stars)
    del cols["bp"]
    path = _write(cols, tmp_path / "no_bp.parquet")
    uncovered = copy.copy(tiny_bundle)
    uncovered.sigma_model = dataclasses.replace(tiny_bundle.sigma_model, rule="withhold")
    with pytest.raises(InputError) as info:
        predict(uncovered, read_stars(path))
    assert info.value.field == "bp"
    assert str(path) in str(info.value) and "'bp'" in str(info.value)


def test_a_column_absent_from_the_file_is_missing_for_every_star_when_a_group_covers_it(tiny_bundle, stars,
                                                                                         tmp_path):
    cols = _columns(stars)
    del cols["bp"]
    path = _write(cols, tmp_path / "no_bp.parquet")
    with pytest.warns(UserWarning, match=r"no_bp.parquet: input column\(s\) bp absent from the file.*'gaia_bprp'"):
        cat = predict(tiny_bundle, read_stars(path))
    with_bp = predict(tiny_bundle, stars)
    flags = np.asarray(cat["flag"])
    assert len(cat) == len(stars) and ((flags >> FLAG_BITS["missing_input"]) & 1).all()
    # exactly what the same stars get with BP set missing star by star
    nan_bp = stars.take(np.arange(len(stars)))
    nan_bp.scalars = {**stars.scalars, "bp": np.full(len(stars), np.nan)}
    ref = predict(tiny_bundle, nan_bp)
    np.testing.assert_array_equal(np.asarray(cat["sigma_teff"]), np.asarray(ref["sigma_teff"]))
    assert not np.array_equal(np.asarray(cat["sigma_teff"]), np.asarray(with_bp["sigma_teff"]))


def test_duplicate_ids_are_marked_and_counted(tiny_bundle, stars):
    ids = np.asarray(stars.ids).copy()
    ids[1] = ids[0]
    ids[3] = ids[0]
    dup = stars.take(np.arange(len(stars)))
    dup.ids = ids
    with pytest.warns(UserWarning, match="3 stars share 1 ids"):
        cat = predict(tiny_bundle, dup)
    assert len(cat) == len(stars)
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(cat["duplicate_id"])), [0, 1, 3])


def test_table_without_spectra(tiny_bundle, stars, tmp_path):
    cols = _columns(stars)
    del cols["flux"]
    path = _write(cols, tmp_path / "phot_only.fits")
    with pytest.raises(InputError) as info:
        predict(tiny_bundle, read_stars(path))
    assert info.value.field == "flux" and str(path) in str(info.value)


@pytest.mark.parametrize("name, content", [("garbage.fits", b"\x13\x37" * 2000), ("empty.fits", b""),
                                           ("empty.parquet", b"")])
def test_unreadable_or_empty_file_names_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_stars(path)
    assert str(path) in str(info.value)


def test_file_with_no_rows(tiny_bundle, stars, tmp_path):
    cols = {k: v[:0] for k, v in _columns(stars).items()}
    path = _write(cols, tmp_path / "no_rows.fits")
    with pytest.raises(InputError, match="no rows") as info:
        read_stars(path)
    assert str(path) in str(info.value)


def test_every_bad_star_alone_still_gives_one_row(tiny_bundle, stars):
    one = stars.take([0])
    one.flux[:] = np.nan
    cat = predict(tiny_bundle, one)
    assert len(cat) == 1 and cat["status"][0] == "bad_spectrum"
    assert np.isnan(float(cat["teff"][0]))


def test_bad_stars_in_memory_with_a_synthetic_bundle(synthetic_bundle, make_table):
    """The same guarantees without the real data: flagged rows, never a lost row."""
    t = make_table(n=6, n_pix=48, seed=31)
    t.flux[1, [3, 4]] = np.nan
    t.flux[2, :] = np.inf
    t.scalars["j"][3] = np.nan
    cat = predict(synthetic_bundle, t)
    assert cat["id"].tolist() == t.ids.tolist()
    flag = np.asarray(cat["flag"])
    assert flag[1] & INTERP and not flag[1] & BAD and cat["n_bad_pixels"][1] == 2
    assert flag[2] == BAD and np.isnan(float(cat["teff"][2])) and np.isnan(float(cat["sigma_teff"][2]))
    assert flag[3] & MISSING and cat["missing_inputs"][3] == "j_k"
    assert np.isfinite(np.asarray(cat["teff"], float)[[0, 1, 3, 4, 5]]).all()
    with pytest.raises(InputError) as info:
        predict(synthetic_bundle, make_table(n=2, n_pix=47, seed=32))
    assert info.value.field == "flux" and "48" in str(info.value)
    no_j = make_table(n=2, n_pix=48, seed=33)
    del no_j.scalars["j"]
    with pytest.warns(UserWarning, match="input column\\(s\\) j absent"):   # the σ model covers it: all missing
        cat = predict(synthetic_bundle, no_j)
    assert (np.asarray(cat["flag"]) & MISSING).all()
    uncovered = copy.copy(synthetic_bundle)
    uncovered.sigma_model = None
    with pytest.raises(InputError) as info:
        predict(uncovered, no_j)
    assert info.value.field == "j"
