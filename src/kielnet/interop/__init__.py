"""Other codes' trained networks in kielnet, and kielnet's in theirs.

One registry per direction: :data:`IMPORTERS` (name → function(path, **options) →
:class:`~kielnet.compute.Bundle`) and :data:`EXPORTERS` (name → function(bundle, path) →
path). ``kielnet import-weights NAME FILE --out BUNDLE`` and ``kielnet export-weights``
use them.

* ``apogeenet2``: the official APOGEE Net II ``model.pt`` (:mod:`kielnet.interop.apogeenet2`).
"""

from __future__ import annotations

from typing import Callable

from kielnet.interop import apogeenet2

IMPORTERS: dict[str, Callable] = {"apogeenet2": apogeenet2.import_apogeenet2}
EXPORTERS: dict[str, Callable] = {"apogeenet2": apogeenet2.export_apogeenet2}
#: name → function(bundle) → the MODEL_CARD.md text of an imported bundle
MODEL_CARDS: dict[str, Callable] = {"apogeenet2": apogeenet2.model_card}

__all__ = ["IMPORTERS", "EXPORTERS", "MODEL_CARDS"]
