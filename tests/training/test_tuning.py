"""`kielnet tune`: Optuna search declared in the config, resumable, written as a preset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

optuna = pytest.importorskip("optuna")

from kielnet.cli import main  # noqa: E402
from kielnet.config import KielnetConfig, load_config  # noqa: E402
from kielnet.errors import ConfigError, RunMismatchError  # noqa: E402
from kielnet.training.tuning import STUDY_FILE, _study, apply_params, run_study, write_best_preset  # noqa: E402

from conftest import synthetic_table, tiny_config_dict  # noqa: E402

SPACE = {"n_trials": 3, "max_epochs": 3, "warmup_epochs": 1, "startup_trials": 1, "space": [
    {"path": "training.lr", "kind": "float", "low": 1e-3, "high": 1e-2, "log": True},
    {"path": "training.loss", "kind": "categorical", "choices": ["huber", "mse"]},
    {"path": "model.head.layers", "kind": "categorical", "choices": [[16], [8, 8]]},
    {"path": "model.spectrum.conv.0.channels", "kind": "int", "low": 2, "high": 6, "step": 2},
]}


@pytest.fixture
def cfg():
    return KielnetConfig.from_dict(tiny_config_dict(tuning=SPACE))


@pytest.fixture
def table():
    return synthetic_table(n=150, n_pix=48, seed=5)


def test_apply_params_sets_dotted_paths_and_validates(cfg):
    out = apply_params(cfg, {"training.lr": 0.005, "model.head.layers": [8, 8],
                             "model.spectrum.conv.0.channels": 6})
    assert out.training.lr == 0.005 and out.model.head.layers == [8, 8]
    assert out.model.spectrum.conv[0].channels == 6
    with pytest.raises(ConfigError, match="training.nope"):
        apply_params(cfg, {"training.nope.x": 1})
    with pytest.raises(ConfigError):
        apply_params(cfg, {"training.lr": -1.0})  # validated


def test_search_space_is_validated():
    with pytest.raises(Exception, match="low < high"):
        KielnetConfig.from_dict(tiny_config_dict(tuning={"space": [{"path": "training.lr", "kind": "float",
                                                                     "low": 1, "high": 1}]}))
    with pytest.raises(Exception, match="choices"):
        KielnetConfig.from_dict(tiny_config_dict(tuning={"space": [{"path": "a", "kind": "categorical"}]}))
    # the shipped preset's space applies cleanly at its extremes
    xp = load_config("xp_hybrid")
    assert xp.tuning.space
    for p in xp.tuning.space:
        apply_params(xp, {p.path: p.choices[-1] if p.kind == "categorical" else p.high})


def test_study_resumes_after_an_interruption_and_writes_a_preset(cfg, table, tmp_path):
    wd = tmp_path / "tune"
    first = run_study(table, cfg, wd, n_trials=2, log=lambda *_: None)
    assert first.n_complete + first.n_pruned == 2 and (wd / STUDY_FILE).is_file()
    # a process killed mid-trial leaves a RUNNING trial in the journal
    study = _study(wd, cfg)
    stale = study.ask()
    stale.suggest_float("training.lr", 1e-3, 1e-2, log=True)
    logs = []
    second = run_study(table, cfg, wd, n_trials=3, log=logs.append)
    assert any("interrupted" in line for line in logs)
    trials = _study(wd, cfg).get_trials()
    states = [t.state.name for t in trials]
    assert states.count("FAIL") == 1
    assert states.count("COMPLETE") + states.count("PRUNED") == 3
    # the interrupted trial's parameters were tried again
    assert sum(t.params.get("training.lr") == trials[stale.number].params["training.lr"] for t in trials) == 2
    # nothing left to do: a rerun trains nothing
    third = run_study(table, cfg, wd, n_trials=3, log=logs.append)
    assert third.n_complete == second.n_complete
    out = write_best_preset(second, cfg, tmp_path / "best.yaml", data_source="synthetic")
    tuned = load_config(out)
    assert tuned.name == "tiny_tuned" and tuned.provenance["best_trial"] == second.best_trial
    assert set(tuned.provenance["chosen"]) == {p["path"] for p in SPACE["space"]}
    assert tuned.model_dump()["training"]["lr"] == tuned.provenance["chosen"]["training.lr"]
    assert tuned.model.head.layers in ([16], [8, 8])


def test_a_different_study_is_refused(cfg, table, tmp_path):
    wd = tmp_path / "tune"
    run_study(table, cfg, wd, n_trials=1, log=lambda *_: None)
    with pytest.raises(RunMismatchError, match="different tuning study"):
        run_study(table.take(np.arange(100)), cfg, wd, n_trials=1, log=lambda *_: None)


def test_cli_tune_and_select(cfg, table, tmp_path):
    from kielnet.io import write_table

    data = tmp_path / "stars.parquet"
    write_table(table, data)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    (tmp_path / "sel.yaml").write_text(yaml.safe_dump({"name": "cool", "cuts": [
        {"name": "teff_lt_6500", "column": "teff", "op": "<", "value": 6500.0}]}))
    rc = main(["tune", "--data", str(data), "--config", str(tmp_path / "cfg.yaml"), "--workdir",
               str(tmp_path / "wd"), "--out", str(tmp_path / "best.yaml"), "--trials", "1",
               "--select", str(tmp_path / "sel.yaml")])
    assert rc == 0 and load_config(tmp_path / "best.yaml").provenance["trials"]["complete"] >= 0
    rc = main(["train", "--data", str(data), "--config", str(tmp_path / "best.yaml"), "--out",
               str(tmp_path / "bundle"), "--select", str(tmp_path / "sel.yaml"), "--quiet"])
    assert rc == 0
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    sel = meta["training_data"]["selection"]
    n_cool = int((table.labels["teff"] < 6500).sum())
    assert sel["n_input"] == len(table) and sel["n_selected"] == n_cool
    assert sel["cuts"][0]["name"] == "teff_lt_6500" and sel["cuts"][0]["removed"] == len(table) - n_cool
    assert meta["training_data"]["n_rows"] == n_cool


def test_trials_run_as_dask_tasks(cfg, table, tmp_path):
    pytest.importorskip("distributed")
    res = run_study(table, cfg, tmp_path / "tune", n_trials=2, cluster="local:2", log=lambda *_: None)
    trials = _study(tmp_path / "tune", cfg).get_trials()
    assert len(trials) == 2 and res.n_complete + res.n_pruned == 2
    assert len({t.params["training.lr"] for t in trials}) == 2  # the workers drew different parameters
