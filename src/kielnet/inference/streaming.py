"""Chunked, resumable prediction straight to a catalogue file, in bounded memory.

Stars are read from a :class:`~kielnet.data.source.StarSource` ``chunk_size`` at a
time (:meth:`StarSource.batches`; a :class:`StarTable` is wrapped in a
:class:`~kielnet.data.source.TableSource`), labelled, and each finished chunk ``k``
is written atomically to ``<output>.parts/part_NNNNNN.parquet``. Nothing but the
current chunk and a small per-chunk summary is held in memory. If the run is
interrupted, calling again with the same output skips the chunks already written.
When every chunk exists the parts are written, in input order, into the output file
(Parquet part by part with :class:`pyarrow.parquet.ParquetWriter`, CSV and ECSV part
by part as text, FITS in one piece and therefore only up to
:data:`IN_MEMORY_ROW_LIMIT` rows), renamed into place atomically, checked, and the
parts directory is removed.

Parts are only ever reused by the run that wrote them:

* ``<output>.parts/run.json`` records the run's identity — the bundle's fingerprint
  (:meth:`Bundle.fingerprint`), the options that change rows (chunk size, batch size,
  noise realisations, precision) and the source's :meth:`~StarSource.identity`
  (kind, paths, sizes, row count). A rerun that differs in any of them is refused with
  a :class:`~kielnet.errors.RunMismatchError` naming what differs (``fresh=True``,
  ``kielnet predict --fresh``, discards the parts).
* every part stores, in its Parquet metadata (``kielnet_meta`` → ``kielnet_part``),
  the content fingerprint of its input chunk
  (:func:`~kielnet.data.fingerprint.table_fingerprint` of the ids, spectra, the
  scalar inputs the bundle reads and the pass-through columns) and a digest of the
  run identity. On resume every chunk is re-read from the source and its
  fingerprint compared with the part's before the part is reused; a mismatch names
  the chunk, its input rows and what differs.

At the end: rows out = rows in, each part's ids are its chunk's ids in input order
(ids may repeat in an input), every row has a status. The same chunk computation
(:func:`run_chunk`, per-chunk random generator ``default_rng([seed, k])``) runs in a
Dask worker for ``cluster=`` runs (:mod:`kielnet.inference.distributed`), so a run
started on a cluster resumes on one machine and vice versa.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import itertools
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from astropy.table import Table, vstack

from kielnet import __version__
from kielnet.compute import PRECISIONS, resolve_device
from kielnet.data.fingerprint import array_digest, describe_differences, dict_differences, table_fingerprint
from kielnet.data.source import StarSource, TableSource
from kielnet.data.startable import StarTable
from kielnet.errors import InputError, KielnetError, RunMismatchError, UsageError
from kielnet.artifact import Bundle
from kielnet.inference.inputs import duplicate_id_mask, fill_absent_inputs, warn_duplicates
from kielnet.inference.predict import add_duplicate_column, catalogue_meta, predict
from kielnet.io.atomic import atomic_path, atomic_write_text
from kielnet.io.outputs import check_output_file
from kielnet.io.tables import atomic_write_table, read_catalogue
from kielnet.io.writers import get_writer

__all__ = ["predict_to_file", "prediction_run_identity", "PredictionSummary", "PARTS_FORMAT",
           "IN_MEMORY_ROW_LIMIT", "IN_MEMORY_FORMATS", "as_source", "chunk_fingerprint", "run_chunk",
           "part_path", "concat_parquet", "stream_table2"]

#: layout version of a parts directory (run.json + part_NNNNNN.parquet with chunk fingerprints)
PARTS_FORMAT = 2

#: output formats that are written in one piece (all rows in memory at the end)
IN_MEMORY_FORMATS = ("fits",)

#: most rows written to an in-memory format (FITS); larger runs are refused before any
#: compute when the source knows its row count, else at the first chunk beyond it
IN_MEMORY_ROW_LIMIT = 2_000_000

_PART_KEY = "kielnet_part"


# ----------------------------------------------------------------------------- summary
#: the stages of :attr:`PredictionSummary.stage_seconds`, in the order a chunk passes them
STAGES = ("reading", "networks", "labels", "writing", "assembling")


@dataclass
class PredictionSummary:
    """What :func:`predict_to_file` did (the catalogue itself is in ``output``).

    ``flag_counts`` counts the rows carrying each status name (``ok`` and every flag
    name, e.g. ``implausible_spectrum``; a row with two flags counts for both).
    """

    output: Path
    rows: int
    flag_counts: dict[str, int]
    seconds: float
    chunks: int
    reused_chunks: int = 0
    computed_rows: int = 0
    #: wall seconds per stage, summed over the chunks (over the workers with a cluster):
    #: ``reading`` (the input's rows into a star table: parsing, XP calibration),
    #: ``networks`` (the members' forward passes), ``labels`` (preprocessing, σ, quality
    #: scores, flags, the catalogue), ``writing`` (each chunk's part) and ``assembling``
    #: (the parts into the output); a chunk reused from an interrupted run counts its reading only
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: the process's CPU seconds (every thread's; each worker's with a cluster) in the same
    #: stages: over ``stage_seconds`` it is how many cores a stage kept busy
    stage_cpu_seconds: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.rows

    @property
    def n_ok(self) -> int:
        return int(self.flag_counts.get("ok", 0))

    @property
    def stars_per_second(self) -> float:
        return self.rows / max(self.seconds, 1e-9)

    def read(self) -> Table:
        """The catalogue, read back from ``output`` (all rows in memory)."""
        return read_catalogue(self.output)

    def report(self) -> str:
        """Closing lines for a user: rows, wall time, stars/s, rows per status name."""
        lines = [f"{self.rows} stars labelled in {self.seconds:.1f} s ({self.stars_per_second:.0f} stars/s); "
                 f"{self.n_ok} with status ok; catalogue: {self.output}"]
        if self.reused_chunks:
            lines.append(f"  {self.reused_chunks} of {self.chunks} chunks reused from an interrupted run; "
                         f"{self.computed_rows} stars computed now")
        flags = sorted(((n, c) for n, c in self.flag_counts.items() if n != "ok"), key=lambda x: (-x[1], x[0]))
        lines.append("  status: " + ", ".join([f"ok: {self.n_ok}"] + [f"{n}: {c}" for n, c in flags]))
        if self.stage_seconds:
            cores = self.stage_cores()
            lines.append("  time: " + ", ".join(
                f"{n} {self.stage_seconds[n]:.1f} s" + (f" ({cores[n]:.2f} cores)" if n in cores else "")
                for n in STAGES if n in self.stage_seconds))
        return "\n".join(lines)

    def stage_cores(self) -> dict[str, float]:
        """Cores kept busy per stage: CPU seconds over wall seconds (stages with both)."""
        return {n: self.stage_cpu_seconds[n] / self.stage_seconds[n] for n in STAGES
                if n in self.stage_cpu_seconds and self.stage_seconds.get(n, 0.0) > 0}


# ----------------------------------------------------------------------------- identity
def as_source(data: StarSource | StarTable) -> StarSource:
    """A :class:`StarSource` for ``data`` (a :class:`StarTable` is wrapped)."""
    if isinstance(data, StarTable):
        return TableSource(data)
    if not isinstance(data, StarSource):
        raise UsageError(f"expected a StarTable or a StarSource, got {type(data).__name__}")
    return data


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (for comparisons with run.json)."""
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


