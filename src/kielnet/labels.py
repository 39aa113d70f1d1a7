"""The label vocabulary: what each label is called, its unit, and how it is displayed.

A config declares its labels (:class:`kielnet.config.LabelConfig`: name, unit, display
name, description, valid range, column aliases). Labels kielnet knows get their unit,
display name, description and aliases from :data:`BUILTIN_LABELS` when the config leaves
them out; any other name is a label too, described only by what its config says.
Reading, training, σ, flags, catalogue columns, the report and the Table-2 writer all
take names, units and display names from here: nothing else hard-codes a label.

>>> label_info("teff").unit
'K'
>>> label_info("mg_fe", unit="dex", display="[Mg/Fe]").display
'[Mg/Fe]'
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import astropy.units as u

__all__ = ["LabelInfo", "BUILTIN_LABELS", "DEFAULT_TABLE_LABELS", "label_info", "display_name", "astropy_unit", "column_candidates"]


@dataclass(frozen=True)
class LabelInfo:
    """One label: ``name`` (catalogue column), ``unit`` (astropy unit string, "" for
    none), ``display`` (plot axis name, matplotlib mathtext allowed), ``description``
    (catalogue column description) and ``aliases`` (other column names a reference
    table may use for it, matched case-insensitively)."""

    name: str
    unit: str = ""
    display: str = ""
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def axis_label(self) -> str:
        """``display [unit]``, e.g. ``$T_{\\rm eff}$ [K]``."""
        return self.display + (f" [{self.unit}]" if self.unit else "")


def _b(name: str, unit: str, display: str, description: str, *aliases: str) -> LabelInfo:
    return LabelInfo(name, unit, display, description, tuple(aliases))


#: Labels kielnet knows by name (defaults for configs that leave fields out).
BUILTIN_LABELS: dict[str, LabelInfo] = {b.name: b for b in (
    _b("teff", "K", r"$T_{\rm eff}$", "Effective temperature", "teff_spec", "teff_k", "t_eff"),
    _b("logg", "dex", r"$\log g$", "Surface gravity (log10 of g in cm s-2)", "log_g", "logg_spec"),
    _b("fe_h", "dex", "[Fe/H]", "Iron abundance [Fe/H]", "feh", "[fe/h]", "fe_h_spec"),
    _b("m_h", "dex", "[M/H]", "Overall metallicity [M/H]", "mh", "[m/h]", "m_h_spec", "metallicity"),
    _b("alpha_m", "dex", r"[$\alpha$/M]", "Alpha-element enhancement [alpha/M]", "alpham", "alpha_fe",
       "[alpha/m]", "[alpha/fe]", "alpha_m_spec"),
    _b("ak_targ", "mag", r"$A_K$", "K-band extinction A_K (APOGEE targeting, RJCE)", "a_k", "ak"),
    _b("ebv", "mag", r"$E(B-V)$", "Reddening E(B-V)", "e_bv"),
    _b("vmic", "km / s", r"$v_{\rm mic}$", "Microturbulent velocity", "vmicro"),
    _b("vsini", "km / s", r"$v \sin i$", "Projected rotational velocity"),
    _b("mass", "solMass", r"$M$", "Stellar mass", "m"),
    _b("age", "Gyr", "age", "Stellar age"),
)}


#: columns of a plain table read as reference labels without a config (any other label,
#: e.g. ``mg_fe``, is found in the table's other columns by the config that learns it:
#: :func:`kielnet.data.label_columns.resolve_labels`)
DEFAULT_TABLE_LABELS: tuple[str, ...] = ("teff", "logg", "fe_h", "m_h", "alpha_m")


def label_info(name: str, *, unit: str | None = None, display: str | None = None,
               description: str | None = None, aliases: tuple[str, ...] | list[str] = ()) -> LabelInfo:
    """The description of label ``name``: given fields win over :data:`BUILTIN_LABELS`.

    An abundance named like ``mg_fe`` / ``c_fe`` / ``x_h`` gets ``[Mg/Fe]`` / ``[C/Fe]`` /
    ``[X/H]`` as display name and ``dex`` as unit when nothing else is known.
    """
    base = BUILTIN_LABELS.get(name) or _abundance(name) or LabelInfo(name, "", name, name)
    out = replace(base,
                  unit=base.unit if unit is None else unit,
                  display=base.display if display is None else display,
                  description=base.description if description is None else description)
    extra = tuple(a for a in aliases if a not in out.aliases)
    return replace(out, aliases=out.aliases + extra) if extra else out


def display_name(name: str) -> str:
    """Plot-axis name of a label known by name (:data:`BUILTIN_LABELS`, abundances such as
    ``mg_fe`` → ``[Mg/Fe]``), else the name itself."""
    return label_info(name).display


def _abundance(name: str) -> LabelInfo | None:
    parts = name.split("_")
    if len(parts) == 2 and all(p.isalpha() and 1 <= len(p) <= 2 for p in parts) and parts[1] in ("h", "fe", "m"):
        el, ref = parts[0].capitalize(), parts[1].capitalize() if parts[1] != "m" else "M"
        return LabelInfo(name, "dex", f"[{el}/{ref}]", f"Abundance [{el}/{ref}]", ())
    return None


def astropy_unit(unit: str) -> u.UnitBase | None:
    """The astropy unit of a label's unit string (``None`` for "" or an unknown string)."""
    if not unit:
        return None
    try:
        return u.Unit(unit)
    except ValueError:
        return None


def column_candidates(info: LabelInfo) -> tuple[str, ...]:
    """Column names that may hold ``info``'s values, in order of preference (lower case)."""
    seen: list[str] = []
    for c in (info.name, *info.aliases):
        c = c.lower()
        if c not in seen:
            seen.append(c)
    return tuple(seen)
