"""Bundle integrity: nothing silently wrong.

Corrupt, tampered or inconsistent bundles are refused at load time with a
BundleError naming the bundle and the file or key; a bundle saved and loaded again
predicts bit-identically and keeps its fingerprint. Synthetic bundles only (no real data).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from kielnet.errors import BundleError
from kielnet.artifact.digest import state_dict_digest
from kielnet.artifact.store import BUNDLE_FORMAT, load_bundle, save_bundle
from kielnet.inference.predict import predict
from kielnet.compute.embeddings import fit_embedding_ood
from kielnet.quality.embedding import EmbeddingOOD

TOP_LEVEL_KEYS = ["format", "versions", "config", "preprocessing", "members", "running_dispersion",
                  "label_ranges", "feature_ranges", "training_data", "validation", "ensemble_spread",
                  "quality", "checksums"]


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def saved(synthetic_bundle, tmp_path_factory):
    """The synthetic 2-member bundle saved once (tests copy it before editing)."""
    return save_bundle(synthetic_bundle, tmp_path_factory.mktemp("integrity") / "bundle")


@pytest.fixture(scope="module")
def saved_with_quality(synthetic_bundle, tmp_path_factory):
    """The synthetic bundle with an (untrained-config) OOD reference and t-SNE reference."""
    from conftest import synthetic_table

    nets = synthetic_bundle.build_members()
    prep = synthetic_bundle.preprocessor.transform(synthetic_table(n=40, n_pix=48, seed=31), with_labels=False)
    ood = fit_embedding_ood(EmbeddingOOD(max_reference=30, random_state=0), nets, prep)
    b = replace(synthetic_bundle, ood=ood, tsne_reference=np.ascontiguousarray(prep.spectrum[:20]))
    return save_bundle(b, tmp_path_factory.mktemp("integrity_q") / "bundle")


def copy(src, tmp_path, name="b"):
    dst = tmp_path / name
    shutil.copytree(src, dst, symlinks=True)
    return dst


def read_meta(path):
    return json.loads((path / "bundle.json").read_text())


def write_meta(path, meta):
    (path / "bundle.json").write_text(json.dumps(meta, indent=1))


def flip_byte(f, offset):
    raw = bytearray(f.read_bytes())
    raw[offset] ^= 0x01
    f.write_bytes(bytes(raw))


def data_offset(f):
    """First byte of a safetensors file's tensor data (after the 8-byte length + header)."""
    return 8 + int.from_bytes(f.read_bytes()[:8], "little")


# ----------------------------------------------------------------------------- checksums
def test_saved_bundle_records_checksums(saved, synthetic_bundle):
    meta = read_meta(saved)
    assert meta["format"] == BUNDLE_FORMAT == 2
    for m in meta["members"]:
        assert m["sha256"] == hashlib.sha256((saved / m["file"]).read_bytes()).hexdigest()
    assert meta["checksums"] == {} and meta["quality"] == {}
    assert len(load_bundle(saved).members) == len(synthetic_bundle.members)