def prediction_run_identity(bundle: Bundle, source: StarSource | StarTable, *, chunk_size: int, batch_size: int,
                            n_realisations: int, precision: str | None = None) -> dict:
    """What the parts of a chunked prediction depend on (JSON-able): the bundle's
    fingerprint, the options (``precision=None``: predict's default, by name) and the
    source's identity (the content of each chunk is checked per part, see
    :func:`chunk_fingerprint`)."""
    return {"format": PARTS_FORMAT,
            "source": _jsonable(as_source(source).identity()),
            "bundle": bundle.fingerprint(),
            "options": {"chunk_size": int(chunk_size), "batch_size": int(batch_size),
                        "n_realisations": int(n_realisations), "precision": _effective_precision(precision)}}


def run_digest(identity: dict) -> str:
    """SHA-256 of a run identity (stored in every part; file modification times left out)."""
    return hashlib.sha256(json.dumps(_stable(_jsonable(identity)), sort_keys=True).encode()).hexdigest()


def chunk_fingerprint(bundle: Bundle, chunk: StarTable) -> dict:
    """Content fingerprint of an input chunk: ids, spectra, the scalar inputs the bundle
    reads and the pass-through columns (what the chunk's catalogue rows depend on)."""
    return table_fingerprint(chunk, scalars=bundle.config.scalar_columns(), labels=(), extra=True)


#: keys of a source identity that do not make another run: modification times (a touched
#: file with the same content is the same input; the content of every reused chunk is
#: checked anyway) and the spelling of the input (``spec``; the resolved paths count)
_VOLATILE = ("mtime", "mtimes", "spec")


def _stable(identity: Any) -> Any:
    if isinstance(identity, dict):
        return {k: _stable(v) for k, v in identity.items() if k not in _VOLATILE}
    if isinstance(identity, list):
        return [_stable(v) for v in identity]
    return identity


