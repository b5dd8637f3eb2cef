# The README's two commands: `make run` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test lint typecheck pytest services clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $@ $(VENV)/.installed-run

## run: install Tollway and serve it on SQLite (./data/tollway.db), port 3000
run: $(VENV)/.installed-run
	$(BIN)/tollway serve

## test: install the development tools, then lint, type-check and run every test
test: $(VENV)/.installed-dev services lint typecheck pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev
	$(BIN)/pytest -ra $(PYTEST_ARGS)

## services: make sure PostgreSQL, MariaDB and Redis answer on 127.0.0.1 (starts them if installed)
services:
	@bash scripts/ensure-services.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
