"""The Gaia-RVS CNN 8-digit boundary flag (Guiglion et al. 2024, §5.2)."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest

from kielnet.errors import InputError
from kielnet.quality.boundary import (BOUNDARY_DIGITS, IN_TRAINING, TABLE1_G_RANGE, TABLE1_LABEL_RANGES,
                                      TABLE1_PARALLAX_RANGE, boundary_flags, describe_boundary_flag,
                                      parse_boundary_flags)

INSIDE = {"teff": 5000.0, "logg": 2.5, "m_h": -0.3, "alpha_m": 0.1, "fe_h": -0.3, "g": 12.0,
          "parallax": 1.0}


def _flags(stars: list[dict], tsne: list[bool] | None = None) -> np.ndarray:
    """Flags of stars given as dicts of overrides of INSIDE, with Table 1 ranges."""
    rows = [INSIDE | s for s in stars]
    labels = {k: np.array([r[k] for r in rows]) for k in ("teff", "logg", "m_h", "alpha_m", "fe_h")}
    return boundary_flags(labels, TABLE1_LABEL_RANGES, np.array([r["g"] for r in rows]),
                          np.array([r["parallax"] for r in rows]), TABLE1_G_RANGE, TABLE1_PARALLAX_RANGE,
                          np.array(tsne if tsne is not None else [False] * len(rows)))


def test_table1_ranges():
    assert TABLE1_LABEL_RANGES == {"teff": (3705.0, 6395.0), "logg": (0.58, 4.70), "m_h": (-2.29, 0.55),
                                   "alpha_m": (-0.18, 0.46), "fe_h": (-2.20, 0.54)}
    assert TABLE1_G_RANGE == (9.01, 14.21)
    assert TABLE1_PARALLAX_RANGE == (0.05, 7.00)


def test_digit_order_is_the_papers():
    assert BOUNDARY_DIGITS == ("teff", "logg", "m_h", "alpha_m", "fe_h", "g", "parallax", "tsne")
    assert IN_TRAINING == "00000000"


def test_star_inside_everything():
    flags = _flags([{}])
    assert flags.tolist() == ["00000000"]
    assert flags.dtype == np.dtype("<U8")


@pytest.mark.parametrize("k, name", list(enumerate(BOUNDARY_DIGITS[:7])))
def test_each_range_digit_toggles_alone(k, name):
    lo, hi = (TABLE1_LABEL_RANGES | {"g": TABLE1_G_RANGE, "parallax": TABLE1_PARALLAX_RANGE})[name]
    span = hi - lo
    expected = "0" * k + "1" + "0" * (7 - k)
    flags = _flags([{name: lo - 0.01 * span}, {name: hi + 0.01 * span}, {name: lo}, {name: hi},
                    {name: np.nan}])
    assert flags.tolist() == [expected, expected, IN_TRAINING, IN_TRAINING, expected]


def test_tsne_digit_toggles_alone():
    assert _flags([{}, {}], tsne=[True, False]).tolist() == ["00000001", "00000000"]


def test_paper_example_teff_only():
    assert _flags([{"teff": 7000.0}]).tolist() == ["10000000"]


def test_alpha_before_iron():
    assert _flags([{"alpha_m": 0.6}, {"fe_h": 0.6}]).tolist() == ["00010000", "00001000"]


def test_several_digits_and_vectorised():
    rng = np.random.default_rng(3)
    n = 500
    labels = {"teff": rng.uniform(3000, 7000, n), "logg": rng.uniform(0, 5, n), "m_h": rng.uniform(-3, 1, n),
              "alpha_m": rng.uniform(-0.3, 0.6, n), "fe_h": rng.uniform(-3, 1, n)}
    g, plx = rng.uniform(5, 16, n), rng.uniform(-1, 10, n)
    tsne = rng.random(n) < 0.3
    flags = boundary_flags(labels, TABLE1_LABEL_RANGES, g, plx, TABLE1_G_RANGE, TABLE1_PARALLAX_RANGE, tsne)
    ranges = TABLE1_LABEL_RANGES | {"g": TABLE1_G_RANGE, "parallax": TABLE1_PARALLAX_RANGE}
    values = labels | {"g": g, "parallax": plx}
    for i in range(n):
        want = "".join("1" if not ranges[k][0] <= values[k][i] <= ranges[k][1] else "0"
                       for k in BOUNDARY_DIGITS[:7]) + ("1" if tsne[i] else "0")
        assert flags[i] == want
    assert len(set(flags.tolist())) > 20  # really mixed digits


def test_masked_values_and_unknown_tsne_give_one():
    labels = {k: np.ma.masked_array([INSIDE[k]] * 2, mask=[False, k == "logg"])
              for k in ("teff", "logg", "m_h", "alpha_m", "fe_h")}
    tsne = np.ma.masked_array([False, False], mask=[True, False])
    flags = boundary_flags(labels, TABLE1_LABEL_RANGES, [12.0, 12.0], [1.0, 1.0], TABLE1_G_RANGE,
                           TABLE1_PARALLAX_RANGE, tsne)
    assert flags.tolist() == ["00000001", "01000000"]


def test_quantities_are_converted():
    labels = {k: np.array([INSIDE[k]] * 2) for k in ("m_h", "alpha_m", "fe_h")}
    labels["teff"] = np.array([5.0, 5.0]) * u.kK  # 5 kK = 5000 K is inside
    labels["logg"] = np.array([2.5, 2.5]) * u.dex(u.cm / u.s ** 2)
    # 0.02 mas = 2e-5 arcsec is below the 0.05 mas lower limit; 1e-3 arcsec = 1 mas is inside
    flags = boundary_flags(labels, TABLE1_LABEL_RANGES, [12.0, 12.0] * u.mag, [2e-5, 1e-3] * u.arcsec,
                           TABLE1_G_RANGE, TABLE1_PARALLAX_RANGE, np.array([False, False]))
    assert flags.tolist() == ["00000010", "00000000"]
    with pytest.raises(InputError) as err:
        boundary_flags(labels, TABLE1_LABEL_RANGES, [12.0, 12.0] * u.mag, [1.0, 1.0] * u.K, TABLE1_G_RANGE,
                       TABLE1_PARALLAX_RANGE, np.array([False, False]))
    assert err.value.field == "parallax"


def test_integer_tsne_accepted_and_bad_values_refused():
    labels = {k: np.array([INSIDE[k]] * 2) for k in ("teff", "logg", "m_h", "alpha_m", "fe_h")}
    args = (labels, TABLE1_LABEL_RANGES, [12.0, 12.0], [1.0, 1.0], TABLE1_G_RANGE, TABLE1_PARALLAX_RANGE)
    assert boundary_flags(*args, np.array([1, 0])).tolist() == ["00000001", "00000000"]
    with pytest.raises(InputError) as err:
        boundary_flags(*args, np.array([2, 0]))
    assert err.value.field == "tsne_unlike"
    with pytest.raises(InputError):
        boundary_flags(*args, np.array([0.5, 0.0]))


def test_missing_label_and_shape_errors_name_the_field():
    labels = {k: np.array([INSIDE[k]] * 2) for k in ("teff", "logg", "m_h", "alpha_m")}
    with pytest.raises(InputError) as err:
        boundary_flags(labels, TABLE1_LABEL_RANGES, [12.0, 12.0], [1.0, 1.0], TABLE1_G_RANGE,
                       TABLE1_PARALLAX_RANGE, np.zeros(2, bool))
    assert err.value.field == "fe_h"
    labels["fe_h"] = np.array([0.0] * 2)
    with pytest.raises(InputError) as err:
        boundary_flags(labels, TABLE1_LABEL_RANGES, [12.0, 12.0, 12.0], [1.0, 1.0], TABLE1_G_RANGE,
                       TABLE1_PARALLAX_RANGE, np.zeros(2, bool))
    assert err.value.field == "g"
    ranges = dict(TABLE1_LABEL_RANGES)
    del ranges["alpha_m"]
    with pytest.raises(InputError) as err:
        boundary_flags(labels, ranges, [12.0, 12.0], [1.0, 1.0], TABLE1_G_RANGE, TABLE1_PARALLAX_RANGE,
                       np.zeros(2, bool))
    assert err.value.field == "alpha_m"
    with pytest.raises(InputError):
        boundary_flags(labels, TABLE1_LABEL_RANGES, [12.0, 12.0], [1.0, 1.0], (14.0, 9.0),
                       TABLE1_PARALLAX_RANGE, np.zeros(2, bool))


def test_bundle_style_ranges_accepted():
    labels = {k: np.array([INSIDE[k]]) for k in ("teff", "logg", "m_h", "alpha_m", "fe_h")}
    ranges = {k: [float(v) - 1.0, float(v) + 1.0] for k, v in INSIDE.items()}  # lists, as in a bundle
    ranges["teff"] = [4999.0, 4999.5]
    assert boundary_flags(labels, ranges, [12.0], [1.0], [11.0, 13.0], [0.5, 1.5],
                          np.array([False])).tolist() == ["10000000"]


def test_parse_round_trip_and_malformed():
    flags = np.array(["00000000", "10000001", "01010100"])
    parsed = parse_boundary_flags(flags)
    assert list(parsed) == list(BOUNDARY_DIGITS)
    assert parsed["teff"].tolist() == [False, True, False]
    assert parsed["tsne"].tolist() == [False, True, False]
    assert parsed["m_h"].tolist() == [False, False, False]
    assert parsed["alpha_m"].tolist() == [False, False, True]
    assert parsed["g"].tolist() == [False, False, True]
    assert parse_boundary_flags(np.array([b"00000010"]))["parallax"].tolist() == [True]
    for bad in (["0000000"], ["000000000"], ["0000000x"], ["00000000", "2000000 "]):
        with pytest.raises(InputError) as err:
            parse_boundary_flags(bad)
        assert err.value.field == "flag_boundary"
    with pytest.raises(InputError) as err:
        parse_boundary_flags(["00000000", "0000002"])
    assert err.value.row == 1


def test_description_is_ascii_short_and_ordered():
    text = describe_boundary_flag()
    lines = text.splitlines()
    assert text.isascii()
    assert max(len(line) for line in lines) <= 72  # fits a FITS COMMENT card
    digit_lines = [line for line in lines if line.startswith("digit ")]
    assert len(digit_lines) == 8
    assert [line.split()[2] for line in digit_lines] == list(BOUNDARY_DIGITS)
    assert "[alpha/M]" in digit_lines[3] and "[Fe/H]" in digit_lines[4]
    assert "training-unlike" in digit_lines[7]
    assert "00000000" in text and "NaN" in text
