"""imagenet_book.data.download against a real HTTP server on 127.0.0.1 (no other network).

The server (http.server.ThreadingHTTPServer on port 0, one per test) answers Range requests
with 206 + Content-Range, can be told to cut a response after N bytes or to ignore Range, and
logs every request. The archives are built by the tests.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import socket
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from imagenet_book.data import download as dl
from imagenet_book.files import DiskFullError

# ----------------------------------------------------------------------------- the server


@dataclass
class Request:
    path: str
    range: str | None
    status: int
    sent: int  # body bytes the server wrote


@dataclass
class Server:
    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes, for the next response
    ignore_range: bool = False
    fail_next: dict[str, int] = field(default_factory=dict)  # path -> HTTP status, once
    requests: list[Request] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path


def _handler(server: Server):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output quiet
            pass

        def do_GET(self):
            data = server.files.get(self.path)
            rng = self.headers.get("Range")
            error = 404 if data is None else server.fail_next.pop(self.path, None)
            if error:
                server.requests.append(Request(self.path, rng, error, 0))
                self.send_error(error)
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if match and not server.ignore_range:
                start = int(match.group(1))
                if start >= len(data):
                    server.requests.append(Request(self.path, rng, 416, 0))
                    self.send_error(416)
                    return
            body = data[start:]
            status = 206 if start else 200
            cut = server.cut_after.pop(self.path, None)
            sent = body if cut is None else body[:cut]
            server.requests.append(Request(self.path, rng, status, len(sent)))
            self.send_response(status)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))  # the full length, even when cut
            self.end_headers()
            self.wfile.write(sent)
            self.close_connection = True

    return Handler


@pytest.fixture(autouse=True)
def _network(only_localhost):
    """Every test here reaches 127.0.0.1 only (tests/conftest.py)."""


@pytest.fixture
def server():
    state = Server(base="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


# --------------------------------------------------------------------------- the archives

FILES = {  # incompressible payloads, so the archive is large enough to cut in half
    "toy/train/n01440764/a.bin": random.Random(0).randbytes(150_000),
    "toy/val/n01440764/b.bin": random.Random(1).randbytes(100_000),
    "toy/README.txt": b"a toy dataset\n",
}


def make_tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def tree(root: Path) -> list[str]:
    """Every path under root (files, folders, links), relative and sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def assert_extracted(root: Path) -> None:
    for name, data in FILES.items():
        assert (root / name).read_bytes() == data


# ------------------------------------------------------------------------------ download


def test_good_archive_downloads_verifies_and_extracts(server, tmp_path):
    archive = make_tgz(FILES)
    server.files["/toy.tgz"] = archive
    dest = tmp_path / "downloads" / "toy.tgz"

    got = dl.download(server.url("/toy.tgz"), dest, md5=md5(archive), progress=True,
                      chunk_size=16_384)

    assert got == dest and dest.read_bytes() == archive
    assert not dest.with_name("toy.tgz.part").exists()
    assert dl.extract(dest, tmp_path / "data") == tmp_path / "data"
    assert_extracted(tmp_path / "data")
    assert not [p for p in tmp_path.iterdir() if "extracting" in p.name]  # temp folder gone

    # Present and matching: not downloaded again.
    dl.download(server.url("/toy.tgz"), dest, md5=md5(archive), progress=False)
    assert len(server.requests) == 1


def test_cut_transfer_resumes_with_range_and_sends_only_the_missing_bytes(server, tmp_path):
    archive = make_tgz(FILES)
    half = len(archive) // 2
    server.files["/toy.tgz"] = archive
    server.cut_after["/toy.tgz"] = half
    dest = tmp_path / "toy.tgz"
    part = tmp_path / "toy.tgz.part"

    with pytest.raises(dl.DownloadError, match="connection closed after"):
        dl.download(server.url("/toy.tgz"), dest, md5=md5(archive), progress=False, attempts=1)
    assert not dest.exists()
    assert part.read_bytes() == archive[:half]  # the partial bytes are kept for the resume

    dl.download(server.url("/toy.tgz"), dest, md5=md5(archive), progress=False, chunk_size=8192)

    assert dest.read_bytes() == archive and not part.exists()
    first, second = server.requests
    assert first.range is None and first.sent == half
    assert second.range == f"bytes={half}-" and second.status == 206
    assert second.sent == len(archive) - half


