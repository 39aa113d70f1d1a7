"""The official APOGEE Net II weights in kielnet: safe import, exact parity with a plain
forward of the official network, realisation σ, export round trip, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from apogeenet2_reference import APOGEENet
from kielnet.errors import InputError
from kielnet.artifact import load_bundle, save_bundle
from kielnet.inference.predict import predict
from kielnet.interop.apogeenet2 import (ASTRA_INFLATION, export_apogeenet2, import_apogeenet2, official_shapes,
                                        read_official_state)

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
APSTAR_DIR = DATA / "apogee" / "apStar"
#: the official de-normalisation (apogeenet2/model.py): output order logg, log Teff, [Fe/H]
OFFICIAL_MEAN = np.array([2.925783395767212, 3.6705732345581055, -0.13088105618953705])
OFFICIAL_STD = np.array([1.1890668869018555, 0.0917675793170929, 0.25668784976005554])


def _official_network(seed: int = 0) -> APOGEENet:
    """The official module with random weights; fc3 is scaled so that the labels of real
    apStar spectra (raw flux ~1e2-1e3) spread by ~0.03 dex in log g, inside the physical
    ranges (with the default initialisation they would all sit within 1e-5 of the means,
    too close for a parity test to tell a wrong weight mapping from a right one)."""
    torch.manual_seed(seed)
    net = APOGEENet()
    with torch.no_grad():
        net.fc3.weight.mul_(30.0)
    return net.eval()


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    net = _official_network()
    path = tmp_path_factory.mktemp("official") / "model.pt"
    torch.save(net.state_dict(), path)  # as the official package stores it
    return net, path


@pytest.fixture(scope="module")
def bundle_dir(official, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "bundle"
    save_bundle(import_apogeenet2(official[1]), out)
    return out


@pytest.fixture(scope="module")
def apstar():
    if not APSTAR_DIR.is_dir():
        pytest.skip(f"apStar directory {APSTAR_DIR} is absent")
    from kielnet.data.startable import StarTable
    from kielnet.io import read_stars

    table = read_stars(APSTAR_DIR)
    rng = np.random.default_rng(5)
    n = len(table)
    g = rng.uniform(9.0, 13.0, n)
    meta = StarTable(ids=table.ids, scalars={"parallax": rng.uniform(1.0, 10.0, n), "g": g, "bp": g + 0.9,
                                             "rp": g - 1.0}, meta={"source": "<metadata>"})
    return table.join_scalars(meta)


def _plain_forward(net: APOGEENet, bundle, table) -> np.ndarray:
    """The official network on the official inputs (kielnet's apogee_net_2_official
    preparation), de-normalised as apogeenet2/model.py does: (n, 3) logg, log Teff, [Fe/H]."""
    prep = bundle.preprocessor.transform(table, with_labels=False)
    x = torch.from_numpy(np.asarray(prep.spectrum, np.float32)).reshape(len(table), 1, -1)
    m = torch.from_numpy(np.asarray(prep.branches["metadata"], np.float32))
    with torch.no_grad():
        out = net(x, m).double().numpy()
    return out * OFFICIAL_STD + OFFICIAL_MEAN


def test_imported_bundle_equals_the_plain_official_forward_on_real_apstar(official, bundle_dir, apstar):
    net, _ = official
    bundle = load_bundle(bundle_dir)  # verified like any bundle
    assert bundle.config.name == "apogee_net_2_official" and len(bundle.members) == 1
    cat = predict(bundle, apstar, n_realisations=0)
    want = _plain_forward(net, bundle, apstar)
    got = np.stack([np.asarray(cat["logg"], float), np.log10(np.asarray(cat["teff"], float)),
                    np.asarray(cat["fe_h"], float)], axis=1)
    assert np.isfinite(got[:, :2]).all()
    fin = np.isfinite(got)
    assert fin[:, 2].sum() + (np.asarray(cat["not_reported"]) == "fe_h:rule").sum() == len(cat)
    assert np.std(want[:, 0]) > 1e-2 and np.std(want[:, 1]) > 1e-3  # the labels differ between stars
    assert np.max(np.abs(got[fin] - want[fin])) <= 1e-5


def test_realisation_sigma_agrees_in_distribution(official, bundle_dir, apstar):
    """kielnet's 20 stacked realisations vs a one-spectrum-per-forward loop like the
    official pipeline's (other random draws): the per-star σ agree in distribution."""
    net, _ = official
    bundle = load_bundle(bundle_dir)
    table = apstar.take(np.arange(8))
    cat = predict(bundle, table, n_realisations=20, rng=np.random.default_rng(1))
    rng = np.random.default_rng(2)
    prep = bundle.preprocessor.transform(table, with_labels=False)
    flux, err = np.asarray(table.flux, float), np.asarray(table.flux_err, float)
    sig = []
    for i in range(len(table)):
        e = np.where(np.isfinite(err[i]), err[i], 0.0)
        e = np.minimum(e, 5.0 * np.median(e[e > 0]))  # the paper's clip at 5x the median error
        one = table.take([i])
        outs = []
        for _ in range(20):
            one.flux = (flux[i] + rng.standard_normal(flux.shape[1]) * e)[None, :]
            outs.append(_plain_forward(net, bundle, one)[0])
        sig.append(np.std(np.asarray(outs), axis=0, ddof=1))
    sig = np.asarray(sig)
    assert prep.spectrum.shape[0] == len(table)
    ratio = np.asarray(cat["e_logg_noise"], float) / sig[:, 0]
    assert np.all(np.isfinite(ratio)) and 0.6 < np.median(ratio) < 1.6
    teff_ratio = (np.asarray(cat["e_teff_noise"], float) / np.asarray(cat["teff"], float) / np.log(10)) / sig[:, 1]
    assert 0.6 < np.median(teff_ratio) < 1.6


