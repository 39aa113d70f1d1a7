"""Any label, end to end through the CLI: a label name unknown to kielnet, joined from a
separate reference catalogue by Gaia source_id, trains, predicts and is evaluated."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from astropy.table import Table

from kielnet.cli import main
from kielnet.io import load_xp_library, read_catalogue


@pytest.fixture
def any_label_setup(tmp_path, xp_subset_path, tiny_xp_config):
    stars = load_xp_library(xp_subset_path)
    teff = stars.labels["teff"]
    # a made-up label that the inputs predict (a function of Teff), given for only half the stars
    have = np.arange(len(stars)) % 2 == 0
    ref = Table({"SOURCE_ID": stars.extra["source_id"][have],
                 "MY_INDEX": (teff[have] - 5000.0) / 1000.0,
                 "MY_INDEX_ERR": np.full(have.sum(), 0.01)})
    ref_path = tmp_path / "reference.csv"
    ref.write(ref_path, format="ascii.csv")
    cfg = tiny_xp_config().with_overrides(training={"max_epochs": 1}, ensemble={"members_per_split": 1})
    d = cfg.model_dump(mode="json")
    d["labels"] = [d["labels"][0], d["labels"][1],
                   {"name": "my_index", "unit": "", "display": "my index", "aliases": ["MY_INDEX"],
                    "valid_range": [-10, 10]}]
    d["quality"]["neighbours"]["enabled"] = False
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(d))
    return stars, have, ref_path, cfg_path


def test_an_unknown_label_trains_and_predicts_end_to_end(capsys, tmp_path, xp_subset_path, any_label_setup):
    stars, have, ref_path, cfg_path = any_label_setup
    bundle = tmp_path / "bundle"
    assert main(["train", "--data", str(xp_subset_path), "--config", str(cfg_path), "--labels", str(ref_path),
                 "--out", str(bundle), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"joined by source_id: {have.sum()} stars matched, {(~have).sum()} without a reference row" in out
    meta = json.loads((bundle / "bundle.json").read_text())
    assert [lab["name"] for lab in meta["config"]["labels"]] == ["teff", "logg", "my_index"]

    cat_path = tmp_path / "cat.parquet"
    assert main(["predict", "--bundle", str(bundle), "--data", str(xp_subset_path), "--out", str(cat_path)]) == 0
    cat = read_catalogue(cat_path)
    assert len(cat) == len(stars)
    for col in ("my_index", "e_my_index", "sigma_my_index"):
        assert col in cat.colnames
    assert np.isfinite(np.asarray(cat["my_index"], float)).mean() > 0.9
    # the network learned it: it follows Teff for the stars that had no reference value too
    ok = ~have & np.isfinite(np.asarray(cat["my_index"], float))
    r = np.corrcoef(np.asarray(cat["my_index"], float)[ok], stars.labels["teff"][ok])[0, 1]
    assert r > 0.5

    metrics = tmp_path / "m.json"
    capsys.readouterr()
    assert main(["evaluate", "--bundle", str(bundle), "--data", str(xp_subset_path), "--labels", str(ref_path),
                 "--select", "xp-test-fifth", "--out", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert set(m) == {"teff", "logg", "my_index"}
    assert 0 < m["my_index"]["n"] < have.sum()               # the test fifth of the stars that have it


def test_a_label_missing_for_half_the_stars_is_masked_not_dropped(tmp_path, xp_subset_path, any_label_setup):
    from kielnet.config import load_config
    from kielnet.data.label_columns import join_labels
    from kielnet.data.preprocess import Preprocessor
    from kielnet.io.tables import read_reference_columns
    from kielnet.training.calibrate import training_rows

    stars, have, ref_path, cfg_path = any_label_setup
    cfg = load_config(cfg_path)
    joined, _ = join_labels(stars, read_reference_columns(ref_path), cfg.label_vocabulary, source=str(ref_path))
    pre = Preprocessor(cfg).fit(joined)
    tr = training_rows(joined, cfg, pre, log=lambda *_: None)
    j = cfg.label_names.index("my_index")
    assert len(tr.rows) == len(stars)                         # every star with a spectrum is trained on
    targets = tr.prep.targets[tr.rows]
    np.testing.assert_array_equal(np.isfinite(targets[:, j]), have[tr.rows])
    assert np.isfinite(targets[:, 0]).all()                   # its other labels are kept


def test_named_selections_split_the_library_by_id():
    from kielnet.data.selection import SELECTIONS, load_selection
    from kielnet.data.splits import crc32_holdout

    ids = np.array([f"2M{i:08d}" for i in range(500)])
    t = Table({"id": ids})
    test_mask, _ = load_selection("xp-test-fifth").apply(t)
    train_mask, rep = SELECTIONS["xp-train"].apply(t)
    np.testing.assert_array_equal(test_mask, crc32_holdout(ids, 5, 0))
    np.testing.assert_array_equal(train_mask, ~test_mask)
    assert 60 < test_mask.sum() < 140
    assert load_selection("gaia-rvs-training").name == "gaia_rvs_training"
