"""Spectral types and luminosity classes → training labels (APOGEE Net II §3.1).

APOGEE Net II (Sprague et al. 2022, §3.1) builds labels for hot stars, where direct
Teff / log g measurements are rare, from a literature spectral type (SpT) and
luminosity class (LC). This module holds the pieces of that recipe; it never reads
files (readers of calibration tables live in :mod:`kielnet.io.calibration`).

* :func:`parse_spectral_type` / :func:`parse_spectral_types`: MK strings → numbers.
  SpT: O = 0, B = 10, A = 20, F = 30, G = 40, K = 50, M = 60, L = 70, T = 80, Y = 90
  plus the subclass (``"B2.5"`` → 12.5, a bare ``"K"`` → 50). LC: I … V → 1 … 5
  (0, Ia+, Ia, Iab, Ib are all class I = 1; VI = 6). Ranges are averaged
  (``"IV-V"`` → 4.5, ``"G8/K0"`` → 49).
* :class:`SpTCalibration`: a trainable (SpT, LC) → (Teff in K, log g in dex [cgs])
  transformation — Gaussian-process regression in (SpT/10, LC) on log10 Teff and
  log g, with a per-prediction ``outside_support`` flag and a JSON-able state.
* :func:`labels_from_spectral_types`: spectral-type strings → per-star Teff / log g
  (NaN where not parsed or outside the calibration's support) with a status saying why.
* :func:`training_sample_rule`: the §3.1 cut on APOGEE Net I labels
  (keep Teff < 6700 K or log g < 11.3·log10 Teff − 40).
* :func:`fill_hot_star_metallicity`: [Fe/H] (dex) forced to 0 for hot stars
  (Teff > 6500 K) that have none, with a flag.

Units: Teff in K, log g in dex (cgs, log10 of g in cm s⁻²), [Fe/H] in dex; SpT and LC
are dimensionless codes as above.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Kernel, Matern, WhiteKernel

from kielnet.errors import InputError

__all__ = ["ParsedSpT", "parse_spectral_type", "parse_spectral_types", "SPT_LETTERS",
           "SpTLabels", "SpTCalibration", "StarSpTLabels", "labels_from_spectral_types",
           "STATUS_OK", "STATUS_OUTSIDE_SUPPORT", "STATUS_NO_LUM_CLASS", "STATUS_UNPARSED",
           "training_sample_rule", "fill_hot_star_metallicity",
           "TRAINING_TEFF_MAX", "HOT_STAR_TEFF_MIN"]

#: Numeric code of each spectral letter (the subclass is added to it).
SPT_LETTERS: dict[str, float] = {"O": 0.0, "B": 10.0, "A": 20.0, "F": 30.0, "G": 40.0,
                                 "K": 50.0, "M": 60.0, "L": 70.0, "T": 80.0, "Y": 90.0}
#: §3.1: APOGEE Net I labels are kept below this Teff (K) without further condition.
TRAINING_TEFF_MAX = 6700.0
#: §3.1: [Fe/H] is forced to 0 (and not reported) above this Teff (K).
HOT_STAR_TEFF_MIN = 6500.0

_ROMAN = {"0": 1.0, "I": 1.0, "II": 2.0, "III": 3.0, "IV": 4.0, "V": 5.0, "VI": 6.0}
_PREFIX_LC = {"sd": 6.0, "esd": 6.0, "usd": 6.0, "d": 5.0, "g": 3.0, "c": 1.0}


# ----------------------------------------------------------------------------- parser
@dataclass(frozen=True)
class ParsedSpT:
    """One parsed spectral type.

    Attributes
    ----------
    spt
        Numeric spectral type (O0 = 0 … Y9 = 99), NaN when not ``ok``.
    lum_class
        Numeric luminosity class (I = 1 … V = 5, VI/subdwarf = 6), NaN when none is given
        or when not ``ok``.
    multiple
        The string names more than one star (``"B2V+B3V"``, ``"... SB2"``); ``spt`` and
        ``lum_class`` then describe the first component.
    ok
        The string was understood. ``ok=False`` ⇒ ``spt`` and ``lum_class`` are NaN.
    reason
        Why not ``ok``; for ``ok`` strings an empty string or a short note on an
        interpretation made (prefix, Am-star notation, …).
    """

    spt: float
    lum_class: float
    multiple: bool
    ok: bool
    reason: str = ""


def _fail(reason: str, multiple: bool = False) -> ParsedSpT:
    return ParsedSpT(math.nan, math.nan, multiple, False, reason)


_LET = "OBAFGKMLTY"
_NUM = r"\d+(?:\.\d+)?"
_LC_ONE = r"(?:VI|IV|V(?!ar)|I{1,3}|0)(?:a\+|ab|a|b|\+)?"
_MAIN = re.compile(
    rf"""^(?P<prefix>esd|usd|sd|d|g|c)?
         (?P<l1>[{_LET}])\s*(?P<s1>{_NUM})?
         (?:\s*[-/]\s*(?:(?P<l2>[{_LET}])\s*(?P<s2a>{_NUM})?|(?P<s2b>{_NUM})))?
         \s*
         (?:(?P<lc1>{_LC_ONE})(?:\s*[-/]\s*(?P<lc2>{_LC_ONE}|ab|a|b))?)?
         (?P<rest>.*)$""", re.X | re.I | re.S)
# Peculiarity / remark tokens tolerated after the type and class.
_ELEMENTS = "Si|Sr|Cr|Eu|Hg|Mn|He|Ba|CN|CH|Fe|Ca|C2|Mg|Ti|Zr|Tc|Ni|Li|Nd|La|Ce|Sm|Hdel|Hd"
_SUFFIX = re.compile(
    rf"""(?:shell|pec|var|comp|neb|wk|wl|str|nne|nn|ne|ep|pe|sh|sb[12]?
         |(?:{_ELEMENTS})(?:[+\-]?{_NUM})?
         |[epnvskmwhfz]\+?|\.{{2,}}|\+)""", re.X | re.I)
_SEP = re.compile(r"[\s,;/.\-]+")
_WHITE_DWARF = re.compile(r"^(?:WD|wd|D[ABOQZCX])")  # uppercase D: "dA5" is an old-style dwarf A5
_WOLF_RAYET = re.compile(r"^W[NCOR]")
_CARBON = re.compile(r"^(?:C(?:-?[RNHJ]|[\d,\s\-]|$)|[NR](?:\d|$))")
_S_TYPE = re.compile(r"^(?:S|MS|SC)(?:[\d\s/,]|$)")
_COMPONENT = re.compile(rf"^(?:(?:esd|usd|sd|d|g|c)?[{_LET}]|WD|D[ABOQZCX]|W[NCOR]|\.\.\.|\?)", re.I)
_AM = re.compile(rf"^k[{_LET}]{_NUM}?\s*h(?P<h>[{_LET}]{_NUM}?)\s*m[{_LET}]{_NUM}?(?P<rest>.*)$", re.I | re.S)


def _strip_remarks(s: str) -> str:
    """Remove parenthesised / bracketed remarks (``(n)``, ``((f))``, ``[e]``)."""
    prev = None
    while prev != s:
        prev, s = s, re.sub(r"\([^()]*\)|\[[^\[\]]*\]", " ", s)
    return s.replace("(", " ").replace(")", " ").replace("[", " ").replace("]", " ")


def _split_components(s: str) -> tuple[str, bool]:
    """First component of ``"A+B"`` and whether there was a companion. A '+' that ends
    the string or is followed by a remark (``Ia+``, ``Ia+e``, ``Fe+0.5``) is no split."""
    for m in re.finditer(r"\+", s):
        tail = s[m.end():].lstrip()
        if tail and _COMPONENT.match(tail):
            return s[:m.start()].strip(), True
    return s, False


def _lc_value(token: str) -> float:
    roman = re.match(r"(VI|IV|V|I{1,3}|0)", token, re.I).group(1).upper()
    return _ROMAN[roman]


def _spt_value(letter: str, sub: str | None) -> float:
    value = float(sub) if sub else 0.0
    if not value < 10.0:
        raise ValueError(f"subclass {sub} is not below 10")
    return SPT_LETTERS[letter.upper()] + value


def parse_spectral_type(s: Any) -> ParsedSpT:
    """Parse one MK spectral type string into numeric SpT and luminosity class.

    Never raises: anything not understood gives ``ok=False`` with a ``reason``.

    Grammar (case-insensitive, whitespace tolerated)::

        [prefix] letter [subclass] [(-|/) [letter] subclass] [LC [(-|/) LC]] [remarks]

    * letter: O B A F G K M L T Y → 0 … 90; subclass added (``"B2.5"`` → 12.5; no
      subclass → 0, so ``"K"`` → 50). Subclass must be < 10.
    * spectral ranges are averaged: ``"B1-2"`` → 11.5, ``"G8/K0"`` → 49 (a range wider
      than one spectral class is refused).
    * LC: 0, Ia+, Ia, Iab, Ib, I → 1; II → 2; III → 3; IV → 4; V → 5; VI → 6; trailing
      a/b/ab (``"IIIb"``, ``"Va"``) are ignored; ranges averaged (``"IV-V"`` → 4.5).
      A lowercase ``v`` counts as class V (``"g2v"``), except in ``"var"``.
    * prefixes: ``sd``/``esd``/``usd`` (subdwarf) → LC 6 (MK class VI; the
      calibrations hold no class VI, so such stars end up ``outside_support`` rather
      than silently treated as dwarfs); the old Mt Wilson ``d``/``g``/``c`` → 5/3/1
      unless an explicit class is given.
    * multiples: ``"O5+O9.5"``, ``"B2V+B3V"``, ``"K0III+DA"``, ``"... SB2"``, ``comp``
      → first component, ``multiple=True``.
    * remarks ignored: ``:`` and ``?`` (uncertainty), anything in ( ) or [ ], and
      peculiarity codes e, p, n, nn, s, k, m, w, h, f, z, var, pec, shell, sh, comp,
      neb, wk, SB, SB1, SB2 and element tags (Si, Sr, Cr, Eu, Hg, Mn, He, Ba, CN, CH,
      Fe-0.5, …). Am notation ``kA2hA5mA7V`` uses the hydrogen type (A5V).
    * not on the MK scale → ``ok=False``: white dwarfs (DA, DB, …, WD), Wolf-Rayet
      (WN, WC, WO, WR), carbon (C, N, R) and S-type (S, MS, SC) stars.

    Parameters
    ----------
    s
        The spectral type, e.g. ``"B2.5IV-Ve"``. Non-strings give ``ok=False``.

    Returns
    -------
    ParsedSpT
    """
    if not isinstance(s, str):
        return _fail(f"not a string: {s!r}")
    unknown_companion = re.search(r"\+\s*\?", s) is not None
    text = _strip_remarks(s.replace(":", " ").replace("?", " "))
    text = re.sub(r"\s+", " ", text).strip()
    if not text or re.fullmatch(r"[.\-~ ]*", text):
        return _fail(f"empty spectral type {s!r}")
    if _WHITE_DWARF.match(text):
        return _fail(f"white dwarf {s!r} is not on the MK scale")
    if _WOLF_RAYET.match(text):
        return _fail(f"Wolf-Rayet type {s!r} is not on the MK scale")
    if _CARBON.match(text):
        return _fail(f"carbon-star type {s!r} is not on the MK scale")
    if _S_TYPE.match(text):
        return _fail(f"S-type {s!r} is not on the MK scale")

    first, multiple = _split_components(text)
    if unknown_companion and not multiple:  # "B2V+?": a companion of unknown type
        first, multiple = first.rstrip().rstrip("+").rstrip(), True
    notes = []
    am = _AM.match(first)
    if am:
        first = am.group("h") + am.group("rest")
        notes.append("Am notation: hydrogen type used")
    m = _MAIN.match(first)
    if m is None:
        return _fail(f"cannot parse spectral type {s!r}", multiple)

    try:
        lo = _spt_value(m.group("l1"), m.group("s1"))
        if m.group("l2") is not None or m.group("s2b") is not None:
            hi = (_spt_value(m.group("l2"), m.group("s2a")) if m.group("l2") is not None
                  else _spt_value(m.group("l1"), m.group("s2b")))
            if abs(hi - lo) > 10.0:
                return _fail(f"spectral range in {s!r} spans more than one class", multiple)
            spt = 0.5 * (lo + hi)
        else:
            spt = lo
    except ValueError as exc:
        return _fail(f"{exc} in {s!r}", multiple)

    # remarks after type and class: must all be known tokens
    rest = m.group("rest")
    pos, rest = 0, rest.strip()
    while pos < len(rest):
        sep = _SEP.match(rest, pos)
        if sep:
            pos = sep.end()
            continue
        tok = _SUFFIX.match(rest, pos)
        if tok is None or tok.end() == pos:
            return _fail(f"unrecognised text {rest[pos:]!r} in spectral type {s!r}", multiple)
        if tok.group(0).lower() in ("sb2", "comp"):
            multiple = True
        pos = tok.end()

    lc = math.nan
    if m.group("lc1") is not None:
        lc = _lc_value(m.group("lc1"))
        lc2 = m.group("lc2")
        if lc2 is not None and lc2.lower() not in ("a", "b", "ab"):
            lc = 0.5 * (lc + _lc_value(lc2))
    prefix = (m.group("prefix") or "").lower()
    if prefix in ("sd", "esd", "usd"):
        if not math.isnan(lc) and lc != 6.0:
            notes.append(f"subdwarf prefix '{prefix}' overrides class {m.group('lc1')}")
        lc = 6.0
        notes.append("subdwarf: luminosity class 6 (VI)")
    elif prefix:
        if math.isnan(lc):
            lc = _PREFIX_LC[prefix]
            notes.append(f"luminosity class {lc:g} from prefix '{prefix}'")
        else:
            notes.append(f"explicit class used, prefix '{prefix}' ignored")
    return ParsedSpT(float(spt), float(lc), bool(multiple), True, "; ".join(notes))


def parse_spectral_types(values: Iterable[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised :func:`parse_spectral_type`.

    Parameters
    ----------
    values
        Spectral-type strings (None, NaN, masked or other non-strings give ``ok=False``).

    Returns
    -------
    spt, lum_class : numpy.ndarray of float64
        NaN where not parsed / no class given.
    multiple, ok : numpy.ndarray of bool
    """
    parsed = [parse_spectral_type(v) for v in values]
    return (np.array([p.spt for p in parsed], dtype=np.float64),
            np.array([p.lum_class for p in parsed], dtype=np.float64),
            np.array([p.multiple for p in parsed], dtype=bool),
            np.array([p.ok for p in parsed], dtype=bool))


