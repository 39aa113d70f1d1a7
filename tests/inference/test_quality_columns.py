"""Quality machinery carried by a bundle (config.quality) and applied by predict:
ood_score + out_of_distribution flag, spread_score + ensemble_disagreement flag, t-SNE
classification, 8-digit flag_boundary."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from kielnet.config import KielnetConfig
from kielnet.artifact import load_bundle, save_bundle
from kielnet.inference.predict import predict
from kielnet.quality.boundary import parse_boundary_flags
from kielnet.quality.flags import FLAG_BITS
from kielnet.training.ensemble import train_ensemble
from kielnet.training.quality import attach_quality

pytest.importorskip("openTSNE")

QUALITY = {"embedding_ood": {"enabled": True, "max_reference": 500},
           "ensemble_spread": {"enabled": True, "max_reference": 500},
           "tsne": {"reference_size": 150, "perplexities": [10, 20]},
           "boundary_flag": {"enabled": True, "training_like": "tsne"}}


def five_label_table(make_table, n, seed):
    """Synthetic stars with the five labels of the boundary flag and a parallax column."""
    t = make_table(n=n, n_pix=48, seed=seed)
    rng = np.random.default_rng(seed + 100)
    labels = dict(t.labels, m_h=t.labels["fe_h"] + 0.5 * t.labels["alpha_m"])
    scalars = dict(t.scalars, parallax=rng.uniform(0.2, 5.0, n))
    return replace(t, labels=labels, scalars=scalars, label_errs={})


@pytest.fixture(scope="module")
def quality_bundle(tmp_path_factory):
    from conftest import synthetic_table, tiny_config_dict

    d = tiny_config_dict(quality=QUALITY, ensemble={"n_splits": 1, "members_per_split": 2},
                         training={"batch_size": 32, "max_epochs": 6, "patience": 50, "lr": 3e-3,
                                   "threads": 1, "weighting": {"kind": "none"}})
    d["features"].append({"name": "parallax", "columns": ["parallax"]})
    d["model"]["scalar_branches"][0]["features"].append("parallax")
    d["labels"].insert(2, {"name": "m_h", "unit": "dex", "valid_range": [-5.0, 1.5]})
    cfg = KielnetConfig.from_dict(d)
    train = five_label_table(synthetic_table, 300, 1)
    bundle = train_ensemble(train, cfg, progress=False, log=lambda *_: None)
    path = save_bundle(bundle, tmp_path_factory.mktemp("qb") / "bundle")
    return bundle, path


def test_bundle_carries_and_reloads_the_quality_machinery(quality_bundle):
    bundle, path = quality_bundle
    assert bundle.ood is not None and bundle.ood.n_members == 2
    # calibrated out of bag: on the stars of the split's validation side only
    assert bundle.spread is not None and bundle.spread.n_members == 2
    assert bundle.spread.calibration == "out_of_bag" and 40 < bundle.spread.n_reference < 120
    assert bundle.tsne_reference.shape == (150, 48) and bundle.tsne_reference.dtype == np.float32
    assert (path / "embedding_ood.safetensors").is_file() and (path / "tsne_reference.safetensors").is_file()
    back = load_bundle(path)
    np.testing.assert_array_equal(back.tsne_reference, bundle.tsne_reference)
    np.testing.assert_allclose(back.ood.scales, bundle.ood.scales)
    assert back.spread.to_dict() == bundle.spread.to_dict()
    (path / "tsne_reference.safetensors").rename(path / "moved")
    try:
        with pytest.raises(Exception, match="tsne_reference"):
            load_bundle(path)
    finally:
        (path / "moved").rename(path / "tsne_reference.safetensors")


def test_predict_flags_an_unlike_population(quality_bundle, make_table):
    bundle, _ = quality_bundle
    like = five_label_table(make_table, 60, 2)
    # a population the training set never saw: spectra with a strong feature it lacks
    odd = five_label_table(make_table, 60, 3)
    x = np.linspace(0, 1, odd.flux.shape[1])
    odd = replace(odd, flux=odd.flux * (1.0 + 2.0 * np.exp(-0.5 * ((x - 0.3) / 0.05) ** 2)))
    from kielnet.data.startable import StarTable

    both = StarTable.concat([like, odd])
    cat = predict(bundle, both)
    for col in ("ood_score", "spread_score", "tsne_training_like", "flag_boundary"):
        assert col in cat.colnames
    spread = np.asarray(cat["spread_score"])
    assert np.median(spread[60:]) > np.median(spread[:60])
    spread_bit = (np.asarray(cat["flag"]) >> FLAG_BITS["ensemble_disagreement"]) & 1
    np.testing.assert_array_equal(spread_bit == 1, spread > 1.0)
    assert all(("ensemble_disagreement" in s) == (b == 1) for s, b in zip(cat["status"], spread_bit))
    score = np.asarray(cat["ood_score"])
    assert np.median(score[60:]) > 1.0 > np.median(score[:60])
    ood_bit = (np.asarray(cat["flag"]) >> FLAG_BITS["out_of_distribution"]) & 1
    np.testing.assert_array_equal(ood_bit == 1, score > 1.0)
    assert all(("out_of_distribution" in s) == (b == 1) for s, b in zip(cat["status"], ood_bit))
    digits = parse_boundary_flags(np.asarray(cat["flag_boundary"]))
    # digit 8 is the t-SNE classification in this configuration
    np.testing.assert_array_equal(digits["tsne"], ~np.asarray(cat["tsne_training_like"]))
    assert digits["tsne"][60:].mean() > 0.8 and digits["tsne"][:60].mean() < 0.3
    # G and parallax digits follow the bundle's training ranges
    g = like.scalars["g"]
    lo, hi = bundle.feature_ranges["g"]
    np.testing.assert_array_equal(digits["g"][:60], (g < lo) | (g > hi))
    assert any("flag_boundary" in c for c in cat.meta["comments"])


def test_boundary_digits_of_constructed_stars(quality_bundle, make_table):
    bundle, _ = quality_bundle
    t = five_label_table(make_table, 40, 4)
    scal = dict(t.scalars)
    scal["g"] = scal["g"].copy()
    scal["g"][:5] = 25.0            # far fainter than any training star
    scal["parallax"] = scal["parallax"].copy()
    scal["parallax"][5:10] = np.nan  # unknown: cannot be shown inside the range
    cat = predict(bundle, replace(t, scalars=scal))
    d = parse_boundary_flags(np.asarray(cat["flag_boundary"]))
    assert d["g"][:5].all()
    assert d["parallax"][5:10].all()


def test_fast_score_as_digit_eight(quality_bundle, make_table):
    bundle, _ = quality_bundle
    cfg = bundle.config.with_overrides(quality={"boundary_flag": {"training_like": "fast_score"},
                                                "tsne": {"reference_size": 0}})
    b2 = replace(bundle, config=cfg, tsne_reference=None)
    cat = predict(b2, five_label_table(make_table, 30, 5))
    assert "tsne_training_like" not in cat.colnames
    d = parse_boundary_flags(np.asarray(cat["flag_boundary"]))
    fast = (np.asarray(cat["ood_score"]) > 1.0) | (np.asarray(cat["spread_score"]) > 1.0)
    np.testing.assert_array_equal(d["tsne"], fast)
    # with the embedding score switched off, digit 8 is the disagreement score alone
    b3 = replace(b2, ood=None, config=cfg.with_overrides(quality={"embedding_ood": {"enabled": False}}))
    cat = predict(b3, five_label_table(make_table, 30, 5))
    assert "ood_score" not in cat.colnames
    d = parse_boundary_flags(np.asarray(cat["flag_boundary"]))
    np.testing.assert_array_equal(d["tsne"], np.asarray(cat["spread_score"]) > 1.0)


def test_config_requires_what_digit_eight_needs(tiny_config_dict):
    from kielnet.errors import ConfigError

    with pytest.raises(ConfigError, match="reference_size"):
        KielnetConfig.from_dict(tiny_config_dict(quality={"boundary_flag": {"enabled": True,
                                                                            "training_like": "tsne"}}))
    with pytest.raises(ConfigError, match="embedding_ood"):
        KielnetConfig.from_dict(tiny_config_dict(quality={"boundary_flag": {"enabled": True,
                                                                            "training_like": "fast_score"}}))


def test_attach_quality_refits_an_existing_bundle(synthetic_bundle, make_table):
    cfg = synthetic_bundle.config.with_overrides(quality={"embedding_ood": {"enabled": True},
                                                          "ensemble_spread": {"enabled": True}})
    b = replace(synthetic_bundle, config=cfg, ood=None, spread=None)
    attach_quality(b, make_table(n=120, n_pix=48, seed=30))
    assert b.ood is not None and b.ood.n_members == len(b.members)
    assert b.spread is not None and b.spread.n_members == len(b.members) and b.spread.n_reference == 120
    assert b.spread.calibration == "training"  # no split information: all members
    cols = predict(b, make_table(n=10, n_pix=48, seed=31)).colnames
    assert "ood_score" in cols and "spread_score" in cols


def test_a_single_network_gets_no_spread_score_and_the_log_says_why(tiny_config, make_table):
    cfg = tiny_config.with_overrides(quality={"ensemble_spread": {"enabled": True}},
                                     ensemble={"n_splits": 1, "members_per_split": 1})
    logs = []
    b = train_ensemble(make_table(n=60, n_pix=48, seed=40), cfg, progress=False, log=logs.append)
    assert b.spread is None and any("ensemble_spread skipped" in line for line in logs)
    assert "spread_score" not in predict(b, make_table(n=5, n_pix=48, seed=41)).colnames
