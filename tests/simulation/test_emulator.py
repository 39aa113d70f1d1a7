"""Payne-format emulator: loader, evaluation, analytic Jacobian, validity box, simulation."""

from __future__ import annotations

import math
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest

from kielnet.errors import InputError
from kielnet.io.emulator import (APOGEE_DWARF_BOX, apogee_payne_pixel_index, load_payne_emulator,
                                 load_payne_spectra, load_pixel_mask, wavelength_to_pixel_index)
from kielnet.simulation import PayneEmulator, apstar_wavelength, sample_labels, simulate

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
EMU_DIR = DATA / "apogee" / "emulator"
EMU_FILE = EMU_DIR / "NN_normalized_spectra_old.npz"
SPEC_FILE = EMU_DIR / "spectrum_ap_id_2M13012770+5754582_.npz"
KEYS = ("w_array_0", "b_array_0", "w_array_1", "b_array_1", "x_min", "x_max")


def toy_emulator(n_pix: int = 120, n_hidden: int = 5, seed: int = 0, n_full: int = 200) -> PayneEmulator:
    """A random, data-free Payne network on pixels 40 … 40+n_pix of an n_full grid."""
    rng = np.random.default_rng(seed)
    return PayneEmulator(
        w0=rng.normal(0, 2.0, (n_pix, n_hidden, 5)), b0=rng.normal(0, 1.0, (n_pix, n_hidden)),
        w1=rng.normal(0, 0.2, (n_pix, n_hidden)), b1=1.0 - rng.uniform(0, 0.3, n_pix),
        x_min=np.array([4000.0, 3.5, -1.0, -0.3, 0.0]), x_max=np.array([7000.0, 5.0, 0.5, 0.5, 40.0]),
        pixel_index=np.arange(40, 40 + n_pix), n_full_pixels=n_full)


@pytest.fixture(scope="module")
def emu_path() -> Path:
    if not EMU_FILE.is_file():
        pytest.skip(f"emulator file {EMU_FILE} is absent")
    return EMU_FILE


@pytest.fixture(scope="module")
def emulator(emu_path: Path) -> PayneEmulator:
    return load_payne_emulator(emu_path)


# ------------------------------------------------------------------------ loader
def test_loader_layout(emulator, emu_path):
    raw = np.load(emu_path, allow_pickle=False)
    assert emulator.w0.shape == raw["w_array_0"].shape == (7214, 5, 5)
    assert (emulator.n_pix, emulator.n_hidden, emulator.n_labels) == (7214, 5, 5)
    assert emulator.label_names == ("teff", "logg", "fe_h", "mg_fe", "vmacro")
    np.testing.assert_array_equal(emulator.x_min, raw["x_min"])
    np.testing.assert_array_equal(emulator.pixel_index, apogee_payne_pixel_index())
    assert emulator.pixel_index[0] == 322 and emulator.pixel_index[-1] == 8305
    assert emulator.n_full_pixels == 8575 and emulator.source == str(emu_path)


def test_pixel_index_from_wavelength_file_matches_readme_layout(emu_path):
    wave_file = EMU_DIR / "apogee_wavelength.npz"
    if not wave_file.is_file():
        pytest.skip("apogee_wavelength.npz is absent")
    em = load_payne_emulator(emu_path, wavelength=wave_file)
    np.testing.assert_array_equal(em.pixel_index, apogee_payne_pixel_index())
    wl = np.load(wave_file, allow_pickle=False)["wavelength"]
    np.testing.assert_allclose(apstar_wavelength().to_value(u.AA)[em.pixel_index], wl, rtol=1e-9)
    with pytest.raises(InputError, match="disagrees"):
        load_payne_emulator(emu_path, wavelength=wave_file, pixel_index=apogee_payne_pixel_index() + 1)


def _write_npz(path: Path, arrays: dict) -> Path:
    np.savez(path, **arrays)
    return path


def _toy_arrays(n_pix: int = 30) -> dict:
    em = toy_emulator(n_pix)
    return {"w_array_0": em.w0, "b_array_0": em.b0, "w_array_1": em.w1, "b_array_1": em.b1,
            "x_min": em.x_min, "x_max": em.x_max}


