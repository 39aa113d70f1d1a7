"""The built-in input formats: one module per format, each registering its reader.

Every module of this package declares one format — its name, how it is detected
(``identify``: a suffix, a file name, a header sniff), how it is read whole and how it
is streamed (its hooks, see :class:`~kielnet.io.registry.ReaderSpec`) — and registers
it with :func:`~kielnet.io.registry.register_reader` when imported. Importing this
package (which :mod:`kielnet.io` does) imports every module in it, so a new built-in
format is one new module here; :mod:`kielnet.io.sources` and the command line never
name a format.

============  ===  ==============================================================
name          pri  identifies (module)
============  ===  ==============================================================
xp-library     30  the name ``xp-library`` (the embedded APOGEE DR17 × Gaia XP
                   library), an ``.npz`` file (the library's subset form), a file
                   ``apogee_library_spectra*.fits[.gz]`` (:mod:`.xp_library`)
apstar         20  a file whose name starts with ``apStar``; a directory holding one
                   (:mod:`.apstar`)
gaia-xp        15  a CSV / ECSV / FITS / VOTable file with a column
                   ``bp_coefficients`` or ``rp_coefficients`` (archive XP continuous,
                   :mod:`.gaia_xp`)
gaia-rvs       10  such a file with columns ``source_id``, ``flux`` and ``wavelength``
                   or ``solution_id`` (archive RVS mean spectra); a directory holding
                   a ``.csv`` / ``.ecsv`` / ``.fits`` / ``.vot`` file (:mod:`.gaia_rvs`)
table           0  a ``.fits`` / ``.fit`` / ``.fz`` / ``.parquet`` / ``.pq`` / ``.csv`` /
                   ``.ecsv`` file (``.gz`` allowed after FITS / CSV); a directory (a
                   Parquet dataset) whose files are all ``.parquet`` / ``.pq``
                   (:mod:`.table`)
============  ===  ==============================================================

A format module's read functions look the reading function up in :mod:`kielnet.io`
at call time where :mod:`kielnet.io` exports one (``read_table``, ``read_apstar``,
``load_xp_library``), so that replacing it there (e.g. in a test) replaces what the
registry calls.
"""

from __future__ import annotations

import importlib
import pkgutil

__all__ = ["BUILTIN_FORMATS"]


def _import_all() -> tuple[str, ...]:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return tuple(names)


#: The modules of this package (each one format), imported in this order.
BUILTIN_FORMATS = _import_all()