@pytest.mark.parametrize("where", ["data", "last", "header"])
def test_flipped_member_byte_is_refused(saved, tmp_path, where):
    b = copy(saved, tmp_path)
    f = b / "member_001.safetensors"
    start = data_offset(f)
    offset = {"data": start + (f.stat().st_size - start) // 2, "last": f.stat().st_size - 1, "header": 20}[where]
    assert where == "header" or offset >= start
    flip_byte(f, offset)
    with pytest.raises(BundleError, match=r"member_001\.safetensors: SHA-256 mismatch") as exc:
        load_bundle(b)
    assert str(b) in str(exc.value)


@pytest.mark.parametrize("name", ["embedding_ood.safetensors", "tsne_reference.safetensors"])
def test_flipped_quality_byte_is_refused(saved_with_quality, tmp_path, name):
    back = load_bundle(saved_with_quality)  # intact: loads, with its quality machinery
    assert back.ood is not None and back.tsne_reference is not None
    assert set(read_meta(saved_with_quality)["checksums"]) == {"embedding_ood.safetensors",
                                                               "tsne_reference.safetensors"}
    b = copy(saved_with_quality, tmp_path)
    f = b / name
    flip_byte(f, f.stat().st_size - 3)
    with pytest.raises(BundleError, match=rf"{name}: SHA-256 mismatch"):
        load_bundle(b)


def test_quality_file_without_checksum_is_refused(saved_with_quality, tmp_path):
    b = copy(saved_with_quality, tmp_path)
    meta = read_meta(b)
    del meta["checksums"]["tsne_reference.safetensors"]
    write_meta(b, meta)
    with pytest.raises(BundleError, match=r"checksums\.tsne_reference\.safetensors"):
        load_bundle(b)


def test_bad_checksum_entry_is_refused(saved, tmp_path):
    b = copy(saved, tmp_path)
    meta = read_meta(b)
    meta["members"][0]["sha256"] = "not-a-digest"
    write_meta(b, meta)
    with pytest.raises(BundleError, match=r"members\[0\]\.sha256"):
        load_bundle(b)


# ----------------------------------------------------------------------------- file names
@pytest.mark.parametrize("name", ["../x.safetensors", "/etc/passwd", "sub/member_000.safetensors",
                                  "..", "C:member_000.safetensors", "..\\x.safetensors"])
def test_member_paths_outside_the_bundle_are_refused(saved, tmp_path, name):
    b = copy(saved, tmp_path)
    shutil.copy(b / "member_001.safetensors", tmp_path / "x.safetensors")
    meta = read_meta(b)
    meta["members"][1]["file"] = name
    write_meta(b, meta)
    with pytest.raises(BundleError, match=r"members\[1\]\.file.*not a plain file name"):
        load_bundle(b)


def test_quality_path_outside_the_bundle_is_refused(saved_with_quality, tmp_path):
    b = copy(saved_with_quality, tmp_path)
    meta = read_meta(b)
    meta["quality"]["tsne_reference"] = "../tsne_reference.safetensors"
    write_meta(b, meta)
    with pytest.raises(BundleError, match=r"quality\.tsne_reference.*not a plain file name"):
        load_bundle(b)


def test_symlink_leading_outside_is_refused(saved, tmp_path):
    b = copy(saved, tmp_path)
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(b / "member_000.safetensors", outside)
    os.symlink(outside, b / "member_000.safetensors")
    with pytest.raises(BundleError, match=r"members\[0\]\.file.*symbolic link.*outside"):
        load_bundle(b)
    # a link to a file inside the bundle is a plain member
    (b / "member_000.safetensors").unlink()
    shutil.move(outside, b / "real_000.safetensors")
    os.symlink("real_000.safetensors", b / "member_000.safetensors")
    assert len(load_bundle(b).members) == 2


# ----------------------------------------------------------------------------- duplicates
def test_member_listed_twice_is_refused(saved, tmp_path):
    b = copy(saved, tmp_path)
    meta = read_meta(b)
    meta["members"][1] = dict(meta["members"][0])
    write_meta(b, meta)
    with pytest.raises(BundleError, match=r"member_000\.safetensors again.*spread would be underestimated"):
        load_bundle(b)


def test_copied_member_under_a_new_name_is_refused(saved, tmp_path):
    b = copy(saved, tmp_path)
    shutil.copy(b / "member_000.safetensors", b / "member_001.safetensors")
    meta = read_meta(b)
    meta["members"][1]["sha256"] = meta["members"][0]["sha256"]
    write_meta(b, meta)
    with pytest.raises(BundleError, match=r"member_001\.safetensors duplicates member_000\.safetensors.*"
                                          r"spread would be underestimated"):
        load_bundle(b)


def test_save_refuses_duplicated_or_missing_members(synthetic_bundle, tmp_path):
    dup = replace(synthetic_bundle, members=[synthetic_bundle.members[0], dict(synthetic_bundle.members[0])])
    with pytest.raises(BundleError, match="duplicates"):
        save_bundle(dup, tmp_path / "dup")
    with pytest.raises(BundleError, match="no members"):
        save_bundle(replace(synthetic_bundle, members=[], member_info=[]), tmp_path / "empty")
    with pytest.raises(BundleError, match="member_info"):
        save_bundle(replace(synthetic_bundle, member_info=synthetic_bundle.member_info[:1]), tmp_path / "short")
    assert not (tmp_path / "dup").exists() and not (tmp_path / "empty").exists()


# ----------------------------------------------------------------------------- bundle.json structure
def test_empty_member_list_is_refused(saved, tmp_path):
    b = copy(saved, tmp_path)
    meta = read_meta(b)
    meta["members"] = []
    write_meta(b, meta)
    with pytest.raises(BundleError, match="'members' is empty"):
        load_bundle(b)


@pytest.mark.parametrize("key", TOP_LEVEL_KEYS)
def test_each_missing_top_level_key_is_named(saved, tmp_path, key):
    b = copy(saved, tmp_path)
    meta = read_meta(b)
    assert key in meta
    del meta[key]
    write_meta(b, meta)
    with pytest.raises(BundleError, match=f"'{key}'"):
        load_bundle(b)


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m.__setitem__("members", {"file": "member_000.safetensors"}), r"'members' must be a list"),
    (lambda m: m["members"][0].pop("file"), r"'members\[0\]\.file'"),
    (lambda m: m["members"][1].pop("seed"), r"'members\[1\]\.seed'"),
    (lambda m: m["members"][0].__setitem__("file", 7), r"'members\[0\]\.file' must be a string"),
    (lambda m: m["members"].__setitem__(0, "member_000.safetensors"), r"'members\[0\]' must be a JSON object"),
    (lambda m: m["label_ranges"].pop("logg"), r"label_ranges\.logg"),
    (lambda m: m["label_ranges"].__setitem__("logg", [1.0]), r"label_ranges\.logg"),
    (lambda m: m["running_dispersion"].__setitem__("vsini", m["running_dispersion"]["teff"]),
     r"running_dispersion\.vsini"),
    (lambda m: m["running_dispersion"]["teff"].pop("coeffs"), r"running_dispersion\.teff\.coeffs"),
    (lambda m: m["preprocessing"].pop("pixel_std"), r"preprocessing\.pixel_std"),
    (lambda m: m["preprocessing"].__setitem__("label_transforms", []), r"preprocessing\.label_transforms"),
    (lambda m: m["config"].__setitem__("labels", "teff"), r"'config' is not a valid kielnet configuration"),
    (lambda m: m.__setitem__("quality", {"nonsense": "member_000.safetensors"}), r"'quality'.*nonsense"),
])
def test_mistyped_entries_are_named(saved, tmp_path, edit, needle):
    b = copy(saved, tmp_path)
    meta = read_meta(b)
    edit(meta)
    write_meta(b, meta)
    with pytest.raises(BundleError, match=needle):
        load_bundle(b)


