"""The website: built with every notebook executed (smoke profile), served over HTTP on 127.0.0.1,
and read in headless Chromium the way a reader's browser reads it.

What a reader relies on, and what is checked here:

* every page of the table of contents opens without error text, a traceback or a JavaScript error;
* the maths is typeset by MathJax (no raw TeX left), the figures load, the widgets are drawn
  (chapter 02's explorer: its sliders and its figure);
* every link inside the site leads to a page that exists and, for ``page.html#anchor``, to an
  anchor that exists on it;
* the site works offline: the browser never requests anything outside the site (MathJax and the
  ipywidgets manager are served from ``_static/``, see book/_static/README.md), and the widget
  scripts load only on the pages that have widgets.

A full-page screenshot of every page is kept in ``_build/screenshots/`` (printed at the end of
the run).

Each notebook is executed once per ``make test``: nbval runs it (every cell, smoke profile) and
tests/conftest.py records what it produced; these tests run after every notebook and build the
book, into ``_build/website-test/``, from a staging copy holding those executed notebooks, with
execution off. A notebook nbval did not run completely in this session (``pytest
tests/test_website.py`` alone, or a partial run such as ``pytest tests/test_website.py
chapters/02_cross_entropy.ipynb --nbval-lax``) is executed by the build instead, under the smoke
profile, so the whole book is always built and checked. ``IMAGENET_BOOK_SITE=_build/html`` checks
an existing build instead, for example the one ``make book`` made.

The browser is the one tools/browser.py finds (``IMAGENET_BOOK_CHROMIUM``, a Chromium or Chrome on
PATH, or Playwright's own); ``make test`` runs that script first, which installs one when it can.
Without one, ``test_a_browser_is_available`` FAILS once, saying what to install, and the tests
that need the browser or the build are skipped; ``IMAGENET_BOOK_SKIP_BROWSER=1`` opts out of them
explicitly.
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nbformat
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from scripts import load_script  # noqa: E402

browser_tool = load_script("tools/browser.py", "imagenet_book_browser_tool")

# Building the site executes every notebook: allow it more than the suite's default per-test limit.
pytestmark = pytest.mark.timeout(3600)

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build" / "website-test"
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM_FLAGS = browser_tool.FLAGS  # Playwright adds --user-data-dir (a throw-away profile)
SMOKE_CELL_TIMEOUT = 600  # seconds per cell when the test builds the site (smoke profile)
CDN_HOSTS = ("cdn.jsdelivr.net", "cdnjs.cloudflare.com", "unpkg.com", "ajax.googleapis.com")
# sphinx-thebe (part of Jupyter Book) writes thebe's URL into every page, and declares it twice
# (a JavaScript error on every page, harmless). thebe is fetched only if a reader activates live
# code, which this book does not offer; it has nothing to do with widgets.
THEBE_URL = "https://unpkg.com/thebe@"
KNOWN_PAGE_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)
# Markers of a failed cell or widget on a page.
ERROR_TEXT = ("Traceback (most recent call last)", "Error displaying widget", "Error rendering output",
              "Could not render content")
# Markup that should have been rendered (a directive or role shown as text means a parser
# mismatch, for example autodoc output read as Markdown; the last pattern is a Markdown table left
# as text, whose "---" Sphinx may have typeset as dashes).
RAW_MARKUP = re.compile(r"^\.\. [a-z:]+::|:(func|class|mod|meth|data|exc|attr|doc|ref|cite|numref):`"
                        r"|\{cite[a-z:]*\}`|```\{"
                        r"|\|\s*:?(-{3,}|\u2014)[-\u2014]*:?\s*\|", re.M)
# Explorers must not route figures through an Output widget (widgets.interact, interactive,
# interactive_output and Output all do).
OUTPUT_WIDGET = re.compile(r"\b(interact|interactive|interactive_output|interact_manual)\s*\(|\bOutput\s*\(")


def _config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def _toc_pages() -> list[str]:
    """The docnames of the table of contents, in reading order (root first)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("chapters") or entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return pages


def _notebooks() -> list[Path]:
    return sorted((ROOT / "chapters").glob("*.ipynb")) + sorted((ROOT / "labs").rglob("*.ipynb"))


# --- fast checks of the sources -------------------------------------------------------------


