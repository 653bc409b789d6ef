# crossdock: `make run` starts the server, `make test` runs the suite. Both create .venv first.
PYTHON ?= python3.11
ifeq (, $(shell command -v $(PYTHON) 2>/dev/null))
PYTHON := python3
endif
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench clean

install: $(STAMP)

# Reinstall only when the package metadata changes (idempotent: a second `make install` does nothing).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/crossdock serve $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check server clients loadtest tests tools
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python tools/check_import_cycles.py
	$(BIN)/hadolint Dockerfile

# Every figure of docs/benchmarks.md measured again on this code (long: about 35 min; not part of CI).
# BENCH_ARGS="--steps crossover,targets" for some blocks, "--quick --reports DIR" for a smoke test.
bench: install
	$(BIN)/python bench/make_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
