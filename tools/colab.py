"""Colab links and the setup cell, generated from the ONE repository setting in ``_config.yml``.

``_config.yml`` holds ``repository.url`` and ``repository.branch`` (and ``launch_buttons.colab_url``,
which the website's launch button uses too). From them this tool writes:

* in every lab (``labs/*.ipynb``), right after the ``# Title`` cell, a markdown cell with an
  "Open in Colab" badge linking to ``<colab_url>/github/<owner>/<repo>/blob/<branch>/labs/<file>``
  (tagged ``remove-cell``: the website shows its own launch button instead);
* in every notebook of ``chapters/`` and ``labs/``, the first code cell: the canonical setup cell,
  which on Colab (and only there) installs the course package from the repository before the
  usual ``import imagenet_book as ib`` / ``cfg = ib.start()``.

    python tools/colab.py sync  [paths...]   # write them (default: chapters labs); `make colab-links`
    python tools/colab.py check [paths...]   # exit 1 listing the notebooks that disagree

A fork changes the two ``repository`` lines of ``_config.yml`` and runs ``make colab-links``.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATHS = ("chapters", "labs")
BADGE_MARK = "colab-badge.svg"  # how a badge cell is recognised (its image)
BADGE_TAG = "remove-cell"       # Jupyter Book's tag: not on the website
SETUP_MARKS = ("import imagenet_book as ib", "ib.start(")  # how a setup cell is recognised


class ColabConfigError(ValueError):
    """``_config.yml`` lacks the repository setting, or it is not a GitHub repository URL."""


@dataclass(frozen=True)
class RepoSetting:
    """The repository setting of ``_config.yml``: what every generated link is made from."""

    url: str         # https://github.com/<owner>/<repo>
    branch: str      # the branch the links and the install line point at
    colab_url: str   # https://colab.research.google.com
    owner: str
    repo: str


def read_setting(config: str | Path = ROOT / "_config.yml") -> RepoSetting:
    """Read ``repository.url``/``repository.branch`` and ``launch_buttons.colab_url``."""
    config = Path(config)
    data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    url = str((data.get("repository") or {}).get("url") or "").strip()
    branch = str((data.get("repository") or {}).get("branch") or "main").strip()
    colab_url = str((data.get("launch_buttons") or {}).get("colab_url")
                    or "https://colab.research.google.com").strip().rstrip("/")
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?", url)
    if not match:
        raise ColabConfigError(
            f"{config}: repository.url is {url!r}; Colab opens notebooks from GitHub, so set it to "
            "https://github.com/<owner>/<repo> (and repository.branch to the branch to link to).")
    return RepoSetting(url=f"https://github.com/{match[1]}/{match[2]}", branch=branch,
                       colab_url=colab_url, owner=match[1], repo=match[2])


def setup_cell(setting: RepoSetting) -> str:
    """The canonical first code cell of every notebook.

    On Colab it installs the package from the repository; ``%pip`` installs into the running
    kernel, and the package's requirements are ranges (``torch>=...``), so Colab's own torch is
    kept. Everywhere else the ``if`` is false and the cell is the usual two lines.
    """
    return (
        "import sys\n"
        'if "google.colab" in sys.modules:  # Colab only: install the course package, keep Colab\'s torch\n'
        f'    %pip install -q "imagenet-book @ git+{setting.url}@{setting.branch}"\n'
        "import imagenet_book as ib\n"
        "cfg = ib.start()"
    )


def colab_link(setting: RepoSetting, lab: str | Path) -> str:
    """``<colab_url>/github/<owner>/<repo>/blob/<branch>/labs/<file>``: opens the lab in Colab."""
    name = Path(lab).name
    return f"{setting.colab_url}/github/{setting.owner}/{setting.repo}/blob/{setting.branch}/labs/{name}"


def badge_cell(setting: RepoSetting, lab: str | Path) -> str:
    """The markdown of a lab's "Open in Colab" badge."""
    return f"[![Open In Colab]({setting.colab_url}/assets/{BADGE_MARK})]({colab_link(setting, lab)})"


def _is_setup(source: str) -> bool:
    return all(mark in source for mark in SETUP_MARKS)


def synced(nb, path: Path, setting: RepoSetting):
    """The notebook as ``sync`` leaves it (a new object; ``nb`` is not changed).

    Raises:
        ValueError: the notebook has no ``# Title`` cell first, or its first code cell is not a
            setup cell (``import imagenet_book as ib`` ... ``ib.start(``): it is never overwritten.
    """
    nb = copy.deepcopy(nb)
    if not nb.cells or nb.cells[0].cell_type != "markdown" or not nb.cells[0].source.startswith("# "):
        raise ValueError(f"{path}: the first cell must be a markdown '# Title' cell.")
    first_code = next((c for c in nb.cells if c.cell_type == "code"), None)
    if first_code is None or not _is_setup(first_code.source):
        raise ValueError(
            f"{path}: the first code cell is not a setup cell (it must import imagenet_book as ib "
            "and call ib.start()); add one before the notebook's other code, then sync again.")
    first_code.source = setup_cell(setting)
    if path.resolve().parent.name == "labs":
        badge = badge_cell(setting, path)
        if len(nb.cells) > 1 and nb.cells[1].cell_type == "markdown" and BADGE_MARK in nb.cells[1].source:
            nb.cells[1].source = badge
        else:
            nb.cells.insert(1, nbformat.v4.new_markdown_cell(badge))
        # The website has its own launch button and loads nothing from other sites: Jupyter Book
        # leaves the badge out of the page; GitHub, Colab and Jupyter show it.
        tags = nb.cells[1].metadata.setdefault("tags", [])
        if BADGE_TAG not in tags:
            tags.append(BADGE_TAG)
    return nb


def notebooks(paths: list[str]) -> list[Path]:
    """The notebooks under ``paths`` (folders are searched one level deep, like ``make``'s)."""
    found: list[Path] = []
    for p in map(Path, paths):
        p = p if p.is_absolute() else ROOT / p
        if p.is_dir():
            found += sorted(p.glob("*.ipynb"))
        elif p.suffix == ".ipynb" and p.is_file():
            found.append(p)
        elif not p.exists() and p.name in DEFAULT_PATHS:
            continue  # e.g. no labs/ yet
        else:
            raise ValueError(f"{p}: not a notebook or a folder of notebooks")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["sync", "check"])
    parser.add_argument("paths", nargs="*", default=list(DEFAULT_PATHS),
                        help="notebooks or folders of notebooks (default: chapters labs)")
    parser.add_argument("--config", default=str(ROOT / "_config.yml"), help="the book's _config.yml")
    args = parser.parse_args(argv)
    try:
        setting = read_setting(args.config)
        paths = notebooks(args.paths)
        bad = []
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            new = synced(nb, path, setting)
            if new == nb:
                continue
            if args.command == "sync":
                nbformat.write(new, path)
                print(f"updated {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
            else:
                bad.append(path)
    except (ColabConfigError, ValueError) as err:
        print(f"colab.py: {err}", file=sys.stderr)
        return 2
    for path in bad:
        path = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"{path}: setup cell or Colab badge out of date with _config.yml; run `make colab-links`",
              file=sys.stderr)
    if args.command == "check" and not bad:
        print(f"{len(paths)} notebooks agree with the repository setting ({setting.url}@{setting.branch})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
