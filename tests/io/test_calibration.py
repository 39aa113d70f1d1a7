"""Calibration-table readers, and the SpT calibration fitted on the real Mamajek dwarf sequence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kielnet.data.spectral_types import SpTCalibration
from kielnet.errors import InputError
from kielnet.io.calibration import read_calibration_csv, read_mamajek_table

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
MAMAJEK = SHARED_DATA / "calibration" / "EEM_dwarf_UBVIJHK_colors_Teff.txt"
HELD_OUT = ("G2V", "M0V", "K5V", "A0V", "B2V")


@pytest.fixture(scope="module")
def mamajek():
    if not MAMAJEK.is_file():
        pytest.skip(f"Mamajek dwarf table {MAMAJEK} is absent")
    return read_mamajek_table(MAMAJEK)


@pytest.fixture(scope="module")
def dwarf_calibration(mamajek):
    """Fitted on the table without the HELD_OUT rows."""
    train = mamajek[~np.isin(mamajek["spt_label"], HELD_OUT)]
    return SpTCalibration(n_restarts=0).fit(train["spt"], train["lum_class"], train["teff"], train["logg"])


# ------------------------------------------------------------------ Mamajek reader
def test_read_mamajek_table(mamajek):
    assert len(mamajek) > 80
    assert mamajek["spt_label"][0] == "O3V" and mamajek["spt"][0] == 3.0
    assert (mamajek["lum_class"] == 5.0).all()
    assert str(mamajek["teff"].unit) == "K"
    g2 = mamajek[mamajek["spt_label"] == "G2V"][0]
    assert g2["spt"] == 42.0 and g2["teff"] == 5770.0
    # 4.438 + log10(M) − 2 log10(R) with the table's R and M
    assert g2["logg"] == pytest.approx(4.438 + np.log10(g2["msun"]) - 2 * np.log10(g2["r_rsun"]))
    assert 4.35 < g2["logg"] < 4.5
    # rows without a mass or radius (late L, T, Y) are skipped; the notes after the table too
    assert mamajek["spt"].max() < 80
    assert np.isfinite(mamajek["logg"]).all() and (np.diff(mamajek["spt"]) > 0).all()


def test_mamajek_held_out_rows(mamajek, dwarf_calibration):
    rows = mamajek[np.isin(mamajek["spt_label"], HELD_OUT)]
    pred = dwarf_calibration.predict(rows["spt"], rows["lum_class"])
    assert not pred.outside_support.any()
    for row, teff, logg in zip(rows, pred.teff, pred.logg):
        assert abs(teff - row["teff"]) < 0.04 * row["teff"], row["spt_label"]
        assert abs(logg - row["logg"]) < 0.1, row["spt_label"]
    by = dict(zip(rows["spt_label"], zip(pred.teff, pred.logg)))
    assert by["G2V"][0] == pytest.approx(5770.0, abs=150.0)
    assert 4.35 <= by["G2V"][1] <= 4.55
    assert by["M0V"][0] == pytest.approx(3850.0, abs=200.0)


def test_dwarf_only_calibration_flags_other_classes(dwarf_calibration):
    spt = np.array([42.0, 42.0, 42.0, 42.0, 1.0, 85.0])
    lc = np.array([3.0, 1.0, 4.5, 6.0, 5.0, 5.0])
    pred = dwarf_calibration.predict(spt, lc)
    assert pred.outside_support.tolist() == [True, True, True, True, True, True]
    assert not dwarf_calibration.outside_support([42.0], [5.0])[0]
    assert np.isfinite(pred.teff).all()  # values still given (class V), but flagged


# ------------------------------------------------------------------ user CSV
def _write(tmp_path, text, name="cal.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_calibration_csv(tmp_path):
    path = _write(tmp_path, "# literature compilation\n"
                            "Name,SpT,lum_class,Teff,logg\n"
                            "a,B2.5IV-V,,19000,3.9\n"
                            "b,B1,Ia,21000,2.6\n"
                            "c,12.5,4.5,18500,3.95\n"
                            "d,O9.5V+B0V,III,30000,3.5\n"
                            "\n")
    t = read_calibration_csv(path)
    assert t.colnames == ["spt_label", "spt", "lum_class", "teff", "logg", "multiple"]
    np.testing.assert_allclose(t["spt"], [12.5, 11.0, 12.5, 9.5])
    np.testing.assert_allclose(t["lum_class"], [4.5, 1.0, 4.5, 3.0])  # the column wins over the string
    np.testing.assert_allclose(t["teff"], [19000, 21000, 18500, 30000])
    assert t["multiple"].tolist() == [False, False, False, True]
    assert t.meta["source"] == str(path)


def test_read_calibration_csv_without_lum_class_column(tmp_path):
    t = read_calibration_csv(_write(tmp_path, "spt,teff,logg\nB2V,20600,4.1\nK0III,4800,2.6\n"))
    np.testing.assert_allclose(t["lum_class"], [5.0, 3.0])


@pytest.mark.parametrize("text,field,row,words", [
    ("spt,teff,logg\nB2V,20600,4.1\nxyz,5000,4.0\n", "spt", 1, "cannot parse"),
    ("spt,teff,logg\nB2V,20600,4.1\nB3,17000,4.2\n", "spt", 1, "no luminosity class"),
    ("spt,lum_class,teff,logg\nB2,V,20600,4.1\nB3,,17000,4.2\n", "lum_class", 1, "no luminosity class"),
    ("spt,lum_class,teff,logg\nB2,Q,20600,4.1\n", "lum_class", 0, "luminosity class"),
    ("spt,teff,logg\nB2V,hot,4.1\n", "teff", 0, "not a finite number"),
    ("spt,teff,logg\nB2V,-5,4.1\n", "teff", 0, "positive"),
    ("spt,teff,logg\nB2V,20600,\n", "logg", 0, "not a finite number"),
    ("SpT,teff,logg\nB2V,20600,4.1\nDA2,20000,8.0\n", "SpT", 1, "white dwarf"),
    ("spt,lc,teff,logg\n120,5,20600,4.1\n", "spt", 0, "outside"),
])
def test_read_calibration_csv_bad_rows(tmp_path, text, field, row, words):
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as exc:
        read_calibration_csv(path)
    err = exc.value
    assert err.source == str(path) and err.field == field and err.row == row
    assert words in str(err) and str(path) in str(err)


def test_read_calibration_csv_missing_column_or_file(tmp_path):
    with pytest.raises(InputError) as exc:
        read_calibration_csv(_write(tmp_path, "spt,teff\nB2V,20600\n"))
    assert exc.value.field == "logg"
    with pytest.raises(InputError, match="does not exist"):
        read_calibration_csv(tmp_path / "nope.csv")


def test_read_mamajek_table_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_mamajek_table(tmp_path / "nope.txt")
    with pytest.raises(InputError, match="header"):
        read_mamajek_table(_write(tmp_path, "# nothing here\n1 2 3\n", "a.txt"))
    bad = _write(tmp_path, "#SpT Teff R_Rsun Msun\nG2V 5770 1.012 1.00\nK0V 52x0 0.8 0.9\n", "b.txt")
    with pytest.raises(InputError) as exc:
        read_mamajek_table(bad)
    assert exc.value.field == "Teff" and exc.value.row == 1 and "line 3" in str(exc.value)
    short = _write(tmp_path, "#SpT Teff R_Rsun Msun\nG2V 5770 1.012\n", "c.txt")
    with pytest.raises(InputError, match="fields"):
        read_mamajek_table(short)
    ok = read_mamajek_table(_write(tmp_path, "#SpT Teff R_Rsun Msun\nG2V 5770 1.012 1.00\n"
                                             "T9V 560 ... ...\n\nnotes\n", "d.txt"))
    assert ok["spt_label"].tolist() == ["G2V"]
