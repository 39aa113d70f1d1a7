"""Chunked, resumable prediction straight to a catalogue file."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest

from kielnet.errors import RunMismatchError, UsageError
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


def _interrupted_run(bundle, stars, out, **options):
    """The parts directory a killed run leaves: run.json of that run and its first part
    (recognisable by a marker value)."""
    from kielnet.inference.streaming import _claim_parts, prediction_run_identity

    opts = {"chunk_size": 10, "batch_size": 256, "n_realisations": 0, **options}
    parts = out.with_name(out.name + ".parts")
    _claim_parts(parts, prediction_run_identity(bundle, stars, **opts), fresh=False)
    first = predict(bundle, stars.take(np.arange(opts["chunk_size"])))
    first["teff"] = -1.0 * u.K
    atomic_write_table(first, parts / "part_000000.parquet")
    return parts


def test_existing_part_files_are_reused(tiny_bundle, stars, tmp_path):
    out = tmp_path / "cat.parquet"
    parts = _interrupted_run(tiny_bundle, stars, out)
    full = predict_to_file(tiny_bundle, stars, out, chunk_size=10, progress=False)
    back = read_catalogue(out)
    teff = np.asarray(back["teff"])
    assert (teff[:10] == -1.0).all()          # reused, not recomputed
    assert (teff[10:] > 2000).all()           # the rest was computed
    assert back["id"].tolist() == stars.ids.tolist()
    assert len(full) == 25
    assert not parts.exists()


@pytest.mark.parametrize("change, needle", [
    ("reordered", "star ids"), ("other_stars", "number of stars"), ("chunk_size", "option chunk_size"),
    ("batch_size", "option batch_size"), ("flux", "spectra"), ("photometry", "scalar input 'g'"),
    ("bundle", "bundle differs"), ("realisations", "option n_realisations")])
def test_parts_of_another_run_are_refused(tiny_bundle, stars, tmp_path, change, needle):
    out = tmp_path / "cat.parquet"
    parts = _interrupted_run(tiny_bundle, stars, out)
    table, bundle, opts = stars, tiny_bundle, {"chunk_size": 10}
    if change == "reordered":
        table = stars.take(np.arange(len(stars))[::-1])
    elif change == "other_stars":
        table = stars.take(np.arange(20))
    elif change == "chunk_size":
        opts["chunk_size"] = 7
    elif change == "batch_size":
        opts["batch_size"] = 32
    elif change == "realisations":
        opts["n_realisations"] = 2
    elif change == "flux":
        table = stars.take(np.arange(len(stars)))
        table.flux = table.flux * 1.001
    elif change == "photometry":
        table = stars.take(np.arange(len(stars)))
        table.scalars["g"] = table.scalars["g"] + 0.01
    elif change == "bundle":
        from dataclasses import replace

        members = [dict(m) for m in tiny_bundle.members]
        key = next(iter(members[0]))
        members[0][key] = members[0][key] * 1.0001                  # one retrained weight tensor
        bundle = replace(tiny_bundle, members=members)
    with pytest.raises(RunMismatchError, match="different run") as info:
        predict_to_file(bundle, table, out, progress=False, **opts)
    assert needle in str(info.value) and "--fresh" in str(info.value)
    assert not out.exists() and (parts / "part_000000.parquet").is_file()   # nothing written, nothing lost
    # --fresh starts over and gives the uninterrupted result
    full = predict_to_file(bundle, table, out, progress=False, fresh=True, **opts)
    assert full["id"].tolist() == table.ids.tolist()
    if change != "realisations":  # (random draws per chunk)
        np.testing.assert_allclose(np.asarray(full["teff"]), np.asarray(predict(bundle, table)["teff"]),
                                   rtol=1e-6)


def test_a_part_with_foreign_rows_is_refused(tiny_bundle, stars, tmp_path):
    out = tmp_path / "cat.parquet"
    parts = _interrupted_run(tiny_bundle, stars, out)
    atomic_write_table(predict(tiny_bundle, stars.take(np.arange(10, 20))), parts / "part_000000.parquet")
    with pytest.raises(RunMismatchError, match="not the 10 stars of its chunk"):
        predict_to_file(tiny_bundle, stars, out, chunk_size=10, progress=False)


def test_parts_without_run_stamp_are_refused(tiny_bundle, stars, tmp_path):
    out = tmp_path / "cat.parquet"
    parts = out.with_name("cat.parquet.parts")
    parts.mkdir()
    atomic_write_table(predict(tiny_bundle, stars.take(np.arange(10))), parts / "part_000000.parquet")
    with pytest.raises(RunMismatchError, match="no run.json"):
        predict_to_file(tiny_bundle, stars, out, chunk_size=10, progress=False)


@pytest.mark.parametrize("kw", [{"chunk_size": 0}, {"chunk_size": -5}, {"batch_size": 0},
                                {"n_realisations": -1}])
def test_bad_sizes_are_refused_before_any_compute(tiny_bundle, stars, tmp_path, kw):
    with pytest.raises(UsageError):
        predict_to_file(tiny_bundle, stars, tmp_path / "cat.parquet", progress=False, **kw)
    assert list(tmp_path.iterdir()) == []


def test_chunk_larger_than_table(tiny_bundle, stars, tmp_path):
    out = tmp_path / "one.ecsv"
    predict_to_file(tiny_bundle, stars.take(np.arange(3)), out, chunk_size=1000, progress=False)
    back = read_catalogue(out)
    assert back["id"].tolist() == stars.ids[:3].tolist()
