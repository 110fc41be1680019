# The two commands of the contract: `make demo` and `make test`. Both set up .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
STAMP   := $(VENV)/.installed
# Two cores: keep torch from oversubscribing them when pytest and BLAS both spawn threads.
export OMP_NUM_THREADS ?= 2
export MPLBACKEND ?= Agg
# torch is installed first and pinned. The pin fixes the version, not the build: where the default index
# has no local CPU wheel, `torch==2.13.0` resolves to the CUDA build (and its nvidia-* packages). Choose the
# wheel index with TORCH_INDEX, e.g. `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
# Empty (the default) installs from pip's configured index.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=

.PHONY: setup demo test test-all docs bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo "setup: creating $(VENV) with $(PY) (if missing)"
	@test -x $(PYTHON) || $(PY) -m venv $(VENV)
	@echo "setup: installing torch==$(TORCH_VERSION)$(if $(TORCH_INDEX), from $(TORCH_INDEX), from the default index)"
	@$(PYTHON) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==$(TORCH_VERSION)
	@echo "setup: installing sciml-solvers in editable mode with extras [test,docs,data]"
	@$(PYTHON) -m pip install -q -e ".[test,docs,data]"
	@touch $(STAMP)
	@echo "setup: done ($(STAMP))"

demo: setup
	$(PYTHON) -m solvers.convergence --quick --out out/convergence
	$(PYTHON) examples/ode_internals.py --quick --out out/examples/ode_internals
	$(PYTHON) examples/bouncing_ball.py --quick --out out/examples/bouncing_ball
	$(PYTHON) examples/stiff_kinetics_fit.py --quick --out out/examples/stiff_kinetics_fit
	$(PYTHON) examples/ensemble_sde.py --quick --nprocs 2 --out out/examples/ensemble_sde
	$(PYTHON) examples/integral_rl_control.py --quick --out out/examples/integral_rl_control
	$(PYTHON) examples/neural_ode_regularization.py --quick --out out/examples/neural_ode_regularization
	$(PYTHON) examples/poisson_pressure_solve.py --quick --out out/examples/poisson_pressure_solve
	$(PYTHON) examples/lagrangian_pinn_convection.py --quick --out out/examples/lagrangian_pinn_convection
	$(PYTHON) examples/burgers.py --quick --out out/examples/burgers
	$(PYTHON) examples/irregular_time_series.py --quick --out out/examples/irregular_time_series
	$(PYTHON) examples/irregular_forecasting.py --quick --out out/examples/irregular_forecasting

# One pytest worker per core; each worker runs torch with one thread (tests/conftest.py).
test: setup
	$(PYTHON) -m pytest -q -n 2

test-all: setup
	$(PYTHON) -m pytest -q -n 2 -m "slow or not slow"

docs: setup
	$(BIN)/mkdocs build --strict

bench: setup
	$(PYTHON) benchmarks/ode_overhead.py --out out/benchmarks/ode_overhead
	$(PYTHON) benchmarks/intrl.py --out out/benchmarks/intrl
	$(PYTHON) benchmarks/sde_overhead.py --out out/benchmarks/sde_overhead
	$(PYTHON) benchmarks/adjoints.py --quick --out out/benchmarks/adjoints
	$(PYTHON) benchmarks/events.py --quick --out out/benchmarks/events
	$(PYTHON) benchmarks/regularization.py --quick --out out/benchmarks/regularization
	$(PYTHON) benchmarks/linear_solvers.py --out out/benchmarks/linear_solvers
	$(PYTHON) benchmarks/pinn_failure_modes.py --quick --out out/benchmarks/pinn_failure_modes
	$(PYTHON) benchmarks/stable_sde.py --quick --out out/benchmarks/stable_sde
	$(PYTHON) benchmarks/stiff.py --quick --out out/benchmarks/stiff
	$(PYTHON) benchmarks/scaling.py --quick --out out/benchmarks/scaling

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf out site .pytest_cache
