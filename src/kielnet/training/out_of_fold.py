"""Out-of-fold predictions of an ensemble's training stars, for fitting and judging
uncertainties without touching any test star.

Each split's validation stars are predicted by that split's members only (none of
them trained on those stars); a star held out by several splits gets the average.
For the missing-input calibration the same stars are predicted again with each input
group hidden exactly as training's input dropout hides it
(:meth:`kielnet.data.preprocess.Preprocessor.masking_plan`).

The arrays are kept in the training work directory as ``out_of_fold.parquet`` so that
benchmarks can compare σ models on them (:func:`load_out_of_fold`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kielnet.compute import member_predictions
from kielnet.config import KielnetConfig
from kielnet.data.preprocess import Prepared, Preprocessor
from kielnet.data.startable import StarTable
from kielnet.io.atomic import atomic_path
from kielnet.quality.sigma import OutOfFold, combine_members, star_snr
from kielnet.quality.spread import log_disagreement

__all__ = ["out_of_fold", "hide_group", "reference_labels", "save_out_of_fold", "load_out_of_fold"]


def reference_labels(table: StarTable, prep: Prepared, config: KielnetConfig) -> np.ndarray:
    """(n, n_labels) reference labels, NaN where missing or outside the valid range."""
    out = np.stack([table.labels[n] for n in config.label_names], axis=1).astype(np.float64)
    if prep.label_out_of_range is not None:
        out[prep.label_out_of_range] = np.nan
    return out


def hide_group(prep: Prepared, preprocessor: Preprocessor, columns: list[str]) -> Prepared:
    """A copy of ``prep`` whose branch inputs look as if ``columns`` were missing."""
    branches = {k: v.copy() for k, v in prep.branches.items()}
    for br, vals, fills, inds in preprocessor.masking_plan(columns):
        branches[br][:, vals] = fills
        if len(inds):
            branches[br][:, inds] = 1.0
    return Prepared(prep.spectrum, prep.spectrum_err, branches, prep.targets, prep.n_bad_pixels,
                    prep.bad_spectrum, prep.missing_features, prep.label_out_of_range, prep.implausible,
                    prep.spectrum_issues, prep.raw_features, prep.missing_columns, prep.snr)


def _predict(nets, prep: Prepared, inverse) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Mean, spread and own σ of the members (:func:`combine_members`), and the members'
    predictions themselves (n_members, n, n_labels), all in physical units."""
    head: list = []
    means = member_predictions(nets, prep, inverse, head_sigma=head)
    return (*combine_members(means, head[0] if head else None), means)


def out_of_fold(config: KielnetConfig, preprocessor: Preprocessor, table: StarTable, prep: Prepared,
                rows: np.ndarray, heldout: np.ndarray, split_nets: list[list]) -> OutOfFold:
    """Out-of-fold predictions of the training rows ``rows`` that some split held out.

    ``heldout`` (len(rows), n_splits) marks each split's validation stars;
    ``split_nets[k]`` are split k's member networks. The result's ``rows`` index
    ``table``; with input groups (``config.groups()``) and ``uncertainty.missing_inputs =
    calibrate`` it also holds the predictions with each group hidden; with
    ``quality.ensemble_spread.local``, each star's split members' log disagreement.
    """
    groups = config.groups() if config.uncertainty.missing_inputs == "calibrate" else {}
    held_any = heldout.any(axis=1)
    oof_rows = rows[held_any]
    pos = {int(r): i for i, r in enumerate(oof_rows)}
    n, nl = len(oof_rows), len(config.labels)
    heteroscedastic = config.model.heteroscedastic

    def empty():
        return [np.zeros((n, nl)), np.zeros((n, nl)), np.zeros((n, nl)) if heteroscedastic else None]

    acc = {None: empty(), **{g: empty() for g in groups}}
    es = config.quality.ensemble_spread
    disagreement = np.zeros(n) if es.enabled and es.local else None  # what the local threshold is made of
    count = np.zeros(n)
    for k, nets in enumerate(split_nets):
        va = rows[heldout[:, k]]
        if len(va) == 0:
            continue
        at = np.array([pos[int(r)] for r in va])
        sub = prep.take(va)
        for g in acc:
            view = sub if g is None else hide_group(sub, preprocessor, groups[g])
            mean, spread, head, members = _predict(nets, view, preprocessor.inverse_labels)
            acc[g][0][at] += mean
            acc[g][1][at] += spread
            if head is not None:
                acc[g][2][at] += head
            if g is None and disagreement is not None:  # scaled as predict scales a new star's members
                disagreement[at] += (log_disagreement(preprocessor.forward_labels(members)) if len(nets) >= 2
                                     else np.nan)
        count[at] += 1
    div = count[:, None]

    def final(a):
        return a[0] / div, a[1] / div, None if a[2] is None else a[2] / div

    pred, spread, head = final(acc[None])
    sub_all = prep.take(oof_rows)
    truth = reference_labels(table, prep, config)[oof_rows]
    scalars = {c: np.asarray(table.scalars[c])[oof_rows] for c in table.scalars}
    missing_cols = (sub_all.missing_columns if sub_all.missing_columns is not None
                    else np.zeros((n, 0), dtype=bool))
    return OutOfFold(pred=pred, spread=spread, head=head, truth=truth, snr=star_snr(config.uncertainty.snr, sub_all.snr, scalars, n),
                     complete=~missing_cols.any(axis=1), hidden={g: final(acc[g]) for g in groups},
                     rows=oof_rows, missing_columns=missing_cols,
                     disagreement=None if disagreement is None else disagreement / count)


