"""`kielnet simulate`: labelled spectra from a Payne-format emulator, via kielnet.cli.main."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kielnet.cli import main
from kielnet.io import load_payne_emulator, read_stars

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
EMU_FILE = DATA / "apogee" / "emulator" / "NN_normalized_spectra_old.npz"
N_PIX = 8575
N_EMULATED = 7214


@pytest.fixture(scope="module")
def emu_path() -> Path:
    if not EMU_FILE.is_file():
        pytest.skip(f"emulator file {EMU_FILE} is absent")
    return EMU_FILE


@pytest.fixture(scope="module")
def emulator(emu_path):
    return load_payne_emulator(emu_path)


def _simulate(emu_path, out, *extra):
    return main(["simulate", "--emulator", str(emu_path), "--n", "8", "--snr", "20:100",
                 "--out", str(out), *extra])


def test_simulate_writes_labelled_spectra(capsys, emu_path, emulator, tmp_path):
    out = tmp_path / "sim.parquet"
    assert _simulate(emu_path, out) == 0
    printed = capsys.readouterr().out
    assert "8 simulated spectra" in printed and str(out) in printed and "8575 px" in printed
    st = read_stars(out)
    assert len(st) == 8
    assert st.flux.shape == (8, N_PIX) and st.flux_err.shape == (8, N_PIX)
    assert list(st.ids) == [f"sim_{i:06d}" for i in range(1, 9)]
    # every emulated label is a label (kept by the roles metadata), inside the emulator's box
    assert sorted(st.labels) == sorted(emulator.label_names)
    lo, hi = emulator.valid_box
    for j, name in enumerate(emulator.label_names):
        v = st.labels[name]
        assert np.isfinite(v).all()
        assert ((v >= lo[j]) & (v <= hi[j])).all(), name
    assert 4200.0 <= st.labels["teff"].min() and st.labels["teff"].max() <= 7000.0
    assert 4.0 <= st.labels["logg"].min() and st.labels["logg"].max() <= 5.0
    # S/N drawn in [20, 100], noise sigma = 1/SNR on the emulated pixels, NaN elsewhere
    snr = np.asarray(st.extra["snr"], float)
    assert ((snr >= 20) & (snr <= 100)).all() and len(np.unique(snr)) == 8
    assert st.scalars == {}
    good = np.isfinite(st.flux)
    assert (good.sum(axis=1) == N_EMULATED).all()
    np.testing.assert_array_equal(good, np.isfinite(st.flux_err))
    for i in range(8):
        np.testing.assert_allclose(st.flux_err[i][good[i]], 1.0 / snr[i], rtol=1e-6)
    # the spectra are the emulator's flux plus noise of that size
    x = np.stack([st.labels[n] for n in emulator.label_names], axis=1)
    resid = (st.flux[:, emulator.pixel_index] - emulator.evaluate(x)) * snr[:, None]
    assert resid.std() == pytest.approx(1.0, rel=0.05)
    assert abs(resid.mean()) < 0.05


def test_seed_and_id_prefix(capsys, emu_path, tmp_path):
    assert _simulate(emu_path, tmp_path / "a.parquet", "--seed", "3", "--id-prefix", "x") == 0
    assert _simulate(emu_path, tmp_path / "b.parquet", "--seed", "3", "--id-prefix", "x") == 0
    assert _simulate(emu_path, tmp_path / "c.parquet", "--seed", "4") == 0
    a, b, c = (read_stars(tmp_path / f"{k}.parquet") for k in "abc")
    assert a.ids[0] == "x000001"
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_array_equal(a.labels["teff"], b.labels["teff"])
    assert not np.array_equal(a.labels["teff"], c.labels["teff"])


def test_fixed_snr_and_fits_output(capsys, emu_path, tmp_path):
    out = tmp_path / "sim.fits"
    assert main(["simulate", "--emulator", str(emu_path), "--n", "3", "--snr", "50", "--out", str(out)]) == 0
    st = read_stars(out)
    assert len(st) == 3 and st.n_pix == N_PIX
    np.testing.assert_allclose(np.asarray(st.extra["snr"], float), 50.0)
    assert {"mg_fe", "vmacro"} <= set(st.labels)


def test_missing_emulator_exits_2_naming_the_file(capsys, tmp_path):
    bad = tmp_path / "no_such_emulator.npz"
    rc = main(["simulate", "--emulator", str(bad), "--n", "8", "--snr", "20:100",
               "--out", str(tmp_path / "x.parquet")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "kielnet simulate: error" in err and str(bad) in err
    assert not (tmp_path / "x.parquet").exists()


def test_unreadable_emulator_exits_2_naming_the_file(capsys, tmp_path):
    bad = tmp_path / "junk.npz"
    bad.write_bytes(b"this is not an npz file")
    assert main(["simulate", "--emulator", str(bad), "--n", "2", "--out", str(tmp_path / "x.parquet")]) == 2
    assert str(bad) in capsys.readouterr().err


def test_non_positive_snr_exits_2(capsys, emu_path, tmp_path):
    assert main(["simulate", "--emulator", str(emu_path), "--n", "2", "--snr", "0",
                 "--out", str(tmp_path / "x.parquet")]) == 2
    assert "snr" in capsys.readouterr().err


def test_malformed_snr_exits_2(capsys, emu_path, tmp_path):
    rc = main(["simulate", "--emulator", str(emu_path), "--n", "2", "--snr", "abc",
               "--out", str(tmp_path / "x.parquet")])
    assert rc == 2
    assert "snr" in capsys.readouterr().err
