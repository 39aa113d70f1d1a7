"""``kielnet tune``: hyper-parameter search with Optuna over a space declared in the config.

The search space is the config's ``tuning.space`` (:class:`kielnet.config.SearchParam`):
dotted config paths, each drawn as a float, an int or one of a list of choices. Each
trial:

1. applies its draws to the config (:func:`apply_params`) and validates the result;
2. trains **one** network on the tuning table's own split (``training.val_fraction``,
   by star id, seeded) — so validation only ever uses the stars given to ``tune``; a
   benchmark passes its training part only, and its test stars are never seen;
3. reports, epoch by epoch, the mean over labels of the robust σ of the scaled
   validation residuals (comparable across losses and label transforms), so that
   Optuna's median pruner stops hopeless trials early; the trial's value is the score
   at its best (early-stopping) epoch.

The study lives in ``WORKDIR/study.journal`` (Optuna's journal file storage, safe for
several processes): rerunning the same command resumes it — finished and pruned
trials are kept, a trial that was running when the process died is marked failed and
its parameters are queued again. ``WORKDIR/run.json`` fingerprints the config and the
data, and a different run is refused (:class:`~kielnet.errors.RunMismatchError`).
With a Dask cluster the trials run as tasks on its workers, all writing to the same
journal. The best trial is written as a preset file (:func:`write_best_preset`) whose
``provenance`` names the study, the trial and its score.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kielnet.config import KielnetConfig, SearchParam
from kielnet.data.fingerprint import table_fingerprint
from kielnet.data.input_columns import resolve_columns
from kielnet.data.preprocess import Preprocessor
from kielnet.data.startable import StarTable
from kielnet.errors import ConfigError, InputError
from kielnet.io.atomic import atomic_write_text
from kielnet.training.plan import MIN_TRAINING_STARS, claim_workdir, sample_weights, training_rows
from kielnet.training.trainer import train_member

__all__ = ["TuneResult", "apply_params", "run_study", "write_best_preset", "STUDY_FILE"]

STUDY_FILE = "study.journal"
_STUDY_NAME = "kielnet-tune"


def _set_path(d: Any, path: str, value: Any) -> None:
    keys = path.split(".")
    cur = d
    for i, k in enumerate(keys[:-1]):
        try:
            cur = cur[int(k)] if isinstance(cur, list) else cur[k]
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"tuning.space path '{path}': '{'.'.join(keys[:i + 1])}' is not in the config") from exc
    last = keys[-1]
    if isinstance(cur, list):
        try:
            cur[int(last)] = value
        except (IndexError, ValueError) as exc:
            raise ConfigError(f"tuning.space path '{path}': no list item '{last}'") from exc
    elif isinstance(cur, dict):
        cur[last] = value
    else:
        raise ConfigError(f"tuning.space path '{path}' does not lead into a section of the config")


def apply_params(config: KielnetConfig, params: dict[str, Any]) -> KielnetConfig:
    """A copy of ``config`` with each dotted ``path → value`` of ``params`` set, validated
    (a :class:`~kielnet.errors.ConfigError` names a bad path or an invalid result)."""
    d = copy.deepcopy(config.model_dump(mode="json"))
    for path, value in params.items():
        _set_path(d, path, value)
    return KielnetConfig.from_dict(d, source="tuning trial")


def _suggest(trial, p: SearchParam) -> Any:
    if p.kind == "float":
        return trial.suggest_float(p.path, p.low, p.high, log=p.log)
    if p.kind == "int":
        return trial.suggest_int(p.path, int(p.low), int(p.high), step=p.step or 1, log=p.log)
    # choices may be lists or mappings: Optuna stores JSON strings, kielnet decodes them
    index = {json.dumps(c, sort_keys=True): c for c in p.choices}
    return index[trial.suggest_categorical(p.path, list(index))]


def _decode(config: KielnetConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's stored params → config values (categorical JSON strings decoded)."""
    kinds = {p.path: p.kind for p in config.tuning.space}
    return {k: (json.loads(v) if kinds.get(k) == "categorical" else v) for k, v in params.items()}


