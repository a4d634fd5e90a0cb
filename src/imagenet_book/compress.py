"""Compression: magnitude and channel pruning with ``torch.nn.utils.prune``, and int8 quantization.

**Pruning** sets weights to zero. ``torch.nn.utils.prune`` does it with a mask: the module keeps
``weight_orig`` and a ``weight_mask`` buffer and computes ``weight = weight_orig * weight_mask``
before every forward pass.

* :func:`prune_magnitude`: unstructured, global: the ``amount`` fraction of all convolution and
  linear weights with the smallest absolute values, wherever they are
  (``prune.global_unstructured`` with ``L1Unstructured``). Zeros scattered through dense
  tensors: the model is as large and as slow as before unless stored or run in a sparse format.
* :func:`prune_channels`: structured: in every residual block, the ``amount`` fraction of the
  inner convolutions' output channels with the smallest L2 norm (``prune.ln_structured``), and
  the same channels of the BatchNorm that follows (its scale and shift, with
  ``prune.custom_from_mask``), so that those channels output exactly 0. Whole channels can then
  be cut out of the tensors (:func:`remove_pruned_channels`): a smaller, faster dense model that
  computes the same function.
* :func:`make_permanent`: ``prune.remove`` on every pruned tensor: the zeros become part of the
  plain ``weight`` and the masks go away.
* :func:`sparsity`: the fraction of zero weights, per layer and overall.

**Quantization** stores weights and computes with 8-bit integers. :func:`quantize_int8` does
post-training static quantization with PyTorch's FX graph mode (``torch.ao.quantization``:
``prepare_fx`` inserts observers, a few calibration batches record activation ranges,
``convert_fx`` replaces convolutions and linear layers by int8 kernels (fbgemm/x86, or qnnpack on
ARM), with BatchNorm folded into the convolutions first). Why this tool: it ships with torch (the
book adds no dependency), it produces a model that really runs int8 kernels on a CPU (so its size
and latency can be measured, not estimated), and it handles a ResNet's residual additions
without changing the model's code. ``torch.ao.quantization`` is deprecated in favour of the
separate ``torchao`` package (PT2E quantization through ``torch.export``); it still works in torch
2.14, and its deprecation warnings are silenced inside :func:`quantize_int8` only.
``torch.ao.quantization.quantize_dynamic`` would quantize only ``Linear`` layers: for a CNN that
is the last layer, almost nothing.

Sizes are measured as the bytes of ``torch.save(model.state_dict())`` (:func:`size_on_disk`).

Taught in: chapters/10_practice.ipynb.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

__all__ = ["Sparsity", "block_channel_groups", "make_permanent", "prunable", "prune_channels",
           "prune_magnitude", "quantize_int8", "remove_pruned_channels", "size_on_disk", "sparsity"]


def prunable(net: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` for every ``Conv2d`` and ``Linear`` of ``net``, in module order.

    Taught in: chapters/10_practice.ipynb.
    """
    return [(m, "weight") for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _check_amount(amount: float) -> None:
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount is the fraction of weights to prune, in [0, 1); got {amount!r}.")


def prune_magnitude(net: nn.Module, amount: float) -> nn.Module:
    """Global unstructured magnitude pruning of all convolution and linear weights, in place.

    The ``amount`` fraction of the weights (of all those layers together) with the smallest
    ``|w|`` become 0 through masks (see the module docstring). Applied again, it prunes
    ``amount`` of the weights that are left.

    Args:
        net: the network.
        amount: fraction in ``[0, 1)``.

    Returns:
        ``net``, with masks on every ``Conv2d``/``Linear`` weight.

    Taught in: chapters/10_practice.ipynb.
    """
    _check_amount(amount)
    prune.global_unstructured(prunable(net), pruning_method=prune.L1Unstructured, amount=amount)
    return net


def block_channel_groups(net: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d, nn.Conv2d]]:
    """``(conv, bn, next_conv)`` for every inner convolution of every residual block.

    In a ``BasicBlock`` that is ``(conv1, bn1, conv2)``; in a ``Bottleneck``, ``(conv1, bn1,
    conv2)`` and ``(conv2, bn2, conv3)``. The output channels of these convolutions feed only the
    next convolution of the same block, so they can be removed without touching the residual
    path (whose channel count the shortcut fixes). Works for the book's ResNets and torchvision's
    (any module with ``conv1``/``bn1``/``conv2``/``bn2`` attributes, and ``conv3`` for bottlenecks).

    Taught in: chapters/10_practice.ipynb.
    """
    groups = []
    for m in net.modules():
        if all(isinstance(getattr(m, a, None), nn.Conv2d) for a in ("conv1", "conv2")) and \
                isinstance(getattr(m, "bn1", None), nn.BatchNorm2d):
            groups.append((m.conv1, m.bn1, m.conv2))
            if isinstance(getattr(m, "conv3", None), nn.Conv2d) and isinstance(getattr(m, "bn2", None), nn.BatchNorm2d):
                groups.append((m.conv2, m.bn2, m.conv3))
    return groups


