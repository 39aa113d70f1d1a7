"""Chunked, resumable prediction straight to a catalogue file, from a StarSource."""

from __future__ import annotations

import json
from dataclasses import replace

import astropy.units as u
import numpy as np
import pytest
from astropy.table import vstack

import kielnet.inference.streaming as streaming
from kielnet.data.source import TableSource
from kielnet.errors import RunMismatchError, UsageError
from kielnet.inference.inputs import duplicate_id_mask
from kielnet.inference.predict import add_duplicate_column, catalogue_meta, predict
from kielnet.inference.streaming import PredictionSummary, predict_to_file
from kielnet.io import atomic_write_table, read_catalogue


@pytest.fixture(scope="module")
def stars(tiny_holdout):
    return tiny_holdout.test.take(np.arange(25))


class UnsizedSource(TableSource):
    """A source that does not know its size up front (as a CSV file read in batches)."""

    @property
    def n_rows(self):
        return None


def in_memory_catalogue(bundle, table, chunk_size, n_realisations=None):
    """The catalogue as kielnet wrote it before streaming: every chunk predicted with its
    own generator, stacked in memory, catalogue metadata."""
    seed = bundle.config.inference.seed
    cats = [predict(bundle, table.take(np.arange(s, min(s + chunk_size, len(table)))),
                    n_realisations=n_realisations, rng=np.random.default_rng([seed, i]))
            for i, s in enumerate(range(0, len(table), chunk_size))]
    full = vstack(cats, metadata_conflicts="silent") if len(cats) > 1 else cats[0]
    add_duplicate_column(full, duplicate_id_mask(table.ids))   # over the whole input, not per chunk
    full.meta.clear()
    full.meta.update(catalogue_meta(bundle))
    return full


def assert_same_catalogue(a, b):
    assert a.colnames == b.colnames
    for c in a.colnames:
        x, y = np.asarray(a[c]), np.asarray(b[c])
        assert x.dtype.kind == y.dtype.kind, c
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y, err_msg=c)
        else:
            assert x.tolist() == y.tolist(), c
        assert a[c].unit == b[c].unit, c
        assert getattr(a[c], "description", None) == getattr(b[c], "description", None), c
        assert np.array_equal(np.ma.getmaskarray(a[c]), np.ma.getmaskarray(b[c])), c
    assert dict(a.meta) == dict(b.meta)


def awkward_stars(make_table, n=57):
    """Synthetic stars with missing photometry (status and missing_inputs with commas),
    a non-finite spectrum and repeated ids."""
    t = make_table(n=n, seed=5)
    t.scalars["g"][[3, 20, 37]] = np.nan
    t.scalars["rp"][[20]] = np.nan
    t.flux[7] = np.nan
    ids = t.ids.copy()
    ids[30] = ids[29]  # ids may repeat in an input
    return replace(t, ids=ids)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".ecsv", ".fits"])
def test_streamed_output_equals_the_in_memory_catalogue(synthetic_bundle, make_table, tmp_path, suffix):
    table = awkward_stars(make_table)
    out = tmp_path / f"cat{suffix}"
    summary = predict_to_file(synthetic_bundle, table, out, chunk_size=10, progress=False)
    assert isinstance(summary, PredictionSummary)
    assert summary.rows == len(summary) == len(table) and summary.chunks == 6 and summary.output == out
    ref = in_memory_catalogue(synthetic_bundle, table, 10)
    expected = tmp_path / f"ref{suffix}"
    atomic_write_table(ref, expected)
    back = read_catalogue(out)
    assert back["id"].tolist() == table.ids.tolist()
    dup = np.char.lower(np.asarray(back["duplicate_id"]).astype(str)) == "true"   # (text in CSV)
    assert np.flatnonzero(dup).tolist() == [29, 30]   # in chunks 2 and 3
    assert_same_catalogue(back, read_catalogue(expected))
    if suffix in (".csv", ".ecsv"):
        assert out.read_bytes() == expected.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, expected.name])
    # the summary counts every status name
    status = np.asarray(ref["status"]).astype(str)
    assert summary.n_ok == int((status == "ok").sum())
    assert summary.flag_counts["missing_input"] == sum("missing_input" in s for s in status) >= 3
    assert summary.flag_counts["bad_spectrum"] == 1
    assert "missing_input: " in summary.report() and f"{len(table)} stars labelled" in summary.report()


