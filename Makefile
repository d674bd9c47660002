# The two commands of the README: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup serve test bench bench-depth lint

# Creates the virtualenv and installs codeq (editable) with its test tools.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# Starts the daemon on its embedded store (data in ~/.local/state/codeq).
serve: setup
	$(BIN)/codeq serve

# Runs the whole test suite (real redis-server processes, started by the tests).
test: setup
	$(BIN)/pytest

# Benchmarks: not part of the test run. `bench` measures codeq beside BullMQ and arq
# on one store, in one run (bench/run.py; the peers install themselves on first use);
# `bench-depth`: claim latency at 1M queued, memory, delayed-task lateness.
$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python bench/run.py

bench-depth: $(VENV)/.bench-installed
	$(BIN)/python bench/depth.py

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy
