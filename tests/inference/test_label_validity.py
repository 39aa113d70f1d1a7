"""A wrong row marked ok is the worst bug: non-finite network outputs, labels outside
their physical range and implausible spectra are NaN with a flag, never 'ok'."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from astropy.table import Table

from kielnet.inference.predict import enforce_status, predict
from kielnet.quality.flags import FLAG_BITS

LABELS = ["teff", "logg", "fe_h", "alpha_m"]


def _bit(name):
    return 1 << FLAG_BITS[name]


def _with_last_bias(bundle, value, member=None):
    """A copy of the bundle whose output layer's bias is ``value`` (in one or all members)."""
    members = []
    for i, sd in enumerate(bundle.members):
        sd = dict(sd)
        if member is None or i == member:
            key = max((k for k in sd if k.startswith("head.") and k.endswith(".bias")),
                      key=lambda k: int(k.split(".")[1]))
            sd[key] = torch.full_like(sd[key], value)
        members.append(sd)
    return replace(bundle, members=members)


def _assert_never_ok_with_nan(cat):
    status = np.asarray(cat["status"])
    for c in [c for n in LABELS for c in (n, f"e_{n}", f"sigma_{n}")]:
        v = np.asarray(cat[c], float)
        assert np.isfinite(v[status == "ok"]).all(), c


def test_nan_weights_give_prediction_failed_not_ok(synthetic_bundle, make_table):
    t = make_table(n=8, n_pix=48, seed=40)
    cat = predict(_with_last_bias(synthetic_bundle, float("nan"), member=1), t)
    assert (np.asarray(cat["flag"]) & _bit("prediction_failed")).all()
    assert all("prediction_failed" in s for s in cat["status"])
    assert np.isnan(np.asarray(cat["teff"], float)).all()
    _assert_never_ok_with_nan(cat)


def test_labels_outside_the_physical_range_are_nan_and_flagged(synthetic_bundle, make_table):
    t = make_table(n=8, n_pix=48, seed=41)
    cat = predict(_with_last_bias(synthetic_bundle, 1e3), t)   # scaled outputs 1000 sigma off
    flag = np.asarray(cat["flag"])
    assert (flag & _bit("label_unphysical")).all()
    for n in LABELS:
        assert np.isnan(np.asarray(cat[n], float)).all()
    _assert_never_ok_with_nan(cat)
    # the same stars with the real weights: finite, ordinary labels
    ok = predict(synthetic_bundle, t)
    assert not (np.asarray(ok["flag"]) & (_bit("label_unphysical") | _bit("prediction_failed"))).any()


@pytest.mark.parametrize("case", ["zero", "negative", "constant", "scaled", "spiked"])
def test_garbage_spectra_are_not_labelled(synthetic_bundle, make_table, case):
    t = make_table(n=4, n_pix=48, seed=42)
    f = t.flux[1].copy()
    t.flux[1] = {"zero": 0 * f, "negative": -f, "constant": np.full_like(f, 1.0), "scaled": f * 1e6,
                 "spiked": np.where(np.arange(len(f)) == 5, 1e30, f)}[case]
    cat = predict(synthetic_bundle, t)
    assert cat["status"][1] == "implausible_spectrum"
    assert cat["spectrum_issues"][1] != ""
    assert np.isnan(float(cat["teff"][1])) and np.isnan(float(cat["sigma_logg"][1]))
    assert [s for i, s in enumerate(cat["status"]) if i != 1] == ["ok"] * 3
    assert list(cat["spectrum_issues"][[0, 2, 3]]) == ["", "", ""]


@pytest.mark.parametrize("value", [99.0, 99.999, -999.0, -9999.0])
def test_magnitude_placeholders_are_missing_values(synthetic_bundle, make_table, value):
    t = make_table(n=3, n_pix=48, seed=43)
    t.scalars["j"][0] = value
    cat = predict(synthetic_bundle, t)
    assert "missing_input" in cat["status"][0] and cat["missing_inputs"][0] == "j_k"
    assert np.isfinite(float(cat["teff"][0]))
    lo, hi = synthetic_bundle.label_ranges["teff"]
    assert lo - 3000 < float(cat["teff"][0]) < hi + 3000


def test_enforce_status_catches_any_nan_under_ok():
    cat = Table({"teff": [5000.0, np.nan, 5100.0], "e_teff": [10.0, 10.0, np.inf],
                 "sigma_teff": [50.0, 50.0, 50.0], "flag": [0, 0, 0], "status": ["ok"] * 3})
    enforce_status(cat, ["teff"])
    assert cat["status"].tolist() == ["ok", "prediction_failed", "prediction_failed"]
    assert np.isnan(cat["teff"][2]) and np.isnan(cat["e_teff"][2])
    # a label withheld by a reporting rule is NaN legitimately
    held = Table({"teff": [np.nan], "e_teff": [np.nan], "sigma_teff": [np.nan],
                  "flag": [_bit("label_not_reported")], "status": ["label_not_reported"]})
    assert enforce_status(held, ["teff"])["status"][0] == "label_not_reported"
