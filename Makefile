# Two commands set up everything on a fresh machine:
#   make search   creates .venv, installs, finds CIFAR-10 and runs a short real search
#   make test     creates .venv, installs, builds/caches the test cluster and runs all tests
# Everything else here is a building block of those two.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CIFAR-10: a local archive when one sits beside the checkout, else the official URL.
DATA ?= $(firstword $(wildcard ../shared/data/cifar-10-python.tar.gz) https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz)
DATA_MD5 ?= $(if $(findstring ://,$(DATA)),c58f30108f718f92721af3b95e74349a,)
SPEC ?= examples/quick-search.yaml
OUT ?= runs/quick-search
PYTEST_ARGS ?=

.PHONY: search test lint pytest venv manifests cluster-build cluster-up cluster-down clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/torch.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/torch.txt
	$(BIN)/pip install --quiet -e '.[trainer,controller,analysis,dev]'
	touch $@

search: venv
	$(BIN)/nas-bohb search $(SPEC) --out $(OUT) --data $(DATA) $(if $(DATA_MD5),--data-md5 $(DATA_MD5),)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

cluster-build: venv
	$(BIN)/python -m tests.cluster build

cluster-up: cluster-build
	$(BIN)/python -m tests.cluster up

cluster-down: venv
	$(BIN)/python -m tests.cluster down

pytest: venv cluster-build
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint pytest

# Regenerate the plain-YAML install (manifests/) from the Helm chart, its source.
manifests: venv
	$(BIN)/python -m tests.chart.manifests

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
