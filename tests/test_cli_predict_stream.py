"""``kielnet predict`` at survey scale: streamed output, resume after SIGKILL, refusals,
the FITS row limit, ``--cluster`` and the closing summary (synthetic data only)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import kielnet.inference.streaming as streaming
from kielnet.cli import main
from kielnet.artifact import save_bundle
from kielnet.io import read_catalogue, write_table

from conftest import synthetic_table


@pytest.fixture(scope="module")
def files(synthetic_bundle, tmp_path_factory):
    """A saved bundle, a 3,000-star Parquet input (some stars without g) and a 40-star one."""
    d = tmp_path_factory.mktemp("stream_cli")
    bundle = save_bundle(synthetic_bundle, d / "bundle")
    big = synthetic_table(n=3000, seed=21)
    big.scalars["g"][::500] = np.nan
    write_table(big, d / "big.parquet")
    small = synthetic_table(n=40, seed=22)
    small.scalars["g"][[1, 2, 3]] = np.nan
    write_table(small, d / "small.parquet")
    return {"bundle": bundle, "big": d / "big.parquet", "big_table": big, "small": d / "small.parquet",
            "small_table": small}


def same_file_rows(a: Path, b: Path) -> None:
    x, y = read_catalogue(a), read_catalogue(b)
    assert x.colnames == y.colnames and len(x) == len(y)
    for c in x.colnames:
        u, v = np.asarray(x[c]), np.asarray(y[c])
        if u.dtype.kind == "f":
            np.testing.assert_array_equal(u, v, err_msg=c)
        else:
            assert u.tolist() == v.tolist(), c
    assert dict(x.meta) == dict(y.meta)


def predict(files, out, *extra, data="big"):
    return main(["predict", "--bundle", str(files["bundle"]), "--data", str(files[data]), "--out", str(out),
                 "--chunk-size", "100", "--realisations", "4", "--quiet", *map(str, extra)])


def test_sigkilled_run_resumes_to_exactly_the_uninterrupted_output(files, tmp_path, capsys):
    out = tmp_path / "cat.parquet"
    parts = tmp_path / "cat.parquet.parts"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "kielnet.cli", "predict", "--bundle", str(files["bundle"]),
                             "--data", str(files["big"]), "--out", str(out), "--chunk-size", "100",
                             "--realisations", "4", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < 300:
        if len(list(parts.glob("part_*.parquet"))) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"not killed mid-way (exit {proc.returncode}): {err.decode()[-500:]}"
    assert not out.exists()
    n_done = len(list(parts.glob("part_*.parquet")))
    assert 2 <= n_done < 30
    capsys.readouterr()

    # another input or another bundle: refused, the parts kept
    assert predict(files, out, data="small") == 2
    assert "different run" in capsys.readouterr().err
    other = tmp_path / "bundle2"
    shutil.copytree(files["bundle"], other)
    from kielnet.artifact import load_bundle

    b2 = load_bundle(other)
    key = next(iter(b2.members[0]))
    b2.members[0][key] = b2.members[0][key] * 1.001
    save_bundle(b2, other)
    assert main(["predict", "--bundle", str(other), "--data", str(files["big"]), "--out", str(out),
                 "--chunk-size", "100", "--realisations", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bundle differs" in err and "--fresh" in err
    assert len(list(parts.glob("part_*.parquet"))) == n_done and not out.exists()

    # the same run resumes and gives exactly the uninterrupted output
    assert predict(files, out) == 0
    printed = capsys.readouterr().out
    assert "3000 stars labelled" in printed and f"{n_done} of 30 chunks reused" in printed
    ref = tmp_path / "ref.parquet"
    assert predict(files, ref) == 0
    same_file_rows(out, ref)
    assert not parts.exists()
    assert read_catalogue(out)["id"].tolist() == files["big_table"].ids.tolist()


def test_the_closing_summary_counts_rows_per_status_name(files, tmp_path, capsys):
    out = tmp_path / "cat.csv"
    assert predict(files, out, data="small") == 0
    printed = capsys.readouterr().out
    cat = read_catalogue(out)
    status = np.asarray(cat["status"]).astype(str)
    n_ok = int((status == "ok").sum())
    assert f"40 stars labelled in" in printed and "stars/s" in printed and str(out) in printed
    assert f"status: ok: {n_ok}" in printed
    assert f"missing_input: {sum('missing_input' in s for s in status)}" in printed
    assert sum("missing_input" in s for s in status) == 3


def test_cluster_option_gives_the_same_catalogue(files, tmp_path, capsys):
    pytest.importorskip("distributed")
    ref, out = tmp_path / "ref.ecsv", tmp_path / "cluster.ecsv"
    assert predict(files, ref, data="small") == 0
    assert predict(files, out, "--cluster", "local:1", data="small") == 0
    assert "40 stars labelled" in capsys.readouterr().out
    assert out.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("value", ["local:0", "local", "http://x:1", "tcp://nohost"])
def test_a_bad_cluster_is_refused_before_any_compute(files, tmp_path, capsys, monkeypatch, value):
    monkeypatch.setattr(streaming, "predict", lambda *a, **k: pytest.fail("computed"))
    assert predict(files, tmp_path / "c.parquet", "--cluster", value, data="small") == 2
    assert "--cluster" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["gpu", "cuda:99"])
def test_a_device_this_process_cannot_use_is_refused_before_any_compute(files, tmp_path, capsys, monkeypatch,
                                                                         value):
    monkeypatch.setattr(streaming, "predict", lambda *a, **k: pytest.fail("computed"))
    assert predict(files, tmp_path / "c.parquet", "--device", value, data="small") == 2
    err = capsys.readouterr().err
    assert err.startswith("kielnet predict: error:") and repr(value) in err
    assert list(tmp_path.iterdir()) == []


def test_device_cpu_gives_the_default_run_on_a_machine_without_a_gpu(files, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("the default device is the GPU here")
    assert predict(files, tmp_path / "a.parquet", data="small") == 0
    assert predict(files, tmp_path / "b.parquet", "--device", "cpu", data="small") == 0
    same_file_rows(tmp_path / "a.parquet", tmp_path / "b.parquet")


def test_fits_above_the_row_limit_is_refused_before_any_compute(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(streaming, "IN_MEMORY_ROW_LIMIT", 30)
    monkeypatch.setattr(streaming, "predict", lambda *a, **k: pytest.fail("computed"))
    assert predict(files, tmp_path / "c.fits", data="small") == 2
    err = capsys.readouterr().err
    assert err.startswith("kielnet predict: error:") and "more than the 30 rows" in err and ".parquet" in err
    assert list(tmp_path.iterdir()) == []


def test_help_documents_the_fits_limit_and_cluster(capsys):
    from kielnet.cli import IN_MEMORY_ROW_LIMIT

    assert IN_MEMORY_ROW_LIMIT == streaming.IN_MEMORY_ROW_LIMIT
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"{IN_MEMORY_ROW_LIMIT:,} rows" in out and "--cluster" in out and "local:N" in out
    assert "part by part" in out


def test_metadata_match_counts_are_printed(files, tmp_path, capsys):
    from astropy.table import Table

    t = files["small_table"]
    photometry = Table({"id": t.ids[:25], **{k: t.scalars[k][:25] for k in ("g", "bp", "rp", "j", "h", "k")}})
    photometry.write(tmp_path / "phot.csv")
    spectra = Table({"id": t.ids, "flux": t.flux, "flux_err": t.flux_err})
    spectra.write(tmp_path / "spectra.fits")
    out = tmp_path / "cat.parquet"
    assert main(["predict", "--bundle", str(files["bundle"]), "--data", str(tmp_path / "spectra.fits"),
                 "--metadata", str(tmp_path / "phot.csv"), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"metadata: 25/40 stars found in {tmp_path / 'phot.csv'}\n" in printed
    status = np.asarray(read_catalogue(out)["status"]).astype(str)
    assert all("missing_input" in s for s in status[25:])
    # a table whose g differs from the input's own for 3 stars (and equals it for 2) says so
    rows = np.flatnonzero(np.isfinite(t.scalars["g"][:25]))[:5]
    spectra["g"] = t.scalars["g"]
    spectra.write(tmp_path / "spectra_g.fits")
    other = photometry[rows]
    other["g"][:3] += 1.0
    other.write(tmp_path / "phot_g.csv")
    assert main(["predict", "--bundle", str(files["bundle"]), "--data", str(tmp_path / "spectra_g.fits"),
                 "--metadata", str(tmp_path / "phot_g.csv"), "--out", str(tmp_path / "cat_g.parquet"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert (f"metadata: 5/40 stars found in {tmp_path / 'phot_g.csv'}; its values replaced different ones the "
            "input held: g (3 stars)\n") in printed


def test_a_cluster_run_counts_no_match_by_reading_a_range_joined_table_whole(tmp_path, monkeypatch, capsys):
    """After a --cluster run the joins happened in the workers; a photometry table joined by
    id range (kielnet.io.sources.metadata_index) is not read whole to count them."""
    from types import SimpleNamespace

    import pyarrow as pa
    import pyarrow.parquet as pq

    import kielnet.io.registry as registry
    import kielnet.io.sources as sources
    from kielnet import cli

    phot = tmp_path / "phot.parquet"
    pq.write_table(pa.table({"source_id": pa.array(np.arange(2000, dtype=np.int64) + 10**15),
                             "g": np.full(2000, 15.0)}), phot, row_group_size=250)
    monkeypatch.setattr(sources, "RANGE_JOIN_ROWS", 100)
    monkeypatch.setattr(registry, "read_stars", lambda *a, **k: pytest.fail("the table was read whole"))
    summary = SimpleNamespace(rows=10, output=tmp_path / "labels.parquet")
    cli._print_metadata_matches(summary, [str(phot)], SimpleNamespace(n_joined=0, matched={}))
    assert f"metadata: {phot} joined in the workers by id range" in capsys.readouterr().out
