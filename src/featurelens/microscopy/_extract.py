"""Embeddings of images from an intermediate layer of a torch model: :func:`extract_embeddings`."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._checks import check_choice, check_positive_int
from .._core import resolve_device
from ._embeddings import POOLING, UNS_KEY, _float_dtype, from_embeddings


class _ImageSource:
    """Uniform indexed access to images given as an array, a tensor or a dataset."""

    def __init__(self, images: Any):
        import torch

        self.labels: list | None = None
        if isinstance(images, torch.Tensor) or isinstance(images, np.ndarray):
            arr = images
            if isinstance(arr, np.ndarray) and not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
                raise TypeError(f"`images` must be numeric, got dtype {arr.dtype}.")
            if arr.ndim == 3:
                arr = arr[:, None]
            elif arr.ndim != 4:
                raise ValueError(
                    f"`images` must have shape (N, C, H, W) or (N, H, W), got shape {tuple(arr.shape)}. "
                    "For a single image use `images[None]`; move a channels-last axis first with "
                    "`np.moveaxis(images, -1, 1)`."
                )
            if arr.shape[0] == 0:
                raise ValueError("`images` is empty (0 images).")
            self.array = arr
            self.dataset = None
            self.n = int(arr.shape[0])
        elif hasattr(images, "__getitem__") and hasattr(images, "__len__") and not isinstance(images, str | Mapping):
            self.array = None
            self.dataset = images
            self.n = len(images)
            if self.n == 0:
                raise ValueError("`images` is empty (0 images).")
        else:
            raise TypeError(
                "`images` must be a numpy array or torch tensor (N, C, H, W) / (N, H, W), or a torch Dataset whose "
                f"items are image tensors or (image, label) pairs; got {type(images).__name__}."
            )

    @staticmethod
    def _to_tensor(x: Any, index: int):
        import torch

        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"Item {index} of `images` is a {type(x).__name__}; the dataset must return image tensors or arrays "
                "(or (image, label) pairs). Use `transform=` to convert."
            )
        return x

    def batch(self, start: int, stop: int, transform: Callable | None):
        import torch

        if self.array is not None:
            block = self.array[start:stop]
            x = torch.as_tensor(np.asarray(block)) if isinstance(block, np.ndarray) else block
            if not torch.is_floating_point(x):
                x = x.float()
            if transform is not None:
                x = torch.stack([transform(img) for img in x])
            return x, None
        images, labels = [], []
        for i in range(start, stop):
            item = self.dataset[i]
            label = None
            if isinstance(item, tuple | list):
                if len(item) == 0:
                    raise ValueError(f"Item {i} of `images` is an empty tuple.")
                item, label = item[0], (item[1] if len(item) > 1 else None)
            x = self._to_tensor(item, i)
            if not torch.is_floating_point(x):
                x = x.float()
            if x.ndim == 2:
                x = x[None]
            if transform is not None:
                x = transform(x)
            if x.ndim != 3:
                raise ValueError(
                    f"Item {i} of `images` has shape {tuple(x.shape)} after the transform; "
                    "expected (C, H, W) or (H, W)."
                )
            images.append(x)
            labels.append(label)
        try:
            x = torch.stack(images)
        except RuntimeError as err:
            shapes = sorted({tuple(t.shape) for t in images})[:3]
            raise ValueError(
                f"Images of one batch have different shapes ({shapes}); resize or crop them with `transform=`."
            ) from err
        return x, labels


def _plain_label(label: Any) -> Any:
    if label is None:
        return None
    if hasattr(label, "detach"):
        label = label.detach().cpu()
        return label.item() if label.numel() == 1 else None
    if isinstance(label, np.ndarray):
        return label.item() if label.size == 1 else None
    if isinstance(label, str | int | float | bool | np.generic):
        return label.item() if isinstance(label, np.generic) else label
    return None


def _layer_output(output: Any):
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"The hooked layer returned a {type(output).__name__}, not a tensor; choose a layer that outputs a tensor "
        "(or a tuple whose first element is the tensor)."
    )


def _unknown_layer_message(layer: str, names: list[str]) -> str:
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    shown = close or names[:10]
    more = "" if close or len(names) <= 10 else f" (and {len(names) - 10} more; see `dict(model.named_modules())`)"
    what = "Close matches" if close else "Valid names include"
    return f"`layer={layer!r}` is not a submodule of the model. {what}: {', '.join(map(repr, shown))}{more}."


def _resolve_layer(model: Any, layer: Any):
    """The submodule ``layer`` of ``model``, with clear errors for a wrong model, a non-string or an unknown name."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(layer, str):
        raise TypeError(f"`layer` must be the name of a submodule (a str), got {type(layer).__name__}.")
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(_unknown_layer_message(layer, [n for n in modules if n]))
    return modules[layer]


