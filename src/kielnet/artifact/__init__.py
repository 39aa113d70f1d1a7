"""The trained-ensemble artifact: everything about a bundle in one package.

* :mod:`kielnet.artifact.bundle` — the :class:`Bundle` type and :class:`MemberInfo`;
* :mod:`kielnet.artifact.network` — the one network factory (:func:`build_network`) and
  the members built and checked against the config (:func:`member_networks`);
* :mod:`kielnet.artifact.digest` — the one weight digest (:func:`state_dict_digest`) and
  file checksums;
* :mod:`kielnet.artifact.store` — :func:`save_bundle`, :func:`load_bundle`,
  :func:`verify_bundle` (safetensors + JSON, self-describing, verified);
* :mod:`kielnet.artifact.registry` — the shipped pretrained models (:data:`SHIPPED`).

Imports config, data, models, quality and errors; training, inference, interop and the
CLI import it, never the other way round.
"""

from kielnet.artifact.bundle import Bundle, MemberInfo
from kielnet.artifact.digest import file_sha256, net_digest, state_dict_digest
from kielnet.artifact.network import build_network, member_networks
from kielnet.artifact.registry import SHIPPED, ShippedModel, available, model_card, resolve_bundle
from kielnet.artifact.store import BUNDLE_FORMAT, load_bundle, save_bundle, verify_bundle

__all__ = ["Bundle", "MemberInfo", "build_network", "member_networks", "state_dict_digest", "net_digest",
           "file_sha256", "save_bundle", "load_bundle", "verify_bundle", "BUNDLE_FORMAT", "SHIPPED",
           "ShippedModel", "available", "model_card", "resolve_bundle"]