def _source_differences(old: Any, new: dict) -> list[str]:
    old, new = _stable(old if isinstance(old, dict) else {}), _stable(new)
    if old.get("n_rows") != new.get("n_rows"):
        return [f"input stars: number of stars: {old.get('n_rows')} before, {new.get('n_rows')} now"]
    return [f"input source {d}: {_dig(old, d)} before, {_dig(new, d)} now" for d in dict_differences(old, new)]


def _dig(d: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        d = d.get(key) if isinstance(d, dict) else None
    return d


def _claim_parts(parts: Path, identity: dict, fresh: bool) -> None:
    """Create the parts directory, or check that it belongs to this run."""
    if fresh and parts.exists():
        shutil.rmtree(parts)
    stamp = parts / "run.json"
    if parts.is_dir() and any(parts.iterdir()):
        if not stamp.is_file():
            raise RunMismatchError("the parts directory of an earlier run has no run.json (written by an older "
                                   "kielnet, or not by kielnet); rerun with --fresh to discard it",
                                   source=str(parts))
        try:
            old = json.loads(stamp.read_text())
        except (OSError, ValueError) as exc:
            raise RunMismatchError(f"run.json is unreadable ({exc}); rerun with --fresh", source=str(parts)) from exc
        if not isinstance(old, dict) or old.get("format") != PARTS_FORMAT:
            raise RunMismatchError("the parts directory has an unknown layout (written by another kielnet "
                                   "version); rerun with --fresh", source=str(parts))
        diffs = _source_differences(old.get("source"), identity["source"])
        if old.get("bundle") != identity["bundle"]:
            diffs.append("the bundle differs (other weights, configuration or calibration)")
        diffs += [f"option {d}: {old.get('options', {}).get(d)} before, {identity['options'].get(d)} now"
                  for d in dict_differences(old.get("options", {}), identity["options"])]
        if diffs:
            raise RunMismatchError("the parts directory holds an interrupted prediction of a different run ("
                                   + "; ".join(diffs) + "); rerun with --fresh to discard its parts, or choose "
                                   "another output", source=str(parts))
        return
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, json.dumps(dict(identity, kielnet=__version__), indent=1))


def part_path(parts: Path, k: int) -> Path:
    """File of chunk ``k``."""
    return Path(parts) / f"part_{k:06d}.parquet"


# ----------------------------------------------------------------------------- one chunk
def _status_counts(status: Iterable[str]) -> dict[str, int]:
    """Rows per status name (``ok`` or each flag of a comma-separated status)."""
    values, counts = np.unique(np.asarray(status, dtype=str), return_counts=True)
    out: dict[str, int] = {}
    for v, c in zip(values.tolist(), counts.tolist()):
        for name in v.split(","):
            if name:
                out[name] = out.get(name, 0) + int(c)
    return out


def _check_statuses(status: np.ndarray, where: str) -> None:
    empty = np.char.str_len(np.asarray(status, dtype=str)) == 0 if len(status) else np.zeros(0, bool)
    if empty.any():
        raise KielnetError(f"{where}: {int(empty.sum())} row(s) without a status (first: row "
                           f"{int(np.flatnonzero(empty)[0])}); this is a kielnet bug")


def _rows_text(start: int, n: int) -> str:
    return f"input rows {start}-{start + n - 1}" if n else f"input row {start}"


def _reuse_part(part: Path, chunk: StarTable, k: int, start: int, fp: dict, digest: str) -> dict:
    """A finished part, checked against the chunk just re-read from the source: same run,
    same input content, the chunk's ids in order. Returns its status counts."""
    import pyarrow.parquet as pq

    rows = _rows_text(start, len(chunk))
    try:
        pt = pq.read_table(part, columns=["id", "status"])
        md = pt.schema.metadata or {}
        info = json.loads(md.get(b"kielnet_meta", b"{}")).get(_PART_KEY)
    except Exception as exc:  # noqa: BLE001 - a damaged part is reported, never half-used
        raise RunMismatchError(f"the finished part of chunk {k} ({rows}) is unreadable ({type(exc).__name__}: "
                               f"{exc}); rerun with --fresh", source=str(part)) from exc
    if isinstance(info, dict):
        if info.get("run") != digest:
            raise RunMismatchError(f"the finished part of chunk {k} ({rows}) was written by a different run "
                                   "(copied in from elsewhere?); rerun with --fresh", source=str(part))
        diffs = describe_differences(info.get("input") or {}, fp)
        if diffs:
            raise RunMismatchError(f"the input stars of chunk {k} ({rows}) are not those its finished part was "
                                   f"computed from ({'; '.join(diffs)}): the parts directory holds an interrupted "
                                   "prediction of a different run; rerun with --fresh to discard its parts",
                                   source=str(part))
    got = np.asarray(pt.column("id").to_numpy(zero_copy_only=False)).astype(str)
    if len(got) != len(chunk) or not np.array_equal(got, np.asarray(chunk.ids).astype(str)):
        raise RunMismatchError(f"a finished part holds {len(got)} rows that are not the {len(chunk)} stars of its "
                               f"chunk {k} ({rows}); rerun with --fresh", source=str(part))
    if not isinstance(info, dict):
        raise RunMismatchError(f"the finished part of chunk {k} ({rows}) holds no input fingerprint (written by an "
                               "older kielnet); rerun with --fresh", source=str(part))
    status = np.asarray(pt.column("status").to_numpy(zero_copy_only=False)).astype(str)
    _check_statuses(status, str(part))
    return _status_counts(status)


