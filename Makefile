# The two commands a fresh machine needs (see README.md):
#   make demo   runs the demo on the local SQLite file workflow_persistence.db
#   make test   lint, type-check and the whole test suite on SQLite, PostgreSQL and MariaDB

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
READY := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest services bench clean

$(READY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(READY)

demo: $(READY)
	$(BIN)/workflow-persistence demo

test: $(READY) services lint typecheck pytest

services:
	.ci/services

lint: $(READY)
	$(BIN)/ruff check src tests migrations examples bench

typecheck: $(READY)
	$(BIN)/mypy

pytest: $(READY) services
	$(BIN)/pytest

bench: $(READY) services
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	cd bench && ../$(BIN)/python run.py

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis
