"""The reader registry: built-in readers per real file, readers registered by a test
module picked up by read_stars and open_stars, errors naming the file."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.io import (ReaderSpec, get_reader, open_stars, read_apstar, read_stars, register_reader,
                        registered_readers, sniff_format, unregister_reader, write_table)


# --------------------------------------------------------------- a format defined here
def _identify_toy(path: Path) -> bool:
    """*.toy files"""
    return path.suffix == ".toy"


def read_toy(path: Path) -> StarTable:
    """A toy survey format: one star per line, ``id g flux…``."""
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    return StarTable(ids=np.array([r[0] for r in rows]),
                     flux=np.array([[float(v) for v in r[2:]] for r in rows]),
                     scalars={"g": np.array([float(r[1]) for r in rows])},
                     meta={"source": str(path), "loader": "toy"})


def iter_toy(path: Path):
    """The same stars in pieces of 3 (as a reader of row groups would give them)."""
    whole = read_toy(path)
    for a in range(0, len(whole), 3):
        yield whole.take(np.arange(a, min(a + 3, len(whole))))


def _write_toy(path: Path, n: int = 10) -> Path:
    path.write_text("".join(f"T{i:03d} {10 + i / 10:.2f} {1 + i} {2 + i} {3 + i}\n" for i in range(n)))
    return path


@pytest.fixture
def toy_reader():
    spec = register_reader("toy", identify=_identify_toy, read=read_toy, iter_tables=iter_toy,
                           description="a toy file", priority=5)
    try:
        yield spec
    finally:
        unregister_reader("toy")


# --------------------------------------------------------------- built-in readers
@pytest.mark.parametrize("rel, name", [
    ("xp_library/apogee_dr17_gaiaxp_sampled_subset1000.npz", "xp-library"),
    ("apogee/apStar/apStar-r6-2M00452143+1634446.fits", "apstar"),
    ("apogee/apStar", "apstar"),
    ("gaia_rvs", "gaia-rvs"),
    ("gaia_rvs/Kepler-93.csv", "gaia-rvs"),
    ("gaia_xp/XP_CONTINUOUS_RAW.csv", "gaia-xp"),
    ("gaia_xp/XP_CONTINUOUS_RAW_with_missing_BP.csv", "gaia-xp"),
    ("gaia_xp/SampledMeanSpectrum.csv", "table"),
])
def test_registry_picks_the_reader_of_each_real_file(shared_data, rel, name):
    path = shared_data / rel
    if not path.exists():
        pytest.skip(f"{path} absent")
    assert get_reader(path).name == name


def test_registry_picks_the_table_reader_by_suffix(tmp_path, make_table):
    st = make_table(n=5, n_pix=4)
    for suffix in (".parquet", ".fits", ".ecsv"):
        assert get_reader(write_table(st, tmp_path / f"s{suffix}")).name == "table"
    Table({"id": ["a"], "g": [1.0]}).write(tmp_path / "s.csv")
    assert get_reader(tmp_path / "s.csv").name == "table"
    (tmp_path / "ds").mkdir()
    write_table(st, tmp_path / "ds" / "part-0.parquet")
    assert get_reader(tmp_path / "ds").name == "table"             # a Parquet dataset
    assert get_reader("xp-library").name == "xp-library"           # an alias, not a path
    assert sniff_format(tmp_path / "s.csv") == "table"


def test_builtin_readers_in_priority_order():
    names = [r.name for r in registered_readers()]
    for name in ("xp-library", "apstar", "gaia-xp", "gaia-rvs", "table"):
        assert name in names
    order = [n for n in names if n in ("xp-library", "apstar", "gaia-xp", "gaia-rvs", "table")]
    assert order == ["xp-library", "apstar", "gaia-xp", "gaia-rvs", "table"]
    prios = [r.priority for r in registered_readers()]
    assert prios == sorted(prios, reverse=True)
    assert get_reader("xp-library").directories is False and {r.name for r in registered_readers()
                                                               if r.directories} >= {"apstar", "gaia-rvs"}


# --------------------------------------------------------------- a reader registered here
def test_registered_reader_is_used_by_read_stars_and_open_stars(tmp_path, toy_reader):
    path = _write_toy(tmp_path / "stars.toy")
    assert get_reader(path) is toy_reader and sniff_format(path) == "toy"
    whole = read_stars(path)
    assert whole.meta["loader"] == "toy" and len(whole) == 10
    src = open_stars(path)
    assert src.spec == str(path) and src.identity()["kind"] == "toy" and src.n_rows is None
    batches = list(src.batches(4))
    assert [len(b) for b in batches] == [4, 4, 2]
    cat = StarTable.concat(batches)
    np.testing.assert_array_equal(cat.ids, whole.ids)
    np.testing.assert_array_equal(cat.flux, whole.flux)
    np.testing.assert_array_equal(cat.scalars["g"], whole.scalars["g"])
    assert [b.ids[0] for b in src.batches(4, start=4)] == ["T004", "T008"]
    again = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(np.concatenate([b.ids for b in again.batches(3)]), whole.ids)


def test_unregistered_reader_is_no_longer_used(tmp_path):
    path = _write_toy(tmp_path / "stars.toy")
    register_reader("toy", identify=_identify_toy, read=read_toy)
    assert len(read_stars(path)) == 10
    unregister_reader("toy")
    with pytest.raises(InputError, match="unknown format") as info:
        read_stars(path)
    assert info.value.source == str(path)
    with pytest.raises(KeyError):
        unregister_reader("toy")


def test_register_reader_forms(tmp_path):
    path = _write_toy(tmp_path / "stars.toy")

    @register_reader("toy-deco", identify=_identify_toy)
    def read_deco(p):
        return read_toy(p)

    try:
        assert callable(read_deco) and get_reader(path).name == "toy-deco"
        spec = register_reader(ReaderSpec("toy-spec", identify=_identify_toy, read=read_toy, priority=1))
        try:
            assert get_reader(path) is spec                       # higher priority wins
            with pytest.raises(ValueError, match="already registered"):
                register_reader("toy-spec", identify=_identify_toy, read=read_toy)
            newer = register_reader("toy-spec", identify=_identify_toy, read=iter_toy, priority=1,
                                    override=True)
            assert get_reader(path) is newer and newer.read is iter_toy
        finally:
            unregister_reader("toy-spec")
        # equal priorities: the reader registered last wins
        register_reader("toy-late", identify=_identify_toy, read=read_toy)
        try:
            assert get_reader(path).name == "toy-late"
        finally:
            unregister_reader("toy-late")
    finally:
        unregister_reader("toy-deco")
    with pytest.raises(ValueError, match="reader name"):
        ReaderSpec("no spaces", identify=_identify_toy, read=read_toy)
    with pytest.raises(TypeError):
        register_reader("toy-x", read=read_toy)


def test_a_reader_can_outrank_a_builtin_one(tmp_path):
    path = tmp_path / "stars.toy.csv"
    Table({"id": ["a", "b"], "g": [1.0, 2.0]}).write(path)
    assert get_reader(path).name == "table"
    register_reader("toy-csv", identify=lambda p: p.name.endswith(".toy.csv"), read=read_toy, priority=100)
    try:
        assert get_reader(path).name == "toy-csv"
    finally:
        unregister_reader("toy-csv")
    assert get_reader(path).name == "table"


def test_foreign_exceptions_of_a_reader_name_file_and_reader(tmp_path):
    path = _write_toy(tmp_path / "stars.toy")

    def broken(p):
        raise ZeroDivisionError("boom")

    register_reader("toy-broken", identify=_identify_toy, read=broken, description="a broken toy")
    try:
        for call in (read_stars, lambda p: next(open_stars(p).batches(2))):
            with pytest.raises(InputError) as info:
                call(path)
            assert str(info.value).startswith("cannot read as a broken toy: ZeroDivisionError: boom")
            assert info.value.source == str(path) and isinstance(info.value.__cause__, ZeroDivisionError)
    finally:
        unregister_reader("toy-broken")


# --------------------------------------------------------------- nothing identifies
def test_unknown_format_names_the_file_and_the_known_formats(tmp_path):
    path = tmp_path / "stars.xyz"
    path.write_text("id,g\na,1\n")
    for call in (get_reader, read_stars, open_stars):
        with pytest.raises(InputError) as info:
            call(path)
        assert info.value.source == str(path) and str(path) in str(info.value)
        assert "unknown format" in str(info.value)
        for name in ("xp-library", "apstar", "gaia-rvs", "gaia-xp", "table"):
            assert name in str(info.value)
    assert sniff_format(path) == "table"  # sniff_format keeps its old answer for such files


def test_directory_no_reader_accepts(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no files to read") as info:
        get_reader(tmp_path)
    assert info.value.source == str(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        open_stars(tmp_path / "nope.parquet")


# --------------------------------------------------------------- glob patterns
def test_glob_of_apstar_files(shared_data):
    folder = shared_data / "apogee" / "apStar"
    if not folder.is_dir():
        pytest.skip(f"{folder} absent")
    files = sorted(folder.glob("apStar-dr17-*.fits"))
    pattern = str(folder / "apStar-dr17-*.fits")
    whole = read_stars(pattern)
    np.testing.assert_array_equal(whole.flux, read_apstar(files).flux)
    src = open_stars(pattern)
    assert src.n_rows == len(files) == 2 and src.spec == pattern
    np.testing.assert_array_equal(np.concatenate([b.flux for b in src.batches(1)]), whole.flux)
    with pytest.raises(InputError, match="no file matches"):
        read_stars(str(folder / "apStar-nothing-*.fits"))
