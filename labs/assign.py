"""Build the classroom assignments from the labs: student notebooks and autograder zips.

Each lab in this folder is an otter-grader *instructor notebook* (``otter assign`` format:
questions, solutions, public and hidden tests). For every lab this script runs ``otter assign``
and writes::

    _build/assignments/<lab>/<lab>-student.zip          hand this out: the two below
    _build/assignments/<lab>/student/<lab>.ipynb        the student notebook (stubs, no solutions)
    _build/assignments/<lab>/student/tests/qN.py        the public tests grader.check() runs
    _build/assignments/<lab>/autograder/<lab>.ipynb     the solutions, as the autograder sees them
    _build/assignments/<lab>/autograder/<lab>-autograder_<time>.zip   upload to Gradescope / otter run
    _build/assignments/<lab>/autograder/tests/qN.py     public + hidden tests

and then adjusts what otter cannot be configured to do:

* **otter's init cell goes right after the setup cell** (the lab's first code cell), not at the
  very top: on Colab the setup cell is what installs things, the init cell installs
  otter-grader there too and uses the ``sys`` the setup cell imports, and the notebook keeps its
  title first and its setup cell as its first code cell, like every notebook of the book;
* the autograder zip's grading environment (``environment.yml``) installs the course package
  from the repository named in ``_config.yml`` (CPU torch), and its ``run_autograder`` grades
  under the ``smoke``
  profile (unless ``IMAGENET_BOOK_PROFILE`` says otherwise): the autograder re-runs the
  student's code to grade it, in seconds on Gradescope's CPUs; the full-scale results are the
  student's own run on a GPU;
* the "Open in Colab" badge is left out of the copies: it opens the instructor version;
* a handout zip holds the student notebook and its public tests side by side.

    python labs/assign.py build                 # every lab (what `make assignments` runs)
    python labs/assign.py build labs/01_cross_entropy_lab.ipynb --out /tmp/a
    python labs/assign.py build --check         # and grade each solutions notebook with its zip
    python labs/assign.py hide                  # keep the solutions and tests off the website

Grading submissions locally, without Docker (``otter run`` on each, under the smoke profile)::

    python labs/assign.py grade submissions/*.ipynb --lab 01_cross_entropy_lab [--json scores.json]
    IMAGENET_BOOK_PROFILE=smoke otter run -a _build/assignments/<lab>/autograder/<lab>-autograder_*.zip submission.ipynb
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
LABS = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "_build" / "assignments"
GRADING_PROFILE = "smoke"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _colab_tool():
    """tools/colab.py, which reads the repository setting of _config.yml."""
    if "imagenet_book_colab_tool" not in sys.modules:
        spec = importlib.util.spec_from_file_location("imagenet_book_colab_tool", ROOT / "tools" / "colab.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["imagenet_book_colab_tool"]


def init_cell(notebook_name: str) -> str:
    """Otter's init cell for the student and autograder copies (placed after the setup cell)."""
    return (
        '# Otter-grader: grader.check("q1") runs the public tests of question q1 (files in tests/)\n'
        'if "google.colab" in sys.modules:  # Colab: install the grader '
        f'(after `!unzip -o {Path(notebook_name).stem}-student.zip`)\n'
        "    %pip install -q otter-grader\n"
        "import otter\n"
        f'grader = otter.Notebook(None if "google.colab" in sys.modules else "{notebook_name}")'
    )


def requirements(setting) -> str:
    """requirements.txt of the grading image: the course package from the repository, CPU torch."""
    return (f"--extra-index-url {TORCH_CPU_INDEX}\n"
            f"imagenet-book @ git+{setting.url}@{setting.branch}\n")


def _add_init_cell(path: Path) -> None:
    """Put otter's init cell after the setup cell, and drop the lab's "Open in Colab" badge: it
    opens the instructor version in the repository, solutions included."""
    badge = _colab_tool().BADGE_MARK
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if not (c.cell_type == "markdown" and badge in c.source)]
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    cell = nbformat.v4.new_code_cell(init_cell(path.name))
    cell.metadata = {"deletable": False, "editable": False}  # otter locks its own cells the same way
    nb.cells.insert(first_code + 1, cell)
    nbformat.write(nb, path)


