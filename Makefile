# The ImageNet course book. Every target does its own set-up: it creates .venv when missing and
# reinstalls only when pyproject.toml or the lock file changed.
#
#   make test        the browser, the linter, then unit tests + every notebook under nbval (smoke)
#   make browser     find, else install, the headless Chromium the website test needs (tools/browser.py)
#   make lint        ruff check src tests tools labs bench
#   make book        the website, every notebook executed (local profile) -> _build/html
#   make lab         JupyterLab on the chapters
#   make bench       the benchmarks (printed ratios, not tests)
#   make gpu-check   nbval suite + benchmarks on whatever device is present, JSON in bench/results/
#   make outputs     re-execute the notebooks (smoke) and store the outputs nbval checks
#   make reference   the reference runs on real data -> book/results/*.json (resumable)
#   make assignments student notebooks + autograder zips from labs/ (otter) -> _build/assignments
#   make colab-links Colab badges and setup cells from the repository setting in _config.yml
#   make lock        re-pin requirements/constraints.txt from the current .venv

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LOCK   := requirements/constraints.txt
STAMP  := $(VENV)/.installed-$(shell cat $(LOCK) pyproject.toml 2>/dev/null | cksum | cut -d' ' -f1)
NOTEBOOKS := $(wildcard chapters labs)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONHASHSEED := 0
# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning made one run 10x slower.
export OMP_WAIT_POLICY := PASSIVE
# The data, cache and results roots, when given relative, are relative to where make runs (the
# repository root): made absolute here, since every notebook executes in its own folder (chapters/).
absolute = $(if $(filter /% ~%,$(1)),$(1),$(CURDIR)/$(1))
ROOTS := IMAGENET_BOOK_DATA IMAGENET_BOOK_CACHE IMAGENET_BOOK_RESULTS
$(foreach root,$(ROOTS),$(if $($(root)),$(eval export $(root) := $(call absolute,$($(root))))))

.PHONY: test browser lint book lab bench reference gpu-check outputs lock clean venv assignments colab-links

venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing the book's packages into $(VENV) (pinned by $(LOCK))..."
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[dev,book,lab,teach,imagenet1k]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# The website test (tests/test_website.py) reads the built book in headless Chromium: `browser`
# finds one or installs one (Playwright's download, else apt-get/dnf as root), or stops here with
# one message saying what to install. IMAGENET_BOOK_SKIP_BROWSER=1 skips it and those checks.
test: browser lint
	IMAGENET_BOOK_PROFILE=smoke $(BIN)/python -m pytest tests $(NOTEBOOKS) \
		--nbval-lax --nbval-cell-timeout=600 -p no:cacheprovider

browser: $(STAMP)
	@$(BIN)/python tools/browser.py >/dev/null

lint: $(STAMP)
	$(BIN)/ruff check src tests tools labs bench

book: $(STAMP)
	IMAGENET_BOOK_PROFILE=$${IMAGENET_BOOK_PROFILE:-local} $(BIN)/jupyter-book build . -W --keep-going
	@echo "The book is at $(CURDIR)/_build/html/index.html"

# As root (a container, a cloud VM) Jupyter refuses to start without --allow-root: pass it only then.
lab: $(STAMP)
	$(BIN)/jupyter lab chapters $(if $(filter 0,$(shell id -u)),--allow-root)

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py

outputs: $(STAMP)
	IMAGENET_BOOK_PROFILE=smoke $(BIN)/python tools/notebooks.py store $(NOTEBOOKS)

# The book's reference runs on the real data under the data root (IMAGENET_BOOK_DATA), recorded in
# book/results/ (resumable: run it again after an interruption).
reference: $(STAMP)
	IMAGENET_BOOK_PROFILE=$${IMAGENET_BOOK_PROFILE:-local} $(BIN)/python -m imagenet_book reference

assignments: $(STAMP)
	$(BIN)/python labs/assign.py build --out _build/assignments

colab-links: $(STAMP)
	$(BIN)/python tools/colab.py sync chapters labs

lock:
	@head -3 $(LOCK) > $(LOCK).new
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^imagenet-book' >> $(LOCK).new
	@mv $(LOCK).new $(LOCK)

clean:
	rm -rf _build .pytest_cache