@pytest.mark.parametrize("text", ["[1, 2]", "\"bundle\"", "null", "{not json"])
def test_bundle_json_must_be_an_object(saved, tmp_path, text):
    b = copy(saved, tmp_path)
    (b / "bundle.json").write_text(text)
    with pytest.raises(BundleError, match="JSON"):
        load_bundle(b)


@pytest.mark.parametrize("fmt", [0, 3, "2", True, None])
def test_other_formats_are_refused(saved, tmp_path, fmt):
    b = copy(saved, tmp_path)
    meta = read_meta(b)
    meta["format"] = fmt
    write_meta(b, meta)
    with pytest.raises(BundleError, match="unsupported bundle format"):
        load_bundle(b)


# ----------------------------------------------------------------------------- config vs tensors
def test_edited_n_pix_blames_the_bundle(saved, tmp_path):
    b = copy(saved, tmp_path)
    meta = read_meta(b)
    meta["preprocessing"]["n_pix"] = 8575
    write_meta(b, meta)
    with pytest.raises(BundleError, match=r"preprocessing\.pixel_mean' has 48 values but preprocessing\.n_pix "
                                          r"is 8575") as exc:
        load_bundle(b)
    assert str(b) in str(exc.value)


def test_consistent_preprocessing_of_another_length_blames_the_bundle(saved, tmp_path):
    b = copy(saved, tmp_path)
    meta = read_meta(b)
    pre = meta["preprocessing"]
    pre["n_pix"] = 60
    pre["pixel_mean"] = pre["pixel_mean"] + pre["pixel_mean"][:12]
    pre["pixel_std"] = pre["pixel_std"] + pre["pixel_std"][:12]
    write_meta(b, meta)
    with pytest.raises(BundleError, match=r"bundle\.json says 60-pixel spectra \(preprocessing\.n_pix\) but "
                                          r"member_000\.safetensors was trained on spectra of 48 to 51 pixels "
                                          r"\(parameter 'spectrum\.dense\.0\.weight' has shape \(16, 48\) in the "
                                          r"file but \(16, 60\)"):
        load_bundle(b)


