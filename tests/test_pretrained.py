"""The pretrained model shipped inside the package (kielnet.pretrained)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from kielnet.cli import main
from kielnet.inference.bundle import load_bundle
from kielnet.inference.predict import predict
import pyarrow.parquet as pq
from kielnet.pretrained import MODELS_DIR, available, model_card, resolve_bundle

NAME = "xp-apogee-dr17"


def test_the_model_ships_and_is_small():
    assert NAME in available()
    path = available()[NAME]
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    assert size <= 25e6, size
    card = model_card(NAME)
    for needle in ("Training data", "Label ranges", "Input ranges", "Held-out test metrics", "coverage",
                   "Licence", "cite", "sigma"):
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
        np.testing.assert_allclose(np.asarray(cat[c], float), np.asarray(ref[c], float), rtol=2e-5, atol=1e-6,
                                   err_msg=c)


def test_cli_models_and_predict_by_name(xp_subset_path, tmp_path, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert NAME in out and "MB" in out
    rc = main(["predict", "--bundle", NAME, "--data", str(xp_subset_path), "--out", str(tmp_path / "c.parquet")])
    assert rc == 0
    cat = pq.read_table(tmp_path / "c.parquet").to_pydict()
    assert len(cat["id"]) == 1000 and (np.asarray(cat["status"]) == "ok").mean() > 0.8