def test_loader_errors(tmp_path):
    arrays = _toy_arrays()
    with pytest.raises(InputError, match="does not exist"):
        load_payne_emulator(tmp_path / "nope.npz")
    for key in KEYS:
        bad = {k: v for k, v in arrays.items() if k != key}
        with pytest.raises(InputError, match=f"'{key}' is missing") as exc:
            load_payne_emulator(_write_npz(tmp_path / f"no_{key}.npz", bad), pixel_index=np.arange(30))
        assert exc.value.field == key and exc.value.source.endswith(f"no_{key}.npz")
    bad = dict(arrays, b_array_0=arrays["b_array_0"][:, :3])
    with pytest.raises(InputError, match="b_array_0") as exc:
        load_payne_emulator(_write_npz(tmp_path / "shape.npz", bad), pixel_index=np.arange(30))
    assert exc.value.field == "b_array_0"
    bad = dict(arrays, w_array_0=arrays["w_array_0"][:, :, 0])
    with pytest.raises(InputError, match="3-D"):
        load_payne_emulator(_write_npz(tmp_path / "w0.npz", bad), pixel_index=np.arange(30))
    bad = dict(arrays, x_max=arrays["x_min"][:4])
    with pytest.raises(InputError, match="x_max"):
        load_payne_emulator(_write_npz(tmp_path / "xmax.npz", bad), pixel_index=np.arange(30))
    # a pickled object array is refused, not executed
    bad = dict(arrays, b_array_1=np.array([object()] * 30, dtype=object))
    with pytest.raises(InputError, match="cannot read"):
        load_payne_emulator(_write_npz(tmp_path / "pickle.npz", bad), pixel_index=np.arange(30))
    # pixel layout: unknown for a 30-pixel network, bad lengths and out-of-grid indices
    good = _write_npz(tmp_path / "good.npz", arrays)
    with pytest.raises(InputError, match="pixel_index"):
        load_payne_emulator(good)
    with pytest.raises(InputError, match="pixel_index"):
        load_payne_emulator(good, pixel_index=np.arange(29))
    with pytest.raises(InputError, match="pixel_index"):
        load_payne_emulator(good, pixel_index=np.arange(30) + 8560)
    with pytest.raises(InputError, match="label names"):
        load_payne_emulator(good, pixel_index=np.arange(30), label_names=["a", "b"])
    em = load_payne_emulator(good, pixel_index=np.arange(100, 130), box=None)
    np.testing.assert_array_equal(em.valid_box, np.stack([arrays["x_min"], arrays["x_max"]]))


def test_loader_reads_pixel_index_and_names_from_file(tmp_path):
    arrays = dict(_toy_arrays(), pixel_index=np.arange(5, 35), label_names=np.array(list("abcde")))
    em = load_payne_emulator(_write_npz(tmp_path / "full.npz", arrays), n_full_pixels=50)
    assert em.label_names == tuple("abcde")
    np.testing.assert_array_equal(em.pixel_index, np.arange(5, 35))


def test_wavelength_to_pixel_index():
    wl = apstar_wavelength()
    np.testing.assert_array_equal(wavelength_to_pixel_index(wl[[0, 7, 8574]]), [0, 7, 8574])
    np.testing.assert_array_equal(wavelength_to_pixel_index(wl.to_value(u.AA)[100:103]), [100, 101, 102])
    with pytest.raises(InputError, match="not on the log-linear grid"):
        wavelength_to_pixel_index(np.sqrt(wl[100:102] * wl[101:103]))
    with pytest.raises(InputError, match="outside"):
        wavelength_to_pixel_index(wl[:3], n_full_pixels=2)


# ------------------------------------------------------------------------ evaluation
def _hand_pixel(raw, p: int, x: np.ndarray) -> float:
    """Flux of pixel ``p`` from the raw arrays with explicit loops (the README's formula)."""
    w0, b0, w1, b1 = raw["w_array_0"], raw["b_array_0"], raw["w_array_1"], raw["b_array_1"]
    x_min, x_max = raw["x_min"], raw["x_max"]
    s = [(float(x[j]) - float(x_min[j])) / (float(x_max[j]) - float(x_min[j])) - 0.5 for j in range(len(x))]
    total = float(b1[p])
    for i in range(w0.shape[1]):
        z = float(b0[p, i])
        for j in range(len(s)):
            z += float(w0[p, i, j]) * s[j]
        total += float(w1[p, i]) / (1.0 + math.exp(-z))
    return total


def test_evaluate_matches_hand_computed_pixels(emulator, emu_path):
    raw = np.load(emu_path, allow_pickle=False)
    x = np.array([[5500.0, 4.5, 0.0, 0.05, 10.0], [4600.0, 4.7, -0.5, 0.3, 3.0]])
    flux = emulator.evaluate(x)
    assert flux.shape == (2, 7214) and flux.dtype == np.float64
    for p in (0, 1234, 5000, 7213):
        for n in range(2):
            assert flux[n, p] == pytest.approx(_hand_pixel(raw, p, x[n]), rel=1e-10, abs=1e-12)
    # a normalised spectrum: continuum ~1, lines below it
    assert 0.9 < np.median(flux) < 1.05 and flux.min() > 0.3


