"""kielnet.words: per-row joined names, made once per distinct pattern."""

from __future__ import annotations

import numpy as np
import pytest

from kielnet.words import joined_names


def _per_row(mask, names, sep=","):
    return np.asarray([sep.join(n for n, on in zip(names, row) if on) for row in mask], dtype=str)


@pytest.mark.parametrize("k", [1, 4, 8, 62, 63, 70, 130])
def test_the_same_strings_and_dtype_as_joining_row_by_row(k):
    rng = np.random.default_rng(k)
    names = [f"c{i}" for i in range(k)]
    mask = rng.random((500, k)) < rng.uniform(0.0, 0.3, (1, k))
    mask[:3] = False
    mask[3] = True
    got, want = joined_names(mask, names), _per_row(mask, names)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype
    assert got[0] == "" and got[3] == ",".join(names)


def test_separator_empty_input_and_shape_errors():
    names = ["teff", "logg"]
    np.testing.assert_array_equal(joined_names(np.array([[True, True], [False, True]]), names, sep="+"),
                                  ["teff+logg", "logg"])
    assert joined_names(np.zeros((0, 2), bool), names).shape == (0,)
    assert joined_names(np.zeros((4, 2), bool), names).tolist() == [""] * 4
    assert joined_names(np.zeros((3, 0), bool), []).tolist() == [""] * 3
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        joined_names(np.zeros((3, 3), bool), names)
    with pytest.raises(ValueError):
        joined_names(np.zeros(3, bool), names)
