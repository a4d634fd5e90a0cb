"""tools/colab.py: the Colab badges and the setup cell come from ONE repository setting in
_config.yml; `sync` writes them, `check` fails on notebooks that disagree; the setup cell runs in a
real IPython kernel, and on Colab it runs the %pip line (faked only at the magic boundary)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


sys.path.insert(0, str(Path(__file__).parent))
from scripts import load_script  # noqa: E402

colab = load_script("tools/colab.py", "imagenet_book_colab_tool")


def _config(tmp_path: Path, url: str, branch: str = "main") -> Path:
    data = yaml.safe_load((ROOT / "_config.yml").read_text())
    data["repository"] = {"url": url, "branch": branch}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "_config.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def _notebook(path: Path, first_code: str = "import imagenet_book as ib\ncfg = ib.start()") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A title"), nbformat.v4.new_markdown_cell("Some text."),
                nbformat.v4.new_code_cell(first_code), nbformat.v4.new_code_cell("x = 1")]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_the_setting_is_read_from_config_yml():
    setting = colab.read_setting(ROOT / "_config.yml")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert setting.url == config["repository"]["url"].removesuffix(".git").rstrip("/")
    assert setting.branch == config["repository"]["branch"]
    assert setting.colab_url == config["launch_buttons"]["colab_url"].rstrip("/")
    assert f"{setting.owner}/{setting.repo}" in setting.url


def test_setup_cell_and_badge_follow_the_setting(tmp_path):
    setting = colab.read_setting(_config(tmp_path, "https://github.com/someone/fork.git", "course-2027"))
    cell = colab.setup_cell(setting)
    assert '%pip install -q "imagenet-book @ git+https://github.com/someone/fork@course-2027"' in cell
    assert cell.endswith("import imagenet_book as ib\ncfg = ib.start()")
    assert "torch" not in cell.split("#")[0] and "--force-reinstall" not in cell and "-U" not in cell.split()
    assert colab.colab_link(setting, "labs/01_x.ipynb") == \
        "https://colab.research.google.com/github/someone/fork/blob/course-2027/labs/01_x.ipynb"
    assert "colab-badge.svg" in colab.badge_cell(setting, "labs/01_x.ipynb")


@pytest.mark.parametrize("url", ["", "https://gitlab.com/a/b", "git@github.com:a/b.git"])
def test_a_setting_colab_cannot_open_is_refused(tmp_path, url):
    with pytest.raises(colab.ColabConfigError, match="repository.url"):
        colab.read_setting(_config(tmp_path, url))


def test_sync_then_check_on_a_fork(tmp_path):
    lab = _notebook(tmp_path / "labs" / "01_a_lab.ipynb")
    chapter = _notebook(tmp_path / "chapters" / "01_a.ipynb")
    config = _config(tmp_path, "https://github.com/someone/fork")
    paths = [str(tmp_path / "labs"), str(tmp_path / "chapters")]
    assert colab.main(["check", *paths, "--config", str(config)]) == 1  # the old setup cell
    assert colab.main(["sync", *paths, "--config", str(config)]) == 0
    assert colab.main(["check", *paths, "--config", str(config)]) == 0
    setting = colab.read_setting(config)
    for path in (lab, chapter):
        nb = nbformat.read(path, as_version=4)
        first_code = next(c for c in nb.cells if c.cell_type == "code")
        assert first_code.source == colab.setup_cell(setting)
        assert nb.cells[-1].source == "x = 1"  # other cells untouched
    lab_nb, chapter_nb = nbformat.read(lab, as_version=4), nbformat.read(chapter, as_version=4)
    assert lab_nb.cells[1].source == colab.badge_cell(setting, lab), "the badge goes right after the title"
    assert "remove-cell" in lab_nb.cells[1].metadata["tags"], "the website shows its own launch button"
    assert len(lab_nb.cells) == 5 and len(chapter_nb.cells) == 4, "chapters get no badge"
    # Syncing again changes nothing; a new setting updates the badge in place.
    before = lab.read_bytes()
    assert colab.main(["sync", *paths, "--config", str(config)]) == 0
    assert lab.read_bytes() == before
    moved = _config(tmp_path / "moved", "https://github.com/other/place", "v2")
    assert colab.main(["check", *paths, "--config", str(moved)]) == 1
    colab.main(["sync", *paths, "--config", str(moved)])
    lab_nb = nbformat.read(lab, as_version=4)
    assert len(lab_nb.cells) == 5 and "other/place/blob/v2/labs/01_a_lab.ipynb" in lab_nb.cells[1].source


def test_check_lists_the_notebooks_that_disagree(tmp_path):
    good = _notebook(tmp_path / "nbs" / "good.ipynb")
    _notebook(tmp_path / "nbs" / "stale.ipynb")
    config = _config(tmp_path, "https://github.com/a/b")
    colab.main(["sync", str(good), "--config", str(config)])
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "colab.py"), "check", str(tmp_path / "nbs"),
                          "--config", str(config)], capture_output=True, text=True)
    assert run.returncode == 1
    assert "stale.ipynb" in run.stderr and "good.ipynb" not in run.stderr
    assert "make colab-links" in run.stderr


def test_a_notebook_without_a_setup_cell_is_never_overwritten(tmp_path):
    path = _notebook(tmp_path / "nbs" / "x.ipynb", first_code="data = load_everything()")
    before = path.read_bytes()
    config = _config(tmp_path, "https://github.com/a/b")
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "colab.py"), "sync", str(path),
                          "--config", str(config)], capture_output=True, text=True)
    assert run.returncode == 2 and "x.ipynb" in run.stderr and "not a setup cell" in run.stderr
    assert path.read_bytes() == before


def test_the_repository_agrees_with_its_setting():
    """What CI checks: every chapter and lab carries the setup cell (and every lab the badge)
    generated from _config.yml. After changing the setting, run `make colab-links`."""
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "colab.py"), "check", "chapters", "labs"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr


def test_makefile_target_runs_sync():
    makefile = (ROOT / "Makefile").read_text()
    assert "colab-links:" in makefile and "tools/colab.py sync" in makefile


KERNEL_CHECK = """
import sys, types
calls = []
ip = get_ipython()
ip.register_magic_function(lambda line: calls.append(line), magic_kind="line", magic_name="pip")
sys.modules["google.colab"] = types.ModuleType("google.colab")  # the kernel now looks like Colab's
"""


def test_the_setup_cell_runs_in_a_kernel_and_installs_only_on_colab(tmp_path, monkeypatch):
    """Run the canonical cell in a real IPython kernel: elsewhere it only imports and starts; on
    Colab (google.colab imported, as Colab's kernel does) it runs the indented %pip line. Only the
    %pip magic is replaced, by one that records its argument: nothing is installed."""
    from nbclient import NotebookClient

    monkeypatch.setenv("IMAGENET_BOOK_PROFILE", "smoke")
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("IMAGENET_BOOK_CACHE", str(cache))
    setting = colab.read_setting(ROOT / "_config.yml")
    cell = colab.setup_cell(setting)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(cell),
                nbformat.v4.new_code_cell("print('profile', cfg.profile.name)"),
                nbformat.v4.new_code_cell(KERNEL_CHECK),
                nbformat.v4.new_code_cell(cell),
                nbformat.v4.new_code_cell("print(calls)")]
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    text = ["".join(o.get("text", "") for o in c.outputs) for c in nb.cells]
    assert "profile=smoke" in text[0] and "profile smoke" in text[1]
    assert f"install -q \"imagenet-book @ git+{setting.url}@{setting.branch}\"" in text[4]
    assert "profile=smoke" in text[3]


def test_an_indented_pip_magic_really_runs_in_a_kernel():
    """The real %pip, indented inside an if-block as in the setup cell (IPython turns it into a
    call to the magic; `%pip --version` installs nothing)."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("if True:\n    %pip --version")]
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    out = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert out.startswith("pip ") and "python" in out.lower()


def test_colab_tool_handles_the_real_labs_folder_layout(tmp_path):
    """The badge of a real lab points at labs/<its file name>."""
    labs = sorted((ROOT / "labs").glob("*.ipynb"))
    assert labs, "no labs"
    copy = tmp_path / "labs" / labs[0].name
    copy.parent.mkdir()
    shutil.copy(labs[0], copy)
    setting = colab.read_setting(ROOT / "_config.yml")
    nb = nbformat.read(copy, as_version=4)
    assert colab.synced(nb, copy, setting) == nb  # the committed lab is in sync
    assert nb.cells[1].source.endswith(f"/blob/{setting.branch}/labs/{labs[0].name})")
