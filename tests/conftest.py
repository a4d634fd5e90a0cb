"""What the whole suite shares.

* **Each notebook runs once per ``make test``.** nbval executes every notebook of ``chapters/`` and
  ``labs/`` cell by cell; the hooks below record what each cell produced, exactly as nbclient (which
  Jupyter Book executes with) would have stored it: outputs, ``clear_output`` and display updates
  applied, and the widgets' state in the notebook's metadata (nbclient's own message handling
  does this, fed with the kernel messages nbval reads). The website test
  (``tests/test_website.py``) is moved after every notebook and builds the book from these
  executed notebooks, with execution off; a notebook nbval did not run completely (not selected,
  or the run stopped early) is executed by the build instead, so ``pytest tests/test_website.py``
  alone still builds the whole book.
* **Session fixtures** for what several test files would otherwise rebuild: a smoke set-up with
  its own cache (``smoke_cfg``), its ImageNet stand-in (``imagenet_standin``), a VOC stand-in tree
  (``voc_standin``) and a two-step pretrained ResNet-18 checkpoint (``smoke_checkpoint``). They
  are shared read-only: a test that changes files makes its own (``tmp_path``).
* **A disk that fills up** (``small_disk``): a real 2 MiB tmpfs, mounted for one test and grown
  by it (``resize``) to show that the same command then finishes; skipped, saying why, where the
  suite may not mount (not root, or not Linux).
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

try:  # nbval is in the dev extra; without it there are no notebook items to record
    from nbval.plugin import IPyNbCell
except ImportError:  # pragma: no cover
    IPyNbCell = None

ROOT = Path(__file__).resolve().parents[1]


# --- notebooks executed by nbval, recorded for the website ----------------------------------------


class ExecutedNotebook:
    """One notebook as nbval executes it, recorded the way nbclient records an execution."""

    def __init__(self, path: Path, nb: nbformat.NotebookNode):
        from nbclient import NotebookClient

        self.path = path
        self.nb = copy.deepcopy(nb)
        self.code_cells = [i for i, cell in enumerate(self.nb.cells) if cell.cell_type == "code"]
        self.ran: set[int] = set()  # indices (in nb.cells) of the code cells sent to the kernel
        self.failed: str | None = None  # why recording failed: the build executes the notebook then
        # No kernel: only the message handling is used. Widgets are not mimicked (no Output
        # widget in these notebooks: tests/test_website.py checks it); their state is recorded.
        self.client = NotebookClient(self.nb, record_timing=False, store_widget_state=True)
        self.client.comm_open_handlers = {"jupyter.widget": lambda msg: None}

    @property
    def complete(self) -> bool:
        return self.failed is None and self.ran == set(self.code_cells)

    def executed(self) -> nbformat.NotebookNode:
        """The executed notebook, widget state in its metadata (nbclient's ``set_widgets_metadata``)."""
        self.client.set_widgets_metadata()
        return self.nb

    @contextlib.contextmanager
    def recording(self, item):
        """While ``item`` (nbval's cell) runs, feed its kernel's messages to nbclient's handler."""
        from nbclient.exceptions import CellExecutionComplete

        kernel = item.parent.kernel
        if kernel is None:  # the notebook's kernel did not start: nothing to record
            yield
            return
        index = self.code_cells[item.cell_num]
        cell = self.nb.cells[index]
        cell.outputs = []
        cell.execution_count = None
        self.client.clear_before_next_output = False  # what nbclient does before each cell
        msg_ids: list[str] = []
        execute, get_message = kernel.execute_cell_input, kernel.get_message

        def execute_cell_input(*args, **kwargs):
            msg_ids.append(execute(*args, **kwargs))
            self.ran.add(index)
            return msg_ids[-1]

        def get_kernel_message(stream, timeout=None):
            msg = get_message(stream, timeout=timeout)
            if stream == "iopub" and msg_ids and msg["parent_header"].get("msg_id") == msg_ids[-1]:
                try:
                    self.client.process_message(msg, cell, index)
                except CellExecutionComplete:
                    pass
                except Exception as err:  # never fail nbval's test because of the recording
                    self.failed = self.failed or f"cell {index}: {type(err).__name__}: {err}"
            return msg

        kernel.execute_cell_input, kernel.get_message = execute_cell_input, get_kernel_message
        try:
            yield
        finally:
            del kernel.execute_cell_input, kernel.get_message  # the class's methods again


_EXECUTED = pytest.StashKey[dict]()


def _executed(config) -> dict[Path, ExecutedNotebook]:
    if _EXECUTED not in config.stash:
        config.stash[_EXECUTED] = {}
    return config.stash[_EXECUTED]


class _NotebookRecorder:
    """The hooks, as a plugin: a conftest's own runtest hooks apply only to the items of its
    folder, and the notebooks are in chapters/ and labs/."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        if IPyNbCell is None or not isinstance(item, IPyNbCell):
            return (yield)
        notebooks = _executed(item.config)
        path = Path(item.parent.path).resolve()
        if path not in notebooks:
            notebooks[path] = ExecutedNotebook(path, item.parent.nb)
        with notebooks[path].recording(item):
            return (yield)

    def pytest_collection_modifyitems(self, session, config, items):
        """The tests that use the executed notebooks (the built website's) run last, after every
        notebook nbval executes."""
        website = [item for item in items if "executed_notebooks" in getattr(item, "fixturenames", ())]
        if website:
            moved = {id(item) for item in website}
            items[:] = [item for item in items if id(item) not in moved] + website


def pytest_configure(config):
    config.pluginmanager.register(_NotebookRecorder(), "imagenet_book_notebook_recorder")


@pytest.fixture(scope="session")
def executed_notebooks(request) -> dict[str, nbformat.NotebookNode]:
    """The notebooks nbval has run completely in this session, executed: {path relative to the
    repository (posix): notebook}. Empty when no notebook ran (``pytest tests/...``)."""
    return {path.relative_to(ROOT).as_posix(): record.executed()
            for path, record in sorted(_executed(request.config).items())
            if record.complete and path.is_relative_to(ROOT)}


# --- session fixtures: built once, shared read-only ------------------------------------------------


@pytest.fixture(scope="session")
def smoke_cfg(tmp_path_factory):
    """``ib.start("smoke")`` with a cache root and an (empty) data root of its own, for the whole
    session, on the default device (CUDA under ``make gpu-check``). What the package generates
    there (the stand-ins, decoded caches, checkpoints) is generated once for every test that uses
    it. A test that needs the CPU takes ``dataclasses.replace(smoke_cfg, device=torch.device("cpu"))``;
    one that needs an empty cache, ``dataclasses.replace(smoke_cfg, cache_root=tmp_path)``."""
    import imagenet_book as ib
    from imagenet_book import runtime

    cache, data = tmp_path_factory.mktemp("smoke-cache"), tmp_path_factory.mktemp("smoke-data")
    with pytest.MonkeyPatch.context() as mp:  # start() reads the roots from the environment
        mp.setenv(runtime.ENV_CACHE, str(cache))
        mp.setenv(runtime.ENV_DATA, str(data))
        mp.delenv(runtime.ENV_DEVICE, raising=False)
        mp.delenv(runtime.ENV_DRIVE, raising=False)
        return ib.start("smoke", quiet=True)


@pytest.fixture(scope="session")
def imagenet_standin(smoke_cfg):
    """The smoke profile's ImageNet stand-in (10 classes, the profile's sizes), built once in
    ``smoke_cfg``'s cache: a :class:`~imagenet_book.data.imagenet.DataSource`."""
    from imagenet_book.data.imagenet import classification_source

    return classification_source(smoke_cfg, "standin")


@pytest.fixture(scope="session")
def voc_standin(tmp_path_factory) -> Path:
    """A VOC 2007 stand-in tree (8 train, 4 val scenes of 96 px, seed 0), built once: the folder
    torchvision's ``root`` takes (``VOCdevkit/VOC2007/`` inside)."""
    from imagenet_book.data.standin import make_voc_standin

    return make_voc_standin(tmp_path_factory.mktemp("voc-standin") / "voc", num_train=8, num_val=4,
                            img_size=96, seed=0)


@pytest.fixture(scope="session")
def pretrained(smoke_cfg, tmp_path_factory):
    """``pretrained(arch)``: a real one-step pretraining run of ``arch`` on the smoke stand-in
    (``imagenet_book.pretrain.pretrain``, files and all), made once per architecture for the
    session. Returns its :class:`~imagenet_book.pretrain.PretrainResult`; leave its ``net`` as it is
    (copy it to train it further)."""
    import imagenet_book as ib

    out = tmp_path_factory.mktemp("pretrained")
    runs = {}

    def run(arch: str = "resnet18"):
        if arch not in runs:
            runs[arch] = ib.pretrain.pretrain(smoke_cfg, "standin", arch, epochs=1, max_steps=1, out_dir=out,
                                              progress=False, log=None)
        return runs[arch]

    return run


@pytest.fixture(scope="session")
def smoke_checkpoint(smoke_cfg) -> Path:
    """Chapter 06's checkpoint under the smoke profile: its run (ResNet-18 on the ``imagenette``
    stand-in, the profile's sizes), saved where ``finetune.resolve_checkpoint(smoke_cfg)``
    (chapters 07-09) looks for it. (A run cut short with ``max_steps`` is saved under a name of its
    own, which resolve_checkpoint does not pick.)"""
    import imagenet_book as ib

    return ib.pretrain.pretrain(smoke_cfg, "imagenette", "resnet18", progress=False, log=None).checkpoint


@pytest.fixture
def only_localhost(monkeypatch):
    """Fail a test that tries to reach anything but 127.0.0.1 (proxy settings ignored): the
    download tests talk only to the servers they start themselves."""
    import socket

    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    real_connect = socket.socket.connect

    def connect(self, address):
        if not (isinstance(address, tuple) and address[0] == "127.0.0.1"):
            raise AssertionError(f"test tried to reach {address!r}: only 127.0.0.1 is allowed")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@dataclass
class SmallDisk:
    """A tmpfs mounted at ``path``; ``resize("16m")`` grows (or shrinks) it in place."""

    path: Path

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB file system (a tmpfs mounted for the test): a disk that fills up."""
    disk = tmp_path / "small-disk"
    disk.mkdir()
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("the small disk is a tmpfs mounted with Linux's mount")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root (CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield SmallDisk(disk)
    subprocess.run(["umount", "-l", str(disk)], check=True)
