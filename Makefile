# One-command set-up, demo and tests. `make test` is what CI runs.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build of torch unless a GPU is visible (a bare `torch` would pull several GB of CUDA wheels).
TORCH  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
EXTRAS ?= dev,text

.PHONY: setup demo lint test bench gpu-check clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

demo: setup
	rm -rf runs/demo
	$(VENV)/bin/metriclearn train --out runs/demo

# Static checks on the package (config in pyproject.toml): lint and import order, types, layer contracts.
lint: setup
	$(VENV)/bin/ruff check metriclearn
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q -n 2 --doctest-modules metriclearn tests

bench: setup
	$(PY) benchmarks/bench_losses.py

# Every GPU-marked test and a short GPU benchmark (< 5 min on one H100), one summary table; without CUDA: one line, exit 0.
gpu-check: setup
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) runs .pytest_cache
