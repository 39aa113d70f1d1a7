"""The catalogue: one row per input star, input order, X / e_X / sigma_X, flag, status."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
import torch

from kielnet.data.startable import StarTable
from kielnet.errors import UsageError
from kielnet.inference.predict import member_predictions, predict
from kielnet.quality.flags import FLAG_BITS, status_strings
from kielnet.quality.neighbours import positions

LABELS = ["teff", "logg", "fe_h", "alpha_m"]


@pytest.fixture(scope="module")
def clean(tiny_holdout):
    """Held-out stars with every scalar input present (so they should all be 'ok'-ish)."""
    t = tiny_holdout.test
    ok = np.all([np.isfinite(v) for k, v in t.scalars.items() if k in ("g", "bp", "rp", "j", "h", "k")], axis=0)
    return t.take(np.flatnonzero(ok)[:40])


def test_catalogue_columns_units_and_order(tiny_bundle, clean):
    cat = predict(tiny_bundle, clean)
    assert len(cat) == len(clean)
    assert cat["id"].tolist() == clean.ids.tolist()
    assert cat["source_id"].tolist() == clean.extra["source_id"].tolist()
    expected = ["id", "source_id", "medflux"]
    for name in LABELS:
        expected += [name, f"e_{name}", f"sigma_{name}", f"ci95_{name}", f"ci997_{name}"]
    expected += ["flag", "status", "not_reported", "n_bad_pixels", "missing_inputs", "spectrum_issues"]
    expected += [f"support_{name}" for name in LABELS] + ["outlier_score"]  # the preset's neighbour model
    expected += ["snr_spectrum"]  # the S/N of the preset's σ recalibration
    expected += ["spread_score"]  # the xp_hybrid preset carries the ensemble-disagreement score
    expected += ["duplicate_id"]  # the id occurs more than once in the input
    assert cat.colnames == expected
    for name, unit in [("teff", u.K), ("logg", u.dex), ("fe_h", u.dex), ("alpha_m", u.dex)]:
        for col in (name, f"e_{name}", f"sigma_{name}"):
            assert cat[col].unit == unit
    assert cat.meta["MODEL"] == "xp_hybrid" and cat.meta["NMEMBERS"] == 2
    assert any("bad_spectrum" in c for c in cat.meta["comments"])


def test_every_catalogue_column_is_described(tiny_bundle, clean):
    cat = predict(tiny_bundle, clean)
    assert [c for c in cat.colnames if not cat[c].description] == []
    assert "flag bits" in cat["flag"].description  # where the bits are listed
    assert cat["source_id"].description.startswith("Gaia DR3 source_id")


def test_a_reader_description_of_a_pass_through_column_is_kept():
    from astropy.table import Table

    from kielnet.inference.predict import describe_columns

    cat = Table({"id": ["a"], "source_id": [1], "other": [2.0]})
    cat["source_id"].description = "the survey's own id"
    describe_columns(cat)
    assert cat["source_id"].description == "the survey's own id"
    assert cat["id"].description == "the star's id in the input" and not cat["other"].description


def test_catalogue_values(tiny_bundle, clean):
    cat = predict(tiny_bundle, clean)
    nets = tiny_bundle.build_members()
    prep = tiny_bundle.preprocessor.transform(clean, with_labels=False)
    head = []
    preds = member_predictions(nets, prep, tiny_bundle.preprocessor.inverse_labels, head_sigma=head)
    assert preds.shape == (2, len(clean), 4) and head[0].shape == preds.shape
    sm = tiny_bundle.sigma_model
    assert sm.terms == ["spread", "head"]  # the xp_hybrid preset's σ model
    snr = prep.snr
    # the preset's neighbour model: local σ factor of the nearest out-of-fold stars
    near = tiny_bundle.neighbours.assess(positions(tiny_bundle.preprocessor.forward_labels(preds.mean(axis=0)), snr))
    for j, name in enumerate(LABELS):
        mean, spread = preds[:, :, j].mean(axis=0), preds[:, :, j].std(axis=0, ddof=1)
        np.testing.assert_allclose(np.asarray(cat[name]), mean, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(cat[f"e_{name}"]), spread, rtol=1e-12)
        own = np.sqrt(np.mean(head[0][:, :, j] ** 2, axis=0))
        want = np.hypot(spread, own) * sm.recalibration[name](mean, snr)
        glob = np.maximum(want, spread)
        np.testing.assert_allclose(np.asarray(cat[f"sigma_{name}"]), glob * near.factor[:, j], rtol=1e-12)
        np.testing.assert_allclose(np.asarray(cat[f"ci95_{name}"]), glob * near.q95[:, j], rtol=1e-12)
        # ci95 x the out-of-fold factor; NaN (unknown) for this tiny bundle's ~160
        # out-of-fold stars, too few for a 99.73 % quantile
        factor = tiny_bundle.neighbours.ci997_factor[j]
        assert np.isnan(factor) and len(tiny_bundle.neighbours.z) < 370
        np.testing.assert_allclose(np.asarray(cat[f"ci997_{name}"]), glob * near.q95[:, j] * factor, rtol=1e-12)
    # status spells out the flag
    assert cat["status"].tolist() == status_strings(np.asarray(cat["flag"]), LABELS).tolist()
    assert (np.asarray(cat["n_bad_pixels"]) == 0).all()
    assert set(cat["missing_inputs"].tolist()) == {""}
    assert not (np.asarray(cat["flag"]) & 0b111).any()
    # teff in K, on the APOGEE scale
    assert 2500 < np.asarray(cat["teff"]).min() and np.asarray(cat["teff"]).max() < 20000


def test_input_order_is_preserved(tiny_bundle, clean):
    ref = predict(tiny_bundle, clean)
    perm = np.random.default_rng(0).permutation(len(clean))
    shuffled = predict(tiny_bundle, clean.take(perm), batch_size=7)
    assert shuffled["id"].tolist() == clean.ids[perm].tolist()
    for name in LABELS:
        # float32 sums differ in the last bits with the batch size: a label near 0 dex
        # needs an absolute tolerance (1e-6 dex or K is far below any catalogue precision)
        np.testing.assert_allclose(np.asarray(shuffled[name]), np.asarray(ref[name])[perm], rtol=1e-5, atol=1e-6)


def test_duplicate_stars_give_duplicate_rows(tiny_bundle, clean):
    idx = np.array([0, 0, 3, 0])
    cat = predict(tiny_bundle, clean.take(idx))
    assert len(cat) == 4 and cat["id"].tolist() == clean.ids[idx].tolist()
    np.testing.assert_allclose(np.asarray(cat["teff"])[[1, 3]], np.asarray(cat["teff"])[0], rtol=1e-5)


def test_inputs_without_labels_are_predicted(tiny_bundle, clean):
    bare = StarTable(ids=clean.ids, flux=clean.flux, scalars=dict(clean.scalars))
    cat = predict(tiny_bundle, bare)
    assert cat.colnames[:2] == ["id", "teff"]   # no pass-through columns
    np.testing.assert_allclose(np.asarray(cat["teff"]), np.asarray(predict(tiny_bundle, clean)["teff"]))


def test_input_outside_training_range_is_flagged(tiny_bundle, clean):
    t = clean.take(np.arange(3))
    # fainter than any training star, but within the margin beyond which a value counts as missing
    t.scalars["g"][1] = tiny_bundle.feature_ranges["g"][1] + 3.0
    cat = predict(tiny_bundle, t)
    bit = 1 << FLAG_BITS["input_outside_training"]
    assert [bool(f & bit) for f in cat["flag"]] == [False, True, False]
    assert "input_outside_training" in cat["status"][1]


def test_a_device_torch_does_not_know_or_cannot_see_is_refused(tiny_bundle, clean):
    with pytest.raises(UsageError, match="device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        predict(tiny_bundle, clean, device="gpu")
    with pytest.raises(UsageError, match="CUDA device"):
        predict(tiny_bundle, clean, device=f"cuda:{torch.cuda.device_count()}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.py runs it there)")
def test_labels_on_the_gpu_agree_with_the_cpu(tiny_bundle, clean):
    cpu = predict(tiny_bundle, clean, device="cpu")
    gpu = predict(tiny_bundle, clean, device="cuda")
    assert cpu.colnames == gpu.colnames
    for name in LABELS:
        a, b = np.asarray(cpu[name], float), np.asarray(gpu[name], float)
        s = np.asarray(cpu[f"sigma_{name}"], float)
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
        ok = np.isfinite(a) & np.isfinite(s)
        assert np.all(np.abs(a - b)[ok] <= 1e-3 * s[ok]), name
    assert np.asarray(cpu["status"]).tolist() == np.asarray(gpu["status"]).tolist()
    np.testing.assert_array_equal(np.asarray(cpu["flag"]), np.asarray(gpu["flag"]))
