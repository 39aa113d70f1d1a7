"""read_stars dispatch: each real file kind goes to its reader (recognised by its columns)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from kielnet.errors import InputError
from kielnet.io import read_stars, sniff_format


@pytest.mark.parametrize("rel, kind", [
    ("gaia_rvs/Kepler-93.csv", "gaia_rvs"),
    ("gaia_xp/XP_CONTINUOUS_RAW.csv", "gaia_xp"),
    ("gaia_xp/18Sco-XP-spectra.csv", "gaia_xp"),
    ("gaia_xp/SampledMeanSpectrum.csv", "table"),
])
def test_sniff_real_files(shared_data, rel, kind):
    path = shared_data / rel
    if not path.is_file():
        pytest.skip(f"{path} absent")
    assert sniff_format(path) == kind


def test_read_stars_on_rvs_directory_and_xp_file(shared_data):
    rvs = read_stars(shared_data / "gaia_rvs")
    assert len(rvs) == 6 and rvs.flux.shape == (6, 2401) and "n_filled_pixels" in rvs.extra
    xp = read_stars(shared_data / "gaia_xp" / "XP_CONTINUOUS_RAW.csv")
    assert "bp_0" in xp.scalars and "rp_54" in xp.scalars


def test_plain_tables_still_go_to_the_table_reader(tmp_path):
    t = Table({"id": ["a", "b"], "g": [10.0, 11.0]})
    t.write(tmp_path / "meta.csv")
    st = read_stars(tmp_path / "meta.csv")
    assert list(st.ids) == ["a", "b"] and np.allclose(st.scalars["g"], [10, 11])


def test_a_broken_rvs_like_file_names_itself(tmp_path):
    bad = tmp_path / "rvs.csv"
    bad.write_text("source_id,solution_id,wavelength,flux,flux_error\n1,2,846.0,oops,0.1\n")
    with pytest.raises(InputError) as info:
        read_stars(bad)
    assert "rvs.csv" in str(info.value)


BOM = "\ufeff"


@pytest.mark.parametrize("suffix", [".csv", ".ecsv", ".csv.gz"])
def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path, suffix):
    """Spreadsheets save "CSV UTF-8" with a byte-order mark: the table reads as without it,
    whole and streamed (the first column is the id column, not '\\ufeffsource_id')."""
    import gzip

    from kielnet.io import open_stars

    t = Table({"source_id": [7, 8, 9], "g": [10.0, 11.0, 12.5], "bp": [10.4, 11.5, 12.9]})
    t.write(tmp_path / f"plain{suffix}", format="ascii.ecsv" if suffix == ".ecsv" else "ascii.csv")
    text = (tmp_path / f"plain{suffix}").read_text()
    marked = tmp_path / f"marked{suffix}"
    if suffix.endswith(".gz"):
        with gzip.open(marked, "wt", encoding="utf-8") as fh:
            fh.write(BOM + text)
    else:
        marked.write_text(BOM + text, encoding="utf-8")
    opened = gzip.open(marked, "rb") if suffix.endswith(".gz") else open(marked, "rb")
    with opened as fh:
        assert fh.read(3) == BOM.encode()
    ref = read_stars(tmp_path / f"plain{suffix}")
    for got in (read_stars(marked), next(iter(open_stars(marked).batches(10)))):
        assert list(got.ids) == ["7", "8", "9"] == list(ref.ids)
        assert set(got.scalars) == set(ref.scalars) == {"g", "bp"}
        for k in ref.scalars:
            np.testing.assert_array_equal(got.scalars[k], ref.scalars[k])


def test_ids_written_as_large_floats_are_warned_about(tmp_path):
    """A Gaia source_id saved as a float (5.853498713190526e+18) has lost digits: the
    table still reads, with a warning naming the file, the column and an example; small
    float ids and integer ids read without it."""
    import warnings

    big = tmp_path / "big.csv"
    big.write_text("source_id,g\n5.853498713190526e+18,10.0\n5.762406957886627e+18,11.0\n")
    with pytest.warns(UserWarning, match=r"big\.csv: id column 'source_id' holds floating-point numbers above "
                                         r"2\^53 \(2 of 2, e.g. row 0: '5\.853498713190526e\+18'\)"):
        st = read_stars(big)
    assert list(st.ids) == ["5.853498713190526e+18", "5.762406957886627e+18"]
    from kielnet.io import open_stars

    with pytest.warns(UserWarning, match="holds floating-point numbers above 2\\^53"):
        assert len(next(iter(open_stars(big).batches(10)))) == 2  # the streamed reader too
    for text in ("source_id,g\n1.0,10.0\n2.5,11.0\n", "source_id,g\n5853498713190525696,10.0\n"):
        (tmp_path / "quiet.csv").write_text(text)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            read_stars(tmp_path / "quiet.csv")
