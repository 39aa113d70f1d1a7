"""End-to-end workflows built from the stages: the held-out experiment on the XP
library that both ``kielnet demo`` and ``benchmarks/xp_library.py`` run.

This is an orchestration layer (like the CLI): it imports training, inference,
diagnostics and io; none of those import it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table

from kielnet.config import KielnetConfig
from kielnet.data.splits import crc32_holdout
from kielnet.data.startable import StarTable
from kielnet.diagnostics.metrics import label_metrics
from kielnet.artifact import Bundle, save_bundle
from kielnet.inference.predict import predict
from kielnet.training.ensemble import train_ensemble

__all__ = ["HoldoutResult", "holdout_split", "run_holdout", "catalogue_metrics"]


@dataclass
class HoldoutResult:
    bundle: Bundle
    catalogue: Table
    train: StarTable
    test: StarTable
    metrics: dict
    train_seconds: float
    predict_seconds: float


def holdout_split(table: StarTable, modulus: int = 5) -> tuple[StarTable, StarTable]:
    """Fixed split of the benchmark: test = ``crc32(id) % modulus == 0``, train = rest."""
    test = crc32_holdout(table.ids, modulus, 0)
    return table.take(~test), table.take(test)


def catalogue_metrics(cat: Table, truth: StarTable, labels: list[str]) -> dict:
    """Per-label metrics of a catalogue against the reference labels of ``truth``."""
    return {n: label_metrics(np.asarray(cat[n], float), truth.labels[n], np.asarray(cat[f"sigma_{n}"], float))
            for n in labels if n in truth.labels}


def run_holdout(table: StarTable, config: KielnetConfig, *, workdir: str | Path | None = None,
                bundle_dir: str | Path | None = None, progress: bool = True, log=print,
                selection=None, cluster=None) -> HoldoutResult:
    """Train ``config`` on the crc32 training part of ``table``, predict the test part.

    ``selection`` (a :class:`kielnet.data.selection.Selection`) cleans the *training*
    stars only; every test star is predicted and scored. ``cluster`` (``"local:N"``, a
    scheduler address or a ``distributed.Client``) trains the members as Dask tasks
    (:func:`kielnet.training.ensemble.train_ensemble`). Returns the bundle, the test
    catalogue and per-label test metrics.
    """
    train, test = holdout_split(table)
    log(f"{len(table)} stars: {len(train)} for training, {len(test)} held out (crc32(id) % 5 == 0)")
    t0 = time.time()
    bundle = train_ensemble(train, config, workdir=workdir, progress=progress, log=log, selection=selection,
                            cluster=cluster)
    t_train = time.time() - t0
    if bundle_dir is not None:
        save_bundle(bundle, bundle_dir)
    t1 = time.time()
    cat = predict(bundle, test)
    t_pred = time.time() - t1
    metrics = catalogue_metrics(cat, test, config.label_names)
    return HoldoutResult(bundle, cat, train, test, metrics, t_train, t_pred)
