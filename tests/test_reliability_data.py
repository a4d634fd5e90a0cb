"""Reliability of the data code and the setup call (issue 12): one error base class, no private
torch API, no near-hang on a stalled network, one clear message instead of a traceback, no silent
wrong metric, no machine paths in committed results, no import cycles.

Real files in real formats, and real HTTP servers on 127.0.0.1 that each test starts and stops.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from imagenet_book.data import download, fast, imagenet, standin, voc
from imagenet_book.errors import BookError
from imagenet_book import runtime

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


@pytest.mark.parametrize("cls, builtin", [
    (download.DownloadError, RuntimeError), (download.ChecksumError, RuntimeError),
    (download.UnsafeArchiveError, ValueError), (download.DatasetNotFoundError, FileNotFoundError),
    (imagenet.DatasetLayoutError, ValueError), (voc.VOCFormatError, ValueError),
    (standin.StandinError, RuntimeError), (fast.CacheBuildError, RuntimeError),
    (runtime.SetupError, ValueError),
])
def test_every_data_and_setup_error_is_a_book_error(cls, builtin):
    assert issubclass(cls, BookError) and issubclass(cls, builtin)
    with pytest.raises(BookError):
        raise cls("message")


def test_committed_bench_results_hold_no_machine_paths():
    results = sorted((REPO / "bench" / "results").glob("*.json"))
    assert results, "bench/results/*.json: nothing to check"
    absolute = re.compile(r'"(/work|/home|/tmp|/root)(/|")')
    for path in results:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
        found = absolute.search(text)
        assert found is None, f"{path.name} holds an absolute path {found.group(0)!r}: record the data's name"


def _imports(path: Path) -> set[str]:
    """The package modules a source file imports, at any depth (inside functions too)."""
    import ast

    found = set()
    package = path.relative_to(SRC).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(package[: len(package) - node.level + 1] + tuple(filter(None, [node.module])))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imagenet_book"):
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("imagenet_book")}
    return found


def test_voc_and_standin_do_not_import_each_other_and_models_import_no_data_code():
    src = SRC / "imagenet_book"
    voc_imports = _imports(src / "data" / "voc.py")
    standin_imports = _imports(src / "data" / "standin.py")
    assert "imagenet_book.data.voc" not in standin_imports, "standin imports voc"
    assert "imagenet_book.data.standin" in voc_imports  # one direction only: voc -> standin
    for bottom in (src / "data" / "voc_classes.py", src / "errors.py"):
        assert not _imports(bottom), f"{bottom.name} must import nothing from the package"
    segmentation = _imports(src / "models" / "segmentation.py")
    assert not {m for m in segmentation if m.startswith("imagenet_book.data")}, segmentation


def test_no_private_name_is_imported_across_the_data_modules():
    src = SRC / "imagenet_book"
    files = sorted((src / "data").glob("*.py")) + [src / "runtime.py", src / "viz.py"]
    for path in files:
        private = sorted(m for m in _imports(path) if m.rsplit(".", 1)[-1].startswith("_")
                         and not m.rsplit(".", 1)[-1].startswith("__"))
        assert not private, f"{path.name} imports private names {private}"

