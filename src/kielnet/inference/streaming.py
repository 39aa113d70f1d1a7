"""Chunked, resumable prediction straight to a catalogue file.

Stars are labelled ``chunk_size`` at a time; each finished chunk is written
atomically to ``<output>.parts/part_NNNNNN.parquet``. If the run is interrupted,
calling again with the same output skips the chunks already written. When all
chunks exist they are concatenated (in input order) into the output file, written
atomically, and the parts directory is removed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from kielnet.data.startable import StarTable
from kielnet.inference.bundle import Bundle
from kielnet.inference.predict import catalogue_meta, predict
from kielnet.io.tables import atomic_write_table, read_catalogue

__all__ = ["predict_to_file"]


def predict_to_file(bundle: Bundle, table: StarTable, output: str | Path, *, chunk_size: int = 20000,
                    batch_size: int = 256, progress: bool = True, n_realisations: int | None = None) -> Table:
    """Label ``table`` in resumable chunks and write the catalogue to ``output``.

    The format follows the suffix (``.parquet``, ``.fits``, ``.ecsv``, ``.csv``).
    Returns the full catalogue.
    """
    output = Path(output)
    parts = output.with_name(output.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, len(table), chunk_size)) or [0]
    nets = bundle.build_members()
    it = starts
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(starts, desc="predict", unit="chunk")
    for i, s in enumerate(it):
        part = parts / f"part_{i:06d}.parquet"
        if part.is_file():
            continue
        chunk = table.take(np.arange(s, min(s + chunk_size, len(table))))
        rng = np.random.default_rng([bundle.config.inference.seed, i])  # per chunk: resumable
        cat = predict(bundle, chunk, batch_size=batch_size, nets=nets, n_realisations=n_realisations, rng=rng)
        atomic_write_table(cat, part)
    cats = [read_catalogue(parts / f"part_{i:06d}.parquet") for i in range(len(starts))]
    full = vstack(cats, metadata_conflicts="silent") if len(cats) > 1 else cats[0]
    full.meta.clear()
    full.meta.update(catalogue_meta(bundle))
    atomic_write_table(full, output)
    shutil.rmtree(parts, ignore_errors=True)
    return full
