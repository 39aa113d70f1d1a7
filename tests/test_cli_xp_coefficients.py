"""The xp_coefficients preset (issue 23): a model on the 110 XP coefficients instead of the
sampled spectrum. It trains through the CLI on the XP library (sampled spectra only: the
coefficients are recovered by least squares) and labels both the library and archive XP
continuous files (coefficients read as they are)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from kielnet.cli import main
from kielnet.config import load_config
from kielnet.data.xp import coefficient_names
from kielnet.io import load_xp_library, read_catalogue

RAW = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gaia_xp"
       / "XP_CONTINUOUS_RAW_with_missing_BP.csv").resolve()


def test_the_preset_reads_coefficients_and_no_spectrum():
    cfg = load_config("xp_coefficients")
    assert cfg.spectrum is None and cfg.model.spectrum is None
    cols = set(cfg.scalar_columns())
    assert set(coefficient_names("bp") + coefficient_names("rp")) <= cols
    xp = next(b for b in cfg.model.scalar_branches if b.name == "xp")
    assert len(xp.features) == 109  # 54 + 54 ratios to the first coefficient, and rp_0 / bp_0


@pytest.fixture
def tiny_coefficient_config(tmp_path):
    cfg = load_config("xp_coefficients").with_overrides(
        training={"max_epochs": 3, "batch_size": 64, "threads": 1},
        ensemble={"n_splits": 1, "members_per_split": 1, "seed": 0},
        uncertainty={"n_bins": 5, "degree": 1, "min_per_bin": 10})
    d = cfg.model_dump(mode="json")
    d["model"]["scalar_branches"][1]["layers"] = [32]
    d["model"]["head"]["layers"] = [32]
    path = tmp_path / "coef.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_trains_on_sampled_spectra_and_labels_archive_coefficients(capsys, tmp_path, xp_subset_path,
                                                                   tiny_coefficient_config):
    bundle = tmp_path / "bundle"
    assert main(["train", "--data", str(xp_subset_path), "--config", str(tiny_coefficient_config),
                 "--out", str(bundle), "--quiet"]) == 0
    assert "XP coefficients recovered from the sampled spectra (least squares with the design matrices) of" \
        in capsys.readouterr().out
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["config"]["spectrum"] is None

    stars = load_xp_library(xp_subset_path)
    cat_path = tmp_path / "lib.parquet"
    assert main(["predict", "--bundle", str(bundle), "--data", str(xp_subset_path), "--out", str(cat_path),
                 "--quiet"]) == 0
    assert "the model reads XP coefficients" in capsys.readouterr().out
    cat = read_catalogue(cat_path)
    assert len(cat) == len(stars)
    teff = np.asarray(cat["teff"], float)
    ok = np.isfinite(teff)
    assert ok.mean() > 0.9
    assert np.corrcoef(teff[ok], stars.labels["teff"][ok])[0, 1] > 0.5  # it learned from the coefficients

    if not RAW.is_file():
        pytest.skip(f"real XP data {RAW} is absent")
    arch = tmp_path / "archive.parquet"
    with pytest.warns(UserWarning, match="absent from the file"):  # an archive file has no photometry
        assert main(["predict", "--bundle", str(bundle), "--data", str(RAW), "--out", str(arch), "--quiet"]) == 0
    capsys.readouterr()
    cat = read_catalogue(arch)
    assert len(cat) == 3
    no_bp = np.asarray(cat["id"]).astype(str) == "5405570973190252288"
    assert np.asarray(cat["status"]).astype(str)[no_bp][0] != "ok"  # the star without BP is not ok
    assert np.isfinite(np.asarray(cat["teff"], float)[~no_bp]).all()
