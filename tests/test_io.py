from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import data_path

import featurelens as fl
from featurelens.io._gmt import bundled_go as _read_go

BP_ALL = "human_GO_BP_propagated_all_2022-07-01.gmt.gz"
BUNDLED = Path(fl.datasets.__file__).parent / "data"


def as_dict(df: pd.DataFrame) -> dict[str, set[str]]:
    return {term: set(genes) for term, genes in df.groupby("term", sort=False)["gene"]}


@pytest.fixture
def small_sets() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "term": ["GO:0000001", "GO:0000001", "GO:0000001", "GO:0000002", "T3"],
            "name": ["mitochondrion inheritance"] * 3 + ["mitochondrial genome maintenance", "a set with, commas"],
            "gene": ["MDM10", "MDM12", "MMM1", "POLG", "TP53"],
        }
    )


# ---------------------------------------------------------------- read_gmt / write_gmt


def test_read_gmt_parses_fields(tmp_path):
    path = tmp_path / "sets.gmt"
    path.write_text(
        "T1\tfirst set\tA\tB\tA\tC\t\t\n"  # duplicate gene, empty trailing fields
        "\n"  # blank line
        "T2\t\tD\r\n"  # empty description, Windows line ending
        "T3\tthird\tE\tF"  # no final newline
    )
    df = fl.io.read_gmt(path)
    assert df.columns.tolist() == ["term", "name", "gene"]
    assert df["term"].tolist() == ["T1", "T1", "T1", "T2", "T3", "T3"]
    assert df["name"].tolist() == ["first set"] * 3 + ["", "third", "third"]
    assert df["gene"].tolist() == ["A", "B", "C", "D", "E", "F"]
    assert all(isinstance(v, str) for col in df for v in df[col])
    assert isinstance(df.index, pd.RangeIndex)


@pytest.mark.parametrize("suffix", [".gmt", ".gmt.gz"])
def test_write_read_round_trip(tmp_path, small_sets, suffix):
    path = tmp_path / f"sets{suffix}"
    fl.io.write_gmt(small_sets, path)
    with open(path, "rb") as fh:
        assert (fh.read(2) == b"\x1f\x8b") == suffix.endswith(".gz")
    back = fl.io.read_gmt(path)
    pd.testing.assert_frame_equal(back, small_sets)
    # and the file text is exactly the GMT we expect
    text = gzip.open(path, "rt").read() if suffix.endswith(".gz") else path.read_text()
    assert text.splitlines() == [
        "GO:0000001\tmitochondrion inheritance\tMDM10\tMDM12\tMMM1",
        "GO:0000002\tmitochondrial genome maintenance\tPOLG",
        "T3\ta set with, commas\tTP53",
    ]


def test_write_gmt_from_dict_and_bundled_round_trip(tmp_path):
    fl.io.write_gmt({"S1": ["A", "B"], "S2": ("C",)}, tmp_path / "d.gmt")
    assert (tmp_path / "d.gmt").read_text() == "S1\tS1\tA\tB\nS2\tS2\tC\n"
    # the whole bundled MF collection survives a round trip
    mf = fl.datasets.go_gene_sets("MF")
    fl.io.write_gmt(mf, tmp_path / "mf.gmt.gz")
    pd.testing.assert_frame_equal(fl.io.read_gmt(tmp_path / "mf.gmt.gz"), mf)


def test_write_gmt_rejects_tabs(tmp_path):
    with pytest.raises(ValueError, match="tabs or line breaks"):
        fl.io.write_gmt({"bad\tterm": ["A"]}, tmp_path / "x.gmt")


def test_gzip_detected_by_magic(tmp_path):
    path = tmp_path / "compressed_without_suffix.gmt"
    with gzip.open(path, "wt") as fh:
        fh.write("T1\tone\tA\tB\n")
    assert fl.io.read_gmt(path)["gene"].tolist() == ["A", "B"]


def test_read_gmt_empty_file(tmp_path):
    path = tmp_path / "empty.gmt"
    path.write_text("\n\n")
    df = fl.io.read_gmt(path)
    assert df.empty
    assert df.columns.tolist() == ["term", "name", "gene"]


