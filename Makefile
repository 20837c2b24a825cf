# factory-agent: the two commands are `make demo` and `make test` (see README.md).
# Everything else here is what they are made of.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit integration system-deps bench clean help

help:
	@echo "make demo   - the simulated plant (OPC UA :4840, Modbus :5020) and the agent, live view"
	@echo "make test   - install everything the tests need, then lint, type-check and test"
	@echo "make bench  - the sizing benchmark (factory-agent bench), then the benchmark scripts"

# A virtual environment with the project and its development tools, rebuilt when
# pyproject.toml changes. On Debian without ensurepip, python3-venv is installed first.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "factory-agent needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 2; }
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || scripts/apt-install python3-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/factory-agent demo

# Debian packages the tests use: servers they start, and the browser of the browser tests.
system-deps:
	@scripts/apt-install influxdb victoria-metrics chromium chromium-driver socat

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

test: $(STAMP) system-deps lint typecheck
	$(BIN)/python -m doctest connectors/*.py simulators/*.py simulators/models/*.py analytics/*.py agent/*.py agent/sinks/*.py
	$(BIN)/pytest

bench: $(STAMP) system-deps
	$(BIN)/factory-agent bench
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
