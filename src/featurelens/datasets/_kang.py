"""Kang 2018 PBMCs (interferon-beta stimulated and control), a 2,000-cell subset shipped with the package."""

from __future__ import annotations

from functools import lru_cache

from anndata import AnnData

from .._checks import check_bool
from .._core import data_file

FILE = "kang2018_ifnb_sub2000_counts.h5ad"


@lru_cache(maxsize=1)
def _preprocessed() -> AnnData:
    """Normalised, log1p, 2,000 HVGs, 30-PC PCA (computed once per session; callers get copies)."""
    import scanpy as sc

    adata = kang2018()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000)
    sc.pp.pca(adata, n_comps=30, mask_var="highly_variable", random_state=0)
    return adata


def kang2018(*, preprocess: bool = False) -> AnnData:
    """Kang 2018 PBMCs: 2,000 cells, half stimulated with interferon-beta.

    Human peripheral blood mononuclear cells from Kang et al. 2018 (Nat Biotechnol 36, 89-94; GEO
    GSE96583): 1,000 control (``CTRL``) and 1,000 interferon-beta stimulated (``STIM``) cells x 13,215
    genes, with ``obs["condition"]``, ``obs["cell_type"]`` (13 types) and ``obs["nCount_RNA"]``. The two
    conditions were sequenced in separate runs, so they double as batches.

    Parameters
    ----------
    preprocess
        ``False``: raw integer counts in a sparse ``X``. ``True``: the usual scanpy preprocessing
        of the featurelens demo, ``sc.pp.normalize_total(target_sum=1e4)``, ``sc.pp.log1p``, 2,000
        highly variable genes and a 30-component PCA on them (``obsm["X_pca"]``, ``varm["PCs"]``,
        seed 0); computed once per session.

    Returns
    -------
    A new :class:`~anndata.AnnData` (the caller may modify it).

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.kang2018()
    >>> adata.obs["condition"].value_counts().to_dict()
    {'CTRL': 1000, 'STIM': 1000}
    >>> fl.datasets.kang2018(preprocess=True).obsm["X_pca"].shape
    (2000, 30)
    """
    import anndata as ad

    if check_bool(preprocess, "preprocess"):
        return _preprocessed().copy()
    with data_file(FILE) as path:
        return ad.read_h5ad(path)