def _check_pool(pool: str, cls_token: bool) -> None:
    check_choice(pool, "pool", POOLING)
    if pool == "cls" and not cls_token:
        raise ValueError("`pool='cls'` uses the class token; pass `cls_token=True`.")


def _match_parameter_dtype(x, first_param):
    """``x`` in the float dtype of the model's first parameter (e.g. a half-precision model)."""
    import torch

    if first_param is not None and x.dtype != first_param.dtype and torch.is_floating_point(first_param):
        return x.to(first_param.dtype)
    return x


def _pool_tokens(out, kind: str, cls_token: bool, pool: str):
    """One vector per image from a batch of tokens (``(B, T, d)``): the class token or the mean of the patches."""
    patches = out[:, 1:] if (cls_token and kind == "tokens") else out
    return out[:, 0] if pool == "cls" else patches.double().mean(1)


class _LayerCapture:
    """Runs a model batch by batch with a forward hook on one layer and collects that layer's outputs.

    After :meth:`run`, ``outputs`` holds one numpy block per batch (tokens, or pooled vectors when
    tokens are not kept), ``labels`` the dataset labels, ``kind`` the layer output of the first batch
    (``"tokens"``, ``"feature_map"`` or ``"vector"``) and ``map_grid`` its feature-map grid.
    """

    def __init__(self, model, module, layer: str, *, cls_token: bool, pool: str, keep_tokens: bool, dtype: np.dtype):
        self.model = model
        self.module = module
        self.layer = layer
        self.cls_token = cls_token
        self.pool = pool
        self.keep_tokens = keep_tokens
        self.dtype = dtype
        self.outputs: list[np.ndarray] = []
        self.labels: list = []
        self.kind: str | None = None
        self.map_grid: tuple | None = None
        self._captured: list = []

    def _hook(self, _module, _inputs, output) -> None:
        self._captured.append(_layer_output(output))

    def run(self, source: _ImageSource, batch_size: int, transform: Callable | None, device, progress: bool) -> None:
        """Forward every batch in eval mode without gradients; restore the hook, device and mode afterwards."""
        import torch
        from tqdm.auto import tqdm

        model = self.model
        first_param = next(model.parameters(), None)
        orig_device = first_param.device if first_param is not None else None
        was_training = model.training
        handle = self.module.register_forward_hook(self._hook)
        try:
            model.to(device)
            model.eval()
            starts = range(0, source.n, batch_size)
            with torch.no_grad():
                for start in tqdm(starts, desc=f"embedding ({self.layer})", disable=not progress, leave=False):
                    stop = min(start + batch_size, source.n)
                    x, batch_labels = source.batch(start, stop, transform)
                    x = _match_parameter_dtype(x, first_param)
                    _check_channels(model, x)
                    self._add_batch(self._forward(x, device), stop - start)
                    if batch_labels is not None:
                        self.labels.extend(_plain_label(v) for v in batch_labels)
        finally:
            handle.remove()
            if orig_device is not None:
                model.to(orig_device)
            model.train(was_training)

    def _forward(self, x, device):
        """The hooked layer's output for one batch."""
        self._captured.clear()
        self.model(x.to(device))
        if not self._captured:
            raise RuntimeError(
                f"Layer {self.layer!r} was not called during the forward pass; choose a layer on the model's path."
            )
        return self._captured[0].detach()

    def _as_tokens(self, out, n_images: int):
        """``(kind, tokens, feature-map grid)`` of one batch's layer output; a feature map becomes row-major tokens."""
        if out.shape[0] != n_images:
            raise ValueError(
                f"Layer {self.layer!r} returned shape {tuple(out.shape)} for a batch of {n_images} images; the first "
                "axis must be the batch (for nn.TransformerEncoderLayer use batch_first=True)."
            )
        if out.ndim == 4:
            return "feature_map", out.flatten(2).transpose(1, 2), tuple(out.shape[2:])  # (B, H*W, C), row-major
        if out.ndim == 3:
            return "tokens", out, None
        if out.ndim == 2:
            return "vector", out, None
        raise ValueError(
            f"Layer {self.layer!r} returned shape {tuple(out.shape)}; expected (B, T, d) tokens, a (B, C, H, W) "
            "feature map or (B, d) vectors."
        )

    def _add_batch(self, out, n_images: int) -> None:
        this, out, fmap = self._as_tokens(out, n_images)
        if self.kind is None:
            self.kind = this
            if this == "feature_map":
                self.map_grid = fmap
        if this == "vector" or not self.keep_tokens:
            if this != "vector":
                out = _pool_tokens(out, this, self.cls_token, self.pool)
            self.outputs.append(out.float().cpu().numpy())
        else:
            self.outputs.append(out.cpu().numpy().astype(self.dtype, copy=False))

    def values(self) -> np.ndarray:
        """All batches as one array."""
        try:
            return np.concatenate(self.outputs, axis=0)
        except ValueError as err:
            raise ValueError(
                f"Layer {self.layer!r} returned outputs of different shapes for different batches; make all images "
                "the same size (e.g. with `transform=`)."
            ) from err

    def token_grid(self, grid: tuple[int, int] | None) -> tuple[int, int] | None:
        """The grid of the tokens: a feature map's own grid (checked against ``grid``), else ``grid``."""
        if self.kind != "feature_map":
            return grid
        if self.cls_token:
            raise ValueError(
                f"Layer {self.layer!r} returns a CNN feature map; it has no class token (cls_token=False)."
            )
        if grid is not None and tuple(grid) != self.map_grid:
            raise ValueError(f"`grid={tuple(grid)}` differs from the feature map's grid {self.map_grid}.")
        return self.map_grid


