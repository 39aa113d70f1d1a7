"""Star sources: fixed-size batches whatever the layout underneath."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from kielnet.data.source import MappedSource, StarSource, TableSource, rebatch
from kielnet.data.startable import StarTable


@pytest.mark.parametrize("pieces, size, start", [([7, 3, 10, 1], 4, 0), ([5], 5, 0), ([2, 2, 2, 2, 3], 3, 6),
                                                 ([20], 6, 12), ([1] * 9, 4, 8)])
def test_rebatch_gives_fixed_sizes_in_order(make_table, pieces, size, start):
    t = make_table(n=sum(pieces), n_pix=8)
    cuts = np.cumsum([0] + pieces)
    parts = (t.take(np.arange(a, b)) for a, b in zip(cuts[:-1], cuts[1:]))
    out = list(rebatch(parts, size, start))
    assert [len(b) for b in out[:-1]] == [size] * (len(out) - 1) and 0 < len(out[-1]) <= size
    np.testing.assert_array_equal(np.concatenate([b.ids for b in out]), t.ids[start:])
    np.testing.assert_array_equal(np.concatenate([b.flux for b in out]), t.flux[start:])


def test_table_source_and_mapping(make_table):
    t = make_table(n=10, n_pix=8)
    src = TableSource(t)
    assert isinstance(src, StarSource) and src.n_rows == 10
    assert [len(b) for b in src.batches(4)] == [4, 4, 2]
    assert [b.ids[0] for b in src.batches(4, start=4)] == [t.ids[4], t.ids[8]]
    mapped = MappedSource(src, _shift_g, "g+1")
    b = next(mapped.batches(10))
    np.testing.assert_allclose(b.scalars["g"], t.scalars["g"] + 1)
    assert pickle.loads(pickle.dumps(mapped)).n_rows == 10
    with pytest.raises(ValueError):
        next(src.batches(0))


def _shift_g(t: StarTable) -> StarTable:
    out = t.take(np.arange(len(t)))
    out.scalars["g"] = out.scalars["g"] + 1
    return out
