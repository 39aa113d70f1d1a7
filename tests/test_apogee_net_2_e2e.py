"""APOGEE Net II end to end: train the apogee_net_2 preset (full architecture, 8575-px
spectra + 7 metadata inputs) on emulator-simulated spectra for 2 epochs, then label
held-out simulated spectra (with noise realisations) and the 26 real apStar files
joined with a metadata table (in memory and through `kielnet predict --metadata`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from kielnet.config import load_config
from kielnet.data.preprocess import Preprocessor
from kielnet.data.startable import StarTable
from kielnet.artifact import load_bundle, save_bundle
from kielnet.inference.predict import predict
from kielnet.quality.flags import FLAG_BITS

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
EMU_FILE = DATA / "apogee" / "emulator" / "NN_normalized_spectra_old.npz"
APSTAR_DIR = DATA / "apogee" / "apStar"
N_PIX = 8575
N_EMULATED = 7214
META_COLS = ("parallax", "g", "bp", "rp")
MISSING = 1 << FLAG_BITS["missing_input"]
NOT_REPORTED = 1 << FLAG_BITS["label_not_reported"]
BAD = 1 << FLAG_BITS["bad_spectrum"]
UNLABELLED = sum(1 << FLAG_BITS[n] for n in ("bad_spectrum", "implausible_spectrum", "prediction_failed",
                                             "label_unphysical"))


def _add_metadata(table: StarTable, rng: np.random.Generator) -> StarTable:
    """Plausible Gaia/2MASS values for dwarfs: parallax [mas], G/BP/RP/J/H/K [mag]."""
    n = len(table)
    teff = table.labels["teff"]
    g = rng.uniform(9.0, 14.0, n)
    col = (6000.0 - teff) / 2000.0
    table.scalars.update({
        "parallax": rng.uniform(1.0, 12.0, n), "g": g, "bp": g + 0.35 + 0.5 * col, "rp": g - 0.5 - 0.4 * col,
        "j": g - 1.0 - 0.6 * col, "h": g - 1.3 - 0.7 * col, "k": g - 1.35 - 0.75 * col})
    return table


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not EMU_FILE.is_file():
        pytest.skip(f"emulator file {EMU_FILE} is absent")
    from kielnet.io import load_payne_emulator
    from kielnet.simulation import sample_labels, simulate
    from kielnet.training.ensemble import train_ensemble

    torch.set_num_threads(1)
    emu = load_payne_emulator(EMU_FILE)
    rng = np.random.default_rng(2022)
    n = 100
    train = simulate(emu, sample_labels(emu, n, rng), rng.uniform(30.0, 200.0, n), rng, id_prefix="train_")
    train = _add_metadata(train, rng)
    held = simulate(emu, sample_labels(emu, 5, rng), rng.uniform(20.0, 60.0, 5), rng, id_prefix="held_")
    held = _add_metadata(held, rng)
    cfg = load_config("apogee_net_2").with_overrides(training={"max_epochs": 2, "batch_size": 32, "threads": 1})
    logs: list[str] = []
    bundle = train_ensemble(train, cfg, progress=False, log=logs.append)
    path = save_bundle(bundle, tmp_path_factory.mktemp("ap2") / "bundle")
    return {"bundle": bundle, "path": path, "held": held, "cfg": cfg, "logs": logs}


@pytest.fixture(scope="module")
def apstar():
    if not APSTAR_DIR.is_dir() or not sorted(APSTAR_DIR.glob("apStar*.fits")):
        pytest.skip(f"no apStar files in {APSTAR_DIR}")
    from kielnet.io import read_apstar

    return read_apstar(APSTAR_DIR)


@pytest.fixture(scope="module")
def normalised(apstar):
    """The real apStar spectra divided by their median flux, as the emulated training
    spectra are: the raw flux is 1-4 dex brighter, and the plausibility checks rightly
    refuse it for this model (test_unnormalised_real_flux_is_implausible_...)."""
    med = np.nanmedian(apstar.flux, axis=1, keepdims=True)
    return replace(apstar, flux=apstar.flux / med, flux_err=apstar.flux_err / med)


@pytest.fixture(scope="module")
def metadata(apstar):
    """Metadata for 20 of the 26 stars, in another order (6 stars lack it)."""
    rng = np.random.default_rng(5)
    keep = rng.permutation(len(apstar))[:20]
    n = len(keep)
    g = rng.uniform(9.0, 13.0, n)
    return StarTable(ids=apstar.ids[keep],
                     scalars={"parallax": rng.uniform(2.0, 30.0, n), "g": g, "bp": g + 0.8, "rp": g - 0.9},
                     meta={"source": "<metadata>"})


def _arr(cat, name):
    return np.asarray(cat[name], dtype=float)


def test_bundle_is_the_paper_model(trained):
    b = trained["bundle"]
    assert b.config.name == "apogee_net_2" and len(b.members) == 1
    assert b.preprocessor.n_pix == N_PIX
    assert b.preprocessor.branch_widths() == {"metadata": 7}
    assert b.config.label_names == ["logg", "teff", "fe_h"]
    # fixed label standardisation of the paper, not fitted to the simulated labels
    lt = {t.name: t.scaler for t in b.preprocessor.label_transforms}
    assert lt["teff"].centre == pytest.approx(3.6705732345581055)
    assert b.training_data["n_trained"] == 100
    # the 1361 apStar pixels the emulator does not cover are NaN and get interpolated
    assert b.training_data["missing"]["spectrum:nonfinite_pixels"] == 100


def test_held_out_simulated_spectra_with_realisations(trained):
    held = trained["held"]
    cat = predict(trained["bundle"], held, n_realisations=3, rng=np.random.default_rng(0))
    assert len(cat) == 5 and list(cat["id"]) == list(held.ids)
    # a 2-epoch network may extrapolate a realisation median beyond the physical range:
    # such a star is NaN and flagged label_unphysical, never a number
    unphys = (np.asarray(cat["flag"]) & (1 << FLAG_BITS["label_unphysical"])) != 0
    assert (~unphys).sum() >= 3
    for name in ("teff", "logg"):
        assert np.isfinite(_arr(cat, name)[~unphys]).all() and np.isnan(_arr(cat, name)[unphys]).all()
        e_noise = _arr(cat, f"e_{name}_noise")[~unphys]
        assert np.isfinite(e_noise).all() and (e_noise > 0).all()
        # one member: e_X is the realisation scatter alone
        np.testing.assert_allclose(_arr(cat, f"e_{name}")[~unphys], e_noise, rtol=1e-12)
    assert (np.asarray(cat["n_bad_pixels"]) == N_PIX - N_EMULATED).all()
    assert all("interpolated_pixels" in s for s in cat["status"])
    assert all(m == "" for m in cat["missing_inputs"])
    # deterministic for a given seed
    again = predict(trained["bundle"], held, n_realisations=3, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(_arr(again, "teff"), _arr(cat, "teff"))


def test_bundle_round_trip_gives_identical_predictions(trained, apstar, metadata):
    loaded = load_bundle(trained["path"])
    assert loaded.config == trained["bundle"].config
    joined = apstar.join_scalars(metadata)
    for table in (trained["held"], joined):
        a = predict(trained["bundle"], table, n_realisations=2, rng=np.random.default_rng(7))
        b = predict(loaded, table, n_realisations=2, rng=np.random.default_rng(7))
        assert a.colnames == b.colnames
        for col in a.colnames:
            if a[col].dtype.kind == "f":
                np.testing.assert_array_equal(_arr(a, col), _arr(b, col), err_msg=col)
            else:
                assert list(a[col]) == list(b[col]), col


def test_real_apstar_files_with_partial_metadata(trained, normalised, metadata):
    apstar = normalised
    joined = apstar.join_scalars(metadata)
    cat = predict(trained["bundle"], joined)  # preset default: 20 realisations
    assert len(cat) == len(apstar) == 26
    assert list(cat["id"]) == list(apstar.ids)
    assert "e_teff_noise" in cat.colnames
    flags = np.asarray(cat["flag"])
    finite = np.isfinite(_arr(cat, "teff")) & np.isfinite(_arr(cat, "logg"))
    # a 2-epoch network trained on 100 emulated FGK dwarfs extrapolates most of these M
    # dwarfs to log g > 6.5 (up to ~40): those rows are NaN with label_unphysical, never numbers
    unlabelled = (flags & UNLABELLED) != 0
    np.testing.assert_array_equal(finite, ~unlabelled)
    assert finite.sum() >= 3 and ((flags & (1 << FLAG_BITS["label_unphysical"])) != 0).sum() >= 10
    lacking = ~np.isin(apstar.ids, metadata.ids)
    assert lacking.sum() == 6
    assert ((flags & MISSING) > 0)[lacking].all()
    for m in np.asarray(cat["missing_inputs"])[lacking]:
        assert set(m.split(",")) >= set(META_COLS)
    # stars with metadata (and 2MASS J/H/K from the apStar header) miss nothing
    complete = np.isfinite(np.stack([joined.scalars[c] for c in (*META_COLS, "j", "h", "k")])).all(axis=0)
    np.testing.assert_array_equal((flags & MISSING) > 0, ~complete)
    # the preset's rule: [Fe/H] withheld exactly where the predicted Teff exceeds 6500 K
    teff = _arr(cat, "teff")
    hot = teff > 6500.0
    np.testing.assert_array_equal(np.isnan(_arr(cat, "fe_h")) & ~unlabelled, hot)
    np.testing.assert_array_equal((flags & NOT_REPORTED) > 0, hot)


def _wide_valid_ranges(bundle):
    """The bundle with the physical-range check of every label widened to +-1e9, to test
    the reporting rule on a 2-epoch network's extrapolated labels."""
    cfg = bundle.config.with_overrides(
        labels=[dict(lab.model_dump(mode="json"), valid_range=[-1e9, 1e9]) for lab in bundle.config.labels])
    return replace(bundle, config=cfg, preprocessor=Preprocessor.from_dict(cfg, bundle.preprocessor.to_dict()))


