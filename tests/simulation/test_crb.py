"""Cramér–Rao bounds: closed-form linear toy models and the emulator convenience."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kielnet.errors import InputError
from kielnet.simulation import PayneEmulator, cramer_rao_bound, emulator_crb, fisher_matrix

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
EMU_FILE = DATA / "apogee" / "emulator" / "NN_normalized_spectra_old.npz"


def toy_emulator(n_pix: int = 120, seed: int = 0) -> PayneEmulator:
    rng = np.random.default_rng(seed)
    return PayneEmulator(
        w0=rng.normal(0, 2.0, (n_pix, 5, 5)), b0=rng.normal(0, 1.0, (n_pix, 5)),
        w1=rng.normal(0, 0.2, (n_pix, 5)), b1=1.0 - rng.uniform(0, 0.3, n_pix),
        x_min=np.array([4000.0, 3.5, -1.0, -0.3, 0.0]), x_max=np.array([7000.0, 5.0, 0.5, 0.5, 40.0]),
        pixel_index=np.arange(40, 40 + n_pix), n_full_pixels=200)


def _reference(J: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    F = J.T @ np.diag(1.0 / sigma ** 2) @ J
    return np.sqrt(np.diag(np.linalg.inv(F)))


def test_orthogonal_columns_closed_form():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(400, 4)))
    scales = np.array([1e-4, 0.3, 2.0, 50.0])          # very different label units
    J = q * scales
    sigma = 0.02
    crb = cramer_rao_bound(J, sigma)
    np.testing.assert_allclose(crb, sigma / np.linalg.norm(J, axis=0), rtol=1e-10)
    np.testing.assert_allclose(crb, sigma / scales, rtol=1e-10)


def test_disjoint_columns_with_per_pixel_sigma():
    rng = np.random.default_rng(1)
    J = np.zeros((90, 3))
    for k in range(3):
        J[30 * k:30 * (k + 1), k] = rng.normal(size=30)
    sigma = rng.uniform(0.01, 0.05, 90)
    expect = 1.0 / np.sqrt(np.sum(J ** 2 / sigma[:, None] ** 2, axis=0))
    np.testing.assert_allclose(cramer_rao_bound(J, sigma), expect, rtol=1e-10)


def test_general_jacobian_matches_explicit_inverse():
    rng = np.random.default_rng(2)
    J = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5)) * np.array([1e-4, 1e-1, 1.0, 1.0, 1e-2])
    sigma = rng.uniform(0.005, 0.03, 200)
    crb, cov = cramer_rao_bound(J, sigma, return_cov=True)
    np.testing.assert_allclose(crb, _reference(J, sigma), rtol=1e-8)
    np.testing.assert_allclose(cov, np.linalg.inv(fisher_matrix(J, sigma)), rtol=1e-7)
    np.testing.assert_allclose(fisher_matrix(J, sigma), J.T @ (J / sigma[:, None] ** 2), rtol=1e-12)


def test_batched_shapes_and_broadcasting():
    rng = np.random.default_rng(3)
    J = rng.normal(size=(4, 150, 3))
    sig1 = rng.uniform(0.01, 0.02, 150)
    sig2 = rng.uniform(0.01, 0.02, (4, 150))
    out1 = cramer_rao_bound(J, sig1)
    out2 = cramer_rao_bound(J, sig2)
    assert out1.shape == out2.shape == (4, 3)
    for i in range(4):
        np.testing.assert_allclose(out1[i], _reference(J[i], sig1), rtol=1e-8)
        np.testing.assert_allclose(out2[i], _reference(J[i], sig2[i]), rtol=1e-8)
    np.testing.assert_allclose(cramer_rao_bound(J, 0.01), cramer_rao_bound(J, np.full(150, 0.01)), rtol=1e-12)
    with pytest.raises(InputError, match="sigma"):
        cramer_rao_bound(J, np.ones(149))
    with pytest.raises(InputError, match="jacobian"):
        cramer_rao_bound(np.ones(5), 1.0)
    with pytest.raises(InputError, match="positive"):
        cramer_rao_bound(J[0], np.zeros(150))


def test_masked_pixels_are_excluded():
    rng = np.random.default_rng(4)
    J = rng.normal(size=(100, 3))
    sigma = rng.uniform(0.01, 0.02, 100)
    keep = rng.random(100) > 0.3
    masked = sigma.copy()
    masked[~keep] = np.where(np.arange((~keep).sum()) % 2 == 0, np.nan, np.inf)
    np.testing.assert_allclose(cramer_rao_bound(J, masked), _reference(J[keep], sigma[keep]), rtol=1e-10)
    Jnan = J.copy()
    Jnan[~keep] = np.nan                                  # non-finite Jacobian rows are dropped too
    np.testing.assert_allclose(cramer_rao_bound(Jnan, sigma), _reference(J[keep], sigma[keep]), rtol=1e-10)


def test_unconstrained_label_gets_infinite_bound():
    rng = np.random.default_rng(5)
    J = rng.normal(size=(50, 3))
    J[:, 1] = 0.0
    crb = cramer_rao_bound(J, 0.01)
    assert np.isinf(crb[1])
    np.testing.assert_allclose(crb[[0, 2]], _reference(J[:, [0, 2]], np.full(50, 0.01)), rtol=1e-10)
    J[:, 2] = 2 * J[:, 0]                                   # degenerate pair
    bad = cramer_rao_bound(J, 0.01)[[0, 2]]
    assert np.all(~np.isfinite(bad) | (bad > 1e6))


def test_emulator_crb_toy():
    em = toy_emulator()
    x = np.array([[5500.0, 4.5, 0.0, 0.1, 10.0], [4800.0, 4.0, -0.5, 0.0, 20.0]])
    c50 = emulator_crb(em, x, 50.0)
    assert c50.shape == (2, 5)
    np.testing.assert_allclose(c50, cramer_rao_bound(em.jacobian(x), 1 / 50.0), rtol=1e-10)
    np.testing.assert_allclose(emulator_crb(em, x, 100.0), c50 / 2, rtol=1e-10)      # ∝ 1/snr
    np.testing.assert_allclose(emulator_crb(em, x[0], 50.0), c50[0], rtol=1e-12)
    np.testing.assert_allclose(emulator_crb(em, x, np.array([50.0, 25.0]))[1], 2 * c50[1], rtol=1e-10)
    prop = emulator_crb(em, x, 50.0, sigma_model="proportional")
    np.testing.assert_allclose(prop, cramer_rao_bound(em.jacobian(x), em.evaluate(x) / 50.0), rtol=1e-10)
    mask = np.zeros(em.n_pix, bool)
    mask[::2] = True
    np.testing.assert_allclose(emulator_crb(em, x, 50.0, mask=mask),
                               cramer_rao_bound(em.jacobian(x)[:, ~mask], 1 / 50.0), rtol=1e-10)
    full = np.zeros(200, bool)
    full[em.pixel_index] = mask
    np.testing.assert_allclose(emulator_crb(em, x, 50.0, mask=full), emulator_crb(em, x, 50.0, mask=mask))


def test_emulator_crb_real_dwarf_at_snr50():
    if not EMU_FILE.is_file():
        pytest.skip(f"emulator file {EMU_FILE} is absent")
    from kielnet.io.emulator import load_payne_emulator

    em = load_payne_emulator(EMU_FILE)
    crb = emulator_crb(em, [5500.0, 4.5, 0.0, 0.0, 10.0], 50.0)
    # 7214 px at S/N 50: tens of K in Teff, a few 0.01 dex in log g and abundances
    assert 5 < crb[0] < 60
    assert 0.005 < crb[1] < 0.06
    assert 0.003 < crb[2] < 0.03 and 0.003 < crb[3] < 0.03
    assert np.isfinite(crb).all()
