"""Toy RVS star generator (kielnet.simulation.rvs)."""

from __future__ import annotations

import numpy as np
import pytest

from kielnet.config import load_config
from kielnet.data.preprocess import Preprocessor
from kielnet.simulation.rvs import CA_TRIPLET_NM, RVS_TOY_LABEL_RANGES, synthetic_rvs_stars


def test_shapes_ranges_and_determinism():
    a, b = synthetic_rvs_stars(50, seed=7), synthetic_rvs_stars(50, seed=7)
    assert a.flux.shape == (50, 2401)
    np.testing.assert_array_equal(a.flux, b.flux)
    assert not np.array_equal(a.flux, synthetic_rvs_stars(50, seed=8).flux)
    for name, (lo, hi) in RVS_TOY_LABEL_RANGES.items():
        assert lo <= a.labels[name].min() and a.labels[name].max() <= hi
    assert np.isclose(a.wavelength.to_value("nm")[0], 846.0) and np.isclose(a.wavelength.to_value("nm")[-1], 870.0)


def test_ca_triplet_deepens_with_metallicity():
    t = synthetic_rvs_stars(400, seed=1)
    wl = t.wavelength.to_value("nm")
    core = np.abs(wl - CA_TRIPLET_NM[1]) < 0.3
    ew = (1 - t.flux[:, core]).sum(axis=1)
    ca = t.labels["m_h"] + t.labels["alpha_m"]
    assert np.corrcoef(ew, ca)[0, 1] > 0.5


def test_feeds_the_preset_without_missing_inputs():
    t = synthetic_rvs_stars(30, seed=2)
    cfg = load_config("gaia_rvs_hybrid")
    prep = Preprocessor(cfg).fit(t).transform(t)
    assert prep.spectrum.shape == (30, 2401) and prep.branches["xp"].shape == (30, 110)
    assert not prep.missing_features.any() and np.isfinite(prep.targets).all()


def test_rejects_nonpositive_n():
    with pytest.raises(ValueError):
        synthetic_rvs_stars(0)
