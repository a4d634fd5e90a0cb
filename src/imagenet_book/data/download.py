"""Checksummed, resumable downloads and safe archive extraction: the full profile's data path.

:data:`DATASETS` (official URL, mirrors, checksum and its source) -> :func:`download` (resumes a
``.part`` file with HTTP Range; renames it only once verified) -> :func:`extract` (refuses members
escaping the destination; all-or-nothing) -> :func:`fetch_dataset` (the call a chapter makes).
Standard library (urllib, hashlib, tarfile, zipfile) + tqdm only.

Taught in: chapters/06_pretraining.ipynb
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Sequence

from tqdm.auto import tqdm

from ..errors import BookError
from ..files import full_disk_error

__all__ = ["DATASETS", "DATA_ROOT_SETTINGS", "DatasetSource", "DownloadError", "ChecksumError", "UnsafeArchiveError",
           "DatasetNotFoundError", "download", "extract", "fetch_dataset", "reachable"]

_MiB = 1 << 20
#: How a user sets the data root, for messages: wherever it came from, each of these replaces it.
DATA_ROOT_SETTINGS = ("the data root (env IMAGENET_BOOK_DATA, ib.start(data_root=...), or the "
                      "command line's --data-root)")
#: Seconds to wait for a host to accept the connection. A host that does not is not tried again:
#: the next URL (mirror) is.
CONNECT_TIMEOUT = 10.0
#: Seconds to wait for the next bytes from a connected host (a stall); that try is then retried.
READ_TIMEOUT = 60.0
#: Seconds :func:`reachable` waits for a host to connect, and again for its answer: what an
#: offline machine pays (at most) before a profile that may do without the data falls back.
PROBE_TIMEOUT = 3.0
# Python >= 3.12, and 3.8.17 / 3.9.17 / 3.10.12 / 3.11.4 backports (PEP 706). None: our own checks.
_data_filter = getattr(tarfile, "data_filter", None)


class DownloadError(BookError, RuntimeError):
    """No URL gave a complete file that passes its checksum."""


class ChecksumError(DownloadError):
    """A downloaded file's digest (or size) differs from the one on record."""


class UnsafeArchiveError(BookError, ValueError):
    """An archive member would land outside the destination, or is a device or unsafe link."""


class DatasetNotFoundError(BookError, FileNotFoundError):
    """A dataset folder is missing from the data root and downloading is not allowed."""


@dataclass(frozen=True)
class DatasetSource:
    """Where one dataset archive comes from, how to check it, and what it extracts to.

    Attributes:
        name: registry key, e.g. ``"imagenette2-160"``.
        urls: the official URL first, then mirrors serving the same bytes.
        filename: the archive's file name in the data root.
        folder: the dataset folder the archive creates, relative to the data root.
        marker: relative path that exists only once THIS archive is extracted (``""``: the
            folder). VOC2007 trainval and test share their folder.
        md5, sha256: hex digest of the whole archive.
        size, head_md5: fast.ai's own check (bytes, MD5 of the first MiB), used only where no
            whole-file digest of the current archive could be verified.
        checksum_from: where the checksum on record was taken from.
    """

    name: str
    urls: tuple[str, ...]
    filename: str
    folder: str
    marker: str = ""
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    head_md5: str | None = None
    checksum_from: str = ""


_FASTAI = "https://s3.amazonaws.com/fast-ai-imageclas/"
_TV_IMAGENETTE = "torchvision/datasets/imagenette.py (Imagenette._ARCHIVES, torchvision 0.29)"
_FASTAI_CHECKS = ("fastai/data/checks.txt [size, md5 of first MiB]; no whole-file digest of the "
                  "current upload could be verified (catalyst and FastAI.jl list older uploads')")
_TV_VOC = "torchvision/datasets/voc.py (DATASET_YEAR_DICT, torchvision 0.29)"
# VOC: official host (torchvision 0.29), Joseph Redmon's long-standing mirror, the old official host.
_VOC_HOSTS = ("https://thor.robots.ox.ac.uk/pascal/VOC/voc{year}/", "https://pjreddie.com/media/files/",
              "http://host.robots.ox.ac.uk/pascal/VOC/voc{year}/")


def _fastai(name: str, **check) -> DatasetSource:
    return DatasetSource(name, (f"{_FASTAI}{name}.tgz",), f"{name}.tgz", name, **check)


def _voc(name: str, year: int, filename: str, md5: str, marker: str) -> DatasetSource:
    return DatasetSource(name, tuple(h.format(year=year) + filename for h in _VOC_HOSTS), filename,
                         f"VOCdevkit/VOC{year}", f"VOCdevkit/VOC{year}/{marker}", md5=md5,
                         checksum_from=_TV_VOC)


DATASETS: dict[str, DatasetSource] = {s.name: s for s in [
    # Whole-file MD5s: torchvision/datasets/imagenette.py, Imagenette._ARCHIVES.
    _fastai("imagenette2", md5="fe2fc210e6bb7c5664d602c3cd71e612", checksum_from=_TV_IMAGENETTE),
    _fastai("imagenette2-320", md5="3df6f0d01a2c9592104656642f5e78a3", checksum_from=_TV_IMAGENETTE),
    _fastai("imagenette2-160", md5="e793b78cc4c9e9a4ccc0c1155377a412", checksum_from=_TV_IMAGENETTE),
    # torchvision has no Imagewoof. The archives were re-uploaded (2021, noisy labels), and the
    # whole-file digests found elsewhere (catalyst: two different MD5s over time; FastAI.jl and
    # DLDatasets.jl: SHA-256s) could NOT be verified against the current files, so none is
    # recorded. We use fast.ai's own check instead: exact size + MD5 of the first MiB, from
    # fastai/fastai fastai/data/checks.txt (the values fastai's untar_data verifies).
    _fastai("imagewoof2", size=1343715595, head_md5="2cc1c1e36e20cb6fd24ffb978edcb487",
            checksum_from=_FASTAI_CHECKS),
    _fastai("imagewoof2-320", size=328387740, head_md5="7a1fd92672a559a85de76e4810a20c21",
            checksum_from=_FASTAI_CHECKS),
    _fastai("imagewoof2-160", size=92612825, head_md5="3559b194123981a540b87132dbda412f",
            checksum_from=_FASTAI_CHECKS),
    # MD5 from ContinualAI/avalanche avalanche/benchmarks/datasets/tiny_imagenet/tiny_imagenet.py
    # (the same value is in many other loaders). No mirror with the same bytes is known.
    DatasetSource("tiny-imagenet-200", ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",),
                  "tiny-imagenet-200.zip", "tiny-imagenet-200", md5="90528d7ca1a48142e341f4ef8d21d0de",
                  checksum_from="ContinualAI/avalanche tiny_imagenet.py"),
    # MD5s: torchvision/datasets/voc.py, DATASET_YEAR_DICT ("2007", "2007-test", "2012").
    _voc("voc2007-trainval", 2007, "VOCtrainval_06-Nov-2007.tar", "c52e279531787c972589f7e41ab4ae64",
         "ImageSets/Main/trainval.txt"),
    _voc("voc2007-test", 2007, "VOCtest_06-Nov-2007.tar", "b6e924de25625d8de591ea690078ad9f",
         "ImageSets/Main/test.txt"),
    _voc("voc2012-trainval", 2012, "VOCtrainval_11-May-2012.tar", "6cd6e144f989b92b3379bac3b3de84fd",
         "ImageSets/Main/trainval.txt"),
]}


# ----------------------------------------------------------------------------------- download
def _check(path: Path, md5=None, sha256=None, size=None, head_md5=None) -> str | None:
    """None if ``path`` meets every expectation given, else a sentence saying what differs."""
    actual_size = path.stat().st_size
    problems = [f"size is {actual_size:,} bytes, expected {size:,}"] if size not in (None, actual_size) else []
    hashes = {algo: hashlib.new(algo) for algo, want in (("md5", md5), ("sha256", sha256)) if want}
    with open(path, "rb") as f:
        if head_md5:
            hashes["md5 of the first MiB"] = hashlib.md5(f.read(_MiB))
            f.seek(0)
        for block in iter(lambda: f.read(_MiB), b"") if md5 or sha256 else ():
            for algo in ("md5", "sha256"):
                if algo in hashes:
                    hashes[algo].update(block)
    for algo, want in (("md5", md5), ("sha256", sha256), ("md5 of the first MiB", head_md5)):
        if want and hashes[algo].hexdigest() != want.lower():
            problems.append(f"{algo} is {hashes[algo].hexdigest()}, expected {want.lower()}")
    return "; ".join(problems) or None


