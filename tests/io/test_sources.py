"""Streaming sources (open_stars): batches of exactly ``size`` stars in input order whose
concatenation is read_stars of the whole input, value for value, for every format;
``start`` skipping, row counts, metadata joins, pickling, bounded memory."""

from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import MaskedColumn, Table

import kielnet.io as kio
from kielnet.data.source import StarSource
from kielnet.data.startable import StarTable
from kielnet.errors import InputError
from kielnet.io import open_stars, read_stars, read_table, write_table
from kielnet.io.sources import MetadataSource

N = 1200          # rows of the synthetic tables
ROW_GROUP = 250   # Parquet row-group size (batch sizes below do not divide it)
BIG_ID = 4_000_000_000_000_000_000  # > 2**53: ids that would lose digits as floats


# --------------------------------------------------------------- helpers
def assert_same(a: StarTable, b: StarTable) -> None:
    """Equal ids, spectra, wavelength, scalars, labels, errors and pass-through columns
    (values, NaN positions, dtype kinds; names in the same order)."""
    np.testing.assert_array_equal(a.ids, b.ids)
    for name in ("flux", "flux_err"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y, err_msg=name)
    if a.wavelength is None or b.wavelength is None:
        assert a.wavelength is None and b.wavelength is None
    else:
        np.testing.assert_array_equal(a.wavelength.value, b.wavelength.value)
        assert a.wavelength.unit == b.wavelength.unit
    for name in ("scalars", "labels", "label_errs", "extra"):
        x, y = getattr(a, name), getattr(b, name)
        assert list(x) == list(y), (name, list(x), list(y))
        for k in x:
            assert x[k].dtype.kind == y[k].dtype.kind, (name, k, x[k].dtype, y[k].dtype)
            np.testing.assert_array_equal(x[k], y[k], err_msg=f"{name}:{k}")


def concat(batches: list[StarTable]) -> StarTable:
    return batches[0] if len(batches) == 1 else StarTable.concat(batches)


def check_stream(spec, sizes, starts=()) -> StarTable:
    """Every batching of ``spec`` equals read_stars(spec); returns the whole table."""
    whole = read_stars(spec)
    src = open_stars(spec)
    assert isinstance(src, StarSource)
    for size in sizes:
        batches = list(src.batches(size))
        assert [len(b) for b in batches[:-1]] == [size] * (len(batches) - 1)
        assert 0 < len(batches[-1]) <= size
        assert_same(concat(batches), whole)
    for size, start in starts:
        rest = list(src.batches(size, start=start))
        if start >= len(whole):
            assert rest == []
            continue
        assert len(rest[0]) == min(size, len(whole) - start)
        assert_same(concat(rest), whole.take(np.arange(start, len(whole))))
    return whole


