# Two commands for a new user: `make demo` and `make test`. Both bootstrap what
# they need (venv, pinned packages, Kafka via Maven, redis-server) and cache it,
# so the second run starts in seconds.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.patchsight-installed
PYTEST_ARGS ?=

.PHONY: help setup system infra-up infra-down lint test demo bench clean

help:
	@echo "make demo   - install what is missing, start Kafka + Redis, run the end-to-end demo"
	@echo "make test   - install what is missing, lint (ruff), start Kafka + Redis, run the test suite"
	@echo "make bench  - run the quick CPU benchmarks (bench/run_all.py; writes bench/results/quick/)"
	@echo "make clean  - stop local services and remove .patchsight/ (keeps the venv)"

# The venv is rebuilt only when a pin changes. pip's own cache keeps the wheels
# (torch is several GB), so a rebuild does not download them again.
$(STAMP): requirements.lock requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: $(STAMP) system

# System packages the suite needs: Java 17 + Maven (Kafka), redis-server, and
# Debian's Chromium + chromedriver for the dashboard's browser test.
system:
	@bash scripts/system-deps.sh

infra-up: setup
	$(BIN)/patchsight infra up

infra-down:
	-$(BIN)/patchsight infra down

# pyflakes, pycodestyle errors and a complexity limit (pyproject.toml [tool.ruff.lint]).
lint: setup
	$(BIN)/ruff check .

# Lint first, then the suite. Failed tests are run once more: the worker's group tests hit a
# known kafka-python 3.0.12 rebalance stall now and then (docs/operations.md); a second failure
# fails the run.
test: setup lint infra-up
	$(BIN)/python -m pytest $(PYTEST_ARGS) || { \
	  echo "== retrying the failed tests once (known kafka-python rebalance stall, docs/operations.md) =="; \
	  $(BIN)/python -m pytest --last-failed --last-failed-no-failures none $(PYTEST_ARGS); }

demo: setup
	$(BIN)/patchsight demo

# The quick CPU benchmarks, a minute or so in all (BENCHMARKS.md, "make bench").
bench: setup infra-up
	$(BIN)/python bench/run_all.py

clean: infra-down
	rm -rf .patchsight
