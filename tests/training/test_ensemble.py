"""Deep-ensemble training: work directories, resuming, validation of the training table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.training.ensemble import train_ensemble
from kielnet.training.plan import load_member, member_seed, sample_weights


@pytest.fixture
def table(make_table):
    return make_table(n=90, n_pix=40, seed=21)


def test_ensemble_layout_and_bundle_contents(table, tiny_config):
    cfg = tiny_config.with_overrides(ensemble={"n_splits": 2, "members_per_split": 2})
    logs = []
    b = train_ensemble(table, cfg, progress=False, log=logs.append)
    assert len(b.members) == 4
    assert [m.split for m in b.member_info] == [0, 0, 1, 1]
    assert len({m.seed for m in b.member_info}) == 4
    assert all(m.n_train + m.n_val <= len(table) for m in b.member_info)
    assert set(b.running_dispersion) == set(cfg.label_names)
    assert set(b.validation) == set(cfg.label_names)
    # label / feature ranges are those of the training stars
    assert b.label_ranges["teff"] == pytest.approx((table.labels["teff"].min(), table.labels["teff"].max()))
    bp_rp = table.scalars["bp"] - table.scalars["rp"]
    assert b.feature_ranges["bp_rp"] == pytest.approx((bp_rp.min(), bp_rp.max()))
    assert b.training_data["n_rows"] == 90 and b.training_data["n_trained"] == 90
    assert sum("member" in line for line in logs) == 4


def test_workdir_refuses_a_different_config(table, tiny_config, tmp_path):
    wd = tmp_path / "work"
    train_ensemble(table, tiny_config, workdir=wd, progress=False, log=lambda *_: None)
    assert (wd / "run.json").is_file() and (wd / "member_000.safetensors").is_file()
    other = tiny_config.with_overrides(training={"lr": 1e-2})
    with pytest.raises(InputError) as info:
        train_ensemble(table, other, workdir=wd, progress=False, log=lambda *_: None)
    assert info.value.field == "workdir" and str(wd) in str(info.value)
    # different training data is refused too
    with pytest.raises(InputError, match="different training run"):
        train_ensemble(table.take(np.arange(80)), tiny_config, workdir=wd, progress=False,
                       log=lambda *_: None)


def test_workdir_resumes_finished_members(table, tiny_config, tmp_path):
    wd = tmp_path / "work"
    cfg = tiny_config.with_overrides(ensemble={"members_per_split": 2})
    first = train_ensemble(table, cfg, workdir=wd, progress=False, log=lambda *_: None)
    logs = []
    second = train_ensemble(table, cfg, workdir=wd, progress=False, log=logs.append)
    assert sum("resumed" in line for line in logs) == 2
    for a, b in zip(first.members, second.members):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_member(wd / "member_001.safetensors")[1].seed == member_seed(0, 0, 1)


def test_workdir_resumes_when_only_post_training_sections_change(table, tiny_config, tmp_path):
    """Reporting, uncertainty, inference and quality act after the members are trained:
    changing them must not invalidate the finished members."""
    wd = tmp_path / "work"
    train_ensemble(table, tiny_config, workdir=wd, progress=False, log=lambda *_: None)
    later = tiny_config.with_overrides(name="renamed", uncertainty={"degree": 0},
                                       inference={"n_realisations": 3},
                                       quality={"embedding_ood": {"enabled": True}})
    logs = []
    b = train_ensemble(table, later, workdir=wd, progress=False, log=logs.append)
    assert any("resumed" in line for line in logs) and b.ood is not None


def test_running_dispersion_on_training_residuals_as_the_paper(table, tiny_config, tmp_path):
    """uncertainty.residuals = training: the whole ensemble's residuals on its training
    stars (Gaia-RVS §3.4), added to the internal spread without subtraction."""
    from kielnet.inference.predict import member_predictions
    from kielnet.quality.uncertainty import fit_running_dispersion

    wd = tmp_path / "work"
    cfg = tiny_config.with_overrides(ensemble={"n_splits": 2, "members_per_split": 2})
    held = train_ensemble(table, cfg, workdir=wd, progress=False, log=lambda *_: None)
    paper = train_ensemble(table, cfg.with_overrides(uncertainty={"residuals": "training",
                                                                  "subtract_internal": False}),
                           workdir=wd, progress=False, log=lambda *_: None)
    pre = paper.preprocessor
    p = member_predictions(paper.build_members(), pre.transform(table, with_labels=False), pre.inverse_labels)
    u = cfg.uncertainty
    for j, name in enumerate(cfg.label_names):
        mean = p[:, :, j].mean(axis=0)
        want = fit_running_dispersion(mean, mean - table.labels[name], n_bins=u.n_bins, degree=u.degree,
                                      min_per_bin=u.min_per_bin)
        x = np.linspace(*paper.label_ranges[name], 7)
        np.testing.assert_allclose(paper.running_dispersion[name](x), want(x), rtol=1e-6)
        assert not np.allclose(held.running_dispersion[name](x), want(x))
    # the held-out validation block is the same in both (it does not depend on the fit's residuals)
    assert paper.validation[name]["robust_sigma"] == held.validation[name]["robust_sigma"]


def test_out_of_range_labels_are_reported_and_not_trained_on(table, tiny_config):
    t = table.take(np.arange(len(table)))
    t.labels["teff"][[0, 1]] = [150000.0, 10.0]   # unphysical
    t.labels["logg"][2] = np.nan                   # unknown
    logs = []
    b = train_ensemble(t, tiny_config, progress=False, log=logs.append)
    msg = [line for line in logs if "outside their valid range" in line]
    assert len(msg) == 1 and "teff=2" in msg[0] and "logg" not in msg[0]
    assert b.label_ranges["teff"][1] < 150000.0 and b.label_ranges["teff"][0] > 10.0
    assert b.training_data["label_counts"]["teff"] == len(t) - 2
    assert b.training_data["label_counts"]["logg"] == len(t) - 1
    assert b.training_data["missing"] == {"label:logg": 1}


def test_stars_without_usable_spectrum_are_skipped(table, tiny_config):
    t = table.take(np.arange(len(table)))
    t.flux[[3, 4]] = np.nan
    logs = []
    b = train_ensemble(t, tiny_config, progress=False, log=logs.append)
    assert b.training_data["n_trained"] == len(t) - 2
    assert any("2 stars have an unusable spectrum" in line for line in logs)


@pytest.mark.parametrize("mutate, needle", [
    (lambda t: t.labels.pop("fe_h"), "fe_h"),
    (lambda t: t.labels.__setitem__("alpha_m", np.full(len(t), np.nan)), "alpha_m"),
    (lambda t: t.scalars.pop("bp"), "bp"),
])
def test_unusable_training_table_is_an_input_error(table, tiny_config, mutate, needle):
    t = table.take(np.arange(len(table)))
    mutate(t)
    with pytest.raises(InputError) as info:
        train_ensemble(t, tiny_config, progress=False, log=lambda *_: None)
    assert info.value.field == needle


def test_empty_training_table(tiny_config):
    empty = StarTable(ids=np.array([], dtype=str), flux=np.zeros((0, 40)), meta={"source": "empty.fits"})
    with pytest.raises(InputError, match="empty") as info:
        train_ensemble(empty, tiny_config, progress=False, log=lambda *_: None)
    assert "empty.fits" in str(info.value)


def test_sample_weights(tiny_config):
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(50, 4))
    rows = np.arange(10, 50)
    w = sample_weights(tiny_config, targets, rows)
    assert (w[:10] == 1).all()
    assert w[rows].mean() == pytest.approx(1.0)
    assert w[rows].std() > 0
    flat = tiny_config.with_overrides(training={"weighting": {"kind": "none"}})
    assert (sample_weights(flat, targets, rows) == 1).all()


def test_member_seeds_are_distinct():
    seeds = {member_seed(b, k, m) for b in range(3) for k in range(4) for m in range(4)}
    assert len(seeds) == 3 * 4 * 4


def test_workdir_of_an_older_kielnet_resumes_when_new_fields_keep_their_defaults(table, tiny_config, tmp_path):
    """A run.json written before config fields existed (here: input groups, σ head, input
    dropout) compares them at their defaults; a field set away from its default is refused."""
    wd = tmp_path / "work"
    train_ensemble(table, tiny_config, workdir=wd, progress=False, log=lambda *_: None)
    stamp = json.loads((wd / "run.json").read_text())
    for key in ("heteroscedastic", "sigma_head", "sigma_features"):
        stamp["config"]["model"].pop(key)
    for key in ("input_dropout", "sigma_loss", "sigma_beta"):
        stamp["config"]["training"].pop(key)
    stamp["config"].pop("input_groups")
    (wd / "run.json").write_text(json.dumps(stamp))
    logs = []
    train_ensemble(table, tiny_config, workdir=wd, progress=False, log=logs.append)
    assert any("resumed" in line for line in logs)
    with pytest.raises(InputError, match="input_dropout"):
        train_ensemble(table, tiny_config.with_overrides(training={"input_dropout": 0.1}), workdir=wd,
                       progress=False, log=lambda *_: None)
