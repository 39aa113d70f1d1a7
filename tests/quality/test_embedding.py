"""Fast embedding OOD score: flags a far group, keeps a same-distribution group,
round-trips through JSON and safetensors; agreement statistics on known arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kielnet.config import ModelConfig
from kielnet.data.preprocess import Prepared
from kielnet.models.hybrid import HybridNet
from kielnet.compute.embeddings import (embedding_ood_member_scores, embedding_ood_scores, fit_embedding_ood,
                                        fusion_embeddings)
from kielnet.quality.embedding import EmbeddingOOD, agreement

N_PIX, N_PHOT = 48, 4
MODEL = {"spectrum": {"conv": [{"channels": 4, "kernel": 5, "pool": 2}, {"channels": 4, "kernel": 3, "pool": 2}],
                      "dense": [16], "activation": "leaky_relu"},
         "scalar_branches": [{"name": "phot", "features": ["g", "bp_rp", "g_rp", "j_k"], "layers": [8]}],
         "head": {"layers": [16], "dropout": 0.1, "activation": "leaky_relu"},
         "channels_last_2d": False}


def _prepared(spec: np.ndarray, phot: np.ndarray) -> Prepared:
    n = len(spec)
    return Prepared(spec.astype(np.float32), None, {"phot": phot.astype(np.float32)}, None,
                    np.zeros(n, np.int64), np.zeros(n, bool), np.zeros((n, N_PHOT), bool), None)


def _groups(seed: int = 0):
    rng = np.random.default_rng(seed)
    train = _prepared(rng.normal(size=(300, N_PIX)), rng.normal(size=(300, N_PHOT)))
    same = _prepared(rng.normal(size=(80, N_PIX)), rng.normal(size=(80, N_PHOT)))
    far = _prepared(rng.normal(size=(30, N_PIX)) + 6.0, rng.normal(size=(30, N_PHOT)) + 6.0)
    return train, same, far


@pytest.fixture(scope="module")
def nets():
    cfg = ModelConfig.model_validate(MODEL)
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        out.append(HybridNet(cfg, N_PIX, {"phot": N_PHOT}, 4).eval())
    return out


@pytest.fixture(scope="module")
def fitted(nets):
    train, _, _ = _groups()
    return fit_embedding_ood(EmbeddingOOD(), nets, train)


def test_hook_embedding_is_branch_concatenation(nets):
    train, _, _ = _groups()
    net = nets[0]
    net.train()  # the hook runs the net in eval mode and restores its mode
    emb = fusion_embeddings(net, train, batch_size=64)
    assert net.training
    net.eval()
    with torch.no_grad():
        ref = torch.cat([net.spectrum(torch.from_numpy(train.spectrum)),
                         net.branches["phot"](torch.from_numpy(train.branches["phot"]))], dim=1).numpy()
    assert emb.shape == (300, net.head[0].in_features)
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-6)


def test_far_group_flagged_same_group_kept(nets, fitted):
    _, same, far = _groups()
    s_same, s_far = embedding_ood_scores(fitted, nets, same), embedding_ood_scores(fitted, nets, far)
    assert (s_far > 1).all(), s_far.min()
    assert (s_same <= 1).mean() >= 0.9, (s_same <= 1).mean()
    assert embedding_ood_member_scores(fitted, nets, far).shape == (2, 30)


def test_state_round_trips(nets, fitted, tmp_path):
    _, same, far = _groups()
    ref = embedding_ood_scores(fitted, nets, far)
    back = EmbeddingOOD.from_dict(json.loads(json.dumps(fitted.to_dict())))
    np.testing.assert_allclose(embedding_ood_scores(back, nets, far), ref)
    loaded = EmbeddingOOD.load(fitted.save(tmp_path / "ood.safetensors"))
    np.testing.assert_allclose(embedding_ood_scores(loaded, nets, same), embedding_ood_scores(fitted, nets, same))
    assert loaded.n_members == 2 and loaded.n_reference == 300


def test_subsample_and_member_checks(nets):
    train, _, far = _groups()
    small = fit_embedding_ood(EmbeddingOOD(max_reference=50, random_state=3), nets[0], train)
    assert small.n_reference == 50 and small.n_train == 300
    assert (embedding_ood_scores(small, nets[0], far) > 1).all()
    with pytest.raises(ValueError, match="members"):
        embedding_ood_scores(small, nets, far)
    with pytest.raises(ValueError, match="digests"):
        embedding_ood_scores(small, nets[1], far)
    embedding_ood_scores(small, nets[1], far, check=False)  # scoring other nets on purpose


def test_reference_of_an_older_file_still_checks_its_members(nets):
    """Embedding OOD files written before the artifact digest recorded a 16-digit SHA-1
    of each member's raw bytes: they keep refusing other networks."""
    import hashlib

    train, _, far = _groups()
    ood = fit_embedding_ood(EmbeddingOOD(max_reference=40), nets[0], train)

    def sha1(net):
        h = hashlib.sha1()
        for k, v in sorted(net.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    old = EmbeddingOOD.from_dict({**ood.to_dict(), "digests": [sha1(nets[0])]})
    np.testing.assert_allclose(embedding_ood_scores(old, nets[0], far), embedding_ood_scores(ood, nets[0], far))
    with pytest.raises(ValueError, match="digests"):
        embedding_ood_scores(old, nets[1], far)


def test_bad_spectra_excluded_from_reference(nets):
    train, _, _ = _groups()
    train.bad_spectrum[:100] = True
    assert fit_embedding_ood(EmbeddingOOD(), nets[0], train).n_reference == 200


def test_agreement_known_arrays():
    a = np.array([1, 1, 1, 0, 0, 0, 1, 0], bool)
    b = np.array([1, 1, 0, 0, 0, 1, 1, 0], bool)
    r = agreement(a, b)
    assert (r["both_true"], r["a_true_b_false"], r["a_false_b_true"], r["both_false"]) == (3, 1, 1, 3)
    assert r["n"] == 8 and r["n_agree"] == 6
    assert r["fraction_agree"] == pytest.approx(0.75)
    assert r["kappa"] == pytest.approx(0.5)  # p_o = 0.75, p_e = 0.5
    assert agreement(a, a)["kappa"] == pytest.approx(1.0)
    assert agreement(a, ~a)["kappa"] == pytest.approx(-1.0)
    same = agreement(np.ones(5, bool), np.ones(5, bool))
    assert same["fraction_agree"] == 1.0 and np.isnan(same["kappa"])
    json.dumps(r)
    with pytest.raises(ValueError):
        agreement(a, b[:-1])
    with pytest.raises(ValueError):
        agreement(a.astype(int), b)


def test_tsne_and_embedding_agree_on_far_group(nets, fitted):
    pytest.importorskip("openTSNE")
    from kielnet.quality.tsne import tsne_training_like

    train, same, far = _groups()
    obs = np.vstack([same.spectrum, far.spectrum])
    res = tsne_training_like(train.spectrum, obs, perplexities=(30,),
                             tsne_kwargs={"n_iter": 200, "early_exaggeration_iter": 100})
    fast_like = np.concatenate([embedding_ood_scores(fitted, nets, same) <= 1, embedding_ood_scores(fitted, nets, far) <= 1])
    r = agreement(res.training_like, fast_like)
    assert r["fraction_agree"] >= 0.85 and r["kappa"] > 0.6, r


def test_scores_from_captured_embeddings_equal_recomputed_ones():
    """FusionCapture during the label pass gives the same scores as a separate pass."""
    import torch

    from kielnet.data.preprocess import Preprocessor
    from kielnet.inference.predict import member_predictions
    from kielnet.quality.embedding import EmbeddingOOD
    from kielnet.training.ensemble import train_ensemble
    from conftest import synthetic_table, tiny_config_dict
    from kielnet.config import KielnetConfig

    cfg = KielnetConfig.from_dict(tiny_config_dict(ensemble={"n_splits": 1, "members_per_split": 2}))
    b = train_ensemble(synthetic_table(n=100, seed=40), cfg, progress=False, log=lambda *_: None)
    nets = b.build_members()
    prep_tr = b.preprocessor.transform(synthetic_table(n=100, seed=40), with_labels=False)
    ood = fit_embedding_ood(EmbeddingOOD(max_reference=80), nets, prep_tr)
    prep = b.preprocessor.transform(synthetic_table(n=37, seed=41), with_labels=False)
    embs: list = []
    member_predictions(nets, prep, b.preprocessor.inverse_labels, batch_size=8, embeddings=embs)
    assert len(embs) == 2 and embs[0].shape[0] == 37
    np.testing.assert_allclose(ood.member_scores_of(embs), embedding_ood_member_scores(ood, nets, prep), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        ood.member_scores_of(embs[:1])
