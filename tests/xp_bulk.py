"""Bulk-download-like directories of Gaia XP continuous files made from the real archive
rows of ``shared/data/gaia_xp`` (tests of the streamed XP reader): each row's text kept
as it is, only ``source_id`` replaced by a new unique id, optionally a
``phot_g_mean_mag`` column added and an ECSV header (``#`` lines, APE 6) put in front."""

from __future__ import annotations

import gzip
from pathlib import Path

ECSV_HEADER = ("# %ECSV 1.0\n# ---\n# delimiter: ','\n# datatype:\n"
               "# - {name: source_id, datatype: int64, description: \"Unique source identifier (unique within a "
               "particular Data Release)\"}\n# meta: {note: 'a header line with ''quotes'', and commas'}\n"
               "# schema: astropy-2.0\n")


def archive_lines(path: Path) -> tuple[str, list[str]]:
    """``(header line, data lines)`` of an archive CSV, without line ends."""
    lines = path.read_text().splitlines()
    return lines[0], [ln for ln in lines[1:] if ln.strip()]


def replicate(path: Path, n: int, first_id: int = 10**15, g: bool = False) -> tuple[str, list[str]]:
    """``n`` rows cycling through the file's rows, with ids ``first_id + i`` (and a G magnitude)."""
    header, rows = archive_lines(path)
    out = []
    for i in range(n):
        rest = rows[i % len(rows)].split(",", 1)[1]
        line = f"{first_id + i},{rest}"
        out.append(f"{line},{12.0 + 0.01 * (i % 500):.3f}" if g else line)
    return (header + ",phot_g_mean_mag" if g else header), out


def write_bulk(folder: Path, path: Path, sizes: list[int], *, g: bool = False, ecsv: bool = True,
               first_id: int = 10**15) -> list[Path]:
    """``XpContinuousMeanSpectrum_*.csv.gz`` files of ``sizes`` rows each in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    files, at = [], first_id
    for k, n in enumerate(sizes):
        header, rows = replicate(path, n, at, g=g)
        f = folder / f"XpContinuousMeanSpectrum_{at:019d}-{at + n - 1:019d}.csv.gz"
        with gzip.open(f, "wt", newline="") as fh:
            fh.write((ECSV_HEADER if ecsv else "") + header + "\n" + "\n".join(rows) + "\n")
        files.append(f)
        at += n
    return files