def _write_part(cat: Table, part: Path) -> None:
    """Write a part atomically, only into a parts directory that still belongs to a run
    (a straggling worker of an abandoned run must not recreate a removed directory)."""
    if not (part.parent / "run.json").is_file():
        raise RunMismatchError("the parts directory was removed or replaced while this chunk was computed "
                               "(the run was abandoned or restarted with --fresh)", source=str(part.parent))
    atomic_write_table(cat, part)


def run_chunk(bundle: Bundle, nets, chunk: StarTable, k: int, *, chunk_size: int, parts: Path, digest: str,
              batch_size: int, n_realisations: int, precision: str | None = None,
              row_limit: int | None = None, reading: float | None = None, reading_cpu: float | None = None,
              device: str | None = None) -> dict:
    """Label chunk ``k`` (input rows ``[k*chunk_size, k*chunk_size + len(chunk))``) into
    its part, or check and reuse the part a run already wrote. The same in a single
    process and in a Dask worker. Returns a small JSON-able summary: ``k``, ``start``,
    ``n_rows``, ``ids`` (digest, for the final check), ``counts`` (rows per status
    name), ``reused``, ``seconds`` (wall seconds per stage of :data:`STAGES`: the
    caller's ``reading`` of the chunk when given, and for a computed chunk its
    ``networks``, ``labels`` and ``writing``; with ``_cpu`` appended, the process's CPU
    seconds in each, ``reading_cpu`` as the caller gives it)."""
    start = k * chunk_size
    part = part_path(parts, k)
    if row_limit is not None and start + len(chunk) > row_limit:
        raise UsageError(f"{row_limit} rows at most can be written to this output format (a FITS catalogue "
                         f"is assembled in memory); the input has more (chunk {k} ends at row "
                         f"{start + len(chunk)}). Write .parquet or .csv instead: the {k} finished chunk(s) are "
                         f"kept in {parts}; rename that directory to <new output>.parts to reuse them")
    fp = chunk_fingerprint(bundle, chunk)
    summary = {"k": int(k), "start": int(start), "n_rows": int(len(chunk)), "ids": fp["ids"]}
    seconds: dict[str, float] = {} if reading is None else {"reading": float(reading)}
    if reading_cpu is not None:
        seconds["reading_cpu"] = float(reading_cpu)
    if part.is_file():
        summary.update(counts=_reuse_part(part, chunk, k, start, fp, digest), reused=True, seconds=seconds)
        return summary
    cfg = bundle.config
    chunk = fill_absent_inputs(bundle, chunk)
    chunk.require(scalars=cfg.scalar_columns(), n_pix=bundle.preprocessor.n_pix if cfg.spectrum else None)
    rng = np.random.default_rng([cfg.inference.seed, k])  # per chunk: resumable anywhere
    kw = {} if precision is None else {"precision": precision}  # None: predict has no such option
    cat = predict(bundle, chunk, batch_size=batch_size, nets=nets, n_realisations=n_realisations, rng=rng,
                  mark_duplicates=False, timings=seconds, device=device, **kw)
    add_duplicate_column(cat, duplicate_id_mask(chunk.ids))  # within the chunk; over the input at assembly
    status = np.asarray(cat["status"]).astype(str)
    _check_statuses(status, f"chunk {k}")
    cat.meta[_PART_KEY] = {"chunk": int(k), "start": int(start), "n_rows": int(len(chunk)), "run": digest,
                           "input": fp}
    t0, c0 = time.perf_counter(), time.process_time()
    _write_part(cat, part)
    seconds["writing"], seconds["writing_cpu"] = time.perf_counter() - t0, time.process_time() - c0
    summary.update(counts=_status_counts(status), reused=False, seconds=seconds)
    return summary


# ----------------------------------------------------------------------------- driver
#: the precision :func:`predict` runs at when none is named (bound at import)
_DEFAULT_PRECISION: str = inspect.signature(predict).parameters["precision"].default


