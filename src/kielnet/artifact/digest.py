"""The one weight digest of kielnet, and the content hashes of a bundle's files.

* :func:`state_dict_digest`: SHA-256 (hex) of a member's tensors — what identifies a
  member everywhere (duplicate members, the bundle fingerprint, the networks an
  embedding OOD reference was fitted with);
* :func:`file_sha256`: SHA-256 (hex) of a file's bytes (``bundle.json`` checksums);
* :func:`canonical_json`: the JSON text that content hashes are taken of.

Embedding OOD files written before this module existed recorded a short SHA-1 of the
members' raw bytes instead; :func:`digest_matches` still accepts those.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["state_dict_digest", "net_digest", "digest_matches", "file_sha256", "canonical_json"]


def _hash_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())


def state_dict_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex, 64 digits) of a member's tensors: names in sorted order, each with
    its dtype, shape and raw bytes (C order). Independent of memory layout (channels-last
    or not) and of how the tensors were stored, so a member saved and loaded again has
    the same digest."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode("utf-8"))
        h.update(b"\0")
        _hash_tensor(h, state[k])
    return h.hexdigest()


def net_digest(net: nn.Module) -> str:
    """:func:`state_dict_digest` of a network's weights and buffers."""
    return state_dict_digest(net.state_dict())


def _legacy_digest(state: Mapping[str, torch.Tensor]) -> str:
    """The 16-digit SHA-1 that embedding OOD files written by kielnet <= 0.1 recorded
    (read-only compatibility: nothing writes it any more)."""
    h = hashlib.sha1()
    for k, v in sorted(state.items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def digest_matches(state: Mapping[str, torch.Tensor], recorded: str) -> bool:
    """Whether ``recorded`` (a :func:`state_dict_digest`, or the short digest of an older
    embedding OOD file) is the digest of ``state``."""
    if len(recorded) == 16:
        return _legacy_digest(state) == recorded
    return state_dict_digest(state) == recorded


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of the bytes of file ``path``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """``obj`` as JSON with sorted keys and no whitespace (the text content hashes are taken of)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True, ensure_ascii=True)