# ------------------------------------------------------------------------ calibration
@dataclass
class SpTLabels:
    """Labels predicted by :meth:`SpTCalibration.predict` (one entry per star).

    ``teff`` in K, ``logg`` in dex; ``teff_err`` / ``logg_err`` are the 1σ Gaussian-process
    predictive uncertainties (fitted scatter of the calibration included);
    ``outside_support`` marks extrapolations (see :meth:`SpTCalibration.outside_support`).
    Non-finite inputs give NaN labels and ``outside_support=True``.
    """

    teff: np.ndarray
    logg: np.ndarray
    teff_err: np.ndarray
    logg_err: np.ndarray
    outside_support: np.ndarray


def _make_kernel(n_dim: int) -> Kernel:
    length = 0.5 if n_dim == 1 else [0.5, 1.0]
    return (ConstantKernel(1.0, (1e-2, 1e2))
            * Matern(length_scale=length, length_scale_bounds=(1e-2, 1e2), nu=2.5)
            + WhiteKernel(1e-3, (1e-7, 1.0)))


def _as_1d(name: str, x: Any, n: int | None = None) -> np.ndarray:
    v = np.atleast_1d(np.asarray(x, dtype=np.float64))
    if v.ndim != 1:
        raise InputError(f"{name} must be one-dimensional, got shape {v.shape}", field=name)
    if n is not None and v.size != n:
        raise InputError(f"{name} has {v.size} values but spt has {n}", field=name)
    return v


