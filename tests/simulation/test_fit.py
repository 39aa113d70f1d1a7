"""χ² label fits: recovery of simulated labels (noiseless, S/N 100), the CRB as the
scatter of repeated fits, and the fit of a real APOGEE spectrum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.simulation import (FitResult, PayneEmulator, emulator_crb, fit_spectra, fit_spectrum,
                                sample_labels, simulate)

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
EMU_DIR = DATA / "apogee" / "emulator"
EMU_FILE = EMU_DIR / "NN_normalized_spectra_old.npz"
SPEC_FILE = EMU_DIR / "spectrum_ap_id_2M13012770+5754582_.npz"


def toy_emulator(n_pix: int = 300, seed: int = 0) -> PayneEmulator:
    rng = np.random.default_rng(seed)
    return PayneEmulator(
        w0=rng.normal(0, 2.0, (n_pix, 5, 5)), b0=rng.normal(0, 1.0, (n_pix, 5)),
        w1=rng.normal(0, 0.2, (n_pix, 5)), b1=1.0 - rng.uniform(0, 0.3, n_pix),
        x_min=np.array([4000.0, 3.5, -1.0, -0.3, 0.0]), x_max=np.array([7000.0, 5.0, 0.5, 0.5, 40.0]),
        pixel_index=np.arange(50, 50 + n_pix), n_full_pixels=400)


@pytest.fixture(scope="module")
def emulator() -> PayneEmulator:
    if not EMU_FILE.is_file():
        pytest.skip(f"emulator file {EMU_FILE} is absent")
    from kielnet.io.emulator import load_payne_emulator

    return load_payne_emulator(EMU_FILE)


def _inner_labels(em: PayneEmulator, n: int, seed: int) -> np.ndarray:
    lo, hi = em.valid_box
    return sample_labels(em, n, np.random.default_rng(seed),
                         box=np.stack([lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo)]))


# ------------------------------------------------------------------------ data-free
def test_toy_noiseless_recovery_and_result_fields():
    em = toy_emulator()
    x = _inner_labels(em, 3, 0)
    flux = em.evaluate(x)
    for i in range(3):
        res = fit_spectrum(em, flux[i], np.full(em.n_pix, 0.01))
        assert isinstance(res, FitResult) and res.success
        crb = emulator_crb(em, x[i], 100.0)
        assert np.all(np.abs(res.labels - x[i]) < 0.01 * crb)
        np.testing.assert_allclose(res.labels_err, crb, rtol=1e-3)   # σ = 0.01 = 1/100
        assert res.chi2 < 1e-6 and res.rms_residual < 1e-6 and res.n_used == em.n_pix
        assert res.labels.shape == res.labels_err.shape == (5,) and res.cov.shape == (5, 5)
        assert not res.at_bound.any()


def test_toy_full_grid_input_mask_and_no_errors():
    em = toy_emulator()
    x = _inner_labels(em, 1, 1)[0]
    rng = np.random.default_rng(2)
    st = simulate(em, x, 200.0, rng)
    full_flux, full_err = st.flux[0], st.flux_err[0]
    res_full = fit_spectrum(em, full_flux, full_err)                 # 400-px grid, NaN outside
    res_emul = fit_spectrum(em, full_flux[em.pixel_index], full_err[em.pixel_index])
    np.testing.assert_allclose(res_full.labels, res_emul.labels, rtol=1e-10)
    mask = np.zeros(em.n_pix, bool)
    mask[:100] = True
    res_mask = fit_spectrum(em, full_flux, full_err, mask=mask)
    assert res_mask.n_used == em.n_pix - 100
    assert np.all(res_mask.labels_err >= res_full.labels_err)
    # without errors: uncertainties from the residual scatter, ≈ the true σ = 1/200
    res_noerr = fit_spectrum(em, full_flux, None)
    assert res_noerr.rms_residual == pytest.approx(1 / 200, rel=0.15)
    np.testing.assert_allclose(res_noerr.labels_err, res_full.labels_err, rtol=0.2)
    assert res_noerr.reduced_chi2 == pytest.approx(1.0, rel=0.05)
    # user start point
    res_x0 = fit_spectrum(em, full_flux, full_err, x0=x)
    np.testing.assert_allclose(res_x0.labels, res_full.labels, rtol=1e-5)
    with pytest.raises(InputError, match="pixels"):
        fit_spectrum(em, full_flux[:-1], full_err[:-1])
    with pytest.raises(InputError, match="x0"):
        fit_spectrum(em, full_flux, full_err, x0=x[:3])
    # nothing usable: a failed result, not an exception
    bad = fit_spectrum(em, np.full(em.n_pix, np.nan), full_err[em.pixel_index])
    assert not bad.success and np.isnan(bad.labels).all()


def test_fit_stays_in_box():
    em = toy_emulator()
    lo, hi = em.valid_box
    outside = np.array([3000.0, 4.0, 0.0, 0.0, 10.0])               # Teff below the box
    flux = em.evaluate(np.clip(outside, lo, hi))
    res = fit_spectrum(em, flux, np.full(em.n_pix, 0.01), x0=outside)
    assert em.in_box(res.labels)


def test_toy_fit_spectra_arrays():
    em = toy_emulator()
    x = _inner_labels(em, 4, 3)
    st = simulate(em, x, 100.0, np.random.default_rng(4))
    res = fit_spectra(em, st)
    assert res.labels.shape == res.labels_err.shape == res.at_bound.shape == (4, 5)
    assert res.cov.shape == (4, 5, 5) and res.chi2.shape == res.rms_residual.shape == (4,)
    assert res.success.dtype == bool and res.success.all()
    assert np.all(np.abs(res.labels - x) < 5 * emulator_crb(em, x, 100.0))
    labels, errs = res.as_dicts()
    assert set(labels) == set(em.label_names) and labels["teff"].shape == (4,)
    with pytest.raises(InputError, match="no spectra"):
        fit_spectra(em, StarTable(ids=["a"]))


# ------------------------------------------------------------------------ real emulator
def test_noiseless_recovery(emulator):
    x = _inner_labels(emulator, 4, 10)
    st = simulate(emulator, x, None, np.random.default_rng(0))
    err = np.where(np.isfinite(st.flux), 0.01, np.nan)             # nominal σ for the weights
    res = fit_spectra(emulator, StarTable(ids=st.ids, flux=st.flux, flux_err=err))
    crb = emulator_crb(emulator, x, 100.0)
    assert res.success.all()
    assert np.all(np.abs(res.labels - x) < 0.05 * crb)
    assert np.all(res.rms_residual < 1e-5)


def test_snr100_recovery_within_crb(emulator):
    x = _inner_labels(emulator, 8, 11)
    st = simulate(emulator, x, 100.0, np.random.default_rng(12))
    res = fit_spectra(emulator, st)
    crb = emulator_crb(emulator, x, 100.0)
    assert res.success.all()
    z = (res.labels - x) / crb
    assert np.all(np.abs(z) < 4.5)
    assert 0.5 < np.sqrt(np.mean(z ** 2)) < 1.5
    np.testing.assert_allclose(res.labels_err, crb, rtol=0.1)         # covariance at the fit ≈ CRB
    np.testing.assert_allclose(res.reduced_chi2, 1.0, atol=0.06)
    np.testing.assert_allclose(res.rms_residual, 0.01, rtol=0.05)


def test_repeated_fits_scatter_like_the_crb(emulator):
    x = np.array([5500.0, 4.5, 0.0, 0.0, 10.0])
    st = simulate(emulator, np.tile(x, (40, 1)), 100.0, np.random.default_rng(13))
    res = fit_spectra(emulator, st, x0=x, n_starts=1)
    ratio = res.labels.std(axis=0, ddof=1) / emulator_crb(emulator, x, 100.0)
    assert np.all((ratio > 0.6) & (ratio < 1.5)), ratio
    assert np.all(np.abs(res.labels.mean(axis=0) - x) < 3 * emulator_crb(emulator, x, 100.0) / np.sqrt(40) + 1e-9)


def test_fit_real_spectrum(emulator):
    if not SPEC_FILE.is_file():
        pytest.skip(f"spectrum {SPEC_FILE} is absent")
    from kielnet.io.emulator import load_payne_spectra, load_pixel_mask

    st = load_payne_spectra(SPEC_FILE, emulator)
    masks = [None]
    if (EMU_DIR / "apogee_mask.npz").is_file():
        masks.append(load_pixel_mask(EMU_DIR / "apogee_mask.npz"))
    for mask in masks:
        res = fit_spectra(emulator, st, mask=mask)
        teff, logg, feh = res.labels[0, :3]
        assert res.success[0]
        assert abs(teff - 4942) < 150 and abs(logg - 4.53) < 0.15 and abs(feh + 0.19) < 0.1
        assert res.rms_residual[0] < 0.02
        assert np.all(res.labels_err[0] > 0) and np.all(np.isfinite(res.labels_err[0]))