def test_unnormalised_real_flux_is_implausible_for_a_normalised_model(trained, apstar, metadata):
    cat = predict(trained["bundle"], apstar.join_scalars(metadata), n_realisations=0)
    assert len(cat) == 26 and all("implausible_spectrum" in s for s in cat["status"])
    assert all("scale" in s.split(",") for s in cat["spectrum_issues"])
    assert np.isnan(_arr(cat, "teff")).all()
    lo, hi = trained["bundle"].preprocessor.plausibility.ranges["scale"]
    assert hi < 0.1   # the emulated training spectra are continuum-normalised (median ~ 1)


def test_fe_h_withheld_above_6500_k_on_real_spectra(trained, normalised, metadata):
    """A 2-epoch network predicts nearly one Teff for all stars, so shift its log Teff
    output (label centre) to put the median of the 26 predictions at 6500 K: then
    about half of the stars are hot and the preset's rule must withhold their [Fe/H].
    (The labels' physical-range check is widened: see _wide_valid_ranges.)"""
    bundle = _wide_valid_ranges(trained["bundle"])
    joined = normalised.join_scalars(metadata)
    # the same network without the reporting rule gives the values the rule may withhold
    base = predict(replace(bundle, config=bundle.config.with_overrides(reporting=[])), joined,
                   n_realisations=0)
    teff0 = _arr(base, "teff")
    ok = np.isfinite(teff0)
    pre = Preprocessor.from_dict(bundle.config, bundle.preprocessor.to_dict())
    j = bundle.config.label_names.index("teff")
    pre.label_transforms[j].scaler.centre += np.log10(6500.0) - np.median(np.log10(teff0[ok]))
    shifted = replace(bundle, preprocessor=pre)
    cat = predict(shifted, joined, n_realisations=0)
    teff = _arr(cat, "teff")
    hot = teff > 6500.0
    assert 5 <= hot.sum() <= 21, np.sort(teff)
    np.testing.assert_array_equal(np.isnan(_arr(cat, "fe_h")), hot | ~ok)
    np.testing.assert_array_equal(np.isnan(_arr(cat, "e_fe_h")), hot | ~ok)
    np.testing.assert_array_equal(np.isnan(_arr(cat, "sigma_fe_h")), hot | ~ok)
    np.testing.assert_array_equal((np.asarray(cat["flag"]) & NOT_REPORTED) > 0, hot)
    assert np.isfinite(_arr(cat, "logg")[ok]).all()
    # shifting the Teff output leaves the [Fe/H] values reported in both catalogues unchanged
    np.testing.assert_array_equal(_arr(cat, "fe_h")[~hot & ok], _arr(base, "fe_h")[~hot & ok])


