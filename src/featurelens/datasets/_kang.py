"""Kang 2018 PBMCs (interferon-beta stimulated and control), a 2,000-cell subset shipped with the package."""

from __future__ import annotations

from importlib import resources

from anndata import AnnData

FILE = "kang2018_ifnb_sub2000_counts.h5ad"


def kang2018() -> AnnData:
    """Kang 2018 PBMCs: 2,000 cells, half stimulated with interferon-beta, raw counts.

    Human peripheral blood mononuclear cells from Kang et al. 2018 (Nat Biotechnol 36, 89-94; GEO
    GSE96583): 1,000 control (``CTRL``) and 1,000 interferon-beta stimulated (``STIM``) cells x 13,215
    genes, raw integer counts in a sparse ``X``, with ``obs["cell_type"]`` (13 types) and
    ``obs["nCount_RNA"]``. The two conditions were sequenced in separate runs, so they double as batches.

    Returns
    -------
    A new :class:`~anndata.AnnData` (the caller may modify it).

    Examples
    --------
    >>> adata = fl.datasets.kang2018()
    >>> sc.pp.normalize_total(adata, target_sum=1e4)
    >>> sc.pp.log1p(adata)
    >>> adata.obs["condition"].value_counts()
    """
    import anndata as ad

    with resources.as_file(resources.files(__package__).joinpath("data", FILE)) as path:
        return ad.read_h5ad(path)
