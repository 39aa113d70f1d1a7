"""Chunked prediction on Dask distributed: identical rows and parts to a single process,
so that a cluster run resumes on one machine and vice versa."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

import kielnet.inference.streaming as streaming
from kielnet.data.source import TableSource
from kielnet.errors import RunMismatchError
from kielnet.artifact import load_bundle, save_bundle
from kielnet.inference.streaming import predict_to_file

distributed = pytest.importorskip("distributed")

import cloudpickle  # noqa: E402 - distributed depends on it

# the sources below live in this test module, which the workers cannot import: send them by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class UnsizedSource(TableSource):
    """A source that does not know its size up front."""

    @property
    def n_rows(self):
        return None


class FailingSource(TableSource):
    """Reading chunk ``fail_at`` fails (a crash in the middle of a run); same identity as
    a plain TableSource of the same table."""

    def __init__(self, table, fail_at: int):
        super().__init__(table)
        self.fail_at = fail_at

    def batches(self, size, start=0):
        if start == self.fail_at * size:
            raise RuntimeError("simulated crash")
        return super().batches(size, start)


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as lc, distributed.Client(lc) as c:
        yield c


@pytest.fixture(scope="module")
def bundle_dir(synthetic_bundle, tmp_path_factory):
    return save_bundle(synthetic_bundle, tmp_path_factory.mktemp("dist") / "bundle")


@pytest.fixture(scope="module")
def stars():
    from conftest import synthetic_table

    t = synthetic_table(n=95, seed=11)
    t.scalars["g"][[5, 50]] = np.nan
    return t


def same_rows(a, b):
    assert a.colnames == b.colnames
    for c in a.colnames:
        x, y = np.asarray(a[c]), np.asarray(b[c])
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y, err_msg=c)
        else:
            assert x.tolist() == y.tolist(), c
        assert a[c].unit == b[c].unit, c
    assert dict(a.meta) == dict(b.meta)


def test_cluster_rows_equal_the_single_process_run(client, bundle_dir, stars, tmp_path):
    bundle = load_bundle(bundle_dir)
    ref = predict_to_file(bundle, stars, tmp_path / "one.parquet", chunk_size=10, progress=False)
    # workers load the bundle from its path, once each
    got = predict_to_file(bundle_dir, stars, tmp_path / "cluster.parquet", chunk_size=10, progress=False,
                          cluster=client)
    assert got.rows == ref.rows == 95 and got.chunks == 10 and got.flag_counts == ref.flag_counts
    assert set(got.stage_seconds) == set(ref.stage_seconds) == {"reading", "networks", "labels", "writing",
                                                                "assembling"}  # summed over the workers
    assert set(got.stage_cpu_seconds) == set(got.stage_seconds)                # the workers' CPU seconds too
    same_rows(ref.read(), got.read())
    cached = client.run(lambda: [k[:2] for k in __import__("kielnet.inference.distributed",
                                                          fromlist=["_BUNDLES"])._BUNDLES])
    assert all(keys == [("path", str(bundle_dir.resolve()))] for keys in cached.values()), cached
    assert not (tmp_path / "cluster.parquet.parts").exists()
    # a bundle that is not on disk is sent to the workers; a source of unknown size ends at its first empty chunk
    mem = predict_to_file(bundle, UnsizedSource(stars), tmp_path / "mem.csv", chunk_size=19, progress=False,
                          cluster=client)
    ref_csv = predict_to_file(bundle, stars, tmp_path / "one.csv", chunk_size=19, progress=False)
    assert mem.chunks == 5 and (tmp_path / "mem.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert ref_csv.rows == mem.rows == 95


def test_an_interrupted_cluster_run_resumes_in_one_process(client, bundle_dir, stars, tmp_path):
    bundle = load_bundle(bundle_dir)
    ref = predict_to_file(bundle, stars, tmp_path / "ref.parquet", chunk_size=10, progress=False).read()
    out = tmp_path / "cat.parquet"
    with pytest.raises(RuntimeError, match="simulated crash"):
        predict_to_file(bundle_dir, FailingSource(stars, fail_at=6), out, chunk_size=10, progress=False,
                        cluster=client)
    parts = tmp_path / "cat.parquet.parts"
    done = sorted(p.name for p in parts.glob("part_*.parquet"))
    assert done and "part_000006.parquet" not in done and not out.exists()
    summary = predict_to_file(bundle, stars, out, chunk_size=10, progress=False)
    assert summary.reused_chunks == len(done) and summary.rows == 95
    same_rows(ref, summary.read())


def test_an_interrupted_local_run_resumes_on_the_cluster(client, bundle_dir, stars, tmp_path, monkeypatch):
    bundle = load_bundle(bundle_dir)
    ref = predict_to_file(bundle, stars, tmp_path / "ref.parquet", chunk_size=10, progress=False).read()
    out = tmp_path / "cat.parquet"
    real, calls = streaming.predict, []

    def killed_after_four(*a, **kw):
        if len(calls) >= 4:
            raise KeyboardInterrupt("simulated kill")
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(streaming, "predict", killed_after_four)
    with pytest.raises(KeyboardInterrupt):
        predict_to_file(bundle, stars, out, chunk_size=10, progress=False)
    monkeypatch.undo()
    parts = tmp_path / "cat.parquet.parts"
    assert sorted(p.name for p in parts.glob("part_*.parquet")) == [f"part_{k:06d}.parquet" for k in range(4)]
    streaming.part_path(parts, 1).unlink()                       # a part lost: computed again
    summary = predict_to_file(bundle_dir, stars, out, chunk_size=10, progress=False, cluster=client)
    assert summary.reused_chunks == 3 and summary.computed_rows == 95 - 30
    same_rows(ref, summary.read())


def test_changed_content_is_refused_on_the_cluster(client, bundle_dir, stars, tmp_path, monkeypatch):
    bundle = load_bundle(bundle_dir)
    out = tmp_path / "cat.parquet"
    real, calls = streaming.predict, []

    def killed_after_two(*a, **kw):
        if len(calls) >= 2:
            raise KeyboardInterrupt("simulated kill")
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(streaming, "predict", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        predict_to_file(bundle, stars, out, chunk_size=10, progress=False)
    monkeypatch.undo()
    changed = stars.take(np.arange(len(stars)))
    changed.flux = changed.flux.copy()
    changed.flux[13, 4] *= 1.01                                   # a star of the finished chunk 1
    with pytest.raises(RunMismatchError) as info:
        predict_to_file(bundle_dir, changed, out, chunk_size=10, progress=False, cluster=client)
    assert "chunk 1" in str(info.value) and "spectra" in str(info.value) and "--fresh" in str(info.value)
    assert not out.exists() and streaming.part_path(tmp_path / "cat.parquet.parts", 1).is_file()


def test_file_sources_with_metadata_on_the_cluster(client, bundle_dir, stars, tmp_path):
    """Workers read their own chunks of a Parquet file and join a photometry table per batch."""
    from dataclasses import replace

    from astropy.table import Table

    from kielnet.io import open_stars, write_table

    write_table(replace(stars, scalars={}), tmp_path / "spectra.parquet")
    phot = Table({"id": stars.ids[:80], **{k: stars.scalars[k][:80] for k in ("g", "bp", "rp", "j", "h", "k")}})
    phot.write(tmp_path / "phot.csv")

    def source():
        return open_stars(tmp_path / "spectra.parquet", metadata=[tmp_path / "phot.csv"])

    bundle = load_bundle(bundle_dir)
    one = predict_to_file(bundle, source(), tmp_path / "one.parquet", chunk_size=10, progress=False)
    many = predict_to_file(bundle_dir, source(), tmp_path / "cluster.parquet", chunk_size=10, progress=False,
                           cluster=client)
    assert one.rows == many.rows == 95
    cat = many.read()
    same_rows(one.read(), cat)
    status = np.asarray(cat["status"]).astype(str)
    assert all("missing_input" in s for s in status[80:]) and "missing_input" in status[5]
    # the same stars from memory: the same rows
    mem = predict_to_file(bundle, stars, tmp_path / "mem.parquet", chunk_size=10, progress=False).read()
    np.testing.assert_array_equal(np.asarray(mem["teff"])[:80], np.asarray(cat["teff"])[:80])
