# Each target creates or reuses the local virtual environment first. torch==2.13.0 is installed
# before anything that depends on it, so pip takes the CPU wheel instead of a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedaux-installed
CONFIG ?= conf/quic.yaml

.PHONY: train test test-slow check-wheel bench lint lint-ruff lint-mypy

$(STAMP): pyproject.toml setup.cfg setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,bench,onnx]'
	touch $(STAMP)

train: $(STAMP)  ## the main job: FedAuxHMTL on the embedded QUIC flows
	$(VENV)/bin/fedaux-train --config $(CONFIG) $(ARGS)

test: $(STAMP)  ## the fast suite (a few minutes on 2 cores)
	$(VENV)/bin/pytest -q --durations=15

test-slow: $(STAMP)  ## long end-to-end tests, run separately
	$(VENV)/bin/pytest -q -m slow

check-wheel: $(STAMP)  ## build the wheel, install it non-editable in a fresh venv, import every module, train one round
	PYTHON=$(abspath $(PY)) .ci/check_wheel.sh

bench: $(STAMP)
	$(VENV)/bin/fedaux-bench --config conf/bench.yaml

# `make -k lint` runs both checks even when the first one fails (CI does).
lint: lint-ruff lint-mypy  ## ruff, then mypy (its settings are in setup.cfg)

lint-ruff: $(STAMP)
	$(VENV)/bin/ruff check fedaux callbacks tests benchmarks

lint-mypy: $(STAMP)
	$(VENV)/bin/mypy