def test_astra_inflation_is_selectable(official, apstar):
    plain = import_apogeenet2(official[1])
    astra = import_apogeenet2(official[1], sigma="astra")
    table = apstar.take(np.arange(4))
    a = predict(plain, table, n_realisations=5, rng=np.random.default_rng(3))
    b = predict(astra, table, n_realisations=5, rng=np.random.default_rng(3))
    for name, (k, c) in ASTRA_INFLATION.items():
        raw = np.asarray(a[f"sigma_{name}"], float)
        fin = np.isfinite(raw)
        np.testing.assert_allclose(np.asarray(b[f"sigma_{name}"], float)[fin], k * raw[fin] + c, rtol=1e-12)


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    state = {k: torch.zeros(s) for k, s in official_shapes().items()}
    state["conv1.weight"] = Evil()
    path = tmp_path / "model.pt"
    torch.save(state, path)
    with pytest.raises(InputError, match="pickled objects"):
        import_apogeenet2(path)
    assert not marker.exists()
    torch.save(Evil(), path)  # a whole pickled object instead of a state dict
    with pytest.raises(InputError):
        read_official_state(path)
    assert not marker.exists()


def _bad(kind: str) -> dict:
    state = {k: torch.randn(s) for k, s in official_shapes().items()}
    if kind == "missing":
        del state["fc2.bias"]
    elif kind == "extra":
        state["fc4.weight"] = torch.zeros(3)
    elif kind == "shape":
        state["conv3.weight"] = torch.zeros(16, 8, 5)
    elif kind == "nan":
        state["metadata.l2.weight"][0, 0] = float("nan")
    elif kind == "int":
        state["fc3.bias"] = torch.zeros(3, dtype=torch.int64)
    return state


@pytest.mark.parametrize("kind,message", [("missing", "missing fc2.bias"), ("extra", "unexpected fc4.weight"),
                                          ("shape", "'conv3.weight' has shape"), ("nan", "non-finite"),
                                          ("int", "not floating point")])
def test_wrong_state_dicts_are_refused(tmp_path, kind, message):
    path = tmp_path / "model.pt"
    torch.save(_bad(kind), path)
    with pytest.raises(InputError, match=message) as info:
        import_apogeenet2(path)
    assert str(path) in str(info.value)


def test_export_then_import_round_trips_bit_for_bit(official, bundle_dir, tmp_path):
    original = read_official_state(official[1])
    out = export_apogeenet2(load_bundle(bundle_dir), tmp_path / "exported.pt")
    again = read_official_state(out)
    assert list(again) == list(original)
    for k in original:
        assert torch.equal(again[k], original[k]), k
    # and the exported file loads into the official module as the official package loads it
    net = APOGEENet()
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)


def test_cli_import_then_predict_an_apstar_directory(official, apstar, tmp_path, capsys):
    from kielnet.cli import main
    from kielnet.io import read_catalogue

    out = tmp_path / "b"
    assert main(["import-weights", "apogeenet2", str(official[1]), "--out", str(out)]) == 0
    assert "SHA-256" in capsys.readouterr().out
    card = (out / "MODEL_CARD.md").read_text()
    import hashlib

    assert hashlib.sha256(official[1].read_bytes()).hexdigest() in card
    for words in ("hutchresearch/ApogeeNet2", "MIT", "Sprague", "lacks", "noise realisations"):
        assert words in card, words
    meta = tmp_path / "meta.csv"
    from astropy.table import Table

    Table({"id": apstar.ids, **{c: apstar.scalars[c] for c in ("parallax", "g", "bp", "rp")}}).write(meta)
    cat_path = tmp_path / "labels.parquet"
    assert main(["predict", "--bundle", str(out), "--data", str(APSTAR_DIR), "--metadata", str(meta),
                 "--out", str(cat_path), "--realisations", "2"]) == 0
    cat = read_catalogue(cat_path)
    assert len(cat) == len(apstar) and np.isfinite(np.asarray(cat["teff"], float)).all()
    assert main(["export-weights", "apogeenet2", "--bundle", str(out), "--out", str(tmp_path / "m.pt")]) == 0
