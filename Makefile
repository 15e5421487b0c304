# certmgr — two commands on a fresh clone: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run install test test-deps lint fmt demo bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)
	@bash .ci/ensure-fonts || echo "warning: PDF reports need fonts (see above)" >&2

## Start the service in the foreground (data dir ./var: SQLite migrated, CA created on first start).
run: install
	$(VENV)/bin/certmgr serve

## Lint + the whole test suite (installs PostgreSQL/openssl first if this machine lacks them).
test: install test-deps lint
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

test-deps:
	@bash .ci/ensure-deps

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: install
	$(PY) -m certmgr.demo

bench: install
	$(PY) bench/issue.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