class _ConnectError(OSError):
    """The host did not accept the connection (timed out, refused, unknown name)."""


def _opener(read_timeout: float) -> urllib.request.OpenerDirector:
    """urllib, but each connection switches from the connect timeout to ``read_timeout`` once
    it is established (urllib itself has one timeout for both)."""

    def connected(connection_class):
        class Connection(connection_class):
            def connect(self):
                super().connect()  # TCP (and TLS) under self.timeout: the connect timeout
                self.sock.settimeout(read_timeout)
        return Connection

    http_connection = connected(http.client.HTTPConnection)
    https_connection = connected(http.client.HTTPSConnection)

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(http_connection, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(https_connection, req, context=self._context)

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler)


def _fetch(url: str, part: Path, *, progress: bool, chunk_size: int, timeout: float,
           connect_timeout: float) -> bool:
    """Append the rest of ``url`` to ``part`` (or write it whole). Returns whether it resumed.

    Raises _ConnectError when the host cannot be reached, HTTPError, or OSError/HTTPException
    when a connected transfer stalls or is cut."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "imagenet_book downloader (urllib)"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = _opener(timeout).open(urllib.request.Request(url, headers=headers),
                                         timeout=connect_timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the .part is not a prefix of this file: start again
            part.unlink()
            return _fetch(url, part, progress=progress, chunk_size=chunk_size, timeout=timeout,
                          connect_timeout=connect_timeout)
        raise
    except urllib.error.URLError as err:  # raised before the request was sent: no connection
        reason = err.reason
        if isinstance(reason, TimeoutError):
            reason = f"timed out after {connect_timeout:g} s"
        raise _ConnectError(f"could not connect ({reason})") from err
    with response:
        resumed = response.status == 206
        if resumed:
            start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not start or int(start.group(1)) != offset:
                part.unlink()
                raise ConnectionError(f"server resumed at the wrong byte ({start and start.group(0)})")
        offset = offset if resumed else 0  # 200: the server sent the whole file, restart cleanly
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        received = 0
        with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=None if expected is None else offset + expected, initial=offset, unit="B",
                unit_scale=True, unit_divisor=1024, desc=part.name[:-5], disable=not progress) as bar:
            while chunk := response.read(chunk_size):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected is not None and received < expected:  # urllib returns b"" when cut: check ourselves
        raise ConnectionError(f"connection closed after {offset + received:,} of {offset + expected:,}"
                              f" bytes (kept {part.name}; it resumes from there)")
    return resumed


def reachable(urls: str | Sequence[str], *, timeout: float | None = None) -> str | None:
    """Whether a download could start: an HTTP ``HEAD`` of each URL in turn, with a short timeout.

    The same connection code as :func:`download` (urllib, so proxy settings apply alike). No
    file is written and nothing is printed: the caller decides what to say. An unknown host name
    or a refused connection fails at once; a host that does not answer within ``timeout`` (for
    the connection, then again for the answer) fails after it.

    Args:
        urls: one URL, or several (official, then mirrors): the first that answers is enough.
        timeout: seconds (default :data:`PROBE_TIMEOUT`, 3 s).

    Returns:
        ``None`` when a host answered (any status below 400, or 405: it does not take ``HEAD``),
        else one line saying why each URL could not be reached.

    Taught in: chapters/06_pretraining.ipynb
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    timeout = PROBE_TIMEOUT if timeout is None else timeout
    reasons = []
    for url in urls:
        host = urllib.parse.urlsplit(url).netloc
        request = urllib.request.Request(url, method="HEAD",
                                         headers={"User-Agent": "imagenet_book downloader (urllib)"})
        try:
            with _opener(timeout).open(request, timeout=timeout):
                return None
        except urllib.error.HTTPError as err:
            if err.code == 405:  # the host is there; it only refuses HEAD
                return None
            reasons.append(f"{host}: HTTP {err.code} {err.reason}")
        except (OSError, http.client.HTTPException) as err:  # URLError is an OSError
            reason = getattr(err, "reason", None) or err
            if isinstance(reason, TimeoutError):
                reason = f"no answer within {timeout:g} s"
            reasons.append(f"{host}: {reason}")
    return "; ".join(reasons) or "no URL"


