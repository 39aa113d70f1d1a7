"""Model bundles: save/load round trip, no pickle, clear errors for broken bundles."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors import safe_open

from kielnet.errors import BundleError
from kielnet.artifact.store import BUNDLE_FORMAT, load_bundle, save_bundle
from kielnet.inference.predict import predict
from kielnet.training.ensemble import train_ensemble


def _assert_same_catalogue(a, b):
    assert a.colnames == b.colnames
    for c in a.colnames:
        x, y = np.asarray(a[c]), np.asarray(b[c])
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y)  # NaN positions must agree too
        else:
            assert x.tolist() == y.tolist()


def test_round_trip_gives_identical_predictions(tiny_holdout, tmp_path):
    loaded = load_bundle(tiny_holdout.bundle_dir)
    test = tiny_holdout.test
    _assert_same_catalogue(predict(tiny_holdout.bundle, test), predict(loaded, test))
    _assert_same_catalogue(predict(loaded, test), tiny_holdout.catalogue)
    # save the loaded bundle again: still the same predictions
    again = load_bundle(save_bundle(loaded, tmp_path / "copy"))
    _assert_same_catalogue(predict(again, test), tiny_holdout.catalogue)
    assert again.config == tiny_holdout.bundle.config
    assert again.label_ranges == tiny_holdout.bundle.label_ranges
    assert again.member_info == tiny_holdout.bundle.member_info


def test_bundle_holds_json_and_safetensors_only(tiny_bundle_dir):
    files = sorted(p.name for p in tiny_bundle_dir.iterdir())
    assert files == ["bundle.json", "member_000.safetensors", "member_001.safetensors", "neighbours.safetensors"]
    meta = json.loads((tiny_bundle_dir / "bundle.json").read_text())
    assert meta["format"] == BUNDLE_FORMAT
    assert [m["file"] for m in meta["members"]] == files[1:3]
    assert meta["quality"] == {"neighbours": "neighbours.safetensors"}  # the preset's neighbour model
    assert set(meta) >= {"config", "preprocessing", "running_dispersion", "label_ranges", "feature_ranges",
                         "versions", "training_data", "validation"}
    assert meta["config"]["name"] == "xp_hybrid"
    assert len(meta["preprocessing"]["pixel_mean"]) == 343
    assert meta["versions"]["kielnet"] and meta["versions"]["scipy"]  # the neighbour search is SciPy's
    for name in files[1:]:
        raw = (tiny_bundle_dir / name).read_bytes()
        # safetensors: an 8-byte header length, then that JSON header (not pickle / a torch zip; the
        # length's first byte may be 0x80 or 'P' itself, so the layout is checked, not the first bytes)
        header_len = int.from_bytes(raw[:8], "little")
        assert raw[8:9] == b"{" and 8 + header_len <= len(raw)
        header = json.loads(raw[8:8 + header_len])                      # safetensors layout
        assert header["__metadata__"]["kielnet"]
        with safe_open(str(tiny_bundle_dir / name), framework="pt") as f:
            assert len(list(f.keys())) > 0


def test_loaded_bundle_needs_no_training_data(tiny_bundle_dir, tmp_path):
    moved = tmp_path / "moved_bundle"
    shutil.copytree(tiny_bundle_dir, moved)
    b = load_bundle(moved)
    assert len(b.members) == 2 and b.preprocessor.n_pix == 343
    assert set(b.running_dispersion) == {"teff", "logg", "fe_h", "alpha_m"}


def test_load_bundle_errors(tiny_bundle_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match="no bundle.json"):
        load_bundle(empty)
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "does_not_exist")

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle_dir, broken)
    (broken / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(broken)

    future = tmp_path / "future"
    shutil.copytree(tiny_bundle_dir, future)
    meta = json.loads((future / "bundle.json").read_text())
    meta["format"] = 999
    (future / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="format"):
        load_bundle(future)

    lacking = tmp_path / "lacking"
    shutil.copytree(tiny_bundle_dir, lacking)
    (lacking / "member_001.safetensors").unlink()
    with pytest.raises(BundleError, match="member_001.safetensors"):
        load_bundle(lacking)


def test_weights_of_another_architecture_are_a_bundle_error(tiny_bundle_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_bundle_dir, other)
    meta = json.loads((other / "bundle.json").read_text())
    meta["config"]["model"]["head"]["layers"] = [65]
    (other / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="architecture") as info:   # at load, naming the file
        load_bundle(other)
    assert "member_000.safetensors" in str(info.value) and "config.model.head" in str(info.value)


def test_save_over_an_existing_bundle(tiny_bundle, tmp_path):
    path = tmp_path / "b"
    save_bundle(tiny_bundle, path)
    (path / "stale.txt").write_text("left over from an old bundle")
    save_bundle(tiny_bundle, path)
    assert not (path / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp / .old directories left
    assert len(load_bundle(path).members) == 2


def test_saving_the_same_bundle_again_keeps_every_file_byte_for_byte(tiny_bundle, tmp_path):
    """safetensors writes its metadata in no fixed order, so re-saving unchanged weights
    (e.g. re-shipping a model) must put the old bytes back, or every weight file and its
    SHA-256 would change; a member whose tensors did change is written anew."""
    import copy

    import torch

    path = tmp_path / "b"
    save_bundle(tiny_bundle, path)
    first = {p.name: p.read_bytes() for p in path.iterdir()}
    for _ in range(3):  # each save orders the metadata anew
        save_bundle(tiny_bundle, path)
        assert {p.name: p.read_bytes() for p in path.iterdir()} == first
    changed = copy.copy(tiny_bundle)
    changed.members = [dict(sd) for sd in tiny_bundle.members]
    key = next(iter(changed.members[1]))
    changed.members[1][key] = changed.members[1][key] + torch.ones_like(changed.members[1][key])
    save_bundle(changed, path)
    assert (path / "member_000.safetensors").read_bytes() == first["member_000.safetensors"]
    assert (path / "member_001.safetensors").read_bytes() != first["member_001.safetensors"]
    again = load_bundle(path)
    assert torch.equal(again.members[1][key], changed.members[1][key])


def test_channels_last_bundle_round_trip(make_table, tiny_config, tmp_path):
    cfg = tiny_config.with_overrides(model={"channels_last_2d": True})
    table = make_table(n=60, n_pix=40, seed=8)
    bundle = train_ensemble(table, cfg, progress=False, log=lambda *_: None)
    loaded = load_bundle(save_bundle(bundle, tmp_path / "cl"))
    new = make_table(n=10, n_pix=40, seed=9)
    _assert_same_catalogue(predict(bundle, new), predict(loaded, new))
    # the member weights carry the 2-D conv layout
    assert any(v.ndim == 4 for v in loaded.members[0].values())


def test_half_precision_storage_halves_the_files_and_loads_as_float32(tiny_holdout, tmp_path):
    import torch

    from kielnet.artifact.store import HALF_MAX_REL_ERROR, storage_tensor

    full = tiny_holdout.bundle_dir
    half = save_bundle(load_bundle(full), tmp_path / "half", weights_dtype="float16")
    size = lambda d: sum(f.stat().st_size for f in d.glob("member_*.safetensors"))  # noqa: E731
    assert size(half) < 0.6 * size(full)
    meta = json.loads((half / "bundle.json").read_text())
    assert all(m["storage"] == "float16" for m in meta["members"])
    with safe_open(str(half / meta["members"][0]["file"]), framework="pt") as fh:
        dtypes = {fh.get_tensor(k).dtype for k in fh.keys()}
    assert torch.float16 in dtypes
    loaded = load_bundle(half)
    assert all(t.dtype != torch.float16 for sd in loaded.members for t in sd.values())
    # the labels move by a small fraction of their sigma, and every star keeps its status
    test = tiny_holdout.test
    a, b = predict(load_bundle(full), test), predict(loaded, test)
    assert a["status"].tolist() == b["status"].tolist()
    for n in tiny_holdout.bundle.config.label_names:
        d = np.abs(np.asarray(a[n], float) - np.asarray(b[n], float)) / np.asarray(a[f"sigma_{n}"], float)
        assert np.nanmax(d) < 0.05
    # a tensor half precision cannot hold to 1e-3 stays float32; integers are untouched
    tiny = torch.tensor([1.0, 1e-9, 3e-8])           # a tiny value would be flushed to 0: relative error 1
    assert storage_tensor(torch.tensor([7e4, 1.0]), "float16").dtype == torch.float32   # overflows half
    assert storage_tensor(torch.tensor([1e-6, 2e-6]), "float16").dtype == torch.float32  # subnormal in half
    assert storage_tensor(tiny, "float16").dtype == torch.float16  # absolute error 3e-8 << 1e-3 of max
    assert storage_tensor(torch.tensor([3], dtype=torch.int64), "float16").dtype == torch.int64
    x = torch.linspace(-2, 2, 101)
    assert float((storage_tensor(x, "float16").float() - x).abs().max()) <= HALF_MAX_REL_ERROR * 2
    with pytest.raises(ValueError, match="weights_dtype"):
        save_bundle(loaded, tmp_path / "x", weights_dtype="int8")
