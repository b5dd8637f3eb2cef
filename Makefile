# The README's two commands: `make run` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: run test lint typecheck pytest services tools bench bench-quick bench-logs clean

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
test: $(VENV)/.installed-dev services tools lint typecheck pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev
	$(BIN)/pytest -ra $(PYTEST_ARGS)

## bench: Tollway against a mock upstream (~5 min; needs wrk), then the log writer on SQLite and PostgreSQL
bench: $(VENV)/.installed-run services tools
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python bench/log_writer.py --db sqlite
	$(BIN)/python bench/log_writer.py --db postgres

## bench-logs: the console's log queries on 10 million seeded rows, SQLite then PostgreSQL (first seeding ~20 min each)
bench-logs: $(VENV)/.installed-run services
	$(BIN)/python bench/logs_scale.py --db sqlite --rows $(or $(LOG_ROWS),10000000) $(BENCH_LOGS_ARGS)
	$(BIN)/python bench/logs_scale.py --db postgres --rows $(or $(LOG_ROWS),10000000) $(BENCH_LOGS_ARGS)

## bench-quick: the CI-sized benchmark (~25 s; needs wrk), fails on a gross regression
bench-quick: $(VENV)/.installed-run tools
	$(BIN)/python -m bench.run --quick --check $(BENCH_ARGS)

## tools: the load driver the benchmark uses (Debian's wrk), installed when missing
tools:
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; } >/dev/null 2>&1 || true
	@command -v wrk >/dev/null 2>&1 && echo "wrk: $$(command -v wrk)" || echo "wrk: not available (benchmark tests will say so)"

## services: make sure PostgreSQL, MariaDB and Redis answer on 127.0.0.1 (starts them if installed)
services:
	@bash scripts/ensure-services.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
