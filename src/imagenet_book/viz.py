"""Figures: image grids, segmentation masks in VOC's colours, and widget explorers that redraw a
figure.

Taught in: chapters/01_imagenet.ipynb, chapters/02_cross_entropy.ipynb,
chapters/09_segmentation_voc.ipynb.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from . import results
from .data.voc_classes import voc_palette

__all__ = ["ablation_plot", "colorize_mask", "data_efficiency_plot", "figure_explorer", "filters_figure",
           "image_grid", "overlay_mask", "result_bars", "stage_probe_plot"]


def _as_array(image) -> np.ndarray:
    """PIL image, path, uint8 HWC array or float CHW tensor in [0, 1] -> uint8/float HWC array."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return np.asarray(im.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # CHW tensor -> HWC
    return array.clip(0, 1) if array.dtype.kind == "f" else array


def image_grid(images: Sequence, titles: Sequence[str] | None = None, *, ncols: int = 8,
               size: float = 1.6, caption: str | None = None) -> plt.Figure:
    """Show images in a grid, each with an optional title, and the figure with a caption.

    Args:
        images: PIL images, file paths, uint8 ``(H, W, 3)`` arrays or float ``(3, H, W)`` tensors
            with values in [0, 1].
        titles: one short title per image.
        ncols: images per row.
        size: inches per image.
        caption: figure caption, for example which data the images come from.

    Returns:
        The matplotlib figure.

    Taught in: chapters/01_imagenet.ipynb.
    """
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(images)} images but {len(titles)} titles")
    ncols = max(1, min(ncols, len(images)))
    nrows = max(1, math.ceil(len(images) / ncols))
    # Room for the titles: about 0.15 inch per line at 8 pt, so two-line titles do not run into
    # the row above.
    title_lines = max((str(t).count("\n") + 1 for t in titles), default=0) if titles is not None else 0
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                             figsize=(size * ncols, (size + 0.15 * title_lines) * nrows + 0.4))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(_as_array(images[i]))
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    if caption:
        fig.supxlabel(caption, fontsize=9)  # below the grid; constrained layout makes room for it
    return fig


def _numpy(values) -> np.ndarray:
    """A torch tensor (on any device) or array-like -> NumPy array."""
    return np.asarray(values.cpu() if hasattr(values, "cpu") else values)


def colorize_mask(mask) -> np.ndarray:
    """A label mask in VOC's colours.

    Args:
        mask: int ``(H, W)`` tensor or array: 0 background, ``k + 1`` for ``VOC_CLASSES[k]``,
            255 void.

    Returns:
        uint8 ``(H, W, 3)``: VOC's palette (background black, void cream).

    Taught in: chapters/09_segmentation_voc.ipynb
    """
    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    values = _numpy(mask).astype(np.int64)
    if values.ndim != 2 or values.min(initial=0) < 0 or values.max(initial=0) > 255:
        raise ValueError(f"mask must be (H, W) with values 0..255, got shape {values.shape}")
    return palette[values]


def overlay_mask(image, mask, alpha: float = 0.55) -> np.ndarray:
    """Draw a mask over an image: ``(1 - alpha) * image + alpha * colour`` where the mask is not
    background (0); background pixels keep the image.

    Args:
        image: uint8 ``(3, H, W)`` tensor or ``(H, W, 3)`` array.
        mask: int ``(H, W)`` (see :func:`colorize_mask`).
        alpha: opacity of the colours.

    Returns:
        uint8 ``(H, W, 3)``, ready for ``plt.imshow`` or :func:`image_grid`.

    Taught in: chapters/09_segmentation_voc.ipynb
    """
    pixels = _numpy(image)
    if pixels.ndim == 3 and pixels.shape[0] == 3 and pixels.shape[-1] != 3:
        pixels = pixels.transpose(1, 2, 0)
    colours = colorize_mask(mask)
    if pixels.shape[:2] != colours.shape[:2]:
        raise ValueError(f"image {pixels.shape[:2]} and mask {colours.shape[:2]} differ in size")
    blend = (1 - alpha) * pixels.astype(np.float32) + alpha * colours.astype(np.float32)
    shown = _numpy(mask) != 0
    out = pixels.astype(np.float32).copy()
    out[shown] = blend[shown]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def figure_explorer(draw: Callable[..., plt.Figure], **controls):
    """Widgets that redraw a figure: ``draw(**values)`` returns a matplotlib figure, shown as a PNG.

    The figure goes into an ``Image`` widget rather than the ``Output`` widget that
    ``ipywidgets.interact`` uses: the book is built by executing every notebook unattended, and
    output captured by an ``Output`` widget can stall that execution (see tests/test_website.py).

    Args:
        draw: called with one keyword argument per control, each the control's current value.
        controls: ipywidgets value widgets (sliders, dropdowns, checkboxes), named like the
            arguments of ``draw``; a control without a description gets its name.

    Returns:
        An ``ipywidgets.VBox``: the controls in a wrapping row, then the figure. Changing any
        control redraws it.

    Taught in: chapters/02_cross_entropy.ipynb.
    """
    import ipywidgets as widgets

    image = widgets.Image(format="png")

    def redraw(change=None) -> None:
        fig = draw(**{name: control.value for name, control in controls.items()})
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=80, bbox_inches="tight")
        plt.close(fig)
        image.value = png.getvalue()

    for name, control in controls.items():
        control.description = control.description or name
        control.style.description_width = "initial"  # show whole names
        control.observe(redraw, names="value")
    redraw()
    row = widgets.Layout(flex_flow="row wrap")
    return widgets.VBox([widgets.HBox(list(controls.values()), layout=row), image])


# ------------------------------------------------------------------------------- recorded results