def _effective_precision(precision: str | None) -> str:
    """The precision a run uses (``None`` = :func:`predict`'s default, recorded as its
    value so that naming the default explicitly is the same run), checked before any
    compute."""
    if precision is None:
        return _DEFAULT_PRECISION
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def predict_to_file(bundle: Bundle | str | os.PathLike, source: StarSource | StarTable, output: str | Path, *,
                    chunk_size: int = 20000, batch_size: int = 256, progress: bool = True,
                    n_realisations: int | None = None, fresh: bool = False, cluster: Any = None,
                    precision: str | None = None, bundle_path: str | os.PathLike | None = None,
                    inputs: Iterable[str | os.PathLike | None] = (), device: str | None = None) -> PredictionSummary:
    """Label the stars of ``source`` in resumable chunks and write the catalogue to ``output``.

    Parameters
    ----------
    bundle
        A :class:`Bundle`, or the path of a bundle directory (loaded here; Dask
        workers then load it from that path).
    source
        A :class:`~kielnet.data.source.StarSource` (e.g. ``kielnet.io.open_stars``) or a
        :class:`StarTable` (wrapped in a :class:`~kielnet.data.source.TableSource`).
        For ``cluster`` runs it must be picklable and readable from the workers.
    output
        Catalogue file; the format follows the suffix (``.parquet``, ``.csv``,
        ``.ecsv`` written part by part; ``.fits`` in one piece, at most
        :data:`IN_MEMORY_ROW_LIMIT` rows). Checked before any compute
        (:func:`kielnet.io.outputs.check_output_file`, never one of ``inputs``).
    chunk_size
        Stars per resumable part (> 0); memory is bounded by it.
    batch_size
        Stars per forward pass (> 0).
    n_realisations
        Noise realisations (default: the bundle's setting).
    fresh
        Discard the parts of an earlier, interrupted run instead of resuming.
    cluster
        ``None`` (this process), ``"local:N"`` (a Dask LocalCluster of N single-threaded
        worker processes, closed at the end), ``"tcp://HOST:PORT"`` (a running Dask
        scheduler; workers must see ``output``'s directory, the bundle and the source)
        or a :class:`distributed.Client`. One task per chunk; identical rows and parts.
    precision
        Forwarded to :func:`~kielnet.inference.predict.predict` (``None``: its default);
        part of the run identity.
    bundle_path
        Where ``bundle`` was loaded from (lets Dask workers load it themselves).
    device
        Where the networks run (:func:`~kielnet.inference.predict.predict`; ``None``: CUDA
        when the process, or each Dask worker, sees a GPU). Not part of the run identity:
        a GPU's rows differ from the CPU's by float rounding only.

    Returns
    -------
    PredictionSummary
        Rows, rows per status name, seconds, output path (:meth:`PredictionSummary.read`
        reads the catalogue back).
    """
    t0 = time.perf_counter()
    for name, val in (("chunk_size", chunk_size), ("batch_size", batch_size)):
        if int(val) < 1:
            raise UsageError(f"{name} must be a positive number of stars, got {val}")
    chunk_size, batch_size = int(chunk_size), int(batch_size)
    if isinstance(bundle, (str, os.PathLike)):
        from kielnet.artifact import load_bundle

        bundle_path, bundle = bundle, load_bundle(bundle)
    n_real = bundle.config.inference.n_realisations if n_realisations is None else int(n_realisations)
    if n_real < 0:
        raise UsageError(f"n_realisations must be >= 0, got {n_real}")
    precision = _effective_precision(precision)
    if device is not None:  # refuse a device this process cannot use before any work (workers: their own)
        device = str(resolve_device(device))
    source = as_source(source)
    output = check_output_file(output, inputs=inputs)
    fmt = get_writer(output).name
    if cluster is not None:
        from kielnet.cluster import check_cluster

        check_cluster(cluster)
    row_limit = IN_MEMORY_ROW_LIMIT if fmt in IN_MEMORY_FORMATS else None
    n_rows = source.n_rows
    if row_limit is not None and n_rows is not None and n_rows > row_limit:
        raise UsageError(f"{output}: {n_rows} stars are more than the {row_limit} rows a {fmt.upper()} catalogue "
                         "can hold here (it is assembled in memory); write .parquet or .csv instead")
    if n_rows == 0:
        raise InputError("the input holds no stars", source=source.spec)
    if isinstance(source, TableSource):  # in memory: check the columns before anything else
        cfg = bundle.config
        checked = fill_absent_inputs(bundle, source.table)
        checked.require(scalars=cfg.scalar_columns(), n_pix=bundle.preprocessor.n_pix if cfg.spectrum else None)
    parts = output.with_name(output.name + ".parts")
    identity = prediction_run_identity(bundle, source, chunk_size=chunk_size, batch_size=batch_size,
                                       n_realisations=n_real, precision=precision)
    _claim_parts(parts, identity, fresh)
    opts = dict(chunk_size=chunk_size, parts=parts, digest=run_digest(identity), batch_size=batch_size,
                n_realisations=n_real, precision=precision, row_limit=row_limit, device=device)
    bar = None
    try:
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_rows, desc="predict", unit="star", unit_scale=True, smoothing=0.1)
        if cluster is None:
            summaries = _predict_local(bundle, source, opts, bar)
        else:
            from kielnet.inference.distributed import predict_chunks

            summaries = predict_chunks(cluster, bundle, bundle_path, source, opts, n_rows=n_rows,
                                       run_chunk=run_chunk, bar=bar)
        if bar is not None:
            bar.close()
            bar = None
        t_assemble, c_assemble = time.perf_counter(), time.process_time()
        rows, counts = _assemble(bundle, parts, output, fmt, summaries)
        t_assemble, c_assemble = time.perf_counter() - t_assemble, time.process_time() - c_assemble
    except BaseException:
        if bar is not None:
            bar.close()
        if parts.is_dir() and not any(parts.glob("part_*.parquet")):  # nothing to resume: leave nothing behind
            shutil.rmtree(parts, ignore_errors=True)
        raise
    shutil.rmtree(parts, ignore_errors=True)
    stages, cpu = stage_seconds(summaries), stage_seconds(summaries, cpu=True)
    if stages:
        stages["assembling"], cpu["assembling"] = t_assemble, c_assemble
    return PredictionSummary(output=output, rows=rows, flag_counts=counts, seconds=time.perf_counter() - t0,
                             chunks=len(summaries), reused_chunks=sum(bool(s["reused"]) for s in summaries),
                             computed_rows=sum(s["n_rows"] for s in summaries if not s["reused"]),
                             stage_seconds=stages, stage_cpu_seconds=cpu)