def test_pixel_statistics_must_be_finite(saved, tmp_path):
    b = copy(saved, tmp_path)
    meta = read_meta(b)
    meta["preprocessing"]["pixel_std"][3] = 0.0
    write_meta(b, meta)
    with pytest.raises(BundleError, match=r"preprocessing\.pixel_std"):
        load_bundle(b)


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c["model"]["head"].__setitem__("layers", [17]),
     r"member_000\.safetensors does not match the architecture.*'head\.0\.weight'.*\(16, 24\).*\(17, 24\)"
     r".*config\.model\.head"),
    (lambda c: c["model"]["spectrum"]["conv"][0].__setitem__("channels", 5),
     r"member_000\.safetensors does not match the architecture.*spectrum\.conv\.0\.weight.*"
     r"config\.model\.spectrum\.conv"),
    (lambda c: c["model"]["spectrum"].__setitem__("batchnorm", True),
     r"member_000\.safetensors does not match the architecture.*missing from the file"),
])
def test_architecture_mismatch_names_file_parameter_and_setting(saved, tmp_path, edit, needle):
    b = copy(saved, tmp_path)
    meta = read_meta(b)
    edit(meta["config"])
    write_meta(b, meta)
    with pytest.raises(BundleError, match=needle):
        load_bundle(b)


