# The README's two commands. Both create .venv on first use and install from the project's own files.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-full test lint install install-dev clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first: the CPU build on local disk here; a GPU user installs their CUDA torch into .venv beforehand.
	$(PY) -m pip install --quiet "torch==2.13.0" || $(PY) -m pip install --quiet "torch>=2.6,<3"
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/lab-demo

# Larger grids into sweeps demo-full-*; several times longer than make demo.
demo-full: install
	$(VENV)/bin/lab-demo --full

test: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)

# The rule set is [tool.ruff] in pyproject.toml; CI runs this before the tests.
lint: install-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .cache outputs multirun checkpoints mlflow.db mlruns mlartifacts