def _grade_under_profile(zip_path: Path) -> None:
    """Rewrite the zip's run_autograder so that Gradescope grades under the smoke profile."""
    line = f'export IMAGENET_BOOK_PROFILE="${{IMAGENET_BOOK_PROFILE:-{GRADING_PROFILE}}}"\n'
    tmp = zip_path.with_suffix(".tmp")
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "run_autograder":
                lines = data.decode().splitlines(keepends=True)
                last_python = max(i for i, text in enumerate(lines) if text.startswith("python "))
                data = "".join(lines[:last_python] + [line] + lines[last_python:]).encode()
            dst.writestr(info, data)  # the same ZipInfo: names, dates and permissions are kept
    os.replace(tmp, zip_path)


def build(lab: Path, out: Path = DEFAULT_OUT) -> Path:
    """Run ``otter assign`` on one lab into ``out / <lab stem>`` and adjust its outputs.

    Returns:
        The lab's output folder, holding ``student/`` and ``autograder/``.
    """
    from otter.assign import main as otter_assign

    lab = Path(lab).resolve()
    setting = _colab_tool().read_setting()
    result = Path(out).resolve() / lab.stem
    with tempfile.TemporaryDirectory() as staging:
        staged = Path(staging) / lab.name
        nb = nbformat.read(lab, as_version=4)
        config = next((c for c in nb.cells if c.cell_type == "raw"
                       and c.source.lstrip().upper().startswith("# ASSIGNMENT CONFIG")), None)
        if config is None:
            raise ValueError(f"{lab}: no '# ASSIGNMENT CONFIG' raw cell; is this an otter lab?")
        config.source = config.source.rstrip() + "\nrequirements: requirements.txt\n"
        nbformat.write(nb, staged)
        (Path(staging) / "requirements.txt").write_text(requirements(setting))
        shutil.rmtree(result, ignore_errors=True)
        otter_assign(str(staged), str(result), no_run_tests=True, no_pdfs=True)
    for version in ("student", "autograder"):
        _add_init_cell(result / version / lab.name)
    _grade_under_profile(autograder_zip(result))
    _handout_zip(result / "student", result / f"{lab.stem}-student.zip")
    return result


def _handout_zip(folder: Path, zip_path: Path) -> None:
    """The student folder's contents (the notebook and tests/) at the top of one zip to hand out:
    unzipped anywhere, on Colab into /content, the tests sit beside the notebook."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())


def autograder_zip(result: Path) -> Path:
    """The autograder zip in a lab's output folder."""
    zips = sorted((Path(result) / "autograder").glob("*-autograder_*.zip"))
    if len(zips) != 1:
        raise FileNotFoundError(f"expected one autograder zip in {result}/autograder, found {zips}")
    return zips[0]


def grade(submission: Path, zip_path: Path):
    """Grade one notebook with an autograder zip, without Docker (``otter run``), under the
    grading profile unless ``IMAGENET_BOOK_PROFILE`` is set. Returns otter's ``GradingResults``."""
    import otter.run

    old = os.environ.get("IMAGENET_BOOK_PROFILE")
    os.environ.setdefault("IMAGENET_BOOK_PROFILE", GRADING_PROFILE)
    try:
        return otter.run.main(str(submission), autograder=str(zip_path), output_dir=None, no_logo=True)
    finally:
        if old is None:
            os.environ.pop("IMAGENET_BOOK_PROFILE", None)


def summarise(results) -> dict:
    """Otter's GradingResults as plain data: ``{"total", "possible", "questions": {name:
    {"score", "possible", "failures": [message of each failed test case]}}}``."""
    questions = {}
    for name, test_file in results.results.items():
        questions[name] = {"score": test_file.score, "possible": test_file.possible,
                           "cases": len(test_file.test_case_results),
                           "failures": [r.message for r in test_file.test_case_results if not r.passed]}
    return {"total": results.total, "possible": results.possible, "questions": questions}


#: Jupyter Book tags that keep a lab's answers off the website (the repository still has them):
#: the solution cells' code (their outputs stay) and the test cells, public and hidden.
WEBSITE_TAGS = {"solution": "remove-input", "tests": "remove-cell"}
#: The tag of a written answer: the markdown solution cell of a manually graded question
#: (``manual: true``) holds the model answer and grading notes, and is left out whole.
WRITTEN_ANSWER_TAG = "remove-cell"


