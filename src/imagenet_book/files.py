"""Files the book writes: never half written, never written by two runs at once.

* :func:`save_atomically`: write to a temporary file beside the target, flush it to the disk,
  then rename it over the target, so a reader (or the next run after a crash, a Ctrl-C or a full
  disk) finds the old file or the new one, never half of one; the temporary file is removed on
  any exception, Ctrl-C included. A full disk is said as such (:class:`DiskFullError`, made by
  :func:`full_disk_error`, which downloads use too), not as torch's "unexpected pos 576 vs 534".
  Every writer of checkpoints and run records uses it (pretraining, the engine's step
  checkpoints, fine-tuning).
* :func:`read_state`: read a file the book wrote with ``torch.save``, safely
  (``weights_only=True``), and say clearly what is wrong with a bad one: missing, truncated,
  refused for safety (it would run code), or another kind of file.
* :func:`check_writable`: find out that a folder cannot be written to *before* hours of
  training, not when the results are saved.
* :func:`hold_lock`: a lock file (``os.open(O_CREAT | O_EXCL)``, holding the owner's pid, host
  and process start time) so that two processes never run the same pretraining at once; a lock
  whose process is gone (killed, crashed, machine rebooted) is recognised and taken over.

This module imports nothing from the package but :mod:`imagenet_book.errors`.

Taught in: chapters/06_pretraining.ipynb.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .errors import BookError

__all__ = ["DiskFullError", "FileLockedError", "FolderNotWritableError", "check_writable",
           "full_disk_error", "hold_lock", "pid_alive", "read_state", "save_atomically"]

#: A lock file whose content cannot be read (its owner died between creating and writing it)
#: counts as abandoned once it is this many seconds old.
UNREADABLE_LOCK_AGE_S = 30.0
#: The owner of a lock touches it this often (seconds) ...
LOCK_HEARTBEAT_S = 60.0
#: ... so a lock of ANOTHER machine (a run folder on Google Drive, after Colab disconnected)
#: counts as abandoned once it has not been touched for this long. On the lock's own machine
#: the owner's pid tells at once.
LOCK_STALE_S = 10 * 60.0


class FolderNotWritableError(BookError, PermissionError):
    """A folder the book must write to cannot be created or written to. The message names it.

    Taught in: chapters/06_pretraining.ipynb.
    """


class DiskFullError(BookError, OSError):
    """The disk (or the user's quota) filled up while the book wrote a file. The message names the
    file, the space left, what was kept (the old file; a download's bytes so far) and the fix.

    Taught in: chapters/06_pretraining.ipynb.
    """


class FileLockedError(BookError, RuntimeError):
    """Another live process holds the lock of this run. The message names the lock and the process.

    Taught in: chapters/06_pretraining.ipynb.
    """


# ------------------------------------------------------------------------------- atomic writes

#: A write that fails with less than this free beside the file failed for want of space:
#: ``torch.save`` says so only as "unexpected pos 576 vs 534", with no error number.
FULL_DISK_FREE_BYTES = 1 << 20
_FULL_DISK_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:  # a writable handle: Windows' fsync (_commit) needs one
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows, some network file systems
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomically(obj: Any, path: str | os.PathLike[str],
                    write: Callable[[Any, Path], None]) -> Path:
    """Write ``obj`` to ``path`` with ``write(obj, tmp)``, atomically and durably.

    ``write`` writes to a temporary file ``.<name>.tmp-<pid>-<random>`` in the same folder (e.g.
    ``lambda s, p: torch.save(s, p)``, ``lambda h, p: h.to_json(p)``); the file is then flushed
    to the disk (``fsync``), renamed over ``path`` (``os.replace``: atomic on POSIX and Windows)
    and the folder is flushed too where the system allows it. So ``path`` holds either its old
    content or all of the new one, even after a power cut. On any exception, ``KeyboardInterrupt``
    included, the temporary file is removed and ``path`` is left as it was. A write that fails
    because the disk (or the quota) is full raises :class:`DiskFullError`, which says so.

    Args:
        obj: what to write. path: the target file (its folder must exist).
        write: ``write(obj, tmp_path)`` writes the whole file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Taught in: chapters/06_pretraining.ipynb.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        try:
            write(obj, tmp)
            _fsync_file(tmp)
        except Exception as err:
            kept = f"{path.name} was left as it was" if path.exists() else f"No {path.name} was written"
            full = full_disk_error(err, path, f"{kept}, and no partial file is left beside it. To fix "
                                   "it, free space on that disk (the checkpoints of old runs under the "
                                   "cache root are the big files) or write to another disk "
                                   "(IMAGENET_BOOK_CACHE for checkpoints, --out for a run's folder), then "
                                   "run the same command again: a pretraining resumes from its last "
                                   "checkpoint.")
            if full is not None:
                raise full from err
            raise
        os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one
    finally:
        tmp.unlink(missing_ok=True)  # gone already after the rename; else a partial file
    _fsync_dir(path.parent)
    return path


def full_disk_error(err: BaseException, path: Path, then: str, *,
                    doing: str | None = None) -> DiskFullError | None:
    """A :class:`DiskFullError` if writing ``path`` failed with ``err`` because its disk is full,
    else None. Call it before removing a partial file, while the space it took is still taken.

    Full means an ``OSError`` ENOSPC or EDQUOT, or any error with less than
    :data:`FULL_DISK_FREE_BYTES` free beside ``path`` (``torch.save`` gives no error number).
    The message says what failed (``doing``, default "writing <path>") with the space left, then
    ``then``: what was kept, and the fix.

    Taught in: chapters/06_pretraining.ipynb.
    """
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return None
    if not (isinstance(err, OSError) and err.errno in _FULL_DISK_ERRNOS) and free >= FULL_DISK_FREE_BYTES:
        return None
    doing = doing or f"writing {str(path)!r}"
    error = DiskFullError(f"The disk is full: {doing} failed with {free / 2**20:.1f} MiB left on the "
                          f"disk that holds {str(path.parent)!r}. {then}")
    error.errno = errno.ENOSPC  # what OSError's own handlers test; the message stays one line
    return error


def check_writable(folder: str | os.PathLike[str], *, fix: str = "",
                   error: type[Exception] = FolderNotWritableError) -> Path:
    """Create ``folder`` if needed and check a file can be written there, before any long work.

    Writes and removes a small probe file (``.write-test-<pid>-<random>``), which also catches
    read-only mounts and full quotas that permission bits do not show.

    Args:
        folder: the folder. fix: a sentence for the message (e.g. ``"Choose another with --out."``).
        error: the exception to raise (default :class:`FolderNotWritableError`).

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        ``error``: the folder cannot be created, or a file cannot be written in it; the message
        names the folder, the reason and ``fix``.

    Taught in: chapters/06_pretraining.ipynb.
    """
    folder = Path(folder)
    probe = folder / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
    except OSError as err:
        raise error(f"Cannot write to the folder {str(folder)!r} ({err.strerror or err}): nothing "
                    f"could be saved there. {fix}".rstrip()) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    return folder


# ------------------------------------------------------------------------------- reading


def read_state(path: str | os.PathLike[str], key: str, value: Any, *, what: str, redo: str,
               wrong: str, error: type[Exception],
               missing: type[FileNotFoundError] = FileNotFoundError) -> dict[str, Any]:
    """Read a file the book wrote with ``torch.save`` (``torch.load(weights_only=True)``, CPU) and
    check it is the kind expected: a dict whose ``state[key] == value``.

    Every checkpoint reader of the package goes through here (the engine's, pretraining's,
    fine-tuning's, the detector's), so all say the same things about a bad file. A file whose
    pickle would run code or build objects other than tensors, numbers, strings, lists and dicts
    is refused (``weights_only=True``) and the message says so: it is not called corrupt, and
    ``weights_only=False`` (which would run that code) is never suggested.

    Args:
        path: the file. key, value: the format tag the writer put in the dict.
        what: the file's kind for messages (``"the checkpoint"``, ``"the detector checkpoint"``).
        redo: the sentence telling the user how to get a good file again.
        wrong: the end of the message for a readable file of another kind
            (``"<path> " + wrong``).
        error: the exception for a damaged, refused or wrong file; missing: the one for no file.

    Returns:
        The dict, tensors on the CPU.

    Raises:
        ``missing``: no such file. ``error``: a truncated or corrupt file, one refused for
        safety, or another kind.

    Taught in: chapters/06_pretraining.ipynb.
    """
    path = Path(path)
    if not path.is_file():
        raise missing(f"{what[:1].upper()}{what[1:]} {str(path)!r} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if re.search(r"GLOBAL |unrecognized function|Can only (create new object|build)", text):
            # weights_only refused to run code or build an object: say so, and never suggest
            # weights_only=False (torch's own message does), which would run it.
            found = re.search(r"GLOBAL ([\w.]+)", text)
            asks = f" (it asks for {found.group(1)})" if found else ""
            raise error(f"Refused to read {what} {str(path)!r} for safety: it holds code or objects "
                        f"that are not plain tensors, numbers and strings{asks}, which "
                        "torch.load(weights_only=True) will not run. The book's files never hold "
                        f"any: this file was not written by the book, or was altered. {redo}") from None
        # torch's text around the cause suggests weights_only=False: keep the cause only.
        noise = ("Weights only load failed", "Please file an issue", "Check the documentation")
        causes = [line.strip() for line in text.splitlines() if line.strip()
                  and "weights_only" not in line and not line.strip().startswith(noise)]
        raise error(f"Cannot read {what} {str(path)!r}: the file is truncated or corrupt, or was "
                    f"not written by torch.save (UnpicklingError: "
                    f"{causes[-1] if causes else 'not a torch.save file'}). {redo}") from None
    except Exception as err:  # truncated zip, bad pickle, ...: the causes vary by version
        raise error(f"Cannot read {what} {str(path)!r}: the file is truncated or corrupt "
                    f"({type(err).__name__}: {err}). {redo}") from err
    if not isinstance(state, dict) or state.get(key) != value:
        raise error(f"{str(path)!r} {wrong}")
    return state


# ------------------------------------------------------------------------------- lock files


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie counts as gone). Where that
    cannot be told without harm (Windows: ``os.kill`` would end the process), ``True``.

    Taught in: chapters/06_pretraining.ipynb.
    """
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but belongs to someone else
        return True
    stat = _proc_stat(pid)
    return not (stat is not None and stat[0] == "Z")


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) from ``/proc/<pid>/stat``; None without /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _owner() -> dict[str, Any]:
    stat = _proc_stat(os.getpid())
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": stat[1] if stat else None,
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _abandoned(path: Path, owner: dict[str, Any] | None) -> bool:
    """Whether the lock's owner is certainly gone (only decidable for a lock of this machine)."""
    if owner is None:  # died between creating the file and writing it, or not a lock of ours
        try:
            return time.time() - path.stat().st_mtime > UNREADABLE_LOCK_AGE_S
        except FileNotFoundError:
            return True
    if owner.get("host") != socket.gethostname():
        try:  # its owner touches it every LOCK_HEARTBEAT_S while it runs
            return time.time() - path.stat().st_mtime > LOCK_STALE_S
        except FileNotFoundError:
            return True
    if not pid_alive(owner["pid"]):
        return True
    stat = _proc_stat(owner["pid"])  # the pid was reused by another process since?
    return owner.get("started") is not None and stat is not None and stat[1] != owner["started"]


@contextlib.contextmanager
def hold_lock(path: str | os.PathLike[str], *, what: str, error: type[Exception] = FileLockedError,
              on_stale: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the lock file ``path`` for the ``with`` block; refuse if a live process holds it.

    The lock is created with ``os.open(O_CREAT | O_EXCL)`` (one process wins, even on most
    network file systems) and holds JSON: ``pid``, ``host``, the process's start time
    (``/proc``) and when; while the block runs, a daemon thread touches it every
    :data:`LOCK_HEARTBEAT_S`. A lock left by a process that is gone (killed with SIGKILL,
    crashed, its machine rebooted) is taken over: on the same host when the pid no longer runs
    (or now belongs to a process started at another time); from another host (a folder on
    Google Drive after Colab disconnected) when it has not been touched for
    :data:`LOCK_STALE_S`. The lock is removed when the block ends, however it ends (exception,
    Ctrl-C).

    Args:
        path: the lock file. what: the locked thing for messages (``"the run 'resnet18-...'"``).
        error: raised when a live process holds the lock (default :class:`FileLockedError`).
        on_stale: called with a sentence when an abandoned lock is taken over.

    Raises:
        ``error``: another live process (or another host) holds the lock; the message names the
        lock file, its owner and what to do.

    Taught in: chapters/06_pretraining.ipynb.
    """
    path = Path(path)
    mine = _owner()
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(path)
            if not _abandoned(path, owner):
                who = ("a process that has not finished writing it" if owner is None else
                       f"process {owner['pid']} on {owner.get('host')!r} (since {owner.get('since')})")
                elsewhere = owner is not None and owner.get("host") != mine["host"]
                raise error(
                    f"{what[:1].upper()}{what[1:]} is in progress in {who}: its lock file "
                    f"{str(path)!r} is there. Wait for it to finish (running the same command "
                    "then reuses its result), or stop it first"
                    + (f"; if no run is active on {owner.get('host')!r} any more, the lock counts "
                       f"as abandoned {LOCK_STALE_S / 60:.0f} minutes after its last update, or "
                       "delete the lock file." if elsewhere else "."))
            if _read_lock(path) == owner:  # still the abandoned one: take it over
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                if on_stale is not None:
                    gone = "an unreadable lock" if owner is None else f"process {owner['pid']}"
                    on_stale(f"took over the lock {str(path)!r} left by {gone}, which is gone")
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(mine, f)
        break
    else:  # pragma: no cover - another process kept winning the race
        raise error(f"Could not take the lock {str(path)!r} of {what}: other processes keep taking it.")
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(LOCK_HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(path)

    beat = threading.Thread(target=heartbeat, name=f"lock {path.name}", daemon=True)
    beat.start()
    try:
        yield path
    finally:
        stop.set()
        beat.join()
        if _read_lock(path) == mine:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
