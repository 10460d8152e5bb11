# Two commands on a fresh machine: `make repro` (the pipeline on the offline demo corpus) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
# dvc runs each stage's `python -m stages...` through the shell: put the venv first on PATH.
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

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/predict.py
