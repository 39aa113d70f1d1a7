"""Labelling Gaia XP bulk-download directories with the shipped ``xp-apogee-dr17``:
archive files with only G (no metadata table) flagged ``missing_input`` with a
calibrated σ; a Dask run over a 2-file directory gives the single process's rows and
resumes a killed run."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import kielnet.inference.streaming as streaming
from kielnet.artifact import load_bundle
from kielnet.artifact.registry import resolve_bundle
from kielnet.cli import main
from kielnet.inference.streaming import predict_to_file
from kielnet.io import open_stars
from kielnet.io.gaia_xp import xp_sampled_spectra
from xp_bulk import write_bulk

NAME = "xp-apogee-dr17"
DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
RAW = DATA / "gaia_xp" / "XP_CONTINUOUS_RAW_with_missing_BP.csv"
pytestmark = [pytest.mark.skipif(not RAW.is_file(), reason=f"real XP data {RAW} is absent"),
              pytest.mark.skipif(not (resolve_bundle(NAME) / "bundle.json").is_file(), reason="no shipped model")]


@pytest.fixture(scope="module")
def g_only(tmp_path_factory, gaiaxpy):  # the XP calibration matrices come from GaiaXPy once
    folder = tmp_path_factory.mktemp("gonly") / "bulk"
    return folder, write_bulk(folder, RAW, [7, 5], g=True)


def test_g_only_directory_without_metadata_is_flagged_with_calibrated_sigma(g_only, tmp_path, capsys):
    folder, files = g_only
    out = tmp_path / "cat.parquet"
    with pytest.warns(UserWarning, match=r"bp, rp, j, h, k absent from the file"):
        assert main(["predict", "--bundle", NAME, "--data", str(folder), "--out", str(out), "--chunk-size", "5",
                     "--quiet"]) == 0
    cat = pq.read_table(out).to_pydict()
    assert len(cat["id"]) == 12 and cat["source_id"] == [10**15 + i for i in range(12)]
    status = np.asarray(cat["status"]).astype(str)
    assert all("missing_input" in s for s in status)
    missing_bp = np.asarray(cat["missing_bp"], bool)
    assert missing_bp.sum() == 4 and not np.asarray(cat["duplicate_id"], bool).any()
    ok = ~missing_bp                                     # a whole band missing: bad spectrum, no labels
    reasons = np.asarray(cat["not_reported"]).astype(str)
    for name in ("teff", "logg"):                      # reported unless withheld with a reason (label_not_reported)
        sig, val = np.asarray(cat[f"sigma_{name}"], float), np.asarray(cat[name], float)
        held = np.array([f"{name}:" in r for r in reasons])
        shown = ok & ~held
        assert shown.sum() >= 4
        assert np.isfinite(val[shown]).all() and np.isfinite(sig[shown]).all() and (sig[shown] > 0).all()
        assert np.isnan(val[held]).all() and all("label_not_reported" in s for s in status[held])
    # the σ of a star with every photometric input missing is the calibrated one: larger than with them
    bundle = load_bundle(NAME)
    st = xp_sampled_spectra(files[0]).take(np.arange(3))
    for c in ("bp", "rp", "j", "h", "k"):
        st.scalars[c] = np.array([12.6, 13.4, 12.1]) if c != "bp" else np.array([13.0, 13.8, 12.5])
    from kielnet.inference.predict import predict

    full = predict(bundle, st)
    a = np.asarray(cat["sigma_teff"], float)[[0, 2]]
    b = np.asarray(full["sigma_teff"], float)[[0, 2]]
    both = np.isfinite(a) & np.isfinite(b)     # where both are reported (a tail regime may withhold one)
    assert both.any() and (a[both] > b[both]).all()


def test_metadata_under_gaia_and_2mass_names_is_used(g_only, tmp_path):
    """A metadata table exported from the Gaia archive / 2MASS (``SOURCE_ID``,
    ``phot_bp_mean_mag``, ``j_m``, ``ks_m`` …) gives the catalogue that the same numbers
    under the preset's names give: no input is absent, no star is missing_input."""
    folder, files = g_only
    ids = [10**15 + i for i in range(12)]
    rng = np.random.default_rng(3)
    mags = {c: np.round(rng.uniform(11, 14, 12), 3) for c in ("bp", "rp", "j", "h", "k")}
    names = {"bp": "PHOT_BP_MEAN_MAG", "rp": "phot_rp_mean_mag", "j": "j_m", "h": "h_m", "k": "ks_m"}
    cats = []
    for label, head, key in (("short", "source_id", dict(zip(mags, mags))), ("survey", "SOURCE_ID", names)):
        meta = tmp_path / f"meta_{label}.csv"
        meta.write_text(",".join([head, *(key[c] for c in mags)]) + "\n" + "".join(
            ",".join([str(i), *(str(mags[c][r]) for c in mags)]) + "\n" for r, i in enumerate(ids)))
        out = tmp_path / f"cat_{label}.parquet"
        assert main(["predict", "--bundle", NAME, "--data", str(folder), "--metadata", str(meta), "--out", str(out),
                     "--quiet"]) == 0
        cats.append(pq.read_table(out))
    assert cats[0].column_names == cats[1].column_names
    for c in cats[0].column_names:
        x, y = (np.asarray(t[c].to_pylist(), dtype=object) for t in cats)
        if all(isinstance(v, float) for v in x):
            np.testing.assert_array_equal(x.astype(float), y.astype(float), err_msg=c)
        else:
            assert x.tolist() == y.tolist(), c
    assert not any("missing_input" in s for s in cats[1]["status"].to_pylist())


def same_rows(a, b):
    assert a.colnames == b.colnames
    for c in a.colnames:
        x, y = np.asarray(a[c]), np.asarray(b[c])
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y, err_msg=c)
        else:
            assert x.tolist() == y.tolist(), c


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as lc, distributed.Client(lc) as c:
        yield c


def test_dask_over_a_two_file_directory_gives_the_single_process_rows_and_resumes(g_only, client, tmp_path,
                                                                                monkeypatch):
    folder, _ = g_only
    bundle_dir = resolve_bundle(NAME)
    bundle = load_bundle(bundle_dir)
    one = predict_to_file(bundle, open_stars(folder, sampled=True), tmp_path / "one.parquet", chunk_size=4,
                          progress=False, bundle_path=bundle_dir)
    many = predict_to_file(bundle, open_stars(folder, sampled=True), tmp_path / "many.parquet", chunk_size=4,
                           progress=False, bundle_path=bundle_dir, cluster=client)
    assert one.rows == many.rows == 12 and many.chunks == 3     # chunk 1 spans both files
    same_rows(one.read(), many.read())
    # a local run killed after one chunk resumes on the cluster: same rows
    out = tmp_path / "killed.parquet"
    real, calls = streaming.predict, []

    def killed_after_one(*a, **kw):
        if calls:
            raise KeyboardInterrupt("simulated kill")
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(streaming, "predict", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        predict_to_file(bundle, open_stars(folder, sampled=True), out, chunk_size=4, progress=False,
                        bundle_path=bundle_dir)
    monkeypatch.undo()
    resumed = predict_to_file(bundle, open_stars(folder, sampled=True), out, chunk_size=4, progress=False,
                              bundle_path=bundle_dir, cluster=client)
    assert resumed.reused_chunks == 1 and resumed.rows == 12
    same_rows(one.read(), resumed.read())
