# One-command setup, demo and tests. Override TORCH_SPEC / TORCH_INDEX for a CUDA build, e.g.
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cu124 TORCH_SPEC=torch==2.5.1
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/metaserve train configs/sinusoid-maml-ray.yaml --set train.steps=1000

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache
