"""imagenet_book.data.lfw: LFW's pairs and people formats (agreeing with torchvision's reader),
clear errors for malformed rows, and the data rule on the three trees: a real-format LFW tree
written here, the stand-in, and the full profile's download from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import sys
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from torchvision.datasets import LFWPairs

import imagenet_book as ib
from imagenet_book.data import lfw
from imagenet_book.data.download import DatasetSource

sys.path.insert(0, str(Path(__file__).parent))
from lfw_trees import PEOPLE, pairs_text, people_text, write_full, write_photos, write_subset  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw-deepfunneled-5folds"


def _cfg(smoke_cfg, profile: str, data_root: Path, cache_root: Path):
    return dataclasses.replace(smoke_cfg, profile=ib.PROFILES[profile], data_root=data_root, cache_root=cache_root)


# ------------------------------------------------------------------------------- the formats


def test_read_pairs_gives_each_fold_same_pairs_then_different_ones(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text(pairs_text())
    folds = lfw.read_pairs(path)
    assert len(folds) == 2 and [len(f) for f in folds] == [4, 4]
    assert folds[0][0] == lfw.FacePair("Ann_Alpha", 1, "Ann_Alpha", 2, line=2)
    assert folds[0][2] == lfw.FacePair("Ann_Alpha", 3, "Cid_Gamma", 1, line=4)
    assert [p.same for p in folds[1]] == [True, True, False, False]
    assert folds[1][3].line == 9 and folds[1][3].images == (("Eve_Epsilon", 1), ("Fay_Zeta", 1))
    one = tmp_path / "pairsDevTrain.txt"  # the one-fold header of View 1
    one.write_text("1\nAnn_Alpha 1 2\nAnn_Alpha 3 Cid_Gamma 1\n")
    assert lfw.read_pairs(one) == ((lfw.FacePair("Ann_Alpha", 1, "Ann_Alpha", 2, 2),
                                    lfw.FacePair("Ann_Alpha", 3, "Cid_Gamma", 1, 3)),)


@pytest.mark.parametrize("text, line, words", [
    ("", 1, "header"),
    ("two\t2\n", 1, "header"),
    ("1\t1\nAnn_Alpha\t1\tBob_Beta\t2\nAnn_Alpha\t1\tBob_Beta\t2\n", 2, "same-person row 1 of 1"),
    ("1\t1\nAnn_Alpha\t1\t2\nAnn_Alpha\t1\t2\n", 3, "different-person row 1 of 1"),
    ("1\t1\nAnn_Alpha\tone\t2\nAnn_Alpha\t1\tBob_Beta\t2\n", 2, "not an integer"),
    ("1\t1\nAnn_Alpha\t0\t2\nAnn_Alpha\t1\tBob_Beta\t2\n", 2, "not an integer >= 1"),
    ("1\t1\nAnn_Alpha\t1\t2\nAnn_Alpha\t1\tAnn_Alpha\t2\n", 3, "same person twice"),
    ("2\t1\nAnn_Alpha\t1\t2\nAnn_Alpha\t1\tBob_Beta\t2\n", None, "truncated"),
    ("1\t1\nAnn_Alpha\t1\t2\nAnn_Alpha\t1\tBob_Beta\t2\nBob_Beta\t1\t2\n", 4, "after the last"),
])
def test_malformed_pairs_files_name_the_file_and_the_line(tmp_path, text, line, words):
    path = tmp_path / "bad_pairs.txt"
    path.write_text(text)
    with pytest.raises(lfw.LFWFormatError, match=words) as err:
        lfw.read_pairs(path)
    assert str(path) in str(err.value)
    if line is not None:
        assert f"line {line}:" in str(err.value)
    assert isinstance(err.value, ib.errors.BookError)


def test_read_people_and_its_errors(tmp_path):
    path = tmp_path / "people.txt"
    path.write_text(people_text())
    assert lfw.read_people(path) == tuple(tuple(f.items()) for f in PEOPLE)
    path.write_text("1\n2\nAnn_Alpha\t3\nBob_Beta\n")
    with pytest.raises(lfw.LFWFormatError, match="line 4: expected 'name<TAB>images'"):
        lfw.read_people(path)
    path.write_text("2\t300\n")
    with pytest.raises(lfw.LFWFormatError, match="line 1: a people file starts"):
        lfw.read_people(path)


class _LocalLFWPairs(LFWPairs):
    """torchvision's reader, on a tree whose archive is not LFW's (its MD5 check only differs)."""

    def _check_integrity(self) -> bool:
        return True


def test_pairs_are_the_pairs_torchvision_reads(tmp_path):
    folder = write_full(tmp_path)
    ours = [p for fold in lfw.read_pairs(folder / "pairs.txt") for p in fold]
    theirs = _LocalLFWPairs(str(tmp_path), split="10fold", image_set="deepfunneled")
    assert len(theirs) == len(ours) == 8
    images = folder / "lfw-deepfunneled"
    assert [tuple(map(Path, d)) for d in theirs.data] == [
        tuple(lfw.lfw_image_path(images, n, i) for n, i in p.images) for p in ours]
    assert theirs.targets == [int(p.same) for p in ours]
    img1, img2, same = theirs[0]
    assert img1.size == (40, 40) and same == 1


def test_folds_take_their_people_from_the_people_file_and_check_it(tmp_path):
    folder = write_full(tmp_path)
    folds = lfw.make_folds(folder / "pairs.txt", folder / "people.txt")
    assert folds[0].people == ("Ann_Alpha", "Bob_Beta", "Cid_Gamma")
    assert folds[1].pair_images == {("Dee_Delta", 1), ("Dee_Delta", 2), ("Eve_Epsilon", 2), ("Eve_Epsilon", 3),
                                    ("Fay_Zeta", 1), ("Eve_Epsilon", 1)}
    assert folds[0].labels.tolist() == [1, 1, 0, 0]
    swapped = tmp_path / "people_swapped.txt"
    swapped.write_text(people_text(PEOPLE[::-1]))
    with pytest.raises(lfw.LFWFormatError, match="do not belong together"):
        lfw.make_folds(folder / "pairs.txt", swapped)


def test_load_faces_crops_the_centre_and_names_a_corrupt_photo(tmp_path):
    source = _subset_source(tmp_path)
    path = source.image_path("Ann_Alpha", 1)
    pixels = torch.zeros(3, 50, 50, dtype=torch.uint8)
    pixels[:, 10:40, 10:40] = 255  # a white centre of 30 px = lfw.FACE_CROP of 50 px
    from PIL import Image
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path, format="PNG")  # PIL reads by content
    faces = lfw.load_faces(source, [("Ann_Alpha", 1), ("Bob_Beta", 2)], 12)
    assert faces.shape == (2, 3, 12, 12) and faces.dtype == torch.uint8
    assert faces[0].min() == 255  # only the face's square is kept
    path.write_bytes(b"not a jpeg")
    with pytest.raises(lfw.LFWFormatError, match="Ann_Alpha_0001.jpg' could not be decoded"):
        lfw.load_faces(source, [("Ann_Alpha", 1)], 10)


# ------------------------------------------------------------------------------- the data rule


def _subset_source(tmp_path: Path) -> lfw.LFWSource:
    folder = write_subset(tmp_path)
    return lfw.LFWSource(folder / "lfw", folder / "pairs_5folds.txt", None, "subset", "test", "local",
                         lfw.make_folds(folder / "pairs_5folds.txt"))


def test_local_profile_reads_the_whole_lfw_when_the_data_root_has_it(smoke_cfg, tmp_path, capsys):
    write_full(tmp_path / "data")
    write_subset(tmp_path / "data")  # the whole LFW wins
    source = lfw.lfw_source(_cfg(smoke_cfg, "local", tmp_path / "data", tmp_path))
    assert source.kind == "lfw" and source.is_real and source.people_file is not None
    assert [f.people for f in source.folds] == [tuple(sorted(f)) for f in PEOPLE]
    assert source.images_of(["Eve_Epsilon"]) == [("Eve_Epsilon", 1), ("Eve_Epsilon", 2), ("Eve_Epsilon", 3)]
    assert "real LFW" in source.description and capsys.readouterr().out == ""


def test_local_profile_falls_back_to_the_subset_then_the_standin_with_a_notice(smoke_cfg, tmp_path, capsys,
                                                                              monkeypatch):
    write_subset(tmp_path / "data")
    source = lfw.lfw_source(_cfg(smoke_cfg, "local", tmp_path / "data", tmp_path))
    assert source.kind == "subset" and source.people_file is None
    assert source.folds[1].people == ("Dee_Delta", "Eve_Epsilon", "Fay_Zeta")
    out = capsys.readouterr().out
    assert "no whole LFW" in out and "lfw-deepfunneled-5folds" in out
    (tmp_path / "empty").mkdir()
    monkeypatch.setitem(lfw.LFW_STANDIN_SIZES, "local", lfw.LFW_STANDIN_SIZES["smoke"])  # tiny, for speed
    cfg = _cfg(smoke_cfg, "local", tmp_path / "empty", tmp_path)
    standin = lfw.lfw_source(cfg)
    assert standin.kind == "standin" and not standin.is_real and "stand-in" in capsys.readouterr().out


def test_a_missing_photo_is_named_with_its_pairs_line(smoke_cfg, tmp_path):
    folder = write_subset(tmp_path / "data")
    (folder / "lfw" / "Bob_Beta" / "Bob_Beta_0002.jpg").unlink()
    with pytest.raises(lfw.DatasetNotFoundError, match=r"pairs_5folds.txt' line 3 uses .*Bob_Beta_0002.jpg"):
        lfw.lfw_source(_cfg(smoke_cfg, "local", tmp_path / "data", tmp_path))


def test_smoke_profile_always_uses_the_standin_in_lfw_format(smoke_cfg, tmp_path):
    write_full(tmp_path / "data")
    cfg = dataclasses.replace(smoke_cfg, data_root=tmp_path / "data")
    source = lfw.lfw_source(cfg)
    assert source.kind == "standin" and len(source.folds) == 5
    sizes = lfw.LFW_STANDIN_SIZES["smoke"]
    for fold in source.folds:
        assert len(fold.pairs) == 2 * sizes["pairs_per_fold"] and len(fold.people) == sizes["people_per_fold"]
        assert fold.pair_people <= set(fold.people)
    people = [set(f.people) for f in source.folds]
    assert all(not (a & b) for i, a in enumerate(people) for b in people[i + 1:])  # identity-disjoint
    assert lfw.lfw_source(cfg).folds == source.folds  # made once, then reused


# ------------------------------------------------------------------------------- the download


@pytest.fixture
def lfw_server(tmp_path, only_localhost):
    """A real HTTP server on 127.0.0.1 serving an LFW-format archive and protocol files."""
    served = tmp_path / "served"
    build = tmp_path / "build"
    write_photos(build / "lfw-deepfunneled", {k: v for fold in PEOPLE for k, v in fold.items()})
    served.mkdir()
    with tarfile.open(served / "lfw-deepfunneled.tgz", "w:gz") as tar:
        tar.add(build / "lfw-deepfunneled", arcname="lfw-deepfunneled")
    (served / "pairs.txt").write_text(pairs_text())
    (served / "people.txt").write_text(people_text())
    (served / "lfw-names.txt").write_text("".join(f"{k}\t{v}\n" for f in PEOPLE for k, v in sorted(f.items())))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _local_files(base: str, served: Path) -> dict[str, DatasetSource]:
    return {name: dataclasses.replace(src, urls=(base + src.filename,),
                                      md5=hashlib.md5((served / src.filename).read_bytes()).hexdigest())
            for name, src in lfw.LFW_FILES.items()}


def test_full_profile_downloads_lfw_into_torchvisions_layout(smoke_cfg, tmp_path, lfw_server, monkeypatch):
    base, served = lfw_server
    monkeypatch.setattr(lfw, "LFW_FILES", _local_files(base, served))
    data = tmp_path / "data"
    data.mkdir()
    source = lfw.lfw_source(_cfg(smoke_cfg, "full", data, tmp_path))
    assert source.kind == "lfw" and source.images_dir == data / "lfw-py" / "lfw-deepfunneled"
    assert [f.people for f in source.folds] == [tuple(sorted(f)) for f in PEOPLE]
    assert (data / "lfw-py" / "lfw-deepfunneled.tgz").is_file()  # kept: torchvision's readers check it
    theirs = _LocalLFWPairs(str(data), split="10fold", image_set="deepfunneled")
    assert theirs.targets == [int(p.same) for f in source.folds for p in f.pairs]
    faces = lfw.load_faces(source, source.images_of(source.folds[0].people), 16)
    assert faces.shape == (6, 3, 16, 16)


def test_full_profile_offline_uses_the_subset_with_the_reason(smoke_cfg, tmp_path, lfw_server, monkeypatch, capsys):
    base, served = lfw_server
    files = _local_files(base + "gone/", served)  # the host answers 404: "cannot be reached"
    monkeypatch.setattr(lfw, "LFW_FILES", files)
    write_subset(tmp_path / "data")
    source = lfw.lfw_source(_cfg(smoke_cfg, "full", tmp_path / "data", tmp_path))
    assert source.kind == "subset"
    out = capsys.readouterr().out
    assert "cannot be reached" in out and "404" in out
    assert not (tmp_path / "data" / "lfw-py").exists()


def test_a_bad_download_is_refused_by_its_checksum(smoke_cfg, tmp_path, lfw_server, monkeypatch):
    base, served = lfw_server
    files = _local_files(base, served)
    files["pairs.txt"] = dataclasses.replace(files["pairs.txt"], md5="0" * 32)
    monkeypatch.setattr(lfw, "LFW_FILES", files)
    with pytest.raises(ib.data.download.ChecksumError, match="pairs.txt"):
        lfw.fetch_lfw(tmp_path / "data", progress=False)


# ------------------------------------------------------------------------------- the shared subset


@pytest.mark.skipif(not (SHARED / "pairs_5folds.txt").is_file(), reason="no shared LFW subset beside the checkout")
def test_the_shared_subset_has_five_folds_of_300_and_300_pairs():
    folds = lfw.make_folds(SHARED / "pairs_5folds.txt")
    assert [len(f.pairs) for f in folds] == [600] * 5
    assert all(sum(p.same for p in f.pairs) == 300 for f in folds)
    people = [set(f.people) for f in folds]
    assert all(not (a & b) for i, a in enumerate(people) for b in people[i + 1:])
    assert sum(len(p) for p in people) == 2070
    assert len(lfw.list_images(SHARED / "lfw")) == 3747
    assert all(lfw.lfw_image_path(SHARED / "lfw", n, i).is_file() for f in folds for p in f.pairs for n, i in p.images)
