# Two commands set everything up on a fresh machine:
#   make train   -> creates .venv, installs mmsent, trains on the embedded synthetic dataset
#   make test    -> creates .venv, installs mmsent with its test extra, runs the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/.installed

train: install
	$(BIN)/python cli.py train $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/dgl_overhead.py

.PHONY: install train test bench
