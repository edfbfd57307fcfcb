from __future__ import annotations

import gzip

import pandas as pd
import pytest

import featurelens as fl

GMT = "GO:0000001\tmitochondrion inheritance\tMDM10\tMDM12\nGO:0000002\tgenome maintenance\tPOLG\n"
BOM = "\ufeff"


def _write(path, text: str, compressed: bool) -> None:
    data = text.encode("utf-8")
    if compressed:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize(
    ("name", "compressed"),
    [("sets.gmt", False), ("sets.gmt.gz", True), ("gzip_without_suffix.gmt", True)],
)
def test_read_gmt_strips_a_utf8_byte_order_mark(tmp_path, name, compressed):
    plain_dir, bom_dir = tmp_path / "plain", tmp_path / "bom"
    plain_dir.mkdir()
    bom_dir.mkdir()
    _write(plain_dir / name, GMT, compressed)
    _write(bom_dir / name, BOM + GMT, compressed)
    raw = (bom_dir / name).read_bytes()
    assert (gzip.decompress(raw) if compressed else raw).startswith(b"\xef\xbb\xbf")

    expected = fl.io.read_gmt(plain_dir / name)
    got = fl.io.read_gmt(bom_dir / name)
    assert got["term"].iloc[0] == "GO:0000001"
    assert got["term"].iloc[0] == expected["term"].iloc[0]
    pd.testing.assert_frame_equal(got, expected)
    pd.testing.assert_frame_equal(fl.io.read_gene_sets(bom_dir / name), expected)


def test_read_gmt_with_only_a_byte_order_mark_is_empty(tmp_path):
    path = tmp_path / "empty.gmt"
    path.write_bytes(b"\xef\xbb\xbf\n")
    assert fl.io.read_gmt(path).empty


def test_simulate_memory_warning_points_at_the_caller():
    # the check moved into a helper; the warning must still be attributed to the code calling simulate
    with pytest.warns(UserWarning, match="GB of memory") as record, pytest.raises(ValueError, match="n_cell_types"):
        fl.datasets.simulate("large", n_obs=10**7, n_genes=10**5, n_cell_types=0)
    assert record[0].filename == __file__
