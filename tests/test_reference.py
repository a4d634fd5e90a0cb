"""``make reference`` (``imagenet_book.reference``): experiments recorded in book/results/,
resumable run by run, refusing to run on stand-in data. Tiny sizes on a real-format tree."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from imagenet_book import cli, engine, pretrain, recipe, reference, results, runtime
from imagenet_book.data import voc


@pytest.fixture
def tiny(smoke_cfg, voc_standin, tmp_path, monkeypatch):
    """A local-profile Setup whose data root holds a VOC-format set where the real one goes
    (the stand-in's files), with reference sizes shrunk to seconds."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    shutil.copytree(voc_standin / "VOCdevkit" / "VOC2007", data / voc.VOCSTYLE_FOLDER / "VOCdevkit" / "VOC2012")
    cache.mkdir()
    cfg = dataclasses.replace(smoke_cfg, profile=runtime.PROFILES["local"], data_root=data, cache_root=cache,
                              device=torch.device("cpu"))
    monkeypatch.setattr(reference, "VOC", {"img_size": 32, "epochs": 1, "batch_size": 4})
    monkeypatch.setattr(reference, "DATA_EFFICIENCY_SIZES", (4, 8))
    monkeypatch.setattr(reference, "SEEDS", (0, 1))
    return cfg


def test_data_efficiency_is_recorded_and_resumes_run_by_run(tiny, tmp_path):
    out = tmp_path / "results"
    lines: list[str] = []
    [path] = reference.run_reference(tiny, ["voc-data-efficiency"], folder=out, log=lines.append)
    result = results.read_result("voc-data-efficiency", out)
    assert path == out / "voc-data-efficiency.json" and result["chapter"].startswith("chapters/07")
    assert result["data"]["real"] is True and "PASCAL" not in result["data"]["name"]
    rows = result["rows"]
    assert {(r["run"], r["n_train"], r["seed"]) for r in rows} == {
        (run, n, s) for run in ("imagenet1k-finetune", "scratch") for n in (4, 8) for s in (0, 1)}
    assert all(r["metric"] == "map" and 0.0 <= r["value"] <= 1.0 for r in rows)
    assert "/tmp" not in json.dumps(result) and result["command"] == "make reference"
    # Recorded: a second call skips it. Interrupted (results file gone, runs kept): no training again.
    lines.clear()
    assert reference.run_reference(tiny, ["voc-data-efficiency"], folder=out, log=lines.append) == []
    path.unlink()
    lines.clear()
    reference.run_reference(tiny, ["voc-data-efficiency"], folder=out, log=lines.append)
    assert sum("done before" in line for line in lines) == 8
    resumed = results.read_result("voc-data-efficiency", out)
    assert resumed["rows"] == rows
    kept = (tiny.cache_root / "reference" / "voc-data-efficiency").rglob("*.json")
    made = [json.loads(f.read_text())["wall_s"] for f in kept]
    assert len(made) == 8 and resumed["wall_s"] == pytest.approx(sum(made), abs=0.5)  # the runs' time, not the resume's


def test_reference_runs_refuse_stand_in_data_and_unknown_names(smoke_cfg, tmp_path, capsys):
    cfg = dataclasses.replace(smoke_cfg, profile=runtime.PROFILES["local"], data_root=tmp_path,
                              cache_root=tmp_path)
    with pytest.raises(reference.ReferenceRunError, match="real VOC-format data"):
        reference.run_reference(cfg, ["voc-multilabel"], folder=tmp_path / "r", log=lambda _: None)
    with pytest.raises(reference.ReferenceRunError, match="Unknown experiment"):
        reference.run_reference(cfg, ["voc-everything"], folder=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    assert cli.main(["reference", "voc-everything", "--profile", "local", "--data-root", str(tmp_path),
                     "--cache-root", str(tmp_path)]) == 2
    assert "Unknown experiment" in capsys.readouterr().err


def test_stage_features_average_each_stage_and_leave_the_mode_alone():
    from imagenet_book import finetune, probe

    torch.manual_seed(0)
    backbone = finetune.backbone_from_checkpoint(None, "resnet18", pretrained=False).train()
    x = torch.randn(3, 3, 64, 64)
    feats = probe.stage_features(backbone, [(x[:2],), (x[2:],)])
    assert backbone.training  # put back as it was
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "layer1": (3, 64), "layer2": (3, 128), "layer3": (3, 256), "layer4": (3, 512)}
    backbone.eval()
    with torch.no_grad():
        assert torch.allclose(feats["layer4"], backbone(x).mean((2, 3)), atol=1e-5)


def test_detection_segmentation_and_stages_compare_backbones(tiny, tmp_path, smoke_checkpoint, monkeypatch):
    monkeypatch.setattr(reference, "DETECT", {"img_size": 64, "epochs": 1, "batch_size": 4})
    monkeypatch.setattr(reference, "SEGMENT", {"img_size": 32, "epochs": 1, "batch_size": 4})
    monkeypatch.setattr(reference, "STAGE_PROBE", {"img_size": 32, "epochs": 2, "batch_size": 4})
    book = reference.reference_backbone(tiny)
    book.parent.mkdir(parents=True)
    shutil.copy(smoke_checkpoint, book)  # the book's backbone, where make reference pretrains it
    out = tmp_path / "results"
    reference.run_reference(tiny, ["voc-detection", "voc-segmentation", "backbone-stages"], folder=out,
                            log=lambda _: None)
    runs = {"scratch", "finetune", "imagenet1k-finetune", "imagenet1k-scratch"}
    for name, metric, chapter in (("voc-detection", "map50", "08"), ("voc-segmentation", "miou", "09")):
        result = results.read_result(name, out)
        assert result["chapter"].startswith(f"chapters/{chapter}") and result["data"]["real"] is True
        assert {r["run"] for r in result["rows"]} == runs
        assert all(r["metric"] == metric and 0.0 <= r["value"] <= 1.0 for r in result["rows"])
    stages = results.read_result("backbone-stages", out)
    channels = {(r["backbone"], r["layer"]): r["channels"] for r in stages["rows"]}
    assert channels[("book", "layer4")] == 512 and channels[("imagenet1k", "layer4")] == 1280
    assert len(channels) == 12 and all(r["metric"] == "map" for r in stages["rows"])
    filters = {k: results.unpack_uint8(v) for k, v in stages["extra"]["filters"].items()}
    assert filters["random"].shape == filters["book"].shape == (64, 7, 7, 3)
    assert filters["imagenet1k"].shape == (32, 3, 3, 3)
    assert not (filters["random"] == filters["book"]).all()


def test_chapters_fine_tune_from_the_reference_backbone_once_it_is_made(tiny, tmp_path):
    fallback = tmp_path / "chapter06.pt"
    path, why = reference.chapter_backbone(tiny, fallback)
    assert path == fallback and "chapter 06's run" in why
    made = reference.reference_backbone(tiny)
    made.parent.mkdir(parents=True)
    made.write_bytes(b"weights")
    path, why = reference.chapter_backbone(tiny, fallback)
    assert path == made and "reference backbone" in why and made.name in why


def test_pretraining_is_recorded_without_the_data_s_folder(tiny, tmp_path, monkeypatch):
    """The data's description names its folder (for captions); a results file must not."""
    from PIL import Image

    from imagenet_book.data.imagenet import IMAGENETTE_CLASSES

    for split, n in (("train", 3), ("val", 1)):
        for k, (wnid, _) in enumerate(IMAGENETTE_CLASSES):
            folder = tiny.data_root / "imagenette2-160" / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 40), (k * 25, i * 60, 100)).save(folder / f"{wnid}_{i}.JPEG")
    monkeypatch.setattr(reference, "PRETRAIN", {"img_size": 32, "epochs": 1, "batch_size": 10, "lr": 0.05,
                                                "weight_decay": 1e-3})
    out = tmp_path / "results"
    reference.run_reference(tiny, ["pretrain-imagenette"], folder=out, log=lambda _: None)
    result = results.read_result("pretrain-imagenette", out)
    assert result["data"] == {"name": "real Imagenette (imagenette2-160)", "real": True, "train": 30, "val": 10}
    assert {(r["metric"], r["lr"]) for r in result["rows"]} == {("top1", 0.05), ("top5", 0.05)}
    assert all(r["weight_decay"] == 1e-3 for r in result["rows"])  # the one it trained with
    assert reference.reference_backbone(tiny).is_file()  # the fine-tuning experiments' backbone
    # It computes as train_compute says (bf16 + channels_last where bf16 is fast), recorded in the results
    # file and in the backbone's own settings, which name the file the fine-tuning chapters look for.
    compute = reference.train_compute(tiny, "resnet18")
    assert result["extra"]["compute"] == compute and compute["channels_last"] is True
    settings = pretrain.read_pretrained(reference.reference_backbone(tiny)).settings
    assert {k: settings.get(k) for k in compute} == compute
    # Recorded again from the finished run (loaded, not trained): the wall time is still the training's.
    reference.run_reference(tiny, ["pretrain-imagenette"], folder=out, force=True, log=lambda _: None)
    again = results.read_result("pretrain-imagenette", out)
    trained = json.loads(reference.reference_backbone(tiny).with_suffix(".json").read_text())["epochs"][-1]["wall_s"]
    assert again["rows"] == result["rows"] and trained > 0 and again["wall_s"] == pytest.approx(trained, abs=0.1)
    assert result["wall_s"] >= again["wall_s"]  # the first call also decoded the images


def test_the_weight_decay_is_chosen_on_held_out_training_images_never_on_val(tiny, tmp_path, monkeypatch):
    """Each option trains on the training split less a held-out share of each class and is scored on
    those held-out training images (not val); the higher held-out top-1 is marked chosen."""
    _imagenette_tree(tiny.data_root, train=4, val=2)
    monkeypatch.setattr(reference, "WEIGHT_DECAY_STUDY", {"img_size": 32, "epochs": 1, "batch_size": 10, "lr": 0.05})
    monkeypatch.setattr(reference, "WEIGHT_DECAYS", (5e-5, 5e-2))
    monkeypatch.setattr(reference, "HOLDOUT", 0.25)
    out = tmp_path / "results"
    said: list[str] = []
    reference.run_reference(tiny, ["pretrain-weight-decay"], folder=out, log=said.append)
    result = results.read_result("pretrain-weight-decay", out)
    # 4 training images per class: 1 held out, 3 trained on; the 2 val images per class are not used.
    assert result["data"]["train"] == 30 and result["data"]["val"] == 10 and result["data"]["real"] is True
    assert "training split only" in result["data"]["name"] and str(tmp_path) not in json.dumps(result)
    # make reference leaves the study out: the record names the command that made it, and says what was scored.
    assert result["command"] == "python -m imagenet_book reference pretrain-weight-decay"
    assert "30 train / 10 held-out training images" in results.provenance(result)
    rows = result["rows"]
    assert [(r["run"], r["metric"], r["weight_decay"]) for r in rows] == [
        ("weight decay 5e-05", "holdout_top1", 5e-5), ("weight decay 0.05", "holdout_top1", 5e-2)]
    assert [r["chosen"] for r in rows].count(True) == 1
    assert max(rows, key=lambda r: r["value"])["chosen"] is True
    assert all(r["epochs"] == 1 and r["img_size"] == 32 and 0 <= r["value"] <= 1 for r in rows)
    assert any("30 train / 10 held-out training images" in line for line in said)
    # Two runs of their own (the decay and the held-out share are in their names and settings), and
    # neither is the reference backbone the fine-tuning chapters look for.
    made = sorted((tiny.cache_root / "checkpoints").glob("resnet18-imagenette-*.pt"))
    assert len(made) == 2 and not reference.reference_backbone(tiny).is_file()
    decays = sorted(pretrain.read_pretrained(p).settings["recipe"]["weight_decay"] for p in made)
    assert decays == [5e-5, 5e-2]
    assert all(pretrain.read_pretrained(p).settings["holdout"] == 0.25 for p in made)