def _spectra(n: int, n_pix: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(1.0, 0.05, (n, n_pix))


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """The same kind of awkward stars as Parquet (several row groups), FITS and CSV."""
    d = tmp_path_factory.mktemp("tables")
    n, rng = N, np.random.default_rng(3)
    flux = _spectra(n, 12)
    i = np.arange(n)
    # Parquet: variable-length list spectra with null cells, a fixed-size list error
    # column, large ids with one null (in the 5th row group only), text columns
    g = np.where(i % 50 == 0, np.nan, rng.uniform(9, 15, n))
    pt = pa.table({
        "id": [f"S{k:05d}" for k in i],
        "flux": pa.array([None if k % 97 == 5 else list(flux[k]) for k in i], pa.list_(pa.float64())),
        "flux_err": pa.FixedSizeListArray.from_arrays(pa.array(np.full(n * 12, 0.01)), 12),
        "source_id": pa.array([None if k == 1100 else BIG_ID + k for k in i], pa.int64()),
        "n_obs": pa.array([None if k == 900 else int(k) for k in i], pa.int32()),
        "g": pa.array(g, from_pandas=True),
        "bp_text": pa.array([f"{1.5 + k / 1000:.3f}" if k != 10 else "" for k in i]),
        "comment": pa.array([str(k) if k != 1000 else "abc" for k in i]),  # text after 1000 numbers
        "teff": rng.uniform(4000, 6500, n),
        "teff_err": np.full(n, 60.0),
        "good": pa.array(i % 2 == 0),
    })
    pq.write_table(pt, d / "stars.parquet", row_group_size=ROW_GROUP)
    # FITS: 2-D spectra, an integer pass-through column with TNULL, numeric text
    ft = Table()
    ft["id"] = [f"S{k:05d}" for k in i]
    ft["flux"] = flux.astype(np.float32)
    ft["source_id"] = MaskedColumn(BIG_ID + i, mask=i == 1150)
    ft["g"] = g
    ft["note"] = [str(k) if k != 1190 else "zz" for k in i]
    ft["logg"] = rng.uniform(1, 5, n)
    ft.write(d / "stars.fits")
    # CSV: flux_0..flux_N columns, blanks around cells, empty cells, an int column
    # with an empty cell late in the file, text that is a number, an id column of digits
    lines = ["id,flux_0,flux_1,flux_2,flux_3,g,n_obs,source_id,bp_text,comment,fe_h"]
    for k in i:
        cells = [f"{k:05d}"] + [f"{v:.6g}" for v in flux[k, :4]]
        if k == 7:
            cells[2] = ""
        cells += ["" if k % 50 == 0 else f" {g[k]:.4f}", "" if k == 1111 else str(k), str(BIG_ID + k),
                  f"{k / 4}", "t" if k != 1150 else "xyz", f"{rng.uniform(-1, 0.3):.3f}"]
        lines.append(",".join(cells))
    (d / "stars.csv").write_text("\n".join(lines) + "\n")
    return d


# --------------------------------------------------------------- one format each
def test_parquet_several_row_groups(tables):
    path = tables / "stars.parquet"
    assert pq.ParquetFile(path).metadata.num_row_groups == 5
    whole = check_stream(path, sizes=(7, 333, 1000, 5000),
                         starts=[(333, 333), (7, 252), (100, 1100), (400, 1200)])
    # the awkward columns are there, as read_stars makes them
    assert whole.extra["source_id"].dtype.kind == "U" and whole.extra["source_id"][1100] == ""
    assert np.isnan(whole.flux[5]).all() and "comment" in whole.meta["non_numeric_columns"]
    assert "bp_text" in whole.scalars and np.isnan(whole.scalars["n_obs"][900])
    src = open_stars(path)
    first = next(src.batches(333))
    assert first.extra["source_id"].dtype.kind == "U"  # a batch without the null: same carrier
    assert first.meta["non_numeric_columns"] == {"comment": (1000, "abc")}


def test_fits_table(tables):
    whole = check_stream(tables / "stars.fits", sizes=(57, 400, 2000), starts=[(400, 800), (7, 1190)])
    assert whole.extra["source_id"].dtype.kind == "U" and "note" not in whole.scalars


def test_csv(tables):
    whole = check_stream(tables / "stars.csv", sizes=(7, 333, 5000), starts=[(333, 999)])
    assert whole.ids[0] == "0" and "comment" not in whole.scalars      # ids: astropy's integers
    assert whole.extra["source_id"].dtype.kind == "i" and np.isnan(whole.flux[7, 1])
    assert np.isnan(whole.scalars["n_obs"][1111]) and whole.scalars["bp_text"][2] == 0.5


def test_ecsv_read_whole_and_sliced(tmp_path, make_table):
    path = write_table(make_table(n=30, n_pix=6), tmp_path / "s.ecsv")
    check_stream(path, sizes=(4, 30), starts=[(4, 8)])
    assert open_stars(path).n_rows is None


def test_apstar_directory(shared_data):
    folder = shared_data / "apogee" / "apStar"
    if not folder.is_dir():
        pytest.skip(f"{folder} absent")
    check_stream(folder, sizes=(5, 30), starts=[(5, 25), (5, 30)])
    assert open_stars(folder).n_rows == 26


def test_rvs_directory(shared_data):
    folder = shared_data / "gaia_rvs"
    if not folder.is_dir():
        pytest.skip(f"{folder} absent")
    whole = check_stream(folder, sizes=(1, 4), starts=[(4, 4)])
    assert len(whole) == 6 and open_stars(folder).n_rows is None


def test_npz_subset(xp_subset_path):
    whole = check_stream(xp_subset_path, sizes=(64, 333), starts=[(333, 666)])
    assert open_stars(xp_subset_path).n_rows == len(whole) == 1000


def test_xp_continuous_file(shared_data):
    path = shared_data / "gaia_xp" / "XP_CONTINUOUS_RAW.csv"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    check_stream(path, sizes=(1,), starts=[(1, 1)])


def test_directory_of_parquet_files_is_one_table(tmp_path, make_table):
    st = make_table(n=90, n_pix=5)
    single = write_table(st, tmp_path / "all.parquet")
    folder = tmp_path / "parts"
    folder.mkdir()
    for k, (a, b) in enumerate([(0, 40), (40, 41), (41, 90)]):
        write_table(st.take(np.arange(a, b)), folder / f"part-{k}.parquet")
    (folder / "_SUCCESS").write_text("")  # ignored, as pyarrow ignores it
    assert_same(read_stars(folder), read_stars(single))
    check_stream(folder, sizes=(7, 40), starts=[(7, 42)])
    assert open_stars(folder).n_rows == 90
    assert open_stars(str(folder / "part-*.parquet")).n_rows == 90  # a glob of files


def test_hive_partitions_become_columns(tmp_path):
    flux = _spectra(20, 4)
    for year, (a, b) in ((2020, (0, 8)), (2021, (8, 20))):
        (tmp_path / f"year={year}").mkdir()
        pq.write_table(pa.table({"id": [f"s{k}" for k in range(a, b)], "g": np.arange(a, b) * 1.0,
                                 "flux": pa.array(list(flux[a:b]))}), tmp_path / f"year={year}" / "p.parquet")
    whole = read_stars(tmp_path)
    assert whole.scalars["year"].tolist() == [2020.0] * 8 + [2021.0] * 12
    check_stream(tmp_path, sizes=(3,))


# --------------------------------------------------------------- cheap row counts and skipping
def test_row_counts_without_reading_the_data(tables, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("data read to count rows")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", refuse)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", refuse)
    assert open_stars(tables / "stars.parquet").n_rows == N
    assert open_stars(tables / "stars.fits").n_rows == N            # NAXIS2
    assert open_stars(tables / "stars.csv").n_rows is None          # unknown without parsing


def test_start_reads_only_the_row_groups_needed(tables, monkeypatch):
    calls = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        calls.append(list(kwargs.get("row_groups") or []))
        for batch in original(self, *args, **kwargs):
            calls.append(batch.num_rows)
            yield batch

    src = open_stars(tables / "stars.parquet")
    src.plan()  # the column plan (made once) is not what this test measures
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    out = list(src.batches(100, start=1100))
    assert [len(b) for b in out] == [100]
    assert calls[0] == [4]                        # rows 1000-1199: the last row group only
    assert sum(calls[1:]) <= ROW_GROUP            # nothing before it was decoded


def test_batches_reject_bad_sizes(tables):
    src = open_stars(tables / "stars.parquet")
    with pytest.raises(ValueError):
        next(src.batches(0))
    with pytest.raises(ValueError):
        next(src.batches(10, start=-1))


# --------------------------------------------------------------- bounded memory
def test_streaming_parquet_holds_one_batch_not_the_file(tmp_path):
    """20,000 stars of 343 px: iterating in batches of 1,000 never holds the file's rows
    (numpy allocations traced; pyarrow's own pool measured after each batch)."""
    n, n_pix, rg = 20_000, 343, 2_000
    rng = np.random.default_rng(0)
    flux = rng.random((n, n_pix), dtype=np.float32) + 0.5
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({
        "id": [f"S{k:06d}" for k in range(n)],
        "flux": pa.FixedSizeListArray.from_arrays(pa.array(flux.ravel()), n_pix),
        "flux_err": pa.FixedSizeListArray.from_arrays(pa.array(np.full(n * n_pix, 0.01, np.float32)), n_pix),
        "g": rng.uniform(9, 15, n)}), path, row_group_size=rg)
    file_rows = 2 * n * n_pix * 4  # flux + flux_err as float32 (what a StarTable holds)
    del flux
    src = open_stars(path)
    src.plan()
    pool0 = pa.total_allocated_bytes()
    seen, pool_max = 0, 0
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for batch in src.batches(1_000):
            seen += len(batch)
            pool_max = max(pool_max, pa.total_allocated_bytes() - pool0)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert seen == n
    assert peak < file_rows / 2, f"numpy peak {peak / 1e6:.1f} MB for {file_rows / 1e6:.1f} MB of rows"
    assert pool_max < file_rows / 2, f"pyarrow held {pool_max / 1e6:.1f} MB"