def download(url_or_urls: str | Sequence[str], dest: str | os.PathLike, *, md5: str | None = None,
             sha256: str | None = None, size: int | None = None, head_md5: str | None = None,
             progress: bool = True, chunk_size: int = _MiB, timeout: float | None = None,
             connect_timeout: float | None = None, attempts: int = 3) -> Path:
    """Download a file, trying each URL in order, resuming cut transfers, verifying it.

    Bytes go to ``dest + ".part"``. If that file exists (a cut transfer), the request carries
    ``Range: bytes=N-`` and appends on a 206 answer (a 200 restarts cleanly). The ``.part`` file
    is renamed to ``dest`` only once every given check passes; one that fails is deleted. A
    ``dest`` already present that passes the checks is not downloaded again.

    Every failed try is printed at once (URL, host, reason, what happens next). A host that does
    not accept the connection within ``connect_timeout`` is not tried again: the next URL is. A
    connected transfer that stalls for ``timeout`` seconds, or is cut, is tried again (it resumes).
    With the defaults a dead host costs 10 s, a stalled one 3 x 60 s, each reported as it fails.

    Args:
        url_or_urls: one URL, or several: the official one first, then mirrors.
        dest: final path of the file.
        md5, sha256: expected hex digest of the whole file.
        size, head_md5: expected size in bytes / MD5 of the first MiB (fast.ai's own check).
        progress: show a tqdm bar (total from Content-Length).
        chunk_size: bytes read per step.
        timeout: seconds to wait for the next bytes from a connected server (default
            :data:`READ_TIMEOUT`, 60 s).
        connect_timeout: seconds to wait for a server to accept the connection (default
            :data:`CONNECT_TIMEOUT`, 10 s).
        attempts: tries per URL; each resumes where the last one was cut.

    Returns:
        ``Path(dest)``, complete and verified.

    Raises:
        ChecksumError: a complete download failed its check (message: file, expected and actual
            digest, what to do).
        DownloadError: no URL gave a complete file (the message lists each try's failure, and
            names the partial ``.part`` file when one was kept).
        DiskFullError: the disk filled up (:mod:`imagenet_book.files`); the ``.part`` file is
            kept, to resume from once there is room. Not retried: another try fills the same disk.

    Taught in: chapters/06_pretraining.ipynb
    """
    urls = [url_or_urls] if isinstance(url_or_urls, str) else list(url_or_urls)
    if not urls:
        raise ValueError("download() needs at least one URL")
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    expect = dict(md5=md5, sha256=sha256, size=size, head_md5=head_md5)
    if dest.exists():
        problem = _check(dest, **expect)
        if problem is None:
            return dest
        print(f"{dest} is present but its {problem}: downloading it again.")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    timeout = READ_TIMEOUT if timeout is None else timeout
    connect_timeout = CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
    attempts = max(1, attempts)
    failures: list[str] = []
    mismatch = None

    def failed(url: str, k: int, why: str, next_step: str) -> None:
        failures.append(f"{url}: {why}")
        host = urllib.parse.urlsplit(url).netloc
        print(f"download {dest.name}: try {k}/{attempts} of {url} failed (host {host}: {why}); "
              f"{next_step}.", flush=True)

    for u, url in enumerate(urls):
        after = "trying the next URL" if u + 1 < len(urls) else "no URL left"
        for k in range(1, attempts + 1):
            again = "trying it again" if k < attempts else after
            try:
                resumed = _fetch(url, part, progress=progress, chunk_size=chunk_size, timeout=timeout,
                                 connect_timeout=connect_timeout)
            except urllib.error.HTTPError as err:
                if err.code < 500:  # 403, 404...: retrying this URL will not help
                    failed(url, k, f"HTTP {err.code} {err.reason}", after)
                    break
                failed(url, k, f"HTTP {err.code} {err.reason}", again)
                continue
            except _ConnectError as err:  # a host that does not answer: go on to the mirror
                failed(url, k, str(err), after)
                break
            except (OSError, http.client.HTTPException) as err:  # stalled (timed out), cut
                received = part.stat().st_size if part.exists() else 0
                full = full_disk_error(
                    err, part, f"The {received / _MiB:.1f} MiB received so far are kept in "
                    f"{part.name}. To fix it, free space on that disk and run the same command again (the "
                    f"download resumes there), or set {DATA_ROOT_SETTINGS} to a folder on a bigger disk.")
                if full is not None:  # no retry, no mirror: they would fill the same disk
                    raise full from err
                why = f"timed out: no data for {timeout:g} s" if isinstance(err, TimeoutError) else str(err)
                failed(url, k, why or type(err).__name__, again)
                continue
            problem = _check(part, **expect)
            if problem is None:
                os.replace(part, dest)
                return dest
            part.unlink()  # never leave bytes that could pass for the file
            failures.append(f"{url}: {problem}")
            mismatch = (url, problem)
            if not resumed:  # a fresh, complete copy fails: this URL serves other bytes
                break
    tried = "\n  ".join(failures)
    if mismatch:
        raise ChecksumError(
            f"Checksum mismatch for {dest.name} downloaded from {mismatch[0]}: {mismatch[1]}.\n"
            f"The bad file was deleted; nothing was saved as {dest}.\nWhat to do: run again (a "
            f"transfer can be corrupted). If it fails again, the file on the server has changed: "
            f"download it by hand, check it, put it at {dest}, and report the new checksum.\n"
            f"Tried:\n  {tried}")
    kept = (f"The partial file {part} ({part.stat().st_size:,} bytes) was kept: running again "
            f"resumes from there." if part.exists() else "Nothing was saved.")
    raise DownloadError(f"Could not download {dest.name}. Tried:\n  {tried}\n{kept}\n"
                        f"Check the connection (and that the URLs open in a browser), then run again.")


