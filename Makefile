# Two commands on a fresh machine (Python 3.10+ and make):
#   make demo   - create .venv, install the project, walk the built-in tour
#   make test   - create .venv, install the project with its dev extra, run the whole test suite
# (the suite includes the docs build and the tutorials; GPU tests skip without a CUDA device).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-fast layers docs serve-docs bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tinyserve-sim demo

test: $(STAMP)
	$(BIN)/python -m pytest

# The edit-test loop: everything but the docs build and the tutorials (marked slow).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

# The layering contract alone (also part of `make test`).
layers: $(STAMP)
	$(BIN)/python scripts/check_layers.py

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

serve-docs: $(STAMP)
	$(BIN)/mkdocs serve

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_control_plane.py

clean:
	rm -rf $(VENV) site .pytest_cache .hypothesis
