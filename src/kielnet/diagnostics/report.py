"""``kielnet report``: the papers' validation figures for any catalogue, as PNGs and one
self-contained HTML page (figures embedded as data URIs; no network needed).

:func:`make_report` reads a catalogue (Parquet in row batches, FITS column by column, with a
progress bar; only 1-D columns), cross-matches it with reference catalogues
(:mod:`kielnet.diagnostics.crossmatch`), runs the external checks that its columns allow
(:mod:`kielnet.diagnostics.external`) and draws the figures of
:mod:`kielnet.diagnostics.figures`.

What is drawn as a value: a finite label of a row whose only flag, if any, is
``label_not_reported`` (the withheld labels are NaN; the row's other labels are as good
as an ``ok`` row's). A withheld label (a reporting rule, or no label support) or any
label of a row with another flag is never drawn as a value; such rows are counted in the flag and
status statistics (and, in the Kiel diagrams, a star whose position is reported but whose
metallicity is not is drawn in grey). ``accept`` names flag bits whose rows are still drawn
(e.g. ``("interpolated_pixels",)``); bits that withhold labels can never be accepted.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import astropy.units as u
import numpy as np
from astropy.table import Table

from kielnet.diagnostics import external, figures
from kielnet.diagnostics.crossmatch import comparison_table, crossmatch, matched_table, reference_regimes
from kielnet.quality.flags import FLAG_BITS, UNLABELLED_BITS, flag_names
from kielnet.quality.neighbours import INTERVAL_PREFIXES
from kielnet.labels import astropy_unit, column_candidates, label_info

__all__ = ["Report", "read_catalogue_columns", "drawable", "reference_table", "make_report", "label_aliases"]

NUMAX_NAMES = ("numax", "nu_max", "numax_uhz")
CLUSTER_NAMES = ("cluster", "cluster_name", "cluster_id", "oc")
SNR_NAMES = ("snr_spectrum", "snr", "s_n", "rvs_spec_sig_to_noise")


def label_aliases(name: str) -> tuple[str, ...]:
    """Column names a reference catalogue may use for label ``name`` (case-insensitive):
    the name and its aliases in the label vocabulary (:mod:`kielnet.labels`)."""
    return column_candidates(label_info(name))


@dataclass
class Report:
    """What :func:`make_report` wrote: the HTML page, the PNGs by name, the tables (also
    written as ECSV) and the counts (rows, per status, per flag bit, drawn and withheld
    values per label)."""

    html: Path
    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- reading
def read_catalogue_columns(path: str | Path, columns: Sequence[str] | None = None, *,
                           batch_rows: int = 250_000, progress: bool = True) -> Table:
    """The 1-D columns (or ``columns``) of a catalogue file, with units and descriptions.
    Parquet is read ``batch_rows`` rows at a time, FITS column by column (memory-mapped),
    CSV / ECSV whole; a progress bar (tqdm, on stderr) shows the batches."""
    from tqdm.auto import tqdm

    from kielnet.io.tables import arrow_to_table, read_catalogue, table_format

    path = Path(path)
    fmt = table_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
        names = [n for n in schema.names if (columns is None or n in columns)
                 and not str(schema.field(n).type).startswith(("list", "fixed_size_list", "large_list"))]
        parts: dict[str, list] = {n: [] for n in names}
        first = None
        with tqdm(total=pf.metadata.num_rows, unit="rows", desc=f"reading {path.name}", disable=not progress) as bar:
            for batch in pf.iter_batches(batch_size=batch_rows, columns=names):
                t = arrow_to_table(batch, source=str(path), schema_metadata=schema.metadata)
                first = t if first is None else first
                for n in names:
                    parts[n].append(np.ma.filled(t[n], np.nan) if t[n].dtype.kind == "f" else t[n])
                bar.update(batch.num_rows)
        out = Table()
        for n in names:
            out[n] = np.ma.concatenate(parts[n]) if any(np.ma.isMaskedArray(p) for p in parts[n]) \
                else np.concatenate(parts[n]) if parts[n] else np.zeros(0)
            if first is not None:
                out[n].unit = first[n].unit
                out[n].description = first[n].description
        if first is not None:
            out.meta.update(first.meta)
        return out
    if fmt == "fits":
        from astropy.io import fits

        whole = read_catalogue(path) if path.stat().st_size < 50_000_000 else None
        if whole is not None:
            keep = [n for n in whole.colnames if whole[n].ndim == 1 and (columns is None or n in columns)]
            return whole[keep]
        with fits.open(path, memmap=True) as hdul:
            hdu = next(h for h in hdul if isinstance(h, fits.BinTableHDU))
            names = [c.name for c in hdu.columns if (columns is None or c.name in columns)
                     and hdu.data[c.name].ndim == 1]
            out = Table()
            for n in tqdm(names, desc=f"reading {path.name}", unit="col", disable=not progress):
                data = np.array(hdu.data[n])
                out[n] = data.astype(data.dtype.newbyteorder("=")) if data.dtype.byteorder not in ("=", "|") else data
                if out[n].dtype.kind == "S":
                    out[n] = np.char.strip(out[n].astype(str))
        from kielnet.io.tables import _units_from_tcomm

        for n in out.colnames:  # FITS units (K, ...) from TUNITn; dex from TCOMMn
            unit = hdu.columns[n].unit if n in hdu.columns.names else None
            if unit:
                out[n].unit = u.Unit(unit, format="fits", parse_strict="silent")
        _units_from_tcomm(path, out)
        return out
    tab = read_catalogue(path)
    keep = [n for n in tab.colnames if tab[n].ndim == 1 and (columns is None or n in columns)]
    return tab[keep]


def _floats(col) -> np.ndarray:
    return np.asarray(np.ma.filled(np.ma.asarray(col, dtype=float), np.nan), dtype=float)


def _text(col) -> np.ndarray:
    return np.asarray(np.ma.filled(np.ma.asarray(col).astype(str), "")).astype(str)


def drawable(cat: Table, accept: Iterable[str] = ()) -> np.ndarray:
    """Rows whose values may be drawn: with ``flag``, rows whose flag bits are all in
    ``accept`` or ``label_not_reported`` (that bit concerns only the withheld labels, which
    are NaN and never drawn; :func:`kielnet.quality.flags.usable_mask`); without it,
    ``status == "ok"``. Bits that withhold labels are never accepted."""
    accept = [a for a in accept if a not in UNLABELLED_BITS] + ["label_not_reported"]
    n = len(cat)
    if "flag" in cat.colnames:
        flags = np.asarray(np.ma.filled(np.ma.asarray(cat["flag"]), -1)).astype(np.int64)
        allowed = 0
        for name in accept:
            if name in FLAG_BITS:
                allowed |= 1 << FLAG_BITS[name]
        return (flags >= 0) & ((flags & ~allowed) == 0)
    if "status" in cat.colnames:
        return _text(cat["status"]) == "ok"
    return np.ones(n, dtype=bool)


def _find(names: Sequence[str], candidates: Sequence[str], prefix: str = "") -> str | None:
    lower = {n.lower(): n for n in names}
    for c in candidates:
        if (prefix + c).lower() in lower:
            return lower[(prefix + c).lower()]
    return None


def reference_table(stars, *, scalars: Sequence[str] = ("snr", "g")) -> Table:
    """Reference labels of a :class:`~kielnet.data.startable.StarTable` (its ``labels`` and
    ``label_errs`` as ``X`` and ``X_err``, pass-through ids, and the named scalars such as the
    APOGEE ``snr``), one row per star with ``id``: what :func:`make_report` cross-matches."""
    t = Table()
    t["id"] = np.asarray(stars.ids).astype(str)
    for k, v in stars.extra.items():
        if np.asarray(v).ndim == 1:
            t[k] = v
    for k, v in stars.labels.items():
        t[k] = np.asarray(v, dtype=float)
        unit = astropy_unit(label_info(k).unit)
        if unit is not None:
            t[k].unit = unit
        if k in stars.label_errs:
            t[f"{k}_err"] = np.asarray(stars.label_errs[k], dtype=float)
    for k in scalars:
        if k in stars.scalars and k not in t.colnames:
            t[k] = np.asarray(stars.scalars[k], dtype=float)
    return t


# ----------------------------------------------------------------------------- HTML
def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _table_html(tab: Table, fmt: str = "{:.4g}") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in tab.colnames)
    rows = []
    for row in tab:
        cells = []
        for c in tab.colnames:
            v = row[c]
            if isinstance(v, (float, np.floating)):
                cells.append("<td>–</td>" if not np.isfinite(v) else f"<td>{fmt.format(float(v))}</td>")
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


_CSS = """body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}figure{margin:1em 0}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.9em;color:#444}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;
text-align:right}th{background:#f3f3f3}.note{color:#7a4b00}"""


def _write_html(path: Path, title: str, sections: list[tuple[str, list[tuple[str, object, str]]]],
                notes: list[str]) -> Path:
    """``sections``: (heading, [(kind, content, caption)]) with kind ``figure`` (a PNG path),
    ``table`` (an astropy Table) or ``html`` (trusted markup made here)."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    if notes:
        body.append("<ul>" + "".join(f"<li class='note'>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for heading, items in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        for kind, content, caption in items:
            if kind == "figure":
                name = Path(content).name
                body.append(f"<figure><img src='{_png_uri(Path(content))}' alt='{html.escape(name)}' "
                            f"data-file='{html.escape(name)}'><figcaption>{html.escape(caption)}</figcaption></figure>")
            elif kind == "table":
                body.append(f"<p>{html.escape(caption)}</p>" + _table_html(content))
            else:
                body.append(str(content))
    doc = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
           + "\n".join(body) + "</body></html>\n")
    from kielnet.io.atomic import atomic_write_text

    atomic_write_text(path, doc)
    return path


# ----------------------------------------------------------------------------- the report
def _counts(cat: Table, labels: list[str], draw: np.ndarray) -> dict:
    n = len(cat)
    out: dict = {"rows": n, "drawable_rows": int(draw.sum())}
    if "status" in cat.colnames:
        vals, cnt = np.unique(_text(cat["status"]), return_counts=True)
        out["status"] = {str(v): int(c) for v, c in sorted(zip(vals, cnt), key=lambda kv: -kv[1])}
    if "flag" in cat.colnames:
        flags = np.asarray(np.ma.filled(np.ma.asarray(cat["flag"]), 0)).astype(np.int64)
        names = flag_names(labels)
        out["flag_bits"] = {names[b]: int(((flags >> b) & 1).sum()) for b in sorted(names)
                            if ((flags >> b) & 1).any()}
    per = {}
    for lab in labels:
        v = _floats(cat[lab])
        per[lab] = {"finite": int(np.isfinite(v).sum()), "nan": int((~np.isfinite(v)).sum()),
                    "drawn": int((np.isfinite(v) & draw).sum()),
                    "finite_but_flagged": int((np.isfinite(v) & ~draw).sum())}
    out["labels"] = per
    return out


def _label_names(cat: Table, label_names: Sequence[str] | None) -> list[str]:
    if label_names:
        return [n for n in label_names if n in cat.colnames]
    return [n for n in cat.colnames if (f"sigma_{n}" in cat.colnames or f"e_{n}" in cat.colnames)
            and not n.startswith(("e_", "sigma_"))]


def _gradient_maps(bundle, stars, out: Path, units: dict[str, str], max_stars: int) -> tuple[list, list[str]]:
    """Figs. 9–10 of the bundle over (at most ``max_stars`` of) the given stars."""
    from kielnet.diagnostics.sensitivity import gradient_maps, plot_branch_sensitivity, plot_sensitivity

    items, notes = [], []
    prep = bundle.preprocessor.transform(stars, with_labels=False)
    idx = np.flatnonzero(~np.asarray(prep.bad_spectrum, dtype=bool))[:max_stars]
    if idx.size == 0:
        return [], ["gradient maps: no star with a usable spectrum"]
    maps = gradient_maps(bundle.build_members(), prep, idx, label_transforms=bundle.preprocessor)
    if maps.pixel is not None:
        wl = None
        if stars.wavelength is not None:
            wl = stars.wavelength.to_value(u.AA) if hasattr(stars.wavelength, "unit") else np.asarray(stars.wavelength)
        flux = np.nanmean(np.asarray(stars.flux)[idx], axis=0) if stars.flux is not None else None
        p = plot_sensitivity(maps, wl, flux, out / "gradient_spectrum.png", units=units)
        items.append(("figure", p, f"Mean ∂label/∂pixel over {maps.n_stars} stars × {maps.n_members} members "
                                   "(Gaia-RVS Fig. 9); band: members' min–max; labels per unit of network input."))
    names = bundle.preprocessor.branch_input_names()
    for name in maps.branches:
        p = plot_branch_sensitivity(maps, name, out / f"gradient_{name}.png", input_names=names.get(name), units=units)
        items.append(("figure", p, f"Mean ∂label/∂input of the {name} branch (Gaia-RVS Fig. 10)."))
    return items, notes


def make_report(catalogue, out: str | Path, *, references: Sequence = (), reference_names: Sequence[str] | None = None,
                bundle=None, stars=None, label_names: Sequence[str] | None = None, match_by: str = "auto",
                radius: u.Quantity = 1.0 * u.arcsec, accept: Iterable[str] = (), title: str | None = None,
                progress: bool = True, max_gradient_stars: int = 500, log=print) -> Report:
    """Write the validation report of a catalogue into the directory ``out``: PNGs, tables
    (ECSV), ``report.json`` (counts) and ``report.html`` (self-contained).

    Parameters
    ----------
    catalogue
        A kielnet catalogue: a path (Parquet / FITS / CSV / ECSV) or an astropy Table.
    references
        Reference catalogues (paths or Tables) with labels (``teff`` [K], ``logg``, ``fe_h``,
        ``m_h``, ``alpha_m`` [dex], or the aliases of :func:`label_aliases`) and optionally
        ``numax`` [µHz], ``cluster``, ``ra``/``dec`` [deg], ``parallax`` [mas]; matched by
        id or position (``match_by``, ``radius``; :func:`~kielnet.diagnostics.crossmatch.crossmatch`).
    bundle, stars
        A bundle (path or :class:`~kielnet.artifact.Bundle`) and input stars
        (a :class:`~kielnet.data.startable.StarTable`) for the gradient maps; ``stars`` with
        as many rows as the catalogue also gives the inputs of the correlation matrix.
    accept
        Flag bits whose rows are still drawn (module docstring); default: ``ok`` rows only.
    """
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    src = "catalogue"
    if not isinstance(catalogue, Table):
        src = str(catalogue)
        catalogue = read_catalogue_columns(catalogue, progress=progress)
    cat = Table(catalogue, copy=False)
    cat = cat[[n for n in cat.colnames if np.ndim(cat[n]) == 1 or np.asarray(cat[n]).ndim == 1]]
    if isinstance(bundle, (str, Path)):
        from kielnet.artifact import load_bundle

        bundle = load_bundle(bundle)
    labels = _label_names(cat, label_names or (bundle.config.label_names if bundle is not None else None))
    vocab = {n: label_info(n) for n in labels}
    if bundle is not None:
        vocab.update({n: i for n, i in bundle.config.label_vocabulary.items() if n in vocab})
    units = {n: (cat[n].unit.to_string() if cat[n].unit is not None else vocab[n].unit) for n in labels}
    draw = drawable(cat, accept)
    vals = {n: np.where(draw, _floats(cat[n]), np.nan) for n in labels}
    sig = {n: np.where(draw & np.isfinite(vals[n]), _floats(cat[f"sigma_{n}"]), np.nan)
           for n in labels if f"sigma_{n}" in cat.colnames}
    # the interval half-widths (ci95_X, ci997_X) of the drawn rows, where the catalogue has them
    widths = {pre: {n: np.where(draw & np.isfinite(vals[n]), _floats(cat[f"{pre}_{n}"]), np.nan)
                    for n in labels if f"{pre}_{n}" in cat.colnames} for pre in INTERVAL_PREFIXES}
    counts = _counts(cat, labels, draw)
    notes: list[str] = []
    figs: dict[str, Path] = {}
    tables: dict[str, Table] = {}
    sections: list[tuple[str, list]] = []
    metal = "m_h" if "m_h" in labels else ("fe_h" if "fe_h" in labels else None)

    # cross-matches
    matched = []
    names = list(reference_names or [])
    for k, ref in enumerate(references):
        name = names[k] if k < len(names) else (Path(ref).stem if isinstance(ref, (str, Path)) else f"reference{k + 1}")
        if isinstance(ref, (str, Path)):
            from kielnet.io.tables import read_catalogue

            ref = read_catalogue(ref)
        try:
            m = crossmatch(cat, ref, by=match_by, radius=radius)
        except ValueError as exc:
            notes.append(f"{name}: not matched ({exc})")
            continue
        joined = matched_table(Table({"_row": np.arange(len(cat))}), ref, m, prefix="")  # ref columns, cat rows
        matched.append((name, joined, m))
        log(f"report: {len(m)} of {len(cat)} rows matched with {name} ({m.by})")
        counts.setdefault("references", {})[name] = {"matched": len(m), "by": m.by, "reference_rows": len(ref)}

    # S/N: the catalogue's, else a reference's
    snr, snr_name = None, "S/N"
    c = _find(cat.colnames, SNR_NAMES)
    if c is not None:
        snr, snr_name = _floats(cat[c]), c
    else:
        for name, joined, _ in matched:
            c = _find(joined.colnames, SNR_NAMES)
            if c is not None:
                snr, snr_name = _floats(joined[c]), f"{name} {c}"
                break

    # 1. Kiel diagrams by S/N
    items = []
    if "teff" in labels and "logg" in labels:
        mvals = vals[metal] if metal else np.full(len(cat), np.nan)
        figs["kiel"] = figures.kiel_by_snr(vals["teff"], vals["logg"], mvals, out / "kiel_snr.png", snr=snr,
                                           metal_name=metal or "fe_h")
        items.append(("figure", figs["kiel"], f"Kiel diagrams in bins of {snr_name} (Gaia-RVS Fig. 11): hexagons "
                                              f"coloured by the median {metal} of their stars; grey: stars whose "
                                              f"{metal} is withheld. Only rows with status ok (or only label_not_reported) are drawn."))
    sections.append(("Kiel diagrams", items))

    # 2. residuals, calibration, comparison tables
    for name, joined, m in matched:
        ref_lab = {}
        for lab in labels:
            col = _find(joined.colnames, column_candidates(vocab[lab]))
            if col is not None and joined[col].dtype.kind in "fiu":
                ref_lab[lab] = _floats(joined[col])
        if not ref_lab:
            notes.append(f"{name}: no reference labels among {labels}")
            continue
        items = []
        key = _slug(name)
        figs[f"residuals_{key}"] = figures.residual_density({n: vals[n] for n in ref_lab}, ref_lab,
                                                            out / f"residuals_{key}.png", units=units, ref_name=name)
        items.append(("figure", figs[f"residuals_{key}"], f"Residual (kielnet − {name}) density against the {name} "
                                                          "label (Gaia-RVS Fig. 7): bias = median, σ = 1.4826 MAD."))
        if sig:
            rsnr = snr if snr is not None else None
            figs[f"calibration_{key}"] = figures.calibration_figure({n: vals[n] for n in ref_lab}, ref_lab, sig,
                                                                    out / f"calibration_{key}.png", snr=rsnr)
            items.append(("figure", figs[f"calibration_{key}"], "Calibration of sigma_X: fraction of stars with "
                          "|residual| < kσ (dashed: Gaussian), and 1σ / 2σ coverage per S/N quartile."))
        regimes = reference_regimes(ref_lab, snr=snr)
        tab = comparison_table({n: vals[n] for n in ref_lab}, ref_lab, sig, regimes, units=units, intervals=widths)
        tables[f"comparison_{key}"] = tab
        tab.write(out / f"comparison_{key}.ecsv", overwrite=True)
        items.append(("table", tab, f"Bias, robust σ, RMS, 1σ / 2σ coverage and the tails against {name} per label "
                                    "and regime: beyond 3σ (Gaussian: 0.27 %), outside ci95_X / ci997_X (5 % / "
                                    "0.27 % expected; NaN without them). Regimes on the reference labels; "
                                    "residual = kielnet − reference."))
        sections.append((f"Comparison with {name} ({len(m)} matched, {m.by})", items))

    # 3. uncertainties
    items = []
    if sig:
        figs["sigma_label"] = figures.sigma_vs_label({n: vals[n] for n in sig}, sig, out / "sigma_vs_label.png",
                                                     units=units)
        items.append(("figure", figs["sigma_label"], "Total uncertainty sigma_X against the label "
                                                     "(Gaia-RVS Figs. 8, 13)."))
        if snr is not None:
            figs["sigma_snr"] = figures.sigma_vs_snr(sig, snr, out / "sigma_vs_snr.png", units=units,
                                                     snr_name=snr_name)
            items.append(("figure", figs["sigma_snr"], f"sigma_X against {snr_name} (Gaia-RVS Fig. 16)."))
    sections.append(("Uncertainties", items))

    # 4. correlations
    cols = {n: vals[n] for n in labels}
    if snr is not None:
        cols[snr_name] = snr
    if stars is not None and len(stars) == len(cat):
        for k, v in stars.scalars.items():
            if np.asarray(v).ndim == 1 and k not in cols:
                cols[k] = np.asarray(v, dtype=float)
    skip = {"flag", "n_bad_pixels", "source_id", "id"}
    # ci997_X is ci95_X times one number per label: the same ranks, a row of its own would repeat ci95_X's
    for n in cat.colnames:
        if (n not in cols and n not in skip and not n.startswith(("e_", "sigma_", "ci997_")) and n not in labels
                and cat[n].dtype.kind in "fi" and n.lower() not in ("ra", "dec")):
            cols[n] = np.where(draw, _floats(cat[n]), np.nan)
    items = []
    if len(cols) >= 2:
        figs["correlation"] = figures.correlation_matrix(cols, out / "correlation_matrix.png")
        items.append(("figure", figs["correlation"], "Spearman correlations of labels and inputs (Gaia-RVS Fig. 5), "
                                                     "each pair over the rows where both are finite."))
    sections.append(("Correlations", items))

    # 5. [α/M] vs [M/H]
    items = []
    if metal and "alpha_m" in labels and "teff" in labels and "logg" in labels:
        figs["alpha_kiel"] = figures.alpha_vs_metal_kiel_bins(vals["teff"], vals["logg"], vals[metal], vals["alpha_m"],
                                                              out / "alpha_vs_metal_kiel.png", metal_name=metal)
        items.append(("figure", figs["alpha_kiel"], "[α/M] vs [M/H] in cells of 500 K × 1 dex (Gaia-RVS Fig. 14)."))
    sections.append(("[α/M]–[M/H] plane", items))

    # 6. external checks
    items = []
    sources = [("catalogue", cat)] + [(name, joined) for name, joined, _ in matched]
    for name, tab in sources:
        c = _find(tab.colnames, NUMAX_NAMES)
        if c is None or "logg" not in labels:
            continue
        tcol = _find(tab.colnames, label_aliases("teff")) if name != "catalogue" else None
        teff = _floats(tab[tcol]) if tcol else vals.get("teff", np.full(len(cat), np.nan))
        seis = external.seismic_logg(_floats(tab[c]), teff)
        figs["seismic"] = figures.seismic_comparison(vals["logg"], seis, out / "seismic_logg.png", teff=teff)
        t = comparison_table({"logg": vals["logg"]}, {"logg": seis}, {"logg": sig["logg"]} if "logg" in sig else None,
                             units={"logg": "dex"})
        tables["seismic"] = t
        items.append(("figure", figs["seismic"], f"log g against asteroseismic log g from {c} (µHz) and Teff "
                      f"({'reference' if tcol else 'catalogue'}): ν_max,⊙ = 3090 µHz, Teff,⊙ = 5777 K (Gaia-RVS §6)."))
        items.append(("table", t, "kielnet − asteroseismic log g (dex)"))
        break
    for name, tab in sources:
        c = _find(tab.colnames, CLUSTER_NAMES)
        lab = metal if metal else None
        if c is None or lab is None:
            continue
        stats = external.cluster_metallicity(_text(tab[c]), vals[lab])
        tables["clusters"] = stats
        stats.write(out / "clusters.ecsv", overwrite=True)
        figs["clusters"] = figures.cluster_comparison(stats, out / "clusters.png", label=lab)
        items.append(("figure", figs["clusters"], f"Mean and spread of {lab} per open cluster (Gaia-RVS §6)."))
        items.append(("table", stats, f"{lab} per cluster (dex)"))
        break
    for name, tab in sources:
        ra, dec = _find(tab.colnames, ("ra",)), _find(tab.colnames, ("dec",))
        plx, dist = _find(tab.colnames, ("parallax", "plx")), _find(tab.colnames, ("distance", "dist"))
        if None in (ra, dec) or (plx is None and dist is None) or not (metal and "alpha_m" in labels):
            continue
        kw = {"parallax": _floats(tab[plx])} if plx else {"distance": _floats(tab[dist])}
        r, z = external.galactocentric_rz(_floats(tab[ra]), _floats(tab[dec]), **kw)
        figs["alpha_rz"] = figures.alpha_vs_metal_rz(r, z, vals[metal], vals["alpha_m"], out / "alpha_vs_metal_rz.png",
                                                     metal_name=metal)
        items.append(("figure", figs["alpha_rz"], "[α/M] vs [M/H] in Galactocentric R, |Z| bins (Gaia-RVS Fig. 24; "
                      "R0 = 8.19 kpc, v_LSR = 240 km/s, solar peculiar velocity (11.1, 12.24, 7.25) km/s; "
                      f"distance from {'1/parallax' if plx else dist})."))
        break
    if items:
        sections.append(("External checks", items))

    # 7. gradient maps
    if bundle is not None:
        if stars is None:
            notes.append("gradient maps need the input spectra: give stars (kielnet report --data)")
        else:
            items, n2 = _gradient_maps(bundle, stars, out, units, max_gradient_stars)
            notes += n2
            for kind, p, _ in items:
                figs[Path(p).stem] = Path(p)
            sections.append(("Gradient maps", items))

    # 8. flags and status
    figs["flags"] = figures.flag_statistics(counts.get("flag_bits", {}), counts.get("status", {}), len(cat),
                                            out / "flags_status.png")
    lab_tab = Table(rows=[(n, c["finite"], c["nan"], c["drawn"], c["finite_but_flagged"])
                          for n, c in counts["labels"].items()] or None,
                    names=("label", "finite", "NaN (withheld / unlabelled)", "drawn (status ok or only label_not_reported)",
                           "finite but flagged (not drawn)"), dtype=(str, int, int, int, int))
    tables["label_counts"] = lab_tab
    sections.append(("Flags and status", [
        ("figure", figs["flags"], "Rows per flag bit and per status."),
        ("table", lab_tab, f"{len(cat)} rows, {counts['drawable_rows']} drawn (status ok or only label_not_reported"
                           + (f" or only {', '.join(accept)}" if accept else "") + ")."),
    ]))

    (out / "report.json").write_text(json.dumps({"catalogue": src, "counts": counts, "notes": notes,
                                                 "figures": {k: Path(v).name for k, v in figs.items()}}, indent=1))
    page = _write_html(out / "report.html", title or f"kielnet report: {Path(src).name}", sections, notes)
    log(f"report: {len(figs)} figures and report.html written to {out} in {time.time() - t0:.0f} s")
    return Report(html=page, figures=figs, tables=tables, counts=counts, notes=notes)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
