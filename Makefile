# The README's commands. Each target installs what it needs into .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export OPENMAE_DATA ?= $(abspath ../shared/datasets)

.PHONY: install test demo bench lint clean

$(BIN)/python:
	$(shell command -v $(PY) >/dev/null 2>&1 && echo $(PY) || echo python3) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q --durations=15 tests

demo: install
	$(BIN)/python -m openmae demo --data-root $(OPENMAE_DATA)

bench: install
	$(BIN)/python benchmarks/throughput.py

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