def _provenance_title(fig: plt.Figure, result: dict) -> None:

    fig.suptitle(textwrap.fill(results.provenance(result), 110), fontsize=7)


def result_bars(result: dict) -> plt.Figure:
    """One bar per run of a recorded result (:mod:`imagenet_book.results`), its provenance above.

    Taught in: chapters/07_finetune_voc_classification.ipynb.
    """
    rows = [r for r in result["rows"] if r.get("seed", 0) == 0]
    metric = results.METRICS.get(rows[0]["metric"], rows[0]["metric"])
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.2), layout="constrained")
    ax.barh([r["run"] for r in rows][::-1], [r["value"] for r in rows][::-1], color="tab:blue")
    for i, r in enumerate(rows[::-1]):
        ax.text(r["value"], i, f" {r['value']:.3f}", va="center", fontsize=8)
    ax.set(xlabel=f"{metric} on the evaluation images", xlim=(0, 1))
    _provenance_title(fig, result)
    return fig


def ablation_plot(result: dict, target: float | None = None) -> plt.Figure:
    """A recorded ablation (``fast-recipe``): top-1 after each rung of the ladder (a line, each
    lever added on top of the ones above it), the side levers as separate points beside the last
    rung, and a dashed ``target`` line if given.

    Taught in: chapters/A2_fast_recipe.ipynb.
    """
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.4), layout="constrained")
    y = np.arange(len(rows))[::-1]
    ladder = [i for i, r in enumerate(rows) if r["carried"]]
    ax.plot([100 * rows[i]["value"] for i in ladder], y[ladder], "o-", color="tab:blue", label="ladder (cumulative)")
    side = [i for i, r in enumerate(rows) if not r["carried"]]
    if side:
        ax.plot([100 * rows[i]["value"] for i in side], y[side], "s", color="tab:orange",
                label="side lever (instead of a choice of the ladder's last rung)")
        ax.axvline(100 * rows[ladder[-1]]["value"], color="tab:blue", lw=0.8, ls=":")
    for yi, r in zip(y, rows):
        ax.text(100 * r["value"], yi, f"  {100 * r['value']:.1f}", va="center", fontsize=8)
    if target is not None:
        ax.axvline(100 * target, color="gray", ls="--", lw=1, label=f"target {100 * target:.1f}%")
    ax.set_yticks(y, [r["run"] for r in rows])
    ax.set(xlabel=f"top-1 (%) on the whole val split, {rows[0]['epochs']} epochs at {rows[0]['img_size']} px")
    ax.legend(fontsize=7, loc="upper right")
    _provenance_title(fig, result)
    return fig


def data_efficiency_plot(result: dict) -> plt.Figure:
    """A recorded data-efficiency curve: the metric against the number of labelled training
    images, one line per run (the mean over seeds, the band from the lowest to the highest seed).

    Taught in: chapters/07_finetune_voc_classification.ipynb.
    """
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    for run, points in results.by_size(result).items():
        n = list(points)
        line, = ax.plot(n, [points[k][0] for k in n], "o-", label=f"{run} ({points[n[0]][3]} seeds)")
        ax.fill_between(n, [points[k][1] for k in n], [points[k][2] for k in n], color=line.get_color(), alpha=0.2)
    metric = results.METRICS.get(result["rows"][0]["metric"], result["rows"][0]["metric"])
    ax.set(xscale="log", xlabel="labelled training images", ylabel=f"{metric} on the evaluation images")
    ax.set_xticks(sorted({r["n_train"] for r in result["rows"]}),
                  labels=[str(k) for k in sorted({r["n_train"] for r in result["rows"]})])
    ax.minorticks_off()  # the log axis's minor labels (3x10^1, ...) would crowd the sizes
    ax.legend()
    _provenance_title(fig, result)
    return fig


def stage_probe_plot(result: dict) -> plt.Figure:
    """The ``backbone-stages`` result: a linear probe's metric on each stage's features, one line
    per backbone.

    Taught in: chapters/06_pretraining.ipynb.
    """
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for who in dict.fromkeys(r["backbone"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["backbone"] == who]
        ax.plot([r["layer"] for r in rows], [r["value"] for r in rows], "o-", label=f"{who} ({rows[0]['arch']})")
    metric = results.METRICS.get(result["rows"][0]["metric"], result["rows"][0]["metric"])
    ax.set(xlabel="features of stage", ylabel=f"linear probe's {metric}")
    ax.legend()
    _provenance_title(fig, result)
    return fig


def filters_figure(result: dict, ncols: int = 16) -> plt.Figure:
    """The first-layer filters a ``backbone-stages`` result holds, one block per backbone, each
    filter scaled to its own range.

    Taught in: chapters/06_pretraining.ipynb.
    """
    packed = result["extra"]["filters"]
    stacks = {who: results.unpack_uint8(record) for who, record in packed.items()}
    rows = {who: math.ceil(len(f) / ncols) for who, f in stacks.items()}
    fig, axes = plt.subplots(sum(rows.values()), ncols, figsize=(ncols * 0.45, sum(rows.values()) * 0.5 + 1.4),
                             squeeze=False)
    r0 = 0
    for who, stack in stacks.items():
        for i in range(rows[who] * ncols):
            ax = axes[r0 + i // ncols, i % ncols]
            ax.axis("off")
            if i < len(stack):
                ax.imshow(stack[i], interpolation="nearest")
        k, h, w, _ = stack.shape
        axes[r0, 0].set_title(f"{who} ({packed[who]['arch']}): {k} filters of {h}x{w}", fontsize=8, loc="left")
        r0 += rows[who]
    _provenance_title(fig, result)
    return fig
