# crossdock: `make run` starts the server, `make test` runs the suite. Both create .venv first.
PYTHON ?= python3.11
ifeq (, $(shell command -v $(PYTHON) 2>/dev/null))
PYTHON := python3
endif
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The compiled core (setup.py, server/protocol/core_modules.py): rebuilt whenever one of its sources changes.
CORE_STAMP := $(VENV)/.core-built
CORE_SOURCES := setup.py server/protocol/core_modules.py server/protocol/request_parser.py server/protocol/reply_parser.py \
	server/commands/dispatch.py server/store/commandstats.py server/store/keyspace.py server/memory.py server/store/state.py \
	server/commands/builtins.py server/cpu/jobs.py

.PHONY: install run test lint bench clean

install: $(STAMP) $(CORE_STAMP)

# Reinstall only when the package metadata changes (idempotent: a second `make install` does nothing).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The dependencies only; the compiled core is built by the rule below (once, not twice on a fresh install).
	CROSSDOCK_NO_EXTENSIONS=1 $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Without a C compiler (or with CROSSDOCK_NO_EXTENSIONS=1) this installs the pure core only: the extensions are optional.
$(CORE_STAMP): $(STAMP) $(CORE_SOURCES)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -c "import server.protocol as p; print('compiled core:', p.CORE)"
	touch $(CORE_STAMP)

run: install
	@echo "crossdock and its clients are in $(BIN): in another terminal, '. $(BIN)/activate' puts them on PATH"
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
	rm -f server/*.so server/protocol/*.so server/commands/*.so server/store/*.so server/protocol/_core_build.py
