"""The pretrained model shipped inside the package (kielnet.artifact.registry)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from kielnet.cli import main
from kielnet.artifact import load_bundle
from kielnet.inference.predict import predict
import pyarrow.parquet as pq
from kielnet.artifact.registry import MODELS_DIR, available, model_card, resolve_bundle

NAME = "xp-apogee-dr17"


def test_the_model_ships_and_is_small():
    assert NAME in available()
    path = available()[NAME]
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    assert size <= 25e6, size
    card = model_card(NAME)
    for needle in ("Training data", "Label ranges", "Input ranges", "Held-out test metrics", "coverage",
                   "Licence", "cite", "sigma", "Known limitations", "Hot stars"):
        assert needle.lower() in card.lower(), needle
    assert resolve_bundle(NAME) == path and resolve_bundle("no/such/dir").name == "dir"
    assert path.parent == MODELS_DIR


def test_loads_by_name_and_reproduces_its_reference_catalogue(xp_subset):
    bundle = load_bundle(NAME)
    ref_meta = json.loads((available()[NAME] / "reference.json").read_text())
    ref_file = available()[NAME] / ref_meta["file"]
    assert hashlib.sha256(ref_file.read_bytes()).hexdigest() == ref_meta["sha256"]
    ref = pq.read_table(ref_file).to_pydict()
    cat = predict(bundle, xp_subset)
    assert cat["id"].tolist() == [str(i) for i in ref["id"]]
    assert cat["status"].tolist() == [str(s) for s in ref["status"]]
    for c in ref_meta["columns"]:
        if c in ("id", "status"):
            continue
        if c == "not_reported":  # which labels are withheld, and why
            assert cat[c].tolist() == [str(s) for s in ref[c]]
            continue
        # float32 labels carry ~6e-8 of their size (3e-4 K at 5,000 K): a spread (e_*), a
        # difference of such labels, differs by that much in absolute terms between CPUs
        atol = 2e-3 if c.endswith("teff") else 2e-6
        np.testing.assert_allclose(np.asarray(cat[c], float), np.asarray(ref[c], float), rtol=2e-5, atol=atol,
                                   err_msg=c)
    # the shipped model gives the 99.73 % interval of every reported label, wider than a
    # Gaussian's (3/1.96 ci95): its residuals are heavier-tailed
    assert (bundle.neighbours.ci997_factor > 2.0).all()
    for n in bundle.config.label_names:
        v, c95, c997 = (np.asarray(cat[k], float) for k in (n, f"ci95_{n}", f"ci997_{n}"))
        assert np.isfinite(c997[np.isfinite(v)]).all() and np.isnan(c997[np.isnan(v)]).all()
        np.testing.assert_allclose(c997[np.isfinite(v)] / c95[np.isfinite(v)],
                                   bundle.neighbours.ci997_factor[bundle.config.label_names.index(n)], rtol=1e-12)


def test_cli_models_and_predict_by_name(xp_subset_path, tmp_path, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert NAME in out and "MB" in out
    rc = main(["predict", "--bundle", NAME, "--data", str(xp_subset_path), "--out", str(tmp_path / "c.parquet")])
    assert rc == 0
    cat = pq.read_table(tmp_path / "c.parquet").to_pydict()
    assert len(cat["id"]) == 1000 and (np.asarray(cat["status"]) == "ok").mean() > 0.8


def test_archive_xp_file_gives_the_labels_of_the_library_representation(shared_data, tmp_path):
    """A Gaia-archive XP continuous file labelled in one command (kielnet's GaiaXPy path +
    a photometry table joined by source_id) gives the labels of the same stars built by
    hand the way the XP library was (GaiaXPy calibrate at its default 336-1020 nm
    sampling, divided by the median flux) and labelled from memory."""
    from astropy.table import Table

    from kielnet.errors import InputError
    from kielnet.io.xp_matrices import _require_gaiaxpy

    try:  # imported keeping matplotlib's settings (a bare import of GaiaXPy turns on text.usetex)
        gaiaxpy = _require_gaiaxpy()
    except InputError:
        pytest.skip("gaiaxpy is not installed")

    from kielnet.data.startable import StarTable
    from kielnet.io.gaia_xp import read_xp_continuous, to_gaiaxpy_frame

    raw = shared_data / "gaia_xp" / "XP_CONTINUOUS_RAW.csv"
    st = read_xp_continuous(raw)
    sid = np.asarray(st.extra["source_id"], dtype=np.int64)
    n = len(sid)
    phot = {"g": np.linspace(13.0, 15.0, n), "bp": np.linspace(13.4, 15.5, n), "rp": np.linspace(12.4, 14.3, n),
            "j": np.linspace(11.5, 13.3, n), "h": np.linspace(11.0, 12.8, n), "k": np.linspace(10.9, 12.7, n)}
    meta = tmp_path / "phot.csv"
    Table({"source_id": sid, **phot}).write(meta, format="ascii.csv")
    out = tmp_path / "labels.parquet"
    assert main(["predict", "--bundle", NAME, "--data", str(raw), "--metadata", str(meta), "--out", str(out)]) == 0
    got = pq.read_table(out).to_pydict()

    frame, _ = to_gaiaxpy_frame(st)
    cal, sampling = gaiaxpy.calibrate(frame, save_file=False)
    flux = np.vstack([np.asarray(v, float) for v in cal["flux"]])
    err = np.vstack([np.asarray(v, float) for v in cal["flux_error"]])
    med = np.median(flux, axis=1, keepdims=True)
    by_hand = StarTable(ids=st.ids, flux=flux / med, flux_err=err / med, wavelength=np.asarray(sampling, float),
                        scalars=phot, extra={"source_id": sid}, meta={"source": "by hand"})
    want = predict(load_bundle(NAME), by_hand)
    assert [int(s) for s in got["source_id"]] == sid.tolist()
    for name in ("teff", "logg", "fe_h", "alpha_m"):
        a, b = np.asarray(got[name], float), np.asarray(want[name], float)
        s = np.asarray(want[f"sigma_{name}"], float)
        ok = np.isfinite(b)
        assert ok.any() and np.array_equal(np.isfinite(a), ok)
        assert np.all(np.abs(a[ok] - b[ok]) < 0.01 * s[ok]), name