def _obs_with_labels(obs: pd.DataFrame | Mapping | None, labels: list) -> pd.DataFrame | dict | None:
    """A copy of ``obs`` with the dataset labels as ``"label"`` (unless ``obs`` has that column already)."""
    if obs is not None:
        obs = obs.copy() if isinstance(obs, pd.DataFrame) else dict(obs)
    if labels and any(v is not None for v in labels):
        if obs is None:
            obs = {"label": labels}
        elif "label" not in obs:
            obs["label"] = labels if isinstance(obs, dict) else pd.Series(labels, index=obs.index).to_numpy()
    return obs


def _assemble(capture: _LayerCapture, values: np.ndarray, obs, grid, *, use_rep: str) -> AnnData:
    """The AnnData of the collected embeddings (tokens or vectors), with the layer recorded in ``uns``."""
    kind, layer, cls_token = capture.kind, capture.layer, capture.cls_token
    if kind == "vector" or not capture.keep_tokens:
        if kind == "vector" and (cls_token or grid is not None):
            raise ValueError(f"Layer {layer!r} returns one vector per image; `cls_token`/`grid` do not apply.")
        adata = from_embeddings(values, obs, use_rep=use_rep)
    else:
        adata = from_embeddings(
            values, obs, grid=grid, cls_token=cls_token, pool=capture.pool, tokens_dtype=capture.dtype, use_rep=use_rep
        )
    adata.uns[UNS_KEY].update({"layer": layer, "model": type(capture.model).__name__, "layer_output": kind})
    return adata