@pytest.mark.parametrize("suffix", [".parquet", ".fits"])
def test_chunked_output_equals_one_shot_prediction(tiny_bundle, stars, tmp_path, suffix):
    out = tmp_path / f"cat{suffix}"
    summary = predict_to_file(tiny_bundle, stars, out, chunk_size=10, progress=False)
    assert not (tmp_path / f"cat{suffix}.parts").exists()
    ref = predict(tiny_bundle, stars)
    back = read_catalogue(out)
    assert summary.rows == len(back) == 25
    assert back["id"].tolist() == stars.ids.tolist()
    assert back["status"].tolist() == ref["status"].tolist()
    for name in ("teff", "logg", "fe_h", "alpha_m"):
        np.testing.assert_allclose(np.asarray(back[name]), np.asarray(ref[name]), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(back[f"sigma_{name}"]), np.asarray(ref[f"sigma_{name}"]),
                                   rtol=1e-5)
    assert back["teff"].unit == u.K and back["sigma_logg"].unit == u.dex
    assert back.meta["MODEL"] == "xp_hybrid"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_the_summary_gives_each_stage_its_time(tiny_bundle, stars, tmp_path):
    summary = predict_to_file(tiny_bundle, stars, tmp_path / "cat.parquet", chunk_size=10, progress=False)
    stages = summary.stage_seconds
    assert tuple(stages) == streaming.STAGES
    assert all(v >= 0 for v in stages.values()) and stages["networks"] > 0 and stages["reading"] > 0
    assert sum(stages.values()) <= summary.seconds
    # the process's CPU seconds in every stage; over the wall seconds, the cores it kept busy
    assert tuple(summary.stage_cpu_seconds) == streaming.STAGES and summary.stage_cpu_seconds["networks"] > 0
    cores = summary.stage_cores()
    assert cores["networks"] == pytest.approx(summary.stage_cpu_seconds["networks"] / stages["networks"])
    line = summary.report().splitlines()[-1]
    assert line.startswith("  time: reading ") and "networks" in line and line.endswith(" cores)")
    assert f"networks {stages['networks']:.1f} s ({cores['networks']:.2f} cores)" in line
    timings: dict[str, float] = {}
    predict(tiny_bundle, stars, timings=timings)
    first = dict(timings)
    predict(tiny_bundle, stars, timings=timings)  # added to, not replaced
    assert set(timings) == {"networks", "labels", "networks_cpu", "labels_cpu"}
    assert all(timings[k] > first[k] > 0 for k in ("networks", "labels", "networks_cpu"))


def test_a_source_of_unknown_size_gives_the_same_catalogue(synthetic_bundle, make_table, tmp_path):
    table = awkward_stars(make_table, n=40)  # 4 full chunks: the end is found by an empty one
    a = predict_to_file(synthetic_bundle, TableSource(table), tmp_path / "a.parquet", chunk_size=10,
                        progress=False)
    b = predict_to_file(synthetic_bundle, UnsizedSource(table), tmp_path / "b.parquet", chunk_size=10,
                        progress=False)
    assert a.rows == b.rows == 40 and b.chunks == 4
    assert_same_catalogue(a.read(), b.read())


def _interrupted_run(bundle, stars, out, source=None, **options):
    """The parts directory a killed run leaves: run.json of that run and its first part
    (recognisable by a marker value, its input fingerprint intact)."""
    opts = {"chunk_size": 10, "batch_size": 256, "n_realisations": 0, **options}
    source = source if source is not None else TableSource(stars)
    parts = out.with_name(out.name + ".parts")
    identity = streaming.prediction_run_identity(bundle, source, **opts)
    streaming._claim_parts(parts, identity, fresh=False)
    chunk = next(iter(source.batches(opts["chunk_size"])))
    streaming.run_chunk(bundle, bundle.build_members(), chunk, 0, chunk_size=opts["chunk_size"], parts=parts,
                        digest=streaming.run_digest(identity), batch_size=opts["batch_size"],
                        n_realisations=opts["n_realisations"])
    part = streaming.part_path(parts, 0)
    first = read_catalogue(part)
    assert first.meta["kielnet_part"]["input"]["n_rows"] == opts["chunk_size"]
    first["teff"] = -1.0 * u.K
    atomic_write_table(first, part)
    return parts