@pytest.mark.parametrize("notebook", _notebooks(), ids=lambda p: p.name)
def test_explorers_do_not_capture_output_in_an_output_widget(notebook):
    """nbclient (which executes the notebooks for the website and for nbval) mimics an Output
    widget by sending a `comm_msg` on the shell channel for every output the widget captures. That
    send goes through a synchronous copy of the asyncio shell socket while nbclient awaits the
    cell's `execute_reply` on it; when the two cross, the wake-up for the reply is lost and the
    cell stalls for the whole execution timeout (seen in `make book` as a hang in chapters 02 and
    05). Draw explorer figures into an `Image` widget instead (`ib.viz.figure_explorer`)."""
    nb = nbformat.read(notebook, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        code = "\n".join(line.split("#")[0] for line in cell.source.splitlines())  # not comments
        match = OUTPUT_WIDGET.search(code)
        assert match is None, (
            f"{notebook.relative_to(ROOT)}, cell {index}: `{match.group(0)}` captures output in an "
            "ipywidgets Output widget, which can stall unattended execution (make book, nbval). "
            "Render the figure into a widgets.Image instead, as ib.viz.figure_explorer does.")


def test_api_page_documents_every_module():
    import imagenet_book

    modules = {name for _, name, _ in pkgutil.walk_packages(imagenet_book.__path__, "imagenet_book.")
               if not name.endswith("__main__")}
    page = (ROOT / "book" / "api.md").read_text()
    documented = set(re.findall(r"^\.\. automodule:: (\S+)", page, re.M))
    missing = sorted(modules - documented)
    assert not missing, f"book/api.md has no automodule section for {missing}: add one per module"
    assert not documented - modules, f"book/api.md documents modules that do not exist: {documented - modules}"


def test_site_assets_are_vendored_with_their_licences():
    config = _config()["sphinx"]["config"]
    static = [ROOT / p for p in config["html_static_path"]]
    wanted = [config["mathjax_path"], *config["nb_ipywidgets_js"]]
    for path in wanted:
        assert "://" not in path, f"{path}: the site must serve its scripts itself, not from a CDN"
        assert any((folder / path).is_file() for folder in static), f"{path} is not in {static}"
    for folder in ("ipywidgets", "mathjax"):
        licences = list((ROOT / "book" / "_static" / folder).glob("LICENSE*"))
        assert licences, f"book/_static/{folder}/ needs the licence of what it vendors"


# --- the built site -------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _find_chromium() -> tuple[str | None, str]:
    """(the browser tools/browser.py finds, or None; the message saying what to install)."""
    notes: list[str] = []
    path = browser_tool.find(notes)
    return path, browser_tool.missing_message(notes)


def _chromium() -> str:
    """The Chromium to drive. Without one, skip: test_a_browser_is_available fails, once."""
    if os.environ.get(browser_tool.ENV_SKIP) == "1":
        pytest.skip(f"{browser_tool.ENV_SKIP}=1: the browser checks of the website are switched off")
    path, _ = _find_chromium()
    if path is None:
        pytest.skip("no headless Chromium: see test_a_browser_is_available")
    return path


def test_a_browser_is_available():
    """The one failure when there is no browser (the tests that need it are skipped)."""
    if os.environ.get(browser_tool.ENV_SKIP) == "1":
        pytest.skip(f"{browser_tool.ENV_SKIP}=1: the browser checks of the website are switched off")
    path, message = _find_chromium()
    if path is None:
        pytest.fail(message, pytrace=False)


def _stage(stage: Path, executed: dict[str, nbformat.NotebookNode]) -> dict:
    """A copy of the book's sources in ``stage``, the executed notebooks in place of the committed
    ones; returns the configuration to build it with (not yet written)."""
    shutil.copy2(ROOT / "_toc.yml", stage / "_toc.yml")
    ignore = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", ".pytest_cache")
    for folder in ("book", "chapters", "labs"):
        shutil.copytree(ROOT / folder, stage / folder, ignore=ignore)
    for relpath, nb in executed.items():
        nbformat.write(nb, stage / relpath)
    # The book's own configuration, with a per-cell limit fit for the smoke profile (every cell
    # takes seconds): a stalled cell fails the build in minutes, not after _config.yml's hour.
    config = _config()
    config["execute"]["timeout"] = SMOKE_CELL_TIMEOUT
    notebooks = {p.relative_to(ROOT).as_posix() for p in _notebooks()}
    if notebooks <= set(executed):
        config["execute"]["execute_notebooks"] = "off"  # every one executed already, by nbval
    else:  # execute the others only
        config["execute"]["exclude_patterns"] = sorted(executed)
    return config


ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def website_build(executed_notebooks) -> tuple[Path | None, str]:
    """Build the website now (smoke profile) from the notebooks nbval executed in this session,
    executing the others; or take IMAGENET_BOOK_SITE. Returns (its html folder, "") or (None,
    why it failed): test_the_website_builds reports a failure, once; the other tests skip."""
    _chromium()  # skip before spending minutes on the build
    given = os.environ.get("IMAGENET_BOOK_SITE")
    if given:
        html = Path(given).resolve()
        if not (html / "index.html").is_file():
            return None, f"IMAGENET_BOOK_SITE={given} has no index.html"
        return html, ""
    shutil.rmtree(BUILD, ignore_errors=True)
    stage = BUILD / "source"
    stage.mkdir(parents=True)
    config = _stage(stage, executed_notebooks)
    (stage / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    executing = len(_notebooks()) - len(executed_notebooks)
    env = dict(os.environ, IMAGENET_BOOK_PROFILE="smoke")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [str(jupyter_book), "build", str(stage), "-W", "--keep-going", "--all",
               "--path-output", str(BUILD)]
    started = time.monotonic()
    result = subprocess.run(command, env=env, cwd=stage, capture_output=True, text=True, timeout=3000)
    log = ANSI.sub("", result.stdout + result.stderr)
    (BUILD / "build.log").write_text(log)
    if result.returncode != 0:
        return None, (f"`{' '.join(command)}` failed (exit {result.returncode}); full log in "
                      f"{BUILD / 'build.log'}:\n{log[-6000:]}")
    print(f"\nwebsite built in {time.monotonic() - started:.0f} s from {len(executed_notebooks)} notebooks "
          f"executed by nbval, executing {executing} (smoke profile): {BUILD / '_build/html'}")
    return BUILD / "_build" / "html", ""


def test_the_website_builds(website_build):
    """The one failure when the build fails (the tests of the built site are skipped)."""
    html, why = website_build
    if html is None:
        pytest.fail(why, pytrace=False)


@pytest.fixture(scope="module")
def site(website_build) -> Path:
    """The built website's html folder."""
    html, _ = website_build
    if html is None:
        pytest.skip("the website did not build: see test_the_website_builds")
    return html


class _Handler(http.server.SimpleHTTPRequestHandler):
    missing: list[str]

    def log_message(self, format, *args):  # quiet; remember what was not found
        if len(args) > 1 and str(args[1]) == "404":
            self.missing.append(self.path)


@pytest.fixture(scope="module")
def server(site):
    """A real HTTP server for the site on a free port of 127.0.0.1; yields its base URL."""
    missing: list[str] = []
    handler = functools.partial(type("Handler", (_Handler,), {"missing": missing}), directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    yield base, missing
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, driven by Playwright, with a throw-away profile folder."""
    path = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright's Python package is needed to drive Chromium: "
                    "it is in the `dev` extra, which `make test` installs (the browser itself is the system "
                    "Chromium)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=path, args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1280, "height": 900})
        yield context
        context.close()
    print(f"\nscreenshots of the website: {SCREENSHOTS}")


def _html_pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if not p.relative_to(site).parts[0].startswith("_"))


def test_no_page_loads_widgets_or_maths_from_a_cdn(site):
    for page in _html_pages(site):
        text = page.read_text()
        urls = re.findall(r"https?://[^\s\"'<>)]+", text)
        cdn = [u for u in urls if any(h in u for h in CDN_HOSTS) and not u.startswith(THEBE_URL)]
        assert not cdn, f"{page.relative_to(site)} refers to a CDN: {sorted(set(cdn))}"


def test_widget_scripts_load_only_on_pages_with_widgets(site):
    with_widgets = []
    for page in _html_pages(site):
        text = page.read_text()
        has_state = "application/vnd.jupyter.widget-state+json" in text
        loads_manager = "ipywidgets/embed-amd.js" in text
        assert has_state == loads_manager, (
            f"{page.relative_to(site)}: widget state {'present' if has_state else 'absent'} but the "
            f"widget manager {'is' if loads_manager else 'is not'} loaded")
        if has_state:
            with_widgets.append(page.name)
    assert "02_cross_entropy.html" in with_widgets, "chapter 02's explorer lost its widget state"


def test_chapter_02_notebook_carries_the_explorer_state(site):
    """The executed notebook (what myst-nb renders from) stores the widgets' state, the figure
    of the explorer included (as an Image model with its PNG)."""
    executed = site.parent / "jupyter_execute" / "chapters" / "02_cross_entropy.ipynb"
    nb = nbformat.read(executed, as_version=4)
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    models = [m["model_name"] for m in state.values()]
    assert "ImageModel" in models and models.count("FloatSliderModel") == 5, models


def _answers(lab: Path) -> list[str]:
    """Lines the lab's page must not show: the first line of each solution (after otter's
    `# BEGIN SOLUTION NO PROMPT`) and the `def test_...` line of each test."""
    lines = []
    for cell in nbformat.read(lab, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        source = cell.source.splitlines()
        marks = [i for i, line in enumerate(source) if "# BEGIN SOLUTION NO PROMPT" in line]
        lines += [next(s.strip() for s in source[i + 1:] if s.strip()) for i in marks]
        lines += [line.strip() for line in source if line.startswith("def test_")]
    return lines


@pytest.mark.parametrize("lab", sorted((ROOT / "labs").glob("*.ipynb")), ids=lambda p: p.stem)
def test_lab_pages_show_the_questions_but_not_the_answers(lab, site):
    """The labs are the instructor versions, solutions and hidden tests included; their pages
    show the questions and what the finished code prints, not the code that answers them
    (`python labs/assign.py hide` tags those cells)."""
    page = html.unescape(re.sub(r"<[^>]+>", "", (site / "labs" / f"{lab.stem}.html").read_text()))
    assert "Question 1" in page, f"{lab.stem}: the questions are missing from its page"
    answers = _answers(lab)
    assert len(answers) >= 6, f"{lab.stem}: expected solutions and tests, found {answers}"
    shown = [line for line in answers if line in page]
    assert not shown, (f"labs/{lab.stem}.html shows answers: {shown}; run `python labs/assign.py hide` "
                       "and rebuild")


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        if tag in ("a", "link") and attrs.get("href"):
            self.hrefs.append(attrs["href"])


def _parse(text: str) -> _Links:
    parser = _Links()
    parser.feed(text)
    return parser


def test_every_internal_link_resolves(site, server):
    base, _ = server
    anchors: dict[str, set[str]] = {}
    broken = []
    checked = 0
    for page in _html_pages(site):
        page_url = base + page.relative_to(site).as_posix()
        for href in _parse(page.read_text()).hrefs:
            url = urllib.parse.urljoin(page_url, href)
            if not url.startswith(base):
                continue  # another site, mailto:, javascript:
            target, _, fragment = url.partition("#")
            if target not in anchors:
                try:
                    with urllib.request.urlopen(target, timeout=30) as response:
                        body = response.read()
                        status = response.status
                except urllib.error.HTTPError as err:
                    status, body = err.code, b""
                if status != 200:
                    broken.append(f"{page.relative_to(site)}: {href} -> HTTP {status}")
                    anchors[target] = set()
                    continue
                is_html = target.endswith((".html", "/"))
                anchors[target] = _parse(body.decode("utf-8", "replace")).ids if is_html else set()
            checked += 1
            fragment = urllib.parse.unquote(fragment)
            if fragment and target.endswith(".html") and fragment not in anchors[target]:
                broken.append(f"{page.relative_to(site)}: {href} -> no id {fragment!r} on that page")
    assert checked > 100, f"only {checked} internal links found: is the site complete?"
    assert not broken, "broken internal links:\n" + "\n".join(sorted(set(broken)))


def _docname_to_html(docname: str) -> str:
    return docname + ".html"


@pytest.mark.parametrize("docname", _toc_pages())
def test_page_in_browser(docname, site, server, browser):
    base, missing = server
    page = browser.new_page()
    requests, failed, errors = [], [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("requestfailed", lambda r: failed.append(f"{r.url} ({r.failure})"))
    page.on("response", lambda r: failed.append(f"{r.url} (HTTP {r.status})") if r.status >= 400 else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    missing.clear()
    try:
        page.goto(base + _docname_to_html(docname), wait_until="load", timeout=60_000)
        if page.locator(".math").count():
            page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                                   timeout=60_000)
            page.evaluate("() => MathJax.startup.promise")
        views = page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count()
        if views:  # the manager draws each view into a .widget-subarea inserted before its script
            page.wait_for_function(
                f"() => document.querySelectorAll('.widget-subarea > *').length >= {views}", timeout=60_000)
        # Every image fetched and decoded, every web font loaded. (Not Playwright's "networkidle":
        # on these pages it sometimes never came, with no request left open.)
        page.wait_for_function("() => Array.from(document.images).every(i => i.complete)"
                               " && document.fonts.status === 'loaded'", timeout=60_000)
        shot = SCREENSHOTS / (docname.replace("/", "__") + ".png")
        page.screenshot(path=str(shot), full_page=True, timeout=180_000)  # long pages, busy CPU

        # Offline: nothing outside the site was requested, and nothing in it was missing.
        outside = [u for u in requests if not u.startswith((base, "data:", "blob:"))]
        assert not outside, f"{docname} requested resources outside the site: {outside}"
        assert not failed, f"{docname}: requests failed: {failed}"
        assert not [m for m in missing if not m.endswith("favicon.ico")], f"{docname}: HTTP 404 for {missing}"
        unexpected = [e for e in errors if not e.startswith(KNOWN_PAGE_ERRORS)]
        assert not unexpected, f"{docname}: JavaScript errors: {unexpected}"

        # No error text or traceback in the page.
        text = page.inner_text("main") if page.locator("main").count() else page.inner_text("body")
        for marker in ERROR_TEXT:
            assert marker not in text, f"{docname} shows {marker!r}"
        assert page.locator(".output.error, .output.traceback, .cell_output .traceback").count() == 0, \
            f"{docname} shows an error output"
        prose = page.evaluate(
            "() => { const m = (document.querySelector('main') || document.body).cloneNode(true);"
            " m.querySelectorAll('pre, code, .highlight').forEach(e => e.remove()); return m.innerText; }")
        raw = RAW_MARKUP.search(prose)
        assert raw is None, f"{docname} shows unrendered markup: {prose[max(0, raw.start() - 60):raw.end() + 60]!r}"

        # Maths: every formula typeset by MathJax, no raw TeX left.
        formulas = page.locator(".math").count()
        if formulas:
            untypeset = page.evaluate(
                "() => Array.from(document.querySelectorAll('.math'))"
                ".filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 60))")
            assert not untypeset, f"{docname}: formulas not typeset by MathJax: {untypeset[:5]}"
            assert "$$" not in text, f"{docname}: raw $$ left in the page"

        # Figures: every image loaded and has pixels.
        images = page.evaluate(
            "() => Array.from(document.images).map(i => ({src: i.currentSrc || i.src,"
            " ok: i.complete && i.naturalWidth > 0}))")
        broken = [i["src"] for i in images if not i["ok"]]
        assert not broken, f"{docname}: images that did not load: {broken}"
        if docname.startswith("chapters/"):
            figures = [i for i in images if "/_images/" in i["src"] or i["src"].startswith("data:image")]
            assert figures, f"{docname} shows no figure"

        # Widgets: every stored view drawn, none replaced by an error.
        if views:
            drawn = page.locator(".widget-subarea > *").count()
            assert drawn >= views, f"{docname}: {views} widget views stored, {drawn} drawn"
    finally:
        page.close()


def test_chapter_02_explorer_is_drawn(site, server, browser):
    """The explorer of chapter 02 is on the static page: five sliders, the class dropdown and the
    figure (an <img> with pixels), as the notebook left them."""
    base, _ = server
    page = browser.new_page()
    try:
        page.goto(base + "chapters/02_cross_entropy.html", wait_until="load", timeout=60_000)
        explorer = page.locator(".widget-vbox").filter(has=page.locator(".widget-image"))
        explorer.first.wait_for(timeout=60_000)
        assert explorer.locator(".widget-slider").count() == 5
        assert explorer.locator(".widget-dropdown select").count() == 1
        width = explorer.locator("img.widget-image").first.evaluate("i => i.complete ? i.naturalWidth : 0")
        assert width > 100, f"the explorer's figure did not load (naturalWidth {width})"
        labels = explorer.locator(".widget-label").all_inner_texts()
        assert {"z0", "z1", "z2", "z3", "true_class", "smoothing"} <= set(labels), labels
        explorer.first.screenshot(path=str(SCREENSHOTS / "chapters__02_cross_entropy__explorer.png"))
    finally:
        page.close()
