"""Figures: image grids, and widget explorers that redraw a figure.

Taught in: chapters/01_imagenet.ipynb, chapters/02_cross_entropy.ipynb.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

__all__ = ["figure_explorer", "image_grid"]


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
