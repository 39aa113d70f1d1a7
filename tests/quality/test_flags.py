"""Quality flag bits and status strings."""

from __future__ import annotations

import numpy as np

from kielnet.quality.flags import (FLAG_BITS, describe_flags, flag_names, label_bit, range_flags,
                                   status_strings)

LABELS = ["teff", "logg", "fe_h", "alpha_m"]


def test_bits_are_distinct_and_label_bits_follow():
    assert FLAG_BITS == {"bad_spectrum": 0, "interpolated_pixels": 1, "missing_input": 2,
                         "input_outside_training": 3, "label_not_reported": 4, "out_of_distribution": 5,
                         "ensemble_disagreement": 6, "implausible_spectrum": 7, "prediction_failed": 16,
                         "label_unphysical": 17, "missing_input_unlabelled": 18, "likely_outlier": 19}
    assert [label_bit(j) for j in range(4)] == [8, 9, 10, 11]
    names = flag_names(LABELS)
    assert len(names) == len(FLAG_BITS) + 4
    assert names[9] == "outside_training_logg"


def test_status_strings():
    flags = np.array([0, 1, 2 | 4, (1 << 8) | (1 << 11), 1 | (1 << 9)])
    assert status_strings(flags, LABELS).tolist() == [
        "ok",
        "bad_spectrum",
        "interpolated_pixels,missing_input",
        "outside_training_teff,outside_training_alpha_m",
        "bad_spectrum,outside_training_logg",
    ]
    # unknown bits (e.g. a label index beyond the model's labels) are not invented
    assert status_strings(np.array([1 << 12]), LABELS).tolist() == ["ok"]


def test_status_strings_round_trip_every_bit():
    names = flag_names(LABELS)
    for bit, name in names.items():
        assert status_strings(np.array([1 << bit]), LABELS)[0] == name


def test_describe_flags_has_one_line_per_bit():
    text = describe_flags(LABELS)
    lines = text.splitlines()
    assert len(lines) == len(flag_names(LABELS))
    assert lines[0].startswith("bit 0: bad_spectrum")
    assert "bit 10: outside_training_fe_h" in text


def test_range_flags():
    v = np.array([[1.0, np.nan], [5.0, 2.0], [0.0, 3.0]])
    out = range_flags(v, np.array([0.0, 2.5]), np.array([4.0, 10.0]))
    # NaN is never "outside"; the bounds themselves are inside
    assert out.tolist() == [[False, False], [True, True], [False, False]]


def test_range_flags_treat_inf_as_outside_and_nan_as_no_value():
    from kielnet.quality.flags import range_flags

    v = np.array([[np.inf], [-np.inf], [np.nan], [5.0], [11.0]])
    out = range_flags(v, np.array([0.0]), np.array([10.0]))
    np.testing.assert_array_equal(out[:, 0], [True, True, False, False, True])
