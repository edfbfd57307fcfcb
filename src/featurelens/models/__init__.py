"""Dictionary learners as torch modules, and their training loop.

Nothing in this subpackage knows about AnnData: :mod:`featurelens.tl` translates between
AnnData objects and these modules.
"""

from .config import ICFLConfig, SAEConfig, TrainConfig
from .icfl import BIAS_MODES, ICFL, SELECTIONS, pursuit
from .preprocess import (
    NORMALIZE_OPTIONS,
    SHRINKAGE_OPTIONS,
    Normalizer,
    Preprocess,
    Whitening,
    control_covariance,
    fit_whitening,
)
from .sae import ARCHITECTURES, SparseAutoencoder, geometric_median
from .train import DEAD_RATE, CheckpointError, DeadTracker, TrainingDivergedError, TrainOutput, fit, load_checkpoint

__all__ = [
    "ARCHITECTURES",
    "BIAS_MODES",
    "DEAD_RATE",
    "ICFL",
    "NORMALIZE_OPTIONS",
    "SELECTIONS",
    "SHRINKAGE_OPTIONS",
    "CheckpointError",
    "DeadTracker",
    "ICFLConfig",
    "Normalizer",
    "Preprocess",
    "SAEConfig",
    "SparseAutoencoder",
    "TrainConfig",
    "TrainOutput",
    "TrainingDivergedError",
    "Whitening",
    "control_covariance",
    "fit",
    "fit_whitening",
    "geometric_median",
    "load_checkpoint",
    "pursuit",
]