def test_cut_transfer_resumes_within_one_call(server, tmp_path):
    archive = make_zip(FILES)
    server.files["/toy.zip"] = archive
    server.cut_after["/toy.zip"] = 1000
    dest = tmp_path / "toy.zip"

    dl.download(server.url("/toy.zip"), dest, sha256=hashlib.sha256(archive).hexdigest(),
                progress=False)

    assert dest.read_bytes() == archive
    assert [r.range for r in server.requests] == [None, "bytes=1000-"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    archive = make_tgz(FILES)
    server.files["/toy.tgz"] = archive
    server.ignore_range = True
    dest = tmp_path / "toy.tgz"
    (tmp_path / "toy.tgz.part").write_bytes(b"stale bytes of an older attempt")

    dl.download(server.url("/toy.tgz"), dest, md5=md5(archive), progress=False)

    assert dest.read_bytes() == archive  # the stale prefix was dropped, not kept
    assert server.requests[0].range is not None and server.requests[0].status == 200


def test_checksum_mismatch_is_clear_and_leaves_nothing(server, tmp_path):
    archive = make_tgz(FILES)
    server.files["/toy.tgz"] = archive
    wrong = "0" * 32
    dest = tmp_path / "toy.tgz"

    with pytest.raises(dl.ChecksumError) as err:
        dl.download(server.url("/toy.tgz"), dest, md5=wrong, progress=False)

    message = str(err.value)
    assert "toy.tgz" in message and wrong in message and md5(archive) in message
    assert "What to do" in message
    assert tree(tmp_path) == []  # no dest, no .part


def test_present_file_with_wrong_checksum_is_downloaded_again(server, tmp_path):
    archive = make_tgz(FILES)
    server.files["/toy.tgz"] = archive
    dest = tmp_path / "toy.tgz"
    dest.write_bytes(b"an older, different file")

    dl.download(server.url("/toy.tgz"), dest, md5=md5(archive), progress=False)

    assert dest.read_bytes() == archive and len(server.requests) == 1


def test_mirror_fallback_after_404(server, tmp_path):
    archive = make_tgz(FILES)
    server.files["/mirror/toy.tgz"] = archive
    dest = tmp_path / "toy.tgz"

    dl.download([server.url("/official/toy.tgz"), server.url("/mirror/toy.tgz")], dest,
                md5=md5(archive), progress=False)

    assert dest.read_bytes() == archive
    assert [(r.path, r.status) for r in server.requests] == [
        ("/official/toy.tgz", 404), ("/mirror/toy.tgz", 200)]  # a 404 is not retried


def test_server_error_is_retried_on_the_same_url(server, tmp_path):
    archive = make_tgz(FILES)
    server.files["/toy.tgz"] = archive
    server.fail_next["/toy.tgz"] = 503
    dl.download(server.url("/toy.tgz"), tmp_path / "toy.tgz", md5=md5(archive), progress=False)
    assert [r.status for r in server.requests] == [503, 200]


def test_all_urls_failing_raises_download_error(server, tmp_path):
    with pytest.raises(dl.DownloadError, match="HTTP 404") as err:
        dl.download([server.url("/a.tgz"), server.url("/b.tgz")], tmp_path / "x.tgz", md5="0" * 32,
                    progress=False)
    assert "/a.tgz" in str(err.value) and "/b.tgz" in str(err.value)
    assert not isinstance(err.value, dl.ChecksumError)
    assert tree(tmp_path) == []


def test_download_error_mentions_a_part_file_only_when_there_is_one(server, tmp_path):
    with pytest.raises(dl.DownloadError) as err:  # 404 everywhere: no byte was saved
        dl.download(server.url("/a.tgz"), tmp_path / "x.tgz", md5="0" * 32, progress=False)
    assert ".part" not in str(err.value) and tree(tmp_path) == []

    archive = make_tgz(FILES)
    server.files["/toy.tgz"] = archive
    server.cut_after["/toy.tgz"] = 1000
    with pytest.raises(dl.DownloadError) as err:  # cut: the .part is kept and named
        dl.download(server.url("/toy.tgz"), tmp_path / "toy.tgz", md5=md5(archive), progress=False,
                    attempts=1)
    part = tmp_path / "toy.tgz.part"
    assert part.stat().st_size == 1000
    assert str(part) in str(err.value) and "1,000 bytes" in str(err.value)


# ----------------------------------------------------------------- stalled and silent hosts


@pytest.fixture
def silent_host():
    """A TCP server on 127.0.0.1 that accepts every connection and never answers (a read stall).
    Yields its URL base and the list of accepted connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:  # timeout: look at stop again
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.fixture
def unreachable_host():
    """A port on 127.0.0.1 whose connections never complete: a listening socket whose backlog
    is full and that never accepts, so the kernel drops new SYNs (a connect timeout)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):  # fill the accept queue; later SYNs are dropped
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    for sock in fillers + [listener]:
        sock.close()


