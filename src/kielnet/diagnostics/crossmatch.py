"""Cross-matching a kielnet catalogue with reference catalogues (GALAH, APOGEE, asteroseismic
or open-cluster samples), and the bias / σ / coverage table per label and regime.

Matches are made by identifier (Gaia ``source_id``, APOGEE id, kielnet ``id``: compared as
stripped text) or by sky position with astropy (:meth:`SkyCoord.match_to_catalog_sky`,
configurable radius). Residual = catalogue − reference, in the label's unit (Teff in K).
"""

from __future__ import annotations

from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

from kielnet.diagnostics.metrics import coverage_summary, label_metrics
from kielnet.quality.neighbours import INTERVAL_PREFIXES

__all__ = ["Match", "ID_COLUMNS", "match_by_id", "match_by_position", "crossmatch", "matched_table",
           "comparison_table", "reference_regimes"]

#: identifier columns tried, in order, by :func:`crossmatch` (catalogue name, reference names)
ID_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("source_id", ("source_id", "gaia_source_id", "gaiaedr3_source_id", "gaiadr3_source_id", "dr3_source_id")),
    ("apogee_id", ("apogee_id", "APOGEE_ID")),
    ("id", ("id", "apogee_id", "source_id", "star_id")),
)
RA_NAMES = ("ra", "RA", "raj2000", "RAJ2000", "ra_icrs")
DEC_NAMES = ("dec", "DEC", "dej2000", "DEJ2000", "dec_icrs")


@dataclass
class Match:
    """Matched rows: ``cat[i]`` ↔ ``ref[j]`` for ``i, j`` in ``zip(cat_index, ref_index)``.

    ``separation``: on-sky distance of each pair in arcsec (position matches), else None.
    ``by``: how the match was made (``"id:source_id=gaia_source_id"``, ``"position:1.0 arcsec"``).
    """

    cat_index: np.ndarray
    ref_index: np.ndarray
    by: str
    separation: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.cat_index.size)


def _keys(col) -> np.ndarray:
    """Identifier cells as stripped text; masked / empty / NaN cells become ``""`` (never matched)."""
    arr = np.ma.asarray(col)
    mask = np.ma.getmaskarray(arr)
    data = np.asarray(np.ma.getdata(arr))
    if data.dtype.kind == "f":  # float ids (e.g. from a masked integer column): exact integers only
        mask = mask | ~np.isfinite(data)
        text = np.where(mask, "", np.char.mod("%d", np.where(mask, 0, data).astype(np.int64)))
    else:
        text = np.char.strip(data.astype(str))
    return np.where(mask, "", text)


def match_by_id(cat_ids, ref_ids) -> Match:
    """Rows with equal identifiers (stripped text; empty never matches). A reference id that
    occurs more than once is matched to its first row."""
    a, b = _keys(cat_ids), _keys(ref_ids)
    order = np.argsort(b, kind="stable")
    sb = b[order]
    first = np.ones(sb.size, dtype=bool)
    first[1:] = sb[1:] != sb[:-1]
    sb, order = sb[first], order[first]
    pos = np.searchsorted(sb, a)
    pos_c = np.clip(pos, 0, max(sb.size - 1, 0))
    hit = (sb.size > 0) & (a != "")
    hit = hit & (sb[pos_c] == a) if sb.size else np.zeros(a.size, dtype=bool)
    i = np.flatnonzero(hit)
    return Match(i, order[pos_c[hit]], by="id")


def match_by_position(cat_ra, cat_dec, ref_ra, ref_dec, *, radius: u.Quantity = 1.0 * u.arcsec) -> Match:
    """Nearest reference star of each catalogue star within ``radius`` (RA, Dec in degrees,
    ICRS; Quantities converted). One-to-one: a reference star claimed by several catalogue
    stars goes to the nearest of them. Rows with non-finite coordinates are not matched."""
    def deg(x):
        return np.asarray(x.to_value(u.deg) if isinstance(x, u.Quantity) else
                          np.ma.filled(np.ma.asarray(x, dtype=float), np.nan), dtype=float)

    ra1, dec1, ra2, dec2 = deg(cat_ra), deg(cat_dec), deg(ref_ra), deg(ref_dec)
    ok1 = np.flatnonzero(np.isfinite(ra1) & np.isfinite(dec1))
    ok2 = np.flatnonzero(np.isfinite(ra2) & np.isfinite(dec2))
    radius = u.Quantity(radius, u.arcsec)
    if ok1.size == 0 or ok2.size == 0:
        return Match(np.zeros(0, int), np.zeros(0, int), by=f"position:{radius:g}", separation=np.zeros(0))
    c1 = SkyCoord(ra=ra1[ok1] * u.deg, dec=dec1[ok1] * u.deg)
    c2 = SkyCoord(ra=ra2[ok2] * u.deg, dec=dec2[ok2] * u.deg)
    j, sep, _ = c1.match_to_catalog_sky(c2)
    sep_as = sep.to_value(u.arcsec)
    keep = sep_as <= radius.to_value(u.arcsec)
    i, j, sep_as = ok1[keep], ok2[j[keep]], sep_as[keep]
    order = np.lexsort((sep_as, j))  # by reference row, nearest first
    first = np.ones(order.size, dtype=bool)
    first[1:] = j[order][1:] != j[order][:-1]
    sel = np.sort(order[first])
    return Match(i[sel], j[sel], by=f"position:{radius:g}", separation=sep_as[sel])


