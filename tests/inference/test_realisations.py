"""Noise-realisation uncertainties (APOGEE Net II §3.2.3) in predict / predict_to_file."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from kielnet.errors import InputError
from kielnet.inference.predict import predict, realisation_predictions
from kielnet.inference.streaming import predict_to_file

LABELS = ("teff", "logg", "fe_h", "alpha_m")


@pytest.fixture
def noisy(make_table):
    """Synthetic stars with 3 % flux errors (the training set had 1 %)."""
    torch.set_num_threads(1)
    t = make_table(n=12, n_pix=48, seed=31)
    t.flux_err = np.full_like(t.flux, 0.03)
    return t


def _arr(cat, name):
    return np.asarray(cat[name], dtype=float)


def test_same_seed_same_catalogue_other_seed_differs(synthetic_bundle, noisy):
    a = predict(synthetic_bundle, noisy, n_realisations=4, rng=np.random.default_rng(11))
    b = predict(synthetic_bundle, noisy, n_realisations=4, rng=np.random.default_rng(11))
    c = predict(synthetic_bundle, noisy, n_realisations=4, rng=np.random.default_rng(12))
    for name in LABELS:
        for col in (name, f"e_{name}", f"e_{name}_noise", f"sigma_{name}"):
            np.testing.assert_array_equal(_arr(a, col), _arr(b, col))
    assert not np.array_equal(_arr(a, "teff"), _arr(c, "teff"))
    for name in LABELS:  # described, in the label's unit
        assert "noise realisations" in a[f"e_{name}_noise"].description
        assert a[f"e_{name}_noise"].unit == a[name].unit


def test_default_rng_is_seeded_by_the_bundle(synthetic_bundle, noisy):
    a = predict(synthetic_bundle, noisy, n_realisations=3)
    b = predict(synthetic_bundle, noisy, n_realisations=3)
    np.testing.assert_array_equal(_arr(a, "logg"), _arr(b, "logg"))
    seed = synthetic_bundle.config.inference.seed
    c = predict(synthetic_bundle, noisy, n_realisations=3, rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(_arr(a, "logg"), _arr(c, "logg"))


def test_e_x_combines_member_spread_and_realisation_scatter(synthetic_bundle, noisy):
    n_real = 5
    cat = predict(synthetic_bundle, noisy, n_realisations=n_real, rng=np.random.default_rng(3))
    nets = synthetic_bundle.build_members()
    med, var = realisation_predictions(synthetic_bundle, nets, noisy, n_real, np.random.default_rng(3))
    assert med.shape == var.shape == (2, len(noisy), len(LABELS))
    member_spread = med.std(axis=0, ddof=1)
    noise_var = var.mean(axis=0)
    for j, name in enumerate(LABELS):
        e = _arr(cat, f"e_{name}")
        e_noise = _arr(cat, f"e_{name}_noise")
        np.testing.assert_allclose(_arr(cat, name), med.mean(axis=0)[:, j], rtol=1e-12)
        np.testing.assert_allclose(e_noise, np.sqrt(noise_var[:, j]), rtol=1e-12)
        np.testing.assert_allclose(e, np.hypot(member_spread[:, j], e_noise), rtol=1e-10)
        assert (e >= member_spread[:, j] - 1e-12).all()
        assert (e >= e_noise - 1e-12).all()
        assert np.isfinite(e_noise).all() and (e_noise > 0).all()
        assert (_arr(cat, f"sigma_{name}") >= e - 1e-12).all()


def test_more_noise_gives_more_realisation_scatter(synthetic_bundle, noisy):
    quiet = replace(noisy, flux_err=np.full_like(noisy.flux, 0.001))
    loud = replace(noisy, flux_err=np.full_like(noisy.flux, 0.05))
    cq = predict(synthetic_bundle, quiet, n_realisations=6, rng=np.random.default_rng(5))
    cl = predict(synthetic_bundle, loud, n_realisations=6, rng=np.random.default_rng(5))
    assert np.median(_arr(cl, "e_teff_noise")) > 5 * np.median(_arr(cq, "e_teff_noise"))


def test_zero_realisations_have_no_noise_column(synthetic_bundle, noisy):
    cat = predict(synthetic_bundle, noisy, n_realisations=0)
    assert "e_teff" in cat.colnames
    assert not [c for c in cat.colnames if c.endswith("_noise")]
    # the bundle's default (tiny config: inference.n_realisations = 0) is the same path
    assert synthetic_bundle.config.inference.n_realisations == 0
    dflt = predict(synthetic_bundle, noisy)
    assert dflt.colnames == cat.colnames
    np.testing.assert_array_equal(_arr(dflt, "teff"), _arr(cat, "teff"))


def test_bundle_default_realisations_are_used(synthetic_bundle, noisy):
    cfg = synthetic_bundle.config.with_overrides(inference={"n_realisations": 3, "seed": 9})
    bundle = replace(synthetic_bundle, config=cfg)
    cat = predict(bundle, noisy)
    assert "e_fe_h_noise" in cat.colnames
    explicit = predict(bundle, noisy, n_realisations=3, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(_arr(cat, "fe_h"), _arr(explicit, "fe_h"))
    off = predict(bundle, noisy, n_realisations=0)
    assert "e_fe_h_noise" not in off.colnames


def test_clip_factor_of_the_bundle_limits_the_errors(synthetic_bundle, noisy):
    """A huge error is clipped at clip_factor x the star's median error (0.03): the
    realisations equal those of a table holding that limit in the first place."""
    factor = synthetic_bundle.config.inference.clip_factor
    huge = noisy.flux_err.copy()
    huge[:, 10] = 1e10
    at_limit = noisy.flux_err.copy()
    at_limit[:, 10] = np.float32(factor * 0.03)
    a = predict(synthetic_bundle, replace(noisy, flux_err=huge), n_realisations=3, rng=np.random.default_rng(2))
    b = predict(synthetic_bundle, replace(noisy, flux_err=at_limit), n_realisations=3,
                rng=np.random.default_rng(2))
    np.testing.assert_allclose(_arr(a, "teff"), _arr(b, "teff"), rtol=1e-6)
    np.testing.assert_allclose(_arr(a, "e_teff_noise"), _arr(b, "e_teff_noise"), rtol=1e-4)
    # a different clip factor changes the result
    loose_cfg = synthetic_bundle.config.with_overrides(inference={"clip_factor": 50.0})
    loose = replace(synthetic_bundle, config=loose_cfg)
    c = predict(loose, replace(noisy, flux_err=huge), n_realisations=3, rng=np.random.default_rng(2))
    assert not np.allclose(_arr(c, "teff"), _arr(a, "teff"), rtol=1e-6)


def test_without_flux_err_realisations_name_flux_err(synthetic_bundle, noisy):
    t = replace(noisy, flux_err=None)
    with pytest.raises(InputError) as exc:
        predict(synthetic_bundle, t, n_realisations=2)
    assert exc.value.field == "flux_err" and "flux_err" in str(exc.value)
    # without realisations the same table is fine
    assert len(predict(synthetic_bundle, t, n_realisations=0)) == len(t)


def test_bad_spectrum_keeps_nan_noise(synthetic_bundle, noisy):
    flux = noisy.flux.copy()
    flux[4] = np.nan
    t = replace(noisy, flux=flux)
    cat = predict(synthetic_bundle, t, n_realisations=3, rng=np.random.default_rng(0))
    assert "bad_spectrum" in cat["status"][4]
    assert np.isnan(_arr(cat, "teff")[4]) and np.isnan(_arr(cat, "e_teff_noise")[4])
    assert np.isfinite(np.delete(_arr(cat, "e_teff_noise"), 4)).all()


def test_streamed_realisations_equal_predict_with_the_chunk_rng(synthetic_bundle, noisy, tmp_path):
    seed = synthetic_bundle.config.inference.seed
    full = predict_to_file(synthetic_bundle, noisy, tmp_path / "one.parquet", chunk_size=100,
                           progress=False, n_realisations=3).read()
    direct = predict(synthetic_bundle, noisy, n_realisations=3, rng=np.random.default_rng([seed, 0]))
    for col in ("teff", "e_teff", "e_teff_noise"):
        np.testing.assert_allclose(_arr(full, col), _arr(direct, col), rtol=1e-12)
    # chunked: chunk i uses default_rng([seed, i]), so a resumed run gives the same rows
    chunked = predict_to_file(synthetic_bundle, noisy, tmp_path / "chunks.parquet", chunk_size=5,
                              progress=False, n_realisations=3).read()
    second = predict(synthetic_bundle, noisy.take(np.arange(5, 10)), n_realisations=3,
                     rng=np.random.default_rng([seed, 1]))
    np.testing.assert_allclose(_arr(chunked, "e_logg_noise")[5:10], _arr(second, "e_logg_noise"), rtol=1e-12)
    assert not np.allclose(_arr(chunked, "e_logg_noise")[5:10], _arr(full, "e_logg_noise")[5:10])