def test_stalled_and_unreachable_hosts_fail_fast_and_each_try_is_reported(
        silent_host, unreachable_host, tmp_path, capsys):
    import time

    stalled, accepted = silent_host
    urls = [unreachable_host + "/x.tgz", stalled + "/x.tgz"]
    started = time.perf_counter()
    with pytest.raises(dl.DownloadError) as err:
        dl.download(urls, tmp_path / "x.tgz", md5="0" * 32, progress=False, attempts=3,
                    connect_timeout=0.2, timeout=0.3)
    elapsed = time.perf_counter() - started
    assert elapsed < 4, f"took {elapsed:.1f} s"
    lines = [line for line in capsys.readouterr().out.splitlines() if "x.tgz" in line]
    # The host that cannot be reached is tried once (then the next mirror), the one that stalls
    # three times; every try says which host failed and why.
    assert len(lines) == 4, lines
    assert unreachable_host.split("//")[1] in lines[0] and "could not connect" in lines[0]
    assert "next URL" in lines[0]
    assert all(stalled.split("//")[1] in line and "timed out" in line for line in lines[1:])
    assert len(accepted) == 3
    assert str(err.value).count("timed out") == 4


def test_size_and_head_md5_check(server, tmp_path):
    archive = make_tgz(FILES)
    server.files["/toy.tgz"] = archive
    dl.download(server.url("/toy.tgz"), tmp_path / "ok.tgz", size=len(archive),
                head_md5=md5(archive[: 1 << 20]), progress=False)
    with pytest.raises(dl.ChecksumError, match="size is"):
        dl.download(server.url("/toy.tgz"), tmp_path / "bad.tgz", size=len(archive) + 1,
                    head_md5=md5(archive[: 1 << 20]), progress=False)
    assert not (tmp_path / "bad.tgz").exists() and not (tmp_path / "bad.tgz.part").exists()


# ------------------------------------------------------------------------------- extract


@pytest.fixture(params=["data_filter", "fallback"])
def tar_checks(request, monkeypatch):
    """Run a tar test with tarfile's 'data' filter and with the module's own fallback checks."""
    if request.param == "data_filter" and dl._data_filter is None:
        pytest.skip("this Python has no tarfile.data_filter")
    if request.param == "fallback":
        monkeypatch.setattr(dl, "_data_filter", None)
    return request.param


