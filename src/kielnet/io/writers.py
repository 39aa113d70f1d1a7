"""The catalogue writer registry: which writer writes a table to a path.

Like the reader registry (:mod:`kielnet.io.registry`), each output format is one
:class:`WriterSpec` — a name, the file suffixes it owns and a ``write(table, path)``
function — registered with :func:`register_writer`.
:func:`kielnet.io.atomic_write_table` (every catalogue, part and table kielnet
writes) and the output checks (:func:`kielnet.io.outputs.check_output_file`) ask
:func:`get_writer`, so a new output format is one call::

    from kielnet.io import register_writer

    register_writer("hdf5", suffixes=(".h5", ".hdf5"),
                    write=lambda tab, path: tab.write(path, format="hdf5", path="catalogue"))

The writer is chosen by the path's last suffix, ignoring a final ``.gz`` (``.csv.gz``);
the suffix is matched case-insensitively. Built-in writers (the names are astropy's
format names, as :func:`kielnet.io.tables.table_format` gives them):

==========  =======================  ==============================================
name        suffixes                 writes
==========  =======================  ==============================================
parquet     ``.parquet`` ``.pq``     pyarrow, array columns as fixed-size lists; units,
                                     descriptions and metadata in the schema metadata
fits        ``.fits`` ``.fit``       a binary table; ``dex`` named in TCOMMn
            ``.fz``
ascii.csv   ``.csv``                 astropy's CSV writer (no array columns)
ascii.ecsv  ``.ecsv``                astropy's ECSV writer
==========  =======================  ==============================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kielnet.errors import InputError

__all__ = ["WriterSpec", "register_writer", "unregister_writer", "registered_writers", "get_writer"]


@dataclass(frozen=True)
class WriterSpec:
    """One output format.

    Parameters
    ----------
    name
        Short unique name (``"parquet"``).
    suffixes
        File suffixes it writes, with the dot (``(".parquet", ".pq")``), lower case.
    write
        ``write(table, path)``: write an astropy :class:`~astropy.table.Table` to
        ``path`` (a temporary name with the same suffixes; overwrite it). Units,
        descriptions and metadata should survive where the format can hold them.
    description
        What the format is, for messages.
    """

    name: str
    suffixes: tuple[str, ...]
    write: Callable[[Any, Path], None]
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][\w.+-]*", self.name):
            raise ValueError(f"writer name must be a short word (letters, digits, - _ . +), got {self.name!r}")
        suffixes = (self.suffixes,) if isinstance(self.suffixes, str) else tuple(self.suffixes)
        if not suffixes or not all(isinstance(s, str) and re.fullmatch(r"\.[\w.+-]+", s) for s in suffixes):
            raise ValueError(f"writer '{self.name}': suffixes must be like '.parquet', got {self.suffixes!r}")
        object.__setattr__(self, "suffixes", tuple(s.lower() for s in suffixes))
        if not callable(self.write):
            raise TypeError(f"writer '{self.name}': write must be callable")


_WRITERS: dict[str, WriterSpec] = {}


def register_writer(spec: WriterSpec | str, /, *, suffixes: tuple[str, ...] | str | None = None,
                    write: Callable[[Any, Path], None] | None = None, description: str = "",
                    override: bool = False) -> WriterSpec:
    """Register an output format: ``register_writer(WriterSpec(...))`` or
    ``register_writer(name, suffixes=..., write=...)``; returns the spec.

    A name already registered, or a suffix another writer owns, is a ``ValueError``
    unless ``override=True`` (which replaces that writer / takes the suffix over).
    """
    if not isinstance(spec, WriterSpec):
        if suffixes is None or write is None:
            raise TypeError(f"writer '{spec}': suffixes and write are required")
        spec = WriterSpec(spec, suffixes=suffixes, write=write, description=description)
    taken = {s: w.name for w in _WRITERS.values() if w.name != spec.name for s in w.suffixes}
    clash = sorted(s for s in spec.suffixes if s in taken)
    if not override and (spec.name in _WRITERS or clash):
        what = f"a writer named '{spec.name}'" if spec.name in _WRITERS else \
            f"suffix {clash[0]} (writer '{taken[clash[0]]}')"
        raise ValueError(f"{what} is already registered (override=True replaces it)")
    for name in {taken[s] for s in clash}:  # override: the suffixes move to the new writer
        old = _WRITERS[name]
        rest = tuple(s for s in old.suffixes if s not in clash)
        if rest:
            _WRITERS[name] = WriterSpec(old.name, rest, old.write, old.description)
        else:
            del _WRITERS[name]
    _WRITERS[spec.name] = spec
    return spec


def unregister_writer(name: str) -> WriterSpec:
    """Remove a registered writer (``KeyError`` if there is none of that name); returns it."""
    try:
        return _WRITERS.pop(name)
    except KeyError:
        raise KeyError(f"no writer named '{name}' is registered") from None


def registered_writers() -> list[WriterSpec]:
    """The registered writers, in registration order."""
    return list(_WRITERS.values())


def get_writer(path: str | Path) -> WriterSpec:
    """The writer of ``path``, by its last suffix (a final ``.gz`` ignored).

    Raises
    ------
    InputError
        Naming the path, for a suffix no writer owns (the message lists the known ones).
    """
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1:
        suffixes = suffixes[:-1]
    if suffixes:
        for spec in _WRITERS.values():
            if suffixes[-1] in spec.suffixes:
                return spec
    known = sorted(s for w in _WRITERS.values() for s in w.suffixes)
    raise InputError(f"unknown table format '{''.join(path.suffixes)}'; use one of {known} "
                     "(optionally .gz for FITS/CSV)", source=str(path))


# ------------------------------------------------------------------ built-in writers
def _write_csv(tab: Any, path: Path) -> None:
    tab.write(path, format="ascii.csv", overwrite=True)


def _write_ecsv(tab: Any, path: Path) -> None:
    tab.write(path, format="ascii.ecsv", overwrite=True)


# Parquet and FITS are registered by kielnet.io.tables, which holds their writers
register_writer("ascii.csv", suffixes=(".csv",), write=_write_csv, description="CSV")
register_writer("ascii.ecsv", suffixes=(".ecsv",), write=_write_ecsv, description="ECSV")
