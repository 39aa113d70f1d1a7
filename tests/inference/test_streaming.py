"""Chunked, resumable prediction straight to a catalogue file."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest

from kielnet.inference.predict import predict
from kielnet.inference.streaming import predict_to_file
from kielnet.io import atomic_write_table, read_catalogue


@pytest.fixture(scope="module")
def stars(tiny_holdout):
    return tiny_holdout.test.take(np.arange(25))


@pytest.mark.parametrize("suffix", [".parquet", ".fits"])
def test_chunked_output_equals_one_shot_prediction(tiny_bundle, stars, tmp_path, suffix):
    out = tmp_path / f"cat{suffix}"
    full = predict_to_file(tiny_bundle, stars, out, chunk_size=10, progress=False)
    assert not (tmp_path / f"cat{suffix}.parts").exists()
    ref = predict(tiny_bundle, stars)
    back = read_catalogue(out)
    assert len(full) == len(back) == 25
    assert back["id"].tolist() == stars.ids.tolist()
    assert back["status"].tolist() == ref["status"].tolist()
    for name in ("teff", "logg", "fe_h", "alpha_m"):
        np.testing.assert_allclose(np.asarray(back[name]), np.asarray(ref[name]), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(back[f"sigma_{name}"]), np.asarray(ref[f"sigma_{name}"]),
                                   rtol=1e-5)
    assert back["teff"].unit == u.K and back["sigma_logg"].unit == u.dex
    assert back.meta["MODEL"] == "xp_hybrid"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_existing_part_files_are_reused(tiny_bundle, stars, tmp_path):
    out = tmp_path / "cat.parquet"
    parts = tmp_path / "cat.parquet.parts"
    parts.mkdir()
    # a finished first chunk from an "interrupted" run, recognisable by a marker value
    first = predict(tiny_bundle, stars.take(np.arange(10)))
    first["teff"] = -1.0 * u.K
    atomic_write_table(first, parts / "part_000000.parquet")
    full = predict_to_file(tiny_bundle, stars, out, chunk_size=10, progress=False)
    back = read_catalogue(out)
    teff = np.asarray(back["teff"])
    assert (teff[:10] == -1.0).all()          # reused, not recomputed
    assert (teff[10:] > 2000).all()           # the rest was computed
    assert back["id"].tolist() == stars.ids.tolist()
    assert len(full) == 25
    assert not parts.exists()


def test_chunk_larger_than_table(tiny_bundle, stars, tmp_path):
    out = tmp_path / "one.ecsv"
    predict_to_file(tiny_bundle, stars.take(np.arange(3)), out, chunk_size=1000, progress=False)
    back = read_catalogue(out)
    assert back["id"].tolist() == stars.ids[:3].tolist()