def _predict_local(bundle: Bundle, source: StarSource, opts: dict, bar) -> list[dict]:
    """The chunk loop in this process: one chunk in memory at a time."""
    nets = bundle.build_members()
    summaries = []
    batches = iter(source.batches(opts["chunk_size"]))
    for k in itertools.count():
        t0, c0 = time.perf_counter(), time.process_time()
        chunk = next(batches, None)
        reading, reading_cpu = time.perf_counter() - t0, time.process_time() - c0
        if chunk is None or len(chunk) == 0:
            break
        n = len(chunk)
        summaries.append(run_chunk(bundle, nets, chunk, k, reading=reading, reading_cpu=reading_cpu, **opts))
        del chunk  # not held while the next chunk is read
        if bar is not None:
            bar.update(n)
    if not summaries:
        raise InputError("the input holds no stars", source=source.spec)
    return summaries


def stage_seconds(summaries: list[dict], *, cpu: bool = False) -> dict[str, float]:
    """Wall seconds per stage (:data:`STAGES`) summed over the chunk summaries; with
    ``cpu``, the process's CPU seconds in them."""
    total: dict[str, float] = {}
    for s in summaries:
        for name, value in s.get("seconds", {}).items():
            total[name] = total.get(name, 0.0) + value
    suffix = "_cpu" if cpu else ""
    return {name: total[name + suffix] for name in STAGES if name + suffix in total}


# ----------------------------------------------------------------------------- final output
def _check_summaries(parts: Path, summaries: list[dict]) -> list[Path]:
    """Every chunk 0..n-1 once, consecutive rows, no stray part beyond the input's chunks."""
    files = []
    start = 0
    for k, s in enumerate(summaries):
        if s["k"] != k or s["start"] != start:
            raise KielnetError(f"chunk summaries out of order at chunk {k}; this is a kielnet bug")
        start += s["n_rows"]
        files.append(part_path(parts, k))
    known = {f.name for f in files}
    stray = sorted(p.name for p in parts.glob("part_*.parquet") if p.name not in known)
    if stray:
        raise RunMismatchError(f"the parts directory holds parts beyond the input's {len(files)} chunks "
                               f"({', '.join(stray[:3])}{', ...' if len(stray) > 3 else ''}): an earlier run read "
                               "more stars; rerun with --fresh", source=str(parts))
    return files


def _verify_part(ids: np.ndarray, status: np.ndarray, s: dict, part: Path) -> None:
    """The part's ids are its chunk's ids in order (by digest), every row has a status."""
    ids = np.asarray(ids).astype(str)
    if len(ids) != s["n_rows"] or array_digest(ids) != s["ids"]:
        raise RunMismatchError(f"part {part.name} holds {len(ids)} rows that are not the {s['n_rows']} stars of "
                               f"its chunk (input rows from {s['start']}) in input order; rerun with --fresh",
                               source=str(part))
    _check_statuses(np.asarray(status).astype(str), str(part))


