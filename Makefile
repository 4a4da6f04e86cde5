# recsys developer commands. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
ARGS   ?=

.PHONY: help install train test lint tensorboard clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed  ## create .venv and install recsys (override the pin with TORCH=...)

train: install  ## train the default model (MF-BPR) on the built-in synthetic data
	$(VENV)/bin/recsys-train $(ARGS)

test: install  ## run the test suite
	$(PY) -m pytest -q $(ARGS)

lint: install  ## ruff lint and format check
	$(VENV)/bin/ruff check recsys tests
	$(VENV)/bin/ruff format --check recsys tests

tensorboard: install  ## TensorBoard over every run under outputs/ and multirun/
	$(VENV)/bin/tensorboard --logdir . --bind_all=false

clean:  ## remove caches and run outputs (keeps .venv and data/)
	rm -rf outputs multirun .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
