# catalog-cdc — developer entry points.  Everything runs inside .venv/ in this checkout.
#   make demo   start the local stack, run the whole pipeline on a demo catalog, show it live
#   make test   ruff + mypy (strict on pipeline/, consumers/) + the whole pytest suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install system-deps demo demo-quick test bench lint format typecheck pytest stack-up stack-down clean

help:
	@echo "make demo       the whole pipeline on 10,000 products: live edits, dashboard, proof per sink"
	@echo "make demo-quick reader, assembler and search only, on 2,000 products"
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

# Every service under `catalog-cdc run` (scripts/demo.toml), the live dashboard, then the
# proof against the database for every sink (DEMO_PRODUCTS, default 10,000).
demo: $(STAMP)
	@bash scripts/demo.sh

# The reader, the assembler and the search consumer only (DEMO_PRODUCTS, default 2,000).
demo-quick: $(STAMP)
	@DEMO_PRODUCTS=$${DEMO_PRODUCTS:-2000} bash scripts/demo-quick.sh

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

# The benchmarks run on a stack of their own, started empty and stopped at the end, so
# that figures do not depend on what the tests left in the shared .stack (its broker
# holds every test's topics) or on services left running there; run.py wipes and restarts
# it between benchmark scripts too (noida-db's autosave CPU grows with what it holds).
BENCH_STACK ?= $(CURDIR)/.stack-bench
bench: $(STAMP)
	-@CATALOG_CDC_STACK_DIR=$(BENCH_STACK) $(BIN)/catalog-cdc stack down --wipe >/dev/null 2>&1
	CATALOG_CDC_STACK_DIR=$(BENCH_STACK) $(BIN)/catalog-cdc stack up
	CATALOG_CDC_STACK_DIR=$(BENCH_STACK) $(BIN)/python bench/run.py --fresh-stack $(BENCH_ARGS); \
	rc=$$?; CATALOG_CDC_STACK_DIR=$(BENCH_STACK) $(BIN)/catalog-cdc stack down; exit $$rc

stack-up: $(STAMP)
	$(BIN)/catalog-cdc stack up

stack-down: $(STAMP)
	$(BIN)/catalog-cdc stack down

clean:
	-test -x $(BIN)/catalog-cdc && $(BIN)/catalog-cdc stack down --wipe
	rm -rf $(VENV) .stack .mypy_cache .ruff_cache .pytest_cache
