"""The labs as classroom assignments: `otter assign` builds the student and autograder versions
(labs/assign.py, `make assignments`) and `otter run` grades them with the autograder zip, here,
without Docker, under the smoke profile.

For every lab: the instructor version scores full marks on every test, public and hidden; the
untouched student version fails every question, each with a message that says what to write; and
a deliberately wrong answer fails its question with a message that points at the mistake.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted((ROOT / "labs").glob("*.ipynb"))
# Grading the 24 notebooks takes about 3-5 minutes on a 2-core machine; the limit is for a stall,
# which then fails with the grading log instead of pytest-timeout's bare traceback.
GRADING_TIMEOUT = 2400
pytestmark = pytest.mark.timeout(GRADING_TIMEOUT + 600)  # the fixtures' setup counts against a test
# Labs graded in one process, one after the other: lab 5 fine-tunes from lab 4's checkpoint folder.
TOGETHER = {"04_pretraining_lab", "05_finetune_voc_lab"}


sys.path.insert(0, str(Path(__file__).parent))
from scripts import load_script  # noqa: E402

assign = load_script("labs/assign.py", "imagenet_book_labs_assign")
colab = load_script("tools/colab.py", "imagenet_book_colab_tool")

# One deliberately wrong answer per lab: (question, a line of the solution, the wrong line that
# replaces it, a phrase the failure message must contain).
WRONG = {
    "01_cross_entropy_lab": (  # a log-softmax without the max shift
        "q1",
        "    return z - m - torch.log(torch.exp(z - m).sum(dim=dim, keepdim=True))",
        "    return z - torch.log(torch.exp(z).sum(dim=dim, keepdim=True))",
        "subtract the max"),
    "02_resnet_lab": (  # a block without the shortcut
        "q1", "        return self.relu(out + identity)", "        return self.relu(out)",
        "is the shortcut added"),
    "03_augmentation_lab": (  # mirrored edges not swapped: x_min > x_max
        "q1", "    return torch.stack([width - x_max, y_min, width - x_min, y_max], dim=-1)",
        "    return torch.stack([width - x_min, y_min, width - x_max, y_max], dim=-1)",
        "a box must keep x_min < x_max"),
    "04_pretraining_lab": (  # warmup that starts at 0 and peaks a step late
        "q1", "        return (step + 1) / warmup_steps", "        return step / warmup_steps",
        "the engine's is"),
    "05_finetune_voc_lab": (  # the difficult entries not masked out
        "q3", "    return (bce * mask).sum() / mask.sum().clamp(min=1)", "    return bce.mean()",
        "mask 1 only"),
    "06_detection_lab": (  # torchvision's offset max + 1, which assumes no negative coordinate
        "q2", "    span = boxes.max() - boxes.min() + 1", "    span = boxes.max() + 1",
        "boxes with negative coordinates"),
    "07_segmentation_lab": (  # classes absent from truth and prediction averaged in (nan)
        "q2", '    mean_iou = iou[present].mean().item() if present.any() else float("nan")',
        "    mean_iou = iou.mean().item()",
        "leave the classes absent from truth and prediction out"),
    "08_selfsup_lab": (  # the anchor left among its own candidates (the diagonal not masked out)
        "q2",
        '    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))',
        "    logits = logits  # every view a candidate, the anchor itself included",
        "not a candidate for itself"),
}


def test_every_lab_has_a_wrong_answer_here():
    assert {p.stem for p in LABS} == set(WRONG), "add the new lab to WRONG"
    assert len(LABS) >= 5


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_solutions_and_tests_are_hidden_on_the_website(lab, tmp_path):
    missing = assign.hide_answers(lab, write=False)
    assert not missing, "".join(f"{lab.name}, cell {i}: needs the tag {tag!r}\n" for i, tag in missing) \
        + "run `python labs/assign.py hide`"
    # Without its tags, every solution and test cell of the lab (code, and the markdown of written
    # answers; not the Colab badge, tagged by tools/colab.py) is found, and tagged again.
    nb = nbformat.read(lab, as_version=4)
    tagged = {i for i, c in enumerate(nb.cells) if c.cell_type != "raw" and colab.BADGE_MARK not in c.source
              and set(c.metadata.get("tags", [])) & set(assign.WEBSITE_TAGS.values())}
    for cell in nb.cells:
        cell.metadata.pop("tags", None)
    copy = tmp_path / lab.name
    nbformat.write(nb, copy)
    found = assign.hide_answers(copy)
    assert {i for i, _ in found} == tagged and len(tagged) >= 6
    assert not assign.hide_answers(copy, write=False), "tagging twice changed the notebook again"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every lab through labs/assign.py (otter assign), once for the whole module."""
    out = tmp_path_factory.mktemp("assignments")
    return out, {lab.stem: assign.build(lab, out) for lab in LABS}


