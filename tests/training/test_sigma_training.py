"""Training for per-star σ: heteroscedastic outputs, input dropout, out-of-fold σ fits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kielnet.config import KielnetConfig, TrainingConfig
from kielnet.data.preprocess import Preprocessor
from kielnet.artifact import load_bundle, save_bundle
from kielnet.inference.predict import predict
from kielnet.models.hybrid import LOG_SIGMA_RANGE, HybridNet, split_outputs
from kielnet.pipeline import holdout_split, run_holdout
from kielnet.quality.flags import FLAG_BITS
from kielnet.training.ensemble import train_ensemble
from kielnet.training.out_of_fold import hide_group, load_out_of_fold
from kielnet.training.trainer import InputDropout, masked_loss, member_loss, sigma_loss

SIGMA = dict(model={"heteroscedastic": True}, input_groups={"twomass": ["j", "k"], "gaia": ["bp", "rp"]},
             training={"input_dropout": 0.2, "max_epochs": 3},
             ensemble={"n_splits": 2, "members_per_split": 2, "seed": 0},
             uncertainty={"n_bins": 3, "degree": 1, "min_per_bin": 5, "terms": ["spread", "head"],
                          "recalibration": {"kind": "binned", "label_bins": 2, "snr_bins": 2, "min_per_cell": 10}})


# ------------------------------------------------------------------ outputs and losses
def test_heteroscedastic_net_has_twice_the_outputs(tiny_config_factory):
    cfg = tiny_config_factory(model={"heteroscedastic": True})
    net = HybridNet(cfg.model, 48, {"phot": 8}, 4)
    y = net(torch.zeros(3, 48), [torch.zeros(3, 8)])
    assert y.shape == (3, 8) and net.n_outputs == 8 and net.n_labels == 4
    mean, log_s = split_outputs(y, 4)
    assert mean.shape == (3, 4) and log_s.shape == (3, 4)
    big = split_outputs(torch.full((1, 8), 100.0), 4)[1]
    assert float(big.max()) == LOG_SIGMA_RANGE[1]
    assert split_outputs(np.zeros((2, 4)), 4)[1] is None
    with pytest.raises(ValueError):
        split_outputs(np.zeros((2, 5)), 4)


def test_sigma_head_is_detached_and_every_layout_runs_it(tiny_config_factory):
    from kielnet.compute import EnsembleRunner

    torch.manual_seed(0)
    cfg = tiny_config_factory(model={"heteroscedastic": True, "channels_last_2d": True})
    net = HybridNet(cfg.model, 48, {"phot": 8}, 4).eval()
    spec, br = torch.randn(5, 48), torch.randn(5, 8)
    y = net(spec, [br])
    # the labels' gradient reaches the trunk, the σ outputs' does not
    net.zero_grad()
    y[:, 4:].sum().backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0 for n, p in net.named_parameters()
               if not n.startswith("sigma_head."))
    assert any(float(p.grad.abs().max()) > 0 for p in net.sigma_head.parameters())
    ref = y.detach().numpy()
    for layout in ("native", "conv1d", "fused"):
        out, _ = EnsembleRunner([net], layout=layout, threads=1).predict(spec.numpy(), {"phot": br.numpy()})
        np.testing.assert_allclose(out[0], ref, rtol=1e-4, atol=1e-5)
    shared = HybridNet(tiny_config_factory(model={"heteroscedastic": True, "sigma_features": "shared"}).model,
                       48, {"phot": 8}, 4)
    shared(spec, [br])[:, 4:].sum().backward()
    assert float(shared.head[0].weight.grad.abs().max()) > 0


def test_nll_is_smallest_at_the_true_residual():
    r = torch.tensor([[0.3]])
    grid = torch.linspace(-4, 1, 501)
    for kind, best in [("nll", 0.3), ("laplace", 0.3 * np.sqrt(2))]:
        losses = [sigma_loss(r, g.reshape(1, 1), torch.zeros(1, 1), torch.ones(1), kind).item() for g in grid]
        assert float(torch.exp(grid[int(np.argmin(losses))])) == pytest.approx(best, rel=0.02)


def test_detached_nll_leaves_the_mean_gradients_of_the_configured_loss():
    cfg = TrainingConfig(loss="huber", sigma_loss="laplace")
    tgt = torch.tensor([[0.5, float("nan")], [2.0, -1.0]])
    pred = torch.tensor([[0.1, 0.2, -1.0, 0.3], [0.0, 0.4, 0.5, -0.2]], requires_grad=True)
    member_loss(pred, tgt, torch.ones(2), cfg).backward()
    mean = pred.detach()[:, :2].clone().requires_grad_(True)
    masked_loss(mean, tgt, torch.ones(2), "huber").backward()
    torch.testing.assert_close(pred.grad[:, :2], mean.grad)
    assert pred.grad[0, 3] == 0.0  # the unknown label's σ gets no gradient
    assert pred.grad[1, 2] != 0.0
    # beta-NLL trains the means through the likelihood
    pred.grad = None
    member_loss(pred, tgt, torch.ones(2), TrainingConfig(sigma_loss="beta_nll")).backward()
    assert not torch.allclose(pred.grad[:, :2], mean.grad)


# ------------------------------------------------------------------ input dropout
def test_input_dropout_hides_whole_groups(tiny_config_factory, make_table):
    cfg = tiny_config_factory(input_groups={"gaia": ["bp", "rp"]}, training={"input_dropout": 0.5})
    table = make_table(n=64)
    pre = Preprocessor(cfg).fit(table)
    prep = pre.transform(table)
    names = [b.name for b in cfg.model.scalar_branches]
    # features g, bp_rp, g_rp, j_k then their 4 missing indicators; 'gaia' touches bp_rp and g_rp
    (br, vals, fills, inds), = pre.masking_plan(["bp", "rp"])
    assert br == "phot" and vals.tolist() == [1, 2] and inds.tolist() == [5, 6] and fills.tolist() == [0.0, 0.0]
    drop = InputDropout.from_config(cfg, pre, names)
    assert len(drop.plans) == 2  # gaia and all_inputs
    x = torch.from_numpy(prep.branches["phot"].copy())
    before = x.clone()
    drop([x], torch.Generator().manual_seed(0))
    changed = (x != before).any(dim=1)
    assert changed.any() and not changed.all()
    hidden_all = (x[:, 4:] == 1).all(dim=1)
    hidden_gaia = (x[:, 5] == 1) & (x[:, 6] == 1)
    assert torch.equal(changed, hidden_gaia | hidden_all)
    assert (x[hidden_gaia][:, [1, 2]] == 0).all()
    # the same rows as the masked copy the out-of-fold calibration uses
    rows = hidden_gaia & ~hidden_all
    masked = hide_group(prep, pre, ["bp", "rp"]).branches["phot"]
    np.testing.assert_array_equal(x[rows].numpy(), masked[rows.numpy()])
    assert InputDropout.from_config(tiny_config_factory(), pre, names) is None


# ------------------------------------------------------------------ ensemble with σ
@pytest.fixture(scope="module")
def sigma_bundle(tmp_path_factory):
    from conftest import synthetic_table, tiny_config_dict

    cfg = KielnetConfig.from_dict(tiny_config_dict(**SIGMA))
    wd = tmp_path_factory.mktemp("sigma") / "work"
    table = synthetic_table(n=400, n_pix=48, seed=11)
    bundle = train_ensemble(table, cfg, workdir=wd, progress=False, log=lambda *_: None)
    return bundle, table, wd


def test_bundle_holds_the_fitted_sigma_model(sigma_bundle, tmp_path):
    bundle, table, wd = sigma_bundle
    sm = bundle.sigma_model
    assert sm.terms == ["spread", "head"] and sm.recalibration is not None
    assert list(sm.missing) == ["twomass", "gaia", "all_inputs"]
    assert all(v > 0 for g in sm.missing.values() for v in g.values())
    # the fit saw out-of-fold stars only: exactly those some split held out
    oof, ids = load_out_of_fold(wd / "out_of_fold.parquet")
    n_fit = sum(map(sum, sm.recalibration["teff"].counts))
    assert n_fit == int(oof.complete.sum()) < len(table)
    # round trip: same σ model, same catalogue
    save_bundle(bundle, tmp_path / "b")
    again = load_bundle(tmp_path / "b")
    assert again.sigma_model.to_dict() == sm.to_dict()
    assert again.fingerprint() == bundle.fingerprint()
    a, b = predict(bundle, table), predict(again, table)
    np.testing.assert_array_equal(np.asarray(a["sigma_teff"]), np.asarray(b["sigma_teff"]))
    assert "sigma model: sigma = [members' spread (+) network sigma output]" in a.meta["comments"][-1]
    assert "snr_spectrum" in a.colnames


def test_a_tampered_sigma_model_is_refused(sigma_bundle, tmp_path):
    import json

    from kielnet.errors import BundleError

    bundle, _, _ = sigma_bundle
    save_bundle(bundle, tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    meta["sigma_model"]["missing"]["gaia"]["teff"] = -1
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="sigma_model"):
        load_bundle(tmp_path / "b")


def test_missing_inputs_widen_sigma_or_withhold(sigma_bundle):
    bundle, table, _ = sigma_bundle
    stars = table.take(np.arange(40))
    full = predict(bundle, stars)
    gone = stars.take(np.arange(40))
    gone.scalars["j"] = np.full(40, np.nan)
    cat = predict(bundle, gone)
    f = bundle.sigma_model.missing["twomass"]["logg"]
    assert np.all(np.asarray(cat["flag"]) >> FLAG_BITS["missing_input"] & 1)
    # σ of a star lacking j = its σ from its own (masked) inputs × the 2MASS factor, finite
    assert np.isfinite(np.asarray(cat["sigma_logg"], float)).all()
    ratio = np.asarray(cat["sigma_logg"], float) / np.asarray(full["sigma_logg"], float)
    assert np.median(ratio) > 0.9 * f
    withhold = bundle.sigma_model.__class__.from_dict(dict(bundle.sigma_model.to_dict(), rule="withhold"))
    old, bundle.sigma_model = bundle.sigma_model, withhold
    try:
        cat = predict(bundle, gone)
    finally:
        bundle.sigma_model = old
    assert np.all(np.asarray(cat["flag"]) >> FLAG_BITS["missing_input_unlabelled"] & 1)
    assert np.isnan(np.asarray(cat["teff"], float)).all()
    assert all("missing_input_unlabelled" in s for s in cat["status"])


def test_same_spectrum_at_lower_snr_gets_a_larger_sigma(sigma_bundle):
    """With noise realisations of the flux errors (APOGEE Net II's σ: the spread term
    includes their scatter), the same spectrum with 30x the errors (and the noise that
    goes with them) gets a larger σ; the recalibration's S/N follows the errors."""
    bundle, table, _ = sigma_bundle
    stars = table.take(np.arange(30))
    noisy = stars.take(np.arange(30))
    rng = np.random.default_rng(0)
    noisy.flux_err = stars.flux_err * 30
    noisy.flux = stars.flux + rng.normal(0, 1, stars.flux.shape) * noisy.flux_err
    old = bundle.sigma_model
    bundle.sigma_model = old.__class__.from_dict(dict(old.to_dict(), terms=["spread"], recalibration=None))
    try:
        a = predict(bundle, stars, n_realisations=20)
        b = predict(bundle, noisy, n_realisations=20)
    finally:
        bundle.sigma_model = old
    for name in ("teff", "logg"):
        assert np.nanmedian(np.asarray(b[f"sigma_{name}"], float) / np.asarray(a[f"sigma_{name}"], float)) > 1.5
    snr_a = predict(bundle, stars)["snr_spectrum"]
    snr_b = predict(bundle, noisy)["snr_spectrum"]
    assert np.all(np.asarray(snr_b) < np.asarray(snr_a) / 10)


