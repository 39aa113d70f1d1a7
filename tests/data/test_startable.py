"""StarTable: validation, take/concat, require, missing_report."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest

from kielnet.data.startable import StarTable
from kielnet.errors import InputError


def _small(n=4, n_pix=6, source="file.fits", **kw):
    rng = np.random.default_rng(1)
    return StarTable(ids=[f" s{i} " for i in range(n)], flux=rng.random((n, n_pix)),
                     wavelength=np.linspace(400, 500, n_pix),
                     scalars={"g": np.arange(n, dtype=float)}, labels={"teff": 5000.0 + np.arange(n)},
                     extra={"source_id": np.arange(n) + 100}, meta={"source": source}, **kw)


def test_ids_are_stripped_strings_and_arrays_are_coerced():
    st = _small()
    assert st.ids.tolist() == ["s0", "s1", "s2", "s3"]
    assert len(st) == 4 and st.n_pix == 6
    assert st.flux.dtype == np.float32
    assert st.scalars["g"].dtype == np.float64
    assert st.wavelength.unit == u.nm  # plain arrays are taken as nm
    assert st.source == "file.fits"
    assert StarTable(ids=["a"]).n_pix == 0
    assert StarTable(ids=["a"]).source == "<memory>"


def test_single_spectrum_becomes_one_row():
    st = StarTable(ids="a", flux=np.ones(5))
    assert st.flux.shape == (1, 5)


@pytest.mark.parametrize("kwargs, field", [
    ({"flux": np.ones((3, 5))}, "flux"),                                  # rows != ids
    ({"flux": np.ones((4, 5, 2))}, "flux"),                               # 3-D
    ({"flux": np.ones((4, 5)), "flux_err": np.ones((4, 6))}, "flux_err"),  # error shape
    ({"flux": np.ones((4, 5)), "wavelength": np.arange(4) * u.nm}, "wavelength"),
    ({"scalars": {"g": np.ones(3)}}, "g"),
    ({"labels": {"teff": np.ones((4, 2))}}, "teff"),
    ({"label_errs": {"logg": np.ones(5)}}, "logg"),
    ({"extra": {"source_id": np.arange(2)}}, "source_id"),
])
def test_shape_errors_name_file_and_field(kwargs, field):
    with pytest.raises(InputError) as info:
        StarTable(ids=["a", "b", "c", "d"], meta={"source": "in.fits"}, **kwargs)
    assert info.value.field == field
    assert info.value.source == "in.fits"
    assert "in.fits" in str(info.value) and f"'{field}'" in str(info.value)


def test_masked_scalars_become_nan():
    g = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    st = StarTable(ids=["a", "b", "c"], scalars={"g": g})
    assert np.isnan(st.scalars["g"][1])
    assert st.scalars["g"][[0, 2]].tolist() == [1.0, 3.0]


@pytest.mark.parametrize("selector", [[2, 0], np.array([False, False, True, False]) | np.array([True, False, False, False])])
def test_take_selects_rows_of_every_field(selector):
    st = _small()
    sub = st.take(selector)
    expect = [2, 0] if isinstance(selector, list) else [0, 2]
    assert sub.ids.tolist() == [f"s{i}" for i in expect]
    np.testing.assert_array_equal(sub.flux, st.flux[expect])
    np.testing.assert_array_equal(sub.scalars["g"], np.asarray(expect, float))
    np.testing.assert_array_equal(sub.labels["teff"], 5000.0 + np.asarray(expect))
    np.testing.assert_array_equal(sub.extra["source_id"], 100 + np.asarray(expect))
    assert sub.wavelength is st.wavelength
    assert sub.source == st.source
    # a copy: changing the subset does not change the original
    sub.scalars["g"][0] = -1
    assert st.scalars["g"][expect[0]] == expect[0]


def test_concat_stacks_in_order():
    a, b = _small(n=3, source="a.fits"), _small(n=2, source="b.fits")
    both = StarTable.concat([a, b])
    assert len(both) == 5
    assert both.ids.tolist() == ["s0", "s1", "s2", "s0", "s1"]
    np.testing.assert_array_equal(both.flux, np.concatenate([a.flux, b.flux]))
    np.testing.assert_array_equal(both.scalars["g"], [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(both.extra["source_id"], [100, 101, 102, 100, 101])
    assert both.source == "a.fits,b.fits"


def test_concat_rejects_mismatched_tables():
    a = _small(n=3)
    with pytest.raises(ValueError):
        StarTable.concat([])
    other_cols = StarTable(ids=["x"], flux=np.ones((1, 6)), scalars={"h": [1.0]},
                           labels={"teff": [5000.0]}, extra={"source_id": [1]}, meta={"source": "c.fits"})
    with pytest.raises(InputError, match="different columns"):
        StarTable.concat([a, other_cols])
    other_pix = _small(n=2, n_pix=7, source="d.fits")
    with pytest.raises(InputError, match="pixel") as info:
        StarTable.concat([a, other_pix])
    assert "d.fits" in str(info.value)


def test_require_names_missing_fields():
    st = _small()
    st.require(scalars=["g"], labels=["teff"], n_pix=6)  # all present: no error
    with pytest.raises(InputError) as info:
        st.require(scalars=["g", "bp"])
    assert info.value.field == "bp" and "file.fits" in str(info.value)
    with pytest.raises(InputError) as info:
        st.require(labels=["logg"])
    assert info.value.field == "logg"
    with pytest.raises(InputError, match="343") as info:
        st.require(n_pix=343)
    assert info.value.field == "flux"
    with pytest.raises(InputError) as info:
        StarTable(ids=["a"]).require(n_pix=10)
    assert info.value.field == "flux"


def test_missing_report_counts_nan_per_field():
    flux = np.ones((5, 4))
    flux[1, 2] = np.nan
    flux[3, :] = np.inf
    st = StarTable(ids=list("abcde"), flux=flux,
                   scalars={"g": [1, np.nan, np.nan, 4, 5], "h": [1, 2, 3, 4, 5]},
                   labels={"fe_h": [np.nan, 0, 0, 0, np.nan], "teff": [1, 2, 3, 4, 5]})
    assert st.missing_report() == {"scalar:g": 2, "label:fe_h": 2, "spectrum:nonfinite_pixels": 2}
    assert _small().missing_report() == {}


def test_input_error_message_lists_star_and_row():
    err = InputError("bad", source="f.csv", field="g", star="2M123", row=7)
    assert str(err) == "bad [file f.csv, field 'g', star 2M123 (row 7)]"
    assert str(InputError("plain")) == "plain"
    assert isinstance(err, ValueError)


def test_join_scalars_counts_the_own_values_it_replaces():
    """A finite metadata value wins; ``meta['metadata_replaced']`` counts the stars whose
    own, different finite value it replaced (not NaN filled in, not equal values)."""
    own = StarTable(ids=np.array(["a", "b", "c", "d"]), scalars={"g": np.array([10.0, 11.0, np.nan, 13.0])})
    other = StarTable(ids=np.array(["a", "b", "c", "d"]),
                      scalars={"g": np.array([10.0, 11.5, 12.0, np.nan]), "bp": np.array([1.0, 2.0, 3.0, 4.0])})
    got = own.join_scalars(other)
    np.testing.assert_array_equal(got.scalars["g"], [10.0, 11.5, 12.0, 13.0])
    assert got.meta["metadata_replaced"] == {"g": 1}
