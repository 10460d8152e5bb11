# Two commands on a fresh machine: `make repro` (the pipeline on the offline demo corpus) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
# dvc runs each stage's `python -m velocity.stages...` through the shell: put the venv first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

repro: setup
	$(BIN)/dvc repro

# Two workers, each test file whole on one of them (its module fixtures built once; the files that read
# the demo run or the session's Prefect server on one, tests/conftest.py), as most tests wait on single-threaded subprocesses.
TEST_WORKERS ?= 2

test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: setup
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/predict.py