def save_out_of_fold(path: str | Path, oof: OutOfFold, ids: np.ndarray, label_names: list[str]) -> Path:
    """Write ``oof`` as a Parquet table (one row per star; columns ``id``, ``snr``,
    ``complete``, ``disagreement``, ``<label>_{pred,spread,head,truth}`` and
    ``hidden_<group>_<label>_{pred,spread,head}``), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, np.ndarray] = {"id": np.asarray(ids).astype(str), "row": np.asarray(oof.rows, dtype=np.int64),
                                   "snr": oof.snr, "complete": oof.complete}
    if oof.disagreement is not None:
        cols["disagreement"] = oof.disagreement
    for j, name in enumerate(label_names):
        cols[f"{name}_pred"], cols[f"{name}_spread"], cols[f"{name}_truth"] = \
            oof.pred[:, j], oof.spread[:, j], oof.truth[:, j]
        if oof.head is not None:
            cols[f"{name}_head"] = oof.head[:, j]
        for g, (p, s, h) in oof.hidden.items():
            cols[f"hidden_{g}_{name}_pred"], cols[f"hidden_{g}_{name}_spread"] = p[:, j], s[:, j]
            if h is not None:
                cols[f"hidden_{g}_{name}_head"] = h[:, j]
    path = Path(path)
    meta = {b"kielnet.labels": ",".join(label_names).encode(), b"kielnet.groups": ",".join(oof.hidden).encode(),
            b"kielnet.missing_columns": str(oof.missing_columns.shape[1]).encode()}
    table = pa.table(cols).replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp))
    return path


def load_out_of_fold(path: str | Path) -> tuple[OutOfFold, np.ndarray]:
    """Read :func:`save_out_of_fold`'s file: ``(oof, ids)`` (``missing_columns`` is not
    stored; ``complete`` is)."""
    import pyarrow.parquet as pq

    t = pq.read_table(str(path))
    meta = t.schema.metadata or {}
    labels = meta[b"kielnet.labels"].decode().split(",")
    groups = [g for g in meta.get(b"kielnet.groups", b"").decode().split(",") if g]
    d = {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}

    def stack(fmt: str):
        keys = [fmt.format(n) for n in labels]
        return np.stack([d[k] for k in keys], axis=1).astype(np.float64) if all(k in d for k in keys) else None

    hidden = {g: (stack(f"hidden_{g}_{{}}_pred"), stack(f"hidden_{g}_{{}}_spread"), stack(f"hidden_{g}_{{}}_head"))
              for g in groups}
    complete = d["complete"].astype(bool)
    oof = OutOfFold(pred=stack("{}_pred"), spread=stack("{}_spread"), head=stack("{}_head"),
                    truth=stack("{}_truth"), snr=d["snr"].astype(np.float64), complete=complete, hidden=hidden,
                    rows=d["row"], missing_columns=~complete[:, None],
                    disagreement=d["disagreement"].astype(np.float64) if "disagreement" in d else None)
    return oof, d["id"]
