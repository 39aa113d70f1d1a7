"""Chunked, resumable prediction straight to a catalogue file.

Stars are labelled ``chunk_size`` at a time; each finished chunk is written
atomically to ``<output>.parts/part_NNNNNN.parquet``. If the run is interrupted,
calling again with the same output skips the chunks already written. When all
chunks exist they are concatenated (in input order) into the output file, written
atomically, and the parts directory is removed.

Parts are only ever reused by the run that wrote them. ``<output>.parts/run.json``
records the run's identity — a content fingerprint of the input stars
(:func:`kielnet.data.fingerprint.table_fingerprint`), the bundle's fingerprint
(:meth:`Bundle.fingerprint`) and the options that change rows (chunk size, batch
size, noise realisations) — and a rerun that differs in any of them is refused with
a :class:`~kielnet.errors.RunMismatchError` naming what differs (``fresh=True``,
``kielnet predict --fresh``, discards the parts). Each reused part must also hold
exactly the ids of its chunk, in order. At the end, rows out = rows in, in input order.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from kielnet import __version__
from kielnet.data.fingerprint import describe_differences, dict_differences, table_fingerprint
from kielnet.data.startable import StarTable
from kielnet.errors import RunMismatchError, UsageError
from kielnet.inference.bundle import Bundle
from kielnet.inference.predict import catalogue_meta, predict
from kielnet.io.atomic import atomic_write_text
from kielnet.io.outputs import check_output_file
from kielnet.io.tables import atomic_write_table, read_catalogue

__all__ = ["predict_to_file", "prediction_run_identity", "PARTS_FORMAT"]

#: layout version of a parts directory (run.json + part_NNNNNN.parquet)
PARTS_FORMAT = 1


def prediction_run_identity(bundle: Bundle, table: StarTable, *, chunk_size: int, batch_size: int,
                            n_realisations: int) -> dict:
    """What the parts of a chunked prediction depend on (JSON-able)."""
    used = bundle.config.scalar_columns()
    return {"format": PARTS_FORMAT,
            "input": table_fingerprint(table, scalars=used, labels=(), extra=True),
            "bundle": bundle.fingerprint(),
            "options": {"chunk_size": int(chunk_size), "batch_size": int(batch_size),
                        "n_realisations": int(n_realisations)}}


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
            raise RunMismatchError("the parts directory has an unknown layout; rerun with --fresh",
                                   source=str(parts))
        diffs = [f"input stars: {d}" for d in describe_differences(old.get("input", {}), identity["input"])]
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


def predict_to_file(bundle: Bundle, table: StarTable, output: str | Path, *, chunk_size: int = 20000,
                    batch_size: int = 256, progress: bool = True, n_realisations: int | None = None,
                    fresh: bool = False) -> Table:
    """Label ``table`` in resumable chunks and write the catalogue to ``output``.

    Parameters
    ----------
    chunk_size
        Stars per resumable part (> 0).
    batch_size
        Stars per forward pass (> 0).
    n_realisations
        Noise realisations (default: the bundle's setting).
    fresh
        Discard the parts of an earlier, interrupted run instead of resuming.

    The format follows the suffix (``.parquet``, ``.fits``, ``.ecsv``, ``.csv``); the
    output path is checked before any compute (:func:`kielnet.io.outputs.check_output_file`).
    Returns the full catalogue.
    """
    for name, val in (("chunk_size", chunk_size), ("batch_size", batch_size)):
        if int(val) < 1:
            raise UsageError(f"{name} must be a positive number of stars, got {val}")
    n_real = bundle.config.inference.n_realisations if n_realisations is None else int(n_realisations)
    if n_real < 0:
        raise UsageError(f"n_realisations must be >= 0, got {n_real}")
    output = check_output_file(output)
    parts = output.with_name(output.name + ".parts")
    cfg = bundle.config
    table.require(scalars=cfg.scalar_columns(), n_pix=bundle.preprocessor.n_pix if cfg.spectrum else None)
    identity = prediction_run_identity(bundle, table, chunk_size=chunk_size, batch_size=batch_size,
                                       n_realisations=n_real)
    _claim_parts(parts, identity, fresh)
    try:
        return _predict_parts(bundle, table, output, parts, chunk_size, batch_size, n_real, progress)
    except BaseException:
        if not any(parts.glob("part_*.parquet")):  # nothing to resume: leave nothing behind
            shutil.rmtree(parts, ignore_errors=True)
        raise


def _predict_parts(bundle: Bundle, table: StarTable, output: Path, parts: Path, chunk_size: int,
                   batch_size: int, n_real: int, progress: bool) -> Table:
    """The chunk loop of :func:`predict_to_file` (parts directory already claimed)."""
    starts = list(range(0, len(table), chunk_size)) or [0]
    nets = bundle.build_members()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(table), desc="predict", unit="star")
    cats = []
    for i, s in enumerate(starts):
        rows = np.arange(s, min(s + chunk_size, len(table)))
        part = parts / f"part_{i:06d}.parquet"
        cat = _reuse_part(part, table.ids[rows]) if part.is_file() else None
        if cat is None:
            chunk = table.take(rows)
            rng = np.random.default_rng([bundle.config.inference.seed, i])  # per chunk: resumable
            cat = predict(bundle, chunk, batch_size=batch_size, nets=nets, n_realisations=n_real, rng=rng)
            atomic_write_table(cat, part)
        cats.append(cat)
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    full = vstack(cats, metadata_conflicts="silent") if len(cats) > 1 else cats[0]
    if len(full) != len(table) or not np.array_equal(np.asarray(full["id"]).astype(str), table.ids):
        raise RunMismatchError(f"the parts hold {len(full)} rows for {len(table)} input stars or ids out of "
                               "order; rerun with --fresh", source=str(parts))
    full.meta.clear()
    full.meta.update(catalogue_meta(bundle))
    atomic_write_table(full, output)
    shutil.rmtree(parts, ignore_errors=True)
    return full


def _reuse_part(part: Path, ids: np.ndarray) -> Table:
    """A finished part, checked to hold exactly the ids of its chunk, in order."""
    try:
        cat = read_catalogue(part)
    except Exception as exc:  # noqa: BLE001 - a damaged part is reported, never half-used
        raise RunMismatchError(f"a finished part is unreadable ({type(exc).__name__}: {exc}); rerun with "
                               "--fresh", source=str(part)) from exc
    got = np.asarray(cat["id"]).astype(str) if "id" in cat.colnames else np.zeros(0, dtype=str)
    if len(got) != len(ids) or not np.array_equal(got, ids):
        raise RunMismatchError(f"a finished part holds {len(got)} rows that are not the {len(ids)} stars of its "
                               "chunk; rerun with --fresh", source=str(part))
    return cat