def _find(names, candidates) -> str | None:
    lower = {n.lower(): n for n in names}
    for c in candidates:
        if c in names:
            return c
        if c.lower() in lower:
            return lower[c.lower()]
    return None


def crossmatch(cat: Table, ref: Table, *, by: str = "auto", cat_key: str | None = None,
               ref_key: str | None = None, radius: u.Quantity = 1.0 * u.arcsec) -> Match:
    """Match ``cat`` with ``ref``: ``by="id"`` on ``cat_key`` / ``ref_key`` (default: the first
    pair of :data:`ID_COLUMNS` both tables hold that matches any rows), ``by="position"`` on
    ra / dec within ``radius``, ``by="auto"``: by id when such a pair matches rows, else by
    position when both tables hold coordinates. Raises ``ValueError`` when no way applies."""
    if by not in ("auto", "id", "position"):
        raise ValueError(f"by must be 'auto', 'id' or 'position', got {by!r}")
    if by in ("auto", "id"):
        pairs = ([(cat_key, ref_key or cat_key)] if cat_key else
                 [(c, r) for c, refs in ID_COLUMNS if c in cat.colnames
                  for r in [_find(ref.colnames, refs)] if r is not None])
        for c, r in pairs:
            if c not in cat.colnames or r not in ref.colnames:
                raise ValueError(f"id column {c!r} / {r!r} missing")
            m = match_by_id(cat[c], ref[r])
            if len(m) or by == "id":
                m.by = f"id:{c}={r}"
                return m
        if by == "id":
            raise ValueError(f"no common id column; catalogue {cat.colnames}, reference {ref.colnames}")
    ra1, dec1 = _find(cat.colnames, RA_NAMES), _find(cat.colnames, DEC_NAMES)
    ra2, dec2 = _find(ref.colnames, RA_NAMES), _find(ref.colnames, DEC_NAMES)
    if None in (ra1, dec1, ra2, dec2):
        raise ValueError("cannot cross-match: no common identifier matches and ra/dec are not in both tables")
    return match_by_position(cat[ra1], cat[dec1], ref[ra2], ref[dec2], radius=radius)


def matched_table(cat: Table, ref: Table, match: Match, *, prefix: str = "ref_") -> Table:
    """The catalogue with the reference's columns joined onto its matched rows as
    ``ref_<name>`` (NaN / empty where a row has no match; 1-D columns only), plus
    ``ref_separation`` [arcsec] for a position match. Row order and count are the catalogue's."""
    out = Table(cat, copy=False)
    n = len(cat)
    for name in ref.colnames:
        col = np.ma.asarray(ref[name])
        if col.ndim != 1:
            continue
        data = np.asarray(np.ma.getdata(col))
        mask = np.ma.getmaskarray(col)
        if data.dtype.kind in "fiub":
            vals = np.full(n, np.nan)
            vals[match.cat_index] = np.where(mask[match.ref_index], np.nan, data[match.ref_index].astype(float))
        else:
            vals = np.full(n, "", dtype=object)
            vals[match.cat_index] = np.where(mask[match.ref_index], "", data[match.ref_index].astype(str))
            vals = vals.astype(str)
        out[prefix + name] = vals
        if getattr(ref[name], "unit", None) is not None:
            out[prefix + name].unit = ref[name].unit
    if match.separation is not None:
        sep = np.full(n, np.nan)
        sep[match.cat_index] = match.separation
        out[prefix + "separation"] = sep
        out[prefix + "separation"].unit = u.arcsec
    return out


