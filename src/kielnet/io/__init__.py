"""Readers and writers of survey file formats; readers build :class:`~kielnet.data.StarTable`.

Which reader reads what is decided by the reader registry (:mod:`kielnet.io.registry`):
:func:`read_stars` reads a whole input, :func:`open_stars` streams it in batches
(:mod:`kielnet.io.sources`); a new format is one :func:`register_reader` call, and a
built-in one is one module of :mod:`kielnet.io.formats`. Which writer writes a
catalogue is decided by the writer registry (:mod:`kielnet.io.writers`).
"""

from __future__ import annotations

from pathlib import Path

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.io.apstar import iter_apstar, read_apstar
from kielnet.io.emulator import load_payne_emulator
from kielnet.io.registry import (ReaderSpec, get_reader, read_stars, reader_named, reading, register_reader,
                                 registered_readers, resolve, unregister_reader)
from kielnet.io.sources import open_stars
from kielnet.io.tables import ColumnMap, atomic_write_table, read_catalogue, read_table, write_table
from kielnet.io.writers import WriterSpec, get_writer, register_writer, registered_writers, unregister_writer
from kielnet.io.xp_library import default_library_path, load_xp_library
from kielnet.io import formats  # noqa: E402,F401 - registers the built-in readers (one module per format)
from kielnet.io.formats.xp_library import XP_LIBRARY

__all__ = ["read_apstar", "iter_apstar", "load_payne_emulator", "read_stars", "open_stars", "read_catalogue",
           "read_table", "write_table", "atomic_write_table", "load_xp_library", "default_library_path",
           "ColumnMap", "XP_LIBRARY", "sniff_format", "ReaderSpec", "register_reader", "unregister_reader",
           "get_reader", "registered_readers", "reader_named", "WriterSpec", "register_writer",
           "unregister_writer", "registered_writers", "get_writer"]

#: :func:`sniff_format` kinds of the built-in readers whose registry name differs.
_KINDS = {"gaia-rvs": "gaia_rvs", "gaia-xp": "gaia_xp", XP_LIBRARY: "xp_library"}


def sniff_format(path: str | Path) -> str:
    """Which reader a file needs, by the registry (:func:`get_reader`): ``"apstar"``,
    ``"gaia_rvs"`` (archive RVS mean spectra), ``"gaia_xp"`` (archive XP continuous
    coefficients), ``"xp_library"``, ``"table"`` — also for a file no reader
    recognises — or the name of another registered reader."""
    try:
        name = get_reader(path).name
    except InputError:
        return "table"
    return _KINDS.get(name, name)