def test_evaluate_vectorisation_and_shapes(emulator):
    rng = np.random.default_rng(3)
    x = sample_labels(emulator, 300, rng)        # > one internal chunk
    flux = emulator.evaluate(x)
    assert flux.shape == (300, 7214)
    np.testing.assert_allclose(flux[[0, 299]], np.stack([emulator.evaluate(x[0]), emulator.evaluate(x[299])]),
                               rtol=1e-12)
    assert emulator.evaluate(x[5]).shape == (7214,)
    with pytest.raises(InputError, match="labels must have shape"):
        emulator.evaluate(np.ones(4))
    jac, f2 = emulator.jacobian(x[:3], return_flux=True)
    assert jac.shape == (3, 7214, 5)
    np.testing.assert_allclose(f2, flux[:3], rtol=1e-12)
    assert emulator.jacobian(x[0]).shape == (7214, 5)


@pytest.mark.parametrize("which", ["toy", "real"])
def test_jacobian_matches_central_differences(which, request):
    em = toy_emulator() if which == "toy" else request.getfixturevalue("emulator")
    x = np.array([[5500.0, 4.5, 0.0, 0.05, 10.0], [4900.0, 4.2, -0.3, 0.2, 25.0]])
    jac = em.jacobian(x)
    width = em.x_max - em.x_min
    for j in range(5):
        h = 1e-4 * width[j]
        dx = np.zeros(5)
        dx[j] = h
        fd = (em.evaluate(x + dx) - em.evaluate(x - dx)) / (2 * h)
        scale = np.abs(jac[..., j]).max()
        np.testing.assert_allclose(jac[..., j], fd, rtol=1e-4, atol=1e-6 * scale)


def test_valid_box_and_in_box(emulator):
    box = emulator.valid_box
    assert box.shape == (2, 5)
    # tighter of README dwarf box and training range
    for j, name in enumerate(emulator.label_names):
        lo, hi = APOGEE_DWARF_BOX.get(name, (-np.inf, np.inf))
        assert box[0, j] == max(lo, emulator.x_min[j]) and box[1, j] == min(hi, emulator.x_max[j])
    assert box[0, 0] >= 4200 and box[1, 0] <= 7000 and box[0, 1] >= 4.0 and box[1, 1] <= 5.0
    x = np.array([[5500.0, 4.5, 0.0, 0.0, 10.0], [3500.0, 4.5, 0.0, 0.0, 10.0], [5500.0, 2.5, 0.0, 0.0, 10.0]])
    np.testing.assert_array_equal(emulator.in_box(x), [True, False, False])
    assert emulator.in_box(x[0]) and not emulator.in_box(x[1])
    np.testing.assert_allclose(emulator.box_centre, box.mean(axis=0))


def test_configurable_box():
    em = toy_emulator()
    narrow = PayneEmulator(w0=em.w0, b0=em.b0, w1=em.w1, b1=em.b1, x_min=em.x_min, x_max=em.x_max,
                           pixel_index=em.pixel_index, n_full_pixels=200,
                           box={"teff": (5000.0, 9000.0), "logg": (4.0, 5.0), "not_a_label": (0, 1)})
    np.testing.assert_array_equal(narrow.valid_box[:, 0], [5000.0, 7000.0])
    np.testing.assert_array_equal(narrow.valid_box[:, 1], [4.0, 5.0])
    np.testing.assert_array_equal(narrow.valid_box[:, 2:], em.valid_box[:, 2:])
    with pytest.raises(InputError, match="empty"):
        PayneEmulator(w0=em.w0, b0=em.b0, w1=em.w1, b1=em.b1, x_min=em.x_min, x_max=em.x_max,
                      pixel_index=em.pixel_index, n_full_pixels=200, box={"logg": (0.0, 2.0)})


def test_sample_labels_inside_box():
    em = toy_emulator()
    rng = np.random.default_rng(1)
    x = sample_labels(em, 2000, rng)
    assert x.shape == (2000, 5) and em.in_box(x).all()
    lo, hi = em.valid_box
    assert np.all(x.min(0) < lo + 0.01 * (hi - lo)) and np.all(x.max(0) > hi - 0.01 * (hi - lo))
    y = sample_labels(em, 500, rng, box={"teff": (5000.0, 5200.0), "logg": (2.0, 4.0)})
    assert y[:, 0].min() >= 5000 and y[:, 0].max() <= 5200
    assert y[:, 1].min() >= 3.5 and y[:, 1].max() <= 4.0      # intersected with the training range
    z = sample_labels(em, 10, rng, box=np.stack([lo, lo + 1e-3]))
    assert em.in_box(z).all()
    with pytest.raises(InputError, match="unknown labels"):
        sample_labels(em, 3, rng, box={"alpha": (0, 1)})


