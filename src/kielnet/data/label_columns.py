"""Reference labels from any column, and from a separate catalogue joined by star id.

A config may learn any label (:mod:`kielnet.labels`). Its reference values are found
by :func:`resolve_labels` in the star table's labels, or else in any numeric column
named like the label or one of its aliases (case-insensitive; e.g. APOGEE's
``ak_targ`` read as an input column, or ``MG_FE`` in a Parquet file). Errors come from
``<column>_err`` / ``e_<column>`` when present.

:func:`join_labels` adds the labels of a separate reference catalogue (APOGEE allStar,
GALAH, a seismic catalogue) to the spectra by id — Gaia ``source_id``, APOGEE id or
``id`` — and counts what matched. A star without a reference value for a label gets
NaN for it (masked in training for that label only, never dropped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.labels import LabelInfo, column_candidates

__all__ = ["resolve_labels", "find_label_column", "join_labels", "LabelJoin", "ID_KEYS"]

#: id kinds a reference catalogue is joined by, in order of preference
ID_KEYS: tuple[str, ...] = ("source_id", "apogee_id", "id")


def _numeric(v: np.ndarray) -> np.ndarray | None:
    a = np.asarray(v)
    if a.ndim != 1 or a.dtype.kind not in "fiub":
        return None
    return a.astype(np.float64)


def find_label_column(table: StarTable, info: LabelInfo) -> tuple[str, str] | None:
    """Where ``table`` holds label ``info``: ``(kind, key)`` with kind ``labels``,
    ``scalars`` or ``extra``, or ``None``. The label's own name among the labels wins,
    then each candidate name (the name, then the aliases) in labels, scalars, extra."""
    if info.name in table.labels:
        return "labels", info.name
    for cand in column_candidates(info):
        for kind in ("labels", "scalars", "extra"):
            cols = getattr(table, kind)
            for key in cols:
                if key.lower() == cand and (kind != "extra" or _numeric(cols[key]) is not None):
                    return kind, key
    return None


def resolve_labels(table: StarTable, infos: Mapping[str, LabelInfo]) -> StarTable:
    """``table`` with every label of ``infos`` it holds under ``labels[name]``.

    A label found in another column (an alias, a scalar or pass-through column) is
    copied there, with its error column when one exists; the source column stays
    where it was. Labels the table does not hold are left absent (training refuses
    them, naming the names tried). Returns ``table`` itself when nothing changes.
    """
    found: dict[str, tuple[str, str]] = {}
    for name, info in infos.items():
        if name in table.labels:
            continue
        where = find_label_column(table, info)
        if where is not None:
            found[name] = where
    if not found:
        return table
    labels, errs = dict(table.labels), dict(table.label_errs)
    meta = dict(table.meta)
    mapped = dict(meta.get("label_columns") or {})
    for name, (kind, key) in found.items():
        cols = getattr(table, kind)
        labels[name] = _numeric(cols[key]) if kind == "extra" else np.asarray(cols[key], dtype=np.float64)
        for ek in (f"{key}_err", f"e_{key}", f"{key}_error"):
            for pool in (table.label_errs, table.scalars, table.extra):
                hit = next((k for k in pool if k.lower() == ek.lower()), None)
                if hit is not None and _numeric(pool[hit]) is not None:
                    errs[name] = _numeric(pool[hit])
                    break
            if name in errs:
                break
        mapped[name] = f"{kind}:{key}"
    meta["label_columns"] = mapped
    return StarTable(ids=table.ids, flux=table.flux, flux_err=table.flux_err, wavelength=table.wavelength,
                     scalars=table.scalars, labels=labels, label_errs=errs, extra=table.extra, meta=meta)


@dataclass
class LabelJoin:
    """What :func:`join_labels` matched.

    ``key``: the id kind used; ``matched``: stars that found a reference row;
    ``unmatched_stars``: stars that found none (their labels from this catalogue are
    NaN); ``unmatched_rows``: reference rows that match no star; ``duplicated``:
    reference ids that occur more than once (their stars get NaN for a label on which
    the duplicates disagree); ``labels``: label name → reference column used;
    ``finite``: label name → stars given a finite value.
    """

    source: str
    key: str
    matched: int
    unmatched_stars: int
    unmatched_rows: int
    duplicated: int
    labels: dict[str, str] = field(default_factory=dict)
    finite: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        per = ", ".join(f"{n} <- {c} ({self.finite[n]} finite)" for n, c in self.labels.items())
        return (f"{self.source}: joined by {self.key}: {self.matched} stars matched, {self.unmatched_stars} "
                f"without a reference row, {self.unmatched_rows} reference rows matched no star, "
                f"{self.duplicated} duplicated reference ids; labels: {per}")


def _floats(values, source: str, name: str) -> np.ndarray:
    """A reference column as float64 (masked / empty cells NaN); text that is not a number
    is an error naming the column and the first bad row."""
    a = np.ma.asarray(values)
    if a.dtype.kind in "fiub":
        return np.asarray(np.ma.filled(a.astype(np.float64), np.nan))
    text = np.char.strip(np.ma.filled(a, "").astype(str))
    out = np.full(len(text), np.nan)
    for i, t in enumerate(text.tolist()):
        if t:
            try:
                out[i] = float(t)
            except ValueError:
                raise InputError(f"label column is not numeric (row {i} holds {t!r})", source=source,
                                 field=name, row=i) from None
    return out


def _key_text(values: np.ndarray) -> np.ndarray:
    """Ids as text that compares equal across files: integers without a decimal point,
    integral floats as integers (a Gaia source_id read as float keeps its digits only below
    2**53, so such ids are compared as stored), text stripped."""
    a = np.asarray(values)
    if a.dtype.kind in "iu":
        return a.astype(str)
    if a.dtype.kind == "f":
        out = np.where(np.isfinite(a) & (a == np.round(a)), np.char.mod("%d", np.nan_to_num(a).astype(np.int64)),
                       a.astype(str))
        return np.where(np.isfinite(a), out, "")
    return np.char.strip(a.astype(str))


def _star_keys(table: StarTable, key: str) -> np.ndarray | None:
    if key == "id":
        return _key_text(table.ids)
    for pool in (table.extra, table.scalars):
        for k in pool:
            if k.lower() == key:
                return _key_text(pool[k])
    if key == "apogee_id" and table.meta.get("id_kind") == "apogee_id":
        return _key_text(table.ids)
    return None


def join_labels(table: StarTable, columns: Mapping[str, np.ndarray], infos: Mapping[str, LabelInfo], *,
                source: str) -> tuple[StarTable, LabelJoin]:
    """Add the labels of a reference catalogue to ``table``, matched by star id.

    Parameters
    ----------
    table
        The spectra (and inputs) to train on.
    columns
        The reference catalogue's columns by name (e.g. ``{"source_id": ..., "TEFF": ...,
        "MG_FE": ..., "MG_FE_ERR": ...}``), as read by :mod:`kielnet.io`.
    infos
        The labels to look for (:attr:`kielnet.config.KielnetConfig.label_vocabulary`):
        a column named like a label or one of its aliases (case-insensitive) is that label.
    source
        The catalogue's file name, for messages.

    The id kind is the first of :data:`ID_KEYS` that both sides hold and that matches
    at least one star. A label from the catalogue replaces the table's own values for
    that label (stars without a reference row get NaN); labels the catalogue lacks are
    untouched. Raises :class:`InputError` when the catalogue holds no id column shared
    with the table, no star matches, or it holds none of the labels.
    """
    lower = {k.lower(): k for k in columns}
    label_cols: dict[str, str] = {}
    for name, info in infos.items():
        hit = next((lower[c] for c in column_candidates(info) if c in lower), None)
        if hit is not None:
            label_cols[name] = hit
    if not label_cols:
        raise InputError(f"the reference catalogue holds none of the labels {sorted(infos)} (nor their "
                         f"aliases); columns: {sorted(columns)}", source=source, field="labels")
    tried = []
    for key in ID_KEYS:
        if key not in lower:
            continue
        stars = _star_keys(table, key)
        if stars is None:
            continue
        tried.append(key)
        ref = _key_text(np.asarray(columns[lower[key]]))
        uniq, inverse, counts = np.unique(ref, return_inverse=True, return_counts=True)
        pos = np.searchsorted(uniq, stars)
        pos = np.clip(pos, 0, max(len(uniq) - 1, 0))
        hit = (len(uniq) > 0) & (uniq[pos] == stars) & (stars != "")
        if hit.any():
            break
    else:
        raise InputError(f"no star matches the reference catalogue by any id kind (tried {tried or 'none'}; "
                         f"the catalogue needs one of the columns {list(ID_KEYS)} that the spectra also have)",
                         source=source, field="id")
    dup_ids = counts > 1
    labels, errs = dict(table.labels), dict(table.label_errs)
    finite = {}
    for name, col in label_cols.items():
        vals = _floats(columns[col], source, col)
        # one value per unique id; duplicates must agree (NaN where they do not)
        lo = np.full(len(uniq), np.inf)
        hi = np.full(len(uniq), -np.inf)
        fin = np.isfinite(vals)
        np.minimum.at(lo, inverse[fin], vals[fin])
        np.maximum.at(hi, inverse[fin], vals[fin])
        per_id = np.where(lo == hi, lo, np.nan)
        out = np.full(len(table), np.nan)
        out[hit] = per_id[pos[hit]]
        labels[name] = out
        finite[name] = int(np.isfinite(out).sum())
        ecol = next((lower[e] for e in (f"{col.lower()}_err", f"e_{col.lower()}", f"{col.lower()}_error")
                     if e in lower), None)
        if ecol is not None:
            ev = _floats(columns[ecol], source, ecol)
            e_id = np.full(len(uniq), np.nan)
            e_id[inverse[np.isfinite(ev)]] = ev[np.isfinite(ev)]
            eo = np.full(len(table), np.nan)
            eo[hit] = np.where(np.isfinite(out[hit]), e_id[pos[hit]], np.nan)
            errs[name] = eo
        elif name in errs:
            del errs[name]
    matched_ids = np.zeros(len(uniq), dtype=bool)
    matched_ids[pos[hit]] = True
    report = LabelJoin(source=source, key=key, matched=int(hit.sum()), unmatched_stars=int((~hit).sum()),
                       unmatched_rows=int(counts[~matched_ids].sum()), duplicated=int(dup_ids.sum()),
                       labels=label_cols, finite=finite)
    meta = dict(table.meta)
    meta["label_joins"] = [*meta.get("label_joins", []), report.summary()]
    joined = StarTable(ids=table.ids, flux=table.flux, flux_err=table.flux_err, wavelength=table.wavelength,
                       scalars=table.scalars, labels=labels, label_errs=errs, extra=table.extra, meta=meta)
    return joined, report