def _wrong_answer(lab: Path, solutions: Path, folder: Path) -> Path:
    """The solutions notebook with one solution line replaced by WRONG[lab]'s mistake."""
    question, right, wrong, _ = WRONG[lab.stem]
    nb = nbformat.read(solutions, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and right in c.source]
    assert len(cells) == 1, f"{lab.stem}: the solution line {right!r} is not in exactly one cell"
    cells[0].source = cells[0].source.replace(right, wrong)
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / lab.name)
    return folder / lab.name


@pytest.fixture(scope="module")
def graded(built, tmp_path_factory):
    """Grade, with each lab's autograder zip, its instructor version, its untouched student
    version and a wrong answer: `labs/assign.py grade` (otter run), in two processes.
    Returns {(lab, version): summary} (see assign.summarise)."""
    out, results = built
    work = tmp_path_factory.mktemp("graded")
    submissions = {}
    for lab in LABS:
        result = results[lab.stem]
        submissions[lab.stem, "instructor"] = result / "autograder" / lab.name
        submissions[lab.stem, "student"] = result / "student" / lab.name
        submissions[lab.stem, "wrong"] = _wrong_answer(lab, result / "autograder" / lab.name,
                                                       work / "wrong" / lab.stem)
    # Two processes, side by side (the suite waits meanwhile: on 2 cores, half the wall time). Each
    # grades its labs one after the other, as an instructor's `grade` command does; labs 4 and 5
    # share lab 4's checkpoint folder, so they stay in one process, in order.
    groups = [[key for key in submissions if key[0] not in TOGETHER],
              [key for key in submissions if key[0] in TOGETHER]]
    env = {**os.environ, "IMAGENET_BOOK_PROFILE": "smoke", "OMP_NUM_THREADS": "1"}
    runs = []
    for number, group in enumerate(g for g in groups if g):
        report, log_path = work / f"report-{number}.json", work / f"log-{number}.txt"
        command = [sys.executable, str(ROOT / "labs" / "assign.py"), "grade", "--out", str(out),
                   "--json", str(report)] + [str(submissions[key]) for key in group]
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # its own group: the kernels go with it
        runs.append((process, report, log_path))
    deadline = time.monotonic() + GRADING_TIMEOUT
    reports = {}
    try:
        for process, report, log_path in runs:
            try:
                code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"grading {len(submissions)} notebooks took over {GRADING_TIMEOUT} s (each takes "
                            f"seconds under the smoke profile); the log, with a line per notebook:\n"
                            + log_path.read_text()[-8000:])
            assert code == 0, log_path.read_text()[-5000:]
            reports.update(json.loads(report.read_text()))
    finally:
        for process, _, _ in runs:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return {key: reports[str(path)] for key, path in submissions.items()}


