"""``kielnet spectral-labels``: spectral types → Teff / log g labels (APOGEE Net II §3.1), one row per star,
joinable by id into training (``kielnet train --labels``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.table import Table

from kielnet.cli import main
from kielnet.config import KielnetConfig
from kielnet.data.label_columns import join_labels
from kielnet.data.spectral_types import SpTCalibration, labels_from_spectral_types
from kielnet.io import read_catalogue, write_table
from kielnet.io.calibration import read_calibration, stack_calibrations
from kielnet.io.tables import read_reference_columns

MAMAJEK = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "calibration" / \
    "EEM_dwarf_UBVIJHK_colors_Teff.txt"


def _teff(spt):
    """The synthetic calibration's truth: log10 Teff falls linearly from O0 (50,000 K) to F5."""
    return 10 ** (4.7 - 0.02 * np.asarray(spt, float))


LOGG = {3.0: 3.3, 5.0: 4.2}

# (spectral type, expected status, (spt, lum_class) when it parses) for the synthetic calibration
# (classes III and V, types O0 ... F4)
STARS = [
    ("B2V", "ok", (12.0, 5.0)),
    ("A0III", "ok", (20.0, 3.0)),
    ("B2.5IV-V", "ok", (12.5, 4.5)),          # IV-V: within 0.5 of the calibrated class V
    ("B2V+B3V", "ok", (12.0, 5.0)),           # first component, multiple
    ("B2IV", "outside_support", (12.0, 4.0)),  # class IV: 1 from both III and V
    ("G2V", "outside_support", (42.0, 5.0)),   # beyond the calibrated types
    ("O5Ia", "outside_support", (5.0, 1.0)),   # class I below the calibrated III
    ("B5", "no_luminosity_class", (15.0, None)),
    ("DA2", "unparsed: white dwarf", None),
    ("", "unparsed: empty", None),
    ("hello", "unparsed: cannot parse", None),
]


@pytest.fixture(scope="module")
def calibration_csv(tmp_path_factory) -> Path:
    """Classes III and V at every subclass O0 ... F4: Teff from :func:`_teff`, log g per class."""
    rows = ["spt,lum_class,teff,logg"]
    for lc, g in LOGG.items():
        for spt in np.arange(0.0, 35.0, 1.0):
            rows.append(f"{spt:g},{lc:g},{_teff(spt):.1f},{g}")
    path = tmp_path_factory.mktemp("cal") / "calibration.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _stars(n_repeat: int = 1, first_id: int = 4_295_806_720) -> Table:
    """A star table with Gaia-like int64 ids, the STARS types (repeated) and a column to ignore."""
    types = [s[0] for s in STARS] * n_repeat
    return Table({"source_id": np.arange(len(types), dtype=np.int64) + first_id, "SpType": types,
                  "vmag": np.linspace(8.0, 12.0, len(types))})


@pytest.fixture(scope="module")
def labelled(calibration_csv, tmp_path_factory):
    """``kielnet spectral-labels`` run once on the synthetic stars (FITS input, Parquet output)."""
    d = tmp_path_factory.mktemp("spt")
    stars = d / "stars.fits"
    _stars().write(stars)
    out = d / "labels.parquet"
    rc = main(["spectral-labels", "--stars", str(stars), "--calibration", str(calibration_csv), "--out", str(out)])
    assert rc == 0
    return stars, out


def test_every_star_is_kept_with_its_status(labelled, capsys):
    stars, out = labelled
    tab = read_catalogue(out)
    assert len(tab) == len(STARS)
    assert tab.colnames[0] == "source_id"                           # the input's id column, name kept
    np.testing.assert_array_equal(tab["source_id"], _stars()["source_id"])
    assert tab["source_id"].dtype == np.int64
    status = [str(s) for s in tab["spt_status"]]
    for (text, expected, _), got, given in zip(STARS, status, tab["sptype"]):
        assert got.startswith(expected), (text, got)
        assert str(given) == text
    ok = np.array([s == "ok" for s in status])
    for name in ("teff", "teff_err", "logg", "logg_err"):
        assert np.isfinite(tab[name][ok]).all() and np.isnan(tab[name][~ok]).all(), name
    assert str(tab["teff"].unit) == "K" and str(tab["teff_err"].unit) == "K"
    assert str(tab["logg"].unit) == "dex" and str(tab["logg_err"].unit) == "dex"
    assert list(tab["multiple"]) == [s[0] == "B2V+B3V" for s in STARS]
    assert "Sect. 3.1" in tab.meta["provenance"]