@pytest.mark.parametrize(
    ("content", "line", "what"),
    [
        ("T1\tone\tA\nT2\ttwo\n", 2, "expected at least 3 tab-separated fields"),
        ("T1 one A B\n", 1, "found 1"),
        ("T1\tone\tA\n\n\n\ttwo\tB\n", 4, "term id .* is empty"),
        ("T1\tone\tA\nT2\ttwo\tB\nT3\tthree\t\t\n", 3, "'T3' has no genes"),
        ("T1\tone\tA\nT1\tagain\tB\n", 2, "'T1' was already defined on line 1"),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_read_gmt_malformed_lines(tmp_path, content, line, what, compress):
    path = tmp_path / ("bad.gmt.gz" if compress else "bad.gmt")
    if compress:
        with gzip.open(path, "wt") as fh:
            fh.write(content)
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=rf"bad\.gmt(\.gz)?', line {line}: .*{what}"):
        fl.io.read_gmt(path)


def test_read_gmt_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fl.io.read_gmt(tmp_path / "nope.gmt")


def test_read_gmt_not_text(tmp_path):
    path = tmp_path / "binary.gmt"
    path.write_bytes(b"T1\tone\t\xff\xfe\n")
    with pytest.raises(ValueError, match="could not be read"):
        fl.io.read_gmt(path)


# ---------------------------------------------------------------- bundled GO sets on real data


@pytest.mark.shared_data
def test_bundled_files_unchanged():
    for ontology in ("BP", "MF", "CC"):
        name = f"human_GO_{ontology}_propagated_all_2022-07-01.gmt.gz"
        assert (BUNDLED / name).read_bytes() == data_path("go", name).read_bytes()
    assert "CC BY 4.0" in (BUNDLED / "ATTRIBUTION.md").read_text()


def test_bundled_bp_is_read_in_full():
    bundled = fl.io.read_gmt(BUNDLED / BP_ALL)
    pd.testing.assert_frame_equal(fl.datasets.go_gene_sets("BP"), bundled)
    assert bundled["term"].nunique() == 15975
    assert len(bundled) == 1_461_602
    first = bundled.iloc[0]
    assert (first["term"], first["name"], first["gene"]) == ("GO:0000002", "mitochondrial genome maintenance", "AKT3")


@pytest.mark.shared_data
def test_bundled_bp_equals_shared_file():
    shared = fl.io.read_gmt(data_path("go", BP_ALL))
    pd.testing.assert_frame_equal(fl.io.read_gmt(BUNDLED / BP_ALL), shared)


@pytest.mark.parametrize(
    ("ontology", "n_all", "n_5_500"), [("BP", 15975, 9006), ("MF", 4964, 1899), ("CC", 2024, 1133)]
)
def test_go_gene_sets_size_filter(ontology, n_all, n_5_500):
    assert fl.datasets.go_gene_sets(ontology)["term"].nunique() == n_all
    filtered = fl.datasets.go_gene_sets(ontology.lower(), min_size=5, max_size=500)
    assert filtered["term"].nunique() == n_5_500
    sizes = filtered.groupby("term").size()
    assert sizes.min() >= 5
    assert sizes.max() <= 500


@pytest.mark.shared_data
@pytest.mark.parametrize("ontology", ["BP", "MF", "CC"])
def test_go_gene_sets_size_filter_matches_shared_5_500(ontology):
    filtered = fl.datasets.go_gene_sets(ontology.lower(), min_size=5, max_size=500)
    reference = fl.io.read_gmt(data_path("go", f"human_GO_{ontology}_propagated_5-500_2022-07-01.gmt.gz"))
    assert set(filtered["term"]) == set(reference["term"])
    assert as_dict(filtered) == as_dict(reference)


def test_go_gene_sets_bounds_are_inclusive():
    sizes = fl.datasets.go_gene_sets("CC").groupby("term").size()
    k = int(sizes.median())
    exact = fl.datasets.go_gene_sets("CC", min_size=k, max_size=k)
    assert set(exact["term"]) == set(sizes.index[sizes == k])
    assert (exact.groupby("term").size() == k).all()
    assert set(fl.datasets.go_gene_sets("CC", min_size=k)["term"]) == set(sizes.index[sizes >= k])
    assert set(fl.datasets.go_gene_sets("CC", max_size=k)["term"]) == set(sizes.index[sizes <= k])


def test_gseapy_reads_the_same_sets(tmp_path):
    from gseapy.parser import read_gmt as gp_read_gmt

    plain = tmp_path / "bp.gmt"  # gseapy only reads uncompressed files ending in .gmt
    with gzip.open(BUNDLED / BP_ALL, "rb") as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst)
    theirs = gp_read_gmt(str(plain))
    assert next(iter(theirs)) == "GO:0000002"  # gseapy keys are the term id alone
    theirs = {term: set(genes) for term, genes in theirs.items()}
    ours = as_dict(fl.datasets.go_gene_sets("BP"))
    assert len(ours) == len(theirs) == 15975
    assert ours == theirs


def test_go_gene_sets_returns_independent_copies():
    _read_go.cache_clear()
    first = fl.datasets.go_gene_sets("MF")
    first.loc[:, "gene"] = "CHANGED"
    first.drop(first.index[:10], inplace=True)
    second = fl.datasets.go_gene_sets("MF")
    assert _read_go.cache_info().hits >= 1  # the file was read once
    assert "CHANGED" not in set(second["gene"])
    assert len(second) == 262_851
    second.loc[0, "term"] = "CHANGED"
    assert fl.datasets.go_gene_sets("MF").loc[0, "term"] == "GO:0000009"
    filtered = fl.datasets.go_gene_sets("MF", min_size=5, max_size=500)
    filtered.loc[:, "name"] = "CHANGED"
    assert "CHANGED" not in set(fl.datasets.go_gene_sets("MF", min_size=5, max_size=500)["name"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ontology": "XX"}, ValueError, "must be one of BP, MF, CC"),
        ({"ontology": "GO_BP"}, ValueError, "must be one of BP, MF, CC"),
        ({"ontology": 1}, ValueError, "must be one of BP, MF, CC"),
        ({"min_size": 10, "max_size": 5}, ValueError, "must not exceed"),
        ({"min_size": -1}, ValueError, ">= 0"),
        ({"max_size": 5.5}, TypeError, "integer"),
    ],
)
def test_go_gene_sets_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        fl.datasets.go_gene_sets(**kwargs)


