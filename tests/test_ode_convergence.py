"""Observed orders against SymPy-exact solutions (fixed step, float64)."""

import pytest
import torch

import solvers
from solvers import METHODS, Dopri5, Tsit5
from solvers.convergence import (
    ORDER_PROBLEMS,
    convergence_order,
    dense_convergence_order,
    fit_order,
    work_precision,
)
from solvers.reference import problem

# Vern6 and Vern7 reach float64 round-off within two or three halvings of dt: their orders are
# measured on a finer dt ladder in tests/test_verner.py.
CASES = [(m, p) for m in METHODS for p in ORDER_PROBLEMS if m.__name__ != "Vern7"]


@pytest.mark.parametrize("method, name", CASES, ids=[f"{m.__name__}-{p}" for m, p in CASES])
def test_observed_order_within_quarter_of_theory(method, name):
    res = convergence_order(problem(name), method(), kmax=12)
    assert sum(res.used) >= 2, f"too few points in the asymptotic window: {res.errors}"
    assert abs(res.observed - method.tableau.order) <= 0.25, (res.observed, res.errors)


def test_fit_order_recovers_a_known_slope():
    dts = [0.1, 0.05, 0.025]
    assert fit_order(dts, [3 * d**3 for d in dts]) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        fit_order([0.1], [0.2])


@pytest.mark.parametrize("method, expected", [(Tsit5, 5), (Dopri5, 5)])
def test_dense_output_of_order_4_interpolants_converges(method, expected):
    # An order-4 interpolant has local error O(h^5), so the dense error is O(h^min(p, 5)).
    res = dense_convergence_order(problem("damped_oscillator"), method())
    assert res.theoretical == expected
    assert res.observed >= expected - 0.3, (res.observed, res.errors)


@pytest.mark.parametrize("name", ["RK4", "Bosh3", "Verner65", "Vern6", "Vern7"])
def test_hermite_dense_output_converges_at_order_4(name):
    m = getattr(solvers, name)()
    res = dense_convergence_order(problem("harmonic"), m, kmin=4)
    assert abs(res.observed - min(m.order, 4)) <= 0.3, (res.observed, res.errors)


def test_work_precision_error_decreases_with_tolerance():
    pts = work_precision(problem("logistic"), [Tsit5()], [1e-4, 1e-6, 1e-8], repeats=1)
    errs = [p.error for p in pts]
    nfes = [p.nfe for p in pts]
    assert errs[0] > errs[1] > errs[2]
    assert nfes[0] < nfes[1] < nfes[2]


def test_convergence_needs_an_exact_solution():
    p = problem("linear").replace(analytic=None)
    with pytest.raises(ValueError, match="exact solution"):
        convergence_order(p, Tsit5())
    assert torch.is_tensor(problem("linear").y0)


def test_order_table_measures_vern7_in_its_asymptotic_window():
    """The table ``make demo`` prints measures Vern7 on its own quarter-octave window
    (``Vern7.order_window``; on the plain halving ladder it read 7.14-7.31): within +-0.25 of 7.
    The other methods' rows are the per-method tests above."""
    from solvers.convergence import order_table

    res = order_table(problems=["harmonic", "spiral"], methods=[solvers.Vern7], kmax=12)
    bad = [(r.method, r.problem, r.observed) for r in res if abs(r.deviation) > 0.25]
    assert not bad, bad
