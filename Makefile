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

# Two pytest workers, one thread each: most of the suite is small processes and small tensors, so
# two one-thread workers finish it in about half the time of one two-thread process.
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/dgl_overhead.py

.PHONY: install train test bench