def hide_answers(lab: Path, write: bool = True) -> list[tuple[int, str]]:
    """Tag the lab's solution cells ``remove-input`` and its test cells ``remove-cell`` (see
    :data:`WEBSITE_TAGS`), and the written answers of its manually graded questions (markdown
    solution cells) ``remove-cell``, so that the website shows each question and what the finished
    code prints, but not the code, the model answers or the hidden tests. Returns ``(cell index,
    tag)`` for each cell that lacked its tag (empty when the lab is already tagged); writes the
    notebook when ``write`` and some did."""
    nb = nbformat.read(lab, as_version=4)
    region, missing = None, []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "raw":
            head = cell.source.strip().upper()
            for name in WEBSITE_TAGS:
                if head.startswith(f"# BEGIN {name.upper()}"):
                    region = name
                elif head.startswith(f"# END {name.upper()}"):
                    region = None
        elif region is not None and cell.cell_type in ("code", "markdown"):
            tag = WEBSITE_TAGS[region] if cell.cell_type == "code" else WRITTEN_ANSWER_TAG
            tags = cell.metadata.setdefault("tags", [])
            if tag not in tags:
                tags.append(tag)
                missing.append((index, tag))
    if missing and write:
        nbformat.write(nb, lab)
    return missing


def _build_command(args) -> int:
    labs = [Path(p) for p in args.labs] or sorted(LABS.glob("*.ipynb"))
    failed = []
    for lab in labs:
        result = build(lab, Path(args.out))
        print(f"{lab.name}: hand out {result / (lab.stem + '-student.zip')}; autograder {autograder_zip(result)}")
        if args.check:
            scores = grade(result / "autograder" / lab.name, autograder_zip(result))
            print(f"{lab.name}: solutions score {scores.total} / {scores.possible}")
            if scores.total != scores.possible:
                failed.append(lab.name)
    for name in failed:
        print(f"{name}: the solutions do not pass every test", file=sys.stderr)
    return 1 if failed else 0


def _grade_command(args) -> int:
    import json

    report = {}
    for submission in map(Path, args.submissions):
        lab = args.lab or submission.stem
        folder = Path(args.out) / lab
        if not folder.is_dir():
            print(f"{submission}: no assignment {lab!r} in {args.out}; build it first "
                  "(make assignments), or name the lab with --lab", file=sys.stderr)
            return 2
        print(f"{time.strftime('%H:%M:%S')} grading {submission} ...", flush=True)
        started = time.monotonic()
        summary = summarise(grade(submission, autograder_zip(folder)))
        report[str(submission)] = summary
        print(f"{submission}: {summary['total']:g} / {summary['possible']:g} "
              + " ".join(f"{q}={v['score']:g}/{v['possible']:g}" for q, v in summary["questions"].items())
              + f" ({time.monotonic() - started:.0f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="student copies and autograder zips (make assignments)")
    b.add_argument("labs", nargs="*", help="lab notebooks (default: every labs/*.ipynb)")
    b.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: _build/assignments)")
    b.add_argument("--check", action="store_true",
                   help="grade each solutions notebook with its zip; fail unless it scores full marks")
    g = commands.add_parser("grade", help="grade submissions with a built autograder zip (otter run)")
    g.add_argument("submissions", nargs="+", help="submitted notebooks")
    g.add_argument("--lab", help="the lab they answer (default: each file's name, e.g. 01_cross_entropy_lab)")
    g.add_argument("--out", default=str(DEFAULT_OUT), help="where `build` wrote the assignments")
    g.add_argument("--json", help="also write every score and failure message to this file")
    h = commands.add_parser("hide", help="tag the labs' solution and test cells so the website hides them")
    h.add_argument("labs", nargs="*", help="lab notebooks (default: every labs/*.ipynb)")
    args = parser.parse_args(argv)
    if args.command == "hide":
        for lab in [Path(p) for p in args.labs] or sorted(LABS.glob("*.ipynb")):
            print(f"{lab.name}: tagged {len(hide_answers(lab))} cells")
        return 0
    return _build_command(args) if args.command == "build" else _grade_command(args)


if __name__ == "__main__":
    sys.exit(main())
