# Set-up and everyday commands. Everything lands in a virtual environment in .venv.
#   make run    the README's main job: the quick sweep on local threads with synthetic data
#   make test   the test suite
# TORCH_SPEC picks the PyTorch build (e.g. TORCH_SPEC='torch==2.13.0' for a CPU-only pin);
# on a GPU cluster leave it unset or point it at your site's wheel.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch
PYTEST_ARGS ?=
RUN_DIR ?= runs/quick

BIN := $(VENV)/bin
STAMP := $(VENV)/.genodl-installed

.PHONY: install run test clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test,plots,mpi]"
	touch $@

run: $(STAMP)
	$(BIN)/genodl run jobs/examples/quick.toml --out $(RUN_DIR)

test: $(STAMP)
	PYTHON=$(BIN)/python tests/fetch_test_data.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
