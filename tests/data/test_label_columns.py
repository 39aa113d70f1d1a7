"""Reference labels from any column, and joined from a separate catalogue by id (kielnet.data.label_columns)."""

from __future__ import annotations

import numpy as np
import pytest

from kielnet.config import load_config
from kielnet.data.label_columns import join_labels, resolve_labels
from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.labels import label_info


def _stars(n=6, **extra):
    ids = np.array([f"2M{i:08d}" for i in range(n)])
    return StarTable(ids=ids, scalars={"g": np.linspace(10, 15, n), "ak_targ": np.linspace(0, 0.5, n),
                                       "AK_TARG_ERR": np.full(n, 0.02)},
                     labels={"teff": np.linspace(4000, 6000, n)},
                     extra={"source_id": np.arange(1000, 1000 + n, dtype=np.int64), **extra},
                     meta={"source": "stars.fits", "id_kind": "apogee_id"})


def test_a_label_is_found_in_a_scalar_column_with_its_error():
    t = resolve_labels(_stars(), {"ak_targ": label_info("ak_targ")})
    np.testing.assert_array_equal(t.labels["ak_targ"], np.linspace(0, 0.5, 6))
    np.testing.assert_array_equal(t.label_errs["ak_targ"], np.full(6, 0.02))
    assert t.meta["label_columns"] == {"ak_targ": "scalars:ak_targ"}
    assert "ak_targ" in t.scalars                       # the source column stays where it was


def test_an_alias_matches_case_insensitively_and_unknown_labels_stay_absent():
    t = _stars(MG_FE=np.arange(6.0) / 10)
    infos = {"mg_fe": label_info("mg_fe", aliases=["Mg_Fe"]), "c_fe": label_info("c_fe")}
    out = resolve_labels(t, infos)
    np.testing.assert_array_equal(out.labels["mg_fe"], np.arange(6.0) / 10)
    assert "c_fe" not in out.labels
    assert resolve_labels(out, {"teff": label_info("teff")}) is out   # nothing to do: same object


def test_the_preprocessor_refuses_a_label_it_cannot_find_naming_the_columns_tried():
    from kielnet.data.preprocess import Preprocessor

    cfg = load_config("xp_hybrid").with_overrides(labels=[{"name": "teff", "unit": "K", "valid_range": [2000, 9e4]},
                                                          {"name": "c_fe", "valid_range": [-2, 2],
                                                           "aliases": ["CFE"]}])
    t = _stars()
    with pytest.raises(InputError, match=r"required label 'c_fe' is missing \(looked for columns \['c_fe', 'cfe'\]"):
        Preprocessor(cfg).fit(t)


@pytest.mark.parametrize("key, column", [("source_id", np.arange(1000, 1006, dtype=np.int64)),
                                         ("apogee_id", np.array([f"2M{i:08d}" for i in range(6)])),
                                         ("id", np.array([f"2M{i:08d}" for i in range(6)]))])
def test_join_by_each_id_kind(key, column):
    order = np.array([5, 3, 1, 0, 2, 4])
    ref = {key: column[order], "MG_FE": np.arange(6.0)[order] / 10, "MG_FE_ERR": np.full(6, 0.05)}
    out, rep = join_labels(_stars(), ref, {"mg_fe": label_info("mg_fe")}, source="ref.fits")
    assert rep.key == key and rep.matched == 6 and rep.unmatched_stars == 0 and rep.duplicated == 0
    np.testing.assert_allclose(out.labels["mg_fe"], np.arange(6.0) / 10)
    np.testing.assert_allclose(out.label_errs["mg_fe"], 0.05)
    np.testing.assert_array_equal(out.labels["teff"], np.linspace(4000, 6000, 6))   # untouched


def test_source_id_read_as_text_or_float_still_matches():
    ref = {"SOURCE_ID": np.array(["1001", "1003"]), "c_fe": np.array([0.1, 0.3])}
    out, rep = join_labels(_stars(), ref, {"c_fe": label_info("c_fe")}, source="ref.csv")
    assert rep.matched == 2
    ref = {"source_id": np.array([1001.0, 1003.0]), "c_fe": np.array([0.1, 0.3])}
    out2, _ = join_labels(_stars(), ref, {"c_fe": label_info("c_fe")}, source="ref.csv")
    np.testing.assert_array_equal(out.labels["c_fe"], out2.labels["c_fe"])


def test_stars_without_a_reference_row_are_masked_not_dropped_and_counted():
    ref = {"source_id": np.array([1000, 1002, 1004, 99999]), "c_fe": np.array([0.0, 0.2, np.nan, 0.9])}
    out, rep = join_labels(_stars(), ref, {"c_fe": label_info("c_fe")}, source="ref.fits")
    assert len(out) == 6                                   # nothing dropped
    np.testing.assert_array_equal(np.isfinite(out.labels["c_fe"]), [True, False, True, False, False, False])
    assert (rep.matched, rep.unmatched_stars, rep.unmatched_rows) == (3, 3, 1)
    assert rep.finite == {"c_fe": 2}
    assert "3 stars matched" in rep.summary() and "1 reference rows matched no star" in rep.summary()


def test_duplicated_reference_ids_agreeing_are_kept_disagreeing_are_masked():
    ref = {"source_id": np.array([1000, 1000, 1001, 1001]), "c_fe": np.array([0.1, 0.1, 0.2, 0.3])}
    out, rep = join_labels(_stars(), ref, {"c_fe": label_info("c_fe")}, source="ref.fits")
    assert rep.duplicated == 2
    assert out.labels["c_fe"][0] == pytest.approx(0.1)
    assert np.isnan(out.labels["c_fe"][1])                # 0.2 vs 0.3: no value is chosen silently


def test_join_errors_name_the_catalogue():
    with pytest.raises(InputError, match="none of the labels"):
        join_labels(_stars(), {"source_id": np.array([1000]), "x": np.array([1.0])},
                    {"c_fe": label_info("c_fe")}, source="ref.fits")
    with pytest.raises(InputError, match="no star matches"):
        join_labels(_stars(), {"source_id": np.array([5]), "c_fe": np.array([1.0])},
                    {"c_fe": label_info("c_fe")}, source="ref.fits")
    with pytest.raises(InputError, match=r"row 1 holds 'abc'") as info:
        join_labels(_stars(), {"source_id": np.array([1000, 1001]), "c_fe": np.array(["0.1", "abc"])},
                    {"c_fe": label_info("c_fe")}, source="ref.csv")
    assert "ref.csv" in str(info.value)
