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
"""

from __future__ import annotations

import contextlib
import copy
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