@pytest.fixture
def selfsup_tiny(tiny, monkeypatch):
    """``tiny`` with a real-format Imagenette tree and chapter 11's SimCLR and transfer shrunk to seconds."""
    _imagenette_tree(tiny.data_root)
    monkeypatch.setattr(reference, "SIMCLR", {"img_size": 32, "epochs": 1, "batch_size": 8})
    monkeypatch.setattr(reference, "TRANSFER_SIZES", (4,))
    monkeypatch.setattr(reference, "TRANSFER_SEEDS", (0,))
    return tiny


def test_selfsup_schedule_measures_each_simclr_schedule_alike(selfsup_tiny, tmp_path, monkeypatch):
    """The study trains the same SimCLR for each schedule (two checkpoints of their own), measures each
    one's frozen features and transfer alike, and every row says which schedule it came from; make
    reference leaves it out and its record names the command that runs it."""
    tiny = selfsup_tiny
    monkeypatch.setattr(reference, "SIMCLR_SCHEDULES", (1, 2))
    out = tmp_path / "results"
    said: list[str] = []
    reference.run_reference(tiny, ["selfsup-schedule"], folder=out, log=said.append)
    result = results.read_result("selfsup-schedule", out)
    assert result["command"] == "python -m imagenet_book reference selfsup-schedule"
    assert result["chapter"] == "chapters/11_self_supervised.ipynb" and result["data"]["real"] is True
    assert {(r["run"], r["metric"], r["pretrain_epochs"]) for r in result["rows"]} == {
        ("simclr", "knn_top1", 1), ("simclr", "probe_top1", 1), ("simclr-1-finetune", "map", 1),
        ("simclr", "knn_top1", 2), ("simclr", "probe_top1", 2), ("simclr-2-finetune", "map", 2)}
    assert all(0.0 <= r["value"] <= 1.0 for r in result["rows"])
    assert result["extra"]["schedules"] == [1, 2] and set(result["extra"]["contrastive_top1"]) == {"1", "2"}
    made = sorted((tiny.cache_root / "checkpoints").glob("resnet18-simclr-imagenette-*.pt"))
    assert sorted(len(json.loads(p.with_suffix(".json").read_text())["epochs"]) for p in made) == [1, 2]
    assert any("selfsup-schedule 2 epochs: k-NN top-1" in line for line in said)
    assert any(" epochs x " in line for line in said)  # what trained says
    # Resumed: the second call trains nothing and records the same numbers.
    again: list[str] = []
    reference.run_reference(tiny, ["selfsup-schedule"], folder=out, force=True, log=again.append)
    assert results.read_result("selfsup-schedule", out)["rows"] == result["rows"]
    assert not any(" epochs x " in line for line in again)


