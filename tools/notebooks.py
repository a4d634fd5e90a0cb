"""Keep the committed notebooks in the form nbval checks.

A committed notebook stores outputs only for the cells marked ``# NBVAL_CHECK_OUTPUT`` (their
output is deterministic: shapes, parameter counts, gradient checks, dataset sizes, class names).
Every other cell is committed without outputs, which keeps diffs readable.

    python tools/notebooks.py store chapters labs   # execute (smoke profile) and keep checked outputs
    python tools/notebooks.py check chapters labs   # exit 1 if a notebook is not in stored form

``store`` runs each notebook with the profile from ``IMAGENET_BOOK_PROFILE`` (``make outputs``
sets ``smoke``, the profile nbval uses).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import nbformat

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
KEEP_METADATA = {"kernelspec", "language_info"}


def is_checked(cell) -> bool:
    """True for a code cell whose stored output nbval compares."""
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK_MARK)


def stored_form(nb):
    """The notebook as it must be committed: outputs only where checked, no run metadata."""
    nb = copy.deepcopy(nb)
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEEP_METADATA}
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in ("tags",)}
        if cell.cell_type != "code":
            continue
        if not is_checked(cell):  # nbval needs the execution count of a checked cell
            cell.execution_count = None
            cell.outputs = []
        for out in cell.outputs:
            out.pop("execution_count", None)
            if "metadata" in out:
                out["metadata"] = {}
    return nb


def notebooks(paths: list[str]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        found += sorted(p.rglob("*.ipynb")) if p.is_dir() else [p]
    return [p for p in found if ".ipynb_checkpoints" not in p.parts]


def store(path: Path) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(stored_form(nb), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["store", "check"])
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    bad = []
    for path in notebooks(args.paths):
        if args.command == "store":
            print(f"executing {path} (profile {os.environ.get('IMAGENET_BOOK_PROFILE', 'default')})")
            store(path)
        elif stored_form(nbformat.read(path, as_version=4)) != nbformat.read(path, as_version=4):
            bad.append(path)
    for path in bad:
        print(f"{path}: not in stored form; run `make outputs`", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
