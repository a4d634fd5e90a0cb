# The ImageNet course book. Every target does its own set-up: it creates .venv when missing and
# reinstalls only when pyproject.toml or the lock file changed.
#
#   make test        unit tests + every notebook under nbval (smoke profile)
#   make book        the website, every notebook executed (local profile) -> _build/html
#   make lab         JupyterLab on the chapters
#   make bench       the benchmarks (printed ratios, not tests)
#   make gpu-check   nbval suite + benchmarks on whatever device is present, JSON in bench/results/
#   make outputs     re-execute the notebooks (smoke) and store the outputs nbval checks
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

.PHONY: test book lab bench gpu-check outputs lock clean venv assignments colab-links

venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing the book's packages into $(VENV) (pinned by $(LOCK))..."
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[dev,book,lab,teach]'
	@rm -f $(VENV)/.installed-*
	@touch $@

test: $(STAMP)
	IMAGENET_BOOK_PROFILE=smoke $(BIN)/python -m pytest tests $(NOTEBOOKS) \
		--nbval-lax --nbval-cell-timeout=600 -p no:cacheprovider

book: $(STAMP)
	IMAGENET_BOOK_PROFILE=$${IMAGENET_BOOK_PROFILE:-local} $(BIN)/jupyter-book build . -W --keep-going
	@echo "The book is at $(CURDIR)/_build/html/index.html"

lab: $(STAMP)
	$(BIN)/jupyter lab chapters

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py

outputs: $(STAMP)
	IMAGENET_BOOK_PROFILE=smoke $(BIN)/python tools/notebooks.py store $(NOTEBOOKS)

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