@pytest.mark.parametrize("name", ["selfsup-imagenette", "selfsup-schedule"])
def test_selfsup_experiments_refuse_without_the_real_imagenette_before_training(tiny, tmp_path, name):
    with pytest.raises(reference.ReferenceRunError, match=f"{name} needs the real Imagenette.*IMAGENET_BOOK_DATA"):
        reference.run_reference(tiny, [name], folder=tmp_path / "results", log=lambda _: None)
    assert not (tmp_path / "results" / f"{name}.json").exists()
    assert not list(tiny.cache_root.rglob("*.pt"))  # nothing trained


def _imagenette_tree(root, train=3, val=1):
    from PIL import Image

    from imagenet_book.data.imagenet import IMAGENETTE_CLASSES

    for split, n in (("train", train), ("val", val)):
        for k, (wnid, _) in enumerate(IMAGENETTE_CLASSES):
            folder = root / "imagenette2-160" / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 40), (k * 25, i * 60, 100)).save(folder / f"{wnid}_{i}.JPEG")


def test_selfsup_compares_simclr_supervised_and_random_and_transfers(selfsup_tiny, tmp_path, monkeypatch):
    tiny = selfsup_tiny
    monkeypatch.setattr(reference, "SUPERVISED", {"img_size": 32, "epochs": 1, "batch_size": 10, "lr": 0.05})
    out = tmp_path / "results"
    said: list[str] = []
    reference.run_reference(tiny, ["selfsup-imagenette"], folder=out, log=said.append)
    result = results.read_result("selfsup-imagenette", out)
    assert result["chapter"] == "chapters/11_self_supervised.ipynb" and result["data"]["real"] is True
    assert result["data"]["train"] == 30 and result["data"]["val"] == 10
    frozen = {(r["run"], r["metric"]) for r in result["rows"] if r["metric"] != "map"}
    assert frozen == {(who, m) for who in ("simclr", "supervised", "random") for m in ("knn_top1", "probe_top1")}
    assert any("knn" in r["metric"] for r in result["rows"])  # the k-NN row
    transfer = [r for r in result["rows"] if r["metric"] == "map"]
    assert {(r["run"], r["n_train"], r["seed"]) for r in transfer} == {("simclr-finetune", 4, 0),
                                                                      ("supervised-finetune", 4, 0)}
    # Both narrow-source backbones are fine-tuned at one rate for all layers, and the rows say so.
    assert reference.TRANSFER_LR_SCALE == 1.0 and all(r["backbone_lr_scale"] == 1.0 for r in transfer)
    finetunes = [m for m in said if "/finetune:" in m and " epochs x " in m]
    assert len(finetunes) == 2 and all("backbone lr x1," in m for m in finetunes)
    assert all(0.0 <= r["value"] <= 1.0 for r in result["rows"])
    near = result["extra"]["neighbours"]
    assert len(near["queries"]) == reference.NEIGHBOUR_QUERIES and all(q.startswith("val/") for q in near["queries"])
    for who in ("simclr", "supervised", "random"):
        assert len(near[who]) == reference.NEIGHBOUR_QUERIES
        assert all(len(row) == reference.NEIGHBOURS and all(p.startswith("train/n") for p in row) for row in near[who])
    assert str(tmp_path) not in json.dumps(result)
    # The SimCLR file loads as a backbone the fine-tuning chapters use (the transfer rows came from it).
    assert any(p.name.startswith("resnet18-simclr-imagenette") for p in (tiny.cache_root / "checkpoints").glob("*.pt"))
    # Both pretrainings compute alike (an equal budget), as the record and their report lines say.
    compute = reference.train_compute(tiny, "resnet18")
    assert result["extra"]["compute"] == compute and compute["channels_last"] is True
    assert compute.get("amp") == ("bf16" if engine.bf16_is_fast(tiny.device) else None)
    trained = [m for m in said if m.startswith("pretrain: ") and "peak lr" in m]
    assert len(trained) == 2 and all(m.endswith(engine.compute_note(**compute)) for m in trained)
    for path in (tiny.cache_root / "checkpoints").glob("resnet18-*imagenette*.pt"):
        settings = pretrain.read_pretrained(path).settings
        assert {k: settings.get(k) for k in compute} == compute, path.name


