"""Small microscopy examples shipped with the package: a Cell Painting plate and a nuclei image."""

from __future__ import annotations

from importlib import resources

import numpy as np
from anndata import AnnData

PLATE = "SQ00015054_normalized_feature_select.csv.gz"
IMAGE = "stardist_dsb2018_img2d.tif"
MASK = "stardist_dsb2018_mask2d.tif"


def cellpainting_plate() -> AnnData:
    """One Cell Painting plate: 384 wells x 454 normalised CellProfiler features (A549, LINCS compounds).

    Plate SQ00015054 of the LINCS Cell Painting compound screen as normalised, feature-selected
    pycytominer profiles (cytominer-eval example data, BSD-3): 24 DMSO control wells
    (``obs["Metadata_broad_sample"] == "DMSO"``) and compounds at several doses with
    ``Metadata_moa`` / ``Metadata_target``. Read with :func:`featurelens.microscopy.read_profiles`.

    Returns
    -------
    A new :class:`~anndata.AnnData` with the features in ``X`` and ``obsm["X_profiles"]``.

    Examples
    --------
    >>> import featurelens as fl
    >>> adata = fl.datasets.cellpainting_plate()
    >>> fl.pp.whiten(adata, "X_profiles", control_key="Metadata_broad_sample", control_value="DMSO", n_comps=20)
    >>> adata.obsm["X_whitened"].shape
    (384, 20)
    """
    from ..microscopy import read_profiles

    with resources.as_file(resources.files(__package__).joinpath("data", PLATE)) as path:
        return read_profiles(path)


def nuclei_image() -> tuple[np.ndarray, np.ndarray]:
    """A 512 x 512 fluorescence image of nuclei with its ground-truth instance labels.

    From the DSB2018 data as shipped with the stardist package (BSD-3).

    Returns
    -------
    ``(image, labels)``: the uint16 image and an integer label image (0 = background, one id per
    nucleus), both 512 x 512.

    Examples
    --------
    >>> import featurelens as fl
    >>> image, labels = fl.datasets.nuclei_image()
    >>> crops = image.reshape(8, 64, 8, 64).swapaxes(1, 2).reshape(-1, 64, 64)
    >>> crops.shape, int(labels.max()) > 0
    ((64, 64, 64), True)
    """
    import tifffile

    root = resources.files(__package__).joinpath("data")
    with resources.as_file(root.joinpath(IMAGE)) as img, resources.as_file(root.joinpath(MASK)) as lab:
        return tifffile.imread(img), tifffile.imread(lab)