def test_test_stars_never_reach_any_fit(tmp_path):
    """Scrambling the held-out stars' labels changes nothing in the bundle (members,
    running dispersion, σ model, quality fits): no test star leaks into a fit."""
    from conftest import synthetic_table, tiny_config_dict

    cfg = KielnetConfig.from_dict(tiny_config_dict(**dict(SIGMA, ensemble={"n_splits": 2, "members_per_split": 1})))
    table = synthetic_table(n=300, n_pix=48, seed=12)
    _, test = holdout_split(table)
    a = run_holdout(table, cfg, progress=False, log=lambda *_: None)
    scrambled = table.take(np.arange(len(table)))
    is_test = np.isin(scrambled.ids, test.ids)
    rng = np.random.default_rng(1)
    for name in scrambled.labels:
        v = scrambled.labels[name].copy()
        v[is_test] = rng.permutation(v[is_test]) + 0.1
        scrambled.labels[name] = v
    b = run_holdout(scrambled, cfg, progress=False, log=lambda *_: None)
    assert a.bundle.sigma_model.to_dict() == b.bundle.sigma_model.to_dict()
    assert a.bundle.fingerprint() == b.bundle.fingerprint()
    # ... while scrambling training stars' labels does change the σ model
    c_table = table.take(np.arange(len(table)))
    v = c_table.labels["logg"].copy()
    v[~is_test] = rng.permutation(v[~is_test])
    c_table.labels["logg"] = v
    c = run_holdout(c_table, cfg, progress=False, log=lambda *_: None)
    assert c.bundle.sigma_model.to_dict() != a.bundle.sigma_model.to_dict()
