"""Deep-ensemble training (Gaia-RVS hybrid CNN §3.2) and uncertainty calibration (§3.4).

``n_splits`` random train/validation splits *by star id* × ``members_per_split``
differently seeded networks. After training, every split's members predict that
split's validation stars; the pooled held-out residuals give

* the running dispersion of each label (robust σ in bins of the predicted label,
  polynomial fit), used for the total σ of new stars — unless
  ``uncertainty.residuals = training``, the paper's choice, which fits the whole
  ensemble's residuals on its training stars instead;
* held-out metrics and 1σ coverage, stored in the bundle.

:func:`train_ensemble` runs the four stages, each in its own module:

1. plan (:func:`kielnet.training.plan.plan_training`): rows, splits, weights, resume;
2. members (:func:`kielnet.training.members.train_members`): serial or Dask;
3. calibrate (:func:`kielnet.training.calibrate.calibrate_ensemble`): out-of-fold σ
   model, neighbour model, validation;
4. assemble (:func:`kielnet.training.assemble.assemble_bundle`): ranges, summary,
   quality fits.

A work directory makes the run resumable: finished members are kept as safetensors
files and each running member checkpoints every epoch.
"""

from __future__ import annotations

import time
from pathlib import Path

from kielnet.artifact import Bundle
from kielnet.config import KielnetConfig
from kielnet.data.startable import StarTable
from kielnet.training.assemble import assemble_bundle
from kielnet.training.calibrate import calibrate_ensemble
from kielnet.training.members import member_nets, split_nets, train_members
from kielnet.training.plan import plan_training

__all__ = ["train_ensemble"]


def train_ensemble(table: StarTable, config: KielnetConfig, *, workdir: str | Path | None = None,
                   progress: bool = True, log=print, cluster=None, selection=None) -> Bundle:
    """Train the config's deep ensemble on ``table`` and return a bundle.

    Parameters
    ----------
    table
        Training sample with spectra, the scalar columns the config's features need,
        and reference labels (NaN = unknown; such labels are masked in the loss).
    config
        Declarative model description (see :mod:`kielnet.config`).
    workdir
        Directory for checkpoints; rerunning with the same directory resumes.
    progress
        Show tqdm progress bars.
    log
        Callable receiving one-line progress messages (``print`` by default).
    cluster
        Train the members as Dask tasks (``"local:N"``, ``"tcp://HOST:PORT"`` or a
        ``distributed.Client``; :mod:`kielnet.training.distributed`); same members as
        serial training for the same seeds and thread count.
    selection
        A :class:`kielnet.data.selection.Selection` of training stars (cuts on the
        scalar columns, labels, ``<label>_err`` and pass-through columns), applied first;
        its per-cut counts are logged and kept in the bundle (``training_data.selection``).
    """
    t0 = time.time()
    if cluster is not None:
        from kielnet.cluster import check_cluster

        check_cluster(cluster)
    plan = plan_training(table, config, workdir=workdir, selection=selection, log=log)
    states, infos = train_members(plan, cluster=cluster, progress=progress, log=log, t0=t0)
    by_split = split_nets(plan, states)
    cal = calibrate_ensemble(plan, by_split, member_nets(plan, states)
                             if config.uncertainty.residuals == "training" else None)
    return assemble_bundle(plan, states, infos, cal, train_seconds=time.time() - t0, log=log)