# --------------------------------------------------------------- errors name the file row
def test_errors_in_a_later_batch_name_the_file_row(tmp_path):
    path = tmp_path / "ragged.parquet"
    cells = [[1.0, 2.0, 3.0]] * 30
    cells[23] = [1.0, 2.0]
    pq.write_table(pa.table({"source_id": list(range(100, 130)), "flux": pa.array(cells)}), path,
                   row_group_size=10)
    with pytest.raises(InputError) as whole:
        read_stars(path)
    with pytest.raises(InputError) as streamed:
        list(open_stars(path).batches(4))
    for err in (whole.value, streamed.value):
        assert err.row == 23 and err.star == "123" and err.field == "flux" and str(path) in str(err)
    assert "row 23 has 2 values, row 0 has 3" in str(streamed.value)

    csv = tmp_path / "bad.csv"
    rows = [f"s{k},1.0,{'abc' if k == 17 else '2.0'}" for k in range(25)]
    csv.write_text("id,flux_0,flux_1\n" + "\n".join(rows) + "\n")
    with pytest.raises(InputError) as whole:
        read_table(csv)
    with pytest.raises(InputError) as streamed:
        list(open_stars(csv).batches(5))
    for err in (whole.value, streamed.value):
        assert err.row == 17 and err.star == "s17" and err.field == "flux_1" and "'abc'" in str(err)


