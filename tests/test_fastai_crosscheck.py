"""bench/fastai_crosscheck.py: fast.ai's leaderboard recipe run by the fastai library on the book's
data, for issue 16's comparison. fastai is not installed with the project, so these tests check
what a reader meets without it and how a finished run's raw record becomes the book's record."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from imagenet_book.results import read_result

from scripts import ROOT, load_script

SCRIPT = ROOT / "bench" / "fastai_crosscheck.py"
crosscheck = load_script("bench/fastai_crosscheck.py", "fastai_crosscheck")


def raw_record(per_epoch, epochs=5, arch="xse_resnext50", commit="abc1234"):
    return {"name": "fastai-crosscheck", "commit": commit, "date": "2026-12-06", "device": "CPU (x86_64, 2 cores)",
            "torch": "2.14.1", "fastai": "2.8.12", "train_images": 9469, "val_images": 3925, "precision": "fp32",
            "wall_s": 4000.0, "val_top1_per_epoch": per_epoch,
            "settings": {"data": "/somewhere/imagenette2-160", "arch": arch, "size": 128, "epochs": epochs,
                         "lr": 8e-3, "mom": 0.95, "sqrmom": 0.99, "bs": 64, "sa": 1, "pool": "MaxPool"}}


def test_a_data_folder_without_train_and_val_is_named_with_the_fix(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode != 0
    assert f"{tmp_path / 'train'}: not a folder" in done.stderr and "--data" in done.stderr


def test_without_fastai_the_reader_is_sent_to_the_install_line(tmp_path):
    try:
        import fastai  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("fastai is installed here: the message for its absence cannot be seen")
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode != 0 and "needs the fastai library" in done.stderr and "fastai_crosscheck.py" in done.stderr


def test_finished_runs_become_a_record_the_chapter_reads(tmp_path):
    raws = [raw_record([0.6, 0.7, 0.75, 0.8, 0.83]), raw_record([0.5, 0.6, 0.7, 0.75, 0.8], arch="xresnet18",
                                                                 commit="def5678")]
    written = crosscheck.write_book_record(raws, folder=tmp_path)
    result = read_result("fastai-crosscheck", folder=tmp_path)
    assert result == written and result["commit"] == "abc1234, def5678" and result["device"] == "CPU (x86_64, 2 cores)"
    big = [(r["epochs"], r["value"]) for r in result["rows"] if r["arch"] == "xse_resnext50"]
    assert big == [(1, 0.6), (2, 0.7), (3, 0.75), (4, 0.8), (5, 0.83)]
    assert [r["commit"] for r in result["rows"] if r["arch"] == "xresnet18"] == ["def5678"] * 5
    assert {r["img_size"] for r in result["rows"]} == {128} and "Ranger 0.008" in result["rows"][-1]["what"]
    assert result["wall_s"] == 8000.0
    assert set(result["extra"]["settings"]) == {"xse_resnext50, fastai loop", "xresnet18, fastai loop"}
    assert "/somewhere" not in json.dumps(result)  # no machine path goes into book/results


def test_a_run_of_the_book_s_loop_is_one_row_beside_fastai_s_epochs(tmp_path):
    book = {**raw_record(None), "loop": "book", "val_top1": 0.84, "val_top5": 0.98, "val_top1_flips": 0.85,
            "precision": "bfloat16"}
    without = {**book, "val_top1": 0.82, "settings": {**book["settings"], "sa": 0}}
    result = crosscheck.write_book_record([raw_record([0.6, 0.7, 0.75, 0.8, 0.83]), book, without], folder=tmp_path)
    row, other = [r for r in result["rows"] if r["loop"] == "book"]
    assert (other["network"], other["value"]) == ("xse_resnext50 without self-attention", 0.82)
    assert (row["value"], row["epochs"], row["top1_flips"]) == (0.84, 5, 0.85) and "book's fast recipe" in row["what"]
    assert [r["epochs"] for r in result["rows"] if r["loop"] == "fastai"] == [1, 2, 3, 4, 5]
    assert set(result["extra"]["settings"]) == {"xse_resnext50, fastai loop", "xse_resnext50, book loop",
                                                "xse_resnext50 without self-attention, book loop"}


def test_the_same_network_twice_or_other_data_is_refused(tmp_path):
    run = raw_record([0.6, 0.7, 0.75, 0.8, 0.83])
    with pytest.raises(ValueError, match="same network and loop"):
        crosscheck.write_book_record([run, run], folder=tmp_path)
    other = {**raw_record([0.5] * 5, arch="xresnet18"), "val_images": 500}
    with pytest.raises(ValueError, match="different data"):
        crosscheck.write_book_record([run, other], folder=tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_trial_or_a_cut_short_run_is_not_recorded(tmp_path):
    with pytest.raises(ValueError, match="recorded 0 of its 5 epochs"):
        crosscheck.write_book_record([raw_record([])], folder=tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_file_that_is_not_a_raw_record_is_named(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"name": "something else"}))
    with pytest.raises(SystemExit, match="other.json: not a raw record"):
        crosscheck.read_raw(other)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(SystemExit, match="broken.json: cannot read it as JSON"):
        crosscheck.read_raw(broken)


def test_the_book_s_own_network_is_a_control_of_the_book_s_loop_only(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
    refused = {("--arch", "book:resnet99"): "the book has no network 'resnet99'",
               ("--arch", "book:saresnet18d"): "runs with --book-loop",
               ("--arch", "book:saresnet18d", "--book-loop", "--mom", "0.9", "--sa", "0"): "options of fastai's"}
    for options, message in refused.items():
        done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path), *options], capture_output=True,
                              text=True)
        assert done.returncode != 0 and message in done.stderr, (options, done.stderr)
    net = crosscheck.book_network("saresnet18d", 10)
    assert type(net.layer1[1].relu).__name__ == "Mish" and not net.layer1[1].bn2.weight.detach().any()
    book = {**raw_record(None, arch="book:saresnet18d"), "loop": "book", "val_top1": 0.81, "val_top5": 0.98,
            "val_top1_flips": 0.82, "precision": "bfloat16"}
    book["settings"].update(sa=None, pool=None)
    fastai_net = {**raw_record(None, arch="xresnet18"), "loop": "book", "val_top1": 0.83, "val_top5": 0.98,
                  "val_top1_flips": 0.84, "precision": "bfloat16"}
    result = crosscheck.write_book_record([fastai_net, book], folder=tmp_path / "results")
    ours, theirs = result["rows"][1], result["rows"][0]
    assert ours["run"] == "the book's saresnet18d, the book's loop" and ours["network"] == "the book's saresnet18d"
    assert ours["what"].startswith("the book's saresnet18d (Mish, zero-initialised") and ours["value"] == 0.81
    assert theirs["run"] == "fastai's xresnet18, the book's loop" and theirs["what"].startswith("fastai's xresnet18")


def test_fastai_s_two_other_differences_can_be_put_into_the_book_s_network(tmp_path):
    from torch import nn

    plain = crosscheck.book_network("saresnet18d", 10)
    both = crosscheck.book_network("saresnet18d", 10, shortcut="max", init="fastai")
    assert isinstance(plain.layer2[0].downsample[0], nn.AvgPool2d)
    assert isinstance(both.layer2[0].downsample[0], nn.MaxPool2d) and both.layer2[0].downsample[0].ceil_mode
    # Kaiming normal by fan-in: the stem's first convolution (27 inputs) and the classifier (512) are
    # scaled by sqrt(2 / fan_in); the book's scales convolutions by fan-out and keeps PyTorch's classifier.
    for net, stem, fc in ((both, (2 / 27) ** 0.5, (2 / 512) ** 0.5), (plain, (2 / 288) ** 0.5, (1 / 512 / 3) ** 0.5)):
        assert abs(float(net.conv1[0].weight.std()) / stem - 1) < 0.15
        assert abs(float(net.fc.weight.std()) / fc - 1) < 0.1
    assert not both.fc.bias.detach().any() and not both.layer1[1].bn2.weight.detach().any()
    label = crosscheck.network_label({"arch": "book:saresnet18d", "book_shortcut": "max", "book_init": "fastai"})
    assert label == "the book's saresnet18d with max-pool shortcuts and fastai's initialisation"
    assert crosscheck.network_label({"arch": "book:saresnet18d", "book_init": "fastai"}) == (
        "the book's saresnet18d with fastai's initialisation")
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path), "--book-shortcut", "max"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "use them with --arch book:NAME" in done.stderr
