"""Splits by star id: the fixed crc32 test set and random group splits."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from kielnet.data.splits import crc32_holdout, ensemble_heldout, group_split


@pytest.fixture
def ids():
    rng = np.random.default_rng(5)
    base = [f"2M{rng.integers(0, 10**8):08d}+{rng.integers(0, 10**7):07d}" for _ in range(2000)]
    # some padded with blanks as in the FITS file's fixed-width strings
    return np.array([b + "   " if i % 3 == 0 else b for i, b in enumerate(base)])


def test_crc32_holdout_matches_the_definition(ids):
    mask = crc32_holdout(ids)
    expect = np.array([zlib.crc32(i.strip().encode()) % 5 == 0 for i in ids])
    np.testing.assert_array_equal(mask, expect)
    assert mask.dtype == bool
    assert 0.15 < mask.mean() < 0.25  # about a fifth
    # padding never changes a star's side
    np.testing.assert_array_equal(crc32_holdout(np.char.strip(ids)), mask)


def test_crc32_holdout_modulus_and_remainder(ids):
    parts = [crc32_holdout(ids, 3, r) for r in range(3)]
    np.testing.assert_array_equal(np.sum(parts, axis=0), np.ones(len(ids)))
    expect = np.array([zlib.crc32(i.strip().encode()) % 3 == 2 for i in ids])
    np.testing.assert_array_equal(parts[2], expect)


def test_crc32_holdout_on_the_real_subset(xp_subset):
    mask = crc32_holdout(xp_subset.ids)
    expect = [zlib.crc32(i.strip().encode()) % 5 == 0 for i in xp_subset.ids]
    assert mask.tolist() == expect
    assert 150 < mask.sum() < 250


def test_group_split_keeps_duplicate_ids_together():
    rng = np.random.default_rng(1)
    uniq = np.array([f"star{i}" for i in range(300)])
    ids = rng.permutation(np.repeat(uniq, rng.integers(1, 5, len(uniq))))
    assert len(ids) > len(uniq)  # there are duplicates
    train, val = group_split(ids, 0.25, seed=3)
    assert set(ids[train]).isdisjoint(ids[val])
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(ids)))
    frac = len(set(ids[val])) / len(uniq)
    assert 0.15 < frac < 0.35
    # deterministic for a seed, different for another
    t2, v2 = group_split(ids, 0.25, seed=3)
    np.testing.assert_array_equal(train, t2)
    np.testing.assert_array_equal(val, v2)
    t3, _ = group_split(ids, 0.25, seed=4)
    assert not np.array_equal(train, t3)


def test_ensemble_heldout_matches_the_splits_and_keeps_ids_together():
    ids = np.array([f"s{i % 150}" for i in range(200)])  # 50 stars appear twice
    held = ensemble_heldout(ids, 5, 0.25, seed=3)
    assert held.shape == (200, 5)
    for k in range(5):
        _, va = group_split(ids, 0.25, 3 + k)
        np.testing.assert_array_equal(np.flatnonzero(held[:, k]), va)
        for star in np.unique(ids):
            assert len(set(held[ids == star, k])) == 1
    # about a quarter held out per split, different stars in different splits
    assert 0.15 < held.mean() < 0.35
    assert not all(np.array_equal(held[:, 0], held[:, k]) for k in range(1, 5))
