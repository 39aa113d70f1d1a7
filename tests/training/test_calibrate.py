"""Out-of-fold calibration: label support learned from a training set in which one label
exists only for part of the stars, and recalibrating an existing bundle."""

from __future__ import annotations

import numpy as np
import pytest

from kielnet.config import KielnetConfig
from kielnet.inference.predict import predict
from kielnet.quality.flags import FLAG_BITS, usable_mask
from kielnet.training.calibrate import recalibrate
from kielnet.training.ensemble import train_ensemble
from kielnet.training.out_of_fold import load_out_of_fold

HOT = 5600.0  # the training set has no fe_h above this Teff


def _config(tiny_config_dict, **nb) -> KielnetConfig:
    return KielnetConfig.from_dict(tiny_config_dict(
        training={"max_epochs": 25, "batch_size": 32, "lr": 3e-3, "patience": 25, "threads": 1,
                  "weighting": {"kind": "none", "labels": ["teff", "logg"]}},
        ensemble={"n_splits": 2, "members_per_split": 1, "seed": 0},
        quality={"neighbours": {"enabled": True, "k_support": 15, "k_local": 40, "min_local": 10,
                                "outlier_budget": 0.05, **nb}}))


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    from conftest import synthetic_table, tiny_config_dict

    table = synthetic_table(n=600, n_pix=48, seed=5)
    table.labels["fe_h"] = np.where(table.labels["teff"] > HOT, np.nan, table.labels["fe_h"])
    wd = tmp_path_factory.mktemp("partial") / "work"
    bundle = train_ensemble(table, _config(tiny_config_dict), workdir=wd, progress=False, log=lambda *_: None)
    return table, bundle, wd


def test_label_missing_in_one_region_is_withheld_there(partial):
    from conftest import synthetic_table

    _, bundle, _ = partial
    new = synthetic_table(n=300, n_pix=48, seed=77)
    cat = predict(bundle, new)
    teff = new.labels["teff"]
    hot, cool = teff > HOT + 500, teff < HOT - 800
    fe = np.asarray(cat["fe_h"], float)
    assert np.mean(np.isnan(fe[hot])) > 0.9         # no reference [Fe/H] there in training: withheld
    assert np.mean(np.isfinite(fe[cool])) > 0.9     # reported where the training set had it
    withheld = np.isnan(fe)
    flags = np.asarray(cat["flag"])
    assert ((flags[withheld] >> FLAG_BITS["label_not_reported"]) & 1).all()
    assert all("fe_h:support" in s for s in np.asarray(cat["not_reported"])[withheld])
    assert np.all(np.asarray(cat["support_fe_h"])[withheld] < 0.5)
    # the other labels of those rows are still reported, and usable where nothing else is flagged
    assert np.isfinite(np.asarray(cat["teff"], float)[withheld]).all()
    plain = withheld & ((flags & ~(1 << FLAG_BITS["label_not_reported"])) == 0)
    assert usable_mask(flags, cat["teff"])[plain].all() and not usable_mask(flags, cat["fe_h"])[plain].any()
    assert bundle.neighbours.report["labels"]["fe_h"]["withheld_fraction"] > 0.2


def test_neighbours_fitted_on_out_of_fold_stars_only(partial):
    _, bundle, wd = partial
    oof, _ = load_out_of_fold(wd / "out_of_fold.parquet")
    nb = bundle.neighbours
    assert len(nb.coords) == len(oof.pred)          # one reference star per out-of-fold star
    np.testing.assert_array_equal(nb.has_label, np.isfinite(oof.truth))
    # the threshold is the quantile of the reference stars' own (leave-self-out) scores
    from kielnet.quality.neighbours import positions

    ref = nb.assess(positions(bundle.preprocessor.forward_labels(oof.pred), oof.snr), exclude_self=True)
    assert nb.outlier_threshold == pytest.approx(np.quantile(ref.outlier_score[np.isfinite(ref.outlier_score)],
                                                             1 - 0.05))


def test_recalibrate_reproduces_training_and_applies_new_settings(partial, tiny_config_dict):
    table, bundle, _ = partial
    again = recalibrate(_copy(bundle), table, log=lambda *_: None)
    assert again.fingerprint() == bundle.fingerprint()  # same out-of-fold stars, same fits
    stricter = recalibrate(_copy(bundle), table, config=_config(tiny_config_dict, min_support=0.95),
                           log=lambda *_: None)
    assert stricter.neighbours.min_support == 0.95
    assert (stricter.neighbours.report["labels"]["fe_h"]["withheld_fraction"]
            > bundle.neighbours.report["labels"]["fe_h"]["withheld_fraction"])
    with pytest.raises(Exception, match="not the table the bundle was trained on"):
        recalibrate(_copy(bundle), table.take(np.arange(100)), log=lambda *_: None)
    other = table.take(np.arange(len(table)))
    other.labels["teff"] = other.labels["teff"][::-1].copy()  # same stars, other labels
    with pytest.raises(Exception, match="label 'teff'"):
        recalibrate(_copy(bundle), other, log=lambda *_: None)


