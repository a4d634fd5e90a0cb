"""Figures: image_grid lays out images, titles and caption without overlaps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from imagenet_book.viz import image_grid


@pytest.mark.parametrize("lines", [1, 2, 3])
def test_titles_never_run_into_the_row_above(lines):
    titles = ["\n".join(f"line {k} of image {i}" for k in range(lines)) for i in range(8)]
    fig = image_grid([np.zeros((32, 32, 3), np.uint8)] * 8, titles, ncols=4, caption="a caption")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    for above, below in zip(axes[:4], axes[4:]):
        assert below.title.get_window_extent(renderer).y1 <= above.get_window_extent(renderer).y0
    caption = fig._supxlabel.get_window_extent(renderer)
    assert all(caption.y1 <= ax.get_window_extent(renderer).y0 for ax in axes[4:])


def test_titles_must_match_images():
    with pytest.raises(ValueError, match="2 images but 1 titles"):
        image_grid([np.zeros((8, 8, 3), np.uint8)] * 2, ["one"])
