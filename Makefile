# Two commands on a fresh machine (Python 3.10+ and make):
#   make demo   - create .venv, install the project and its four dependencies, walk the built-in tour
#   make test   - add the dev extra (pytest, Hypothesis, MkDocs, Jupyter, CuPy, the CUDA compiler
#                 wheels, Selenium), run the whole test suite
# (the suite includes the docs build and the tutorials; GPU tests skip without a CUDA device).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
BASE := $(VENV)/.installed-base
DEV := $(VENV)/.installed-dev
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: demo test test-fast layers docs serve-docs bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# The demo needs only the base dependencies: numpy, rich, typer, matplotlib.
$(BASE): pyproject.toml | $(BIN)/python
	@echo ">>> installing tinyserve-sim with numpy, rich, typer and matplotlib into $(VENV) (the demo needs nothing more)"
	$(PIP) install --progress-bar on -e .
	@touch $@

# The tests, the docs build and the tutorials need the dev extra (large: CuPy and the CUDA wheels).
$(DEV): pyproject.toml $(BASE)
	@echo ">>> installing the dev extra into $(VENV): pytest, Hypothesis, MkDocs, Jupyter, CuPy, CUDA compiler wheels, Selenium"
	$(PIP) install --progress-bar on -e '.[dev]'
	@touch $@

demo: $(BASE)
	$(BIN)/tinyserve-sim demo

test: $(DEV)
	$(BIN)/python -m pytest

# The edit-test loop: everything but the docs build and the tutorials (marked slow).
test-fast: $(DEV)
	$(BIN)/python -m pytest -m "not slow" -q

# The layering contract alone (also part of `make test`).
layers: $(DEV)
	$(BIN)/python scripts/check_layers.py

docs: $(DEV)
	$(BIN)/mkdocs build --strict

serve-docs: $(DEV)
	$(BIN)/mkdocs serve

bench: $(BASE)
	$(BIN)/python benchmarks/bench_control_plane.py

clean:
	rm -rf $(VENV) site .pytest_cache .hypothesis