def _copy(bundle):
    import copy

    return copy.copy(bundle)


def test_bundle_out_of_fold_rebuilds_the_training_time_predictions(partial):
    from kielnet.training.calibrate import bundle_out_of_fold

    table, bundle, wd = partial
    saved, ids = load_out_of_fold(wd / "out_of_fold.parquet")
    _, used, _, oof, nets = bundle_out_of_fold(bundle, table, log=lambda *_: None)
    assert len(nets) == len(bundle.members)
    np.testing.assert_array_equal(np.asarray(used.ids)[oof.rows].astype(str), np.asarray(ids).astype(str))
    np.testing.assert_allclose(oof.pred, saved.pred, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.isfinite(oof.truth), np.isfinite(saved.truth))
    # any other table is refused, naming what differs
    from kielnet.errors import InputError

    with pytest.raises(InputError, match="not the table the bundle was trained on"):
        bundle_out_of_fold(bundle, table.take(np.arange(len(table)) != 3), log=lambda *_: None)


def test_tail_regime_withholds_only_that_label_there_and_survives_save_load(partial, tmp_path):
    from conftest import synthetic_table

    from kielnet.artifact import load_bundle, save_bundle
    from kielnet.quality.tails import TailRegimes

    _, bundle, _ = partial
    new = synthetic_table(n=300, n_pix=48, seed=78)
    plain = predict(bundle, new)
    b = _copy(bundle)
    names = b.config.label_names
    b.tail_regimes = TailRegimes(names, {n: [] for n in names} | {"teff": [(4500.0, 5500.0, 0.2, 250)]})
    cat = predict(b, new)
    t0 = np.asarray(plain["teff"], float)
    inside = (t0 >= 4500.0) & (t0 < 5500.0)
    assert inside.sum() > 30 and (~inside & np.isfinite(t0)).sum() > 30
    teff = np.asarray(cat["teff"], float)
    assert np.isnan(teff[inside]).all() and np.isfinite(teff[~inside & np.isfinite(t0)]).all()
    assert np.isnan(np.asarray(cat["sigma_teff"], float)[inside]).all()
    reasons = np.asarray(cat["not_reported"])
    assert all("teff:tails" in r for r in reasons[inside]) and not any("tails" in r for r in reasons[~inside])
    flags = np.asarray(cat["flag"])
    assert ((flags[inside] >> FLAG_BITS["label_not_reported"]) & 1).all()
    np.testing.assert_array_equal(np.asarray(cat["logg"], float), np.asarray(plain["logg"], float))
    assert any("tail regimes" in c and "teff predicted in [4500, 5500) K" in c for c in cat.meta["comments"])
    save_bundle(b, tmp_path / "b")
    back = load_bundle(tmp_path / "b")
    assert back.tail_regimes.intervals == b.tail_regimes.intervals
    assert back.fingerprint() == b.fingerprint() and back.fingerprint() != bundle.fingerprint()


def test_recalibrate_fits_tail_regimes_on_out_of_fold_stars(partial, tiny_config_dict):
    table, bundle, wd = partial
    cfg = _config(tiny_config_dict)
    cfg = cfg.with_overrides(quality={"tail_regimes": {"enabled": True, "bin_stars": 40, "max_rate": 0.2,
                                                       "label_max_rate": {"logg": 0.5}}})
    again = recalibrate(_copy(bundle), table, config=cfg, log=lambda *_: None)
    tr = again.tail_regimes
    assert tr is not None and tr.bin_stars == 40 and tr.max_rate == 0.2 and tr.rate_of("logg") == 0.5
    oof, _ = load_out_of_fold(wd / "out_of_fold.parquet")
    rep = tr.report["labels"]["teff"]
    assert rep["n_reference"] == (np.isfinite(oof.truth[:, 0]) & oof.complete).sum() and rep["n_bins"] == rep["n_reference"] // 40
    assert all(rate > tr.rate_of(n) for n, iv in tr.intervals.items() for _, _, rate, _ in iv)
    assert bundle.tail_regimes is None  # the original bundle (config without it) has none


