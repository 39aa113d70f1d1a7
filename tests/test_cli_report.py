"""``kielnet report`` from the command line: a catalogue, a reference, a bundle and its input
stars give the HTML page with every figure, gradient maps included."""

from __future__ import annotations

import json

import numpy as np

from kielnet.cli import main
from kielnet.artifact import save_bundle
from kielnet.inference.predict import predict
from kielnet.io import atomic_write_table, write_table
from kielnet.diagnostics.report import reference_table


def test_cli_report(tmp_path, synthetic_bundle, make_table, capsys):
    stars = make_table(n=150, seed=5)
    save_bundle(synthetic_bundle, tmp_path / "bundle")
    cat = predict(synthetic_bundle, stars, n_realisations=0)
    cat["teff"][:5] = np.nan  # as if withheld
    atomic_write_table(cat, tmp_path / "cat.parquet")
    write_table(stars, tmp_path / "stars.parquet")
    atomic_write_table(reference_table(stars), tmp_path / "ref.fits")
    rc = main(["report", str(tmp_path / "cat.parquet"), "--reference", str(tmp_path / "ref.fits"),
               "--bundle", str(tmp_path / "bundle"), "--data", str(tmp_path / "stars.parquet"),
               "--max-stars", "50", "--out", str(tmp_path / "rep"), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "report.html" in out
    info = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert info["counts"]["rows"] == 150
    assert info["counts"]["references"]["ref"]["matched"] == 150
    assert info["counts"]["labels"]["teff"]["drawn"] <= 145
    assert {"kiel", "residuals_ref", "gradient_spectrum", "gradient_phot", "flags"} <= set(info["figures"])
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("<img src='data:image/png;base64,") == len(info["figures"])
    # the report refuses to write into an input
    assert main(["report", str(tmp_path / "cat.parquet"), "--out", str(tmp_path / "cat.parquet")]) == 2
