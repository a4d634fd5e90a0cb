"""The browser the website test reads the book in: find a Chromium (or Chrome), or get one.

``make test`` runs this first (``make browser`` runs it alone; ``.ci/run`` relies on it through
``make test``). The first of these that works is used:

1. ``IMAGENET_BOOK_CHROMIUM``, when set (then only it: a path chosen by the user is not replaced);
2. a Chromium or Chrome already on the machine: ``chromium``, ``chromium-browser``,
   ``google-chrome`` or ``google-chrome-stable`` on ``PATH``;
3. Playwright's own Chromium, downloaded earlier into its cache (``~/.cache/ms-playwright``);
4. Playwright's download, no root needed: ``python -m playwright install chromium`` (needs the
   network; offline it fails in seconds and the next way is tried);
5. the system package manager, as root or with password-less sudo:
   ``apt-get update && apt-get install -y chromium`` (Debian, Ubuntu) or ``dnf install -y chromium``.

A browser counts only once it has rendered a page headless, with the flags the website test uses.
The path of the browser is printed on stdout (progress goes to stderr). Where nothing works, the
script exits 1 with ONE message saying what to install. ``IMAGENET_BOOK_SKIP_BROWSER=1`` skips all
of this, and the website test's browser checks with it.

    python tools/browser.py          find one, else get one; print its path
    python tools/browser.py --find   find only, install nothing (exit 1 when there is none)

tests/test_website.py calls :func:`find` (never installs anything itself).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ENV_PATH = "IMAGENET_BOOK_CHROMIUM"
ENV_SKIP = "IMAGENET_BOOK_SKIP_BROWSER"
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless, no sandbox (root, containers), no GPU, nothing fetched in the background.
# A throw-away --user-data-dir is added per launch (Playwright adds its own).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
CHECK_TIMEOUT = 120  # seconds for a first headless launch on a busy machine
MARK = "imagenet-book-browser-ok"
HOW_TO_INSTALL = (
    "Install Chromium or Chrome with your package manager (Debian/Ubuntu: `sudo apt-get install -y "
    "chromium`; Fedora: `sudo dnf install -y chromium`; macOS: `brew install --cask chromium`), or "
    "download Playwright's where the network allows (`.venv/bin/python -m playwright install "
    f"chromium`), or point {ENV_PATH} at a Chromium/Chrome binary; then run `make test` again. "
    f"To skip the website's browser checks on purpose: {ENV_SKIP}=1.")


def log(message: str) -> None:
    print(f"[browser] {message}", file=sys.stderr, flush=True)


def check(path: str) -> str | None:
    """None when ``path`` renders a page headless (the flags above); else what went wrong."""
    with tempfile.TemporaryDirectory(prefix="imagenet-book-chromium-") as profile:
        command = [path, *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                   f"data:text/html,<p>{MARK}</p>"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_TIMEOUT,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"{path} did not run: {err}"
    if MARK not in done.stdout:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"{path} did not render a page headless (exit {done.returncode}: {tail})"
    return None


def _playwright_chromium() -> str | None:
    """The Chromium of Playwright's cache, if Playwright is installed and has downloaded it."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    try:
        with sync_playwright() as p:
            path = p.chromium.executable_path
    except Exception:  # the driver failed to start: no usable Playwright here
        return None
    return path if path and Path(path).is_file() else None


def find(notes: list[str] | None = None) -> str | None:
    """The first working browser on this machine (steps 1-3 of the module's list), or None.
    What was tried and failed is appended to ``notes``."""
    notes = [] if notes is None else notes
    given = os.environ.get(ENV_PATH)
    if given:
        why = check(given) if Path(given).is_file() else f"{ENV_PATH}={given} is not a file"
        if why:
            notes.append(why)
        return None if why else given
    paths = [shutil.which(name) for name in NAMES]
    paths = list(dict.fromkeys(p for p in paths if p))
    for path in [*paths, "playwright"]:
        if path == "playwright":
            path = _playwright_chromium()
            if path is None:
                continue
        why = check(path)
        if why is None:
            return path
        notes.append(why)
    return None


def _run(command: list[str], what: str, timeout: float, quiet: bool = False, **env: str) -> str | None:
    """Run ``command``; None when it succeeded, else why not. Its output is shown as it goes, or,
    ``quiet``, only its last line and only on failure."""
    log(f"{what}: {' '.join(command)}")
    try:
        done = subprocess.run(command, timeout=timeout, stdin=subprocess.DEVNULL, text=True,
                              stdout=subprocess.PIPE if quiet else sys.stderr, stderr=subprocess.STDOUT,
                              env={**os.environ, **env})
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{what} failed: {err}"
    if done.returncode == 0:
        return None
    lines = (done.stdout or "").strip().splitlines() if quiet else []
    errors = [line.strip() for line in lines if line.strip().startswith("Error")] or lines[-1:]
    return f"{what} failed (exit {done.returncode}{': ' + errors[-1] if errors else ''})"


def install_with_playwright() -> str | None:
    """Step 4: Playwright's own Chromium into the user's cache (no root). None on success."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Playwright's download: the playwright package is not installed (it is in the dev extra)"
    return _run([sys.executable, "-m", "playwright", "install", "chromium"], "Playwright's download", 900,
                quiet=True)


def install_with_package_manager() -> str | None:
    """Step 5: the system package, as root or through password-less sudo. None on success."""
    if os.geteuid() == 0:
        sudo = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        sudo = ["sudo", "-n"]
    else:
        return "the system package manager: needs root or password-less sudo (this is a normal user)"
    if shutil.which("apt-get"):
        why = _run([*sudo, "apt-get", "update"], "apt-get update", 900)
        if why:
            return why
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        why = _run([*sudo, "apt-get", "install", "-y", "chromium"], "apt-get install chromium", 1800, **env)
        if why and not _run([*sudo, "apt-get", "install", "-y", "chromium-browser"],  # Ubuntu's name
                            "apt-get install chromium-browser", 1800, **env):
            why = None
        return why
    if shutil.which("dnf"):
        return _run([*sudo, "dnf", "install", "-y", "chromium"], "dnf install chromium", 1800)
    return "the system package manager: neither apt-get nor dnf is here"


def obtain(install: bool = True) -> tuple[str | None, list[str]]:
    """A working browser: found, else (with ``install``) installed by Playwright or the system
    package manager. Returns (path or None, what was tried and failed)."""
    notes: list[str] = []
    path = find(notes)
    if path or not install or os.environ.get(ENV_PATH):
        return path, notes
    for installer in (install_with_playwright, install_with_package_manager):
        why = installer()
        if why:
            notes.append(why)
            continue
        path = find(notes)
        if path:
            return path, notes
    return None, notes


def missing_message(notes: list[str]) -> str:
    tried = "; ".join(notes) if notes else f"no {', '.join(NAMES)} on PATH"
    return (f"The website test needs a headless Chromium or Chrome, and none could be found or installed "
            f"(tried: {tried}). {HOW_TO_INSTALL}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--find", action="store_true", help="only look for one; install nothing")
    args = parser.parse_args(argv)
    if os.environ.get(ENV_SKIP) == "1":
        log(f"{ENV_SKIP}=1: no browser needed, the website's browser checks are skipped")
        return 0
    path, notes = obtain(install=not args.find)
    if path is None:
        print(f"\n{missing_message(notes)}\n", file=sys.stderr)
        return 1
    log(f"using {path}")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
