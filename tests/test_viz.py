"""Figures: image_grid lays out images, titles and caption without overlaps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

import torch

from imagenet_book.viz import colorize_mask, image_grid, overlay_mask


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


def test_figure_explorer_redraws_when_a_control_changes():
    import ipywidgets as widgets

    from imagenet_book.viz import figure_explorer

    calls = []

    def draw(height, label):
        calls.append((height, label))
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.bar([0], [height])
        ax.set_title(label)
        return fig

    slider, text = widgets.FloatSlider(value=1.0, min=0.0, max=5.0), widgets.Text(value="a")
    box = figure_explorer(draw, height=slider, label=text)
    controls, image = box.children
    assert list(controls.children) == [slider, text] and slider.description == "height"
    first = bytes(image.value)
    assert first.startswith(b"\x89PNG") and calls == [(1.0, "a")]
    slider.value = 4.0
    assert calls[-1] == (4.0, "a") and bytes(image.value) != first
    text.value = "b"
    assert calls[-1] == (4.0, "b")


def test_masks_are_drawn_in_voc_colours_over_the_image():
    mask = torch.zeros(4, 5, dtype=torch.long)
    mask[1, 1], mask[2, 2] = 1, 255
    colours = colorize_mask(mask)
    assert colours.shape == (4, 5, 3) and colours.dtype == np.uint8
    assert colours[1, 1].tolist() == [128, 0, 0] and colours[2, 2].tolist() == [224, 224, 192]
    image = torch.full((3, 4, 5), 100, dtype=torch.uint8)
    shown = overlay_mask(image, mask, alpha=0.5)
    assert shown.shape == (4, 5, 3) and shown[0, 0].tolist() == [100, 100, 100]  # background kept
    assert shown[1, 1].tolist() == [114, 50, 50]
    with pytest.raises(ValueError, match="differ in size"):
        overlay_mask(image, torch.zeros(3, 3, dtype=torch.long))
    assert np.array_equal(overlay_mask(image.permute(1, 2, 0).numpy(), mask.numpy(), alpha=0.5), shown)
