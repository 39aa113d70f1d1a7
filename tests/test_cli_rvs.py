"""The Gaia-RVS hybrid preset end to end through the CLI: train on toy RVS stars, predict
the 6 real Gaia DR3 RVS files joined with metadata, write the paper's Table 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.table import Table

from kielnet.cli import main
from kielnet.inference.rvs_catalogue import RVS_COLUMNS
from kielnet.io import read_catalogue, write_table
from kielnet.quality.boundary import parse_boundary_flags
from kielnet.simulation.rvs import synthetic_rvs_stars

pytest.importorskip("openTSNE")
pytestmark = pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning",
                                        "ignore::astropy.units.UnitsWarning")

SETS = ["ensemble.n_splits=1", "ensemble.members_per_split=2", "training.max_epochs=2", "training.threads=1",
        "quality.tsne.reference_size=200", "quality.tsne.perplexities=[10,20]"]


@pytest.fixture(scope="module")
def rvs_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("rvs_cli")
    data = write_table(synthetic_rvs_stars(300, seed=3), d / "toy.parquet")
    argv = ["train", "--data", str(data), "--config", "gaia_rvs_hybrid", "--out", str(d / "bundle"), "--quiet"]
    for s in SETS:
        argv += ["--set", s]
    assert main(argv) == 0
    return d / "bundle"


def test_predict_real_rvs_files_to_table2(capsys, rvs_bundle, shared_data, tmp_path):
    rvs_dir = shared_data / "gaia_rvs"
    if not rvs_dir.is_dir():
        pytest.skip("real RVS files absent")
    ids = ["1535964555128078720", "3174658066485297152", "4268620287278693120", "2131314401800665344"]
    meta = Table({"id": ids, "g": [10.1, 11.2, 12.3, 13.0], "bp": [10.5, 11.7, 12.8, 13.5],
                  "rp": [9.6, 10.6, 11.7, 12.4], "parallax": [1.0, 2.0, 0.5, 3.0]})
    meta.write(tmp_path / "meta.csv")
    out, t2 = tmp_path / "cat.parquet", tmp_path / "table2.fits"
    argv = ["predict", "--bundle", str(rvs_bundle), "--data", str(rvs_dir), "--out", str(out), "--quiet",
            "--metadata", str(tmp_path / "meta.csv"),
            "--metadata", str(shared_data / "gaia_xp" / "XP_CONTINUOUS_RAW.csv"), "--table2", str(t2)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "4/6 stars found" in printed and "Table 2" in printed
    cat = read_catalogue(out)
    assert len(cat) == 6 and "flag_boundary" in cat.colnames and "ood_score" in cat.colnames
    tab = read_catalogue(t2)
    assert tuple(tab.colnames) == RVS_COLUMNS
    assert [str(s) for s in tab["source_id"]][:4] == ids        # input order kept
    d = parse_boundary_flags(np.asarray(tab["flag_boundary"]))
    assert d["g"][4:].all() and d["parallax"][4:].all()          # no G / parallax -> '1'
    lo, hi = json.loads((rvs_bundle / "bundle.json").read_text())["feature_ranges"]["g"]
    np.testing.assert_array_equal(d["g"][:4], ~((np.array([10.1, 11.2, 12.3, 13.0]) >= lo) &
                                                (np.array([10.1, 11.2, 12.3, 13.0]) <= hi)))
    # every star lacks XP coefficients (the XP file holds other sources): imputed and flagged
    assert all("missing_input" in s for s in cat["status"])
    assert tab["teff"].unit == "K"


def test_table2_needs_a_boundary_flag(capsys, tiny_bundle_dir, shared_data, tmp_path):
    src = shared_data / "xp_library" / "apogee_dr17_gaiaxp_sampled_subset1000.npz"
    code = main(["predict", "--bundle", str(tiny_bundle_dir), "--data", str(src), "--out",
                 str(tmp_path / "c.parquet"), "--quiet", "--table2", str(tmp_path / "t2.fits")])
    assert code == 2 and "boundary_flag" in capsys.readouterr().err
