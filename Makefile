# Developer entry points. Work on a fresh machine with Python 3.11 and pip reaching PyPI only.
#   make run    build .venv if needed, then run the default recipe offline
#   make test   build .venv if needed, then run the test suite (PYTEST_ARGS passes options through)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# Local mirror of the public weights and images the recipes name (see ../shared/assets/README.md).
DFPRACTISE_ASSETS ?= $(abspath ../shared/assets)
export DFPRACTISE_ASSETS

.PHONY: venv install run test clean distclean

venv install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Pinned torch/torchvision come from the machine's local wheel mirror; everything else from PyPI.
# The stamp makes a second call free until pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dfpractise run --recipe recipes/default.yaml --out runs/default --resume

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache build dist
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