@pytest.mark.parametrize("name, content", [
    ("trunc.csv", b"id,g,h\na,1,2\nb,3"),
    ("emptyid.csv", b"id,g\na,1\n,2\n"),
    ("utf8.csv", b"id,g\na,1\n\xffb,2\n"),
    ("garbage.parquet", b"PAR1 but not really" * 20),
    ("garbage.fits", b"\x00\x01 this is not a FITS file " * 50),
    ("norows.csv", b"id,g\n"),
])
def test_bad_files_fail_as_read_stars_fails(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as whole:
        read_stars(path)
    with pytest.raises(InputError) as streamed:
        list(open_stars(path).batches(10))
    w, s = whole.value, streamed.value
    assert s.source == w.source == str(path) and (s.row, s.field) == (w.row, w.field)
    assert str(s).split(":")[0] == str(w).split(":")[0]   # the same kind of problem


# --------------------------------------------------------------- metadata joined by id
def test_metadata_joined_onto_every_batch(tmp_path, make_table, monkeypatch):
    base = make_table(n=50, n_pix=6, ids=np.array([f"S{k:02d}" for k in range(50)]))
    base.scalars["g"][3] = np.nan
    base_path = write_table(base, tmp_path / "base.parquet")
    m1 = tmp_path / "phot.csv"       # S00-S29 and two stars the base does not have
    ids1 = [f"S{k:02d}" for k in range(30)] + ["X1", "X2"]
    Table({"id": ids1, "g": [20.0 + k for k in range(32)],
           "parallax": [np.nan if k == 4 else 1.0 + k for k in range(32)]}).write(m1)
    m2 = tmp_path / "astro.parquet"  # S20-S59: overlaps the first table
    Table({"id": [f"S{k:02d}" for k in range(20, 60)], "parallax": np.arange(40) + 100.0,
           "w1": np.arange(40) + 12.0}).write(m2)

    expected = read_stars(base_path).join_scalars(read_stars(m1)).join_scalars(read_stars(m2))
    reads = []
    import kielnet.io.registry as registry

    original = registry.read_stars
    monkeypatch.setattr(registry, "read_stars", lambda p: reads.append(p) or original(p))
    src = open_stars(base_path, metadata=[m1, m2])
    assert isinstance(src, MetadataSource) and reads == [m1, m2]
    for size in (7, 50):
        assert_same(concat(list(src.batches(size))), expected)
    assert reads == [m1, m2]                     # read and indexed once, at open time
    assert src.matched == {str(m1): 30, str(m2): 30} and src.n_joined == 50
    assert np.isnan(expected.scalars["w1"][:20]).all()  # absent ids: NaN (missing input)
    assert expected.scalars["g"][3] == 23.0 and expected.scalars["parallax"][25] == 105.0
    rest = list(src.batches(7, start=42))
    assert_same(concat(rest), expected.take(np.arange(42, 50)))
    assert src.matched == {str(m1): 0, str(m2): 8}
    back = pickle.loads(pickle.dumps(src))
    assert_same(concat(list(back.batches(10))), expected)
    assert back.matched == {str(m1): 30, str(m2): 30}
    assert [m["path"] for m in src.identity()["metadata"]] == [str(m1.resolve()), str(m2.resolve())]

    dup = tmp_path / "dup.csv"
    Table({"id": ["S01", "S01"], "g": [1.0, 2.0]}).write(dup)
    with pytest.raises(InputError, match="more than once") as info:
        open_stars(base_path, metadata=[dup])
    assert str(dup) in str(info.value)


def _photometry(path, sid, row_group, seed=0):
    """A Gaia-like photometry table sorted by integer ``source_id``, in row groups."""
    rng = np.random.default_rng(seed)
    g = rng.uniform(10.0, 18.0, len(sid))
    g[::17] = np.nan
    pq.write_table(pa.table({"source_id": pa.array(sid, pa.int64()), "g": g,
                             "bp": g + rng.uniform(0.2, 1.5, len(sid)), "rp": g - rng.uniform(0.2, 1.0, len(sid))}),
                   path, row_group_size=row_group)
    return path


def test_a_large_parquet_metadata_table_is_joined_from_the_row_groups_a_batch_needs(tmp_path, make_table,
                                                                                   monkeypatch):
    import kielnet.io.sources as sources
    from kielnet.io.streams.parquet import ParquetSource

    sid = np.arange(4000, dtype=np.int64) * 7 + 10**15
    phot = _photometry(tmp_path / "phot.parquet", sid, row_group=250)
    rng = np.random.default_rng(1)
    # the stars: 300 of the table's ids, contiguous as a bulk file's are, plus 20 it does not hold
    ids = np.concatenate([sid[1200:1500], 10**15 + 7 * 5000 + np.arange(20)]).astype(str)
    base = make_table(n=len(ids), n_pix=6, ids=ids)
    base.scalars["g"][:] = np.nan
    base.scalars["g"][rng.choice(len(ids), 30, replace=False)] = 9.0  # the table's finite value wins
    base_path = write_table(base, tmp_path / "base.parquet")
    expected = read_stars(base_path).join_scalars(read_stars(phot))

    read = []
    original = ParquetSource.read_row_groups
    monkeypatch.setattr(ParquetSource, "read_row_groups", lambda self, groups: read.append(groups) or
                        original(self, groups))
    monkeypatch.setattr(sources, "RANGE_JOIN_ROWS", 1000)
    src = open_stars(base_path, metadata=[phot])
    index = src.fn.keywords["indexes"][0]
    assert type(index).__name__ == "_RangeIndex" and len(index.ranges) == 16 and read == []
    for size in (64, 320):
        assert_same(concat(list(src.batches(size))), expected)
    assert src.matched == {str(phot): 300} and src.n_joined == 320
    # only the row groups that can hold the stars' ids (rows 1200-1499: groups 4 and 5)
    assert {rg for groups in read for _, rg in groups} == {4, 5}
    back = pickle.loads(pickle.dumps(src))
    assert back.fn.keywords["indexes"][0]._cache is None  # a worker reads its own row groups
    assert_same(concat(list(back.batches(100))), expected)

    # small, or keyed by text ids: read whole and indexed as before
    monkeypatch.setattr(sources, "RANGE_JOIN_ROWS", 10**6)
    assert type(open_stars(base_path, metadata=[phot]).fn.keywords["indexes"][0]).__name__ == "_MetaIndex"
    monkeypatch.setattr(sources, "RANGE_JOIN_ROWS", 1000)
    text = tmp_path / "text_ids.parquet"
    pq.write_table(pa.table({"source_id": pa.array(sid.astype(str)), "g": np.ones(len(sid))}), text,
                   row_group_size=250)
    assert type(open_stars(base_path, metadata=[text]).fn.keywords["indexes"][0]).__name__ == "_MetaIndex"


def test_a_range_joined_metadata_table_refuses_an_id_given_twice_where_a_star_needs_it(tmp_path, make_table,
                                                                                      monkeypatch):
    import kielnet.io.sources as sources

    sid = np.arange(2000, dtype=np.int64) + 10**15
    sid[1001] = sid[1000]  # twice, across no group boundary: rows 1000 and 1001 of group 4
    phot = _photometry(tmp_path / "phot.parquet", sid, row_group=250)
    monkeypatch.setattr(sources, "RANGE_JOIN_ROWS", 100)
    clean = write_table(make_table(n=10, n_pix=6, ids=sid[:10].astype(str)), tmp_path / "clean.parquet")
    assert len(concat(list(open_stars(clean, metadata=[phot]).batches(10)))) == 10  # its groups hold no twin
    needs = write_table(make_table(n=10, n_pix=6, ids=sid[995:1005].astype(str)), tmp_path / "needs.parquet")
    with pytest.raises(InputError, match="more than once") as info:
        list(open_stars(needs, metadata=[phot]).batches(10))
    assert str(phot) in str(info.value) and str(sid[1000]) in str(info.value)


# --------------------------------------------------------------- pickling and identity
def test_sources_pickle_with_paths_only(tables, xp_subset_path):
    for spec in (tables / "stars.parquet", tables / "stars.fits", tables / "stars.csv", xp_subset_path):
        src = open_stars(spec)
        first = next(src.batches(100))         # after a pass: plans made, files read
        back = pickle.loads(pickle.dumps(src))
        assert back.spec == str(spec) and back.identity() == src.identity()
        assert_same(next(back.batches(100)), first)
        assert len(pickle.dumps(src)) < 200_000  # no rows inside
    ident = open_stars(tables / "stars.parquet").identity()
    assert ident["kind"] == "table" and ident["n_rows"] == N and len(ident["paths"]) == 1
    assert ident["sizes"][0] == (tables / "stars.parquet").stat().st_size and ident["mtimes"][0] > 0
