"""Configuration schema, presets and overrides."""

from __future__ import annotations

import copy

import pytest
import yaml

from kielnet.config import KielnetConfig, load_config
from kielnet.errors import ConfigError
from kielnet.presets import available, preset_path



def test_preset_xp_hybrid_loads():
    assert "xp_hybrid" in available()
    cfg = load_config("xp_hybrid")
    assert cfg.name == "xp_hybrid"
    assert cfg.label_names[:2] == ["teff", "logg"]
    units = {lab.name: lab.unit for lab in cfg.labels}
    assert units["teff"] == "K" and units["logg"] == "dex"
    teff = cfg.labels[cfg.label_names.index("teff")]
    assert teff.transform == "log10"
    # every feature column is a column the XP-library reader provides
    assert set(cfg.scalar_columns()) <= {"g", "bp", "rp", "j", "h", "k", "ak_targ", "snr"}
    # preset loaded by path gives the same config
    assert load_config(preset_path("xp_hybrid")) == cfg


def test_tiny_config_is_valid(tiny_config):
    assert tiny_config.label_names == ["teff", "logg", "fe_h", "alpha_m"]
    # scalar_columns: unique, in order of first use by the features
    assert tiny_config.scalar_columns() == ["g", "bp", "rp", "j", "k"]


def test_model_dump_round_trip(tiny_config):
    again = KielnetConfig.from_dict(tiny_config.model_dump(mode="json"))
    assert again == tiny_config


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.update(bogus=1), "bogus"),
    (lambda d: d["training"].update(learning_rate=0.1), "learning_rate"),
    (lambda d: d["model"]["spectrum"]["conv"][0].update(stride=2), "stride"),
])
def test_unknown_key_is_rejected(mutate, needle, tiny_config_dict):
    d = tiny_config_dict()
    mutate(d)
    with pytest.raises(ConfigError, match=needle):
        KielnetConfig.from_dict(d)


def test_branch_with_undefined_feature_is_rejected(tiny_config_dict):
    d = tiny_config_dict()
    d["model"]["scalar_branches"][0]["features"] = ["g", "parallax"]
    with pytest.raises(ConfigError, match="parallax"):
        KielnetConfig.from_dict(d)


@pytest.mark.parametrize("rng", [[5.0, 1.0], [3.0, 3.0]])
def test_bad_valid_range_is_rejected(rng, tiny_config_dict):
    d = tiny_config_dict()
    d["labels"][1]["valid_range"] = rng
    with pytest.raises(ConfigError, match="valid_range"):
        KielnetConfig.from_dict(d)


@pytest.mark.parametrize("mutate", [
    # a colour (difference) needs two columns
    lambda d: d["features"].append({"name": "c", "kind": "difference", "columns": ["g"]}),
    # duplicate label names
    lambda d: d["labels"].append(copy.deepcopy(d["labels"][0])),
    # duplicate feature names
    lambda d: d["features"].append({"name": "g", "columns": ["g"]}),
    # weighting on a label that is not learned
    lambda d: d["training"].update(weighting={"kind": "kde", "labels": ["teff", "vsini"]}),
    # spectrum preprocessing without a spectrum branch
    lambda d: d["model"].update(spectrum=None),
    # neither spectrum nor scalar branches
    lambda d: (d.update(spectrum=None), d["model"].update(spectrum=None, scalar_branches=[])),
    # value constraints
    lambda d: d["training"].update(lr=-1.0),
    lambda d: d["spectrum"].update(max_bad_fraction=1.5),
    lambda d: d["labels"][0].update(transform="sqrt"),
    lambda d: d.update(labels=[]),
    # a tail-regime rate for a label not learned, or outside (0, 1]
    lambda d: d.setdefault("quality", {}).update(tail_regimes={"label_max_rate": {"vsini": 0.05}}),
    lambda d: d.setdefault("quality", {}).update(tail_regimes={"label_max_rate": {"teff": 0.0}}),
])
def test_inconsistent_configs_raise_config_error(mutate, tiny_config_dict):
    d = tiny_config_dict()
    mutate(d)
    with pytest.raises(ConfigError):
        KielnetConfig.from_dict(d)


def test_config_error_names_the_source(tiny_config_dict):
    d = tiny_config_dict()
    d["bogus"] = 1
    with pytest.raises(ConfigError, match="my_file.yaml"):
        KielnetConfig.from_dict(d, source="my_file.yaml")


def test_with_overrides_updates_only_the_given_keys(tiny_config):
    new = tiny_config.with_overrides(ensemble={"n_splits": 3}, training={"lr": 0.01})
    assert new.ensemble.n_splits == 3
    assert new.ensemble.members_per_split == tiny_config.ensemble.members_per_split
    assert new.training.lr == 0.01
    assert new.training.batch_size == tiny_config.training.batch_size
    assert new.model == tiny_config.model
    # the original is untouched (configs are frozen values)
    assert tiny_config.ensemble.n_splits == 1 and tiny_config.training.lr == 3e-3
    # a non-dict section value replaces the section
    assert tiny_config.with_overrides(name="other").name == "other"


def test_with_overrides_revalidates(tiny_config):
    with pytest.raises(ConfigError):
        tiny_config.with_overrides(training={"batch_size": 0})
    with pytest.raises(ConfigError, match="nonsense"):
        tiny_config.with_overrides(ensemble={"nonsense": 1})


def test_load_config_from_yaml_file(tmp_path, tiny_config_dict):
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(name="from_file")))
    cfg = load_config(path)
    assert cfg.name == "from_file"
    assert cfg == KielnetConfig.from_dict(tiny_config_dict(name="from_file"))


def test_load_config_errors(tmp_path, tiny_config_dict):
    with pytest.raises(ConfigError, match="xp_hybrid"):  # the message lists the known presets
        load_config("no_such_preset")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)
    invalid = tmp_path / "invalid.yaml"
    d = tiny_config_dict()
    d["labels"][0]["valid_range"] = [10, 1]
    invalid.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match="invalid.yaml"):
        load_config(invalid)


def test_base_inheritance_merges_sections_and_replaces_lists(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: gaia_rvs_hybrid\nname: child\ntraining: {max_epochs: 7}\n"
                     "features:\n  - {name: g, columns: [g], scaling: minmax}\n"
                     "model:\n  scalar_branches:\n    - {name: photometry, features: [g], layers: [4]}\n")
    cfg = load_config(child)
    base = load_config("gaia_rvs_hybrid")
    assert cfg.name == "child" and cfg.training.max_epochs == 7
    assert cfg.training.patience == base.training.patience          # merged, not replaced
    assert [f.name for f in cfg.features] == ["g"]                  # lists replace
    assert cfg.model.spectrum == base.model.spectrum
    grand = tmp_path / "sub" / "grand.yaml"
    grand.parent.mkdir()
    grand.write_text("base: ../child.yaml\nname: grand\n")          # relative to the file
    g = load_config(grand)
    assert g.name == "grand" and g.training.max_epochs == 7


def test_base_inheritance_errors(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\nname: a\n")
    b.write_text("base: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(a)
    c = tmp_path / "c.yaml"
    c.write_text("base: no_such_preset\nname: c\n")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(c)
    c.write_text("base: [1]\nname: c\n")
    with pytest.raises(ConfigError, match="base"):
        load_config(c)