class SpTCalibration:
    """Trainable (SpT, LC) → (Teff, log g) transformation.

    The paper interpolates its 851-star literature compilation with a small CNN;
    here the same role is played by scikit-learn Gaussian-process regression, which is
    smooth, handles scattered and noisy literature points (a fitted white-noise term)
    and gives a predictive uncertainty. Inputs are ``(SpT/10, LC)`` — one spectral
    class and one luminosity class are both one unit — and the targets are
    ``log10 Teff`` and ``log g``, each with its own GP (anisotropic Matérn-5/2 kernel ×
    constant + white noise, targets standardised, hyper-parameters by maximum
    likelihood). A calibration with one luminosity class only (e.g. the Mamajek
    dwarf sequence) uses SpT alone. Cost grows as n³: fine up to a few thousand rows.

    Parameters
    ----------
    lc_tolerance
        A query LC is inside the calibration when it lies within the fitted LC range
        and within this distance of a fitted LC (default 0.5: IV-V = 4.5 is supported
        by fitted IV or V; class IV is *not* supported by III and V alone).
    max_gap
        Largest distance (SpT units, i.e. subclasses) from the nearest calibration
        point of the neighbouring LC(s) that still counts as interpolation.
    n_restarts
        Optimiser restarts of the GP hyper-parameter fit.
    random_state
        Seed of those restarts (fits are deterministic).
    """

    def __init__(self, *, lc_tolerance: float = 0.5, max_gap: float = 5.0, n_restarts: int = 1,
                 random_state: int = 0) -> None:
        self.lc_tolerance = float(lc_tolerance)
        self.max_gap = float(max_gap)
        self.n_restarts = int(n_restarts)
        self.random_state = int(random_state)
        self._spt: np.ndarray | None = None
        self._lc: np.ndarray | None = None
        self._targets: dict[str, np.ndarray] = {}
        self._gps: dict[str, GaussianProcessRegressor] = {}

    # ------------------------------------------------------------------ state
    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`from_dict`) has run."""
        return self._spt is not None

    @property
    def lum_classes(self) -> np.ndarray:
        """Distinct luminosity classes of the calibration, sorted."""
        self._check_fitted()
        return np.unique(self._lc)

    def spt_range(self, lum_class: float) -> tuple[float, float]:
        """(min, max) SpT of the calibration rows of exactly this LC (NaNs if none)."""
        self._check_fitted()
        sel = np.isclose(self._lc, lum_class)
        if not sel.any():
            return (math.nan, math.nan)
        return (float(self._spt[sel].min()), float(self._spt[sel].max()))

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("SpTCalibration is not fitted; call fit() or from_dict() first")

    def _design(self, spt: np.ndarray, lc: np.ndarray) -> np.ndarray:
        if self.lum_classes.size == 1:
            return (spt / 10.0)[:, None]
        return np.column_stack([spt / 10.0, lc])

    # ------------------------------------------------------------------ fit
    def fit(self, spt: Sequence[float], lum_class: Sequence[float], teff: Sequence[float],
            logg: Sequence[float]) -> "SpTCalibration":
        """Fit on calibration rows.

        Parameters
        ----------
        spt, lum_class
            Numeric spectral type and luminosity class (see :func:`parse_spectral_type`).
        teff
            Effective temperature in K (> 0).
        logg
            Surface gravity in dex (cgs).

        Returns
        -------
        SpTCalibration
            ``self``.

        Raises
        ------
        InputError
            Non-finite values, Teff ≤ 0, mismatched lengths or fewer than 3 rows
            (``field`` and ``row`` name the first offending value).
        """
        s = _as_1d("spt", spt)
        cols = {"spt": s, "lum_class": _as_1d("lum_class", lum_class, s.size),
                "teff": _as_1d("teff", teff, s.size), "logg": _as_1d("logg", logg, s.size)}
        for name, v in cols.items():
            bad = np.flatnonzero(~np.isfinite(v))
            if bad.size:
                raise InputError(f"non-finite {name} value {v[bad[0]]!r}", field=name, row=int(bad[0]))
        bad = np.flatnonzero(cols["teff"] <= 0)
        if bad.size:
            raise InputError(f"Teff must be positive, got {cols['teff'][bad[0]]!r}", field="teff",
                             row=int(bad[0]))
        if s.size < 3:
            raise InputError(f"need at least 3 calibration rows, got {s.size}", field="spt")
        self._spt, self._lc = s.copy(), cols["lum_class"].copy()
        self._targets = {"log_teff": np.log10(cols["teff"]), "logg": cols["logg"].copy()}
        x = self._design(self._spt, self._lc)
        self._gps = {}
        for name, y in self._targets.items():
            gp = GaussianProcessRegressor(_make_kernel(x.shape[1]), normalize_y=True,
                                          n_restarts_optimizer=self.n_restarts,
                                          random_state=self.random_state)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                self._gps[name] = gp.fit(x, y)
        return self

    # ------------------------------------------------------------------ predict
    def outside_support(self, spt: Sequence[float], lum_class: Sequence[float]) -> np.ndarray:
        """True where (SpT, LC) is an extrapolation of the calibration.

        A star is outside when its SpT or LC is not finite; when its LC lies outside the
        fitted LC range or farther than ``lc_tolerance`` from every fitted LC; or when,
        for the fitted LC(s) it interpolates between (the equal one, else the nearest
        one below and above within ``lc_tolerance``), its SpT is outside that LC's fitted
        SpT range or farther than ``max_gap`` from every calibration point of that LC.
        """
        self._check_fitted()
        s = _as_1d("spt", spt)
        lc = _as_1d("lum_class", lum_class, s.size)
        out = ~(np.isfinite(s) & np.isfinite(lc))
        classes = self.lum_classes
        eps = 1e-9
        for q in np.unique(lc[~out]):
            rows = ~out & (lc == q)
            if q < classes[0] - eps or q > classes[-1] + eps:
                out[rows] = True
                continue
            exact = classes[np.abs(classes - q) <= eps]
            if exact.size:
                neighbours = exact
            else:
                below, above = classes[classes < q], classes[classes > q]
                neighbours = np.array([c for c in (below[-1], above[0]) if abs(c - q) <= self.lc_tolerance + eps])
            if neighbours.size == 0:
                out[rows] = True
                continue
            ok = np.ones(int(rows.sum()), dtype=bool)
            sq = s[rows]
            for c in neighbours:
                pts = np.sort(self._spt[np.isclose(self._lc, c)])
                ok &= (sq >= pts[0] - eps) & (sq <= pts[-1] + eps)
                idx = np.searchsorted(pts, sq)
                left, right = pts[np.clip(idx - 1, 0, pts.size - 1)], pts[np.clip(idx, 0, pts.size - 1)]
                near = np.minimum(np.abs(sq - left), np.abs(sq - right))
                ok &= near <= self.max_gap + eps
            out[rows] = ~ok
        return out

    def predict(self, spt: Sequence[float], lum_class: Sequence[float]) -> SpTLabels:
        """Teff (K) and log g (dex) for numeric SpT and LC.

        Parameters
        ----------
        spt, lum_class
            Numeric spectral type and luminosity class, e.g. from
            :func:`parse_spectral_types`. A calibration with a single LC ignores
            ``lum_class`` in the values (but not in ``outside_support``).

        Returns
        -------
        SpTLabels
        """
        self._check_fitted()
        s = _as_1d("spt", spt)
        lc = _as_1d("lum_class", lum_class, s.size)
        out = self.outside_support(s, lc)
        good = np.isfinite(s) & np.isfinite(lc)
        res = {k: np.full(s.size, np.nan) for k in ("log_teff", "logg", "log_teff_sd", "logg_sd")}
        if good.any():
            x = self._design(s[good], lc[good])
            for name, gp in self._gps.items():
                mean, sd = gp.predict(x, return_std=True)
                res[name][good], res[name + "_sd"][good] = mean, sd
        teff = np.power(10.0, res["log_teff"])
        return SpTLabels(teff=teff, logg=res["logg"], teff_err=teff * np.log(10.0) * res["log_teff_sd"],
                         logg_err=res["logg_sd"], outside_support=out)

    # ------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict:
        """JSON-able state: settings, calibration rows and fitted kernel hyper-parameters."""
        self._check_fitted()
        return {"kind": "SpTCalibration", "version": 1,
                "lc_tolerance": self.lc_tolerance, "max_gap": self.max_gap,
                "n_restarts": self.n_restarts, "random_state": self.random_state,
                "spt": self._spt.tolist(), "lum_class": self._lc.tolist(),
                "targets": {name: {"y": self._targets[name].tolist(),
                                   "theta": self._gps[name].kernel_.theta.tolist()}
                            for name in self._targets}}

    @classmethod
    def from_dict(cls, d: dict) -> "SpTCalibration":
        """Rebuild from :meth:`to_dict` without re-optimising (same predictions)."""
        if d.get("kind") != "SpTCalibration" or d.get("version") != 1:
            raise ValueError(f"not an SpTCalibration v1 state: kind={d.get('kind')!r}, "
                             f"version={d.get('version')!r}")
        self = cls(lc_tolerance=d["lc_tolerance"], max_gap=d["max_gap"], n_restarts=d["n_restarts"],
                   random_state=d["random_state"])
        self._spt = np.asarray(d["spt"], dtype=np.float64)
        self._lc = np.asarray(d["lum_class"], dtype=np.float64)
        x = self._design(self._spt, self._lc)
        for name, t in d["targets"].items():
            y = np.asarray(t["y"], dtype=np.float64)
            kernel = _make_kernel(x.shape[1]).clone_with_theta(np.asarray(t["theta"], dtype=np.float64))
            self._targets[name] = y
            self._gps[name] = GaussianProcessRegressor(kernel, normalize_y=True, optimizer=None).fit(x, y)
        return self


# ------------------------------------------------------------------- per-star labels
#: :attr:`StarSpTLabels.status` values (an unparsed type: ``"unparsed: <reason>"``)
STATUS_OK = "ok"
STATUS_OUTSIDE_SUPPORT = "outside_support"
STATUS_NO_LUM_CLASS = "no_luminosity_class"
STATUS_UNPARSED = "unparsed"


@dataclass
class StarSpTLabels:
    """Labels of stars from their spectral types (:func:`labels_from_spectral_types`),
    one entry per star in input order.

    ``spt``, ``lum_class``: numeric codes (NaN when not parsed / no class); ``multiple``:
    the type names several stars (the first is used); ``teff``, ``teff_err`` in K and
    ``logg``, ``logg_err`` in dex: finite only where ``status`` is ``"ok"``; ``status``:
    ``"ok"``, ``"outside_support"`` (an extrapolation of the calibration),
    ``"no_luminosity_class"`` (parsed, but no class given) or ``"unparsed: <reason>"``.
    """

    spt: np.ndarray
    lum_class: np.ndarray
    multiple: np.ndarray
    teff: np.ndarray
    teff_err: np.ndarray
    logg: np.ndarray
    logg_err: np.ndarray
    status: np.ndarray

    def counts(self) -> dict[str, int]:
        """Stars per outcome: ``total``, ``parsed``, ``unparsed``, ``no_luminosity_class``,
        ``outside_support``, ``labelled`` (status ``ok``)."""
        st = self.status.astype(str)
        unparsed = int(np.char.startswith(st, STATUS_UNPARSED).sum())
        return {"total": int(st.size), "parsed": int(st.size) - unparsed, "unparsed": unparsed,
                STATUS_NO_LUM_CLASS: int((st == STATUS_NO_LUM_CLASS).sum()),
                STATUS_OUTSIDE_SUPPORT: int((st == STATUS_OUTSIDE_SUPPORT).sum()),
                "labelled": int((st == STATUS_OK).sum())}


def labels_from_spectral_types(values: Iterable[Any], calibration: SpTCalibration) -> StarSpTLabels:
    """Teff (K) and log g (dex) of stars from their spectral types (APOGEE Net II §3.1).

    Each string is parsed (:func:`parse_spectral_type`) and the fitted ``calibration``
    predicts the labels with their 1σ GP uncertainties. No star is dropped: the labels
    are NaN where the type was not parsed, names no luminosity class, or lies outside
    the calibration's support (:meth:`SpTCalibration.outside_support`), and ``status``
    says which.

    Parameters
    ----------
    values
        Spectral-type strings, one per star (None / NaN / "" give ``"unparsed: ..."``).
    calibration
        A fitted :class:`SpTCalibration`.

    Returns
    -------
    StarSpTLabels
    """
    parsed = [parse_spectral_type(v) for v in values]
    spt = np.array([p.spt for p in parsed], dtype=np.float64)
    lc = np.array([p.lum_class for p in parsed], dtype=np.float64)
    status = np.array([STATUS_OK if p.ok else f"{STATUS_UNPARSED}: {p.reason}" for p in parsed], dtype=object)
    ok = np.array([p.ok for p in parsed], dtype=bool)
    status[ok & np.isnan(lc)] = STATUS_NO_LUM_CLASS
    pred = calibration.predict(spt, lc)
    status[(status == STATUS_OK) & pred.outside_support] = STATUS_OUTSIDE_SUPPORT
    good = status == STATUS_OK
    labelled = {k: np.where(good, getattr(pred, k), np.nan) for k in ("teff", "teff_err", "logg", "logg_err")}
    return StarSpTLabels(spt=spt, lum_class=lc, multiple=np.array([p.multiple for p in parsed], dtype=bool),
                         status=status.astype(str), **labelled)


# ------------------------------------------------------------------- sample rules
def training_sample_rule(teff: Sequence[float], logg: Sequence[float], *, teff_max: float = TRAINING_TEFF_MAX,
                         slope: float = 11.3, intercept: float = -40.0) -> np.ndarray:
    """Which APOGEE Net I labels to keep in the training sample (APOGEE Net II §3.1).

    Keep a star if ``Teff < 6700 K`` or ``log g < 11.3 · log10(Teff) − 40`` (the latter
    keeps hot giants and supergiants, whose earlier labels may be compressed).

    Parameters
    ----------
    teff
        Effective temperature in K.
    logg
        Surface gravity in dex.
    teff_max, slope, intercept
        The cut's constants (defaults from the paper).

    Returns
    -------
    numpy.ndarray of bool
        False where Teff is not finite / not positive, or where Teff ≥ ``teff_max`` and
        log g is not finite.
    """
    t = np.asarray(teff, dtype=np.float64)
    g = np.asarray(logg, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        logt = np.log10(np.where(t > 0, t, np.nan))
        keep = (t < teff_max) & (t > 0)
        keep |= g < slope * logt + intercept
    return keep


def fill_hot_star_metallicity(teff: Sequence[float], feh: Sequence[float], *,
                              teff_min: float = HOT_STAR_TEFF_MIN,
                              fill_value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Force [Fe/H] = 0 for hot stars without one (APOGEE Net II §3.1).

    Hot-star spectra have few metal lines, so requiring [Fe/H] would gut the hot
    training sample; the paper sets [Fe/H] = 0 where it is missing and does not report
    predicted [Fe/H] for ``Teff > 6500 K``. The same 6500 K is used here as the "hot"
    threshold, so every filled value lies where predictions are not reported anyway.

    Parameters
    ----------
    teff
        Effective temperature in K.
    feh
        [Fe/H] in dex; NaN where unavailable.
    teff_min
        Stars with ``Teff > teff_min`` (strictly) are hot.
    fill_value
        Value forced (dex).

    Returns
    -------
    feh_filled : numpy.ndarray of float64
        A copy of ``feh`` with the forced values.
    forced : numpy.ndarray of bool
        True where the value was forced (hot and non-finite [Fe/H]); measured values are
        never changed.
    """
    t = np.asarray(teff, dtype=np.float64)
    f = np.array(feh, dtype=np.float64, copy=True)
    if t.shape != f.shape:
        raise InputError(f"teff has shape {t.shape} but feh has {f.shape}", field="fe_h")
    with np.errstate(invalid="ignore"):
        forced = (t > teff_min) & ~np.isfinite(f)
    f[forced] = fill_value
    return f, forced