def test_nan_weights_are_refused_even_unverified(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    b = copy(saved, tmp_path)
    sd = load_file(str(b / "member_000.safetensors"))
    k = sorted(sd)[0]
    sd[k].view(-1)[0] = float("nan")
    save_file(sd, str(b / "member_000.safetensors"))
    meta = read_meta(b)
    meta["members"][0]["sha256"] = hashlib.sha256((b / "member_000.safetensors").read_bytes()).hexdigest()
    write_meta(b, meta)
    with pytest.raises(BundleError, match=rf"member_000\.safetensors: parameter '{k}' holds non-finite"):
        load_bundle(b)


# ----------------------------------------------------------------------------- format 1
def as_format_1(b):
    meta = read_meta(b)
    meta["format"] = 1
    for m in meta["members"]:
        del m["sha256"]
    del meta["checksums"]
    write_meta(b, meta)


def test_format_1_bundle_loads_with_a_warning(saved, tmp_path, make_table):
    b = copy(saved, tmp_path)
    as_format_1(b)
    with pytest.warns(UserWarning, match="cannot be verified"):
        old = load_bundle(b)
    stars = make_table(n=12, n_pix=48, seed=41)
    cat_old, cat_new = predict(old, stars), predict(load_bundle(saved), stars)
    assert np.array_equal(np.asarray(cat_old["teff"]), np.asarray(cat_new["teff"]), equal_nan=True)
    # re-saving adds the checksums
    again = save_bundle(old, tmp_path / "resaved")
    assert read_meta(again)["format"] == 2 and all("sha256" in m for m in read_meta(again)["members"])


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_corrupt_format_1_member_is_a_bundle_error(saved, tmp_path, damage):
    b = copy(saved, tmp_path)
    as_format_1(b)
    f = b / "member_001.safetensors"
    raw = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(raw[: len(raw) // 2])
    else:
        f.write_bytes(raw[:8] + b"{" + raw[9:])  # header JSON no longer parses
        flip_byte(f, 10)
    with pytest.warns(UserWarning), pytest.raises(BundleError, match=r"member_001\.safetensors"):
        load_bundle(b)


# ----------------------------------------------------------------------------- fingerprint
def test_fingerprint_is_stable_over_save_and_load(synthetic_bundle, saved, tmp_path):
    fp = synthetic_bundle.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    loaded = load_bundle(saved)
    assert loaded.fingerprint() == fp
    assert load_bundle(save_bundle(loaded, tmp_path / "again")).fingerprint() == fp
    assert synthetic_bundle.fingerprint() == fp  # deterministic


def test_fingerprint_changes_with_weights_config_and_calibrations(saved, saved_with_quality):
    loaded = load_bundle(saved)
    fp = loaded.fingerprint()
    nets_before = loaded.build_members()
    assert loaded.build_members()[0] is nets_before[0]  # built once at load time
    k = "head.0.weight"
    loaded.members[1][k][0, 0] += 1e-3  # one weight
    assert loaded.fingerprint() != fp
    nets_after = loaded.build_members()  # the cached networks are rebuilt from the new weights
    assert nets_after[1] is not nets_before[1]
    assert torch.equal(nets_after[1].state_dict()[k], loaded.members[1][k])
    loaded.members[1][k][0, 0] -= 1e-3
    fresh = load_bundle(saved)
    assert fresh.fingerprint() == fp
    cfg = fresh.config.with_overrides(inference={"n_realisations": 3})
    assert replace(fresh, config=cfg).fingerprint() != fp
    fresh.label_ranges["teff"] = (fresh.label_ranges["teff"][0] - 1.0, fresh.label_ranges["teff"][1])
    assert fresh.fingerprint() != fp
    q = load_bundle(saved_with_quality)
    assert q.fingerprint() != fp
    assert replace(q, tsne_reference=q.tsne_reference[:10]).fingerprint() != q.fingerprint()
    assert replace(q, ood=None, tsne_reference=None).fingerprint() == fp


def test_fingerprint_is_cheap(synthetic_bundle):
    gen = torch.Generator().manual_seed(0)
    members = [{"w": torch.randn(256, 1024, generator=gen)} for _ in range(28)]  # 28 x 1 MB
    big = replace(synthetic_bundle, members=members, member_info=synthetic_bundle.member_info[:1] * 28)
    t0 = time.perf_counter()
    fp = big.fingerprint()
    assert time.perf_counter() - t0 < 1.0
    assert fp != synthetic_bundle.fingerprint()


def test_state_dict_digest_ignores_memory_layout():
    w = torch.randn(4, 3, 1, 5)
    assert state_dict_digest({"w": w}) == state_dict_digest({"w": w.contiguous(memory_format=torch.channels_last)})
    assert state_dict_digest({"w": w}) != state_dict_digest({"w": w.double()})
    assert state_dict_digest({"a": w, "b": w}) != state_dict_digest({"a": w, "c": w})


# ----------------------------------------------------------------------------- predictions
@pytest.mark.parametrize("n_real", [0, 2])
def test_round_trip_predictions_are_bit_identical(synthetic_bundle, saved, make_table, n_real):
    stars = make_table(n=40, n_pix=48, seed=42)
    a = predict(synthetic_bundle, stars, n_realisations=n_real)
    b = predict(load_bundle(saved), stars, n_realisations=n_real)
    assert a.colnames == b.colnames
    n_float = 0
    for c in a.colnames:
        x, y = np.asarray(a[c]), np.asarray(b[c])
        if x.dtype.kind == "f":
            n_float += 1
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), c
        else:
            assert x.tolist() == y.tolist(), c
    assert n_float >= 12
