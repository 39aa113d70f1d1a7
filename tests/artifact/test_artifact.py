"""The artifact package: the recorded digests of a saved bundle, verify_bundle, the one
network factory, and the typed registry of shipped models."""

from __future__ import annotations

import json

import pytest
import torch

from kielnet.artifact import (SHIPPED, available, build_network, file_sha256, load_bundle, member_networks,
                              save_bundle, state_dict_digest, verify_bundle)
from kielnet.errors import BundleError


def test_saved_bundle_records_the_digests_of_its_files_and_members(synthetic_bundle, tmp_path):
    path = save_bundle(synthetic_bundle, tmp_path / "b")
    meta = json.loads((path / "bundle.json").read_text())
    for entry in meta["members"]:
        assert file_sha256(path / entry["file"]) == entry["sha256"]
    assert verify_bundle(path) == {e["file"]: e["sha256"] for e in meta["members"]}
    back = load_bundle(path)
    assert [state_dict_digest(sd) for sd in back.members] == [state_dict_digest(sd) for sd in synthetic_bundle.members]
    assert back.fingerprint() == synthetic_bundle.fingerprint()


def test_verify_bundle_names_a_changed_file(synthetic_bundle, tmp_path):
    path = save_bundle(synthetic_bundle, tmp_path / "b")
    f = path / "member_001.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="member_001.safetensors: SHA-256 mismatch"):
        verify_bundle(path)


def test_network_factory_is_seeded_and_members_are_checked(tiny_config):
    a = build_network(tiny_config, 48, {"phot": 8}, seed=3)
    b = build_network(tiny_config, 48, {"phot": 8}, seed=3)
    assert state_dict_digest(a.state_dict()) == state_dict_digest(b.state_dict())
    assert state_dict_digest(a.state_dict()) != state_dict_digest(build_network(tiny_config, 48, {"phot": 8},
                                                                                seed=4).state_dict())


def test_member_networks_refuse_weights_of_another_architecture(synthetic_bundle):
    b = synthetic_bundle
    nets = member_networks(b.config, b.preprocessor, b.members)
    assert len(nets) == 2 and not nets[0].training
    bad = dict(b.members[0])
    name = next(k for k in bad if k.startswith("head.") and k.endswith("weight"))
    bad[name] = torch.zeros(bad[name].shape[0] + 1, *bad[name].shape[1:])
    with pytest.raises(BundleError, match=name.replace(".", r"\.")):
        member_networks(b.config, b.preprocessor, [bad], where="test")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_registry_entry_describes_the_shipped_bundle(name):
    entry = SHIPPED[name]
    assert name in available() and available()[name] == entry.path
    meta = json.loads((entry.path / "bundle.json").read_text())
    assert file_sha256(entry.path / "bundle.json") == entry.sha256
    assert meta["config"]["name"] == entry.preset
    assert tuple(lab["name"] for lab in meta["config"]["labels"]) == entry.labels
    features = tuple(f["name"] for f in meta["config"]["features"])
    assert entry.inputs[-len(features):] == features
    assert set(entry.metrics) == set(entry.labels)
    assert entry.licence and entry.citation and entry.source
    assert verify_bundle(name)


def test_every_shipped_directory_is_registered():
    from kielnet.artifact.registry import MODELS_DIR

    dirs = {p.name for p in MODELS_DIR.iterdir() if (p / "bundle.json").is_file()}
    assert dirs == set(SHIPPED)
