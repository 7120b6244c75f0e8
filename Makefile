# `make demo` trains a VAE on the embedded MNIST subset; `make test` runs the test suite;
# `make docs` builds the documentation into docs/_build/html.
# Each target creates .venv and installs pyrovae into it first if needed.
PYTHON ?= python3
VENV ?= .venv
# On the development machines torch comes from a local offline copy pinned here; elsewhere
# `make TORCH_SPEC=torch` (or any spec) installs what your platform needs.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
STAMP := $(VENV)/.pyrovae-installed
DOCS_STAMP := $(VENV)/.pyrovae-docs-installed
# the example gallery of the docs: quick (small settings), full (each script's defaults; long) or off
PYROVAE_DOCS_GALLERY ?= quick
export PYROVAE_DOCS_GALLERY

.PHONY: demo test lint docs bench-speed clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pyrovae train --dataset embedded --epochs 30 --out runs/demo --overwrite
	$(BIN)/pyrovae evaluate runs/demo --num-samples 1000
	$(BIN)/pyrovae sample runs/demo --num 64

# pytest's own exit status is kept in $(VENV)/pytest-status (make itself only says 0 or 2)
test: $(STAMP)
	rm -f $(VENV)/pytest-status
	$(BIN)/python -m pytest -q; status=$$?; echo $$status > $(VENV)/pytest-status; exit $$status

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,docs]'
	touch $(DOCS_STAMP)

# warnings are errors; then the doctests of the pages and docstrings
docs: $(DOCS_STAMP)
	$(BIN)/sphinx-build -W --keep-going -b html -d docs/_build/doctrees docs docs/_build/html
	$(BIN)/sphinx-build -W --keep-going -b doctest -d docs/_build/doctrees docs docs/_build/doctest
	@echo "open docs/_build/html/index.html"

lint: $(STAMP)
	$(BIN)/ruff check pyrovae tests examples benchmarks

bench-speed: $(STAMP)
	$(BIN)/python benchmarks/train_speed.py

clean:
	rm -rf runs .pytest_cache docs/_build docs/gallery
