"""The label vocabulary (kielnet.labels) and its use by configs and flags."""

from __future__ import annotations

import pytest

from kielnet.config import load_config
from kielnet.errors import ConfigError
from kielnet.labels import BUILTIN_LABELS, display_name, label_info
from kielnet.quality.flags import flag_names, label_bit


def test_known_names_get_their_unit_and_display_name():
    assert label_info("teff").unit == "K" and label_info("logg").unit == "dex"
    assert display_name("alpha_m") == r"[$\alpha$/M]"
    assert label_info("mg_fe").display == "[Mg/Fe]" and label_info("mg_fe").unit == "dex"
    assert label_info("c_h").display == "[C/H]"
    assert label_info("some_index").display == "some_index" and label_info("some_index").unit == ""


def test_config_fields_win_over_the_builtin_vocabulary():
    cfg = load_config("xp_hybrid").with_overrides(labels=[
        {"name": "teff", "unit": "K", "valid_range": [2000, 9e4]},
        {"name": "li_ew", "unit": "AA", "display": "EW(Li)", "aliases": ["EW_LI"], "valid_range": [0, 1]}])
    voc = cfg.label_vocabulary
    assert voc["li_ew"].display == "EW(Li)" and voc["li_ew"].unit == "AA" and "EW_LI" in voc["li_ew"].aliases
    assert cfg.label_units == {"teff": "K", "li_ew": "AA"}
    assert voc["teff"].aliases == BUILTIN_LABELS["teff"].aliases


def test_a_label_cannot_be_read_from_an_input_column():
    with pytest.raises(ConfigError, match="cannot be its own input"):
        load_config("xp_hybrid").with_overrides(labels=[{"name": "g", "valid_range": [0, 30]}])


def test_every_label_of_a_long_list_gets_its_own_flag_bit():
    names = [f"x{i}_fe" for i in range(51)]
    bits = [label_bit(j) for j in range(51)]
    assert len(set(bits)) == 51 and max(bits) < 63
    assert not set(bits) & {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19}
    assert flag_names(names)[label_bit(50)] == "outside_training_x50_fe"
    with pytest.raises(ValueError):
        label_bit(51)
