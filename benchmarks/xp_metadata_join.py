"""Photometry for the whole sky, joined chunk by chunk: ``python benchmarks/xp_metadata_join.py``
writes ``benchmarks/results/xp_metadata_join.json``. Measure on an idle machine.

Input: the 4 bulk files of ``benchmarks/xp_archive.py`` (4×10^4 real archive rows with new
``source_id``; run that benchmark first, it writes them under ``benchmarks/.work/xp_archive/``)
and a generated photometry table sorted by ``source_id``: the 4×10^4 stars' G/BP/RP/J/H/K
(synthetic magnitudes: speed and memory do not depend on them) among ``--rows`` rows in all,
the other ids spread over a wider range, written in row groups of ``--row-group`` rows. With
more than :data:`kielnet.io.sources.RANGE_JOIN_ROWS` rows the table is joined by id range
(:func:`kielnet.io.sources.metadata_index`): every chunk reads only the row groups of its ids.

The same ``kielnet predict --bundle xp-apogee-dr17 --data 4_files --chunk-size 10000`` runs
three times, each in a child process: without metadata, with the large table (joined by
range), and with a table of the 4×10^4 stars' rows alone (read whole, the in-memory join).
Keys per run: ``wall_s``, ``stars_per_s``, ``peak_rss_gib``, the ``metadata:`` line; and
``range_join_rows_identical_to_in_memory`` (the two joined catalogues hold the same rows),
``rows_with_missing_input`` of each run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, git_commit, git_dirty, provenance, write_result  # noqa: E402
from _stream import same_rows, timed_predict  # noqa: E402

BUNDLE = "xp-apogee-dr17"
WORK = ROOT / "benchmarks" / ".work" / "xp_archive"
PHOT = ("g", "bp", "rp", "j", "h", "k")


def archive_ids(files: Path) -> np.ndarray:
    """The ``source_id`` column of the bulk files, as int64 (that column alone is converted,
    as the reader's row count does)."""
    from kielnet.io.streams.xp_continuous import BLOCK_SIZE, _open_text

    out = []
    for f in sorted(files.glob("*.csv.gz")):
        with _open_text(f, BLOCK_SIZE, ["source_id"]) as reader:
            out += [np.asarray(b.column(0).to_numpy(zero_copy_only=False), dtype=np.int64) for b in reader]
    return np.concatenate(out)


def photometry_tables(ids: np.ndarray, rows: int, row_group: int, work: Path) -> tuple[Path, Path]:
    """(large table sorted by source_id holding ``ids`` among ``rows`` rows, table of ``ids`` alone)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    others = int(ids.min()) - 10 * rows + 20 * np.arange(rows, dtype=np.int64)  # around the stars' ids
    sid = np.sort(np.concatenate([ids, np.setdiff1d(others, ids)[:rows - len(ids)]]))

    def table(s: np.ndarray) -> pa.Table:
        g = 12.0 + (s % 1000) / 200.0
        cols = {"source_id": pa.array(s, pa.int64()), "g": g, "bp": g + 0.6, "rp": g - 0.7,
                "j": g - 1.5, "h": g - 2.0, "k": g - 2.1}
        return pa.table(cols)

    large, small = work / f"phot_{rows}_rg{row_group}.parquet", work / "phot_stars_only.parquet"
    if not large.is_file():
        pq.write_table(table(sid), large, row_group_size=row_group)
    if not small.is_file():
        pq.write_table(table(np.sort(ids)), small)
    return large, small


def missing_input_rows(catalogue: Path) -> int:
    """Rows of a catalogue flagged ``missing_input``."""
    import pyarrow.parquet as pq

    from kielnet.quality.flags import FLAG_BITS

    flag = pq.read_table(catalogue, columns=["flag"]).column(0).to_numpy()
    return int(((flag >> FLAG_BITS["missing_input"]) & 1).sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=6_000_000, help="rows of the large table (default 6e6)")
    ap.add_argument("--row-group", type=int, default=100_000, help="its row-group size (default 1e5)")
    ap.add_argument("--out", default=str(RESULTS / "xp_metadata_join.json"))
    args = ap.parse_args()
    from kielnet.io.sources import RANGE_JOIN_ROWS

    commit, dirty = git_commit(), git_dirty()
    files = WORK / "4_files"
    if not files.is_dir():
        raise SystemExit(f"{files} is missing: run python benchmarks/xp_archive.py first")
    ids = archive_ids(files)
    large, small = photometry_tables(ids, args.rows, args.row_group, WORK)
    chunk = ("--chunk-size", "10000")
    runs = {}
    for name, extra in (("no_metadata", ()), ("range_join", ("--metadata", str(large))),
                        ("in_memory_join", ("--metadata", str(small)))):
        out = WORK / f"cat_join_{name}.parquet"
        r = timed_predict(BUNDLE, files, out, *chunk, *extra)
        runs[name] = {"wall_s": r["wall_s"], "stars_per_s": round(len(ids) / r["wall_s"], 1),
                      "peak_rss_gib": r["peak_rss_gib"], "cpu_s": r["cpu_s"],
                      "metadata_line": next((ln for ln in r["stdout"].splitlines() if ln.startswith("metadata:")),
                                            None),
                      "rows_with_missing_input": missing_input_rows(out)}
        print(name, runs[name])
    res = {"stars": int(len(ids)), "bundle": BUNDLE, "chunk_size": 10_000,
           "large_table": {"rows": args.rows, "row_group": args.row_group, "range_join_rows": RANGE_JOIN_ROWS,
                           "joined_by_range": args.rows > RANGE_JOIN_ROWS},
           "runs": runs,
           "range_join_rows_identical_to_in_memory": same_rows(WORK / "cat_join_range_join.parquet",
                                                               WORK / "cat_join_in_memory_join.parquet"),
           "note": "synthetic magnitudes on the real archive rows: the join's cost and memory, not accuracy",
           **provenance(commit, dirty)}
    write_result(res, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
