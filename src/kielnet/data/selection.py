"""Declarative sample-selection cuts on catalogue tables (APOGEE allStar, Gaia DR3).

A :class:`Selection` is an ordered list of :class:`Cut` objects. Each cut tests one
column (optionally the ratio of two columns) of an astropy :class:`~astropy.table.Table`
and may apply only where a :class:`Condition` holds (e.g. the [M/H]-dependent
``M_H_ERR`` limit). :meth:`Selection.apply` returns the boolean mask of the stars
that pass every cut and a :class:`SelectionReport` that lists, per cut in order, how
many stars it removed *sequentially* (among the survivors of the earlier cuts), how
many it would remove *alone* (from the full input), and how many of those it
removed because the value was missing.

Columns are read in their native survey formats and units:

* APOGEE DR17 allStar: ``ASPCAPFLAG`` (64-bit integer bitmask), ``ASPCAP_CHI2``,
  per-element flags ``X_H_FLAG`` (integer, 0 = good; e.g. ``FE_H_FLAG``), label
  uncertainties ``TEFF_ERR`` (K), ``LOGG_ERR``, ``M_H_ERR``, ``FE_H_ERR``,
  ``ALPHA_M_ERR`` (dex) and labels ``M_H``, ``FE_H`` (dex);
* Gaia DR3: ``parallax``, ``parallax_error`` (mas), ``ruwe``,
  ``rvs_spec_sig_to_noise`` (per pixel), ``phot_[g|bp|rp]_mean_flux_over_error``,
  ``in_galaxy_candidates`` / ``in_qso_candidates`` / ``has_xp_continuous`` (bool),
  ``phot_variable_flag`` (string: ``VARIABLE`` / ``CONSTANT`` / ``NOT_AVAILABLE``),
  ``non_single_star`` (integer), ``classlabel_espels`` (string, null unless the star
  is an emission-line star).

Column names are matched exactly first, then case-insensitively (APOGEE uses upper
case, the Gaia archive lower case); a column that is absent raises
:class:`~kielnet.errors.InputError` naming it.

Missing values — masked cells (FITS TNULL, Parquet nulls), NaN, empty strings — make
a star *fail* a cut (and are counted in ``missing``); they are never silently kept.
The one exception is the operator ``is_null``, whose purpose is to keep stars with
a missing value (Gaia's ``classlabel_espels == NaN`` emission-line filter).

Operators: ``<  <=  >  >=  ==  !=`` (numbers, or strings for ``==``/``!=``),
``bit_clear`` / ``bit_set`` (``value`` = bit index of an integer bitmask),
``is_true`` / ``is_false`` (boolean columns; 0/1 and true/false strings accepted)
and ``is_null``.

:data:`GAIA_RVS_TRAINING_CUTS` is the training-sample selection of the Gaia-RVS
hybrid CNN paper (Guiglion et al. 2024, A&A, "Beyond Gaia DR3"), §2.1–2.5;
:data:`GAIA_RVS_SAMPLE_CUTS` its §2.1–2.3 part, applied to every RVS spectrum
(training and observed samples). Duplicate removal by Gaia ``source_id`` (§2.4) is
a cross-match step, not a per-star cut, and is not part of these lists.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import yaml
from astropy.table import Table
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kielnet.data.splits import crc32_buckets
from kielnet.errors import ConfigError, InputError

__all__ = ["Condition", "Cut", "Selection", "CutCount", "SelectionReport", "load_selection", "combine_selections",
           "star_columns", "select_stars",
           "GAIA_RVS_SAMPLE_CUTS", "GAIA_RVS_TRAINING_CUTS", "XP_TRAIN", "XP_TEST_FIFTH", "SELECTIONS"]

Comparison = Literal["<", "<=", ">", ">=", "==", "!="]
Op = Literal["<", "<=", ">", ">=", "==", "!=", "bit_clear", "bit_set", "is_true", "is_false", "is_null"]
Scalar = bool | int | float | str

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}
_TRUE_STRINGS = {"true", "t", "1", "yes", "y"}
_FALSE_STRINGS = {"false", "f", "0", "no", "n"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Condition(_Strict):
    """Where a cut applies: rows with ``column <op> value`` (rows with a missing
    ``column`` value fail the cut, since it is unknown whether it applies)."""

    column: str
    op: Comparison
    value: Scalar


class Cut(_Strict):
    """One selection criterion: keep stars with ``column [/ divide_by] <op> value``.

    Parameters
    ----------
    name
        Short identifier used in the report.
    column
        Column tested (native survey name, e.g. ``ASPCAP_CHI2`` or ``ruwe``).
    op
        Operator (see module docstring).
    value
        Threshold / value compared with; for ``bit_clear`` / ``bit_set`` the bit
        index (0–63); ``None`` for ``is_true`` / ``is_false`` / ``is_null``.
    divide_by
        If given, the cut tests ``column / divide_by`` (numeric comparisons only).
    when
        If given, the cut only applies where the condition holds; other stars pass.
    description
        Free text (threshold in words, units, source section).
    """

    name: str = Field(min_length=1)
    column: str = Field(min_length=1)
    op: Op
    value: Scalar | None = None
    divide_by: str | None = None
    hash_modulus: int | None = Field(
        default=None, ge=2, description="if given, the cut tests crc32(text of column) % hash_modulus: a "
                                        "reproducible split by id (e.g. the XP test fifth: column id, "
                                        "hash_modulus 5, op '==', value 0)")
    when: Condition | None = None
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> "Cut":
        if self.op in _COMPARE:
            if self.value is None:
                raise ValueError(f"cut '{self.name}': operator '{self.op}' needs a value")
            if isinstance(self.value, str) and self.op not in ("==", "!="):
                raise ValueError(f"cut '{self.name}': strings can only be compared with == or !=")
        elif self.op in ("bit_clear", "bit_set"):
            if isinstance(self.value, bool) or not isinstance(self.value, int) or not 0 <= self.value <= 63:
                raise ValueError(f"cut '{self.name}': '{self.op}' needs an integer bit index 0-63 as value")
        elif self.value is not None:
            raise ValueError(f"cut '{self.name}': operator '{self.op}' takes no value")
        if self.divide_by is not None and (self.op not in _COMPARE or isinstance(self.value, str)):
            raise ValueError(f"cut '{self.name}': divide_by needs a numeric comparison")
        if self.hash_modulus is not None and (self.op not in _COMPARE or isinstance(self.value, (str, bool))
                                              or not isinstance(self.value, int) or self.divide_by):
            raise ValueError(f"cut '{self.name}': hash_modulus needs an integer comparison and no divide_by")
        return self

    def columns(self) -> list[str]:
        """Every column the cut reads."""
        cols = [self.column]
        if self.divide_by is not None:
            cols.append(self.divide_by)
        if self.when is not None:
            cols.append(self.when.column)
        return cols

    def evaluate(self, table: Table, source: str = "<memory>") -> tuple[np.ndarray, np.ndarray]:
        """Test every row of ``table``.

        Returns
        -------
        passed, missing
            Boolean arrays of length ``len(table)``: ``passed`` is True where the star
            survives the cut; ``missing`` is True where it fails *because* a value the
            cut needs is missing (always False for ``is_null``).
        """
        n = len(table)
        if self.when is not None:
            cvals, cmiss = _column(table, self.when.column, source)
            applies = _compare(cvals, cmiss, self.when.op, self.when.value, self.when.column, source)
        else:
            cmiss = np.zeros(n, dtype=bool)
            applies = np.ones(n, dtype=bool)
        values, miss = _column(table, self.column, source)
        if self.op == "is_null":
            ok = miss
            miss = np.zeros(n, dtype=bool)
        elif self.op in ("is_true", "is_false"):
            truth = _as_bool(values, miss, self.column, source)
            ok = ~miss & (truth if self.op == "is_true" else ~truth)
        elif self.op in ("bit_clear", "bit_set"):
            data = np.asarray(values)
            if data.dtype.kind not in "iu":
                raise InputError(f"bitmask column must hold integers, found dtype {data.dtype}",
                                 source=source, field=self.column)
            bit = np.left_shift(np.array(1, dtype=data.dtype), np.array(self.value, dtype=data.dtype))
            is_set = np.bitwise_and(data, bit) != 0
            ok = ~miss & (~is_set if self.op == "bit_clear" else is_set)
        elif self.hash_modulus is not None:
            text = np.char.strip(np.asarray(values).astype(str))
            miss = miss | (text == "")
            buckets = crc32_buckets(text, self.hash_modulus)
            ok = _compare(buckets, miss, self.op, self.value, self.column, source)
        else:
            if self.divide_by is not None:
                den, dmiss = _column(table, self.divide_by, source)
                _require_numeric(values, self.column, source)
                _require_numeric(den, self.divide_by, source)
                with np.errstate(divide="ignore", invalid="ignore"):
                    values = np.asarray(values, dtype=np.float64) / np.asarray(den, dtype=np.float64)
                miss = miss | dmiss
            ok = _compare(values, miss, self.op, self.value, self.column, source)
        # a star the cut does not apply to passes; an unknown condition fails
        passed = np.where(cmiss, False, np.where(applies, ok, True))
        missing = cmiss | (applies & miss)
        return passed.astype(bool), missing.astype(bool)


def _column(table: Table, name: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """``(values, missing)`` of a 1-D column, matched exactly or case-insensitively."""
    names = list(table.colnames)
    if name not in names:
        folded = [c for c in names if c.lower() == name.lower()]
        if len(folded) != 1:
            why = "is missing" if not folded else f"is ambiguous (matches {folded})"
            raise InputError(f"selection column '{name}' {why}; columns: {names}", source=source, field=name)
        name = folded[0]
    col = table[name]
    mask = np.ma.getmaskarray(col)
    data = np.asarray(np.ma.getdata(col))
    if data.ndim != 1:
        raise InputError(f"selection column must be 1-D, found shape {data.shape}", source=source, field=name)
    if data.dtype.kind == "S":
        data = np.char.decode(data, "ascii", errors="replace")
    if data.dtype.kind == "O":
        none = np.array([v is None for v in data], dtype=bool)
        mask = mask | none
        data = np.array(["" if v is None else v for v in data])
        if data.dtype.kind == "S":
            data = np.char.decode(data, "ascii", errors="replace")
    if data.dtype.kind == "U":
        data = np.char.strip(data)
        mask = mask | (data == "")
    elif data.dtype.kind == "f":
        mask = mask | np.isnan(data)
    return data, np.asarray(mask, dtype=bool)


def _require_numeric(values: np.ndarray, name: str, source: str) -> None:
    if values.dtype.kind not in "biuf":
        raise InputError(f"column must be numeric for this cut, found dtype {values.dtype}",
                         source=source, field=name)


def _compare(values: np.ndarray, miss: np.ndarray, op: str, value: Scalar, name: str,
             source: str) -> np.ndarray:
    if isinstance(value, str):
        if values.dtype.kind != "U":
            raise InputError(f"column is not a string column but the cut compares it with '{value}'",
                             source=source, field=name)
        res = _COMPARE[op](values, value.strip())
    else:
        _require_numeric(values, name, source)
        with np.errstate(invalid="ignore"):
            res = _COMPARE[op](values, value)
    return ~miss & np.asarray(res, dtype=bool)


def _as_bool(values: np.ndarray, miss: np.ndarray, name: str, source: str) -> np.ndarray:
    kind = values.dtype.kind
    if kind == "b":
        return values.astype(bool)
    if kind in "iuf":
        ok = miss | np.isin(values, (0, 1))
        if not ok.all():
            raise InputError(f"boolean column holds values other than 0/1, e.g. {values[~ok][0]}",
                             source=source, field=name)
        return values == 1
    if kind == "U":
        low = np.char.lower(values)
        ok = miss | np.isin(low, list(_TRUE_STRINGS | _FALSE_STRINGS))
        if not ok.all():
            raise InputError(f"boolean column holds '{values[~ok][0]}'", source=source, field=name)
        return np.isin(low, list(_TRUE_STRINGS))
    raise InputError(f"column is not boolean (dtype {values.dtype})", source=source, field=name)


@dataclass(frozen=True)
class CutCount:
    """Stars removed by one cut: ``removed`` sequentially (among the survivors of the
    earlier cuts), ``removed_alone`` from the full input, ``missing`` of the latter
    because a needed value was missing, and ``remaining`` after this cut."""

    name: str
    removed: int
    removed_alone: int
    missing: int
    remaining: int


@dataclass(frozen=True)
class SelectionReport:
    """Per-cut counts of :meth:`Selection.apply`, in the order the cuts were applied."""

    n_input: int
    n_selected: int
    cuts: list[CutCount] = field(default_factory=list)

    def to_table(self) -> Table:
        """The report as a table (one row per cut)."""
        return Table(rows=[(c.name, c.removed, c.removed_alone, c.missing, c.remaining) for c in self.cuts],
                     names=("cut", "removed", "removed_alone", "missing", "remaining"),
                     dtype=(str, np.int64, np.int64, np.int64, np.int64))

    def to_dict(self) -> dict:
        """Plain-data form (for bundles and logs)."""
        return {"n_input": self.n_input, "n_selected": self.n_selected,
                "cuts": [dict(c.__dict__) for c in self.cuts]}

    def __str__(self) -> str:
        width = max([len(c.name) for c in self.cuts] + [3])
        lines = [f"{'cut':<{width}}  {'removed':>9}  {'alone':>9}  {'missing':>9}  {'remaining':>9}",
                 f"{'(input)':<{width}}  {'':>9}  {'':>9}  {'':>9}  {self.n_input:>9}"]
        lines += [f"{c.name:<{width}}  {c.removed:>9}  {c.removed_alone:>9}  {c.missing:>9}  {c.remaining:>9}"
                  for c in self.cuts]
        lines.append(f"selected {self.n_selected} of {self.n_input}")
        return "\n".join(lines)


class Selection(_Strict):
    """An ordered list of cuts (see module docstring)."""

    name: str = "selection"
    description: str = ""
    cuts: list[Cut] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> "Selection":
        names = [c.name for c in self.cuts]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"cut names must be unique, repeated: {dup}")
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<memory>") -> "Selection":
        """Build from a mapping (as written by :meth:`to_dict`); raises :class:`ConfigError`."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(f"invalid selection in {source}:\n{exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON/YAML serialisable; unset options are left out)."""
        return self.model_dump(exclude_none=True, exclude_defaults=True)

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict`."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def columns(self) -> list[str]:
        """Every column any cut reads, in order of first use."""
        out: list[str] = []
        for c in self.cuts:
            out += [x for x in c.columns() if x not in out]
        return out

    def apply(self, table: Table, source: str | None = None) -> tuple[np.ndarray, SelectionReport]:
        """Apply the cuts in order.

        Parameters
        ----------
        table
            Input catalogue (astropy Table; masked columns allowed).
        source
            File the table came from, for error messages (default: ``table.meta['source']``
            or ``<memory>``).

        Returns
        -------
        mask, report
            ``mask`` (bool, one per row) is True for stars passing every cut;
            ``report`` gives the per-cut counts.
        """
        src = source or str(getattr(table, "meta", {}).get("source", "<memory>"))
        for c in self.columns():  # fail on a missing column before doing any work
            _column(table, c, src)
        n = len(table)
        keep = np.ones(n, dtype=bool)
        counts = []
        for cut in self.cuts:
            passed, missing = cut.evaluate(table, src)
            removed = int(np.count_nonzero(keep & ~passed))
            keep &= passed
            counts.append(CutCount(cut.name, removed, int(np.count_nonzero(~passed)),
                                   int(np.count_nonzero(missing)), int(np.count_nonzero(keep))))
        return keep, SelectionReport(n, int(np.count_nonzero(keep)), counts)


def star_columns(table) -> Table:
    """The per-star columns of a :class:`~kielnet.data.startable.StarTable` as an astropy
    Table for cuts: ``id``, the scalar inputs, the labels, their errors as ``<label>_err``
    and the pass-through columns (no spectra)."""
    cols = {"id": np.asarray(table.ids)}
    cols.update({k: np.asarray(v) for k, v in table.scalars.items()})
    cols.update({k: np.asarray(v) for k, v in table.labels.items()})
    cols.update({f"{k}_err": np.asarray(v) for k, v in (table.label_errs or {}).items()})
    for k, v in table.extra.items():
        cols.setdefault(k, np.asarray(v))
    return Table(cols, meta={"source": table.source})


def select_stars(table, selection: "Selection"):
    """Apply ``selection`` to a StarTable's per-star columns (:func:`star_columns`):
    ``(selected StarTable, SelectionReport)``."""
    mask, report = selection.apply(star_columns(table), source=table.source)
    return table.take(mask), report


def load_selection(spec: str | Path | Mapping[str, Any]) -> Selection:
    """A :class:`Selection` from a mapping, a registered name (:data:`SELECTIONS`, e.g.
    ``gaia-rvs-training``, ``xp-train``), a YAML file path or YAML text."""
    if isinstance(spec, Mapping):
        return Selection.from_dict(spec)
    if isinstance(spec, str) and spec in SELECTIONS:
        return SELECTIONS[spec]
    text, source = str(spec), "<text>"
    path = Path(spec) if isinstance(spec, Path) or "\n" not in text else None
    if path is not None and path.suffix.lower() in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"selection file {path} does not exist")
        text, source = path.read_text(), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"selection in {source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"selection in {source} must hold a mapping at top level")
    return Selection.from_dict(data, source=source)


def combine_selections(selections: Sequence[Selection]) -> Selection:
    """One selection applying the cuts of ``selections`` in order: a star is kept when
    every one keeps it (e.g. the XP library's training part, then a label cleaning). Its
    name joins theirs with ``+``; a single selection comes back unchanged. Raises
    :class:`ConfigError` where two of them hold a cut of the same name."""
    selections = list(selections)
    if not selections:
        raise ConfigError("no selection to combine")
    if len(selections) == 1:
        return selections[0]
    names = [c.name for s in selections for c in s.cuts]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"selections {[s.name for s in selections]} both hold cuts named {dup}: rename one "
                          "to apply them together")
    return Selection(name="+".join(s.name for s in selections),
                     description="; then ".join(s.description or s.name for s in selections),
                     cuts=[c for s in selections for c in s.cuts])


# ------------------------------------------------------------ Gaia-RVS hybrid CNN
_SAMPLE_CUTS = [
    # §2.1 (Gaia DR3 flags)
    Cut(name="not_galaxy_candidate", column="in_galaxy_candidates", op="is_false",
        description="§2.1: in_galaxy_candidates = False"),
    Cut(name="not_qso_candidate", column="in_qso_candidates", op="is_false",
        description="§2.1: in_qso_candidates = False"),
    Cut(name="not_variable", column="phot_variable_flag", op="!=", value="VARIABLE",
        description="§2.1: phot_variable_flag != 'VARIABLE'"),
    Cut(name="single_star", column="non_single_star", op="==", value=0,
        description="§2.1: non_single_star = 0 (no binarity signs)"),
    # §2.2 (photometry, parallaxes)
    Cut(name="g_flux_over_error", column="phot_g_mean_flux_over_error", op=">", value=500.0,
        description="§2.2: phot_g_mean_flux_over_error > 500"),
    Cut(name="bp_flux_over_error", column="phot_bp_mean_flux_over_error", op=">", value=500.0,
        description="§2.2: phot_bp_mean_flux_over_error > 500"),
    Cut(name="rp_flux_over_error", column="phot_rp_mean_flux_over_error", op=">", value=500.0,
        description="§2.2: phot_rp_mean_flux_over_error > 500"),
    Cut(name="positive_parallax", column="parallax", op=">", value=0.0,
        description="§2.2: negative parallaxes removed (parallax > 0 mas)"),
    # §2.3 (XP coefficients, emission)
    Cut(name="has_xp_continuous", column="has_xp_continuous", op="is_true",
        description="§2.3: has_xp_continuous = True"),
    Cut(name="no_emission_class", column="classlabel_espels", op="is_null",
        description="§2.3: classlabel_espels == NaN (no emission-line class)"),
]

_APOGEE_CUTS = [
    # §2.4 (APOGEE DR17 labels)
    Cut(name="aspcap_star_warn", column="ASPCAPFLAG", op="bit_clear", value=7,
        description="§2.4: ASPCAPFLAG bit 7 (STAR_WARN) not set"),
    Cut(name="aspcap_star_bad", column="ASPCAPFLAG", op="bit_clear", value=23,
        description="§2.4: ASPCAPFLAG bit 23 (STAR_BAD) not set"),
    Cut(name="aspcap_chi2", column="ASPCAP_CHI2", op="<", value=25.0,
        description="§2.4: ASPCAP_CHI2 < 25"),
    Cut(name="fe_h_flag", column="FE_H_FLAG", op="==", value=0,
        description="§2.4: [Fe/H] element flag = 0 (printed 'E_H_FLAG' in the paper)"),
    Cut(name="teff_err", column="TEFF_ERR", op="<", value=100.0,
        description="§2.4: TEFF_ERR < 100 K"),
    Cut(name="logg_err", column="LOGG_ERR", op="<", value=0.1,
        description="§2.4: LOGG_ERR < 0.1 dex"),
    Cut(name="m_h_err_metal_poor", column="M_H_ERR", op="<", value=0.2,
        when=Condition(column="M_H", op="<", value=-0.5),
        description="§2.4: M_H_ERR < 0.2 dex where M_H < -0.5 dex"),
    Cut(name="m_h_err_metal_rich", column="M_H_ERR", op="<", value=0.1,
        when=Condition(column="M_H", op=">=", value=-0.5),
        description="§2.4: M_H_ERR < 0.1 dex where M_H >= -0.5 dex (M_H = -0.5 exactly is "
                    "not specified in the paper; the stricter limit is used)"),
    Cut(name="fe_h_err_metal_poor", column="FE_H_ERR", op="<", value=0.2,
        when=Condition(column="FE_H", op="<", value=-0.5),
        description="§2.4: FE_H_ERR < 0.2 dex where FE_H < -0.5 dex"),
    Cut(name="fe_h_err_metal_rich", column="FE_H_ERR", op="<", value=0.1,
        when=Condition(column="FE_H", op=">=", value=-0.5),
        description="§2.4: FE_H_ERR < 0.1 dex where FE_H >= -0.5 dex"),
    Cut(name="alpha_m_err", column="ALPHA_M_ERR", op="<", value=0.1,
        description="§2.4: ALPHA_M_ERR < 0.1 dex"),
]

_TRAINING_ONLY_CUTS = [
    # §2.5 (training sample only)
    Cut(name="rvs_snr", column="rvs_spec_sig_to_noise", op=">=", value=30.0,
        description="§2.5: rvs_spec_sig_to_noise >= 30 per pixel"),
    Cut(name="parallax_rel_error", column="parallax", divide_by="parallax_error", op=">", value=5.0,
        description="§2.5: parallax errors below 20%, i.e. parallax_error/parallax < 0.2, tested as "
                    "parallax/parallax_error > 5 so that negative parallaxes fail too"),
    Cut(name="ruwe", column="ruwe", op="<", value=1.4,
        description="§2.5: RUWE < 1.4"),
]

#: §2.1–2.3: cuts applied to every Gaia-RVS spectrum (training and observed samples).
GAIA_RVS_SAMPLE_CUTS = Selection(
    name="gaia_rvs_sample",
    description="Guiglion et al. 2024 §2.1-2.3: Gaia DR3 quality cuts on the RVS sample",
    cuts=_SAMPLE_CUTS)

#: §2.1–2.5: the full training-sample selection (Gaia DR3 × APOGEE DR17 cross-match).
GAIA_RVS_TRAINING_CUTS = Selection(
    name="gaia_rvs_training",
    description="Guiglion et al. 2024 §2.1-2.5: Gaia-RVS hybrid CNN training sample "
                "(Gaia DR3 cuts, APOGEE DR17 label quality, S/N, astrometry)",
    cuts=_SAMPLE_CUTS + _APOGEE_CUTS + _TRAINING_ONLY_CUTS)


# ------------------------------------------------------------ XP library split
#: the XP library's fixed test fifth: crc32(APOGEE id) % 5 == 0 (benchmarks/xp_library.py)
XP_TEST_FIFTH = Selection(
    name="xp_test_fifth", description="the XP library's test fifth: crc32(id) % 5 == 0 (score here once per "
                                      "released configuration)",
    cuts=[Cut(name="test_fifth", column="id", op="==", value=0, hash_modulus=5,
              description="crc32(APOGEE id) % 5 == 0")])
#: the other four fifths: what models, epochs and thresholds are chosen on
XP_TRAIN = Selection(
    name="xp_train", description="the XP library's training part: crc32(id) % 5 != 0",
    cuts=[Cut(name="not_test_fifth", column="id", op="!=", value=0, hash_modulus=5,
              description="crc32(APOGEE id) % 5 != 0")])

#: selections by name (``kielnet train/predict/evaluate --select NAME``)
SELECTIONS: dict[str, Selection] = {
    "gaia-rvs-training": GAIA_RVS_TRAINING_CUTS,
    "gaia-rvs-sample": GAIA_RVS_SAMPLE_CUTS,
    "xp-train": XP_TRAIN,
    "xp-test-fifth": XP_TEST_FIFTH,
}
