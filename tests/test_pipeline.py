"""Integration: a tiny ensemble trained on the 1,000-star XP-library subset (crc32 training
part) predicts the held-out fifth better than a constant."""

from __future__ import annotations

import numpy as np
import pytest

from kielnet.data.splits import crc32_holdout
from kielnet.stats import robust_sigma
from kielnet.pipeline import catalogue_metrics, holdout_split

LABELS = ["teff", "logg", "fe_h", "alpha_m"]


def test_holdout_split_is_the_crc32_fifth(xp_subset):
    train, test = holdout_split(xp_subset)
    mask = crc32_holdout(xp_subset.ids)
    assert len(train) + len(test) == len(xp_subset)
    assert test.ids.tolist() == xp_subset.ids[mask].tolist()
    assert train.ids.tolist() == xp_subset.ids[~mask].tolist()
    assert set(train.ids).isdisjoint(test.ids)


def test_one_row_per_held_out_star_in_order(tiny_holdout, xp_subset):
    cat, test = tiny_holdout.catalogue, tiny_holdout.test
    mask = crc32_holdout(xp_subset.ids)
    assert len(cat) == len(test) == int(mask.sum())
    assert cat["id"].tolist() == xp_subset.ids[mask].tolist()
    assert cat["source_id"].tolist() == xp_subset.extra["source_id"][mask].tolist()
    for name in LABELS:
        for col in (name, f"e_{name}", f"sigma_{name}"):
            assert col in cat.colnames
            assert np.isfinite(np.asarray(cat[col], float)).all()


@pytest.mark.parametrize("name", ["teff", "logg"])
def test_better_than_a_constant_predictor(tiny_holdout, name):
    cat, train, test = tiny_holdout.catalogue, tiny_holdout.train, tiny_holdout.test
    truth = test.labels[name]
    resid = np.asarray(cat[name], float) - truth
    const = np.full_like(truth, np.nanmedian(train.labels[name])) - truth
    # robust scatter (bias-free) and median absolute error (bias included)
    assert robust_sigma(resid) < 0.7 * robust_sigma(const)
    assert np.nanmedian(np.abs(resid)) < 0.7 * np.nanmedian(np.abs(const))
    m = tiny_holdout.metrics[name]
    assert m["n"] == len(test)
    assert m["robust_sigma"] == pytest.approx(robust_sigma(resid))


def test_metrics_and_timings_are_recorded(tiny_holdout):
    res = tiny_holdout
    assert set(res.metrics) == set(LABELS)
    assert res.metrics == catalogue_metrics(res.catalogue, res.test, LABELS)
    for m in res.metrics.values():
        assert 0.0 <= m["coverage_1sigma"] <= 1.0
    assert 0 < res.train_seconds < 120 and res.predict_seconds < 30
    assert res.bundle.training_data["n_rows"] == len(res.train)
    assert any("held out" in line for line in res.logs)


def test_validation_uncertainties_are_sensible(tiny_holdout):
    """sigma_X (e_X (+) running dispersion) should roughly cover the held-out residuals."""
    cat, test = tiny_holdout.catalogue, tiny_holdout.test
    for name in ["teff", "logg"]:
        sigma = np.asarray(cat[f"sigma_{name}"], float)
        e = np.asarray(cat[f"e_{name}"], float)
        assert (sigma >= e - 1e-9).all() and (e >= 0).all()
        cov = tiny_holdout.metrics[name]["coverage_1sigma"]
        assert 0.3 < cov < 0.95, (name, cov)


def test_run_holdout_passes_the_cluster_to_training(xp_subset, monkeypatch):
    """``run_holdout(cluster=...)`` trains the members on that cluster (the benchmark's
    ``--cluster``); stop at training: the call is what is checked."""
    import kielnet.pipeline as pipeline

    seen = {}

    def fake_train(train, config, **kw):
        seen.update(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(pipeline, "train_ensemble", fake_train)
    from kielnet.config import load_config

    with pytest.raises(RuntimeError, match="stop here"):
        pipeline.run_holdout(xp_subset, load_config("xp_hybrid"), cluster="local:2", log=lambda *a: None)
    assert seen["cluster"] == "local:2"
