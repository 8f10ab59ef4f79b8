# Developer entry points; .ci/run calls the same targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint typecheck test test-unit test-integration test-reliability bench demo

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"

# Style, formatting and the import rules of the layout (pyproject.toml,
# [tool.importlinter]: which folder may import which).
LINTED := aicm_tasks tests docs/examples bench .ci

lint:
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/lint-imports

# mypy for Python 3.10 (the oldest we declare): strict on aicm_tasks, loose on
# tests/ and bench/ (unannotated tests pass, calls into the package are checked);
# one run, configured in pyproject.toml ([tool.mypy]); then CI's own script
# (.ci is no package: run with the system python3 before the venv exists).
typecheck:
	$(BIN)/mypy
	$(BIN)/mypy --strict .ci/rabbitmq_health.py

# The README's test command: unit and integration tests.
test:
	$(BIN)/python -m pytest tests

test-unit:
	$(BIN)/python -m pytest tests -m "not integration"

test-integration:
	$(BIN)/python -m pytest tests -m integration

# The fault suite on its own (also part of `make test`).
test-reliability:
	$(BIN)/python -m pytest tests -m reliability

demo:
	$(BIN)/aicm-tasks demo

# The benchmark (bench/README.md): installs the bench extras and the anchors'
# pinned versions, then prints and writes the figures. It reports; a missed
# target does not fail it. `make bench BENCH_ARGS=--quick` for a smoke run.
# celery-batches 0.11 declares celery<5.7; it runs on 5.7, so it goes in
# without its dependencies (as the anchor figures were taken).
bench:
	$(BIN)/pip install --quiet -e ".[test,bench]"
	$(BIN)/pip install --quiet --no-deps celery-batches==0.11
	$(BIN)/python -m bench.run $(BENCH_ARGS)