def test_lfw_verification_records_the_four_embeddings_over_the_folds(tiny, tmp_path, monkeypatch):
    from imagenet_book.data import standin

    made = standin.make_lfw_standin(tmp_path / "faces", people_per_fold=4, images_per_person=2, pairs_per_fold=3,
                                    img_size=32)
    subset = tiny.data_root / "lfw-deepfunneled-5folds"
    shutil.copytree(made / "lfw", subset / "lfw")
    shutil.copy(made / "pairs.txt", subset / "pairs_5folds.txt")
    monkeypatch.setattr(reference, "FACES", {"img_size": 32, "epochs": 1, "batch_size": 4})
    out = tmp_path / "results"
    reference.run_reference(tiny, ["lfw-verification"], folder=out, log=lambda _: None)
    result = results.read_result("lfw-verification", out)
    assert result["data"]["real"] is True and result["data"]["val"] == 5 * 6
    rows = {r["run"]: r for r in result["rows"]}
    assert set(rows) == {"eigenfaces", "features", "finetune", "scratch"}
    assert rows["eigenfaces"]["embedding"].startswith("Eigenfaces (") and "ArcFace" in rows["finetune"]["embedding"]
    for row in rows.values():
        assert row["metric"] == "accuracy" and len(row["folds"]) == 5
        assert row["value"] == pytest.approx(sum(row["folds"]) / 5) and row["std"] >= 0
    # the trained rows say how they were trained: the rate, ArcFace's s and m, the kept BatchNorm statistics
    assert rows["finetune"]["freeze_bn"] is True and rows["scratch"]["freeze_bn"] is False
    assert rows["finetune"]["precise_bn"] is True and rows["scratch"]["precise_bn"] is True
    assert rows["finetune"]["margin"] == recipe.ARC_MARGIN and rows["finetune"]["lr"] == recipe.FACE_LR
    assert "lr" not in rows["features"] and "epochs" not in rows["eigenfaces"]
    # the trained rows say how they computed: channels_last, float32 (EfficientNet-Lite0 is slower in bf16 on a CPU)
    assert result["extra"]["compute"] == {"channels_last": True}
    assert all(rows[m]["channels_last"] is True and "amp" not in rows[m] for m in ("finetune", "scratch"))
    assert "channels_last" not in rows["features"]
    roc = result["extra"]["roc"]["finetune"]
    assert roc["fpr"][0] == 0.0 and len(roc["fpr"]) == len(roc["tpr"])
    assert str(tmp_path) not in json.dumps(result)