def prune_channels(net: nn.Module, amount: float) -> nn.Module:
    """Structured pruning, in place: in each residual block's inner convolutions, the ``amount``
    fraction of output channels with the smallest L2 norm, and the same channels of the
    BatchNorm after it (scale and shift), so those channels output exactly 0.

    Args:
        net: a ResNet (see :func:`block_channel_groups`).
        amount: fraction of each inner convolution's output channels, in ``[0, 1)``.

    Returns:
        ``net``, with masks (:func:`make_permanent` bakes them in,
        :func:`remove_pruned_channels` then cuts the channels out).

    Raises:
        ValueError: ``net`` has no residual blocks to prune.

    Taught in: chapters/10_practice.ipynb.
    """
    _check_amount(amount)
    groups = block_channel_groups(net)
    if not groups:
        raise ValueError(f"prune_channels found no residual blocks (conv1/bn1/conv2) in a "
                         f"{type(net).__name__}: use prune_magnitude, or a ResNet.")
    for conv, bn, _ in groups:
        prune.ln_structured(conv, "weight", amount=amount, n=2, dim=0)
        keep = conv.weight_mask.flatten(1).amax(dim=1)  # (out_channels,): 1 kept, 0 pruned
        for name in ("weight", "bias"):
            prune.custom_from_mask(bn, name, mask=keep.clone())
    return net


def make_permanent(net: nn.Module) -> nn.Module:
    """``prune.remove`` every pruned tensor of ``net``, in place: the zeros stay in the plain
    parameter, ``*_orig`` and ``*_mask`` go away (a smaller ``state_dict``, no mask to apply).

    Taught in: chapters/10_practice.ipynb.
    """
    for m in net.modules():
        for name in [k[:-5] for k, _ in list(m.named_buffers(recurse=False)) if k.endswith("_mask")]:
            prune.remove(m, name)
    return net


@dataclass(frozen=True)
class Sparsity:
    """Zero weights of the convolution and linear layers.

    Attributes:
        zeros: number of zero weights; total: number of weights.
        per_layer: ``{module name: fraction of zeros}``.

    Taught in: chapters/10_practice.ipynb.
    """

    zeros: int
    total: int
    per_layer: dict[str, float]

    @property
    def fraction(self) -> float:
        """``zeros / total``."""
        return self.zeros / self.total if self.total else 0.0


def sparsity(net: nn.Module) -> Sparsity:
    """Count the zero weights of every ``Conv2d`` and ``Linear`` (masked or not).

    Taught in: chapters/10_practice.ipynb.
    """
    zeros = total = 0
    per_layer = {}
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach()
            z = int((w == 0).sum())
            zeros, total = zeros + z, total + w.numel()
            per_layer[name] = z / w.numel()
    return Sparsity(zeros, total, per_layer)


