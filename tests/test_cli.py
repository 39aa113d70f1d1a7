"""Command-line interface (kielnet.cli.main / build_parser)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from astropy.table import Table

from kielnet import __version__
from kielnet.cli import build_parser, main
from kielnet.io import read_catalogue
from kielnet.io.tables import startable_to_table


SUBCOMMANDS = ["train", "predict", "evaluate", "demo", "presets"]

# astropy warns that the 'wavelength_nm' table meta needs a HIERARCH card in FITS
pytestmark = pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")


def _help(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_the_subcommands(capsys):
    out = _help(capsys, ["--help"])
    assert out.startswith("usage: kielnet")
    for cmd in SUBCOMMANDS:
        assert cmd in out


def test_top_level_help_mentions_units(capsys):
    out = _help(capsys, ["--help"])
    assert "[K]" in out and "dex" in out


@pytest.mark.parametrize("cmd", ["train", "predict", "demo"])
def test_subcommand_help_mentions_units(capsys, cmd):
    out = _help(capsys, [cmd, "--help"])
    assert out.startswith(f"usage: kielnet {cmd}")
    assert "teff [K]" in out and "logg [dex" in out and "[dex]" in out
    assert "in mag" in out                      # input photometry unit
    assert "sigma_X" in out


def test_evaluate_and_presets_help(capsys):
    out = _help(capsys, ["evaluate", "--help"])
    assert "Teff in K" in out and "in mag" in out and "robust sigma" in out
    out = _help(capsys, ["presets", "--help"])
    assert out.startswith("usage: kielnet presets")


def test_predict_help_documents_every_flag_bit(capsys):
    out = _help(capsys, ["predict", "--help"])
    for name in ["bad_spectrum", "interpolated_pixels", "missing_input", "input_outside_training",
                 "outside_training_teff", "outside_training_alpha_m"]:
        assert name in out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_parser_requires_a_subcommand():
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([])
    assert info.value.code == 2


def test_presets_lists_xp_hybrid(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("xp_hybrid: ") for line in out.splitlines())
    assert "Gaia XP" in out


@pytest.fixture(scope="module")
def input_fits(tiny_holdout, tmp_path_factory):
    """Held-out stars written as a FITS table (array column 'flux')."""
    path = tmp_path_factory.mktemp("cli") / "stars.fits"
    test = tiny_holdout.test.take(np.arange(30))
    startable_to_table(test).write(path)
    return path, test


@pytest.mark.parametrize("suffix", [".parquet", ".fits"])
def test_predict_writes_a_catalogue(capsys, tiny_bundle_dir, input_fits, tmp_path, suffix):
    path, test = input_fits
    out = tmp_path / f"cat{suffix}"
    rc = main(["predict", "--bundle", str(tiny_bundle_dir), "--data", str(path), "--out", str(out),
               "--chunk-size", "12", "--quiet"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "30 stars labelled" in stdout and str(out) in stdout
    cat = read_catalogue(out)
    assert cat["id"].tolist() == test.ids.tolist()
    assert np.isfinite(np.asarray(cat["teff"], float)).all()
    assert not (tmp_path / f"cat{suffix}.parts").exists()


def test_predict_bad_input_path_exits_2_naming_the_file(capsys, tiny_bundle_dir, tmp_path):
    missing = tmp_path / "no_such_file.fits"
    rc = main(["predict", "--bundle", str(tiny_bundle_dir), "--data", str(missing),
               "--out", str(tmp_path / "c.parquet"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("kielnet predict: error:") and str(missing) in err
    assert "Traceback" not in err
    assert not (tmp_path / "c.parquet").exists()


@pytest.mark.parametrize("content", [b"", b"\x00garbage\xff" * 300])
def test_predict_unreadable_file_exits_2(capsys, tiny_bundle_dir, tmp_path, content):
    bad = tmp_path / "stars.fits"
    bad.write_bytes(content)
    rc = main(["predict", "--bundle", str(tiny_bundle_dir), "--data", str(bad),
               "--out", str(tmp_path / "c.parquet"), "--quiet"])
    assert rc == 2
    assert str(bad) in capsys.readouterr().err


def _without_rp(input_fits, tmp_path):
    from kielnet.io import atomic_write_table

    path, _ = input_fits
    t = Table.read(path)
    t.remove_column("rp")
    bad = tmp_path / "no_rp.parquet"
    atomic_write_table(t, bad)
    return t, bad


def test_predict_a_column_absent_from_the_file_is_missing_for_every_star(capsys, tiny_bundle_dir, input_fits,
                                                                           tmp_path):
    t, bad = _without_rp(input_fits, tmp_path)
    with pytest.warns(UserWarning, match=r"no_rp.parquet: input column\(s\) rp absent from the file"):
        rc = main(["predict", "--bundle", str(tiny_bundle_dir), "--data", str(bad),
                   "--out", str(tmp_path / "c.parquet"), "--quiet"])
    assert rc == 0
    cat = read_catalogue(tmp_path / "c.parquet")
    assert len(cat) == len(t) and all("missing_input" in s for s in np.asarray(cat["status"]).astype(str))


def test_predict_a_missing_column_no_input_group_covers_exits_2_naming_it(capsys, tiny_bundle_dir, input_fits,
                                                                          tmp_path):
    import shutil

    _, bad = _without_rp(input_fits, tmp_path)
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["sigma_model"]["rule"] = "withhold"     # no calibrated factor for a missing group
    (bundle / "bundle.json").write_text(json.dumps(meta))
    rc = main(["predict", "--bundle", str(bundle), "--data", str(bad), "--out", str(tmp_path / "c.parquet"),
               "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "'rp'" in err and str(bad) in err


def test_predict_with_a_non_bundle_exits_2(capsys, input_fits, tmp_path):
    path, _ = input_fits
    rc = main(["predict", "--bundle", str(tmp_path), "--data", str(path), "--out", str(tmp_path / "c.fits")])
    assert rc == 2
    assert "bundle.json" in capsys.readouterr().err


def test_evaluate_prints_and_writes_metrics(capsys, tiny_bundle_dir, input_fits, tmp_path):
    path, test = input_fits
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--bundle", str(tiny_bundle_dir), "--data", str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "teff [K]" in text and "robust_sigma" in text
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"teff", "logg", "fe_h", "alpha_m"}
    assert metrics["teff"]["n"] == len(test)


def test_evaluate_without_reference_labels_exits_2(capsys, tiny_bundle_dir, input_fits, tmp_path):
    path, _ = input_fits
    t = Table.read(path)
    t.remove_columns([c for c in t.colnames if c.split("_err")[0] in ("teff", "logg", "fe_h", "alpha_m")])
    bad = tmp_path / "unlabelled.fits"
    t.write(bad)
    assert main(["evaluate", "--bundle", str(tiny_bundle_dir), "--data", str(bad)]) == 2
    assert "labels" in capsys.readouterr().err


@pytest.fixture
def tiny_yaml(tmp_path, tiny_xp_config):
    d = tiny_xp_config().with_overrides(training={"max_epochs": 2},
                                        ensemble={"members_per_split": 1}).model_dump(mode="json")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_train_writes_a_bundle(capsys, xp_subset_path, tiny_yaml, tmp_path):
    out = tmp_path / "bundle"
    rc = main(["train", "--data", str(xp_subset_path), "--config", str(tiny_yaml), "--out", str(out),
               "--set", "training.max_epochs=1", "--set", "ensemble.seed=3", "--quiet"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "read 1000 stars" in stdout and "bundle with 1 members" in stdout
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["config"]["training"]["max_epochs"] == 1       # --set applied, JSON-parsed
    assert meta["config"]["ensemble"]["seed"] == 3
    assert (tmp_path / "bundle.work" / "run.json").is_file()   # default work directory


@pytest.mark.parametrize("extra, needle", [
    (["--set", "nodot=1"], "section.key=value"),
    (["--set", "training.nonsense=1"], "nonsense"),
    (["--config", "no_such_preset"], "no_such_preset"),
])
def test_train_config_errors_exit_2(capsys, xp_subset_path, tmp_path, extra, needle):
    rc = main(["train", "--data", str(xp_subset_path), "--out", str(tmp_path / "b"), "--quiet", *extra])
    assert rc == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_demo_runs_end_to_end(capsys, xp_subset_path, tiny_yaml, tmp_path):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--data", str(xp_subset_path), "--config", str(tiny_yaml),
               "--splits", "1", "--members", "1", "--quiet"])
    assert rc == 0
    for name in ["catalogue.parquet", "catalogue.fits", "kiel_diagram.png", "residuals.png", "metrics.json",
                 "bundle/bundle.json"]:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_members"] == 1
    cat = read_catalogue(out / "catalogue.parquet")
    assert metrics["test"]["teff"]["n"] == len(cat) and 150 < len(cat) < 250
    assert "held-out test metrics" in capsys.readouterr().out


def test_predict_help_documents_the_boundary_flag_and_quality_columns(capsys):
    out = _help(capsys, ["predict", "--help"])
    for needle in ("flag_boundary", "digit 8", "ood_score", "tsne_training_like", "--table2", "parallax"):
        assert needle in out


def test_sensitivity_writes_maps_and_figures(capsys, tiny_bundle_dir, xp_subset_path, tmp_path):
    from kielnet.diagnostics.sensitivity import SensitivityMaps

    out = tmp_path / "sens"
    code = main(["sensitivity", "--bundle", str(tiny_bundle_dir), "--data", str(xp_subset_path),
                 "--select", "teff", "4000", "5500", "--max-stars", "50", "--out", str(out)])
    assert code == 0
    maps = SensitivityMaps.load(out / "sensitivity.npz")
    assert maps.n_stars == 50 and maps.units == "physical" and maps.pixel.shape == (4, 343)
    assert (out / "sensitivity_spectrum.png").stat().st_size > 0
    assert (out / "sensitivity_photometry.png").is_file()
    assert main(["sensitivity", "--bundle", str(tiny_bundle_dir), "--data", str(xp_subset_path),
                 "--select", "teff", "90000", "99000", "--out", str(out)]) == 2
    assert "no star" in capsys.readouterr().err


def test_calibrate_refits_a_bundle_on_its_training_stars(capsys, tiny_holdout, tiny_bundle_dir, tmp_path):
    """kielnet calibrate: the same training table gives the same out-of-fold fits; a changed
    setting is applied; another table is refused with exit code 2."""
    from kielnet.artifact import load_bundle

    train = tmp_path / "train.fits"
    startable_to_table(tiny_holdout.train).write(train)
    out = tmp_path / "recal"
    assert main(["calibrate", "--bundle", str(tiny_bundle_dir), "--data", str(train), "--out", str(out)]) == 0
    assert "recalibrated bundle written" in capsys.readouterr().out
    before, after = load_bundle(tiny_bundle_dir), load_bundle(out)
    assert after.neighbours is not None
    np.testing.assert_array_equal(after.neighbours.coords, before.neighbours.coords)
    assert after.neighbours.outlier_threshold == pytest.approx(before.neighbours.outlier_threshold)
    out2 = tmp_path / "recal2"
    assert main(["calibrate", "--bundle", str(tiny_bundle_dir), "--data", str(train), "--out", str(out2),
                 "--set", "quality.neighbours.min_support=0.9"]) == 0
    assert load_bundle(out2).neighbours.min_support == 0.9
    part = tmp_path / "part.fits"
    startable_to_table(tiny_holdout.train.take(np.arange(200))).write(part)
    assert main(["calibrate", "--bundle", str(tiny_bundle_dir), "--data", str(part), "--out",
                 str(tmp_path / "recal3")]) == 2
    assert "not the table the bundle was trained on" in capsys.readouterr().err


def test_demo_help_states_the_presets_own_ensemble_and_epochs():
    """The demo's --splits / --members / --max-epochs help quotes xp_hybrid's values; they
    must follow the preset file when it changes."""
    import argparse

    from kielnet.cli import build_parser
    from kielnet.config import load_config

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub.choices["demo"]._actions}
    cfg = load_config("xp_hybrid")
    assert f"xp_hybrid: {cfg.ensemble.n_splits})" in helps["splits"]
    assert f"xp_hybrid: {cfg.ensemble.members_per_split})" in helps["members"]
    assert f"xp_hybrid: {cfg.training.max_epochs})" in helps["max_epochs"]
