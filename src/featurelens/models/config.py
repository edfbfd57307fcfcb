"""Validated options of the learners and of their training (no AnnData).

:class:`SAEConfig`, :class:`ICFLConfig` and :class:`TrainConfig` are built once per call of
:func:`featurelens.tl.sae` / :func:`featurelens.tl.icfl` from the flat keyword arguments, with every
default resolved from the data shape. ``to_dict()`` gives the plain values recorded in
``adata.uns[key]["params"]`` and ``from_dict()`` rebuilds a configuration from them, so a stored
dictionary can be turned back into its torch model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from .._checks import (
    check_bool,
    check_choice,
    check_int,
    check_nonnegative,
    check_number,
    check_positive,
    check_positive_int,
)
from .icfl import BIAS_MODES, ICFL, SELECTIONS
from .preprocess import NORMALIZE_OPTIONS
from .sae import ARCHITECTURES, SparseAutoencoder

PRE_BIAS_INIT = ("mean", "median")


def resolve_n_features(n_inputs: int, n_features: int | None, expansion: float) -> int:
    """``n_features``, or ``round(expansion * n_inputs)`` (at least 1) when it is None."""
    if n_features is not None:
        return check_positive_int(n_features, "n_features")
    if isinstance(expansion, bool) or not isinstance(expansion, int | float) or not math.isfinite(expansion):
        raise ValueError(f"`expansion` must be a positive finite number, got {expansion!r}.")
    if expansion <= 0:
        raise ValueError(f"`expansion` must be a positive finite number, got {expansion!r}.")
    return max(1, round(expansion * n_inputs))


def _from(cls, d: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class SAEConfig:
    """Options of a :class:`~featurelens.models.SparseAutoencoder` (see :func:`featurelens.tl.sae`)."""

    n_inputs: int
    n_features: int
    architecture: str = "topk"
    expansion: float | None = 8
    k: int | None = None
    l1_coef: float | None = 1e-2
    auxk: bool = True
    k_aux: int | None = None
    auxk_coef: float | None = 1.0 / 32.0
    pre_bias_init: str = "mean"

    @property
    def sparse(self) -> bool:
        """Whether the architecture keeps a fixed number of active features (TopK, BatchTopK)."""
        return self.architecture in ("topk", "batchtopk")

    @classmethod
    def resolve(
        cls,
        n_inputs: int,
        *,
        architecture: str = "topk",
        n_features: int | None = None,
        expansion: float = 8,
        k: int | None = None,
        l1_coef: float = 1e-2,
        auxk: bool = True,
        k_aux: int | None = None,
        auxk_coef: float = 1.0 / 32.0,
        pre_bias_init: str = "mean",
    ) -> SAEConfig:
        """Validate the options and fill in the defaults that depend on the input dimension."""
        check_choice(architecture, "architecture", ARCHITECTURES)
        check_choice(pre_bias_init, "pre_bias_init", PRE_BIAS_INIT)
        n_feat = resolve_n_features(n_inputs, n_features, expansion)
        check_nonnegative(l1_coef, "l1_coef")
        check_nonnegative(auxk_coef, "auxk_coef")
        check_bool(auxk, "auxk")
        sparse = architecture in ("topk", "batchtopk")
        if sparse:
            k = min(32, max(1, n_inputs // 2), max(1, n_feat - 1)) if k is None else check_positive_int(k, "k")
            if k >= n_feat:
                raise ValueError(
                    f"`k={k}` must be smaller than `n_features={n_feat}`: with k >= n_features nothing is sparse. "
                    "Lower k or raise n_features/expansion."
                )
            k_aux = max(1, n_inputs // 2) if k_aux is None else check_positive_int(k_aux, "k_aux")
        return cls(
            n_inputs=check_positive_int(n_inputs, "n_inputs"),
            n_features=n_feat,
            architecture=architecture,
            expansion=float(expansion) if n_features is None else expansion,
            k=k if sparse else None,
            l1_coef=None if sparse else float(l1_coef),
            auxk=bool(auxk) if sparse else False,
            k_aux=k_aux if sparse else None,
            auxk_coef=float(auxk_coef) if sparse else None,
            pre_bias_init=pre_bias_init,
        )

    def default_lr(self) -> float:
        """Peak Adam learning rate: ``3e-3 * min(1, sqrt(32 / d))``."""
        return float(3e-3 * min(1.0, math.sqrt(32.0 / self.n_inputs)))

    def model_kwargs(self) -> dict[str, Any]:
        """Constructor options of :class:`~featurelens.models.SparseAutoencoder`."""
        return {
            "architecture": self.architecture,
            "k": self.k if self.k is not None else 1,
            "l1_coef": self.l1_coef or 0.0,
            "auxk": self.auxk,
            "k_aux": self.k_aux,
            "auxk_coef": self.auxk_coef if self.auxk_coef is not None else 1.0 / 32.0,
        }

    def build(self, generator=None) -> SparseAutoencoder:
        """A freshly initialised model."""
        return SparseAutoencoder(self.n_inputs, self.n_features, generator=generator, **self.model_kwargs())

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as recorded in ``uns[key]["params"]``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        """Rebuild from :meth:`to_dict` output (other keys are ignored)."""
        return _from(cls, d)


@dataclass(frozen=True)
class ICFLConfig:
    """Options of an :class:`~featurelens.models.ICFL` dictionary (see :func:`featurelens.tl.icfl`)."""

    n_inputs: int
    n_features: int
    expansion: float | None = 8
    n_iter: int = 20
    n_per_iter: int = 5
    orthogonal: bool = False
    selection: str = "signed"
    bias: str = "mean"
    reset_every: int = 100
    reset_threshold: float = 0.9
    ridge: float = 1e-6
    tol: float = 1e-6
    architecture: str = "icfl"

    @classmethod
    def resolve(
        cls,
        n_inputs: int,
        *,
        n_features: int | None = None,
        expansion: float = 8,
        n_iter: int | None = None,
        n_per_iter: int = 5,
        orthogonal: bool = False,
        selection: str = "signed",
        bias: str = "mean",
        reset_every: int = 100,
        reset_threshold: float = 0.9,
        tol: float = 1e-6,
        ridge: float = 1e-6,
    ) -> ICFLConfig:
        """Validate the options and fill in the defaults that depend on the input dimension."""
        check_choice(selection, "selection", SELECTIONS)
        check_choice(bias, "bias", BIAS_MODES)
        check_bool(orthogonal, "orthogonal")
        check_number(reset_threshold, "reset_threshold", minimum=0.0, maximum=1.0, low_open=True)
        check_int(reset_every, "reset_every", minimum=0)
        check_nonnegative(tol, "tol")
        check_positive(ridge, "ridge")
        n_feat = resolve_n_features(n_inputs, n_features, expansion)
        n_per_iter = check_positive_int(n_per_iter, "n_per_iter")
        if n_iter is None:
            n_iter = max(1, min(20, n_inputs // (2 * n_per_iter)))
        n_iter = check_positive_int(n_iter, "n_iter")
        if n_per_iter > n_feat:
            raise ValueError(f"`n_per_iter={n_per_iter}` exceeds `n_features={n_feat}`.")
        if n_iter * n_per_iter > n_feat:
            raise ValueError(
                f"`n_iter * n_per_iter` = {n_iter} * {n_per_iter} = {n_iter * n_per_iter} exceeds "
                f"`n_features={n_feat}`: a code cannot use more atoms than the dictionary has. "
                "Lower n_iter/n_per_iter or raise n_features."
            )
        return cls(
            n_inputs=check_positive_int(n_inputs, "n_inputs"),
            n_features=n_feat,
            expansion=float(expansion) if n_features is None else expansion,
            n_iter=n_iter,
            n_per_iter=n_per_iter,
            orthogonal=bool(orthogonal),
            selection=selection,
            bias=bias,
            reset_every=int(reset_every),
            reset_threshold=float(reset_threshold),
            ridge=float(ridge),
            tol=float(tol),
        )

    def default_lr(self) -> float:
        """Peak Adam learning rate: 1e-3."""
        return 1e-3

    def model_kwargs(self) -> dict[str, Any]:
        """Constructor options of :class:`~featurelens.models.ICFL`."""
        return {
            "n_iter": self.n_iter,
            "n_per_iter": self.n_per_iter,
            "orthogonal": self.orthogonal,
            "selection": self.selection,
            "reset_every": self.reset_every,
            "reset_threshold": self.reset_threshold,
            "bias": self.bias,
            "ridge": self.ridge,
            "tol": self.tol,
        }

    def build(self, generator=None) -> ICFL:
        """A freshly initialised model."""
        return ICFL(self.n_inputs, self.n_features, generator=generator, **self.model_kwargs())

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as recorded in ``uns[key]["params"]``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ICFLConfig:
        """Rebuild from :meth:`to_dict` output (other keys are ignored)."""
        return _from(cls, d)


def _default_batch_size(n_obs: int) -> int:
    return int(min(n_obs, 1024))


def _default_n_steps(n_obs: int, batch_size: int) -> int:
    """About 100 epochs, at least 1,500 and at most 20,000 steps."""
    return int(min(max(math.ceil(100 * n_obs / batch_size), 1500), 20000))


def _default_dead_window(n_steps: int, batch_size: int) -> int:
    return int(max(batch_size, min(10_000_000, n_steps * batch_size // 20)))


@dataclass(frozen=True)
class TrainConfig:
    """Options of the shared training loop (:func:`featurelens.models.fit`)."""

    lr: float
    batch_size: int
    n_steps: int
    dead_window: int
    log_every: int | None = None
    normalize: str = "none"
    random_state: int = 0

    @classmethod
    def resolve(
        cls,
        n_obs: int,
        *,
        default_lr: float,
        lr: float | None = None,
        batch_size: int | None = None,
        n_steps: int | None = None,
        normalize: str | None = "scale",
        dead_window: int | None = None,
        log_every: int | None = None,
        random_state: int = 0,
    ) -> TrainConfig:
        """Validate the options and fill in the defaults that depend on the number of cells."""
        if n_obs < 2:
            raise ValueError(f"Dictionary learning needs at least 2 observations, got {n_obs}.")
        lr = default_lr if lr is None else check_positive(lr, "lr")
        if batch_size is None:
            batch_size = _default_batch_size(n_obs)
        batch_size = min(check_positive_int(batch_size, "batch_size"), n_obs)
        n_steps = _default_n_steps(n_obs, batch_size) if n_steps is None else check_positive_int(n_steps, "n_steps")
        if dead_window is None:
            dead_window = _default_dead_window(n_steps, batch_size)
        else:
            dead_window = check_positive_int(dead_window, "dead_window")
        log_every = None if log_every is None else check_positive_int(log_every, "log_every")
        normalize = "none" if normalize is None else check_choice(normalize, "normalize", NORMALIZE_OPTIONS)
        return cls(
            lr=float(lr),
            batch_size=int(batch_size),
            n_steps=int(n_steps),
            dead_window=int(dead_window),
            log_every=log_every,
            normalize=normalize,
            random_state=check_int(random_state, "random_state"),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as recorded in ``uns[key]["params"]``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output (other keys are ignored)."""
        return _from(cls, d)
