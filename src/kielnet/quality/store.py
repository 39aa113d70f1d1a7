"""One safetensors file per fitted quality state: its arrays as tensors, its settings as
JSON under one metadata key (plus the kielnet version). No pickle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["save_state", "load_state"]


def save_state(path: str | Path, arrays: dict[str, np.ndarray], key: str, meta: dict) -> Path:
    """Write ``arrays`` and ``meta`` (JSON under metadata ``key``) to ``path``."""
    from safetensors.numpy import save_file

    from kielnet import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path),
              metadata={"kielnet": __version__, key: json.dumps(meta)})
    return path


def load_state(path: str | Path, key: str, what: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a file written by :func:`save_state`; a ValueError naming
    ``what`` if the file holds no such state."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta_s = (f.metadata() or {}).get(key)
        if meta_s is None:
            raise ValueError(f"{path} is not {what} file")
        return json.loads(meta_s), {k: f.get_tensor(k) for k in f.keys()}
