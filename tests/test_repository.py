"""The repository's promises: environment.yml agrees with pyproject, the table of contents lists
every chapter, and every notebook is committed in the form nbval checks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from scripts import load_script  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb")) + sorted((ROOT / "labs").rglob("*.ipynb"))
SETUP_CELL = "import imagenet_book as ib\ncfg = ib.start()"


def _split(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_agrees_with_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = _pyproject()["project"]
    assert "python=3.11" in env["dependencies"]
    conda = dict(_split(d.replace("=", "==", 1) if re.match(r"^[\w-]+=\d", d) else d)
                 for d in env["dependencies"] if isinstance(d, str) and d not in ("pip",))
    conda.pop("python")
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    runtime = dict(map(_split, project["dependencies"]))
    # Every conda package is a runtime dependency with the same range...
    for name, spec in conda.items():
        assert name in runtime, f"environment.yml lists {name}, which pyproject does not depend on"
        assert spec == runtime[name], f"{name}: environment.yml says {spec}, pyproject says {runtime[name]}"
    # ...and the pip part installs the package itself with every extra, so the rest (torch) comes
    # from pyproject's own ranges.
    editable = [line for line in pip_lines if line.startswith("-e .")]
    assert editable, "environment.yml must install the package itself (-e .[...])"
    extras = set(re.search(r"\[(.*)\]", editable[0]).group(1).split(","))
    assert extras == set(project["optional-dependencies"]), "install every extra pyproject defines"
    assert "-c requirements/constraints.txt" in pip_lines


def test_lock_pins_what_pyproject_asks_for():
    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    project = _pyproject()["project"]
    wanted = project["dependencies"] + [r for extra in project["optional-dependencies"].values()
                                        for r in extra]
    from packaging.specifiers import SpecifierSet

    for requirement in wanted:
        name, spec = _split(requirement)
        assert name in pins, f"{name} is required but not pinned in requirements/constraints.txt"
        assert pins[name] in SpecifierSet(spec), f"pinned {name}=={pins[name]} violates {spec}"


def test_torch_is_a_range_so_colab_keeps_its_own():
    deps = dict(map(_split, _pyproject()["project"]["dependencies"]))
    for name in ("torch", "torchvision"):
        assert deps[name].startswith(">=") and "==" not in deps[name] and "<" not in deps[name]


def test_toc_lists_every_chapter_and_only_existing_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    for f in files:
        assert any((ROOT / f"{f}{ext}").exists() for ext in (".md", ".ipynb")), f"_toc.yml: {f} missing"
    chapters = {f"chapters/{p.stem}" for p in (ROOT / "chapters").glob("*.ipynb")}
    assert chapters, "no chapters found"
    assert chapters <= set(files), f"not in _toc.yml: {sorted(chapters - set(files))}"
    numbered = sorted(f for f in files if f.startswith("chapters/"))
    assert numbered == [f for f in files if f.startswith("chapters/")], "chapters out of order in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_with_the_setup_call(path):
    # tools/colab.py generates the canonical setup cell from _config.yml's repository setting.
    colab = load_script("tools/colab.py", "imagenet_book_colab_tool")
    nb = nbformat.read(path, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    expected = colab.setup_cell(colab.read_setting(ROOT / "_config.yml"))
    assert first_code.source == expected, f"{path.name}: run `make colab-links` (tools/colab.py sync)"
    assert expected.endswith(SETUP_CELL)  # on every machine but Colab, it is just these two lines
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_in_stored_form(path):
    nbtool = load_script("tools/notebooks.py", "imagenet_book_notebooks_tool")
    nb = nbformat.read(path, as_version=4)
    assert nbtool.stored_form(nb) == nb, f"{path.name}: run `make outputs` (outputs only where checked)"
    checked = [c for c in nb.cells if nbtool.is_checked(c)]
    assert checked and all(c.outputs for c in checked), f"{path.name}: checked cells need stored outputs"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if re.match(r"\d\d_", p.name) and p.parent.name == "chapters"],
                         ids=lambda p: p.stem)
def test_every_chapter_ends_with_exercises(path):
    """Each numbered chapter's last cell is its Exercises section, with at least 4 numbered ones."""
    last = nbformat.read(path, as_version=4).cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Exercises"), f"{path.name}: no Exercises last"
    numbered = re.findall(r"^\d+\. \*\*", last.source, flags=re.M)
    assert len(numbered) >= 4, f"{path.name}: {len(numbered)} exercises, at least 4 expected"


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
@pytest.mark.parametrize("variable", ["IMAGENET_BOOK_DATA", "IMAGENET_BOOK_CACHE", "IMAGENET_BOOK_RESULTS"])
def test_the_makefile_makes_relative_roots_absolute(variable, tmp_path):
    """`IMAGENET_BOOK_DATA=../shared/data make book` means from the repository root: every notebook
    executes in chapters/, where the same relative path names another folder. Absolute paths, a
    home-relative one and an unset variable pass through as they are."""
    def seen(value):
        env = {k: v for k, v in os.environ.items() if k != variable} | ({variable: value} if value is not None else {})
        out = subprocess.run(["make", "-s", "-C", str(ROOT), "--eval", f'show: ; @echo "[$${variable}]"', "show"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        return out.strip()[1:-1]

    assert seen("../shared/data") == f"{ROOT}/../shared/data"
    assert seen("my data") == f"{ROOT}/my data"
    assert seen(str(tmp_path)) == str(tmp_path)
    assert seen("~/datasets") == "~/datasets"
    assert seen(None) == ""


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_lab_passes_allow_root_only_to_root():
    """Jupyter refuses to start as root (containers, cloud VMs) without --allow-root: `make lab`
    passes it then, and only then."""
    out = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if "jupyter lab chapters" in x)
    assert ("--allow-root" in line) == (os.geteuid() == 0)