def test_existing_part_files_are_reused(tiny_bundle, stars, tmp_path):
    out = tmp_path / "cat.parquet"
    parts = _interrupted_run(tiny_bundle, stars, out)
    summary = predict_to_file(tiny_bundle, stars, out, chunk_size=10, progress=False)
    back = read_catalogue(out)
    teff = np.asarray(back["teff"])
    assert (teff[:10] == -1.0).all()          # reused, not recomputed
    assert (teff[10:] > 2000).all()           # the rest was computed
    assert back["id"].tolist() == stars.ids.tolist()
    assert summary.rows == 25 and summary.reused_chunks == 1 and summary.computed_rows == 15
    assert set(summary.stage_seconds) == set(streaming.STAGES)  # the two computed chunks' stages
    assert "kielnet_part" not in back.meta
    assert not parts.exists()


@pytest.mark.parametrize("change, needle", [
    ("reordered", "star ids"), ("other_stars", "number of stars"), ("chunk_size", "option chunk_size"),
    ("batch_size", "option batch_size"), ("flux", "spectra"), ("photometry", "scalar input 'g'"),
    ("bundle", "bundle differs"), ("realisations", "option n_realisations"), ("other_file", "input source")])
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
    elif change == "other_file":
        table = stars.take(np.arange(len(stars)))
        table.meta["source"] = "elsewhere.parquet"
    elif change == "bundle":
        members = [dict(m) for m in tiny_bundle.members]
        key = next(iter(members[0]))
        members[0][key] = members[0][key] * 1.0001                  # one retrained weight tensor
        bundle = replace(tiny_bundle, members=members)
    with pytest.raises(RunMismatchError, match="different run") as info:
        predict_to_file(bundle, table, out, progress=False, **opts)
    assert needle in str(info.value) and "--fresh" in str(info.value)
    assert not out.exists() and (parts / "part_000000.parquet").is_file()   # nothing written, nothing lost
    # --fresh starts over and gives the uninterrupted result
    full = predict_to_file(bundle, table, out, progress=False, fresh=True, **opts).read()
    assert full["id"].tolist() == table.ids.tolist()
    if change != "realisations":  # (random draws per chunk)
        np.testing.assert_allclose(np.asarray(full["teff"]), np.asarray(predict(bundle, table)["teff"]),
                                   rtol=1e-6)


def test_another_precision_is_another_run(synthetic_bundle, make_table, tmp_path):
    table = make_table(n=25, seed=2)
    out = tmp_path / "cat.parquet"
    _interrupted_run(synthetic_bundle, table, out)                    # the default precision (fp32)
    with pytest.raises(RunMismatchError, match="option precision: fp32 before, bf16 now.*--fresh"):
        predict_to_file(synthetic_bundle, table, out, chunk_size=10, progress=False, precision="bf16")
    # naming the default is the same run
    summary = predict_to_file(synthetic_bundle, table, out, chunk_size=10, progress=False, precision="fp32")
    assert summary.reused_chunks == 1


def test_changed_content_of_a_finished_chunk_is_refused(synthetic_bundle, make_table, tmp_path):
    """Same ids, same size, same source identity: only the chunk's content tells."""
    table = make_table(n=35, seed=8)
    out = tmp_path / "cat.parquet"
    parts = _interrupted_run(synthetic_bundle, table, out)
    changed = table.take(np.arange(len(table)))
    changed.scalars["bp"] = changed.scalars["bp"].copy()
    changed.scalars["bp"][4] += 0.5                                   # a star of the finished chunk 0
    with pytest.raises(RunMismatchError) as info:
        predict_to_file(synthetic_bundle, changed, out, chunk_size=10, progress=False)
    msg = str(info.value)
    assert "chunk 0" in msg and "input rows 0-9" in msg and "scalar input 'bp'" in msg and "--fresh" in msg
    assert not out.exists() and streaming.part_path(parts, 0).is_file()
    # a change in a chunk that has no part yet is simply the input of this run
    later = table.take(np.arange(len(table)))
    later.scalars["bp"] = later.scalars["bp"].copy()
    later.scalars["bp"][25] += 0.5
    back = predict_to_file(synthetic_bundle, later, out, chunk_size=10, progress=False).read()
    assert (np.asarray(back["teff"])[:10] == -1.0).all()
    np.testing.assert_array_equal(np.asarray(back["teff"])[20:],
                                  np.asarray(in_memory_catalogue(synthetic_bundle, later, 10)["teff"])[20:])


