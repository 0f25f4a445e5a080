# The two commands a fresh machine needs (see README.md):
#   make demo   runs the demo on the local SQLite file workflow_persistence.db
#   make test   lint, type-check and the whole test suite on SQLite, PostgreSQL and MariaDB

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
# Both installs share one venv. The demo needs the runtime only (seconds to install); the
# tests need the dev extra (drivers, linters, fuzzers, benchmark peers), which includes the
# runtime, so installing it also satisfies the runtime's marker.
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

.PHONY: demo test lint typecheck pytest services bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e .
	touch $(RUNTIME)

$(DEV): pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[dev]'
	touch $(DEV) $(RUNTIME)

demo: $(RUNTIME)
	$(BIN)/workflow-persistence demo

test: $(DEV) services lint typecheck pytest

services:
	.ci/services

lint: $(DEV)
	$(BIN)/ruff check src tests migrations examples bench

typecheck: $(DEV)
	$(BIN)/mypy

pytest: $(DEV) services
	$(BIN)/pytest

bench: $(DEV) services
	cd bench && ../$(BIN)/python run.py

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis
