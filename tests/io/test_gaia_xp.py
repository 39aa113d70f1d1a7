"""Gaia DR3 XP continuous reader (CSV "(…)" strings, ECSV/FITS/VOTable arrays), the
missing-band flag, and the GaiaXPy conversion to 343-px median-normalised spectra."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from kielnet.data.xp import correlation_matrix, xp_coefficients
from kielnet.errors import InputError
from kielnet.io.gaia_xp import read_xp_continuous, to_gaiaxpy_frame, xp_sampled_spectra
from kielnet.io.xp_library import XP_WAVELENGTH_NM

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
XP_DIR = DATA / "gaia_xp"
RAW = XP_DIR / "XP_CONTINUOUS_RAW.csv"
RAW_MISSING = XP_DIR / "XP_CONTINUOUS_RAW_with_missing_BP.csv"
SCO = XP_DIR / "18Sco-XP-spectra.csv"
REFERENCE = XP_DIR / "SampledMeanSpectrum.csv"
needs_data = pytest.mark.skipif(not RAW.is_file(), reason=f"real XP data {XP_DIR} is absent")
MISSING_BP_STAR = "5405570973190252288"


def raw_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def hand_parse(cell: str) -> np.ndarray:
    inner = cell.strip()
    assert inner.startswith("(") and inner.endswith(")")
    return np.array([float(tok) for tok in inner[1:-1].split(",")])


@pytest.fixture(scope="module")
def tables():
    if not RAW.is_file():
        pytest.skip(f"real XP data {XP_DIR} is absent")
    return {p.name: read_xp_continuous(p) for p in (RAW, RAW_MISSING, SCO)}


# ------------------------------------------------------------------ reading
@needs_data
def test_real_files_fields_and_hand_parsed_values(tables):
    for path in (RAW, RAW_MISSING, SCO):
        st = tables[path.name]
        rows = raw_rows(path)
        assert len(st) == len(rows) and st.flux is None
        assert list(st.ids) == [r["source_id"] for r in rows]
        assert st.extra["source_id"].dtype == np.int64
        bp, rp = xp_coefficients(st)
        assert bp.shape == rp.shape == (len(rows), 55)
        assert st.extra["bp_coefficient_errors"].shape == (len(rows), 55)
        assert st.extra["rp_coefficient_correlations"].shape == (len(rows), 1485)
        for i, r in enumerate(rows):
            for band, coef in (("bp", bp), ("rp", rp)):
                if r[f"{band}_coefficients"] == "":
                    continue
                np.testing.assert_array_equal(coef[i], hand_parse(r[f"{band}_coefficients"]))
                np.testing.assert_array_equal(st.extra[f"{band}_coefficient_errors"][i],
                                              hand_parse(r[f"{band}_coefficient_errors"]))
                np.testing.assert_array_equal(st.extra[f"{band}_coefficient_correlations"][i],
                                              hand_parse(r[f"{band}_coefficient_correlations"]))
    st = tables[RAW.name]
    # literal values from the file's first row
    assert st.scalars["bp_0"][0] == 56947.03696840172
    assert st.scalars["bp_54"][0] == -0.7771763940478618
    assert st.scalars["rp_0"][0] == 735186.2157096652
    assert st.extra["bp_standard_deviation"][0] == pytest.approx(1.1224667)
    assert st.extra["bp_n_relevant_bases"][0] == 53 and st.extra["rp_n_relevant_bases"][0] == 40
    assert st.extra["solution_id"][0] == 4545469030156206080
    assert not st.extra["missing_bp"].any() and not st.extra["missing_rp"].any()
    assert st.missing_report() == {}
    # the 18 Sco file uses "(a,b,…)" without spaces, has G but no standard deviations
    sco = tables[SCO.name]
    assert sco.scalars["bp_0"][0] == 9226249.48757417 and sco.scalars["g"][0] == pytest.approx(5.327651)
    assert np.isnan(sco.extra["bp_standard_deviation"]).all()
    assert "bp_standard_deviation" in sco.meta["absent_columns"]


@needs_data
def test_missing_bp_is_flagged(tables):
    st = tables[RAW_MISSING.name]
    flag = st.extra["missing_bp"]
    assert flag.dtype == bool and list(st.ids[flag]) == [MISSING_BP_STAR]
    assert not st.extra["missing_rp"].any()
    i = int(np.flatnonzero(flag)[0])
    bp, rp = xp_coefficients(st)
    assert np.isnan(bp[i]).all() and np.isfinite(rp[i]).all()
    assert np.isnan(st.extra["bp_coefficient_errors"][i]).all()
    assert np.isnan(st.extra["bp_standard_deviation"][i])
    assert st.extra["rp_n_relevant_bases"][i] == 47
    rep = st.missing_report()
    assert rep["scalar:bp_0"] == 1 and "scalar:rp_0" not in rep
    # the star present in both files reads identically
    ref = tables[RAW.name]
    j = list(st.ids).index(ref.ids[0])
    np.testing.assert_array_equal(bp[j], xp_coefficients(ref)[0][0])


@needs_data
@pytest.mark.filterwarnings("ignore::astropy.io.votable.exceptions.VOWarning")
@pytest.mark.parametrize("suffix,variable", [(".ecsv", False), (".fits", False), (".vot", False),
                                             (".ecsv", True), (".fits", True)])
def test_array_column_formats_round_trip(tmp_path, tables, suffix, variable):
    """Fixed-size array columns (NaN rows for the missing band) and variable-length
    ones (an empty array for the missing band, FITS 'P' columns / ECSV float64[null])."""
    st = tables[RAW_MISSING.name]
    bp, rp = xp_coefficients(st)

    def column(a: np.ndarray):
        if not variable:
            return a
        col = np.empty(len(a), dtype=object)
        for i in range(len(a)):
            col[i] = np.zeros(0) if np.isnan(a[i]).all() else a[i]
        return col

    tab = Table({"source_id": st.extra["source_id"], "solution_id": st.extra["solution_id"]})
    for band, coef in (("bp", bp), ("rp", rp)):
        tab[f"{band}_coefficients"] = column(coef)
        tab[f"{band}_coefficient_errors"] = column(st.extra[f"{band}_coefficient_errors"])
        tab[f"{band}_coefficient_correlations"] = column(
            st.extra[f"{band}_coefficient_correlations"])
        tab[f"{band}_standard_deviation"] = st.extra[f"{band}_standard_deviation"]
        tab[f"{band}_n_relevant_bases"] = st.extra[f"{band}_n_relevant_bases"]
    path = tmp_path / f"xp{suffix}"
    tab.write(path, format={".ecsv": "ascii.ecsv", ".fits": "fits", ".vot": "votable"}[suffix])
    back = read_xp_continuous(path)
    assert list(back.ids) == list(st.ids)
    np.testing.assert_array_equal(back.extra["missing_bp"], st.extra["missing_bp"])
    for a, b in zip(xp_coefficients(back), (bp, rp)):
        np.testing.assert_array_equal(a, b)
    for key in ("bp_coefficient_correlations", "rp_coefficient_errors", "bp_standard_deviation"):
        np.testing.assert_array_equal(back.extra[key], st.extra[key])


@needs_data
def test_full_correlation_matrix_cells_are_packed(tmp_path, tables):
    st = tables[RAW.name]
    bp, rp = xp_coefficients(st)
    tab = Table({"source_id": st.extra["source_id"], "bp_coefficients": bp, "rp_coefficients": rp})
    for band in ("bp", "rp"):
        tab[f"{band}_coefficient_errors"] = st.extra[f"{band}_coefficient_errors"]
        tab[f"{band}_coefficient_correlations"] = correlation_matrix(
            st.extra[f"{band}_coefficient_correlations"])
    tab.write(tmp_path / "full.fits")
    back = read_xp_continuous(tmp_path / "full.fits")
    np.testing.assert_array_equal(back.extra["bp_coefficient_correlations"],
                                  st.extra["bp_coefficient_correlations"])


# ------------------------------------------------------------------ bad input
def test_bad_input_names_the_file(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="empty") as exc:
        read_xp_continuous(empty)
    assert "empty.csv" in str(exc.value)
    garbage = tmp_path / "garbage.ecsv"
    garbage.write_text("# %ECSV 1.0\n# ---\n# garbage: [\nnot, a, table\n")
    with pytest.raises(InputError, match="garbage.ecsv"):
        read_xp_continuous(garbage)
    with pytest.raises(InputError, match="does not exist"):
        read_xp_continuous(tmp_path / "absent.csv")


def _kept_with_nan(st, i: int) -> None:
    """Star ``i`` has NaN coefficients, errors and correlations in both bands."""
    for band in ("bp", "rp"):
        assert np.isnan(xp_coefficients(st)[0 if band == "bp" else 1][i]).all()
        assert np.isnan(st.extra[f"{band}_coefficient_errors"][i]).all()
        assert np.isnan(st.extra[f"{band}_coefficient_correlations"][i]).all()
        assert np.isnan(st.extra[f"{band}_n_relevant_bases"][i])
        assert st.extra[f"missing_{band}"][i]


def _bad_star_warning(record) -> str:
    texts = [str(w.message) for w in record if "kept with NaN" in str(w.message)]
    assert len(texts) == 1, texts
    return texts[0]


@needs_data
def test_missing_column_and_malformed_cells(tmp_path, tables):
    tab = Table.read(RAW, format="ascii.csv")
    tab.remove_column("rp_coefficient_correlations")
    tab.write(tmp_path / "nocorr.csv", format="ascii.csv")
    with pytest.raises(InputError, match="rp_coefficient_correlations") as exc:
        read_xp_continuous(tmp_path / "nocorr.csv")
    assert "nocorr.csv" in str(exc.value)
    # a short or garbled coefficient string: that star is kept with NaN, the other intact
    ref = tables[RAW.name]
    rows = raw_rows(RAW)
    star = rows[1]["source_id"]
    short = rows[1]["bp_coefficients"].rsplit(",", 1)[0] + ")"  # 54 values
    bad = Table.read(RAW, format="ascii.csv")
    bad["bp_coefficients"] = bad["bp_coefficients"].astype(object)
    for name, cell, reason in [
            ("short.csv", short, "bp_coefficients: 54 values, expected 55"),
            ("text.csv", "(1.0, two, 3.0)",
             "bp_coefficients: cannot parse the cell: value 1 of the cell is 'two', not a number")]:
        bad["bp_coefficients"][1] = cell
        bad.write(tmp_path / name, format="ascii.csv", overwrite=True)
        with pytest.warns(UserWarning, match="kept with NaN") as record:
            st = read_xp_continuous(tmp_path / name)
        assert list(st.ids) == list(ref.ids) and len(st) == 2
        _kept_with_nan(st, 1)
        for a, b in zip(xp_coefficients(st), xp_coefficients(ref)):
            np.testing.assert_array_equal(a[0], b[0])  # the other star is intact
        assert not st.extra["missing_bp"][0] and not st.extra["missing_rp"][0]
        assert st.meta["bad_rows"] == {star: reason}
        text = _bad_star_warning(record)
        assert text == (f"1 of 2 stars in {tmp_path / name} have unusable data and are kept with "
                        f"NaN: {star} ({reason})")
        assert st.missing_report()["scalar:bp_0"] == 1 and st.missing_report()["scalar:rp_54"] == 1


@needs_data
def test_incomplete_band_keeps_the_star_with_nan(tmp_path):
    bad = Table.read(RAW, format="ascii.csv")
    star = str(bad["source_id"][0])
    bad["rp_coefficient_errors"] = bad["rp_coefficient_errors"].astype(object)
    bad["rp_coefficient_errors"][0] = ""  # RP coefficients without errors
    bad.write(tmp_path / "noerr.csv", format="ascii.csv")
    with pytest.warns(UserWarning, match="kept with NaN"):
        st = read_xp_continuous(tmp_path / "noerr.csv")
    _kept_with_nan(st, 0)
    assert np.isfinite(xp_coefficients(st)[1][1]).all()
    assert st.meta["bad_rows"] == {star: "rp_coefficient_errors: empty while rp_coefficients are given"}


@needs_data
def test_every_star_bad_is_an_error(tmp_path):
    bad = Table.read(RAW, format="ascii.csv")
    bad["rp_coefficients"] = bad["rp_coefficients"].astype(object)
    bad["rp_coefficients"][0] = "(1.0, abc)"
    bad["rp_coefficients"][1] = "(1.0, 2.0)"
    bad.write(tmp_path / "allbad.csv", format="ascii.csv")
    with pytest.raises(InputError, match="no star has usable data") as exc:
        read_xp_continuous(tmp_path / "allbad.csv")
    msg = str(exc.value)
    assert "allbad.csv" in msg and "all 2 unusable" in msg and exc.value.field == "rp_coefficients"
    assert "value 1 of the cell is 'abc'" in msg and "2 values, expected 55" in msg
    # a one-star file with a garbled cell: named with field, star and row
    sco = Table.read(SCO, format="ascii.csv")
    sco["bp_coefficients"] = sco["bp_coefficients"].astype(object)
    sco["bp_coefficients"][0] = "(1.0, abc)"
    sco.write(tmp_path / "sco.csv", format="ascii.csv")
    with pytest.raises(InputError, match="only star has unusable data: cannot parse") as exc:
        read_xp_continuous(tmp_path / "sco.csv")
    assert exc.value.field == "bp_coefficients" and exc.value.row == 0
    assert exc.value.star == str(sco["source_id"][0]) and "sco.csv" in str(exc.value)


# ------------------------------------------------------------------ GaiaXPy conversion
def _quiet_call(fn, *args, **kwargs):
    from kielnet.io.gaia_xp import _quiet_gaiaxpy

    with _quiet_gaiaxpy():
        return fn(*args, **kwargs)


def _reference_rows() -> list[dict[str, object]]:
    out = []
    for r in raw_rows(REFERENCE):
        out.append({"source_id": int(r["source_id"]), "xp": r["xp"],
                    "flux": hand_parse(r["flux"]), "error": hand_parse(r["error"])})
    return out


@needs_data
def test_frame_reproduces_sampled_mean_spectrum_csv(gaiaxpy, tables):
    """SampledMeanSpectrum.csv is GaiaXPy's *convert* output (internal BP/RP
    pseudo-wavelength sampling np.linspace(0, 60, 481)) for XP_CONTINUOUS_RAW.csv; our
    parsed coefficients, handed to GaiaXPy, must reproduce it."""
    frame, no_std = to_gaiaxpy_frame(tables[RAW.name])
    assert not no_std.any()
    conv, sampling = _quiet_call(gaiaxpy.convert, frame, sampling=np.linspace(0, 60, 481),
                                 save_file=False)
    for ref in _reference_rows():
        sel = (conv["source_id"] == ref["source_id"]) & (conv["xp"] == ref["xp"])
        row = conv[sel].iloc[0]
        flux, err = np.asarray(row["flux"]), np.asarray(row["flux_error"])
        assert flux.shape == (481,)
        scale = np.abs(ref["flux"]).max()
        assert np.abs(flux - ref["flux"]).max() / scale < 1e-12
        np.testing.assert_allclose(err, ref["error"], rtol=1e-6)


@needs_data
def test_sampled_spectra_match_gaiaxpy_on_the_file(gaiaxpy):
    st = xp_sampled_spectra(RAW)
    assert st.flux.shape == st.flux_err.shape == (2, 343)
    np.testing.assert_array_equal(st.wavelength.value, XP_WAVELENGTH_NM)
    assert str(st.wavelength.unit) == "nm"
    np.testing.assert_allclose(np.median(st.flux, axis=1), 1.0, rtol=1e-6)
    ref, _ = _quiet_call(gaiaxpy.calibrate, str(RAW), save_file=False)
    for i in range(2):
        f = np.asarray(ref["flux"].iloc[i])
        e = np.asarray(ref["flux_error"].iloc[i])
        med = np.median(f)
        assert st.extra["medflux"][i] == pytest.approx(med, rel=1e-12)
        np.testing.assert_allclose(st.flux[i], f / med, rtol=1e-6, atol=1e-7)  # float32 table
        np.testing.assert_allclose(st.flux_err[i], e / med, rtol=1e-6, atol=1e-12)
    assert 1e-17 < st.extra["medflux"].min() and st.extra["medflux"].max() < 1e-13  # W m-2 nm-1
    # an explicit grid equal to the default takes GaiaXPy's precomputed default path too
    same = xp_sampled_spectra(RAW, sampling_nm=np.arange(336.0, 1021.0, 2.0))
    np.testing.assert_array_equal(same.flux, st.flux)


@needs_data
def test_sampled_spectra_missing_bp_and_no_std(gaiaxpy, tables):
    st = xp_sampled_spectra(tables[RAW_MISSING.name])
    i = list(st.ids).index(MISSING_BP_STAR)
    assert st.extra["missing_bp"][i]
    bad = np.isnan(st.flux[i])
    assert bad.sum() == 150 and bad[:150].all()  # BP-only range, 336-634 nm
    assert np.isfinite(np.delete(st.flux, i, axis=0)).all()
    assert st.missing_report() == {"spectrum:nonfinite_pixels": 1}
    sco = xp_sampled_spectra(SCO)
    assert np.isfinite(sco.flux).all() and np.isnan(sco.flux_err).all()
    assert "g" in sco.scalars and "bp_0" not in sco.scalars
    with pytest.raises(InputError, match="n_relevant_bases"):
        xp_sampled_spectra(SCO, truncation=True)


@needs_data
def test_missing_gaiaxpy_gives_a_clear_error(monkeypatch, tables, tmp_path):
    import sys

    from kielnet.io import xp_matrices

    monkeypatch.setenv(xp_matrices.CACHE_ENV, str(tmp_path))  # no cached matrices
    monkeypatch.setitem(sys.modules, "gaiaxpy", None)  # import gaiaxpy → ImportError
    for method in ("matrix", "gaiaxpy"):
        with pytest.raises(InputError, match="pip install gaiaxpy"):
            xp_sampled_spectra(tables[RAW.name], method=method)
    read_xp_continuous(RAW)  # reading needs no gaiaxpy


@needs_data
def test_matrix_method_equals_the_gaiaxpy_method(gaiaxpy, tables):
    """The default (batched linear map) and GaiaXPy's calibrate give the same table."""
    for name in (RAW_MISSING.name, SCO.name):
        mine = xp_sampled_spectra(tables[name])
        ref = xp_sampled_spectra(tables[name], method="gaiaxpy")
        assert mine.meta["method"] == "matrix" and ref.meta["method"] == "gaiaxpy"
        np.testing.assert_array_equal(mine.wavelength, ref.wavelength)
        for a, b in ((mine.flux, ref.flux), (mine.flux_err, ref.flux_err),
                     (mine.extra["medflux"], ref.extra["medflux"])):
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            np.testing.assert_allclose(a, b, rtol=1e-11)
        assert mine.scalars.keys() == ref.scalars.keys()
    with pytest.raises(InputError, match="method"):
        xp_sampled_spectra(tables[RAW.name], method="fast")
    both = xp_sampled_spectra(tables[RAW.name], keep_coefficients=True)  # coefficients as features
    np.testing.assert_array_equal(np.column_stack([both.scalars[f"rp_{i}"] for i in range(55)]),
                                  xp_coefficients(tables[RAW.name])[1])
    assert both.flux.shape == (2, 343)


def test_importing_gaiaxpy_leaves_matplotlib_settings_alone(monkeypatch):
    import importlib
    import importlib.util
    import sys

    import matplotlib

    from kielnet.io.gaia_xp import _require_gaiaxpy

    if importlib.util.find_spec("gaiaxpy") is None:
        pytest.skip("gaiaxpy is not installed")

    def fresh() -> None:  # GaiaXPy's modules imported anew in this test, put back after it
        for name in [m for m in sys.modules if m == "gaiaxpy" or m.startswith("gaiaxpy.")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(matplotlib.rcParams, "text.usetex", False)

    fresh()
    importlib.import_module("gaiaxpy")
    assert matplotlib.rcParams["text.usetex"] is True  # what a bare import does (else this test proves nothing)
    fresh()
    _require_gaiaxpy()
    assert matplotlib.rcParams["text.usetex"] is False


def test_coefficients_recovered_only_where_a_model_needs_and_the_input_can_give_them(tables):
    """with_recovered_coefficients: archive coefficients (no sampled spectrum) pass as they are;
    sampled spectra (float32) without coefficients get them (the archive's ratios to 1e-3); a model
    reading no coefficient leaves the table alone."""
    from kielnet.data.xp import coefficient_names
    from kielnet.io.gaia_xp import needs_xp_coefficients, with_recovered_coefficients

    cols = tuple(["g"] + coefficient_names("bp") + coefficient_names("rp"))
    archive = tables[RAW.name]
    assert not needs_xp_coefficients(cols, archive)
    assert with_recovered_coefficients(archive, cols) is archive
    sampled = xp_sampled_spectra(archive)
    assert not set(coefficient_names("bp")) & set(sampled.scalars)
    assert with_recovered_coefficients(sampled, ("g",)) is sampled
    got = with_recovered_coefficients(sampled, cols)
    bp, rp = xp_coefficients(archive)
    gbp, grp = xp_coefficients(got)
    np.testing.assert_allclose(gbp[:, 1:] / gbp[:, :1], bp[:, 1:] / bp[:, :1], atol=1e-3)
    np.testing.assert_allclose(grp[:, 1:] / grp[:, :1], rp[:, 1:] / rp[:, :1], atol=1e-3)