def test_a_part_with_foreign_rows_is_refused(tiny_bundle, stars, tmp_path):
    out = tmp_path / "cat.parquet"
    parts = _interrupted_run(tiny_bundle, stars, out)
    atomic_write_table(predict(tiny_bundle, stars.take(np.arange(10, 20))), parts / "part_000000.parquet")
    with pytest.raises(RunMismatchError, match="not the 10 stars of its chunk"):
        predict_to_file(tiny_bundle, stars, out, chunk_size=10, progress=False)


def test_a_part_without_input_fingerprint_is_refused(synthetic_bundle, make_table, tmp_path):
    table = make_table(n=25, seed=2)
    out = tmp_path / "cat.parquet"
    parts = _interrupted_run(synthetic_bundle, table, out)
    atomic_write_table(predict(synthetic_bundle, table.take(np.arange(10))), parts / "part_000000.parquet")
    with pytest.raises(RunMismatchError, match="no input fingerprint.*--fresh"):
        predict_to_file(synthetic_bundle, table, out, chunk_size=10, progress=False)


def test_parts_of_an_older_layout_are_refused(synthetic_bundle, make_table, tmp_path):
    table = make_table(n=25, seed=2)
    out = tmp_path / "cat.parquet"
    parts = _interrupted_run(synthetic_bundle, table, out)
    stamp = json.loads((parts / "run.json").read_text())
    (parts / "run.json").write_text(json.dumps(dict(stamp, format=1)))
    with pytest.raises(RunMismatchError, match="unknown layout.*--fresh"):
        predict_to_file(synthetic_bundle, table, out, chunk_size=10, progress=False)


def test_a_stray_part_beyond_the_input_is_refused(synthetic_bundle, make_table, tmp_path):
    table = make_table(n=25, seed=2)
    out = tmp_path / "cat.parquet"
    parts = _interrupted_run(synthetic_bundle, table, out, source=UnsizedSource(table))
    (parts / "part_000007.parquet").write_bytes(streaming.part_path(parts, 0).read_bytes())
    with pytest.raises(RunMismatchError, match="beyond the input's 3 chunks"):
        predict_to_file(synthetic_bundle, UnsizedSource(table), out, chunk_size=10, progress=False)
    assert not out.exists()


def test_parts_without_run_stamp_are_refused(tiny_bundle, stars, tmp_path):
    out = tmp_path / "cat.parquet"
    parts = out.with_name("cat.parquet.parts")
    parts.mkdir()
    atomic_write_table(predict(tiny_bundle, stars.take(np.arange(10))), parts / "part_000000.parquet")
    with pytest.raises(RunMismatchError, match="no run.json"):
        predict_to_file(tiny_bundle, stars, out, chunk_size=10, progress=False)


@pytest.mark.parametrize("kw", [{"chunk_size": 0}, {"chunk_size": -5}, {"batch_size": 0},
                                {"n_realisations": -1}, {"cluster": "local:0"}, {"cluster": "somewhere"},
                                {"precision": "float16"}])
def test_bad_options_are_refused_before_any_compute(synthetic_bundle, make_table, tmp_path, monkeypatch, kw):
    monkeypatch.setattr(streaming, "predict", lambda *a, **k: pytest.fail("computed"))
    with pytest.raises(UsageError):
        predict_to_file(synthetic_bundle, make_table(n=12), tmp_path / "cat.parquet", progress=False, **kw)
    assert list(tmp_path.iterdir()) == []


def test_chunk_larger_than_table(tiny_bundle, stars, tmp_path):
    out = tmp_path / "one.ecsv"
    predict_to_file(tiny_bundle, stars.take(np.arange(3)), out, chunk_size=1000, progress=False)
    back = read_catalogue(out)
    assert back["id"].tolist() == stars.ids[:3].tolist()