def test_make_reference_leaves_gpu_sized_experiments_out_on_a_cpu_unless_named(tiny, tmp_path, monkeypatch):
    """All experiments on a CPU: fast-recipe and fast-recipe-search (hours there) are left out with a
    line saying how to run them; named, they run. The experiments' bodies are replaced by recorders
    (the real ones take hours)."""
    ran = []

    def experiment(name):
        def run(cfg, log):
            ran.append(name)
            return {"chapter": "chapters/06_pretraining.ipynb", "data": {"name": "x", "real": True, "train": 1,
                                                                          "val": 1},
                    "rows": [{"run": "scratch", "metric": "top1", "value": 0.5}]}
        return run

    names = ("pretrain-imagenette", "pretrain-weight-decay", "fast-recipe", "fast-recipe-search")
    monkeypatch.setattr(reference, "EXPERIMENTS", {n: experiment(n) for n in names})
    said = []
    reference.run_reference(tiny, folder=tmp_path / "r", log=said.append)
    assert ran == ["pretrain-imagenette"]
    assert any("fast-recipe, fast-recipe-search: left out on CPU" in line
               and "reference fast-recipe fast-recipe-search` runs them" in line for line in said)
    # The studies (one chose a constant of a recipe, one measured it beyond its budget) are left out on
    # any device; named, they run.
    assert any(", ".join(reference.STUDIES) + ": left out" in line
               and f"reference {' '.join(reference.STUDIES)}` runs them" in line for line in said)
    reference.run_reference(tiny, ["fast-recipe-search", "pretrain-weight-decay"], folder=tmp_path / "r",
                            log=said.append)
    assert ran == ["pretrain-imagenette", "fast-recipe-search", "pretrain-weight-decay"]
