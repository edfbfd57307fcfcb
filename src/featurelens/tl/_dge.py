"""High-vs-low differential expression for every feature of a dictionary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._blockwise import take_rows
from .._checks import check_bool, check_choice, check_number, check_positive_int, check_probability
from .._core import (
    activations,
    doc,
    expression,
    get_entry,
    group_codes,
    invalidate,
    resolve_features,
    resolve_log1p,
    tool,
    tool_params,
    warn,
)
from ..stats import bh_adjust, paired_ttest, set_moments, welch_ttest
from ..stats._contrast import log2_fold_change, ranksum_test, welch_overestim_var

_SUMMARY = ["n_high", "n_low", "group", "n_up", "n_down", "high_rule", "skipped"]
_RESULT = ["feature", "gene", "log2fc", "t", "pval", "padj", "mean_high", "mean_low", "frac_high", "frac_low"]
METHODS = ("t-test_overestim_var", "t-test", "wilcoxon", "pseudobulk")


def _cell_sets(Zc, f, pool, high_quantile, n_low, min_high, min_low, rng):
    """High and low cells of feature ``f`` within ``pool`` (cell indices), or a skip reason."""
    lo, hi = Zc.indptr[f], Zc.indptr[f + 1]
    z = np.zeros(Zc.shape[0], dtype=np.float64)
    z[Zc.indices[lo:hi]] = Zc.data[lo:hi]
    zp = z[pool]
    if not (zp > 0).any():
        return None, None, "never active in its cells", ""
    thr = np.quantile(zp, high_quantile)
    high = pool[(zp >= thr) & (zp > 0)]
    rule = "quantile"
    if high.size < min_high:
        n_active = int((zp > 0).sum())
        if n_active < min_high:
            return None, None, f"{n_active} active cells (fewer than min_high={min_high})", ""
        # too few cells above the quantile: the min_high most active cells instead
        top = np.argsort(-zp, kind="stable")[:min_high]
        high = np.sort(pool[top])
        rule = f"top {min_high}"
    zero = pool[zp == 0]
    if zero.size < min_low:
        return None, None, f"{zero.size} cells with zero activation (fewer than min_low={min_low})", ""
    low = np.sort(rng.choice(zero, size=n_low, replace=False)) if zero.size > n_low else zero
    return high, low, "", rule


def _assemble_dge(tables: list[dict], names: pd.Index, genes: pd.Index) -> pd.DataFrame:
    """Long DGE table (sorted by feature, adjusted p and gene) from integer-coded columns."""
    cols = {k: np.concatenate([t[k] for t in tables]) if tables else np.zeros(0) for k in _RESULT}
    order = np.lexsort((cols["gene"], cols["padj"], cols["feature"]))
    cols = {k: v[order] for k, v in cols.items()}
    lfc = cols["log2fc"]
    return pd.DataFrame(
        {
            "feature": pd.Categorical.from_codes(
                cols["feature"].astype(np.int32), categories=names
            ).remove_unused_categories(),
            "gene": pd.Categorical.from_codes(
                cols["gene"].astype(np.int32), categories=genes
            ).remove_unused_categories(),
            **{k: cols[k].astype(np.float64) for k in _RESULT[2:]},
            "direction": pd.Categorical.from_codes((lfc > 0).astype(np.int8), categories=["down", "up"]),
        }
    )


class _HighVsLow:
    """One :func:`high_vs_low` call in named steps: choose cells, test a chunk of features, store.

    The state (activations, expression, the group of every feature) is built once; every chunk
    of features is tested with one sparse indicator x expression product.
    """

    def __init__(self, adata: AnnData, key: str, opts: dict):
        self.adata, self.key, self.opts = adata, key, opts
        self.entry = get_entry(adata, key)
        self.Zc = activations(adata, key).tocsc()
        self.X = expression(adata, opts["layer"], nonnegative=True)
        self.log1p = resolve_log1p(adata, self.X, opts["layer"], opts["log1p"], nonnegative_checked=True)
        self.feat_idx = resolve_features(self.entry, opts["features"])
        self.names = self.entry["features"].index.astype(str)
        self.genes = adata.var_names.astype(str).rename(None)
        self.groupby = opts["groupby"]
        if self.groupby is not None:
            self.codes, self.groups = group_codes(adata, self.groupby, min_size=1)
        self._check_group_sizes()
        if self.groupby is not None:
            self.fgroups = self._feature_groups()
        if opts["method"] == "pseudobulk":
            self.sample_codes, self.samples = group_codes(adata, opts["sample_key"], min_size=1, what="sample_key")
        self.pseudocount = 1.0 if opts["pseudocount"] == "auto" else float(opts["pseudocount"])
        self.lfc = np.full((adata.n_vars, len(self.names)), np.nan, dtype=np.float32)
        self.summary: dict[str, list] = {c: [] for c in _SUMMARY}
        self.tables: list[dict] = []
        self.high_rows: list[np.ndarray] = []
        self.high_cols: list[np.ndarray] = []

    # ------------------------------------------------------------------ which cells
    def _check_group_sizes(self) -> None:
        """``min_high`` and ``min_low`` must fit into the largest pool of cells a feature can be tested in."""
        o = self.opts
        largest = self.adata.n_obs if self.groupby is None else int(np.bincount(self.codes).max())
        if o["min_high"] + o["min_low"] > largest:
            where = "adata" if self.groupby is None else f"the largest group of adata.obs[{self.groupby!r}]"
            raise ValueError(
                f"`min_high={o['min_high']}` plus `min_low={o['min_low']}` exceeds the {largest} cells of {where}: no "
                "feature could be tested. Lower min_high / min_low."
            )

    def _typed_groups(self) -> pd.Series | None:
        """The local group of every feature from ``feature_types`` with this very ``groupby``."""
        stored = self.entry.get("feature_types", {}).get(self.groupby)
        table = stored.get("table") if isinstance(stored, dict) else None
        if not isinstance(table, pd.DataFrame) or not {"type", "group"} <= set(table.columns):
            return None
        return table["group"].astype(object).where(table["type"].astype(str) == "local")

    def _feature_groups(self) -> np.ndarray:
        """The group of every feature: its local group when typed with this groupby, else where it is most active.

        "Most active" is the highest mean activation among the groups with at least ``min_high``
        active and ``min_low`` inactive cells (among all groups when none qualifies).
        """
        n_groups = len(self.groups)
        local = self._typed_groups()
        counts = np.bincount(self.codes, minlength=n_groups).astype(np.float64)
        min_high, min_low = self.opts["min_high"], self.opts["min_low"]
        out = np.empty(len(self.feat_idx), dtype=np.int64)
        for j, f in enumerate(self.feat_idx):
            g = None if local is None else local.iloc[f]
            if g is not None and not pd.isna(g) and str(g) in self.groups:
                out[j] = self.groups.get_loc(str(g))
                continue
            lo, hi = self.Zc.indptr[f], self.Zc.indptr[f + 1]
            rows, vals = self.Zc.indices[lo:hi], self.Zc.data[lo:hi]
            sums = np.bincount(self.codes[rows], weights=vals, minlength=n_groups)
            n_act = np.bincount(self.codes[rows[vals > 0]], minlength=n_groups)
            means = sums / np.maximum(counts, 1)
            ok = (n_act >= min_high) & (counts - n_act >= min_low)
            out[j] = int(np.argmax(np.where(ok, means, -np.inf))) if ok.any() else int(np.argmax(means))
        return out

    def _choose_cells(self, start: int, chunk: np.ndarray):
        """High and low cells of every feature of a chunk; records the summary rows."""
        o = self.opts
        all_cells = np.arange(self.adata.n_obs)
        highs, lows, tested = [], [], []
        for j, f in enumerate(chunk):
            pool = all_cells if self.groupby is None else np.flatnonzero(self.codes == self.fgroups[start + j])
            rng = np.random.default_rng([int(o["random_state"]), int(f)])
            high, low, reason, rule = _cell_sets(
                self.Zc, f, pool, o["high_quantile"], o["n_low"], o["min_high"], o["min_low"], rng
            )
            self.summary["skipped"].append(reason)
            self.summary["high_rule"].append(rule)
            self.summary["n_high"].append(0 if high is None else int(high.size))
            self.summary["n_low"].append(0 if low is None else int(low.size))
            self.summary["group"].append(None if self.groupby is None else str(self.groups[self.fgroups[start + j]]))
            if high is not None:
                self.high_rows.append(np.full(high.size, start + j))
                self.high_cols.append(high)
                highs.append(high)
                lows.append(low)
                tested.append(j)
        return highs, lows, tested

    # ------------------------------------------------------------------ the test
    def _statistics(self, mom, det, highs, lows, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Statistic and p-value of every gene for the ``k`` tested features of a chunk, by ``method``."""
        method = self.opts["method"]
        nh, nl = mom.n[:k, None], mom.n[k:, None]
        if method == "t-test":
            t, _, p = welch_ttest(nh, mom.mean[:k], mom.var[:k], nl, mom.mean[k:], mom.var[k:])
        elif method == "t-test_overestim_var":
            t, _, p = welch_overestim_var(nh, mom.mean[:k], mom.var[:k], nl, mom.mean[k:], mom.var[k:])
        elif method == "wilcoxon":
            t, p = np.empty((k, self.adata.n_vars)), np.empty((k, self.adata.n_vars))
            for i in range(k):
                rows = np.concatenate([highs[i], lows[i]])
                _, t[i], p[i] = ranksum_test(take_rows(self.X, rows), highs[i].size)
        else:
            t, p = self._pseudobulk(highs, lows, k)
        # genes expressed in too few cells of both groups are not tested (as Seurat's min.pct)
        keep = np.maximum(det[:k] / nh, det[k:] / nl) >= self.opts["min_detection"]
        return np.where(keep, t, np.nan), np.where(keep, p, np.nan)

    def _pseudobulk(self, highs, lows, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Paired t-test over samples of log2 CPM of the summed high and low cells of every sample."""
        t, p = np.full((k, self.adata.n_vars), np.nan), np.full((k, self.adata.n_vars), np.nan)
        for i in range(k):
            sets = []
            for s in range(len(self.samples)):
                h, lo = highs[i][self.sample_codes[highs[i]] == s], lows[i][self.sample_codes[lows[i]] == s]
                if h.size and lo.size:
                    sets += [h, lo]
            if len(sets) < 4:  # fewer than two samples with both groups: no paired test
                continue
            rows = np.repeat(np.arange(len(sets)), [x.size for x in sets])
            ind = sp.csr_matrix((np.ones(rows.size), (rows, np.concatenate(sets))), shape=(len(sets), self.adata.n_obs))
            mom = set_moments(self.X, ind, transform=np.expm1 if self.log1p else None)
            bulk = mom.sum_transformed if self.log1p else mom.sum
            cpm = np.log2(bulk / np.maximum(bulk.sum(axis=1, keepdims=True), 1e-300) * 1e6 + 1.0)
            _, t[i], p[i] = paired_ttest(cpm[0::2], cpm[1::2])
        return t, p

    def _test(self, chunk: np.ndarray, highs, lows, tested) -> tuple[np.ndarray, np.ndarray]:
        """Test every gene for the tested features of a chunk; returns the up/down counts."""
        o = self.opts
        n_up = np.zeros(len(chunk), dtype=np.int64)
        n_down = np.zeros(len(chunk), dtype=np.int64)
        if not tested:
            return n_up, n_down
        sets = highs + lows
        rows = np.repeat(np.arange(len(sets)), [s.size for s in sets])
        ind = sp.csr_matrix((np.ones(rows.size), (rows, np.concatenate(sets))), shape=(len(sets), self.adata.n_obs))
        mom = set_moments(self.X, ind, transform=np.expm1 if self.log1p else None)
        det = mom.detected
        k = len(tested)
        t, p = self._statistics(mom, det, highs, lows, k)
        padj = bh_adjust(p, axis=1)
        nh, nl = mom.n[:k, None], mom.n[k:, None]
        lin = mom.sum_transformed if self.log1p else mom.sum
        mh, ml = lin[:k] / nh, lin[k:] / nl
        lfc = log2_fold_change(mh, ml, self.pseudocount)
        f_tested = chunk[np.asarray(tested)]
        self.lfc[:, f_tested] = lfc.T.astype(np.float32)
        sig = np.nan_to_num(padj if o["adjusted"] else p, nan=1.0) < o["pval_cutoff"]
        n_up[tested] = (sig & (lfc > 0)).sum(axis=1)
        n_down[tested] = (sig & (lfc < 0)).sum(axis=1)
        r, c = np.nonzero(np.nan_to_num(padj, nan=1.0) < o["store_pval"])
        if r.size:
            values = {
                "log2fc": lfc, "t": t, "pval": p, "padj": padj, "mean_high": mh, "mean_low": ml,
                "frac_high": det[:k] / nh, "frac_low": det[k:] / nl,
            }  # fmt: skip
            self.tables.append(
                {"feature": f_tested[r].astype(np.int32), "gene": c.astype(np.int32)}
                | {name: v[r, c] for name, v in values.items()}
            )
        return n_up, n_down

    def run(self, progress: bool) -> None:
        """Choose cells and test every chunk of features."""
        from tqdm.auto import tqdm

        size = self.opts["chunk_size"]
        with tqdm(total=len(self.feat_idx), desc="high vs low", disable=not progress, leave=False) as bar:
            for start in range(0, len(self.feat_idx), size):
                chunk = self.feat_idx[start : start + size]
                n_up, n_down = self._test(chunk, *self._choose_cells(start, chunk))
                self.summary["n_up"].extend(n_up.tolist())
                self.summary["n_down"].extend(n_down.tolist())
                bar.update(len(chunk))

    # ------------------------------------------------------------------ storage
    def store(self) -> None:
        """Write the summary, the long table, the high cells and the fold changes (replacing earlier ones)."""
        summ = pd.DataFrame(self.summary, index=pd.Index(self.names[self.feat_idx], name=None))
        if self.groupby is None:
            summ = summ.drop(columns="group")
        else:
            summ["group"] = summ["group"].astype("category")
        n_skipped = int((summ["skipped"] != "").sum())
        if n_skipped == len(summ):
            warn("Every feature was skipped (see the 'skipped' column of the summary).")
        hr = np.concatenate(self.high_rows) if self.high_rows else np.zeros(0, np.int64)
        hc = np.concatenate(self.high_cols) if self.high_cols else np.zeros(0, np.int64)
        shape = (len(self.feat_idx), self.adata.n_obs)
        params = {k: v for k, v in self.opts.items() if k != "features"} | {
            "log1p": self.log1p,
            "pseudocount": self.pseudocount,
        }
        invalidate(self.adata, self.key, "dge")
        self.entry["dge"] = {
            "summary": summ,
            "high_cells": sp.csr_matrix((np.ones(hr.size, dtype=np.int8), (hr, hc)), shape=shape),
            "results": _assemble_dge(self.tables, self.names, self.genes),
            "params": tool_params(**params, n_features_tested=len(summ) - n_skipped),
        }
        self.adata.varm[f"{self.key}_log2fc"] = self.lfc


def _check_options(o: dict) -> None:
    check_number(o["high_quantile"], "high_quantile", minimum=0.0, maximum=1.0, low_open=True, high_open=True)
    for name in ("n_low", "chunk_size"):
        check_positive_int(o[name], name)
    for name in ("min_high", "min_low"):
        check_positive_int(o[name], name, minimum=2)  # a variance needs two cells
    if o["pseudocount"] != "auto":
        check_number(o["pseudocount"], "pseudocount", minimum=0.0, low_open=True)
    check_probability(o["store_pval"], "store_pval")
    check_probability(o["pval_cutoff"], "pval_cutoff")
    check_bool(o["adjusted"], "adjusted")
    check_choice(o["method"], "method", METHODS)
    check_number(o["min_detection"], "min_detection", minimum=0.0, maximum=1.0)
    if (o["method"] == "pseudobulk") != (o["sample_key"] is not None):
        raise ValueError(
            "method='pseudobulk' needs `sample_key=` (the obs column of the donors or samples), and `sample_key` "
            f"is only used by it; got method={o['method']!r}, sample_key={o['sample_key']!r}."
        )


@tool
@doc
def high_vs_low(
    adata: AnnData,
    key: str,
    *,
    layer: str | None = None,
    groupby: str | None = None,
    features=None,
    method: str = "t-test_overestim_var",
    sample_key: str | None = None,
    high_quantile: float = 0.99,
    n_low: int = 1000,
    min_high: int = 30,
    min_low: int = 10,
    min_detection: float = 0.1,
    log1p: bool | None = None,
    pseudocount: float | str = "auto",
    pval_cutoff: float = 0.05,
    adjusted: bool = True,
    store_pval: float = 0.05,
    chunk_size: int = 256,
    random_state: int = 0,
    progress: bool = True,
) -> None:
    """Differential expression between the cells where a feature is high and where it is off.

    For every feature (Schuster 2025, A.3.2-A.3.7): *high* cells have an activation at or above
    the ``high_quantile`` quantile of the feature (and above zero), widened to the ``min_high``
    most active cells when the quantile selects fewer; *low* cells have an activation of exactly
    zero (at most ``n_low`` of them, drawn at random with ``random_state``). Genes expressed in
    fewer than ``min_detection`` of the cells of both groups are not tested; the others are
    compared with ``method``, p-values are Benjamini-Hochberg adjusted over the tested genes, and
    the log2 fold change is that of the mean expression on the linear scale (``expm1`` is undone
    first when the values are log1p transformed) with a pseudocount on that scale,
    ``log2((mean_high + c) / (mean_low + c))``; with the default ``c = 1`` (one count per 10,000
    after ``sc.pp.normalize_total(target_sum=1e4)``, as Seurat's ``avg_log2FC``) no fold change
    exceeds ``log2(max mean + 1)``, so a gene absent from a few high cells is not a 10^10-fold
    change.

    The methods are:

    - ``"t-test_overestim_var"`` (default): Welch's t with the low group's variance divided by
      the high group's size (scanpy's ``t-test_overestim_var``). The high group is small and
      zero-inflated, and a gene that is zero in every high cell has no variance there, which makes
      Welch's statistic huge; this variance keeps its size. On the bundled Kang data, 50 random
      "features" of 10 to 200 random cells give no DEG at all, and the interferon features keep
      their ISGs (``benchmarks/calibration.py``, docs/benchmarks.md).
    - ``"t-test"``: Welch's t-test (the SAE paper's test; equals
      ``scipy.stats.ttest_ind(equal_var=False)``). It rejects hundreds of genes for random cells.
    - ``"wilcoxon"``: two-sided Wilcoxon rank-sum with tie and continuity corrections (equals
      ``scipy.stats.mannwhitneyu(method="asymptotic")``); its normal approximation breaks down for
      genes seen in one or two cells, so it too rejects for random cells of small groups.
    - ``"pseudobulk"``: with ``sample_key`` (donors, samples), the expression of the high and of the
      low cells of every sample is summed, scaled to counts per million and log2(CPM + 1)
      transformed, and high and low are compared by a paired t-test over the samples that have both
      (at least two; ``scipy.stats.ttest_rel``). This is the field's recommendation for comparisons
      across samples.

    With ``groupby`` the contrast stays inside the feature's own group: its local group from
    :func:`~featurelens.tl.feature_types` run with the same ``groupby`` (the types of other
    groupings are not used), otherwise the group where its mean activation is highest among
    groups with enough active and inactive cells. Both the quantile and the zero cells are taken
    within that group, which removes differences between groups from the comparison.

    All features are processed together in chunks of ``chunk_size``: for a chunk, every block of
    cells of the expression matrix is read once, in its stored dtype, and the sums, sums of squares,
    ``expm1`` sums and detection counts of all its high and low sets are accumulated in float64
    (``2 * chunk_size x genes x 4`` values). The matrix may be in memory or on disk (a backed AnnData,
    one read lazily, a dask array: blocks of about 256 MB are read, and a dask array is reduced by
    dask's scheduler or a ``dask.distributed`` client); the Wilcoxon test reads only the rows of each
    feature's high and low cells. The expression is checked first (one pass over it): it must be
    finite and non-negative (log-normalised or counts) with unique ``var_names``. A new call
    replaces the stored results and removes the enrichment and concept space computed from the
    previous ones.

    Parameters
    ----------
    {doc_adata}
    {doc_key}
    layer
        Layer with the expression values (default ``adata.X``), log-normalised as by
        ``sc.pp.normalize_total`` + ``sc.pp.log1p``.
    groupby
        Column of ``adata.obs``; contrast within each feature's group.
    {doc_features}
    method
        ``"t-test_overestim_var"``, ``"t-test"``, ``"wilcoxon"`` or ``"pseudobulk"`` (see above).
    sample_key
        Column of ``adata.obs`` with the donors or samples, for ``method="pseudobulk"`` only.
    high_quantile
        Quantile of the activation that defines high cells.
    n_low
        Maximum number of zero-activation cells.
    min_high, min_low
        Minimum group sizes (30 high cells: fewer make the comparison meaningless). When fewer
        than ``min_high`` cells reach the quantile (small data or a small group), the ``min_high``
        most active cells are the high cells instead (``high_rule`` records which); features with
        fewer active or zero cells than these minima are skipped with the reason recorded.
    min_detection
        Genes expressed (non-zero) in less than this fraction of the high cells and of the low
        cells are not tested (as Seurat's ``min.pct``).
    log1p
        Whether the values are ``log1p`` transformed (default: detected from ``adata.uns["log1p"]``
        or non-integer values).
    pseudocount
        Added to both means (on the linear scale of the data) before the fold change; ``"auto"``:
        1. The value used is recorded in ``params``.
    pval_cutoff
        Genes below this (adjusted, see ``adjusted``) p count as up / down in the summary.
    adjusted
        Apply ``pval_cutoff`` to the adjusted p-value (default) rather than the raw one.
    store_pval
        Genes with adjusted p below this are kept in the long result table.
    chunk_size
        Features per chunk.
    random_state
        Seed of the sampling of low cells (each feature has its own stream, so results do not
        depend on ``features`` or ``chunk_size``).
    {doc_progress}

    Returns
    -------
    {doc_returns_tool}

    Sets the following fields:

    ``adata.uns[key]["dge"]["summary"]`` : :class:`pandas.DataFrame`
        One row per requested feature: ``n_high``, ``n_low``, ``group`` (with ``groupby``),
        ``n_up`` / ``n_down`` (genes with (adjusted) p < ``pval_cutoff`` and positive / negative
        fold change), ``high_rule`` (``"quantile"`` or ``"top <min_high>"``), ``skipped`` (the
        reason, ``""`` when tested).
    ``adata.uns[key]["dge"]["results"]`` : :class:`pandas.DataFrame`
        Long table of genes with ``padj < store_pval``: ``feature``, ``gene``, ``log2fc``, ``t``
        (the statistic of ``method``), ``pval``, ``padj``, ``mean_high``, ``mean_low`` (linear
        scale), ``frac_high``, ``frac_low`` (fraction of expressing cells), ``direction``.
    ``adata.uns[key]["dge"]["high_cells"]`` : :class:`scipy.sparse.csr_matrix` (features x cells)
        Which cells were the high cells of each feature (rows in the order of the summary).
    ``adata.uns[key]["dge"]["params"]`` : :class:`dict`
        The options used.
    ``adata.varm[f"{key}_log2fc"]`` : :class:`numpy.ndarray` (n_vars, n_features), float32
        Log2 fold changes of every gene (NaN for features not tested), used by
        :func:`~featurelens.tl.enrich` for the rank-based test.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018(preprocess=True)
    >>> fl.tl.sae(adata, "X_pca", n_features=64, n_steps=200, progress=False)
    >>> fl.tl.feature_types(adata, "sae", "cell_type")
    >>> fl.tl.high_vs_low(adata, "sae", groupby="cell_type", features=["f0", "f1"], progress=False)
    >>> fl.get.dge(adata, "sae", "f0").columns[:4].tolist()
    ['feature', 'gene', 'log2fc', 't']
    """
    opts = {
        "layer": layer,
        "groupby": groupby,
        "features": features,
        "method": method,
        "sample_key": sample_key,
        "high_quantile": high_quantile,
        "n_low": n_low,
        "min_high": min_high,
        "min_low": min_low,
        "min_detection": min_detection,
        "log1p": log1p,
        "pseudocount": pseudocount,
        "pval_cutoff": pval_cutoff,
        "adjusted": adjusted,
        "store_pval": store_pval,
        "chunk_size": chunk_size,
        "random_state": random_state,
    }
    _check_options(opts)
    run = _HighVsLow(adata, key, opts)
    run.run(progress)
    run.store()