def extract_embeddings(
    model: Any,
    images: Any,
    *,
    layer: str,
    batch_size: int = 64,
    device: Any = "auto",
    transform: Callable | None = None,
    cls_token: bool = False,
    grid: tuple[int, int] | None = None,
    pool: str = "mean",
    keep_tokens: bool = True,
    tokens_dtype: Any = "float32",
    use_rep: str = "X_emb",
    progress: bool = True,
    obs: pd.DataFrame | Mapping | None = None,
) -> AnnData:
    """Run images through a torch model and collect one layer's output as token embeddings.

    A forward hook on ``dict(model.named_modules())[layer]`` records that module's output for
    every batch (the model runs in ``eval`` mode under :func:`torch.no_grad`; the hook is removed
    and the model's device and train/eval mode are restored afterwards, also on errors). The
    output becomes tokens:

    - ``(B, T, d)`` (a ViT block, batch first): ``T`` tokens of ``d`` dimensions (the first is
      dropped from the grid when ``cls_token=True``);
    - ``(B, C, H, W)`` (a CNN feature map): ``H * W`` tokens of ``C`` dimensions in row-major
      order, grid ``(H, W)``;
    - ``(B, d)``: one vector per image, no tokens.

    The result is :func:`from_embeddings` of these tokens: the pooled embedding (mean of the
    patch tokens) in ``adata.obsm[use_rep]`` and the tokens in ``adata.obsm["X_tokens"]``.
    Nothing is downloaded; bring your own model.

    Parameters
    ----------
    model
        A :class:`torch.nn.Module`.
    images
        Numpy array or tensor ``(N, C, H, W)`` or ``(N, H, W)`` (a channel axis is added), or a
        torch ``Dataset`` (anything with ``__len__`` and ``__getitem__``) returning image tensors /
        arrays ``(C, H, W)`` or ``(H, W)``, or ``(image, label)`` pairs. Integer images are
        converted to float32 without rescaling; normalise them yourself or with ``transform``.
    layer
        Name of the submodule to hook, as in ``model.named_modules()`` (e.g. ``"blocks.11"``,
        ``"encoder.layers.1"``, ``"layer3"``).
    batch_size
        Images per forward pass.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or a :class:`torch.device`.
    transform
        Callable applied to every image tensor ``(C, H, W)`` before batching (e.g. a torchvision
        transform).
    cls_token
        Whether the first token of a ``(B, T, d)`` output is a class token.
    grid
        ``(h, w)`` of the patch tokens when they do not form a square (see :func:`from_embeddings`).
    pool
        ``"mean"`` or ``"cls"``; see :func:`from_embeddings`.
    keep_tokens
        Store the tokens (``False``: only the pooled embedding, for large image sets).
    tokens_dtype
        Float dtype of the stored tokens.
    use_rep
        Key of the pooled embedding in ``adata.obsm``.
    progress
        Show a progress bar.
    obs
        Metadata, one row per image (see :func:`from_embeddings`). Labels returned by a dataset
        are added as ``obs["label"]`` unless ``obs`` already has that column.

    Returns
    -------
    A new :class:`anndata.AnnData`, one row per image, as from :func:`from_embeddings`.

    Sets the following fields (on the returned object):

    ``obsm[use_rep]``, ``obsm["X_tokens"]``, ``uns["microscopy"]``
        As in :func:`from_embeddings`; ``uns["microscopy"]`` also records ``"layer"``,
        ``"model"`` (class name) and ``"layer_output"`` (``"tokens"``, ``"feature_map"`` or
        ``"vector"``).
    ``obs["label"]``
        Labels from an ``(image, label)`` dataset, when there were any.

    Examples
    --------
    >>> import torch, featurelens as fl
    >>> image, _ = fl.datasets.nuclei_image()
    >>> crops = torch.tensor(image.reshape(8, 64, 8, 64).swapaxes(1, 2).reshape(-1, 1, 64, 64) / image.max()).float()
    >>> cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(8))
    >>> adata = fl.microscopy.extract_embeddings(cnn, crops, layer="2", progress=False)
    >>> adata.obsm["X_tokens"].shape, adata.uns["microscopy"]["grid"].tolist()
    ((64, 64, 8), [8, 8])
    """
    module = _resolve_layer(model, layer)
    batch_size = check_positive_int(batch_size, "batch_size")
    if transform is not None and not callable(transform):
        raise TypeError(f"`transform` must be callable, got {type(transform).__name__}.")
    source = _ImageSource(images)
    if obs is not None and not isinstance(obs, pd.DataFrame | Mapping):
        raise TypeError(f"`obs` must be a pandas DataFrame, a dict of columns or None, got {type(obs).__name__}.")
    _check_pool(pool, cls_token)
    dt = _float_dtype(tokens_dtype)
    dev = resolve_device(device)

    capture = _LayerCapture(model, module, layer, cls_token=cls_token, pool=pool, keep_tokens=keep_tokens, dtype=dt)
    capture.run(source, batch_size, transform, dev, progress)
    values = capture.values()
    grid = capture.token_grid(grid)
    obs = _obs_with_labels(obs, capture.labels)
    return _assemble(capture, values, obs, grid, use_rep=use_rep)


def _check_channels(model, x) -> None:
    """Clear error when the images' channel count differs from the model's first convolution."""
    from torch import nn

    first = next((m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)), None)
    if first is None or x.ndim != 4:
        return
    if x.shape[1] != first.in_channels:
        raise ValueError(
            f"The images have {x.shape[1]} channel(s) (shape {tuple(x.shape)}) but the model's first convolution "
            f"expects {first.in_channels}. Pass images of shape (N, {first.in_channels}, H, W), or a `transform=` "
            "that selects or stacks channels."
        )
