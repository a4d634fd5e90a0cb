"""Per-layer output shapes, parameters and multiply-accumulates (MACs) of a model.

:func:`layer_table` runs one forward pass with a forward hook on every leaf module (a module
with no children: ``Conv2d``, ``Linear``, ``BatchNorm2d``, ``ReLU``, ``MaxPool2d`` ...) and
records one :class:`LayerRow` per call; :func:`format_table` prints it.

What counts as a MAC (one multiplication and one addition):

* ``Conv2d``: ``output elements * in_channels / groups * kh * kw``;
* ``Linear``: ``output elements * in_features`` (``out_features * in_features`` per sample);
* everything else counts 0: BatchNorm, ReLU, pooling, dropout, and the residual additions and
  ``torch.flatten`` calls that are not modules. They cost one or a few operations per element,
  not one per weight, and the biases are left out for the same reason.

This is the convention of torchvision's ``weights.meta["_ops"]`` (labelled GFLOPS in its docs,
but counting one per multiply-accumulate): ResNet-18 at 224x224 is 1.814 GMACs.

Taught in: chapters/03_vgg16.ipynb
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LayerRow", "LayerTable", "format_table", "layer_table"]


@dataclass(frozen=True)
class LayerRow:
    """One call of one leaf module during the forward pass.

    Attributes:
        name: dotted name of the module in the model, e.g. ``"layer1.0.conv1"``.
        kind: its class name, e.g. ``"Conv2d"``.
        output_shape: shape of its output tensor, batch dimension included.
        params: parameters the module owns; 0 on the second and later calls of a module used
            twice (ResNet's ``relu``), so that the column sums to the model's parameters.
        macs: multiply-accumulates of this call, for the whole batch (see the module docstring).
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class LayerTable:
    """The result of :func:`layer_table`: its rows, in call order, and their totals.

    Attributes:
        rows: one :class:`LayerRow` per leaf-module call.
        input_size: the input shape used, e.g. ``(1, 3, 224, 224)``.
        total_params: sum of ``row.params`` (parameters of the leaf modules that ran).
        total_macs: sum of ``row.macs``.
        kinds: class name of every module of the model by dotted name (``""`` is the model),
            used to label grouped rows.
    """

    rows: list[LayerRow]
    input_size: tuple[int, ...]
    total_params: int
    total_macs: int
    kinds: dict[str, str]


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * module.in_channels // module.groups * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


@torch.no_grad()
def layer_table(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 224, 224)) -> LayerTable:
    """Run ``model`` once on zeros of ``input_size`` and record every leaf module's call.

    The forward pass runs in eval mode (BatchNorm running statistics are not updated, dropout is
    off) and without gradients; the model's train/eval mode is restored afterwards. The input is
    float32 zeros on the device of the model's first parameter.

    Args:
        model: any ``nn.Module`` taking one tensor.
        input_size: shape of the input, batch dimension included. MACs are for the whole batch,
            so the default batch of 1 gives MACs per image.

    Returns:
        A :class:`LayerTable`; ``total_macs / 1e9`` is comparable to torchvision's
        ``meta["_ops"]`` and ``total_params`` to ``meta["num_params"]``.

    Taught in: chapters/03_vgg16.ipynb
    """
    rows: list[LayerRow] = []
    seen: set[nn.Module] = set()

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            params = 0 if module in seen else sum(p.numel() for p in module.parameters())
            seen.add(module)
            kind = type(module).__name__
            rows.append(LayerRow(name, kind, tuple(output.shape), params, _macs(module, output)))

        return hook

    leaves = [(n, m) for n, m in model.named_modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(record(n)) for n, m in leaves]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        model(torch.zeros(input_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return LayerTable(
        rows=rows,
        input_size=tuple(input_size),
        total_params=sum(r.params for r in rows),
        total_macs=sum(r.macs for r in rows),
        kinds={n: type(m).__name__ for n, m in model.named_modules()},
    )


def format_table(table: LayerTable, depth: int | None = None) -> str:
    """Format a :class:`LayerTable` as a fixed-width text table, one line per row, plus totals.

    Args:
        table: the output of :func:`layer_table`.
        depth: ``None`` prints every leaf call. An int merges consecutive rows whose names share
            the first ``depth`` dotted components: ``depth=1`` prints one line per top-level
            block of a ResNet (``conv1``, ..., ``layer1``, ..., ``fc``); ``depth=2`` one line per
            layer of a VGG's ``features``. A merged line shows the last output shape and the
            sums of parameters and MACs.

    Returns:
        The table as one string (``print`` it). MACs are shown in millions.

    Taught in: chapters/03_vgg16.ipynb
    """
    groups: list[tuple[str, str, tuple[int, ...], int, int]] = []
    for r in table.rows:
        name = r.name if depth is None else ".".join(r.name.split(".")[:depth])
        if groups and depth is not None and groups[-1][0] == name:
            _, kind, _, params, macs = groups[-1]
            groups[-1] = (name, kind, r.output_shape, params + r.params, macs + r.macs)
        else:
            groups.append((name, table.kinds[name], r.output_shape, r.params, r.macs))

    header = ("layer", "kind", "output shape", "params", "MMACs")
    lines = [
        (name, kind, " x ".join(map(str, shape)), f"{params:,}", f"{macs / 1e6:,.1f}")
        for name, kind, shape, params, macs in groups
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]

    def fmt(row: tuple[str, ...]) -> str:
        left = [row[i].ljust(widths[i]) for i in range(3)]
        right = [row[i].rjust(widths[i]) for i in range(3, 5)]
        return "  ".join(left + right)

    rule = "-" * len(fmt(header))
    size = " x ".join(map(str, table.input_size))
    total = (
        f"total: {table.total_params:,} parameters, {table.total_macs / 1e9:.3f} GMACs "
        f"for an input of {size}"
    )
    return "\n".join([fmt(header), rule, *map(fmt, lines), rule, total])