# ---------------------------------------------------------------- read_gene_sets


def test_read_gene_sets_every_input_kind_agrees(tmp_path, small_sets):
    gmt = tmp_path / "sets.gmt.gz"
    fl.io.write_gmt(small_sets, gmt)
    expected = fl.io.read_gmt(gmt)
    pd.testing.assert_frame_equal(fl.io.read_gene_sets(gmt), expected)
    pd.testing.assert_frame_equal(fl.io.read_gene_sets(str(gmt)), expected)
    pd.testing.assert_frame_equal(fl.io.read_gene_sets(small_sets), expected)
    # a shuffled frame with duplicates and extra columns gives the same canonical frame
    shuffled = pd.concat([small_sets, small_sets.iloc[[0]]]).iloc[[3, 0, 5, 1, 4, 2]]
    shuffled["score"] = 1.0
    shuffled["term"] = shuffled["term"].astype("category")
    got = fl.io.read_gene_sets(shuffled)
    assert as_dict(got) == as_dict(expected)
    assert got.drop_duplicates("term").set_index("term")["name"].to_dict() == {
        "GO:0000001": "mitochondrion inheritance",
        "GO:0000002": "mitochondrial genome maintenance",
        "T3": "a set with, commas",
    }
    # a dict uses the term as the name
    as_mapping = {term: list(genes) for term, genes in small_sets.groupby("term", sort=False)["gene"]}
    from_dict = fl.io.read_gene_sets(as_mapping)
    pd.testing.assert_frame_equal(from_dict, expected.assign(name=expected["term"]))
    pd.testing.assert_frame_equal(fl.io.read_gene_sets(small_sets.drop(columns="name")), from_dict)
    # sets (unordered) are sorted, empty terms are dropped, duplicates removed, non-str genes become str
    got = fl.io.read_gene_sets({"A": {"Z", "B", "M"}, "B": [], "C": ["X", "X", 7]})
    assert got["term"].tolist() == ["A", "A", "A", "C", "C"]
    assert got["gene"].tolist() == ["B", "M", "Z", "X", "7"]


def test_read_gene_sets_bundled_names():
    for name in ("GO_BP", "GO_MF", "go_cc"):
        pd.testing.assert_frame_equal(fl.io.read_gene_sets(name), fl.datasets.go_gene_sets(name[-2:]))


@pytest.mark.parametrize(
    ("gene_sets", "error", "match"),
    [
        ("GO_XX", ValueError, r"unknown name 'GO_XX'.*Accepted: .*'GO_BP'.*\.gmt.*dict.*DataFrame"),
        ("hallmark", ValueError, "unknown name 'hallmark'"),
        ("missing/sets.gmt", FileNotFoundError, "does not exist"),
        (Path("missing.gmt"), FileNotFoundError, "does not exist"),
        (42, TypeError, r"unsupported type int\. Accepted: .*'GO_BP'"),
        (["A", "B"], TypeError, "unsupported type list"),
        ({"T1": "ABC"}, TypeError, "must be an iterable of gene names"),
        ({"T1": 5}, TypeError, "must be an iterable of gene names"),
        ({"T1": ["A", None]}, ValueError, "missing gene names"),
        ({}, ValueError, "holds no gene sets"),
        ({"T1": []}, ValueError, "holds no gene sets"),
        (pd.DataFrame({"term": ["T1"], "genes": ["A"]}), ValueError, r"missing \['gene'\], found \['term', 'genes'\]"),
        (pd.DataFrame({"source": ["T1"], "target": ["A"]}), ValueError, "needs the columns 'term' and 'gene'"),
        (pd.DataFrame({"term": ["T1", None], "gene": ["A", "B"]}), ValueError, "missing value.*'term'"),
        (pd.DataFrame({"term": ["T1", "T1"], "name": ["a", "b"], "gene": ["A", "B"]}), ValueError, "single name"),
        (pd.DataFrame({"term": [], "gene": []}), ValueError, "holds no gene sets"),
    ],
)
def test_read_gene_sets_bad_inputs(gene_sets, error, match):
    with pytest.raises(error, match=match):
        fl.io.read_gene_sets(gene_sets)


def test_read_gene_sets_empty_file(tmp_path):
    path = tmp_path / "empty.gmt"
    path.write_text("")
    with pytest.raises(ValueError, match=r"empty\.gmt' holds no gene sets"):
        fl.io.read_gene_sets(path)
