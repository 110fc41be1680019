# The two commands of the contract: `make demo` and `make test`. Both set up .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
STAMP   := $(VENV)/.installed
# Two cores: keep torch from oversubscribing them when pytest and BLAS both spawn threads.
export OMP_NUM_THREADS ?= 2
export MPLBACKEND ?= Agg

.PHONY: setup demo test test-all docs bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[test,docs]"
	touch $(STAMP)

demo: setup
	$(PYTHON) -m solvers.convergence --out out/convergence
	$(PYTHON) examples/ode_internals.py --quick --out out/ode_internals

test: setup
	$(PYTHON) -m pytest -q

test-all: setup
	$(PYTHON) -m pytest -q -m "slow or not slow"

docs: setup
	$(BIN)/mkdocs build --strict

bench: setup
	$(PYTHON) benchmarks/ode_overhead.py --out out/benchmarks

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf out site .pytest_cache
