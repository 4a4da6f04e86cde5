# recsys developer commands. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
ARGS   ?=
COMPARE ?=
RECBOLE_VENV ?= .venv-recbole
IMPLICIT_VENV ?= .venv-implicit

.PHONY: help install train test test-fast lint tensorboard clean bench bench-quick bench-serve recbole-venv implicit-venv
.PHONY: gpu-check gpu-prep gpu-wheels gpu-data

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e '.[dev,sweep,export,track,serve]'
	touch $@

install: $(VENV)/.installed  ## create .venv and install recsys (override the pin with TORCH=...)

train: install  ## train the default model (MF-BPR) on the built-in synthetic data
	$(VENV)/bin/recsys-train $(ARGS)

test: install  ## run the test suite (two workers: pytest-xdist)
	$(PY) -m pytest -q -n 2 $(ARGS)

test-fast: install  ## the suite without the slow, gpu and data tests (~4 min on 2 cores)
	$(PY) -m pytest -q -n 2 -m "not slow and not gpu and not data" $(ARGS)

lint: install  ## ruff lint and format check
	$(VENV)/bin/ruff check recsys hydra_plugins tests benchmarks/runner benchmarks/scripts
	$(VENV)/bin/ruff format --check recsys hydra_plugins tests benchmarks/runner benchmarks/scripts

bench: install $(if $(filter recbole,$(COMPARE)),recbole-venv)  ## benchmarks/matrices/full.yaml -> benchmarks/matrix.md, .json (COMPARE=recbole: side by side)
	$(PY) -m benchmarks.runner $(if $(COMPARE),--compare $(COMPARE) --recbole-python $(RECBOLE_VENV)/bin/python) $(ARGS)

bench-quick: install $(if $(filter recbole,$(COMPARE)),recbole-venv)  ## benchmarks/matrices/quick.yaml (synthetic, ml-100k if present) -> outputs/bench-quick/
	$(PY) -m benchmarks.runner --quick $(if $(COMPARE),--compare $(COMPARE) --recbole-python $(RECBOLE_VENV)/bin/python) $(ARGS)

bench-serve: install  ## load test of recsys-serve (MF, SASRec) and a bare FastAPI floor -> benchmarks/logs/<date>-serving/
	$(PY) -m benchmarks.scripts.bench_serve $(ARGS)

# RecBole 1.2.1 in its own venv (numpy<2, pandas<3, no ray), driven by benchmarks/runner/recbole.py
recbole-venv: $(RECBOLE_VENV)/.installed  ## venv with RecBole 1.2.1 for COMPARE=recbole
$(RECBOLE_VENV)/.installed:
	test -x $(RECBOLE_VENV)/bin/python || $(PYTHON) -m venv $(RECBOLE_VENV)
	$(RECBOLE_VENV)/bin/pip install -q "$(TORCH)"
	$(RECBOLE_VENV)/bin/pip install -q --no-deps "recbole==1.2.1"
	$(RECBOLE_VENV)/bin/pip install -q "numpy<2" "pandas<3" "scipy<1.14" scikit-learn tqdm pyyaml \
		"colorlog==4.7.2" "colorama==0.4.4" tensorboard thop tabulate texttable psutil plotly
	touch $@

# implicit 0.7.3 (its ALS) in its own venv, for benchmarks/scripts/ials_implicit.py; the venv
# ignores itself in git (.gitignore inside it)
implicit-venv: $(IMPLICIT_VENV)/.installed  ## venv with implicit 0.7.3 for the iALS comparison
$(IMPLICIT_VENV)/.installed:
	test -x $(IMPLICIT_VENV)/bin/python || $(PYTHON) -m venv $(IMPLICIT_VENV)
	echo '*' > $(IMPLICIT_VENV)/.gitignore
	$(IMPLICIT_VENV)/bin/pip install -q "implicit==0.7.3"
	touch $@

# The GPU check (benchmarks/scripts/gpu_check.py, benchmarks/gpu.md). A GPU machine without network
# needs the wheels of what its image lacks (Hydra, OmegaConf, antlr4) and the data: `make gpu-prep`
# here puts them in .gpu-wheels/ and .gpu-data/ (git-ignored: carry both to the GPU machine).
GPU_WHEELS ?= .gpu-wheels
GPU_DATA   ?= .gpu-data
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
RECSYS_DATA_DIR ?= data

gpu-check:  ## on a CUDA machine: gpu tests + short GPU benchmark -> outputs/gpu-check/ (no GPU: exit 3)
	@$(GPU_PYTHON) benchmarks/scripts/gpu_check.py --wheels $(GPU_WHEELS) --data $(GPU_DATA) $(ARGS)

gpu-prep: gpu-wheels gpu-data  ## with network and datasets: what gpu-check needs offline

gpu-wheels:  ## wheels of Hydra, OmegaConf and antlr4 (pure Python) into .gpu-wheels/
	$(PYTHON) -m pip wheel -q --no-deps -w $(GPU_WHEELS) \
		hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3

gpu-data:  ## copy Amazon Beauty and MovieLens-1M from RECSYS_DATA_DIR into .gpu-data/
	@test -d "$(RECSYS_DATA_DIR)/beauty" -a -d "$(RECSYS_DATA_DIR)/ml-1m" || \
		{ echo "gpu-data: no beauty/ and ml-1m/ under RECSYS_DATA_DIR=$(RECSYS_DATA_DIR)"; exit 2; }
	rm -rf $(GPU_DATA) && mkdir -p $(GPU_DATA)
	cp -r "$(RECSYS_DATA_DIR)/beauty" "$(RECSYS_DATA_DIR)/ml-1m" $(GPU_DATA)/
	chmod -R u+w $(GPU_DATA)

tensorboard: install  ## TensorBoard over outputs/ and multirun/ (one sweep: LOGDIR=multirun/<date>/<time>)
	$(VENV)/bin/tensorboard $(if $(LOGDIR),--logdir $(LOGDIR),--logdir_spec outputs:outputs,multirun:multirun)

clean:  ## remove caches and run outputs (keeps .venv and data/)
	rm -rf outputs multirun .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