def reference_regimes(ref: dict[str, np.ndarray], snr: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Named masks on the reference labels (Teff in K, log g / [Fe/H] in dex) and S/N:
    ``all``, ``teff_gt_7000``, ``logg_lt_1``, ``feh_lt_m1``, ``cool_dwarfs`` (Teff < 4000 K,
    log g > 4), ``giants`` (log g < 3.5), ``dwarfs`` (log g ≥ 3.5) and, with ``snr``, its
    quartiles ``snr_q1`` … ``snr_q4``. A regime whose label is absent is left out."""
    n = len(next(iter(ref.values()))) if ref else (0 if snr is None else len(snr))
    out = {"all": np.ones(n, dtype=bool)}
    with np.errstate(invalid="ignore"):
        if "teff" in ref:
            out["teff_gt_7000"] = ref["teff"] > 7000
        if "logg" in ref:
            out["logg_lt_1"] = ref["logg"] < 1
            out["giants_logg_lt_3p5"] = ref["logg"] < 3.5
            out["dwarfs_logg_ge_3p5"] = ref["logg"] >= 3.5
        feh = ref.get("fe_h", ref.get("m_h"))
        if feh is not None:
            out["feh_lt_m1"] = feh < -1
        if "teff" in ref and "logg" in ref:
            out["cool_dwarfs_teff_lt_4000"] = (ref["teff"] < 4000) & (ref["logg"] > 4)
        if snr is not None:
            s = np.asarray(snr, dtype=float)
            fin = np.isfinite(s)
            if fin.sum() >= 4:
                edges = np.quantile(s[fin], [0, 0.25, 0.5, 0.75, 1])
                for k in range(4):
                    lo, hi = edges[k], edges[k + 1]
                    out[f"snr_q{k + 1}_{lo:.0f}_{hi:.0f}"] = fin & (s >= lo) & ((s < hi) if k < 3 else (s <= hi))
    return out


def comparison_table(pred: dict[str, np.ndarray], ref: dict[str, np.ndarray],
                     sigma: dict[str, np.ndarray] | None = None,
                     regimes: dict[str, np.ndarray] | None = None, units: dict[str, str] | None = None,
                     intervals: dict[str, dict[str, np.ndarray]] | None = None) -> Table:
    """Bias (median residual), robust σ (1.4826 MAD), RMS, 1σ / 2σ coverage and the tails per
    label and regime, residual = ``pred`` − ``ref`` in the label's unit. Only stars with
    finite prediction and reference count (a withheld or unlabelled row has NaN and is not
    counted); regimes without such stars are left out. Columns: ``label``, ``unit``,
    ``regime``, ``n``, ``bias``, ``robust_sigma``, ``rms``, ``cov1``, ``cov2``,
    ``beyond_3sigma`` (fraction with |residual| > 3σ; a Gaussian gives 0.0027), all NaN
    without ``sigma``; and ``outside_ci95`` / ``outside_ci997``: the fraction with
    |residual| above the half-width ``intervals[prefix][label]`` (the catalogue's
    ``ci95_X`` / ``ci997_X``; 0.05 / 0.0027 expected), NaN where not given."""
    units, intervals = units or {}, intervals or {}
    regimes = regimes or {"all": None}
    rows = []

    def outside(r: np.ndarray, width: np.ndarray | None, k: float = 1.0) -> float:
        if width is None:
            return np.nan
        ok = np.isfinite(r) & np.isfinite(width)
        return float(np.mean(np.abs(r[ok]) > k * width[ok])) if ok.any() else np.nan

    for name in pred:
        if name not in ref:
            continue
        p, r = np.asarray(pred[name], float), np.asarray(ref[name], float)
        s = None if sigma is None or name not in sigma else np.asarray(sigma[name], float)
        widths = {pre: None if name not in intervals.get(pre, {}) else np.asarray(intervals[pre][name], float)
                  for pre in INTERVAL_PREFIXES}
        for reg, mask in regimes.items():
            m = np.ones(p.size, bool) if mask is None else np.asarray(mask, bool)
            met = label_metrics(p[m], r[m])
            if met["n"] == 0:
                continue
            cov = coverage_summary(p[m], r[m], s[m]) if s is not None else {"cov1": None, "cov2": None}
            res = p[m] - r[m]
            rows.append((name, units.get(name, ""), reg, met["n"], met["bias"], met["robust_sigma"], met["rms"],
                         np.nan if cov["cov1"] is None else cov["cov1"],
                         np.nan if cov["cov2"] is None else cov["cov2"],
                         outside(res, None if s is None else s[m], 3.0),
                         *(outside(res, None if w is None else w[m]) for w in widths.values())))
    return Table(rows=rows or None, names=("label", "unit", "regime", "n", "bias", "robust_sigma", "rms",
                                           "cov1", "cov2", "beyond_3sigma",
                                           *(f"outside_{pre}" for pre in INTERVAL_PREFIXES)),
                 dtype=(str, str, str, int, *[float] * (6 + len(INTERVAL_PREFIXES))))
