# The README's commands and nothing clever: `make run` (the main job) and `make test` (every test).
# Both create .venv and install the project with pinned dependencies first.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup postgresql run test test-fast lint clean

setup: $(INSTALLED)

# `make setup TORCH_INDEX=URL`: torch and torchvision, at the versions pyproject.toml pins, come
# from that index first: a build with kernels for the site's GPUs, e.g.
# https://download.pytorch.org/whl/cu126 for Pascal (P100) and Volta (V100); README.md, "GPU
# generations". The install after it finds them satisfied (2.14.1+cu126 is ==2.14.1). To switch
# the torch of an existing .venv: make clean setup TORCH_INDEX=URL.
TORCH_INDEX ?=
TORCH_PINS = $(shell $(PYTHON) -c "import tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	print(*(pin for pin in project['dependencies'] if pin.split('==')[0] in ('torch', 'torchvision')))")

# One pip install resolves every dependency together (dvc-s3 bounds botocore through
# aiobotocore; boto3 must be resolved with it), then pip check proves the set is consistent.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifneq ($(TORCH_INDEX),)
	$(BIN)/python -m pip install --quiet --index-url $(TORCH_INDEX) $(TORCH_PINS)
endif
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip check
	$(MAKE) --no-print-directory postgresql
	touch $@

# tests/helpers/services.py starts a throwaway PostgreSQL with initdb + pg_ctl, which come from the system,
# not PyPI. Debian keeps them off PATH in /usr/lib/postgresql/N/bin, so look there too before
# installing; only root can apt-get, anyone else is told what to run (the server tests skip until then).
postgresql:
	@if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "PostgreSQL: initdb found"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; \
	else \
		echo "PostgreSQL's initdb is missing and this is not root: run 'sudo apt-get install postgresql'"; \
	fi

# The main job: data (download, or import data.archive) -> prepare -> the cpu-demo study through
# the local executor -> its report (dvc repro report; `dvc repro train` trains params.yaml's config).
run: $(INSTALLED)
	dvc repro report
	@echo "report: $(CURDIR)/reports/index.html"

# lint and formatting first (seconds), then every test but the GPU ones
test: lint
	python -m pytest -m "not gpu" -n 2 --dist loadgroup --no-loadscope-reorder --durations=25

# the unit tests only: no training, server, cluster, GPU or real data
test-fast: $(INSTALLED)
	python -m pytest -m "not slow and not slurm and not server and not gpu and not realdata"

lint: $(INSTALLED)
	ruff check .
	ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache
