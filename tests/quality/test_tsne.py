"""t-SNE training-like classification (paper §5.1): a far group is training-unlike,
a group from the training distribution is training-like; threshold rules and I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("openTSNE")

from kielnet.quality.tsne import (DEFAULT_PERPLEXITIES, TsneResult, plot_tsne_maps,  # noqa: E402
                                  training_like_thresholds, tsne_training_like)

N_PIX = 64
# 310 points: enough for perplexity 100 (openTSNE needs > 3 x perplexity neighbours)
N_TRAIN, N_SAME, N_FAR = 200, 80, 30
FAST = {"n_iter": 250, "early_exaggeration_iter": 125}  # half the default optimisation: ~1.5 s a map


def _groups(seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = np.sin(np.linspace(0, 6, N_PIX))
    train = shape + rng.normal(0.0, 1.0, (N_TRAIN, N_PIX))          # cluster A
    same = shape + rng.normal(0.0, 1.0, (N_SAME, N_PIX))            # A': same distribution
    far = shape + 6.0 + rng.normal(0.0, 1.0, (N_FAR, N_PIX))        # B: far away
    return train, np.vstack([same, far])


@pytest.fixture(scope="module")
def result() -> TsneResult:
    train, observed = _groups()
    return tsne_training_like(train, observed, n_jobs=1, random_state=0, tsne_kwargs=FAST)


def test_far_group_unlike_same_group_like(result):
    like = result.training_like
    assert like.shape == (N_SAME + N_FAR,)
    assert not like[N_SAME:].any(), "every spectrum of the far group must be training-unlike"
    assert like[:N_SAME].mean() >= 0.85, like[:N_SAME].mean()


def test_result_shapes_and_rule(result):
    n_maps = len(DEFAULT_PERPLEXITIES)
    assert list(result.perplexities) == [30, 50, 75, 100]
    np.testing.assert_allclose(result.effective_perplexities, result.perplexities)
    assert result.embeddings.shape == (n_maps, N_TRAIN + N_SAME + N_FAR, 2)
    assert result.distances.shape == (n_maps, N_SAME + N_FAR)
    assert result.train_nn_distances.shape == (n_maps, N_TRAIN)
    assert result.pca_components == 50
    assert result.threshold_rule == "quantile=0.99"
    np.testing.assert_allclose(result.thresholds, np.quantile(result.train_nn_distances, 0.99, axis=1))
    # training-like iff below the threshold in *every* map
    np.testing.assert_array_equal(result.training_like, result.training_like_per_map.all(axis=0))
    assert result.train_embedding(0).shape == (N_TRAIN, 2)
    assert result.observed_embedding(3).shape == (N_SAME + N_FAR, 2)
    s = result.summary()
    json.dumps(s)
    assert s["n_training_unlike"] >= N_FAR


def test_reclassify_fixed_thresholds(result):
    every = result.reclassify(threshold=1e9)
    assert every.training_like.all() and every.threshold_rule == "fixed"
    none = result.reclassify(threshold=[0.0] * 4)
    assert not none.training_like.any()
    strict = result.reclassify(threshold_quantile=0.5)
    assert strict.training_like.sum() <= result.training_like.sum()
    with pytest.raises(ValueError, match="one value per map"):
        result.reclassify(threshold=[1.0, 2.0])


def test_save_load_and_plot(result, tmp_path):
    back = TsneResult.load(result.save(tmp_path / "tsne.npz"))
    np.testing.assert_array_equal(back.training_like, result.training_like)
    np.testing.assert_allclose(back.embeddings, result.embeddings)
    assert back.n_train == N_TRAIN and back.pca_components == 50
    out = plot_tsne_maps(result, tmp_path / "maps.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_thresholds_rule_on_known_distances():
    nn = np.array([np.arange(101.0), 2 * np.arange(101.0)])
    thr, rule = training_like_thresholds(nn)
    np.testing.assert_allclose(thr, [99.0, 198.0])
    assert rule == "quantile=0.99"
    thr, rule = training_like_thresholds(nn, 3.0)
    np.testing.assert_allclose(thr, [3.0, 3.0])
    with pytest.raises(ValueError):
        training_like_thresholds(nn, [-1.0, 1.0])


def test_input_validation():
    train, observed = _groups()
    bad = observed.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        tsne_training_like(train, bad)
    with pytest.raises(ValueError, match="pixels"):
        tsne_training_like(train, observed[:, :10])
    with pytest.raises(ValueError, match="2-D"):
        tsne_training_like(train[0], observed)
