"""The package's shape, as a reader of the code relies on it (issue 12 of the project).

* one training loop: ``backward()`` is called in one place, :func:`imagenet_book.engine.fit`'s
  step; every task trains through it;
* ``models/`` holds networks and their pure functions: it imports no training, data, stand-in
  or checkpoint code;
* no import circle between the package's modules (imports inside functions included: hiding an
  import in a function does not remove the circle);
* no private torch API (``torch._C``) and no module imports another module's ``_private`` name;
* every user-facing error class derives from :class:`imagenet_book.errors.BookError`.

The import graph is read from the source with :mod:`ast`, so a test failure names the file and
the line.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import imagenet_book as ib

PACKAGE = Path(ib.__file__).parent
NAME = "imagenet_book"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join((NAME, *parts))] = path
    return out


def _imports(module: str, path: Path) -> list[tuple[str, int, list[str]]]:
    """(imported module, line, imported names) for every import of the package, anywhere."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith(NAME):
                names = [a.name for a in node.names]
                modules = _modules()
                submodules = [n for n in names if f"{target}.{n}" in modules]
                # `from . import engine` imports the module engine, not the package's face
                found += [(f"{target}.{n}", node.lineno, []) for n in submodules]
                if len(submodules) < len(names):
                    found.append((target, node.lineno, [n for n in names if n not in submodules]))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno, []) for a in node.names if a.name.startswith(NAME)]
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        if path.name == "__init__.py":
            continue  # a package's face re-exports its modules; it is not a dependency of theirs
        for target, _, _ in _imports(module, path):
            if target in modules and target != module and modules[target].name != "__init__.py":
                graph[module].add(target)
    return graph


def test_one_backward_in_the_package():
    calls = [f"{path.relative_to(PACKAGE)}:{node.lineno}" for path in sorted(PACKAGE.rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == "backward"]
    assert len(calls) == 1 and calls[0].startswith("engine.py:"), calls
    assert ".backward()" in inspect.getsource(ib.engine._train_step)


def test_models_import_no_training_data_or_checkpoint_code():
    allowed = {f"{NAME}.errors", f"{NAME}.losses"}
    bad = []
    for module, path in _modules().items():
        if not module.startswith(f"{NAME}.models"):
            continue
        for target, line, _ in _imports(module, path):
            if not (target.startswith(f"{NAME}.models") or target in allowed):
                bad.append(f"{path.relative_to(PACKAGE)}:{line} imports {target}")
    assert bad == []


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert circles == []


def test_no_private_torch_api_and_no_private_cross_module_imports():
    modules = _modules()
    bad = []
    for module, path in modules.items():
        text = path.read_text(encoding="utf-8")
        if "torch._C" in text:
            bad.append(f"{path.relative_to(PACKAGE)} uses torch._C")
        for target, line, names in _imports(module, path):
            private = [n for n in names if n.startswith("_") and f"{target}.{n}" not in modules]
            if private:
                bad.append(f"{path.relative_to(PACKAGE)}:{line} imports {private} from {target}")
    assert bad == []


def test_every_user_facing_error_is_a_book_error():
    errors = []
    for module in list(_modules()):
        if module.endswith("__main__"):
            continue  # running it runs the command line
        mod = __import__(module, fromlist=["_"])
        for name, obj in vars(mod).items():
            if (inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == module
                    and name.endswith("Error") and not name.startswith("_")):
                errors.append(obj)
    assert errors, "no error classes found"
    assert [e.__qualname__ for e in errors if not issubclass(e, ib.errors.BookError)] == []