def _check_cells(nb) -> list[str]:
    """The questions of the grader.check("qN") cells, in order."""
    found = (re.fullmatch(r'grader\.check\("(q\d+)"\)', c.source.strip()) for c in nb.cells if c.cell_type == "code")
    return [m[1] for m in found if m]


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_generated_files(lab, built):
    result = built[1][lab.stem]
    student = nbformat.read(result / "student" / lab.name, as_version=4)
    solutions = nbformat.read(result / "autograder" / lab.name, as_version=4)
    setting = colab.read_setting()
    for nb in (student, solutions):
        # The title first, then the canonical setup cell as the first code cell, then otter's init.
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# Lab ")
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code[0].source == colab.setup_cell(setting)
        assert code[1].source == assign.init_cell(lab.name)
        assert sum("otter.Notebook(" in c.source for c in code) == 1
    text = "\n".join(c.source for c in student.cells)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN PROMPT", "BEGIN TESTS", "ASSIGNMENT CONFIG",
                   colab.BADGE_MARK):  # the badge would open the instructor version
        assert marker not in text, f"the student copy still holds {marker!r}"
    assert text.count("raise NotImplementedError(") >= 3, "the student copy has no stubs to fill in"
    checks = _check_cells(student)
    assert checks and checks == sorted(set(checks)), "one grader.check per question, in order"
    # Public tests for the students; public and hidden ones in the autograder zip.
    with zipfile.ZipFile(assign.autograder_zip(result)) as zf:
        zipped = {n: zf.read(n).decode() for n in zf.namelist()}
    hidden = [n for n, t in zipped.items() if n.startswith("tests/") and "hidden=True" in t]
    assert hidden, "the autograder has no hidden tests"
    for name in hidden:
        student_test = (result / "student" / name).read_text()
        assert "hidden=True" not in student_test, f"student/{name} leaks hidden tests"
    assert sorted(n for n in zipped if n.startswith("tests/")) == [f"tests/{q}.py" for q in checks]
    with zipfile.ZipFile(result / f"{lab.stem}-student.zip") as zf:
        handout = sorted(zf.namelist())
    assert handout == sorted([lab.name] + [f"tests/{q}.py" for q in checks]), handout
    assert f"git+{setting.url}@{setting.branch}" in zipped["environment.yml"]
    assert 'IMAGENET_BOOK_PROFILE="${IMAGENET_BOOK_PROFILE:-smoke}"' in zipped["run_autograder"]
    assert zipped["run_autograder"].rstrip().endswith("run_otter.py")


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_instructor_version_passes_every_test(lab, graded):
    scores = graded[lab.stem, "instructor"]
    assert scores["questions"], "nothing was graded"
    for name, q in scores["questions"].items():
        assert q["score"] == q["possible"] and not q["failures"], f"{lab.stem} {name}: {q['failures']}"
    assert scores["total"] == scores["possible"] > 0


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_untouched_student_version_fails_every_question_helpfully(lab, graded, built):
    scores = graded[lab.stem, "student"]
    questions = _check_cells(nbformat.read(built[1][lab.stem] / "student" / lab.name, as_version=4))
    assert sorted(scores["questions"]) == sorted(questions) and len(questions) >= 3
    for name, q in scores["questions"].items():
        assert q["score"] == 0, f"{lab.stem} {name} gives points to an empty answer"
        assert len(q["failures"]) == q["cases"] > 0, f"{lab.stem} {name}: a test case passes on an empty answer"
        for message in q["failures"]:
            # Each failure says which question to answer (the stubs' NotImplementedError, or the
            # run questions' "answer questions 1-3"), not a bare NameError or TypeError.
            assert re.search(r"question", message, re.IGNORECASE), f"{lab.stem} {name}:\n{message}"
            assert "NameError" not in message and "NoneType" not in message, message
    assert scores["total"] == 0


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_a_wrong_answer_fails_its_question(lab, graded):
    question, _, _, phrase = WRONG[lab.stem]
    q = graded[lab.stem, "wrong"]["questions"][question]
    assert q["score"] < q["possible"], f"the wrong answer to {question} got full marks"
    assert any(phrase in message for message in q["failures"]), q["failures"]
