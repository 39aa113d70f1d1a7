"""Preprocessor: fit/transform, serialisation, and nothing silently dropped."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kielnet.data.preprocess import Preprocessor, repair_spectra
from kielnet.errors import InputError


@pytest.fixture
def table(make_table):
    return make_table(n=80, n_pix=40, seed=1)


@pytest.fixture
def fitted(tiny_config, table):
    return Preprocessor(tiny_config).fit(table)


def test_transform_shapes_and_standardisation(tiny_config, table, fitted):
    prep = fitted.transform(table)
    assert len(prep) == len(table)
    assert prep.spectrum.shape == (80, 40) and prep.spectrum.dtype == np.float32
    widths = fitted.branch_widths()
    assert widths == {"phot": 8}  # 4 features + 4 missing indicators
    assert prep.branches["phot"].shape == (80, 8)
    assert prep.targets.shape == (80, 4)
    # per-pixel z-score of log10 flux with the training statistics
    np.testing.assert_allclose(prep.spectrum.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(prep.spectrum.std(axis=0), 1.0, atol=1e-3)
    logf = np.log10(table.flux.astype(np.float64))
    expect = (logf - logf.mean(axis=0)) / logf.std(axis=0)
    np.testing.assert_allclose(prep.spectrum, expect, atol=1e-4)
    # features are z-scored: bp_rp column has mean 0, std 1 on the fit set
    bp_rp = prep.branches["phot"][:, 1]
    assert abs(bp_rp.mean()) < 1e-5 and bp_rp.std() == pytest.approx(1.0, abs=1e-5)
    assert not prep.missing_features.any() and not prep.bad_spectrum.any()
    assert (prep.n_bad_pixels == 0).all()


def test_inverse_labels_recovers_the_physical_labels(table, fitted):
    prep = fitted.transform(table)
    back = fitted.inverse_labels(prep.targets)
    for j, name in enumerate(["teff", "logg", "fe_h", "alpha_m"]):
        np.testing.assert_allclose(back[:, j], table.labels[name], rtol=1e-5, atol=1e-5)


def test_to_dict_from_dict_round_trip_gives_identical_arrays(tiny_config, table, fitted, make_table):
    state = json.loads(json.dumps(fitted.to_dict()))
    again = Preprocessor.from_dict(tiny_config, state)
    other = make_table(n=30, n_pix=40, seed=7)  # apply to different stars than the fit set
    a, b = fitted.transform(other), again.transform(other)
    np.testing.assert_array_equal(a.spectrum, b.spectrum)
    np.testing.assert_array_equal(a.branches["phot"], b.branches["phot"])
    np.testing.assert_array_equal(a.targets, b.targets)
    np.testing.assert_array_equal(fitted.inverse_labels(a.targets), again.inverse_labels(b.targets))
    assert again.n_pix == 40 and again.branch_widths() == fitted.branch_widths()


def test_missing_scalar_is_imputed_and_reported(table, fitted):
    t = table.take(np.arange(len(table)))
    t.scalars["g"][3] = np.nan   # g is used by features g and g_rp
    t.scalars["k"][5] = np.nan   # k is used by j_k
    prep = fitted.transform(t)
    names = ["g", "bp_rp", "g_rp", "j_k"]
    assert prep.missing_features[3].tolist() == [True, False, True, False]
    assert prep.missing_features[5].tolist() == [False, False, False, True]
    assert prep.missing_features.sum() == 3
    phot = prep.branches["phot"]
    assert np.isfinite(phot).all()
    # imputed with the training mean (0 in z-scored space), indicator columns set
    assert phot[3, names.index("g")] == 0.0 and phot[3, names.index("g_rp")] == 0.0
    assert phot[3, 4:].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert phot[5, 4:].tolist() == [0.0, 0.0, 0.0, 1.0]
    # other stars are untouched
    ref = fitted.transform(table)
    np.testing.assert_array_equal(phot[[0, 1, 2]], ref.branches["phot"][[0, 1, 2]])


def test_missing_indicator_can_be_switched_off(tiny_config_factory, table):
    feats = [{"name": "g", "columns": ["g"], "missing_indicator": False},
             {"name": "bp_rp", "kind": "difference", "columns": ["bp", "rp"]},
             {"name": "g_rp", "kind": "difference", "columns": ["g", "rp"]},
             {"name": "j_k", "kind": "difference", "columns": ["j", "k"]}]
    cfg = tiny_config_factory(features=feats)
    pre = Preprocessor(cfg).fit(table)
    assert pre.branch_widths() == {"phot": 7}
    assert pre.transform(table).branches["phot"].shape == (len(table), 7)


def test_nan_pixels_are_interpolated_and_counted(table, fitted):
    t = table.take(np.arange(len(table)))
    t.flux[2, [5, 6, 7]] = np.nan
    t.flux[4, 10] = np.inf
    prep = fitted.transform(t)
    assert prep.n_bad_pixels[2] == 3 and prep.n_bad_pixels[4] == 1
    assert prep.n_bad_pixels.sum() == 4
    assert not prep.bad_spectrum[[2, 4]].any()
    assert np.isfinite(prep.spectrum).all()


def test_repair_spectra_interpolates_linearly():
    ramp = np.arange(20, dtype=float) * 2.0 + 1.0
    flux = np.stack([ramp, ramp, ramp])
    flux[0, [3, 4]] = np.nan
    flux[1, 0] = -np.inf          # edge pixel: nearest value (np.interp holds the ends)
    flux[2, :] = np.nan            # nothing to interpolate from
    fixed, n_bad, unusable = repair_spectra(flux, max_bad_fraction=0.5)
    np.testing.assert_allclose(fixed[0], ramp)
    assert fixed[1, 0] == ramp[1]
    assert n_bad.tolist() == [2, 1, 20]
    assert unusable.tolist() == [False, False, True]
    assert (fixed[2] == 0).all()
    assert np.isnan(flux[0, 3])    # the input is not modified


def test_too_many_bad_pixels_mark_the_spectrum_bad(table, fitted):
    t = table.take(np.arange(len(table)))
    n_pix = t.n_pix
    t.flux[1, : int(0.1 * n_pix) + 1] = np.nan   # just above max_bad_fraction = 0.1
    t.flux[6, : int(0.1 * n_pix)] = np.nan       # exactly at the limit: still repaired
    t.flux[8, :] = np.nan
    prep = fitted.transform(t)
    assert prep.bad_spectrum.tolist() == [i in (1, 8) for i in range(len(t))]
    assert (prep.spectrum[[1, 8]] == 0).all()
    assert prep.n_bad_pixels[8] == n_pix
    assert np.isfinite(prep.spectrum).all()


def test_labels_outside_valid_range_are_reported_and_masked(tiny_config, table):
    t = table.take(np.arange(len(table)))
    t.labels["teff"][0] = 1.0e6     # > 60000 K
    t.labels["logg"][1] = -3.0      # < -1.5
    t.labels["fe_h"][2] = np.nan    # merely unknown: not "out of range"
    pre = Preprocessor(tiny_config).fit(t)
    prep = pre.transform(t)
    oor = prep.label_out_of_range
    assert oor.shape == (len(t), 4)
    assert oor[0].tolist() == [True, False, False, False]
    assert oor[1].tolist() == [False, True, False, False]
    assert oor.sum() == 2
    assert np.isnan(prep.targets[0, 0]) and np.isnan(prep.targets[1, 1]) and np.isnan(prep.targets[2, 2])
    # the star's other labels still train
    assert np.isfinite(prep.targets[0, 1:]).all()
    # the unphysical value does not enter the fitted label statistics
    good = np.log10(np.delete(table.labels["teff"], 0))
    assert pre.label_transforms[0].scaler.centre == pytest.approx(good.mean(), rel=1e-12)


def test_fixed_scaling_is_used_instead_of_fit(tiny_config_factory, table):
    labels = [{"name": "teff", "unit": "K", "transform": "log10", "valid_range": [2000, 60000]},
              {"name": "logg", "unit": "dex", "valid_range": [-1.5, 6.5], "fixed_scaling": [2.5, 2.0]}]
    cfg = tiny_config_factory(labels=labels)
    pre = Preprocessor(cfg).fit(table)
    prep = pre.transform(table)
    np.testing.assert_allclose(prep.targets[:, 1], (table.labels["logg"] - 2.5) / 2.0, rtol=1e-6)


def test_transform_without_labels(table, fitted):
    prep = fitted.transform(table, with_labels=False)
    assert prep.targets is None and prep.label_out_of_range is None
    unlabelled = table.take(np.arange(5))
    unlabelled.labels.clear()
    assert fitted.transform(unlabelled).targets is None


def test_transform_before_fit_is_an_error(tiny_config, table):
    with pytest.raises(RuntimeError, match="fit"):
        Preprocessor(tiny_config).transform(table)


def test_input_errors_name_the_field(fitted, make_table):
    short = make_table(n=5, n_pix=39, seed=2)
    with pytest.raises(InputError) as info:
        fitted.transform(short)
    assert info.value.field == "flux" and "40" in str(info.value)
    no_k = make_table(n=5, n_pix=40, seed=2)
    del no_k.scalars["k"]
    with pytest.raises(InputError) as info:
        fitted.transform(no_k)
    assert info.value.field == "k"


def test_prepared_take(table, fitted):
    prep = fitted.transform(table)
    sub = prep.take(np.array([4, 2]))
    assert len(sub) == 2
    np.testing.assert_array_equal(sub.spectrum, prep.spectrum[[4, 2]])
    np.testing.assert_array_equal(sub.branches["phot"], prep.branches["phot"][[4, 2]])
    np.testing.assert_array_equal(sub.targets, prep.targets[[4, 2]])


def test_scalar_only_and_median_normalisation(tiny_config_factory, table):
    cfg = tiny_config_factory(spectrum=None, model={
        "spectrum": None, "scalar_branches": [{"name": "phot", "features": ["g", "bp_rp"], "layers": [4]}],
        "head": {"layers": []}})
    pre = Preprocessor(cfg).fit(table)
    prep = pre.transform(table)
    assert prep.spectrum is None and pre.n_pix is None
    assert prep.branches["phot"].shape == (len(table), 4)
    cfg2 = tiny_config_factory(spectrum={"normalise": "median", "log": False, "standardise": False})
    prep2 = Preprocessor(cfg2).fit(table).transform(table)
    np.testing.assert_allclose(np.median(prep2.spectrum, axis=1), 1.0, rtol=1e-6)


def test_branch_input_names_match_branch_widths(tiny_config_factory, make_table):
    from kielnet.data.preprocess import Preprocessor

    cfg = tiny_config_factory()
    pre = Preprocessor(cfg).fit(make_table())
    names = pre.branch_input_names()
    assert {k: len(v) for k, v in names.items()} == pre.branch_widths()
    feats = cfg.model.scalar_branches[0].features
    assert names["phot"][: len(feats)] == list(feats)
    assert all(n.startswith("missing_") for n in names["phot"][len(feats):])