def _assemble(bundle: Bundle, parts: Path, output: Path, fmt: str, summaries: list[dict]) -> tuple[int, dict]:
    """Write the parts, in input order, into ``output`` (atomically) and check it.
    Returns (rows, rows per status name)."""
    files = _check_summaries(parts, summaries)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise RunMismatchError(f"parts {', '.join(missing[:3])} vanished before the output was written (another "
                               "run uses this parts directory?); rerun", source=str(parts))
    meta = catalogue_meta(bundle)
    dups, n_dup = _duplicate_ids(files)
    if fmt == "parquet":
        rows = _write_parquet_parts(files, summaries, output, meta, dups)
    elif fmt in ("ascii.csv", "ascii.ecsv"):
        rows = _write_text_parts(files, summaries, output, fmt, meta, dups)
    else:
        rows = _write_in_memory(files, summaries, output, meta, dups)
    if len(dups):
        warn_duplicates(n_dup, len(dups), str(output))
    n_in = sum(s["n_rows"] for s in summaries)
    if rows != n_in:
        raise KielnetError(f"{output}: {rows} rows written for {n_in} input stars; this is a kielnet bug")
    counts: dict[str, int] = {}
    for s in summaries:
        for name, c in s["counts"].items():
            counts[name] = counts.get(name, 0) + c
    return rows, counts


def _duplicate_ids(files: list[Path]):
    """``(ids that occur more than once over all parts as a pyarrow array, rows holding
    them)``, reading only the parts' ``id`` columns."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ids = pa.chunked_array([pq.read_table(f, columns=["id"]).column(0).cast(pa.string()) for f in files],
                           type=pa.string())
    counts = pc.value_counts(ids)
    repeated = pc.greater(counts.field("counts"), 1)
    return (counts.field("values").filter(repeated),
            int(pc.sum(counts.field("counts").filter(repeated)).as_py() or 0))


def _mark_duplicates(tab, dups):
    """Set a part's ``duplicate_id`` column from the ids duplicated over the whole input
    (an astropy Table in place, or a pyarrow Table returned)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(tab, pa.Table):
        if "duplicate_id" not in tab.column_names:
            return tab
        col = pc.is_in(tab.column("id").cast(pa.string()), value_set=dups)
        return tab.set_column(tab.column_names.index("duplicate_id"), "duplicate_id", col)
    if "duplicate_id" in tab.colnames:
        tab["duplicate_id"][:] = np.isin(np.asarray(tab["id"]).astype(str), dups.to_numpy(zero_copy_only=False))
    return tab


def concat_parquet(files: list[Path], output: Path, meta: dict | None = None, check=None) -> int:
    """Write Parquet ``files`` (same columns) one after the other into ``output``
    atomically, one file in memory at a time, with :class:`pyarrow.parquet.ParquetWriter`.

    Column types are unified (e.g. an integer column that is float in another file);
    the column metadata (units, descriptions: ``kielnet_columns``) is the first file's
    and the table metadata ``meta`` (default: the first file's), as
    :func:`kielnet.io.tables._write_parquet` writes them. ``check(table, i)`` is called
    on each file's table before it is written; a table it returns is written instead.
    Returns the number of rows written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = [pq.read_schema(f) for f in files]
    names = schemas[0].names
    for f, sch in zip(files, schemas):
        if sch.names != names:
            raise KielnetError(f"{f.name} has other columns than {files[0].name}: {sch.names} vs {names}")
    plain = [sch.remove_metadata() for sch in schemas]
    try:
        try:
            unified = pa.unify_schemas(plain, promote_options="permissive")
        except TypeError:  # pyarrow < 14
            unified = pa.unify_schemas(plain)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise KielnetError(f"the column types of {files[0].parent} cannot be combined into one Parquet schema "
                           f"({exc})") from exc
    first = schemas[0].metadata or {}
    md = {b"kielnet_columns": first.get(b"kielnet_columns", b"{}"),
          b"kielnet_meta": (first.get(b"kielnet_meta", b"{}") if meta is None
                            else json.dumps(dict(meta), default=str).encode())}
    md.update(_astropy_metadata(pa.schema([unified.field(n) for n in names]).with_metadata(md), schemas, files))
    schema = pa.schema([unified.field(n) for n in names]).with_metadata(md)
    rows = 0
    with atomic_path(output) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for i, f in enumerate(files):
                t = pq.read_table(f)
                if check is not None:
                    t = check(t, i) or t
                try:
                    t = t.cast(schema)
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                    raise KielnetError(f"{f.name} does not fit the column types of {files[0].name} ({exc})") from exc
                writer.write_table(t)
                rows += t.num_rows
        if pq.read_metadata(tmp).num_rows != rows:
            raise KielnetError(f"{output}: the Parquet file does not hold the {rows} rows written")
    return rows


def _astropy_metadata(schema, schemas: list, files: list[Path]) -> dict:
    """astropy's Parquet header (:func:`kielnet.io.tables.astropy_parquet_metadata`) for the
    concatenation of ``files``: column types, units and descriptions from ``schema``, the
    length of each text column the longest over the files (their ``table::len::`` entries,
    else measured by reading that column)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from kielnet.io.tables import arrow_to_table, astropy_parquet_metadata

    empty = arrow_to_table(schema.empty_table(), source=str(files[0]))
    lengths: dict[str, int] = {}
    for name in empty.colnames:
        if empty[name].dtype.kind not in "US":
            continue
        key = f"table::len::{name}".encode()
        n = 0
        for f, sch in zip(files, schemas):
            got = (sch.metadata or {}).get(key)
            if got is None:
                col = pq.read_table(f, columns=[name]).column(0)
                got = pc.max(pc.utf8_length(col)).as_py() if len(col) else 0
            n = max(n, int(got or 0))
        lengths[name] = n
    return astropy_parquet_metadata(empty, lengths)


