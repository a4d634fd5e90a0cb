"""The one setup call every notebook makes: :func:`start`.

``start()`` decides, in this order and once per notebook:

* the **profile** (``smoke`` / ``local`` / ``full``): the sizes of every experiment;
* the **device** the tensors live on;
* the **seed** of every random number generator;
* the **data root** (where datasets are read from, and downloaded to when allowed) and the
  **cache root** (where generated stand-ins, decoded caches and checkpoints go).

It prints one line saying what it chose and why, and returns a :class:`Setup` that the rest of
the notebook passes around. A profile changes sizes only (image size, subset size, epochs, batch
size): every chapter runs the same functions under every profile.

On Google Colab it also says how to switch the runtime to a GPU when there is none, and offers to
keep the runs on Google Drive (``start(drive=True)`` or ``IMAGENET_BOOK_DRIVE=1``): the cache
root's run folders (:data:`DRIVE_FOLDERS`: the resumable checkpoints of
:func:`imagenet_book.pretrain.pretrain`, the fine-tuning and lab runs) become links into Drive, so a
run cut off by a disconnect continues where it stopped when the notebook is run again; the
stand-ins and decoded image caches, rebuilt in minutes, stay on the Colab machine's disk.

Taught in: chapters/01_imagenet.ipynb (and used as the first code cell of every notebook).
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import BookError

__all__ = ["PROFILES", "Profile", "Setup", "SetupError", "start", "seed_everything"]

ENV_PROFILE = "IMAGENET_BOOK_PROFILE"
ENV_DATA = "IMAGENET_BOOK_DATA"
ENV_CACHE = "IMAGENET_BOOK_CACHE"
ENV_DEVICE = "IMAGENET_BOOK_DEVICE"
ENV_DRIVE = "IMAGENET_BOOK_DRIVE"

#: Where Colab mounts Google Drive, and the folder inside it that keeps the runs.
COLAB_DRIVE_MOUNT = Path("/content/drive")
DRIVE_CACHE = Path("MyDrive") / "imagenet_book"
#: The cache root's folders that hold runs (checkpoints, histories, results): with Drive on, links
#: to the same folders in ``MyDrive/imagenet_book``. The others (``standins``, ``fast``: gigabytes
#: at full scale, rebuilt in minutes) stay local.
DRIVE_FOLDERS = ("checkpoints", "finetune", "labs")
COLAB_GPU_HINT = ("on Colab: Runtime > Change runtime type > a GPU (e.g. T4), then run the notebook "
                  "again from the top")


class SetupError(BookError, ValueError):
    """A setting given to :func:`start` (or through its environment variables) is invalid."""


@dataclass(frozen=True)
class Profile:
    """The sizes of every experiment in the book, for one scale of machine.

    Attributes:
        name: ``"smoke"``, ``"local"`` or ``"full"``.
        img_size: side, in pixels, of the square images the models see.
        batch_size: images per optimisation step (the global batch).
        epochs: passes over the training subset in a pretraining run.
        train_per_class: training images kept per class (``None``: all of them).
        val_per_class: validation images kept per class (``None``: all of them).
        allow_download: whether datasets may be fetched from the internet.
        where: who the profile is for.
    """

    name: str
    img_size: int
    batch_size: int
    epochs: int
    train_per_class: int | None
    val_per_class: int | None
    allow_download: bool
    where: str


# The recipe's sizes live here and nowhere else. Chapters read them from ``cfg.profile``.
PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", img_size=32, batch_size=16, epochs=1,
        train_per_class=8, val_per_class=4, allow_download=False,
        where="tests, CI and nbval: tiny built-in stand-in data, seconds per notebook",
    ),
    "local": Profile(
        name="local", img_size=64, batch_size=64, epochs=4,
        train_per_class=200, val_per_class=50, allow_download=False,
        where="a laptop or 2-core CPU: real data if the data root has it, else stand-ins; minutes per chapter",
    ),
    "full": Profile(
        name="full", img_size=224, batch_size=256, epochs=40,
        train_per_class=None, val_per_class=None, allow_download=True,
        where="Colab or any CUDA machine: the real datasets, downloaded when missing",
    ),
}


@dataclass(frozen=True)
class Setup:
    """What :func:`start` chose. Pass it to the package's functions that need sizes or paths.

    Attributes:
        profile: the :class:`Profile` in force.
        device: where tensors and models go (``torch.device``).
        seed: the seed every generator was given.
        data_root: folder that holds (or will hold) the datasets.
        cache_root: folder for generated stand-ins, decoded caches and checkpoints.
        reasons: for each choice above, why it was made and where the value came from
            (``"argument"``, ``"argument data_root="``, ``"option --data-root"``,
            ``"env IMAGENET_BOOK_DATA"``, ``"default"``, ...).
    """

    profile: Profile
    device: torch.device
    seed: int
    data_root: Path
    cache_root: Path
    reasons: dict[str, str]

    def summary(self) -> str:
        """The one line :func:`start` prints."""
        r = self.reasons
        return (
            f"imagenet_book: profile={self.profile.name} ({r['profile']}), "
            f"device={self.device} ({r['device']}), seed={self.seed}, "
            f"data={self.data_root} ({r['data_root']}), cache={self.cache_root} ({r['cache_root']})"
        )


def _user_cache_dir() -> Path:
    if sys.platform.startswith("win"):
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = str(Path.home() / "Library" / "Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imagenet_book"


#: How :func:`start`'s arguments were given: ``"argument"`` (a Python call) or ``"command line"``
#: (the ``imagenet-book`` command, whose options fill them). Messages name the place accordingly.
ORIGINS = ("argument", "command line")


def _given(origin: str, name: str) -> str:
    """Where the value of argument ``name`` came from, as the user wrote it."""
    return f"option --{name.replace('_', '-')}" if origin == "command line" else f"argument {name}="


def _choose_profile(profile: str | None, cuda: bool, origin: str) -> tuple[Profile, str]:
    if profile is not None:
        source = _given(origin, "profile")
        name, why = profile, "argument" if origin == "argument" else source
    elif os.environ.get(ENV_PROFILE):
        name = os.environ[ENV_PROFILE]
        why = source = f"env {ENV_PROFILE}"
    else:
        name = "full" if cuda else "local"
        why = "default: CUDA available" if cuda else "default: no CUDA"
        source = "the default"
    key = name.strip().lower()
    if key not in PROFILES:
        raise SetupError(
            f"Unknown profile {name!r} (from {'the ' if source.startswith('arg') else ''}{source}). "
            f"Choose one of: {', '.join(PROFILES)}."
        )
    return PROFILES[key], why


def _on_colab() -> bool:
    """True inside a Google Colab runtime, whose kernel has already imported ``google.colab``
    (the same test as the setup cell's)."""
    return "google.colab" in sys.modules


def _choose_drive(drive: bool | None) -> tuple[bool, str]:
    """Whether to keep the runs on Google Drive, and why (argument, else env, else no)."""
    if drive is not None:
        return bool(drive), "drive=" + str(bool(drive))
    value = os.environ.get(ENV_DRIVE, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False, "default"
    if value in ("1", "true", "yes"):
        return True, f"env {ENV_DRIVE}"
    raise SetupError(
        f"Invalid value {os.environ[ENV_DRIVE]!r} of env {ENV_DRIVE}. Use 1 (keep the runs on "
        "Google Drive, on Colab) or 0, or unset it."
    )


def _mount_drive() -> Path:
    """Mount Google Drive (Colab asks the user to allow it) and return the runs' folder on it."""
    from google.colab import drive as colab_drive

    colab_drive.mount(str(COLAB_DRIVE_MOUNT))
    my_drive = COLAB_DRIVE_MOUNT / DRIVE_CACHE.parent
    if not my_drive.is_dir():
        raise SetupError(
            f"Google Drive was mounted at {str(COLAB_DRIVE_MOUNT)!r} but {str(my_drive)!r} is not "
            "there. Run the cell again and allow access to Drive, or call ib.start() without drive."
        )
    return COLAB_DRIVE_MOUNT / DRIVE_CACHE


def _choose_device(cuda: bool) -> tuple[torch.device, str]:
    wanted = os.environ.get(ENV_DEVICE)
    if wanted:
        try:
            device = torch.device(wanted)
        except RuntimeError as err:
            raise SetupError(
                f"Invalid device {wanted!r} (from env {ENV_DEVICE}). "
                "Use cpu, cuda, cuda:N or mps, or unset it to choose automatically."
            ) from err
        if device.type == "cuda" and not cuda:
            raise SetupError(
                f"Device {wanted!r} (from env {ENV_DEVICE}) asked for CUDA, but torch sees no CUDA "
                "GPU. Unset it, or set it to cpu."
            )
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise SetupError(
                f"Device {wanted!r} (from env {ENV_DEVICE}) asked for CUDA GPU {device.index}, but torch "
                f"sees {torch.cuda.device_count()} (cuda:0 to cuda:{torch.cuda.device_count() - 1}). "
                "Set it to one of those, or unset it.")
        mps = getattr(torch.backends, "mps", None)
        if device.type == "mps" and not (mps is not None and mps.is_available()):
            raise SetupError(
                f"Device {wanted!r} (from env {ENV_DEVICE}) asked for Apple's MPS, but torch has no "
                "MPS device here (it needs an Apple-silicon Mac and a PyTorch built with MPS). "
                "Unset it, or set it to cpu" + (" or cuda." if cuda else "."))
        return device, f"env {ENV_DEVICE}"
    if cuda:
        return torch.device("cuda"), torch.cuda.get_device_name(0)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps"), "Apple GPU"
    return torch.device("cpu"), "no GPU found" + (f"; {COLAB_GPU_HINT}" if _on_colab() else "")


def _choose_dir(given: str | os.PathLike[str] | None, source: str, env: str,
                default: Path) -> tuple[Path, str, bool]:
    """Return (path, reason, must_exist): the argument, else the env variable, else the default.
    A folder set by the user must exist already."""
    if given is not None and str(given) != "":
        return Path(given).expanduser().resolve(), source, True
    value = os.environ.get(env)
    if value:
        path = Path(value).expanduser()
        if path.is_absolute():
            return path.resolve(), f"env {env}", True
        # A notebook runs in its own folder (chapters/), not where its server or `make` started:
        # say which folder a relative value was read from, so that a wrong guess is visible.
        return path.resolve(), f"env {env}={value!r}, relative to the current folder {os.getcwd()!r}", True
    return default, "default", False


def _how_to_set(what: str, env: str, source: str) -> str:
    """The fix for a bad data/cache root, naming the place its value came from."""
    if source.startswith(("argument", "option")):
        return (f"give {source.split(' ', 1)[1]} an existing, writable folder, or leave it out "
                f"(then env {env}, else the default, is used).")
    if source.startswith("env"):
        relative = not Path(os.environ.get(env, "")).expanduser().is_absolute()
        absolute = " (an absolute path: notebooks run in their own folder)" if relative else ""
        return f"set {env} to an existing, writable folder{absolute}, or unset {env} to use the default."
    return f"set {env} to a writable folder (the {what} is then that folder)."


def _writable(path: Path) -> str | None:
    """None if a file can be created in ``path`` (made if missing), else the system's reason.
    The test file is deleted at once."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device).

    Taught in: chapters/01_imagenet.ipynb.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def start(profile: str | None = None, seed: int = 0, *, quiet: bool = False,
          drive: bool | None = None, data_root: str | os.PathLike[str] | None = None,
          cache_root: str | os.PathLike[str] | None = None, origin: str = "argument") -> Setup:
    """Set up a notebook: choose profile, device, seed, data and cache roots; print one line.

    Args:
        profile: ``"smoke"``, ``"local"`` or ``"full"``. ``None``: env ``IMAGENET_BOOK_PROFILE``,
            else ``"full"`` when CUDA is available and ``"local"`` otherwise.
        seed: seed for ``random``, NumPy and torch.
        quiet: do not print the summary line (for library code and tests).
        drive: on Google Colab, mount Google Drive and make the cache root's run folders
            (:data:`DRIVE_FOLDERS`: the checkpoints an interrupted ``pretrain()`` resumes from,
            the fine-tuning and lab runs) links to ``MyDrive/imagenet_book/<folder>``, so that
            they outlive the Colab session. ``None``: env ``IMAGENET_BOOK_DRIVE`` (``1``/``0``),
            else off. Outside Colab it changes nothing (the printed line says so), so the same
            notebook runs everywhere.
        data_root: the data root (must exist). ``None``: env ``IMAGENET_BOOK_DATA``, else the
            default below.
        cache_root: the cache root (must exist, and be writable). ``None``: env
            ``IMAGENET_BOOK_CACHE``, else the default below.
        origin: how ``profile``, ``data_root`` and ``cache_root`` were given: ``"argument"`` (a
            Python call; reported as ``argument data_root=``) or ``"command line"`` (the
            ``imagenet-book`` command; reported as ``option --data-root``). The printed line and
            every error name the place a value really came from.

    Environment:
        ``IMAGENET_BOOK_DATA``: data root (must exist). Default: ``<user cache>/imagenet_book/data``.
        ``IMAGENET_BOOK_CACHE``: cache root (must exist). Default: ``<user cache>/imagenet_book``.
        ``IMAGENET_BOOK_DEVICE``: force a device (``cpu``, ``cuda``, ``cuda:1``, ``mps``).
        ``IMAGENET_BOOK_DRIVE``: ``1`` to keep the runs on Google Drive (Colab only).

    Returns:
        A :class:`Setup`.

    Raises:
        SetupError: an unknown profile, an invalid or absent device (CUDA or MPS asked for on a
            machine without it), a data/cache root that does not exist, a cache root (or a
            default root) where no file can be written, or (Drive on, on Colab) a run folder of
            the cache root that is a local folder where Drive's link must go. Every message
            names the setting, where it came from (argument, command-line option, environment
            variable or default) and the fix. Nothing is created on disk (and Drive is not
            mounted) before every setting has been checked.

    Taught in: chapters/01_imagenet.ipynb.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SetupError(f"seed must be an int, got {seed!r}.")
    if origin not in ORIGINS:
        raise SetupError(f"origin must be one of {ORIGINS}, got {origin!r}.")
    cuda = torch.cuda.is_available()
    chosen_profile, profile_why = _choose_profile(profile, cuda, origin)
    device, device_why = _choose_device(cuda)
    use_drive, drive_why = _choose_drive(drive)
    user_cache = _user_cache_dir()
    cache_root, cache_why, cache_must_exist = _choose_dir(
        cache_root, _given(origin, "cache_root"), ENV_CACHE, user_cache)
    data_root, data_why, data_must_exist = _choose_dir(
        data_root, _given(origin, "data_root"), ENV_DATA, user_cache / "data")
    data_source, cache_source = data_why, cache_why
    colab = _on_colab()
    if use_drive and not colab:
        cache_why += f"; {drive_why} ignored: not on Colab"
    elif colab and not use_drive and not cache_must_exist:
        cache_why += ("; lost when the Colab session ends: ib.start(drive=True) keeps the runs on "
                      "Google Drive, so an interrupted run resumes")
    if use_drive and colab:
        for name in DRIVE_FOLDERS:
            local = cache_root / name
            if local.exists() and not local.is_symlink():
                raise SetupError(
                    f"{str(local)!r} is a folder on this machine, where {drive_why} puts a link to "
                    f"Google Drive ({str(COLAB_DRIVE_MOUNT / DRIVE_CACHE / name)!r}). Move what it "
                    "holds to Drive (or delete it), or call ib.start() without drive.")
    roots = ((data_root, data_must_exist, ENV_DATA, "data root", data_source),
             (cache_root, cache_must_exist, ENV_CACHE, "cache root", cache_source))
    for path, must_exist, env, what, source in roots:
        if must_exist and not path.is_dir():
            problem = "is not a folder" if path.exists() else "does not exist"
            raise SetupError(f"The {what} {str(path)!r} (from {source}) {problem}. Create that "
                             f"folder, or {_how_to_set(what, env, source)}")
    # Every setting is valid: only now create the default folders, and check that the cache root
    # (stand-ins, decoded caches, checkpoints) takes files. A data root the user gives may be
    # read-only (shared data).
    for path, must_exist, env, what, source in reversed(roots):  # the cache root holds the default data root
        if what == "cache root" or not must_exist:
            problem = _writable(path)
            if problem is not None:
                raise SetupError(f"Cannot write in the {what} {str(path)!r} ("
                                 f"{'the default' if source == 'default' else 'from ' + source}; "
                                 f"{problem}). To fix it, {_how_to_set(what, env, source)}")
    if use_drive and colab:
        runs = _mount_drive()
        for name in DRIVE_FOLDERS:
            (runs / name).mkdir(parents=True, exist_ok=True)
            link = cache_root / name
            if link.is_symlink() and link.resolve() != (runs / name).resolve():
                link.unlink()  # a link left by another Drive mount point
            if not link.is_symlink():
                link.symlink_to(runs / name, target_is_directory=True)
        cache_why += f"; {', '.join(DRIVE_FOLDERS)} on Google Drive in {str(runs)!r}, {drive_why}"
    seed_everything(seed)
    setup = Setup(
        profile=chosen_profile, device=device, seed=seed, data_root=data_root,
        cache_root=cache_root,
        reasons={"profile": profile_why, "device": device_why,
                 "data_root": data_why, "cache_root": cache_why},
    )
    if not quiet:
        print(setup.summary())
    return setup
