"""Scalar inputs found under the surveys' column names (:mod:`kielnet.data.input_columns`)."""

from __future__ import annotations

import numpy as np

from kielnet.config import load_config
from kielnet.data.input_columns import INPUT_ALIASES, resolve_columns, resolve_inputs
from kielnet.data.startable import StarTable


def table(**scalars) -> StarTable:
    return StarTable(ids=np.array(["a", "b"]), scalars={k: np.asarray(v, float) for k, v in scalars.items()})


def test_gaia_and_2mass_names_become_the_inputs_case_insensitive():
    t = table(PHOT_G_MEAN_MAG=[10.0, 11.0], phot_bp_mean_mag=[10.5, 11.6], j_m=[9.0, 9.9], Ks_m=[8.5, 9.1])
    got = resolve_inputs(t, ["g", "bp", "j", "k", "h"])
    np.testing.assert_array_equal(got.scalars["g"], [10.0, 11.0])
    np.testing.assert_array_equal(got.scalars["k"], [8.5, 9.1])
    assert "h" not in got.scalars and "PHOT_G_MEAN_MAG" in got.scalars  # nothing invented; the source stays
    assert got.meta["input_columns"] == {"g": "scalars:PHOT_G_MEAN_MAG", "bp": "scalars:phot_bp_mean_mag",
                                         "j": "scalars:j_m", "k": "scalars:Ks_m"}


def test_the_inputs_own_column_wins_and_ambiguous_names_are_not_aliases():
    t = table(g=[1.0, 2.0], phot_g_mean_mag=[10.0, 11.0], gmag=[5.0, 6.0], kmag=[7.0, 8.0])
    assert resolve_inputs(t, ["g"]) is t
    assert "k" not in resolve_inputs(t, ["k"]).scalars
    assert all("gmag" not in a and "kmag" not in a for a in INPUT_ALIASES.values())


def test_training_entry_points_resolve_inputs_with_labels():
    cfg = load_config("xp_hybrid")
    t = table(phot_g_mean_mag=[10.0, 11.0], TEFF=[5000.0, 6000.0])
    got = resolve_columns(t, cfg)
    np.testing.assert_array_equal(got.scalars["g"], [10.0, 11.0])
    np.testing.assert_array_equal(got.labels["teff"], [5000.0, 6000.0])