def _write_parquet_parts(files: list[Path], summaries: list[dict], output: Path, meta: dict, dups) -> int:
    """Parquet, part by part (one part in memory), each part checked on the way."""
    def check(t, i):
        _verify_part(t.column("id").to_numpy(zero_copy_only=False),
                     t.column("status").to_numpy(zero_copy_only=False), summaries[i], files[i])
        return _mark_duplicates(t, dups)

    return concat_parquet(files, output, meta, check)


def stream_table2(catalogue: str | Path, path: str | Path) -> int:
    """The Gaia-RVS Table 2 catalogue (:mod:`kielnet.inference.rvs_catalogue`) of a
    Parquet catalogue of any size, written as Parquet row group by row group."""
    import pyarrow.parquet as pq

    from kielnet.inference.rvs_catalogue import to_rvs_catalogue, write_rvs_catalogue

    catalogue, path = Path(catalogue), Path(path)
    work = path.with_name(f".{path.name}.work{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    try:
        pf = pq.ParquetFile(catalogue)
        files = []
        for i in range(pf.num_row_groups):
            group = work / f"cat_{i:06d}.parquet"
            pq.write_table(pf.read_row_group(i).replace_schema_metadata(pf.schema_arrow.metadata), group)
            cat = read_catalogue(group)
            group.unlink()
            sid = cat["source_id"] if "source_id" in cat.colnames else cat["id"]
            files.append(write_rvs_catalogue(to_rvs_catalogue(cat, source_id=sid), work / f"t2_{i:06d}.parquet"))
        return concat_parquet(files, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _text(tab: Table, fmt: str) -> str:
    buf = io.StringIO()
    tab.write(buf, format=fmt)
    return buf.getvalue()


def _write_text_parts(files: list[Path], summaries: list[dict], output: Path, fmt: str, meta: dict, dups) -> int:
    """CSV / ECSV, part by part (one part in memory): the first part written with the
    catalogue's header, the others without, as astropy writes a whole table."""
    rows = 0
    header = None
    with atomic_path(output) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            for k, (f, s) in enumerate(zip(files, summaries)):
                tab = read_catalogue(f)
                _verify_part(tab["id"], tab["status"], s, f)
                _mark_duplicates(tab, dups)
                tab.meta.clear()
                plain_header = _text(tab[:0], fmt)
                if k == 0:
                    header = plain_header
                    tab.meta.update(meta)
                    fh.write(_text(tab, fmt))
                else:
                    if plain_header != header:
                        raise KielnetError(f"part {f.name} has other columns or column types than the first part, "
                                           f"and {fmt.split('.')[-1].upper()} has one header: write .parquet instead "
                                           f"(rename {f.parent} to <new output>.parquet.parts to keep the parts)")
                    text = _text(tab, fmt)
                    if not text.startswith(plain_header):
                        raise KielnetError(f"cannot write part {f.name} without its header; this is a kielnet bug")
                    fh.write(text[len(plain_header):])
                rows += len(tab)
    return rows


def _write_in_memory(files: list[Path], summaries: list[dict], output: Path, meta: dict, dups) -> int:
    """FITS: every part read, stacked and written in one piece (bounded by the row limit)."""
    n = sum(s["n_rows"] for s in summaries)
    if n > IN_MEMORY_ROW_LIMIT:
        raise UsageError(f"{output}: {n} rows are more than the {IN_MEMORY_ROW_LIMIT} a FITS catalogue can hold "
                         "here; write .parquet or .csv instead")
    cats = []
    for f, s in zip(files, summaries):
        cat = read_catalogue(f)
        _verify_part(cat["id"], cat["status"], s, f)
        cats.append(_mark_duplicates(cat, dups))
    full = vstack(cats, metadata_conflicts="silent") if len(cats) > 1 else cats[0]
    full.meta.clear()
    full.meta.update(meta)
    atomic_write_table(full, output)
    return len(full)
