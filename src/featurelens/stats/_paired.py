"""Paired tests of every gene between original and steered predictions (no AnnData).

:func:`paired_test` dispatches to the paired t-test (vectorised, :func:`paired_ttest`), the
Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`) or a DESeq2 Wald test with the cell in the
design (pydeseq2), so steering reads one result whatever the method.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd

from .._checks import check_choice
from ._tests import paired_ttest

PAIRED_METHODS = ("t-test", "wilcoxon", "deseq2")


class PairedResult(NamedTuple):
    """Per gene: mean paired difference, statistic, p-value and (DESeq2 only, else NaN) its log2 fold change."""

    mean_diff: np.ndarray
    statistic: np.ndarray
    pval: np.ndarray
    log2fc: np.ndarray


def paired_wilcoxon(after: np.ndarray, before: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Wilcoxon signed-rank per column (``scipy.stats.wilcoxon``); columns without any difference get NaN."""
    from scipy import stats

    D = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    mean = D.mean(0)
    stat = np.full(D.shape[1], np.nan)
    p = np.full(D.shape[1], np.nan)
    ok = np.flatnonzero((D != 0).any(0))
    if ok.size:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = stats.wilcoxon(D[:, ok], axis=0, zero_method="wilcox")
        stat[ok], p[ok] = r.statistic, r.pvalue
    return mean, stat, p


def paired_deseq2(before: np.ndarray, after: np.ndarray, genes, n_cells: int, random_state: int):
    """pydeseq2 Wald test after vs before on rounded predicted counts of a subsample, paired by cell.

    Returns the statistic, p-value and log2 fold change per column (NaN for columns with no counts).
    """
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.ds import DeseqStats

    if (before < 0).any() or (after < 0).any():
        raise ValueError("method='deseq2' needs a decoder that predicts counts (non-negative values).")
    rng = np.random.default_rng(random_state)
    n = before.shape[0]
    take = np.sort(rng.choice(n, size=min(n_cells, n), replace=False))
    if take.size < 2:
        raise ValueError("method='deseq2' needs at least 2 cells.")
    C0, C1 = np.rint(before[take]), np.rint(after[take])
    keep = np.flatnonzero((C0 + C1).sum(0) > 0)
    counts = pd.DataFrame(
        np.vstack([C0[:, keep], C1[:, keep]]).astype(np.int64),
        index=[f"c{i}_{s}" for s in ("original", "steered") for i in range(take.size)],
        columns=np.asarray(genes)[keep],
    )
    meta = pd.DataFrame(
        {
            "cell": [f"c{i}" for i in range(take.size)] * 2,
            "condition": ["original"] * take.size + ["steered"] * take.size,
        },
        index=counts.index,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = DeseqDataSet(counts=counts, metadata=meta, design="~cell + condition", quiet=True, n_cpus=1)
        dds.deseq2()
        ds = DeseqStats(dds, contrast=["condition", "steered", "original"], quiet=True, n_cpus=1)
        ds.summary()
    r = ds.results_df
    stat, p, lfc = (np.full(len(genes), np.nan) for _ in range(3))
    stat[keep], p[keep], lfc[keep] = r["stat"].to_numpy(), r["pvalue"].to_numpy(), r["log2FoldChange"].to_numpy()
    return stat, p, lfc


def paired_test(
    before: np.ndarray, after: np.ndarray, method: str, *, genes=None, n_deseq: int = 50, random_state: int = 0
) -> PairedResult:
    """The paired test ``method`` of every column of ``after`` against ``before`` (cells x genes)."""
    if method == "t-test":
        mean, stat, p = paired_ttest(after, before)
        return PairedResult(mean, stat, p, np.full(mean.shape, np.nan))
    if method == "wilcoxon":
        mean, stat, p = paired_wilcoxon(after, before)
        return PairedResult(mean, stat, p, np.full(mean.shape, np.nan))
    if method == "deseq2":
        mean = (np.asarray(after, np.float64) - np.asarray(before, np.float64)).mean(0)
        genes = np.arange(before.shape[1]).astype(str) if genes is None else genes
        stat, p, lfc = paired_deseq2(before, after, genes, n_deseq, random_state)
        return PairedResult(mean, stat, p, lfc)
    check_choice(method, "method", PAIRED_METHODS)
    raise AssertionError("unreachable")  # pragma: no cover