# --------------------------------------------------------------------- size limit of in-memory formats
def test_fits_above_the_row_limit_is_refused_before_any_compute(synthetic_bundle, make_table, tmp_path,
                                                               monkeypatch):
    monkeypatch.setattr(streaming, "IN_MEMORY_ROW_LIMIT", 20)
    monkeypatch.setattr(streaming, "predict", lambda *a, **k: pytest.fail("computed"))
    with pytest.raises(UsageError, match=r"more than the 20 rows.*\.parquet"):
        predict_to_file(synthetic_bundle, make_table(n=25), tmp_path / "cat.fits", chunk_size=10, progress=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(streaming, "IN_MEMORY_ROW_LIMIT", 20)
    # streamed formats have no limit
    for suffix in (".parquet", ".csv", ".ecsv"):
        assert predict_to_file(synthetic_bundle, make_table(n=25), tmp_path / f"cat{suffix}", chunk_size=10,
                               progress=False).rows == 25


def test_fits_limit_of_an_unsized_source_keeps_the_finished_parts(synthetic_bundle, make_table, tmp_path,
                                                                  monkeypatch):
    """Refused at the first chunk beyond the limit; the finished parts carry over to a
    streamed output when their directory is renamed."""
    monkeypatch.setattr(streaming, "IN_MEMORY_ROW_LIMIT", 15)
    table = make_table(n=25, seed=4)
    out = tmp_path / "cat.fits"
    with pytest.raises(UsageError, match="chunk 1 ends at row 20") as info:
        predict_to_file(synthetic_bundle, UnsizedSource(table), out, chunk_size=10, progress=False)
    parts = tmp_path / "cat.fits.parts"
    assert "rename" in str(info.value) and str(parts) in str(info.value)
    assert sorted(p.name for p in parts.iterdir()) == ["part_000000.parquet", "run.json"] and not out.exists()
    parts.rename(tmp_path / "cat.parquet.parts")
    summary = predict_to_file(synthetic_bundle, UnsizedSource(table), tmp_path / "cat.parquet", chunk_size=10,
                              progress=False)
    assert summary.reused_chunks == 1 and summary.rows == 25
    assert_same_catalogue(summary.read(), in_memory_catalogue(synthetic_bundle, table, 10))


def test_table2_of_a_large_catalogue_is_streamed(tmp_path):
    """The Gaia-RVS Table 2 of a multi-part Parquet catalogue, row group by row group,
    equals the one made in memory."""
    from astropy.table import Table

    from kielnet.inference.rvs_catalogue import to_rvs_catalogue, write_rvs_catalogue

    rng = np.random.default_rng(0)
    files = []
    for k in range(3):
        n = 7 if k < 2 else 4
        cat = Table({"id": [f"s{k}-{i}" for i in range(n)], "source_id": np.arange(n, dtype=np.int64) + 1000 * k})
        for lab, unit in (("teff", u.K), ("logg", u.dex), ("m_h", u.dex), ("fe_h", u.dex), ("alpha_m", u.dex)):
            for c in (lab, f"e_{lab}", f"sigma_{lab}"):
                cat[c] = rng.normal(5000 if lab == "teff" else 0.0, 1.0, n)
                cat[c].unit = unit
        cat["flag_boundary"] = rng.choice(["00000000", "01000001", "10000000"], n)
        cat.meta.update({"MODEL": "m", "comments": ["x"]})
        files.append(atomic_write_table(cat, tmp_path / f"part_{k}.parquet"))
    whole = tmp_path / "cat.parquet"
    assert streaming.concat_parquet(files, whole) == 18
    import pyarrow.parquet as pq

    assert pq.ParquetFile(whole).num_row_groups == 3
    assert streaming.stream_table2(whole, tmp_path / "t2.parquet") == 18
    ref = read_catalogue(whole)
    write_rvs_catalogue(to_rvs_catalogue(ref, source_id=ref["source_id"]), tmp_path / "ref.parquet")
    assert_same_catalogue(read_catalogue(tmp_path / "t2.parquet"), read_catalogue(tmp_path / "ref.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f.name for f in files] + ["cat.parquet", "t2.parquet", "ref.parquet"])