def _storage(workdir: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = str(workdir / STUDY_FILE)
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def _study(workdir: Path, config: KielnetConfig, offset: int = 0):
    """The study in ``workdir``. Its sampler is seeded from ``tuning.seed``, the number of
    trials already in the journal and ``offset`` (a task index), so that a resumed study
    or parallel workers do not draw the same parameters again."""
    import optuna

    t = config.tuning
    storage = _storage(workdir)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=t.warmup_epochs)
              if t.pruner == "median" else optuna.pruners.NopPruner())
    existing = optuna.create_study(study_name=_STUDY_NAME, storage=storage, load_if_exists=True,
                                   direction="minimize")
    n = len(existing.get_trials(deepcopy=False))
    sampler = optuna.samplers.TPESampler(seed=(t.seed * 1_000_003 + n * 1009 + offset) % (2 ** 32))
    return optuna.create_study(study_name=_STUDY_NAME, storage=storage, load_if_exists=True,
                               direction="minimize", sampler=sampler, pruner=pruner)


def _claim(workdir: Path, config: KielnetConfig, table: StarTable) -> None:
    """Create the work directory or check it holds this very search (config + data);
    the same check as training's work directories (:func:`kielnet.training.plan.claim_workdir`)."""
    cfg = config.model_dump(mode="json")
    cfg.pop("provenance", None)
    cfg["tuning"].pop("n_trials", None)  # a study may be extended
    claim_workdir(workdir, {"format": 1, "config": cfg,
                            "data": table_fingerprint(table, scalars=config.scalar_columns(),
                                                      labels=config.label_names, extra=False)},
                  what="tuning study", revalidate=lambda stored: stored)