def _copy(net: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on a network with pruning masks attached.

    A masked module holds ``weight = weight_orig * weight_mask`` as a plain attribute computed
    with autograd (not a leaf tensor), which ``deepcopy`` refuses; the same values, detached,
    are put there first (the pruning hook recomputes them before every forward pass anyway).
    """
    with torch.no_grad():
        for m in net.modules():
            for key, mask in list(m.named_buffers(recurse=False)):
                if key.endswith("_mask"):
                    name = key[:-5]
                    setattr(m, name, (getattr(m, name + "_orig") * mask).detach())
    return copy.deepcopy(net)


@torch.no_grad()
def remove_pruned_channels(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with the channels that :func:`prune_channels` zeroed cut out.

    For each ``(conv, bn, next_conv)`` of :func:`block_channel_groups`, a channel is removed
    when its filter, its BatchNorm scale and its BatchNorm shift are all 0: it then outputs 0
    after the ReLU, so removing it (and the matching input channel of ``next_conv``) leaves the
    network's function unchanged (up to float rounding). ``conv`` and ``bn`` get fewer output
    channels, ``next_conv`` fewer input channels: a smaller dense model. At least one channel is
    kept in every layer.

    Args:
        net: a ResNet after :func:`prune_channels` (masks may still be attached: the copy is
            made permanent first; ``net`` itself is not modified).

    Returns:
        The smaller network (same class, modules replaced).

    Taught in: chapters/10_practice.ipynb.
    """
    slim = make_permanent(_copy(net))
    for conv, bn, nxt in block_channel_groups(slim):
        if conv.groups != 1 or nxt.groups != 1:
            continue
        dead = (conv.weight.flatten(1).abs().amax(1) == 0) & (bn.weight == 0) & (bn.bias == 0)
        keep = (~dead).nonzero().flatten()
        if len(keep) == 0:
            keep = torch.tensor([0])
        if len(keep) == conv.out_channels:
            continue
        _shrink(conv, keep, dim=0)
        conv.out_channels = len(keep)
        bn.weight = nn.Parameter(bn.weight[keep].clone())
        bn.bias = nn.Parameter(bn.bias[keep].clone())
        bn.running_mean = bn.running_mean[keep].clone()  # a buffer: assignment replaces it
        bn.running_var = bn.running_var[keep].clone()
        bn.num_features = len(keep)
        _shrink(nxt, keep, dim=1)
        nxt.in_channels = len(keep)
    return slim


def _shrink(conv: nn.Conv2d, keep: Tensor, dim: int) -> None:
    conv.weight = nn.Parameter(conv.weight.index_select(dim, keep).clone())
    if dim == 0 and conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias[keep].clone())


def size_on_disk(net: nn.Module) -> int:
    """Bytes of ``torch.save(net.state_dict())`` (what a checkpoint of the weights takes).

    Taught in: chapters/10_practice.ipynb.
    """
    buffer = io.BytesIO()
    with _quiet_quantization():  # saving int8 modules creates quantized tensors: a warning each time
        torch.save(net.state_dict(), buffer)
    return buffer.tell()


@contextlib.contextmanager
def _quiet_quantization() -> Iterator[None]:
    """Silence ``torch.ao.quantization``'s warnings about its own deprecation (see the module
    docstring) and about an observer argument and a tensor type its default path still uses."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
        yield


def quantize_int8(net: nn.Module, calibration: Iterable, *, batches: int = 4,
                  backend: str | None = None) -> nn.Module:
    """Post-training static int8 quantization (FX graph mode) of a float CNN, for the CPU.

    Steps: a CPU, eval-mode copy of ``net`` is traced (``prepare_fx`` with the backend's default
    ``QConfigMapping``: per-channel int8 weights, uint8 activations with observed ranges,
    BatchNorm folded into convolutions); ``batches`` batches of ``calibration`` run through it
    to record activation ranges; ``convert_fx`` swaps in int8 modules.

    Args:
        net: float32 ``(B, 3, H, W)`` -> ``(B, C)`` (not modified).
        calibration: batches ``(X, y)`` or tensors ``X`` like the ones the model will see
            (e.g. training images; their labels are not used).
        batches: how many calibration batches.
        backend: ``"x86"`` (Intel/AMD; default on x86 machines), ``"fbgemm"`` or ``"qnnpack"``
            (ARM; default elsewhere). Must be in ``torch.backends.quantized.supported_engines``.

    Returns:
        The quantized ``torch.fx.GraphModule``: float32 in, float32 out, int8 inside; runs on
        the CPU only.

    Raises:
        ValueError: an unsupported backend, ``batches < 1``, or an empty ``calibration``.

    Taught in: chapters/10_practice.ipynb.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engines = torch.backends.quantized.supported_engines
    if backend is None:
        backend = "x86" if "x86" in engines else ("qnnpack" if "qnnpack" in engines else engines[0])
    if backend not in engines:
        raise ValueError(f"Quantization backend {backend!r} is not supported by this torch build; "
                         f"supported: {engines}.")
    if batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches}.")
    torch.backends.quantized.engine = backend
    model = make_permanent(_copy(net)).cpu().eval()  # masks baked in: FX fuses conv + bn
    seen = 0
    with _quiet_quantization():
        prepared = None
        with torch.no_grad():
            for batch in calibration:
                X = batch[0] if isinstance(batch, (tuple, list)) else batch
                X = X.detach().float().cpu()
                if prepared is None:
                    prepared = prepare_fx(model, get_default_qconfig_mapping(backend), example_inputs=(X,))
                prepared(X)
                seen += 1
                if seen >= batches:
                    break
        if prepared is None:
            raise ValueError("quantize_int8 got an empty calibration set: give batches of images.")
        return convert_fx(prepared)
