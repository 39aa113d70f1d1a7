"""Registry of declarative presets: one YAML file per preset in this folder."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kielnet.errors import ConfigError

__all__ = ["available", "preset_path"]


def available() -> list[str]:
    """Names of the presets shipped with kielnet."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    """Path of the preset ``name``; raises :class:`ConfigError` listing the known ones."""
    path = Path(str(resources.files(__name__) / f"{name}.yaml"))
    if not path.is_file():
        raise ConfigError(f"unknown preset '{name}'; available: {', '.join(available())}")
    return path
