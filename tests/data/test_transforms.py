"""Scaler and LabelTransform: exact invertibility, NaN handling, serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kielnet.data.transforms import LabelTransform, Scaler


@pytest.fixture
def values():
    rng = np.random.default_rng(3)
    v = rng.uniform(3100.0, 19900.0, 500)
    v[[5, 50]] = np.nan
    return v


def test_zscore_statistics_ignore_nan(values):
    s = Scaler("zscore").fit(values)
    finite = values[np.isfinite(values)]
    assert s.centre == pytest.approx(finite.mean(), rel=1e-12)
    assert s.scale == pytest.approx(finite.std(), rel=1e-12)
    y = s.forward(values)
    assert np.nanmean(y) == pytest.approx(0.0, abs=1e-12)
    assert np.nanstd(y) == pytest.approx(1.0, rel=1e-12)


def test_minmax_maps_fit_set_onto_unit_interval(values):
    s = Scaler("minmax").fit(values)
    y = s.forward(values)
    assert np.nanmin(y) == 0.0 and np.nanmax(y) == pytest.approx(1.0, abs=1e-15)
    assert s.centre == np.nanmin(values)


def test_none_scaler_is_identity(values):
    s = Scaler("none").fit(values)
    np.testing.assert_array_equal(s.forward(values), values)


@pytest.mark.parametrize("kind", ["zscore", "minmax", "none"])
@pytest.mark.parametrize("transform", ["none", "log10"])
def test_label_transform_is_exactly_invertible(values, kind, transform):
    lt = LabelTransform("teff", transform, Scaler(kind)).fit(values)
    y = lt.forward(values)
    back = lt.inverse(y)
    np.testing.assert_allclose(back, values, rtol=1e-12, equal_nan=True)
    # NaN stays NaN, finite stays finite
    np.testing.assert_array_equal(np.isnan(y), np.isnan(values))
    np.testing.assert_array_equal(np.isnan(back), np.isnan(values))


def test_log10_teff_is_scaled_in_log_space(values):
    lt = LabelTransform("teff", "log10", Scaler("zscore")).fit(values)
    logs = np.log10(values[np.isfinite(values)])
    assert lt.scaler.centre == pytest.approx(logs.mean(), rel=1e-12)
    assert lt.scaler.scale == pytest.approx(logs.std(), rel=1e-12)
    np.testing.assert_allclose(lt.forward([10 ** logs.mean()]), [0.0], atol=1e-12)


def test_log10_of_non_positive_values_is_nan():
    lt = LabelTransform("teff", "log10", Scaler("none"))
    out = lt.forward(np.array([-5.0, 0.0, 100.0, np.nan]))
    assert np.isnan(out[[0, 1, 3]]).all()
    assert out[2] == pytest.approx(2.0)


def test_degenerate_fits():
    s = Scaler("zscore").fit(np.full(10, 7.0))
    assert s.scale == 1.0 and s.centre == 7.0  # constant input: no division by zero
    with pytest.raises(ValueError):
        Scaler("zscore").fit(np.array([np.nan, np.nan]))


@pytest.mark.parametrize("kind", ["zscore", "minmax"])
def test_state_round_trips_through_json(values, kind):
    lt = LabelTransform("teff", "log10", Scaler(kind)).fit(values)
    again = LabelTransform.from_dict(json.loads(json.dumps(lt.to_dict())))
    assert again == lt
    np.testing.assert_array_equal(again.forward(values), lt.forward(values))
    s = Scaler(kind).fit(values)
    assert Scaler.from_dict(json.loads(json.dumps(s.to_dict()))) == s