def test_cli_predict_with_metadata_and_realisations(capsys, trained, apstar, metadata, tmp_path):
    from kielnet.cli import main
    from kielnet.io import read_catalogue, write_table

    meta_path = write_table(metadata, tmp_path / "meta.parquet")
    out = tmp_path / "cat.parquet"
    rc = main(["predict", "--bundle", str(trained["path"]), "--data", str(APSTAR_DIR), "--metadata",
               str(meta_path), "--realisations", "0", "--out", str(out), "--quiet"])
    assert rc == 0
    assert "metadata: 20/26 stars found" in capsys.readouterr().out
    cat = read_catalogue(out)
    assert len(cat) == 26 and list(cat["id"]) == list(apstar.ids)
    assert not [c for c in cat.colnames if c.endswith("_noise")]
    direct = predict(trained["bundle"], apstar.join_scalars(metadata), n_realisations=0)
    np.testing.assert_allclose(_arr(cat, "teff"), _arr(direct, "teff"), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(cat["flag"]), np.asarray(direct["flag"]))
    # --realisations 2 adds the noise columns
    out2 = tmp_path / "cat2.parquet"
    assert main(["predict", "--bundle", str(trained["path"]), "--data", str(APSTAR_DIR), "--metadata",
                 str(meta_path), "--realisations", "2", "--out", str(out2), "--quiet"]) == 0
    assert "e_fe_h_noise" in read_catalogue(out2).colnames


def test_without_metadata_the_real_spectra_are_labelled_as_missing_every_input(trained, apstar):
    # the metadata columns are absent from the apStar files: missing for every star, which the
    # bundle's sigma model covers (input group 'all_inputs'), so each star is flagged, not refused
    import dataclasses

    from kielnet.errors import InputError
    from kielnet.quality.flags import FLAG_BITS

    with pytest.warns(UserWarning, match=r"input column\(s\) .*parallax.* absent from the file"):
        cat = predict(trained["bundle"], apstar, n_realisations=0)
    assert len(cat) == len(apstar)
    assert ((np.asarray(cat["flag"]) >> FLAG_BITS["missing_input"]) & 1).all()
    bundle = dataclasses.replace(trained["bundle"], sigma_model=None)   # nothing covers them: refused
    with pytest.raises(InputError) as exc:
        predict(bundle, apstar, n_realisations=0)
    assert exc.value.field in bundle.config.scalar_columns()
