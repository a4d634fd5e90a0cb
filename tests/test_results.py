"""Recorded reference runs (``imagenet_book.results``): the files chapters render."""

from __future__ import annotations

import json

import pytest

from imagenet_book import results

ROWS = [{"run": "scratch", "metric": "map", "value": 0.173, "seed": 0},
        {"run": "imagenet1k-probe", "metric": "map", "value": 0.386, "n_train": 417}]
DATA = {"name": "real photos in VOC format (COCO + Penn-Fudan)", "real": True, "train": 417, "val": 137}


def _write(tmp_path, **over):
    kw = dict(chapter="chapters/07_finetune_voc_classification.ipynb", command="make reference",
              commit="0123456789abcdef", device="CPU (2 cores)", data=DATA, rows=ROWS, wall_s=61.04,
              folder=tmp_path, day="2026-12-03")
    return results.write_result("voc-multilabel", **{**kw, **over})


def test_a_written_result_reads_back_with_its_provenance(tmp_path):
    path = _write(tmp_path)
    assert path == tmp_path / "voc-multilabel.json" and not list(tmp_path.glob(".*tmp*"))
    got = results.read_result("voc-multilabel", tmp_path)
    assert got["rows"] == ROWS and got["wall_s"] == 61.0 and got["date"] == "2026-12-03"
    line = results.provenance(got)
    assert "real photos in VOC format (COCO + Penn-Fudan)" in line and "417 train / 137 val" in line
    assert "CPU (2 cores)" in line and "make reference" in line and "0123456789" in line
    table = results.result_table(got)
    assert "| imagenet1k-probe | mAP | 0.386 |" in table and table.endswith(line)
    two = _write(tmp_path, commit="0123456789abcdef, fedcba9876543210")
    several = results.read_result("voc-multilabel", two.parent)
    assert "at commits 0123456789, fedcba9876." in results.provenance(several)


def test_machine_paths_and_malformed_results_are_refused(tmp_path):
    with pytest.raises(results.ResultError, match="machine path"):
        _write(tmp_path, data={**DATA, "name": "/work/shared/data/vocstyle"})
    with pytest.raises(results.ResultError, match="value is not a number"):
        _write(tmp_path, rows=[{"run": "scratch", "metric": "map", "value": "0.1"}])
    with pytest.raises(results.ResultError, match="non-empty"):
        _write(tmp_path, rows=[])
    assert not list(tmp_path.iterdir())  # nothing half-written
    (tmp_path / "broken.json").write_text(json.dumps({"name": "broken"}))
    with pytest.raises(results.ResultError, match="broken.json.*missing"):
        results.read_result("broken", tmp_path)
    assert results.read_result("absent", tmp_path) is None


def test_the_folder_is_the_repository_s_book_results(tmp_path, monkeypatch):
    (tmp_path / "book").mkdir()
    (tmp_path / "_toc.yml").write_text("root: book/intro\n")
    (tmp_path / "chapters").mkdir()
    monkeypatch.delenv(results.ENV_RESULTS, raising=False)
    monkeypatch.chdir(tmp_path / "chapters")  # where a chapter's kernel runs
    assert results.results_folder() == tmp_path / "book" / "results"
    monkeypatch.setenv(results.ENV_RESULTS, str(tmp_path / "elsewhere"))
    assert results.results_folder() == tmp_path / "elsewhere"


def test_packed_arrays_survive_the_file_and_damaged_ones_are_named(tmp_path):
    import numpy as np

    filters = np.arange(2 * 3 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 3)
    _write(tmp_path, extra={"filters": {"random": results.pack_uint8(filters)}})
    got = results.read_result("voc-multilabel", tmp_path)
    assert np.array_equal(results.unpack_uint8(got["extra"]["filters"]["random"]), filters)
    with pytest.raises(results.ResultError, match="uint8"):
        results.pack_uint8(filters.astype(np.float32))
    with pytest.raises(results.ResultError, match="pack_uint8 writes them"):
        results.unpack_uint8({"shape": [2, 3, 3, 4], "uint8_b64": got["extra"]["filters"]["random"]["uint8_b64"]})


def test_recorded_results_draw_as_the_chapters_show_them(tmp_path):
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from imagenet_book import viz

    curve = [{"run": run, "metric": "map", "value": v + 0.01 * seed, "n_train": n, "seed": seed}
             for run, v0 in (("imagenet1k-finetune", 0.3), ("scratch", 0.1)) for n, v in ((25, v0), (417, v0 + 0.1))
             for seed in (0, 1, 2)]
    result = results.read_result("voc-multilabel", _write(tmp_path, rows=curve).parent)
    ax = viz.data_efficiency_plot(result).axes[0]
    lines = {line.get_label().split(" ")[0]: line.get_ydata() for line in ax.get_lines()}
    assert np.allclose(lines["imagenet1k-finetune"], [0.31, 0.41]) and np.allclose(lines["scratch"], [0.11, 0.21])
    assert [len(p.get_paths()) for p in ax.collections] == [1, 1]  # a band per run
    bars = viz.result_bars(result).axes[0]
    assert len(bars.patches) == 4  # seed 0 only
    assert results.differences(result, [("imagenet1k-finetune", "scratch"), ("absent", "scratch")]) == [
        "imagenet1k-finetune - scratch: +0.200 mAP (2.0x)"]
    filters = np.zeros((20, 7, 7, 3), np.uint8)
    stages = [{"run": f"{who}-probe-{layer}", "metric": "map", "value": 0.1 * i, "backbone": who, "arch": "resnet18",
               "layer": layer} for who in ("random", "book") for i, layer in enumerate(("layer1", "layer4"))]
    packed = {"filters": {"random": {"arch": "resnet18", **results.pack_uint8(filters)}}}
    result = results.read_result("voc-multilabel", _write(tmp_path, rows=stages, extra=packed).parent)
    assert [line.get_label() for line in viz.stage_probe_plot(result).axes[0].get_lines()] == [
        "random (resnet18)", "book (resnet18)"]
    fig = viz.filters_figure(result, ncols=8)
    assert sum(len(ax.get_images()) for ax in fig.axes) == 20 and len(fig.axes) == 24


def test_a_data_efficiency_curve_reads_across_seeds_and_sizes():
    rows = [{"run": run, "metric": "map", "value": v, "n_train": n, "seed": s}
            for run, n, s, v in [("pre", 25, 0, 0.30), ("pre", 25, 1, 0.40), ("pre", 100, 0, 0.50),
                                 ("scratch", 25, 0, 0.10), ("scratch", 25, 1, 0.20), ("scratch", 100, 0, 0.36),
                                 ("scratch", 200, 0, 0.45)]]
    curve = {"name": "curve", "rows": rows}
    sizes = results.by_size(curve)
    assert list(sizes) == ["pre", "scratch"]
    mean, lo, hi, seeds = sizes["pre"][25]
    assert (round(mean, 6), lo, hi, seeds) == (0.35, 0.30, 0.40, 2)
    # scratch first reaches pre's 25-image mean (0.35) at 100 images; pre's 100-image mean (0.50) never
    assert results.labels_to_match(curve, "pre", "scratch") == {25: 100, 100: None}
    assert results.labels_to_match(curve, "scratch", "pre") == {25: 25, 100: 100, 200: 100}
    with pytest.raises(KeyError, match="finetune"):
        results.labels_to_match(curve, "finetune", "scratch")