# ------------------------------------------------------------------------ simulation
def test_simulate_layout_toy():
    em = toy_emulator()
    x = sample_labels(em, 4, np.random.default_rng(0))
    st = simulate(em, x, 80.0, np.random.default_rng(1))
    assert st.flux.shape == st.flux_err.shape == (4, 200)
    assert list(st.ids) == ["sim_000001", "sim_000002", "sim_000003", "sim_000004"]
    inside = np.zeros(200, bool)
    inside[em.pixel_index] = True
    assert np.isnan(st.flux[:, ~inside]).all() and np.isnan(st.flux_err[:, ~inside]).all()
    assert np.isfinite(st.flux[:, inside]).all()
    np.testing.assert_allclose(st.flux_err[:, inside], 1 / 80.0, rtol=1e-6)
    for j, name in enumerate(em.label_names):
        np.testing.assert_array_equal(st.labels[name], x[:, j])
    # labels as a mapping, noiseless
    st0 = simulate(em, st.labels, None, np.random.default_rng(1))
    np.testing.assert_allclose(st0.flux[:, inside], em.evaluate(x), rtol=1e-6)
    assert (st0.flux_err[:, inside] == 0).all()
    with pytest.raises(InputError, match="snr"):
        simulate(em, x, np.array([10.0, 20.0]), np.random.default_rng(1))
    with pytest.raises(InputError, match="snr"):
        simulate(em, x, -5.0, np.random.default_rng(1))


def test_simulate_apstar_grid_and_noise_level(emulator):
    rng = np.random.default_rng(7)
    x = sample_labels(emulator, 20, rng)
    st = simulate(emulator, x, 50.0, rng)
    assert st.flux.shape == (20, 8575) and st.n_pix == 8575
    assert st.ids[0] == "sim_000001" and st.ids[-1] == "sim_000020"
    assert set(st.labels) == {"teff", "logg", "fe_h", "mg_fe", "vmacro"}
    wl = st.wavelength.to_value(u.AA)
    assert wl[0] == pytest.approx(10 ** 4.179) and wl[-1] == pytest.approx(10 ** (4.179 + 6e-6 * 8574))
    outside = np.ones(8575, bool)
    outside[emulator.pixel_index] = False
    assert outside.sum() == 8575 - 7214
    assert np.isnan(st.flux[:, outside]).all() and np.isnan(st.flux_err[:, outside]).all()
    assert np.isfinite(st.flux[:, ~outside]).all()
    resid = st.flux[:, ~outside] - emulator.evaluate(x)
    assert resid.std() == pytest.approx(1 / 50, rel=0.02)           # σ = 1/snr (continuum S/N)
    assert abs(resid.mean()) < 1e-3
    # per-star S/N and the proportional noise model σ = flux / snr
    snr = np.array([20.0, 200.0])
    st2 = simulate(emulator, x[:2], snr, rng, sigma_model="proportional")
    clean = emulator.evaluate(x[:2])
    np.testing.assert_allclose(st2.flux_err[:, ~outside], clean / snr[:, None], rtol=1e-6)
    z = (st2.flux[:, ~outside] - clean) / st2.flux_err[:, ~outside]
    assert z.std() == pytest.approx(1.0, rel=0.03)
    np.testing.assert_array_equal(st2.extra["snr"], snr)


def test_load_payne_spectra_and_mask(emulator):
    if not SPEC_FILE.is_file():
        pytest.skip("real spectrum is absent")
    st = load_payne_spectra(SPEC_FILE, emulator)
    assert list(st.ids) == ["2M13012770+5754582"] and st.n_pix == 8575
    raw = np.load(SPEC_FILE, allow_pickle=False)
    np.testing.assert_array_equal(st.flux[0, emulator.pixel_index], raw["spectrum"])
    assert np.isnan(st.flux[0, :322]).all()
    mask = load_pixel_mask(EMU_DIR / "apogee_mask.npz")
    assert mask.shape == (7214,) and mask.dtype == bool and 0 < mask.sum() < 7214
    visits = next(EMU_DIR.glob("visit_spectra_ap_id_*.npz"), None)
    if visits is not None:
        sv = load_payne_spectra(visits, emulator)
        assert len(sv) == 3 and set(sv.extra) == {"snr", "vhelio", "hjd"}
