"""The repository's scripts (tools/*.py, labs/assign.py) loaded as modules, for the tests.

They are files run by the Makefile, not a package, so the tests load them by path. Each is loaded
once and registered in ``sys.modules`` under ``name`` (dataclasses look their module up there).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str, name: str) -> ModuleType:
    """The module of ``ROOT / relpath``, e.g. ``load_script("tools/colab.py", "colab_tool")``."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