# ------------------------------------------------------------------------------------ extract
def _refuse(archive: Path, name: str, why: str) -> None:
    raise UnsafeArchiveError(f"Refusing to extract {archive}: member {name!r} {why}. Nothing was "
                             f"extracted. Delete the archive and download it from the official URL.")


def _inside(path: Path | str, root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def _check_path(archive: Path, name: str, root: Path) -> None:
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        _refuse(archive, name, "is an absolute path")
    if ".." in re.split(r"[/\\]+", name):
        _refuse(archive, name, "has a '..' component")
    if not _inside(root / name, root):
        _refuse(archive, name, "resolves outside the destination")


def _check_tar_member(archive: Path, member: tarfile.TarInfo, root: Path) -> None:
    _check_path(archive, member.name, root)
    if _data_filter is not None:
        try:
            _data_filter(member, str(root))
        except tarfile.FilterError as err:
            _refuse(archive, member.name, f"was refused by tarfile's 'data' filter ({err})")
        return
    # The same checks by hand, for Pythons without tarfile.data_filter.
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        _refuse(archive, member.name, "is a device, fifo or other special file")
    if member.issym() or member.islnk():
        if member.linkname.startswith(("/", "\\")) or PureWindowsPath(member.linkname).drive:
            _refuse(archive, member.name, f"links to the absolute path {member.linkname!r}")
        base = root / PurePosixPath(member.name).parent if member.issym() else root
        if not _inside(base / member.linkname, root):
            _refuse(archive, member.name, f"links outside the destination ({member.linkname!r})")
    # As the data filter: no setuid/setgid/sticky bits, no group/other write, owner can write.
    member.mode = 0o755 if member.isdir() else (member.mode & 0o755) | 0o600


def _move_into(src: Path, dst: Path) -> None:
    """Move the tree ``src`` to ``dst``, merging with folders already there (VOCdevkit/...)."""
    if not dst.exists():
        os.replace(src, dst)
        return
    for child in sorted(src.iterdir()):
        target = dst / child.name
        if child.is_dir() and not child.is_symlink() and target.is_dir() and not target.is_symlink():
            _move_into(child, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(child, target)


def extract(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Safely extract a tar (any compression) or zip archive into ``dest_dir``.

    Absolute paths, ``..`` components, paths resolving outside ``dest_dir``, links pointing
    outside it and devices are refused (tar: ``tarfile``'s ``"data"`` filter where Python has it,
    the same checks by hand otherwise). Extraction goes to a temporary folder beside ``dest_dir``,
    then moves into place (merging existing folders): a refused or failed one leaves nothing.

    Args:
        archive: a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` file.
        dest_dir: folder that receives the archive's top-level entries (created if missing).

    Returns:
        ``Path(dest_dir)``.

    Raises:
        UnsafeArchiveError: a member is unsafe (the message names the archive and the member).
        ValueError: the file is neither a tar nor a zip archive.
        DiskFullError: the disk filled up; nothing of the archive is left in ``dest_dir``.

    Taught in: chapters/06_pretraining.ipynb
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.extracting-", dir=dest_dir.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    _check_path(archive, name, tmp)
                zf.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                for member in members:  # refuse before writing anything...
                    _check_tar_member(archive, member, tmp)
                data = {"filter": "data"} if _data_filter is not None else {}
                for member in members:  # ...and as written: links extracted earlier now resolve
                    _check_tar_member(archive, member, tmp)
                    tar.extract(member, tmp, **data)
        else:
            raise ValueError(f"{archive} is neither a tar nor a zip archive")
        tmp.chmod(0o755)
        _move_into(tmp, dest_dir)
    except OSError as err:
        full = full_disk_error(err, tmp, f"Nothing of it is left in {str(dest_dir)!r} and {archive.name} is "
                               "kept. To fix it, free space on that disk and run the same command again "
                               f"(it extracts the kept archive, no new download), or set "
                               f"{DATA_ROOT_SETTINGS} to a folder on a bigger disk.",
                               doing=f"extracting {str(archive)!r} into {str(dest_dir)!r}")
        if full is not None:
            raise full from err
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest_dir


# ------------------------------------------------------------------------------ fetch_dataset
def _describe_check(source: DatasetSource) -> str:
    if source.md5 or source.sha256:
        return f"md5 {source.md5}" if source.md5 else f"sha256 {source.sha256}"
    return f"{source.size:,} bytes, md5 of the first MiB {source.head_md5}"


def fetch_dataset(name: str, data_root: str | os.PathLike, *, allow_download: bool,
                  progress: bool = True, keep_archive: bool = False) -> Path:
    """Return the folder of dataset ``name`` under ``data_root``, downloading it if allowed.

    Already extracted there: returned as is. Otherwise, if ``allow_download`` (the full profile),
    the archive is downloaded (official URL, then mirrors), verified, extracted into
    ``data_root`` and, unless ``keep_archive``, deleted.

    Args:
        name: a key of :data:`DATASETS`, e.g. ``"imagenette2-160"`` or ``"voc2007-test"``.
        data_root: the data root (``cfg.data_root`` from ``ib.start()``).
        allow_download: whether the internet may be used (``cfg.profile.allow_download``).
        progress: show tqdm bars while downloading.
        keep_archive: keep the downloaded archive after extraction.

    Returns:
        The dataset folder, e.g. ``data_root / "imagenette2-160"`` or ``.../VOCdevkit/VOC2007``.

    Raises:
        DatasetNotFoundError: the folder is missing and ``allow_download`` is False (the message
            names the expected folder, the URL, and three ways to fix it).
        ValueError: ``name`` is not in the registry.
        DownloadError, ChecksumError, UnsafeArchiveError, DiskFullError: see :func:`download`,
            :func:`extract` (a full disk keeps what was received, or the whole archive).

    Taught in: chapters/06_pretraining.ipynb
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Known: {', '.join(DATASETS)}.")
    source = DATASETS[name]
    root = Path(data_root).expanduser()
    folder, marker = root / source.folder, root / (source.marker or source.folder)
    if marker.exists():
        return folder
    if not allow_download:
        raise DatasetNotFoundError(
            f"Dataset {name!r} is not in the data root {root}: expected the folder {folder}"
            f"{'' if marker == folder else f' (with {marker})'}. Downloads are off "
            f"(allow_download=False, as in the smoke and local profiles; local fetches only the "
            f"small Imagenette/Imagewoof releases itself). To fix it, do one of:\n"
            f"  * download {source.urls[0]} ({_describe_check(source)}) and extract it into {root};\n"
            f"  * set {DATA_ROOT_SETTINGS} to a folder that already holds {source.folder}/;\n"
            f"  * use the full profile (IMAGENET_BOOK_PROFILE=full, or ib.start(profile=\"full\")), "
            f"which downloads it.")
    archive = download(source.urls, root / source.filename, md5=source.md5, sha256=source.sha256,
                       size=source.size, head_md5=source.head_md5, progress=progress)
    extract(archive, root)
    if not marker.exists():
        raise DownloadError(f"{archive} was extracted into {root}, but {marker} is not there: the "
                            f"archive's layout is not the one expected for {name!r}.")
    if not keep_archive:
        archive.unlink()
    return folder