def _objective_factory(config: KielnetConfig, table: StarTable, log):
    import optuna

    if config.tuning.max_stars and len(table) > config.tuning.max_stars:
        keep = np.sort(np.random.default_rng(config.tuning.seed).choice(len(table), config.tuning.max_stars,
                                                                        replace=False))
        table = table.take(keep)

    def objective(trial) -> float:
        params = {p.path: _suggest(trial, p) for p in config.tuning.space}
        cfg = apply_params(config, params)
        if config.tuning.max_epochs:
            cfg = cfg.with_overrides(training={"max_epochs": min(cfg.training.max_epochs, config.tuning.max_epochs)})
        pre = Preprocessor(cfg).fit(table)
        tr = training_rows(table, cfg, pre, log=lambda *_: None, n_splits=1)
        prep, rows, held = tr.prep, tr.rows, tr.heldout[:, 0]
        weights = sample_weights(cfg, prep.targets, rows)

        def report(rec: dict) -> None:
            trial.report(rec["val_robust"], rec["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {rec['epoch']}")

        t0 = time.time()
        res = train_member(cfg, prep, rows[~held], rows[held], weights, n_pix=pre.n_pix or 0,
                           branch_widths=pre.branch_widths(), seed=config.tuning.seed + trial.number + 1,
                           progress=False, on_epoch=report, preprocessor=pre)
        score = float(res.history[res.best_epoch]["val_robust"]) if res.history else float("inf")
        trial.set_user_attr("best_epoch", res.best_epoch)
        trial.set_user_attr("seconds", round(time.time() - t0, 1))
        log(f"trial {trial.number}: score {score:.4f} (best epoch {res.best_epoch}) with {params}")
        return score

    return objective


def _run_trials(workdir: str, config_json: dict, table: StarTable, n: int, offset: int = 0) -> int:
    """Run ``n`` trials of the study in ``workdir`` (a Dask task, or in process)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = KielnetConfig.from_dict(config_json)
    study = _study(Path(workdir), config, offset)
    study.optimize(_objective_factory(config, table, log=lambda *_: None), n_trials=n, catch=())
    return n


@dataclass
class TuneResult:
    """The finished study: the best config, its trial and score, and trial counts."""

    best_config: KielnetConfig
    best_trial: int
    best_value: float
    n_complete: int
    n_pruned: int
    n_failed: int
    study_file: Path


def _recover_interrupted(study, log) -> None:
    """Mark trials left running by a killed process as failed and queue their parameters again."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, skip_if_exists=False)
        log(f"trial {t.number} was interrupted: marked failed, its parameters queued again")


def run_study(table: StarTable, config: KielnetConfig, workdir: str | Path, *, n_trials: int | None = None,
              cluster=None, log=print) -> TuneResult:
    """Run (or resume) the config's tuning study on ``table`` until ``n_trials``
    (default ``tuning.n_trials``) trials have finished (complete or pruned)."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not config.tuning.space:
        raise ConfigError("the config has no tuning.space: nothing to search (see kielnet.config.TuningConfig)")
    for p in config.tuning.space:  # every path must exist and every draw type-check
        value = p.choices[0] if p.kind == "categorical" else (int(p.low) if p.kind == "int" else p.low)
        apply_params(config, {p.path: value})
    table = resolve_columns(table, config)
    if len(table) < MIN_TRAINING_STARS:
        raise InputError(f"only {len(table)} stars to tune on (at least {MIN_TRAINING_STARS})", source=table.source)
    wd = Path(workdir)
    _claim(wd, config, table)
    study = _study(wd, config)
    _recover_interrupted(study, log)
    target = int(n_trials or config.tuning.n_trials)
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    todo = max(0, target - done)
    log(f"study {wd / STUDY_FILE}: {done} trials finished, {todo} to run")
    if todo and cluster is not None:
        from distributed import wait

        from kielnet.cluster import cluster_client

        with cluster_client(cluster) as client:
            n_workers = max(1, len(client.scheduler_info().get("workers", {})))
            table_f = client.scatter(table, broadcast=True)
            futures = [client.submit(_run_trials, str(wd), config.model_dump(mode="json"), table_f, 1, i + 1,
                                     pure=False, key=f"kielnet-trial-{done + i}") for i in range(todo)]
            log(f"running {todo} trials as Dask tasks on {n_workers} workers")
            wait(futures)
            for f in futures:
                f.result()
    elif todo:
        study.optimize(_objective_factory(config, table, log), n_trials=todo, catch=())
    study = _study(wd, config)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise InputError("no tuning trial completed", source=str(wd))
    best = min(complete, key=lambda t: t.value)
    best_cfg = apply_params(config, _decode(config, best.params))
    return TuneResult(best_cfg, best.number, float(best.value), len(complete),
                      sum(t.state == TrialState.PRUNED for t in trials),
                      sum(t.state == TrialState.FAIL for t in trials), wd / STUDY_FILE)


def write_best_preset(result: TuneResult, base: KielnetConfig, path: str | Path, *, data_source: str = "") -> Path:
    """Write the best trial's config as a preset YAML file with its provenance (the
    study file, trial, score, trial counts, the search space and the base config)."""
    cfg = result.best_config
    d = cfg.model_dump(mode="json")
    d["name"] = f"{base.name}_tuned"
    d["provenance"] = {
        "tool": "kielnet tune", "base_config": base.name, "study": str(result.study_file),
        "best_trial": result.best_trial,
        "score": result.best_value,
        "score_definition": "mean over labels of the robust sigma (1.4826 MAD) of the scaled residuals of one "
                            "network on the tuning table's validation split",
        "trials": {"complete": result.n_complete, "pruned": result.n_pruned, "failed": result.n_failed},
        "data": data_source, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "chosen": {p.path: _get_path(d, p.path) for p in base.tuning.space},
    }
    text = (f"# written by `kielnet tune` from {base.name}: trial {result.best_trial} of {result.n_complete} "
            f"complete ({result.n_pruned} pruned)\n" + yaml.safe_dump(d, sort_keys=False))
    KielnetConfig.from_dict(yaml.safe_load(text), source=str(path))  # it must load back
    atomic_write_text(Path(path), text)
    return Path(path)


def _get_path(d: Any, path: str) -> Any:
    cur = d
    for k in path.split("."):
        cur = cur[int(k)] if isinstance(cur, list) else cur[k]
    return cur
