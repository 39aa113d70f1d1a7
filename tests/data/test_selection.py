"""Declarative selection cuts on APOGEE allStar / Gaia DR3 style tables."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import MaskedColumn, Table

from kielnet.data.selection import (GAIA_RVS_SAMPLE_CUTS, GAIA_RVS_TRAINING_CUTS, Condition, Cut,
                                    Selection, load_selection)
from kielnet.errors import ConfigError, InputError

N = 19


def _good_table(n: int = N) -> dict[str, np.ndarray]:
    """Columns of ``n`` stars passing every training cut, in the survey dtypes."""
    return {
        # Gaia DR3 gaia_source / astrophysical_parameters
        "in_galaxy_candidates": np.zeros(n, dtype=bool),
        "in_qso_candidates": np.zeros(n, dtype=bool),
        "phot_variable_flag": np.array(["NOT_AVAILABLE"] * n),
        "non_single_star": np.zeros(n, dtype=np.int16),
        "phot_g_mean_flux_over_error": np.full(n, 1000.0, dtype=np.float32),
        "phot_bp_mean_flux_over_error": np.full(n, 1000.0, dtype=np.float32),
        "phot_rp_mean_flux_over_error": np.full(n, 1000.0, dtype=np.float32),
        "parallax": np.full(n, 1.0),
        "parallax_error": np.full(n, 0.02, dtype=np.float32),
        "has_xp_continuous": np.ones(n, dtype=bool),
        "rvs_spec_sig_to_noise": np.full(n, 50.0, dtype=np.float32),
        "ruwe": np.full(n, 1.0, dtype=np.float32),
        # APOGEE DR17 allStar
        "ASPCAPFLAG": np.zeros(n, dtype=np.int64),
        "ASPCAP_CHI2": np.full(n, 5.0, dtype=np.float32),
        "FE_H_FLAG": np.zeros(n, dtype=np.int32),
        "TEFF_ERR": np.full(n, 50.0, dtype=np.float32),
        "LOGG_ERR": np.full(n, 0.05, dtype=np.float32),
        "M_H": np.zeros(n, dtype=np.float32),
        "M_H_ERR": np.full(n, 0.05, dtype=np.float32),
        "FE_H": np.zeros(n, dtype=np.float32),
        "FE_H_ERR": np.full(n, 0.05, dtype=np.float32),
        "ALPHA_M_ERR": np.full(n, 0.05, dtype=np.float32),
    }


def _training_table() -> Table:
    """19 stars; the comment on each row says which cuts it fails (worked out by hand)."""
    c = _good_table()
    # row 0: good
    c["ASPCAPFLAG"][1] = 1 << 7                      # STAR_WARN
    c["ASPCAPFLAG"][2] = (1 << 7) | (1 << 23)        # STAR_WARN and STAR_BAD
    c["ASPCAPFLAG"][3] = (1 << 6) | (1 << 8) | (1 << 22) | (1 << 24) | (1 << 40)  # other bits: passes
    c["ASPCAP_CHI2"][4] = 25.0                       # chi2 < 25 is strict
    c["M_H"][5], c["M_H_ERR"][5] = -1.0, 0.15        # metal-poor: 0.2 dex allowed -> passes
    c["FE_H"][5], c["FE_H_ERR"][5] = -1.0, 0.15      # same for [Fe/H] -> passes
    c["M_H_ERR"][6] = 0.15                           # metal-rich: fails 0.1 dex
    c["M_H"][7], c["M_H_ERR"][7] = -0.5, 0.15        # M_H = -0.5 uses the 0.1 dex limit: fails
    m_h_mask = np.zeros(N, dtype=bool)
    m_h_mask[8] = True                               # M_H masked: fails (missing)
    c["TEFF_ERR"][9] = np.nan                        # NaN error: fails (missing)
    c["parallax"][10] = -1.0                         # negative parallax (and its ratio)
    c["parallax_error"][11] = 0.2                    # sigma/parallax = 0.2 is not < 0.2
    c["phot_variable_flag"][12] = "VARIABLE"
    espels = MaskedColumn(np.array([""] * N, dtype="U8"), mask=np.ones(N, dtype=bool))
    espels[13] = "Be"                                # emission-line class -> fails
    c["has_xp_continuous"][14] = False
    c["rvs_spec_sig_to_noise"][15] = 30.0            # S/N >= 30 -> passes ...
    c["ruwe"][15] = 1.4                              # ... but RUWE < 1.4 is strict: fails
    c["FE_H_FLAG"][16] = 1
    qso_mask = np.zeros(N, dtype=bool)
    qso_mask[17] = True                              # in_qso_candidates masked -> fails
    c["phot_bp_mean_flux_over_error"][18] = 500.0    # > 500 is strict -> fails
    tab = Table(c)
    tab["M_H"] = MaskedColumn(c["M_H"], mask=m_h_mask)
    tab["in_qso_candidates"] = MaskedColumn(c["in_qso_candidates"], mask=qso_mask)
    tab["classlabel_espels"] = espels
    return tab


# name: (removed sequentially, removed alone, of which missing) -- counted by hand above
EXPECTED = {
    "not_galaxy_candidate": (0, 0, 0),
    "not_qso_candidate": (1, 1, 1),          # row 17
    "not_variable": (1, 1, 0),               # row 12
    "single_star": (0, 0, 0),
    "g_flux_over_error": (0, 0, 0),
    "bp_flux_over_error": (1, 1, 0),         # row 18
    "rp_flux_over_error": (0, 0, 0),
    "positive_parallax": (1, 1, 0),          # row 10
    "has_xp_continuous": (1, 1, 0),          # row 14
    "no_emission_class": (1, 1, 0),          # row 13
    "aspcap_star_warn": (2, 2, 0),           # rows 1, 2
    "aspcap_star_bad": (0, 1, 0),            # row 2, already gone
    "aspcap_chi2": (1, 1, 0),                # row 4
    "fe_h_flag": (1, 1, 0),                  # row 16
    "teff_err": (1, 1, 1),                   # row 9
    "logg_err": (0, 0, 0),
    "m_h_err_metal_poor": (1, 1, 1),         # row 8 (unknown M_H)
    "m_h_err_metal_rich": (2, 3, 1),         # rows 6, 7 (+ row 8 alone)
    "fe_h_err_metal_poor": (0, 0, 0),
    "fe_h_err_metal_rich": (0, 0, 0),
    "alpha_m_err": (0, 0, 0),
    "rvs_snr": (0, 0, 0),
    "parallax_rel_error": (1, 2, 0),         # row 11 (+ row 10 alone)
    "ruwe": (1, 1, 0),                       # row 15
}


def test_training_cuts_counts_by_hand():
    mask, report = GAIA_RVS_TRAINING_CUTS.apply(_training_table())
    assert np.flatnonzero(mask).tolist() == [0, 3, 5]
    assert [c.name for c in report.cuts] == list(EXPECTED)
    got = {c.name: (c.removed, c.removed_alone, c.missing) for c in report.cuts}
    assert got == EXPECTED
    assert report.n_input == N and report.n_selected == 3
    remaining = [c.remaining for c in report.cuts]
    assert remaining[-1] == 3
    assert remaining == list(N - np.cumsum([EXPECTED[k][0] for k in EXPECTED]))


def test_report_table_and_text():
    _, report = GAIA_RVS_TRAINING_CUTS.apply(_training_table())
    tab = report.to_table()
    assert tab.colnames == ["cut", "removed", "removed_alone", "missing", "remaining"]
    row = tab[list(tab["cut"]).index("m_h_err_metal_rich")]
    assert (row["removed"], row["removed_alone"], row["missing"]) == (2, 3, 1)
    text = str(report)
    assert "selected 3 of 19" in text
    assert "aspcap_star_bad" in text


def test_missing_values_are_counted_not_kept():
    tab = Table({"x": MaskedColumn([1.0, 2.0, np.nan, 4.0], mask=[False, True, False, False])})
    sel = Selection(cuts=[Cut(name="x_small", column="x", op="<", value=10.0),
                          Cut(name="x_not_3", column="x", op="!=", value=3.0)])
    mask, report = sel.apply(tab)
    assert mask.tolist() == [True, False, False, True]  # NaN != 3 must not pass
    assert (report.cuts[0].removed, report.cuts[0].missing) == (2, 2)
    assert (report.cuts[1].removed, report.cuts[1].removed_alone, report.cuts[1].missing) == (0, 2, 2)


def test_missing_column_names_it():
    tab = _training_table()
    del tab["ruwe"]  # used by the last cut only: still reported up front
    with pytest.raises(InputError) as err:
        GAIA_RVS_TRAINING_CUTS.apply(tab, source="xmatch.fits")
    assert err.value.field == "ruwe"
    assert "ruwe" in str(err.value) and "xmatch.fits" in str(err.value)


def test_missing_condition_column_names_it():
    tab = _training_table()
    del tab["FE_H"]
    with pytest.raises(InputError) as err:
        GAIA_RVS_TRAINING_CUTS.apply(tab)
    assert err.value.field == "FE_H"


def test_case_insensitive_columns():
    tab = _training_table()
    tab.rename_column("ruwe", "RUWE")
    tab.rename_column("ASPCAPFLAG", "aspcapflag")
    mask, _ = GAIA_RVS_TRAINING_CUTS.apply(tab)
    assert np.flatnonzero(mask).tolist() == [0, 3, 5]


def test_bitmask_64_bit_and_unsigned():
    flags = np.array([0, 1 << 63, (1 << 63) | 1, 2], dtype=np.uint64)
    for col in (flags, flags.view(np.int64)):
        tab = Table({"ASPCAPFLAG": col})
        clear63 = Selection(cuts=[Cut(name="b63", column="ASPCAPFLAG", op="bit_clear", value=63)])
        set0 = Selection(cuts=[Cut(name="b0", column="ASPCAPFLAG", op="bit_set", value=0)])
        assert clear63.apply(tab)[0].tolist() == [True, False, False, True]
        assert set0.apply(tab)[0].tolist() == [False, False, True, False]


def test_masked_bitmask_fails():
    tab = Table({"ASPCAPFLAG": MaskedColumn(np.array([0, 0], dtype=np.int64), mask=[False, True])})
    mask, report = Selection(cuts=[Cut(name="b7", column="ASPCAPFLAG", op="bit_clear", value=7)]).apply(tab)
    assert mask.tolist() == [True, False]
    assert report.cuts[0].missing == 1


def test_float_bitmask_is_refused():
    tab = Table({"ASPCAPFLAG": np.array([0.0, 128.0])})
    with pytest.raises(InputError) as err:
        Selection(cuts=[Cut(name="b7", column="ASPCAPFLAG", op="bit_clear", value=7)]).apply(tab)
    assert err.value.field == "ASPCAPFLAG"


def test_fits_style_bytes_strings_and_boolean_text():
    tab = Table({"phot_variable_flag": np.array([b"VARIABLE    ", b"CONSTANT    ", b"NOT_AVAILABLE"]),
                 "has_xp_continuous": np.array(["True", "false", "T"])})
    sel = Selection(cuts=[Cut(name="var", column="phot_variable_flag", op="!=", value="VARIABLE"),
                          Cut(name="xp", column="has_xp_continuous", op="is_true")])
    mask, report = sel.apply(tab)
    assert mask.tolist() == [False, False, True]
    assert [c.removed_alone for c in report.cuts] == [1, 1]


def test_bad_boolean_values_are_refused():
    tab = Table({"has_xp_continuous": np.array([0, 2])})
    with pytest.raises(InputError) as err:
        Selection(cuts=[Cut(name="xp", column="has_xp_continuous", op="is_true")]).apply(tab)
    assert err.value.field == "has_xp_continuous"


def test_string_threshold_on_numeric_column_is_refused():
    tab = Table({"non_single_star": np.array([0, 1])})
    with pytest.raises(InputError):
        Selection(cuts=[Cut(name="nss", column="non_single_star", op="==", value="0")]).apply(tab)


def test_condition_scopes_the_cut():
    tab = Table({"M_H": [-1.0, -1.0, 0.0, 0.0], "M_H_ERR": [0.15, 0.25, 0.05, 0.15]})
    cuts = [c for c in GAIA_RVS_TRAINING_CUTS.cuts if c.column == "M_H_ERR"]
    mask, report = Selection(cuts=cuts).apply(tab)
    assert mask.tolist() == [True, False, True, False]
    assert [c.removed for c in report.cuts] == [1, 1]


def test_paper_thresholds_are_encoded():
    cuts = {c.name: c for c in GAIA_RVS_TRAINING_CUTS.cuts}

    def spec(name):
        c = cuts[name]
        return c.column, c.op, c.value

    assert spec("aspcap_star_warn") == ("ASPCAPFLAG", "bit_clear", 7)
    assert spec("aspcap_star_bad") == ("ASPCAPFLAG", "bit_clear", 23)
    assert spec("aspcap_chi2") == ("ASPCAP_CHI2", "<", 25.0)
    assert spec("fe_h_flag") == ("FE_H_FLAG", "==", 0)
    assert spec("teff_err") == ("TEFF_ERR", "<", 100.0)
    assert spec("logg_err") == ("LOGG_ERR", "<", 0.1)
    assert spec("alpha_m_err") == ("ALPHA_M_ERR", "<", 0.1)
    for lab in ("M_H", "FE_H"):
        poor, rich = cuts[f"{lab.lower()}_err_metal_poor"], cuts[f"{lab.lower()}_err_metal_rich"]
        assert (poor.column, poor.op, poor.value) == (f"{lab}_ERR", "<", 0.2)
        assert poor.when == Condition(column=lab, op="<", value=-0.5)
        assert (rich.column, rich.op, rich.value) == (f"{lab}_ERR", "<", 0.1)
        assert rich.when == Condition(column=lab, op=">=", value=-0.5)
    assert spec("rvs_snr") == ("rvs_spec_sig_to_noise", ">=", 30.0)
    assert spec("parallax_rel_error") == ("parallax", ">", 5.0)
    assert cuts["parallax_rel_error"].divide_by == "parallax_error"
    assert spec("ruwe") == ("ruwe", "<", 1.4)
    assert spec("not_variable") == ("phot_variable_flag", "!=", "VARIABLE")
    assert spec("single_star") == ("non_single_star", "==", 0)
    for band in ("g", "bp", "rp"):
        assert spec(f"{band}_flux_over_error") == (f"phot_{band}_mean_flux_over_error", ">", 500.0)
    assert spec("positive_parallax") == ("parallax", ">", 0.0)
    assert spec("has_xp_continuous") == ("has_xp_continuous", "is_true", None)
    assert spec("no_emission_class") == ("classlabel_espels", "is_null", None)
    assert spec("not_galaxy_candidate") == ("in_galaxy_candidates", "is_false", None)
    assert spec("not_qso_candidate") == ("in_qso_candidates", "is_false", None)
    # the sample cuts are the first part of the training cuts
    assert GAIA_RVS_TRAINING_CUTS.cuts[:len(GAIA_RVS_SAMPLE_CUTS.cuts)] == GAIA_RVS_SAMPLE_CUTS.cuts


def test_dict_and_yaml_round_trip(tmp_path):
    d = GAIA_RVS_TRAINING_CUTS.to_dict()
    assert d["cuts"][0] == {"name": "not_galaxy_candidate", "column": "in_galaxy_candidates", "op": "is_false",
                            "description": "§2.1: in_galaxy_candidates = False"}
    assert Selection.from_dict(d) == GAIA_RVS_TRAINING_CUTS
    assert load_selection(d) == GAIA_RVS_TRAINING_CUTS
    assert load_selection(GAIA_RVS_TRAINING_CUTS.to_yaml()) == GAIA_RVS_TRAINING_CUTS
    path = tmp_path / "cuts.yaml"
    path.write_text(GAIA_RVS_TRAINING_CUTS.to_yaml(), encoding="utf-8")
    assert load_selection(path) == GAIA_RVS_TRAINING_CUTS


def test_yaml_selection_applies():
    sel = load_selection("name: mine\ncuts:\n  - {name: chi2, column: ASPCAP_CHI2, op: '<', value: 10}\n"
                         "  - {name: warn, column: ASPCAPFLAG, op: bit_clear, value: 7}\n")
    tab = Table({"ASPCAP_CHI2": np.array([5.0, 15.0, 5.0], dtype=np.float32),
                 "ASPCAPFLAG": np.array([0, 0, 128], dtype=np.int64)})
    mask, report = sel.apply(tab)
    assert mask.tolist() == [True, False, False]
    assert [(c.removed, c.removed_alone) for c in report.cuts] == [(1, 1), (1, 1)]


@pytest.mark.parametrize("bad", [
    {"cuts": [{"name": "a", "column": "x", "op": "<"}]},                      # no value
    {"cuts": [{"name": "a", "column": "x", "op": "bit_clear", "value": 7.5}]},  # non-integer bit
    {"cuts": [{"name": "a", "column": "x", "op": "bit_clear", "value": 64}]},   # bit out of range
    {"cuts": [{"name": "a", "column": "x", "op": "is_true", "value": 1}]},      # value not allowed
    {"cuts": [{"name": "a", "column": "x", "op": "<", "value": "abc"}]},       # string with <
    {"cuts": [{"name": "a", "column": "x", "op": "~", "value": 1}]},           # unknown op
    {"cuts": [{"name": "a", "column": "x", "op": "<", "value": 1},
              {"name": "a", "column": "y", "op": "<", "value": 1}]},          # duplicate name
    {"cuts": []},
])
def test_invalid_selections_raise_config_error(bad):
    with pytest.raises(ConfigError):
        Selection.from_dict(bad)


def test_fits_round_trip_of_input_keeps_result(tmp_path):
    tab = _training_table()
    # FITS cannot null a logical column: keep the masked-bool row out of this check
    tab["in_qso_candidates"] = np.asarray(tab["in_qso_candidates"]).astype(bool)
    path = tmp_path / "xmatch.fits"
    tab.write(path)
    back = Table.read(path)
    mask_mem, rep_mem = GAIA_RVS_TRAINING_CUTS.apply(tab)
    mask_file, rep_file = GAIA_RVS_TRAINING_CUTS.apply(back)
    assert np.flatnonzero(mask_file).tolist() == [0, 3, 5, 17]
    assert mask_file.tolist() == mask_mem.tolist()
    assert rep_file == rep_mem


def test_combined_selections_apply_every_cut_in_order():
    from kielnet.data.selection import XP_TRAIN, combine_selections

    clean = load_selection("name: clean\ndescription: low chi2\n"
                           "cuts:\n  - {name: chi2, column: ASPCAP_CHI2, op: '<', value: 10}\n")
    both = combine_selections([XP_TRAIN, clean])
    assert both.name == "xp_train+clean" and [c.name for c in both.cuts] == ["not_test_fifth", "chi2"]
    ids = np.array([f"2M{i:08d}" for i in range(200)])
    chi2 = np.where(np.arange(200) % 3 == 0, 20.0, 5.0)
    tab = Table({"id": ids, "ASPCAP_CHI2": chi2})
    mask, report = both.apply(tab)
    want = XP_TRAIN.apply(tab)[0] & clean.apply(tab)[0]
    assert mask.tolist() == want.tolist() and 0 < mask.sum() < 200
    assert [c.name for c in report.cuts] == ["not_test_fifth", "chi2"] and report.n_selected == int(want.sum())
    assert combine_selections([clean]) is clean
    with pytest.raises(ConfigError, match="chi2"):  # two cuts of one name: refused, naming it
        combine_selections([clean, clean])
    with pytest.raises(ConfigError):
        combine_selections([])


def test_cli_select_is_repeatable_and_combines(tmp_path):
    from kielnet.cli import _load_selection, build_parser

    path = tmp_path / "clean.yaml"
    path.write_text("name: clean\ncuts:\n  - {name: chi2, column: ASPCAP_CHI2, op: '<', value: 10}\n")
    for cmd in (["train", "--data", "x", "--out", "o"], ["tune", "--data", "x", "--workdir", "w", "--out", "o"],
                ["calibrate", "--bundle", "b", "--data", "x", "--out", "o"]):
        args = build_parser().parse_args(cmd + ["--select", "xp-train", "--select", str(path)])
        sel = _load_selection(args)
        assert sel.name == "xp_train+clean" and [c.name for c in sel.cuts] == ["not_test_fifth", "chi2"]
    base = ["calibrate", "--bundle", "b", "--data", "x", "--out", "o"]
    assert _load_selection(build_parser().parse_args(base + ["--select", "xp-train"])).name == "xp_train"
    assert _load_selection(build_parser().parse_args(base)) is None