def test_local_ensemble_disagreement_against_out_of_fold_stars_predicted_alike(tmp_path, tiny_config_dict):
    """quality.ensemble_spread.local: the out-of-fold file carries each star's members'
    disagreement, the neighbour model keeps it, and a new star's spread_score is its own
    disagreement against the quantile of its neighbours' — flagged where above 1."""
    from conftest import synthetic_table

    from kielnet.compute import member_predictions
    from kielnet.quality.neighbours import positions
    from kielnet.quality.spread import log_disagreement

    cfg = KielnetConfig.from_dict(tiny_config_dict(
        training={"max_epochs": 6, "batch_size": 32, "lr": 3e-3, "patience": 6, "threads": 1,
                  "weighting": {"kind": "none", "labels": ["teff", "logg"]}},
        ensemble={"n_splits": 2, "members_per_split": 2, "seed": 0},
        quality={"neighbours": {"enabled": True, "k_support": 15, "k_local": 40, "min_local": 10},
                 "ensemble_spread": {"enabled": True, "quantile": 0.8, "local": True}}))
    table = synthetic_table(n=400, n_pix=48, seed=6)
    wd = tmp_path / "work"
    bundle = train_ensemble(table, cfg, workdir=wd, progress=False, log=lambda *_: None)
    oof, _ = load_out_of_fold(wd / "out_of_fold.parquet")
    assert oof.disagreement is not None and np.isfinite(oof.disagreement).all()
    nb = bundle.neighbours
    np.testing.assert_allclose(nb.disagreement, oof.disagreement.astype(np.float32))
    new = synthetic_table(n=200, n_pix=48, seed=78)
    cat = predict(bundle, new)
    prep = bundle.preprocessor.transform(new, with_labels=False)
    preds = member_predictions(bundle.build_members(), prep, bundle.preprocessor.inverse_labels)
    mean = preds.mean(axis=0)
    a = nb.assess(positions(bundle.preprocessor.forward_labels(mean), prep.snr))
    want = np.exp(log_disagreement(bundle.preprocessor.forward_labels(preds)) - a.disagreement_threshold)
    np.testing.assert_allclose(np.asarray(cat["spread_score"], float), want, rtol=1e-6)
    flagged = ((np.asarray(cat["flag"]) >> FLAG_BITS["ensemble_disagreement"]) & 1).astype(bool)
    np.testing.assert_array_equal(flagged, want > 1)
    assert 0 < flagged.sum() < len(flagged)
    assert "nearest out-of-fold" in cat["spread_score"].description
    # the global calibration would have judged these stars otherwise
    glob = bundle.spread.score(bundle.preprocessor.forward_labels(preds))
    assert not np.allclose(glob, want)
    # kielnet calibrate switches it without retraining: off, the threshold over all training stars again
    spread_cfg = cfg.quality.ensemble_spread.model_dump()
    off = recalibrate(_copy(bundle), table, config=cfg.with_overrides(quality={"ensemble_spread": {
        **spread_cfg, "local": False}}), log=lambda *_: None)
    assert off.neighbours.disagreement is None
    np.testing.assert_allclose(np.asarray(predict(off, new)["spread_score"], float), glob, rtol=1e-6)
    on = recalibrate(_copy(off), table, config=cfg, log=lambda *_: None)
    np.testing.assert_allclose(on.neighbours.disagreement, nb.disagreement)


def test_local_disagreement_needs_two_members_per_split_else_the_global_threshold(tmp_path, tiny_config_dict):
    """One member per split has no disagreement of its own on its held-out stars: the
    bundle keeps the threshold over all training stars (out of bag across splits) rather
    than a flag that never fires."""
    from conftest import synthetic_table

    from kielnet.compute import member_predictions

    cfg = KielnetConfig.from_dict(tiny_config_dict(
        training={"max_epochs": 4, "batch_size": 32, "lr": 3e-3, "patience": 4, "threads": 1,
                  "weighting": {"kind": "none", "labels": ["teff", "logg"]}},
        ensemble={"n_splits": 3, "members_per_split": 1, "seed": 0},
        quality={"neighbours": {"enabled": True, "k_support": 15, "k_local": 40, "min_local": 10},
                 "ensemble_spread": {"enabled": True, "local": True}}))
    bundle = train_ensemble(synthetic_table(n=300, n_pix=48, seed=8), cfg, workdir=tmp_path / "w", progress=False,
                            log=lambda *_: None)
    assert bundle.neighbours.disagreement is None and bundle.spread is not None
    new = synthetic_table(n=80, n_pix=48, seed=79)
    cat = predict(bundle, new)
    preds = member_predictions(bundle.build_members(), bundle.preprocessor.transform(new, with_labels=False),
                               bundle.preprocessor.inverse_labels)
    np.testing.assert_allclose(np.asarray(cat["spread_score"], float),
                               bundle.spread.score(bundle.preprocessor.forward_labels(preds)), rtol=1e-6)
