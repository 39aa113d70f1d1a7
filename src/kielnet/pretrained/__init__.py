"""Pretrained model bundles shipped inside the package.

Each subdirectory holding a ``bundle.json`` is a bundle (:mod:`kielnet.inference.bundle`)
with a ``MODEL_CARD.md`` (training data and cuts, label and input ranges, held-out
metrics and coverage, licence, what to cite). ``--bundle NAME`` and
:func:`kielnet.inference.bundle.load_bundle` accept a shipped name wherever they accept
a bundle directory; ``kielnet models`` lists them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODELS_DIR", "available", "resolve_bundle", "model_card"]

MODELS_DIR = Path(__file__).resolve().parent


def available() -> dict[str, Path]:
    """Shipped model name → bundle directory, sorted by name."""
    return {p.name: p for p in sorted(MODELS_DIR.iterdir()) if (p / "bundle.json").is_file()}


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
