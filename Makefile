# posterkg: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/ml1m.toml

.PHONY: setup run test demo bench clean

## setup: create .venv with CPU torch (from the wheel on disk) and posterkg in editable mode
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

## run: the main job, the whole pipeline on MovieLens 1M from $(CONFIG)
run: setup
	$(BIN)/posterkg run --config $(CONFIG)

## test: install everything the tests need, then run them
test: setup
	$(BIN)/python -m pytest -q

## demo: self-check on generated data (no network, no GPU)
demo: setup
	$(BIN)/posterkg demo

clean:
	rm -rf $(VENV) .pytest_cache runs
