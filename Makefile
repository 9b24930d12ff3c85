# The README's commands and nothing clever: `make run` (the main job) and `make test` (every test).
# Both create .venv and install the project with pinned dependencies first.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run test clean

setup: $(INSTALLED)

# One pip install resolves every dependency together (dvc-s3 bounds botocore through
# aiobotocore; boto3 must be resolved with it), then pip check proves the set is consistent.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip check
	touch $@

# The DVC pipeline: download (or import data.archive) -> prepare -> train the params.yaml config.
run: $(INSTALLED)
	dvc repro

test: $(INSTALLED)
	python -m pytest -m "not gpu"

clean:
	rm -rf $(VENV) .pytest_cache
