"""Noise realisations stacked into the batch dimension (kielnet.compute.realisations):
shapes, determinism, draw order, bounded blocks, and the same statistics as the old
one-realisation-at-a-time method."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from kielnet.compute import EnsembleRunner, realisation_statistics
from kielnet.compute.realisations import draw_block
from kielnet.data.spectra import clip_flux_errors, noise_realisations
from kielnet.inference.predict import member_predictions, realisation_predictions


@pytest.fixture
def noisy(make_table):
    torch.set_num_threads(1)
    t = make_table(n=12, n_pix=48, seed=31)
    t.flux_err = np.full_like(t.flux, 0.03)
    t.flux_err[:, 7] = np.nan  # a bad error: replaced by the clip limit
    return t


def _old_method(bundle, nets, table, n, rng):
    """The pre-kielnet.compute implementation: one realisation of the whole table at a time."""
    err, _, _ = clip_flux_errors(table.flux_err, bundle.config.inference.clip_factor)
    runs = []
    for _ in range(n):
        noisy = noise_realisations(table.flux, err, 1, rng)[0]
        prep = bundle.preprocessor.transform(replace(table, flux=noisy), with_labels=False)
        runs.append(member_predictions(nets, prep, bundle.preprocessor.inverse_labels))
    arr = np.stack(runs)
    return np.median(arr, axis=0), arr.var(axis=0, ddof=1)


def test_shapes_and_single_realisation(synthetic_bundle, noisy):
    nets = synthetic_bundle.build_members()
    med, var = realisation_predictions(synthetic_bundle, nets, noisy, 5, np.random.default_rng(0))
    assert med.shape == var.shape == (2, len(noisy), 4)
    assert np.isfinite(med).all() and (var > 0).all()
    med1, var1 = realisation_predictions(synthetic_bundle, nets, noisy, 1, np.random.default_rng(0))
    assert med1.shape == (2, len(noisy), 4) and not var1.any()


def test_deterministic_for_a_seed_and_independent_of_the_batch_size(synthetic_bundle, noisy):
    nets = synthetic_bundle.build_members()
    a = realisation_predictions(synthetic_bundle, nets, noisy, 6, np.random.default_rng(4))
    b = realisation_predictions(synthetic_bundle, nets, noisy, 6, np.random.default_rng(4))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = realisation_predictions(synthetic_bundle, nets, noisy, 6, np.random.default_rng(5))
    assert not np.allclose(a[0], c[0])
    # the draws are star-major: any block size consumes the generator identically, and
    # preparing the next block in a background thread changes nothing
    for bs in (1, 5):
        for prefetch in (True, False):
            runner = EnsembleRunner(nets, batch_size=bs)
            d = realisation_statistics(runner, synthetic_bundle.preprocessor, noisy, 6, np.random.default_rng(4),
                                       synthetic_bundle.preprocessor.inverse_labels, clip_factor=5.0,
                                       block_rows=bs * 6, prefetch=prefetch)
            for x, y in zip(a, d):
                np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-9)


def test_draw_order_is_star_major(synthetic_bundle, noisy):
    """Realisation r of star i = flux_i + z[i, r] * clipped err_i, z drawn star after star."""
    n = 3
    rng = np.random.default_rng(8)
    err, _, _ = clip_flux_errors(noisy.flux_err, 5.0)
    whole = draw_block(noisy.flux, err, n, np.random.default_rng(8))
    z = rng.standard_normal((len(noisy), n, noisy.n_pix), dtype=np.float32)
    e32 = np.where(np.isfinite(err), err, 0).astype(np.float32)
    np.testing.assert_array_equal(whole, noisy.flux.astype(np.float32)[:, None] + z * e32[:, None])
    # a NaN error is clipped to the limit (clip_flux_errors), so that pixel is noisy too
    assert (whole[:, :, 7] != noisy.flux.astype(np.float32)[:, None, 7]).all()
    rng2 = np.random.default_rng(8)
    parts = np.concatenate([draw_block(noisy.flux[s:s + 5], err[s:s + 5], n, rng2) for s in range(0, 12, 5)])
    np.testing.assert_array_equal(parts, whole)
    # the statistics equal a slow star-by-star reference built on those draws
    nets = synthetic_bundle.build_members()
    med, var = realisation_predictions(synthetic_bundle, nets, noisy, n, np.random.default_rng(8))
    pre = synthetic_bundle.preprocessor
    for i in (0, 11):
        rows = replace(noisy.take(np.repeat(i, n)), flux=whole[i])
        p = member_predictions(nets, pre.transform(rows, with_labels=False), pre.inverse_labels)
        np.testing.assert_allclose(med[:, i], np.median(p, axis=1), rtol=1e-5)
        np.testing.assert_allclose(var[:, i], p.var(axis=1, ddof=1), rtol=1e-4)


def test_blocks_bound_the_rows_preprocessed_at_once(synthetic_bundle, noisy, monkeypatch):
    pre = synthetic_bundle.preprocessor
    sizes = []
    orig = type(pre).transform

    def spy(self, table, **kw):
        sizes.append(len(table))
        return orig(self, table, **kw)

    monkeypatch.setattr(type(pre), "transform", spy)
    runner = EnsembleRunner(synthetic_bundle.build_members(), batch_size=4)
    realisation_statistics(runner, pre, noisy, 4, np.random.default_rng(0), pre.inverse_labels, block_rows=10)
    assert sizes == [8] * 6  # 2 stars x 4 realisations per block, 12 stars


def test_statistics_match_the_one_at_a_time_method(synthetic_bundle, noisy):
    """Same distribution: medians and variances over many draws agree within their
    sampling errors (two independent estimates of each)."""
    nets = synthetic_bundle.build_members()
    n = 600
    med_new, var_new = realisation_predictions(synthetic_bundle, nets, noisy, n, np.random.default_rng(1))
    med_old, var_old = _old_method(synthetic_bundle, nets, noisy, n, np.random.default_rng(2))
    sd = np.sqrt(0.5 * (var_new + var_old))
    se_median = 1.2533 * sd / np.sqrt(n) * np.sqrt(2)
    assert (np.abs(med_new - med_old) < 5 * se_median).all()
    log_ratio = np.log(var_new / var_old)
    se_log_var = np.sqrt(2 / (n - 1)) * np.sqrt(2)
    assert (np.abs(log_ratio) < 5 * se_log_var).all()
    assert abs(log_ratio.mean()) < 3 * se_log_var  # no systematic difference either
