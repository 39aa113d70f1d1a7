"""Survey-scale streaming measurements used by ``benchmarks/throughput.py``:
``kielnet predict`` on generated XP-shaped Parquet files of 2×10^5 and 10^6 stars
(peak RSS of the process, rows in/out, wall time, end-to-end stars/s), and the same
2×10^5-star job on a 2-worker Dask LocalCluster (stars/s, rows identical or not).

The input is the real 1,000-star XP-library subset tiled with new ids (343-px flux and
flux errors, G/BP/RP/J/H/K), written row group by row group so that generating it
needs little memory. The bundle is an ``xp_hybrid`` ensemble (the preset's
architecture and 3 × 2 ensemble) trained for 2 epochs on the subset: speed and memory
do not depend on how well it is trained.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT.parent / "shared" / "data" / "xp_library" / "apogee_dr17_gaiaxp_sampled_subset1000.npz"
PHOT = ("g", "bp", "rp", "j", "h", "k")


def make_xp_parquet(path: Path, n: int, row_group: int = 50_000) -> Path:
    """Write ``n`` XP-shaped stars (the subset tiled, ids ``S<k>_<id>``) to ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kielnet.io import load_xp_library

    if path.is_file() and pq.ParquetFile(path).metadata.num_rows == n:
        return path
    sub = load_xp_library(SUBSET)
    m = len(sub)
    tmp = path.with_suffix(".tmp.parquet")
    writer = None
    for start in range(0, n, row_group):
        idx = np.arange(start, min(start + row_group, n))
        src = idx % m
        ids = np.char.add(np.char.add("S", (idx // m).astype(str)), np.char.add("_", sub.ids[src]))
        flux = sub.flux[src].astype(np.float32)
        err = sub.flux_err[src].astype(np.float32)
        cols = {"id": pa.array(ids.tolist()),
                "flux": pa.FixedSizeListArray.from_arrays(pa.array(flux.ravel()), flux.shape[1]),
                "flux_err": pa.FixedSizeListArray.from_arrays(pa.array(err.ravel()), err.shape[1])}
        for c in PHOT:
            cols[c] = pa.array(sub.scalars[c][src])
        table = pa.table(cols)
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table, row_group_size=row_group)
    writer.close()
    os.replace(tmp, path)
    return path


def train_bundle(work: Path) -> Path:
    """An xp_hybrid bundle: the preset's architecture and ensemble (3 splits x 2 members),
    2 epochs each (speed does not depend on how well it is trained)."""
    bundle = work / "xp_bundle_3x2"
    if not (bundle / "bundle.json").is_file():
        run = subprocess.run([sys.executable, "-m", "kielnet.cli", "train", "--data", str(SUBSET), "--config",
                              "xp_hybrid", "--out", str(bundle), "--quiet", "--set", "training.max_epochs=2"], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(run.stderr)
    return bundle


def timed_predict(bundle: Path, data: Path, out: Path, *extra: str) -> dict:
    """``kielnet predict`` in a child process: wall seconds, the child's peak RSS and its
    CPU seconds (user + system; over wall × cores: how busy the cores were)."""
    out.unlink(missing_ok=True)
    cmd = ["/usr/bin/time", "-f", "%M %U %S", sys.executable, "-m", "kielnet.cli", "predict", "--bundle", str(bundle),
           "--data", str(data), "--out", str(out), "--quiet", "--fresh", *extra]
    t0 = time.time()
    run = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    peak_kib, user, system = run.stderr.strip().splitlines()[-1].split()
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(int(peak_kib) / 2**20, 3),
            "cpu_s": round(float(user) + float(system), 1), "stdout": run.stdout.strip()}


def _time_line(report: str) -> str:
    line = next((ln for ln in report.splitlines() if ln.strip().startswith("time:")), None)
    if line is None:
        raise RuntimeError(f"no 'time:' line in the predict report:\n{report}")
    return line


def stage_seconds_of(report: str) -> dict[str, float]:
    """Seconds per stage from the ``  time: reading 12.3 s (1.74 cores), networks 45.6 s
    (1.95 cores), ...`` line that ``kielnet predict`` closes with (``PredictionSummary.report``)."""
    import re

    return {name: float(sec) for name, sec in re.findall(r"([a-z]+) ([0-9.]+) s", _time_line(report))}


def stage_cores_of(report: str) -> dict[str, float]:
    """Cores kept busy per stage (CPU over wall seconds) from the same line; stages
    without a figure are left out."""
    import re

    return {name: float(c) for name, c in re.findall(r"([a-z]+) [0-9.]+ s \(([0-9.]+) cores\)", _time_line(report))}


#: the stages a chunk's task spends on a worker (``assembling`` runs on the driver, once)
WORKER_STAGES = ("reading", "networks", "labels", "writing")


def worker_busy_rate(stars: int, stages: dict[str, float]) -> float:
    """Stars per second of one busy worker: ``stars`` over the worker seconds of
    :data:`WORKER_STAGES` summed over every task (``kielnet predict --cluster`` sums its
    ``time:`` line over the workers). The cluster's start, the bundle's loading and the
    row count of the files are left out: they do not grow with the stars per worker."""
    busy = sum(stages[name] for name in WORKER_STAGES)
    if busy <= 0:
        raise ValueError(f"no worker seconds in {stages}")
    return stars / busy


def all_sky_hours(stars: float, workers: int, busy_rate: float, count_s_per_star: float = 0.0) -> float:
    """Hours for ``stars`` on ``workers`` Dask workers, each labelling at ``busy_rate``
    stars/s (:func:`worker_busy_rate`) after counting its share of the input's rows at
    ``count_s_per_star`` worker seconds per star (a directory of bulk files is counted
    once, one task per file, before the chunks start). Scheduler and file-system limits at
    that scale are not in it."""
    if workers < 1 or busy_rate <= 0 or count_s_per_star < 0:
        raise ValueError("workers >= 1, busy_rate > 0 and count_s_per_star >= 0 are required")
    return stars * (1.0 / busy_rate + count_s_per_star) / workers / 3600.0


def paired_ratios(rates: list[float], nets: list[float]) -> dict:
    """End-to-end runs against the networks alone measured around them: ``nets[i]`` just
    before run ``i`` and ``nets[i + 1]`` just after it (``len(nets) == len(rates) + 1``).

    Returns ``median_run`` (the index of the median run by rate; with an even number of
    runs the slower of the two middle ones), ``faster`` / ``slower`` (each run's rate over
    the faster / slower of its two networks measurements) and their medians
    ``median_faster`` / ``median_slower``."""
    import numpy as np

    if not rates or len(nets) != len(rates) + 1:
        raise ValueError(f"need one networks rate before each run and one after the last: "
                         f"{len(rates)} runs, {len(nets)} networks rates")
    faster = [r / max(nets[i], nets[i + 1]) for i, r in enumerate(rates)]
    slower = [r / min(nets[i], nets[i + 1]) for i, r in enumerate(rates)]
    return {"median_run": int(np.argsort(rates, kind="stable")[(len(rates) - 1) // 2]),
            "faster": faster, "slower": slower,
            "median_faster": float(np.median(faster)), "median_slower": float(np.median(slower))}


def rows_of(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def same_rows(a: Path, b: Path) -> bool:
    """Whether two catalogues hold identical rows (NaN equal to NaN), read in batches."""
    import pyarrow.parquet as pq

    fa, fb = pq.ParquetFile(a), pq.ParquetFile(b)
    if fa.metadata.num_rows != fb.metadata.num_rows or fa.schema_arrow.names != fb.schema_arrow.names:
        return False
    for ba, bb in zip(fa.iter_batches(100_000), fb.iter_batches(100_000)):
        for name in ba.schema.names:
            x, y = ba.column(name).to_numpy(zero_copy_only=False), bb.column(name).to_numpy(zero_copy_only=False)
            eq = np.array_equal(x, y, equal_nan=True) if x.dtype.kind == "f" else np.array_equal(x, y)
            if not eq:
                return False
    return True


def measure(work: Path, sizes=(200_000, 1_000_000), dask_workers: int = 2) -> dict:
    """The streaming and Dask sections of throughput.json."""
    work.mkdir(parents=True, exist_ok=True)
    bundle = train_bundle(work)
    out: dict = {}
    for n in sizes:
        data = make_xp_parquet(work / f"xp_{n}.parquet", n)
        cat = work / f"cat_{n}.parquet"
        r = timed_predict(bundle, data, cat)
        key = "stream_1e6" if n == 1_000_000 else "stream_2e5" if n == 200_000 else f"stream_{n}"
        out[key] = {"n_stars": n, "rows_in": n, "rows_out": rows_of(cat), "peak_rss_gib": r["peak_rss_gib"],
                    "wall_s": r["wall_s"], "stars_per_s": round(n / r["wall_s"], 1), "summary": r["stdout"]}
    n = sizes[0]
    data, ref = work / f"xp_{n}.parquet", work / f"cat_{n}.parquet"
    dcat = work / f"cat_{n}_dask.parquet"
    r = timed_predict(bundle, data, dcat, "--cluster", f"local:{dask_workers}")
    out["dask_local"] = {"workers": dask_workers, "n_stars": n, "wall_s": r["wall_s"],
                         "stars_per_s": round(n / r["wall_s"], 1), "identical": same_rows(ref, dcat),
                         "note": "peak_rss of the driver process only"}
    return out


if __name__ == "__main__":  # quick manual check: python benchmarks/_stream.py WORKDIR N
    import json

    print(json.dumps(measure(Path(sys.argv[1]), sizes=(int(sys.argv[2]),)), indent=1))