def evil_tar(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("toy/ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))  # a good member first: it must not be left behind
        member.size = len(data) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(data))
    return path


def assert_refused(archive: Path, dest: Path, member: str, outside: Path, why: str = "") -> None:
    before = tree(dest.parent)
    with pytest.raises(dl.UnsafeArchiveError) as err:
        dl.extract(archive, dest)
    assert str(archive) in str(err.value) and repr(member) in str(err.value)
    assert why in str(err.value)
    assert tree(dest.parent) == before  # nothing inside dest, no temp folder left beside it
    assert not outside.exists()


def tar_member(name: str, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def test_tar_with_dotdot_member_is_refused(tar_checks, tmp_path):
    archive = evil_tar(tmp_path / "evil.tgz", tar_member("../evil"), b"pwned")
    dest = tmp_path / "work" / "data"
    assert_refused(archive, dest, "../evil", outside=tmp_path / "work" / "evil", why="'..'")


def test_tar_with_dotdot_staying_inside_is_still_refused(tar_checks, tmp_path):
    archive = evil_tar(tmp_path / "evil.tgz", tar_member("toy/../inside"), b"sneaky")
    assert_refused(archive, tmp_path / "work" / "data", "toy/../inside", outside=tmp_path / "x",
                   why="'..'")


def test_tar_with_absolute_member_is_refused(tar_checks, tmp_path):
    target = tmp_path / "abs_evil"
    archive = evil_tar(tmp_path / "evil.tgz", tar_member(str(target)), b"pwned")
    assert_refused(archive, tmp_path / "work" / "data", str(target), outside=target,
                   why="absolute")


def test_tar_with_link_escaping_is_refused(tar_checks, tmp_path):
    link = tar_member("toy/link", type=tarfile.SYMTYPE, linkname="../../../outside")
    archive = evil_tar(tmp_path / "evil.tgz", link)
    assert_refused(archive, tmp_path / "work" / "data", "toy/link", outside=tmp_path / "outside")


def test_tar_with_chained_links_escaping_is_refused(tar_checks, tmp_path):
    """Each link looks harmless alone; together x/y/z points above the destination."""
    archive = tmp_path / "evil.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(tar_member("x", type=tarfile.DIRTYPE, mode=0o755))
        tar.addfile(tar_member("x/y", type=tarfile.SYMTYPE, linkname=".."))
        tar.addfile(tar_member("x/y/z", type=tarfile.SYMTYPE, linkname=".."))
        evil = tar_member("x/y/z/evil", size=5)
        tar.addfile(evil, io.BytesIO(b"pwned"))
    dest = tmp_path / "work" / "data"
    assert_refused(archive, dest, "x/y/z", outside=tmp_path / "work" / "evil")


def test_tar_with_device_is_refused(tar_checks, tmp_path):
    device = tar_member("toy/dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
    archive = evil_tar(tmp_path / "evil.tgz", device)
    assert_refused(archive, tmp_path / "work" / "data", "toy/dev", outside=tmp_path / "none")


def test_good_tar_extracts_with_either_check(tar_checks, tmp_path):
    archive = tmp_path / "toy.tgz"
    archive.write_bytes(make_tgz(FILES))
    dl.extract(archive, tmp_path / "data")
    assert_extracted(tmp_path / "data")


@pytest.mark.parametrize("name", ["../evil", "/abs_evil", "toy/../../evil", "toy/../inside"])
def test_zip_with_unsafe_member_is_refused(tmp_path, name):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(make_zip({"toy/ok.txt": b"ok", name: b"pwned"}))
    dest = tmp_path / "work" / "data"
    why = "absolute" if name.startswith("/") else "'..'"
    assert_refused(archive, dest, name, outside=tmp_path / "work" / "evil", why=why)
    assert not Path("/abs_evil").exists()


def test_extract_merges_archives_sharing_a_folder(tmp_path):
    """VOC2007 trainval and test both extract into VOCdevkit/VOC2007."""
    root = tmp_path / "data"
    trainval, test = tmp_path / "trainval.tar", tmp_path / "test.zip"
    trainval.write_bytes(make_tgz({"VOCdevkit/VOC2007/ImageSets/Main/trainval.txt": b"000005\n"}))
    test.write_bytes(make_zip({"VOCdevkit/VOC2007/ImageSets/Main/test.txt": b"000001\n"}))
    dl.extract(trainval, root)
    dl.extract(test, root)
    main = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    assert sorted(p.name for p in main.iterdir()) == ["test.txt", "trainval.txt"]


# ------------------------------------------------------------------------- fetch_dataset


def toy_source(server: Server, archive: bytes, **check) -> dl.DatasetSource:
    server.files["/toy.tgz"] = archive
    return dl.DatasetSource("toy", (server.url("/missing/toy.tgz"), server.url("/toy.tgz")),
                            "toy.tgz", "toy", **check)


def test_fetch_dataset_downloads_verifies_extracts_once(server, tmp_path, monkeypatch):
    archive = make_tgz(FILES)
    monkeypatch.setitem(dl.DATASETS, "toy", toy_source(server, archive, md5=md5(archive)))
    root = tmp_path / "data"

    folder = dl.fetch_dataset("toy", root, allow_download=True, progress=False)

    assert folder == root / "toy"
    assert_extracted(root)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temp folder beside the root
    assert [p.name for p in root.iterdir()] == ["toy"]  # archive deleted, no .part
    n = len(server.requests)
    assert dl.fetch_dataset("toy", root, allow_download=True, progress=False) == folder
    assert len(server.requests) == n  # already there: no request at all


def test_a_full_disk_keeps_what_came_and_the_same_call_finishes_once_there_is_room(
        server, small_disk, monkeypatch):
    """A 3 MB archive onto a 2 MiB disk: said at once (no retry, no mirror: they would fill the
    same disk), the bytes received kept; grown to 5 MiB, the download resumes but the content does
    not fit beside the archive: nothing extracted, the archive kept; grown to 16 MiB, the same call
    extracts it without downloading again."""
    big = random.Random(2).randbytes(3_000_000)
    archive = make_tgz({"toy/train/n01440764/big.bin": big, "toy/README.txt": b"a toy dataset\n"})
    monkeypatch.setitem(dl.DATASETS, "toy", toy_source(server, archive, md5=md5(archive)))
    root = small_disk.path / "data"
    part = root / "toy.tgz.part"

    with pytest.raises(DiskFullError) as caught:
        dl.fetch_dataset("toy", root, allow_download=True, progress=False)
    message = str(caught.value)
    assert message.startswith("The disk is full") and str(part) in message
    assert "resumes" in message and "IMAGENET_BOOK_DATA" in message
    received = part.stat().st_size
    assert 0 < received < len(archive) and tree(root) == ["toy.tgz.part"]
    assert [r.path for r in server.requests] == ["/missing/toy.tgz", "/toy.tgz"]

    small_disk.resize("5m")
    with pytest.raises(DiskFullError, match="extracting") as caught:
        dl.fetch_dataset("toy", root, allow_download=True, progress=False)
    assert server.requests[-1].range == f"bytes={received}-"  # resumed where it stopped
    assert "toy.tgz is kept" in str(caught.value)
    assert tree(small_disk.path) == ["data", "data/toy.tgz"]  # no partial copy, no temp folder
    assert (root / "toy.tgz").read_bytes() == archive

    small_disk.resize("16m")
    n = len(server.requests)
    folder = dl.fetch_dataset("toy", root, allow_download=True, progress=False)
    assert len(server.requests) == n  # the kept archive: no new download
    assert (folder / "train/n01440764/big.bin").read_bytes() == big
    assert tree(root) == ["toy", "toy/README.txt", "toy/train", "toy/train/n01440764",
                          "toy/train/n01440764/big.bin"]  # and the archive deleted as usual


def test_fetch_dataset_checksum_mismatch_extracts_nothing(server, tmp_path, monkeypatch):
    archive = make_tgz(FILES)
    monkeypatch.setitem(dl.DATASETS, "toy", toy_source(server, archive, md5="f" * 32))
    root = tmp_path / "data"
    with pytest.raises(dl.ChecksumError, match="toy.tgz"):
        dl.fetch_dataset("toy", root, allow_download=True, progress=False)
    assert tree(tmp_path) == ["data"]  # only the (empty) data root: no archive, .part or files


def test_fetch_dataset_without_download_raises_a_clear_error(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(dl.DatasetNotFoundError) as err:
        dl.fetch_dataset("imagenette2-160", root, allow_download=False)
    message = str(err.value)
    assert str(root / "imagenette2-160") in message
    assert "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz" in message
    assert "IMAGENET_BOOK_DATA" in message and "full profile" in message
    assert not root.exists()  # nothing created

    with pytest.raises(dl.DatasetNotFoundError, match=re.escape("ImageSets/Main/test.txt")):
        dl.fetch_dataset("voc2007-test", root, allow_download=False)


def test_fetch_dataset_returns_a_folder_already_there(tmp_path):
    (tmp_path / "imagenette2-160" / "train").mkdir(parents=True)
    got = dl.fetch_dataset("imagenette2-160", tmp_path, allow_download=False)
    assert got == tmp_path / "imagenette2-160"
    with pytest.raises(ValueError, match="Unknown dataset"):
        dl.fetch_dataset("imagenet-22k", tmp_path, allow_download=False)


# ------------------------------------------------------------------------------ registry


def test_registry_has_a_checksum_and_well_formed_urls_for_every_entry():
    expected = {"imagenette2", "imagenette2-320", "imagenette2-160", "imagewoof2", "imagewoof2-320",
                "imagewoof2-160", "tiny-imagenet-200", "voc2007-trainval", "voc2007-test",
                "voc2012-trainval"}
    assert expected <= set(dl.DATASETS)
    for name, source in dl.DATASETS.items():
        assert source.name == name
        has_digest = bool(source.md5 or source.sha256)
        assert has_digest or (source.size and source.head_md5), f"{name} has no checksum"
        for digest, length in ((source.md5, 32), (source.sha256, 64), (source.head_md5, 32)):
            assert digest is None or re.fullmatch(f"[0-9a-f]{{{length}}}", digest), name
        assert source.checksum_from, f"{name}: where does its checksum come from?"
        assert source.urls and len(set(source.urls)) == len(source.urls)
        for url in source.urls:
            parts = urlparse(url)
            assert parts.scheme in ("http", "https") and parts.netloc and " " not in url, url
            assert parts.path.endswith("/" + source.filename), url
        assert not Path(source.folder).is_absolute() and ".." not in Path(source.folder).parts


def test_registry_digests_agree_with_torchvision():
    """Guard against typos: the values we took from torchvision are still torchvision's."""
    imagenette = pytest.importorskip("torchvision.datasets.imagenette")
    voc = pytest.importorskip("torchvision.datasets.voc")
    for size, (url, md5_) in imagenette.Imagenette._ARCHIVES.items():
        name = Path(urlparse(url).path).stem
        assert dl.DATASETS[name].md5 == md5_ and dl.DATASETS[name].urls[0] == url
    for key, name in (("2007", "voc2007-trainval"), ("2007-test", "voc2007-test"),
                      ("2012", "voc2012-trainval")):
        entry = voc.DATASET_YEAR_DICT[key]
        assert dl.DATASETS[name].md5 == entry["md5"]
        assert dl.DATASETS[name].filename == entry["filename"]
        assert entry["url"] in dl.DATASETS[name].urls
