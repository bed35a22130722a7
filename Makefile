# catalog-cdc — developer entry points.  Everything runs inside .venv/ in this checkout.
#   make demo   start the local stack, load the demo catalog, show it live
#   make test   ruff + mypy (strict on pipeline/, consumers/) + the whole pytest suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_PRODUCTS ?= 2000

.PHONY: help install system-deps demo demo-full test bench lint format typecheck pytest stack-up stack-down clean

help:
	@echo "make demo       start the stack, seed $(DEMO_PRODUCTS) products, stream live edits to Kafka, show them"
	@echo "make test       lint, type-check and run the whole test suite"
	@echo "make bench      run the benchmarks, rewrite bench/RESULTS.md (several minutes)"
	@echo "make lint       ruff check + ruff format --check"
	@echo "make format     ruff format + ruff check --fix"
	@echo "make typecheck  mypy --strict on pipeline/ and consumers/"
	@echo "make stack-up / stack-down   the local stack alone"
	@echo "make clean      stop the stack, remove .venv/ and .stack/"

system-deps:
	@bash scripts/system-deps.sh

$(STAMP): pyproject.toml scripts/system-deps.sh
	@bash scripts/system-deps.sh
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "catalog-cdc needs Python >= 3.11, found " + sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@DEMO_PRODUCTS=$(DEMO_PRODUCTS) bash scripts/demo.sh

# Every consumer under `catalog-cdc run` with the live dashboard and the proof (work in
# progress: see the closing notes of 2026-12-02; 10,000 products by default).
demo-full: $(STAMP)
	@DEMO_PRODUCTS=$${DEMO_PRODUCTS:-10000} bash scripts/demo-full.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	bash scripts/run-pytest.sh

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/catalog-cdc stack up
	$(BIN)/python bench/run.py $(BENCH_ARGS)

stack-up: $(STAMP)
	$(BIN)/catalog-cdc stack up

stack-down: $(STAMP)
	$(BIN)/catalog-cdc stack down

clean:
	-test -x $(BIN)/catalog-cdc && $(BIN)/catalog-cdc stack down --wipe
	rm -rf $(VENV) .stack .mypy_cache .ruff_cache .pytest_cache
