"""One module per input format (kielnet.io.formats), ``--format`` overriding detection,
the catalogue writer registry, and ``sources.py`` naming no format."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import kielnet.io as kio
import kielnet.io.sources as sources_module
from kielnet.cli import main
from kielnet.errors import InputError, UsageError
from kielnet.artifact import save_bundle
from kielnet.io import (atomic_write_table, get_reader, open_stars, read_stars, read_table, register_writer,
                        registered_readers, unregister_writer, write_table)
from kielnet.io.formats import BUILTIN_FORMATS
from kielnet.io.outputs import check_output_file

from conftest import synthetic_table


# --------------------------------------------------------------- every format: one module, detected
def _xp_library(d: Path) -> list[Path | str]:
    np.savez(d / "subset.npz", apogee_id=np.array(["a"]))
    return [d / "subset.npz", "xp-library"]


def _apstar(d: Path) -> list[Path | str]:
    folder = d / "apstar"
    folder.mkdir()
    fits.PrimaryHDU().writeto(folder / "apStar-r6-2M00000000+0000000.fits")
    return [folder / "apStar-r6-2M00000000+0000000.fits", folder]


def _gaia_xp(d: Path) -> list[Path | str]:
    path = d / "xp_continuous.csv"
    path.write_text('source_id,solution_id,bp_coefficients,rp_coefficients\n1,2,"(1.0, 2.0)","(3.0, 4.0)"\n')
    return [path]


def _gaia_rvs(d: Path) -> list[Path | str]:
    folder = d / "rvs"
    folder.mkdir()
    path = folder / "rvs_mean_spectrum.csv"
    path.write_text("source_id,solution_id,ra,dec,wavelength,flux,flux_error\n1,2,0.0,0.0,846.0,1.0,0.01\n")
    return [path, folder]


def _table(d: Path) -> list[Path | str]:
    st = synthetic_table(n=5, n_pix=4)
    paths = [write_table(st, d / f"stars{suffix}") for suffix in (".parquet", ".fits", ".ecsv")]
    Table({"id": ["a"], "g": [1.0]}).write(d / "stars.csv")
    (d / "dataset").mkdir()
    write_table(st, d / "dataset" / "part-0.parquet")
    return [*paths, d / "stars.csv", d / "dataset"]


SAMPLES = {"xp-library": _xp_library, "apstar": _apstar, "gaia-xp": _gaia_xp, "gaia-rvs": _gaia_rvs,
           "table": _table}


def _builtin_readers() -> dict[str, str]:
    """Reader name -> the kielnet.io.formats module that registers it."""
    return {importlib.import_module(f"kielnet.io.formats.{m}").READER.name: m for m in BUILTIN_FORMATS}


def test_each_builtin_format_is_one_registered_module():
    builtin = _builtin_readers()
    assert set(builtin) == {"xp-library", "apstar", "gaia-xp", "gaia-rvs", "table"}
    registered = {r.name: r for r in registered_readers()}
    for name, module in builtin.items():
        reader = registered[name]
        assert reader is importlib.import_module(f"kielnet.io.formats.{module}").READER
        assert reader.read.__module__ == f"kielnet.io.formats.{module}"   # read and hooks live in its module
        assert module == name.replace("-", "_")


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_registered_format_is_detected_from_a_synthetic_file(tmp_path, name):
    assert set(SAMPLES) >= set(_builtin_readers()), "a built-in format without a sample file here"
    for path in SAMPLES[name](tmp_path):
        assert get_reader(path).name == name, path


# --------------------------------------------------------------- --format overrides detection
@pytest.fixture
def apstar_named_table(tmp_path):
    """A Parquet star table whose name starts with apStar: detected as apstar, a table in fact."""
    st = synthetic_table(n=40, n_pix=48, seed=3)
    return write_table(st, tmp_path / "apStar-selection.parquet"), st


def test_format_overrides_detection_in_read_stars_and_open_stars(apstar_named_table):
    path, st = apstar_named_table
    assert get_reader(path).name == "apstar"
    with pytest.raises(InputError, match="cannot read apStar FITS file"):
        read_stars(path)
    whole = read_stars(path, format="table")
    np.testing.assert_array_equal(whole.ids, read_table(path).ids)
    np.testing.assert_array_equal(whole.flux, st.flux)
    src = open_stars(path, format="table")
    assert src.identity()["kind"] == "table" and src.n_rows == 40
    np.testing.assert_array_equal(np.concatenate([b.ids for b in src.batches(16)]), st.ids)


def test_format_for_a_directory_needs_a_reader_of_directories(tmp_path):
    (tmp_path / "d").mkdir()
    write_table(synthetic_table(n=3, n_pix=4), tmp_path / "d" / "a.parquet")
    assert len(read_stars(tmp_path / "d", format="table")) == 3
    with pytest.raises(InputError, match="reads single files") as info:
        read_stars(tmp_path / "d", format="xp-library")
    assert info.value.source == str(tmp_path / "d")
    with pytest.raises(InputError, match="does not exist"):
        read_stars(tmp_path / "nope.parquet", format="table")


def test_unknown_format_is_a_clear_error_listing_the_registered_names(apstar_named_table):
    path, _ = apstar_named_table
    for call in (lambda: read_stars(path, format="fitz"), lambda: open_stars(path, format="fitz")):
        with pytest.raises(UsageError) as info:
            call()
        assert "unknown format 'fitz'" in str(info.value)
        for reader in registered_readers():
            assert reader.name in str(info.value)


@pytest.fixture(scope="module")
def bundle_dir(synthetic_bundle, tmp_path_factory):
    return save_bundle(synthetic_bundle, tmp_path_factory.mktemp("formats_bundle") / "bundle")


def test_cli_format_overrides_detection(bundle_dir, apstar_named_table, tmp_path, capsys):
    path, st = apstar_named_table
    out = tmp_path / "cat.parquet"
    base = ["predict", "--bundle", str(bundle_dir), "--data", str(path), "--out", str(out), "--quiet"]
    assert main(base) == 2
    assert "cannot read apStar FITS file" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--format", "table"]) == 0
    assert kio.read_catalogue(out)["id"].tolist() == st.ids.tolist()   # every input star has a row
    capsys.readouterr()
    assert main(["evaluate", "--bundle", str(bundle_dir), "--data", str(path), "--format", "table"]) == 0
    assert "teff" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["predict", "train", "evaluate"])
def test_cli_unknown_format_is_refused_before_any_work(bundle_dir, apstar_named_table, tmp_path, capsys,
                                                       command):
    path, _ = apstar_named_table
    args = {"predict": ["--bundle", str(bundle_dir), "--out", str(tmp_path / "c.parquet")],
            "train": ["--out", str(tmp_path / "bundle")],
            "evaluate": ["--bundle", str(tmp_path / "no-such-bundle")]}[command]
    assert main([command, "--data", str(path), "--format", "fitz", *args]) == 2
    err = capsys.readouterr().err
    assert "unknown format 'fitz'" in err and "gaia-rvs" in err and "table" in err
    assert not (tmp_path / "c.parquet").exists() and not (tmp_path / "bundle.work").exists()


# --------------------------------------------------------------- the writer registry
def test_a_writer_registered_for_a_new_suffix_is_used_by_atomic_write_table(tmp_path):
    calls = []

    def write_toy(tab, path):
        calls.append(Path(path))
        Path(path).write_text("\n".join(str(v) for v in tab["id"]))

    tab = Table({"id": ["a", "b"], "g": [1.0, 2.0]})
    with pytest.raises(InputError, match="unknown table format"):
        atomic_write_table(tab, tmp_path / "cat.toyw")
    with pytest.raises(Exception, match="unknown table format"):
        check_output_file(tmp_path / "cat.toyw")
    register_writer("toyw", suffixes=(".toyw",), write=write_toy)
    try:
        assert kio.get_writer(tmp_path / "CAT.TOYW").name == "toyw"
        check_output_file(tmp_path / "cat.toyw")                 # --out accepts the new suffix
        out = atomic_write_table(tab, tmp_path / "cat.toyw")
        assert out.read_text() == "a\nb"
        assert len(calls) == 1 and calls[0] != out and calls[0].suffix == ".toyw"   # written atomically
        assert not calls[0].exists()
        with pytest.raises(ValueError, match="already registered"):
            register_writer("other", suffixes=(".toyw",), write=write_toy)
    finally:
        unregister_writer("toyw")
    with pytest.raises(InputError, match="unknown table format"):
        atomic_write_table(tab, tmp_path / "cat2.toyw")


def test_builtin_writers_own_the_table_suffixes():
    names = {w.name: w.suffixes for w in kio.registered_writers()}
    assert names == {"parquet": (".parquet", ".pq"), "fits": (".fits", ".fit", ".fz"),
                     "ascii.csv": (".csv",), "ascii.ecsv": (".ecsv",)}
    assert kio.get_writer("x.csv.gz").name == "ascii.csv"
    with pytest.raises(InputError) as info:
        kio.get_writer("x.txt")
    assert "'.txt'" in str(info.value) and "'.parquet'" in str(info.value)


def test_a_writer_can_take_a_suffix_over(tmp_path):
    def write_text(tab, path):
        Path(path).write_text("mine")

    builtin = kio.get_writer("t.ecsv")
    register_writer("my-ecsv", suffixes=(".ecsv",), write=write_text, override=True)
    try:
        assert atomic_write_table(Table({"id": ["a"]}), tmp_path / "t.ecsv").read_text() == "mine"
        assert kio.get_writer("t.ecsv").name == "my-ecsv"
    finally:
        unregister_writer("my-ecsv")
        assert "ascii.ecsv" not in {w.name for w in kio.registered_writers()}   # it owned only .ecsv
        register_writer(builtin)
    assert kio.get_writer("t.ecsv") is builtin


# --------------------------------------------------------------- sources.py names no format
def _string_constants(tree: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_sources_module_names_no_format():
    text = Path(sources_module.__file__).read_text()
    tree = ast.parse(text)
    names = {r.name for r in registered_readers()} | set(_builtin_readers())
    names |= {n.replace("-", "_") for n in names}
    literals = _string_constants(tree)
    assert not names & set(literals), "sources.py compares with a format name"
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    for module in imported:
        assert not module.startswith(("kielnet.io.formats", "kielnet.io.streams")), module
        assert module.rsplit(".", 1)[-1] not in names | {"tables"}, module
    # names that are not ordinary words appear nowhere, not even in comments or docstrings
    lower = text.lower()
    for name in sorted(n for n in names if n != "table"):
        assert name.lower() not in lower, name
    for word in ("parquet", "fits", "csv", "apstar", "rvs", "gaia"):
        assert word not in lower, word
