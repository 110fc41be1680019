"""Tableaux are data checked when built; derived stability sizes match the literature."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers import METHODS, ButcherTableau
from solvers.ode.tableau import stability_polynomial


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_every_tableau_is_consistent(method):
    tab = method.tableau
    a, b, c = (np.asarray(x, dtype=float) for x in (tab.a, tab.b, tab.c))
    np.testing.assert_allclose(a.sum(1), c, atol=1e-12)
    assert abs(b.sum() - 1) < 1e-12
    if tab.e is not None:
        assert abs(np.sum(tab.e)) < 1e-12
    # The stability polynomial agrees with exp(z) to the method's order.
    coeffs = stability_polynomial(a, b)
    fact = np.cumprod([1.0] + list(range(1, len(coeffs))))
    np.testing.assert_allclose(coeffs[: tab.order + 1], 1.0 / fact[: tab.order + 1], rtol=1e-10)


@pytest.mark.parametrize("method, size", [("Dopri5", 3.3066), ("Tsit5", 3.5068), ("RK4", 2.7853),
                                          ("Euler", 2.0), ("Bosh3", 2.5127)])
def test_stability_sizes_match_literature(method, size):
    # DP5 3.3066 and Tsit5 3.5068: OrdinaryDiffEq's alg_stability_size; RK4 2.7853: Hairer-Wanner II.
    m = {M.__name__: M for M in METHODS}[method]
    assert m().stability_size == pytest.approx(size, abs=6e-4)


def _heun(**over):
    kw = dict(a=((0, 0), (1.0, 0)), b=(0.5, 0.5), c=(0.0, 1.0), order=2, e=(-0.5, 0.5), embedded_order=1)
    kw.update(over)
    return ButcherTableau(**kw)


def test_valid_tableau_builds():
    assert _heun().stability_size == pytest.approx(2.0, abs=1e-9)


@pytest.mark.parametrize("over, msg", [
    (dict(c=(0.0, 0.9)), "row 1 of a sums"),
    (dict(b=(0.4, 0.6)), "order condition"),
    (dict(e=(-0.5, 0.4)), "error weights sum"),
    (dict(a=((0, 1.0), (1.0, 0))), "strictly lower triangular"),
    (dict(order=3), "order condition"),
    (dict(c=(0.0,)), "must be 2x2"),
])
def test_inconsistent_tableaux_are_rejected(over, msg):
    with pytest.raises(ValueError, match=msg):
        _heun(**over)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 3), st.floats(1e-6, 1.0) | st.floats(-1.0, -1e-6))
def test_any_perturbed_rk4_coefficient_is_caught(index, delta):
    a = [[0, 0, 0, 0], [0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1, 0]]
    b = [1 / 6, 1 / 3, 1 / 3, 1 / 6]
    b[index] += delta
    with pytest.raises(ValueError):
        ButcherTableau(a=a, b=b, c=(0, 0.5, 0.5, 1), order=4)