def test_codes_and_labels_follow_the_calibration(labelled):
    _, out = labelled
    tab = read_catalogue(out)
    for row, (text, status, codes) in zip(tab, STARS):
        if codes is None:
            assert np.isnan(row["spt"]) and np.isnan(row["lum_class"])
            continue
        assert row["spt"] == codes[0]
        assert np.isnan(row["lum_class"]) if codes[1] is None else row["lum_class"] == codes[1]
        if status == "ok":
            assert row["teff"] == pytest.approx(_teff(codes[0]), rel=0.03), text
            assert 0 < row["teff_err"] < 0.05 * row["teff"]
            if codes[1] in LOGG:
                assert row["logg"] == pytest.approx(LOGG[codes[1]], abs=0.1), text
                assert 0 < row["logg_err"] < 0.1, text
            else:  # IV-V: between the calibrated classes, less certain
                assert LOGG[3.0] < row["logg"] < LOGG[5.0], text
                assert 0.1 < row["logg_err"] < 0.5, text


def test_counts_are_printed(calibration_csv, tmp_path, capsys):
    stars = tmp_path / "stars.csv"
    _stars().write(stars)
    out = tmp_path / "labels.ecsv"
    assert main(["spectral-labels", "--stars", str(stars), "--calibration", str(calibration_csv),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "70 rows (luminosity classes 3, 5)" in printed
    assert ("11 stars: 8 parsed (3 not), 1 without a luminosity class, 3 outside the calibration's support, "
            "4 labelled") in printed
    tab = read_catalogue(out)
    assert len(tab) == len(STARS) and str(tab["teff"].unit) == "K"


def test_output_joins_by_id_into_training_labels(labelled, make_table, tiny_config):
    """What ``kielnet train --labels OUT`` does: the labels replace the table's own by source_id; stars
    without a spectral-type label get NaN (masked in training, not dropped)."""
    _, out = labelled
    ids = _stars()["source_id"]
    table = make_table(n=20)
    extra = dict(table.extra)
    extra["source_id"] = np.concatenate([ids[::-1], np.arange(9, dtype=np.int64)])  # order differs
    table = table.__class__(ids=table.ids, flux=table.flux, flux_err=table.flux_err, wavelength=table.wavelength,
                            scalars=table.scalars, labels=table.labels, label_errs=table.label_errs, extra=extra,
                            meta=table.meta)
    joined, rep = join_labels(table, read_reference_columns(out), tiny_config.label_vocabulary, source=str(out))
    assert rep.key == "source_id" and rep.matched == len(STARS) and rep.unmatched_stars == 9
    assert rep.labels == {"teff": "teff", "logg": "logg"} and rep.finite == {"teff": 4, "logg": 4}
    ref = read_catalogue(out)
    by_id = {int(i): (t, e) for i, t, e in zip(ref["source_id"], ref["teff"], ref["teff_err"])}
    for sid, teff, err in zip(extra["source_id"], joined.labels["teff"], joined.label_errs["teff"]):
        want = by_id.get(int(sid), (np.nan, np.nan))
        np.testing.assert_equal([teff, err], want)
    np.testing.assert_array_equal(joined.labels["fe_h"], table.labels["fe_h"])  # labels it lacks: untouched


def test_train_accepts_the_output_as_labels(calibration_csv, make_table, tiny_config_dict, tmp_path, capsys):
    """End to end: spectral-labels → kielnet train --labels (tiny config, one epoch)."""
    table = make_table(n=66)
    sids = table.extra["source_id"]
    stars = Table({"source_id": sids, "sptype": [s[0] for s in STARS] * 6})
    stars.write(tmp_path / "stars.ecsv")
    out = tmp_path / "spt_labels.fits"
    assert main(["spectral-labels", "--stars", str(tmp_path / "stars.ecsv"), "--calibration", str(calibration_csv),
                 "--out", str(out)]) == 0
    write_table(table, tmp_path / "data.parquet")
    cfg = tiny_config_dict(training={"max_epochs": 1, "weighting": {"kind": "none"}})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(KielnetConfig.model_validate(cfg).model_dump(mode="json")))
    capsys.readouterr()
    rc = main(["train", "--data", str(tmp_path / "data.parquet"), "--labels", str(out), "--config",
               str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "bundle"), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "joined by source_id: 66 stars matched" in printed
    assert "teff <- teff (24 finite)" in printed and "logg <- logg (24 finite)" in printed
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["config"]["name"] == "tiny"


def test_explicit_columns_and_errors(calibration_csv, tmp_path, capsys):
    stars = tmp_path / "stars.csv"
    Table({"star": ["a", "b", "c"], "mk": ["B2V", "B9V", "F0V"], "id": [1, 2, 3]}).write(stars)
    out = tmp_path / "o.csv"
    assert main(["spectral-labels", "--stars", str(stars), "--sptype-column", "MK", "--id-column", "star",
                 "--calibration", str(calibration_csv), "--out", str(out)]) == 0
    tab = Table.read(out)
    assert tab.colnames[0] == "star" and list(tab["star"]) == ["a", "b", "c"]
    assert list(tab["spt_status"]) == ["ok", "ok", "ok"] and list(tab["spt"]) == [12.0, 19.0, 30.0]
    capsys.readouterr()
    # no spectral-type column by default name: exit 2 naming the columns
    assert main(["spectral-labels", "--stars", str(stars), "--calibration", str(calibration_csv),
                 "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "spectral-type" in err and "sptype" in err and "mk" in err
    # no calibration
    assert main(["spectral-labels", "--stars", str(stars), "--sptype-column", "mk", "--out",
                 str(tmp_path / "x.csv")]) == 2
    assert "--calibration" in capsys.readouterr().err
    # the output may not overwrite an input
    assert main(["spectral-labels", "--stars", str(stars), "--sptype-column", "mk", "--calibration",
                 str(calibration_csv), "--out", str(stars)]) == 2
    assert "also an input" in capsys.readouterr().err
    # a numeric column is no spectral type
    assert main(["spectral-labels", "--stars", str(stars), "--sptype-column", "id", "--id-column", "star",
                 "--calibration", str(calibration_csv), "--out", str(tmp_path / "x.csv")]) == 2
    assert "not spectral-type strings" in capsys.readouterr().err


def test_help_states_units_and_provenance(capsys):
    with pytest.raises(SystemExit) as info:
        main(["spectral-labels", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Teff [K]" in text and "log g [dex" in text and "teff_err [K]" in text
    assert "APOGEE Net II" in text and "Sect. 3.1" in text
    for option in ("--stars", "--sptype-column", "--id-column", "--calibration", "--mamajek", "--out"):
        assert option in text


def test_labels_from_spectral_types_matches_the_calibration(calibration_csv):
    rows = stack_calibrations([read_calibration(calibration_csv)])
    cal = SpTCalibration().fit(rows["spt"], rows["lum_class"], rows["teff"], rows["logg"])
    res = labels_from_spectral_types([s[0] for s in STARS] + [None, float("nan")], cal)
    pred = cal.predict([12.0], [5.0])
    assert res.teff[0] == pytest.approx(pred.teff[0], rel=1e-9)
    assert res.logg_err[0] == pytest.approx(pred.logg_err[0], rel=1e-9)
    assert res.status[-1].startswith("unparsed: not a string") and res.status[-2].startswith("unparsed")
    assert res.counts() == {"total": 13, "parsed": 8, "unparsed": 5, "no_luminosity_class": 1,
                            "outside_support": 3, "labelled": 4}


# ----------------------------------------------------------------------------- real data
@pytest.fixture
def mamajek_path() -> Path:
    if not MAMAJEK.is_file():
        pytest.skip(f"Mamajek dwarf table {MAMAJEK} is absent")
    return MAMAJEK


def test_mamajek_table_is_recognised_by_content(mamajek_path, calibration_csv):
    assert read_calibration(mamajek_path).meta["kind"] == "mamajek"
    assert read_calibration(calibration_csv).meta["kind"] == "csv"
    both = stack_calibrations([read_calibration(mamajek_path), read_calibration(calibration_csv)])
    assert set(both["source"]) == {str(mamajek_path), str(calibration_csv)}


@pytest.mark.parametrize("option", ["--calibration", "--mamajek"])
def test_real_mamajek_dwarf_sequence(mamajek_path, tmp_path, capsys, option):
    stars = tmp_path / "stars.csv"
    Table({"apogee_id": ["2M1", "2M2", "2M3", "2M4", "2M5"],
           "spectral_type": ["G2V", "A0V", "K5III", "B2.5V", "dM3"]}).write(stars)
    out = tmp_path / "labels.fits"
    assert main(["spectral-labels", "--stars", str(stars), option, str(mamajek_path), "--out", str(out)]) == 0
    tab = read_catalogue(out)
    assert tab.colnames[0] == "apogee_id"
    assert list(tab["spt_status"]) == ["ok", "ok", "outside_support", "ok", "ok"]  # only class V calibrated
    g2, a0 = tab[0], tab[1]
    assert g2["teff"] == pytest.approx(5770.0, abs=150.0) and 4.35 <= g2["logg"] <= 4.55
    assert a0["teff"] == pytest.approx(9700.0, rel=0.05) and 3.9 < a0["logg"] < 4.5
    assert 3300 < tab["teff"][4] < 3700                     # old-style dM3: class V from the 'd' prefix
    assert str(tab["logg"].unit) == "dex"
