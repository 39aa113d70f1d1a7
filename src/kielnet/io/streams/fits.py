"""The first table HDU of a FITS file, streamed by memory-mapped row ranges."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.io.sources import rows_from
from kielnet.io.streams.base import TableFileSource
from kielnet.io.tables import ColumnPlan, build_startable, column_plan, masked_int_choice

__all__ = ["FitsTableSource"]


class FitsTableSource(TableFileSource):
    """The first table HDU of a FITS file, streamed by memory-mapped row ranges."""

    def _count(self) -> int | None:
        from kielnet.io.tables import fits_table_rows

        return fits_table_rows(self.target)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Within the block: astropy's truncation warning is an error, and any failure
        an :class:`InputError` naming the file (as :func:`read_table` reports it). Held
        only around reads, never across a ``yield`` (it changes the warning filters)."""
        from kielnet.io.checks import truncation_as_error

        try:
            with truncation_as_error():
                yield
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear error
            raise InputError(f"cannot read as fits: file is truncated or corrupt "
                             f"({type(exc).__name__}: {exc})", source=str(self.target)) from exc

    @contextlib.contextmanager
    def _hdu(self) -> Iterator[Any]:
        """The first table HDU of the file, memory-mapped (closed at the end)."""
        from astropy.io import fits

        with self._errors():
            hdul = fits.open(self.target, memmap=True)
        try:
            with self._errors():
                hdus = [h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))]
            if not hdus:
                raise InputError(f"cannot read as fits: the file holds no table HDU (it has "
                                 f"{len(hdul)} HDU(s))", source=str(self.target))
            yield hdus[0]
        finally:
            hdul.close()

    @staticmethod
    def _rows(hdu: Any, a: int, b: int):
        """Rows ``[a, b)`` as astropy reads the whole HDU (masks, units, metadata)."""
        from astropy.table import Table

        return Table.read(type(hdu)(data=hdu.data[a:b], header=hdu.header))

    def _make_plan(self) -> ColumnPlan:
        from kielnet.io.checks import parse_floats

        source = str(self.target)
        with self._hdu() as hdu, self._errors():
            n = int(hdu.header.get("NAXIS2", 0))
            if n == 0:
                raise InputError("table has no rows", source=source)
            sample = self._rows(hdu, 0, 1)
            kind = {c: np.asarray(sample[c]).dtype.kind for c in sample.colnames}

            def numeric(c: str) -> tuple[int | None, str | None]:
                if kind[c] in "fiub":
                    return None, None
                if kind[c] not in "USO":
                    return parse_floats(sample[c])[1:]
                for a in range(0, n, 65_536):
                    _, bad_row, bad_value = parse_floats(hdu.data.field(c)[a:a + 65_536])
                    if bad_row is not None:
                        return a + bad_row, bad_value
                return None, None

            plan = column_plan(list(sample.colnames), sample.meta, None, source=source,
                               ndim=lambda c: np.asarray(sample[c]).ndim, kind=kind.__getitem__,
                               numeric=numeric)
            for key, col in plan.extra.items():
                null = hdu.columns[col].null
                if kind[col] not in "iu" or null is None:
                    continue
                has_null, max_abs = False, 0.0
                for a in range(0, n, 65_536):
                    arr = np.asarray(hdu.data.field(col)[a:a + 65_536])
                    mask = arr == null
                    has_null |= bool(mask.any())
                    if (~mask).any():
                        max_abs = max(max_abs, float(np.abs(arr[~mask].astype(np.float64)).max()))
                choice = masked_int_choice(has_null, max_abs)
                if choice is not None:
                    plan.masked_ints[key] = choice
        return plan

    def _pieces(self, start: int, rows: int) -> tuple[Iterator[StarTable], int]:
        return self._iter(self.plan(), start, rows), start

    def _iter(self, plan: ColumnPlan, start: int, rows: int) -> Iterator[StarTable]:
        source = str(self.target)
        with self._hdu() as hdu:
            n = int(hdu.header.get("NAXIS2", 0))
            for a in range(start, n, rows):
                with self._errors(), rows_from(a):
                    batch = build_startable(self._rows(hdu, a, min(a + rows, n)), plan, source=source,
                                            check_flux=False)
                yield batch
