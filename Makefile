# The README's two commands. `make demo`: create .venv, install PyTorch (CPU build) and cifarbench, train on
# the embedded MNIST subset (offline, under a minute). `make test`: install the mlx, jax and dev extras, run the test suite.
# VENV, PYTHON and TORCH can be overridden (CI uses VENV=.venv-ci; on macOS use TORCH=torch).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: help demo test
help:
	@echo "make demo   set up $(VENV) and train lenet on the embedded MNIST subset (mnist-mini)"
	@echo "make test   set up $(VENV) with the dev extras and run the test suite (what .ci/run calls)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Stamps: pip runs again only when pyproject.toml changes. The dev install includes the demo's.
$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[torch]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[torch,mlx,jax,dev]'
	touch $@ $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(BIN)/cifarbench train -c mnist-mini

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest
