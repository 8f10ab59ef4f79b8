# Developer entry points; .ci/run calls the same targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint typecheck test test-unit test-integration bench demo

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"

lint:
	$(BIN)/ruff check aicm_tasks tests

typecheck:
	$(BIN)/mypy

# The README's test command: unit and integration tests.
test:
	$(BIN)/python -m pytest tests

test-unit:
	$(BIN)/python -m pytest tests -m "not integration"

test-integration:
	$(BIN)/python -m pytest tests -m integration

demo:
	$(BIN)/aicm-tasks demo
