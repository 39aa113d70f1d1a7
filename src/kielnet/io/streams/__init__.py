"""Streamed sources of star-table files (the ``table`` format's streaming hooks).

:func:`kielnet.io.formats.table.open_table` picks one per file:

=====================  ==========================================================
Parquet file,          :class:`~.parquet.ParquetSource`: ``ParquetFile.iter_batches``
directory of Parquet   over the row groups needed (``start`` skips whole files and
files (a dataset,      row groups from the footer metadata, without reading them);
hive ``key=value``     memory ≈ one batch plus the pages being decoded. Row count
directories become     from the footers. List / fixed-size-list columns → 2-D arrays
columns), glob         with pyarrow (no Python loop over rows); null cells → NaN rows.
FITS binary table      :class:`~.fits.FitsTableSource`: memory-mapped row ranges
                       ``hdu.data[a:b]``; row count from NAXIS2. A gzipped FITS file
                       cannot be memory-mapped: astropy decompresses it whole.
CSV (``.csv[.gz]``)    :class:`~.text.CsvSource`: ``pyarrow.csv.open_csv``;
                       ``flux_0 … flux_N`` columns as :func:`~kielnet.io.read_table`
                       reads them. The file is parsed twice: a first pass (bounded
                       memory) finds the type astropy would give each non-spectrum
                       column for the whole file, so that every batch converts like
                       the whole file. Row count unknown (``None``).
ECSV                   :class:`~.text.EcsvSource`: read whole (astropy), then sliced.
=====================  ==========================================================

Exactness. Table files are converted by one :class:`~kielnet.io.tables.ColumnPlan`
made from a summary of the whole file (column types, which text columns hold only
numbers, which integer pass-through columns have empty cells anywhere), so each
batch converts exactly as the same rows of the whole file. A table in which *no*
star has a finite flux value is refused by ``read_stars`` but streamed (each such
star is flagged ``bad_spectrum`` downstream).
"""

from __future__ import annotations

from kielnet.io.streams.base import TableFileSource
from kielnet.io.streams.fits import FitsTableSource
from kielnet.io.streams.parquet import ParquetSource
from kielnet.io.streams.text import CsvSource, EcsvSource

__all__ = ["TableFileSource", "ParquetSource", "FitsTableSource", "CsvSource", "EcsvSource"]
