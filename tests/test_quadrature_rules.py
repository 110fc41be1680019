"""Classical rules: exact on polynomials of their degree (and not beyond), convergence orders,
agreement with scipy on sampled data, batching, torch/NumPy inputs, clear errors on bad input."""

import math

import numpy as np
import pytest
import scipy.integrate as si
import torch

from quadrature import (
    GaussLegendre,
    Romberg,
    Simpson,
    Trapezoid,
    gauss_legendre,
    romb,
    simpson,
    trapezoid,
)
from solvers import ReturnCode, solve
from solvers.problem import IntegralProblem

torch.set_num_threads(1)
A, B = -0.3, 1.7


def poly_integral(k: int) -> float:
    return (B ** (k + 1) - A ** (k + 1)) / (k + 1)


def mono(k):
    return lambda x: x ** k


@pytest.mark.parametrize("rule, degree", [
    (Trapezoid(n=7), 1), (Simpson(n=7), 3), (Simpson(n=8), 3), (Simpson(n=4), 3),
    (GaussLegendre(n=3), 5), (GaussLegendre(n=6), 11), (Romberg(n=5), 5), (Romberg(n=9), 7),
])
def test_exact_on_polynomials_of_their_degree_and_not_beyond(rule, degree):
    for k in range(degree + 1):
        got = float(solve(IntegralProblem(mono(k), (A, B)), rule).mean)
        assert got == pytest.approx(poly_integral(k), rel=1e-13, abs=1e-13), k
    got = float(solve(IntegralProblem(mono(degree + 1), (A, B)), rule).mean)
    assert abs(got - poly_integral(degree + 1)) > 1e-8


def test_simpson_exact_for_quadratics_on_nonuniform_nodes_odd_and_even():
    # On non-uniform nodes the interval-pair rule integrates the interpolating quadratic: degree 2
    # (the cubic term cancels only when the middle node is the midpoint).
    rng = np.random.default_rng(0)
    for n in (5, 6, 9, 10):
        x = np.sort(np.concatenate([[A, B], rng.uniform(A, B, n - 2)]))
        y = np.stack([x ** k for k in range(4)])  # batch of 4 integrands
        got = simpson(y, x)
        assert isinstance(got, np.ndarray) and got.shape == (4,)
        np.testing.assert_allclose(got[:3], [poly_integral(k) for k in range(3)], rtol=1e-12, atol=1e-12)
        assert abs(got[3] - poly_integral(3)) > 1e-8
        assert np.allclose(trapezoid(y[:2], x), [poly_integral(0), poly_integral(1)], rtol=1e-13)


@pytest.mark.parametrize("rule, order", [(Trapezoid, 2), (Simpson, 4)])
def test_convergence_order(rule, order):
    f = IntegralProblem(torch.exp, (0.0, 1.0))
    exact = math.e - 1
    errs = [abs(float(solve(f, rule(n=2 ** k + 1)).mean) - exact) for k in range(2, 7)]
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(np.abs(rates - order) < 0.05), rates


def test_gauss_legendre_converges_spectrally():
    exact = si.quad(lambda t: 1 / (1 + t * t), -1, 1)[0]
    err = [abs(float(gauss_legendre(lambda t: 1 / (1 + t * t), -1.0, 1.0, n)) - exact) for n in (4, 8, 16)]
    assert err[1] < err[0] / 20 and err[2] < err[1] / 200


def test_sampled_data_matches_scipy_batched_and_along_dim():
    x = np.linspace(0.0, 2.0, 11)
    y = np.stack([np.sin(x), np.cos(3 * x), x ** 5])  # (3, 11)
    np.testing.assert_allclose(trapezoid(y, x), si.trapezoid(y, x), rtol=1e-14)
    np.testing.assert_allclose(simpson(y, x), si.simpson(y, x=x), rtol=1e-13)
    np.testing.assert_allclose(simpson(y.T, x, dim=0), si.simpson(y, x=x), rtol=1e-13)
    np.testing.assert_allclose(romb(y[:, :9], dx=0.2), si.romb(y[:, :9], dx=0.2), rtol=1e-13)
    yt = torch.tensor(y, dtype=torch.float32)
    out = trapezoid(yt, torch.tensor(x))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), si.trapezoid(y, x), rtol=1e-6)


def test_solve_batched_callable_returns_solution():
    prob = IntegralProblem(lambda t: torch.stack([torch.sin(t), t ** 2]), (0.0, math.pi))
    sol = solve(prob, GaussLegendre(n=12))
    assert sol.success and sol.retcode is ReturnCode.SUCCESS and sol.variance is None
    assert sol.mean.shape == (2,) and sol.stats.nfe == 12
    np.testing.assert_allclose(sol.mean.numpy(), [2.0, math.pi ** 3 / 3], rtol=1e-12)
    np.testing.assert_allclose(float(sol.weights.sum()), math.pi, rtol=1e-14)


def test_romberg_adaptive_reaches_tolerance_against_quad():
    f = lambda t: np.exp(np.sin(t))  # noqa: E731
    exact = si.quad(f, 0, 2, epsabs=1e-13, epsrel=1e-13)[0]
    sol = solve(IntegralProblem(lambda t: torch.exp(torch.sin(t)), (0.0, 2.0)), Romberg(rtol=1e-12, atol=0))
    assert sol.success and abs(float(sol.mean) - exact) < 1e-11
    assert float(sol.error_estimate) < 1e-11 and sol.stats.levels >= 3
    capped = solve(IntegralProblem(lambda t: torch.exp(torch.sin(t)), (0.0, 2.0)),
                   Romberg(rtol=1e-15, atol=0, max_levels=2))
    assert capped.retcode is ReturnCode.MAX_ITERS


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="N = 1"):
        Trapezoid(n=1)
    with pytest.raises(ValueError, match="at least 3 nodes"):
        simpson(np.ones(2), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="strictly increasing"):
        trapezoid(np.ones(3), np.array([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="2\\^k \\+ 1"):
        Romberg(n=6)
    with pytest.raises(ValueError, match="Gauss-Legendre nodes"):
        GaussLegendre(n=3).integrate(np.ones(3), np.array([0.0, 0.5, 1.0]), domain=(0.0, 1.0))
    with pytest.raises(ValueError, match="not the domain"):
        Trapezoid().integrate(np.ones(3), np.array([0.0, 0.5, 1.0]), domain=(0.0, 2.0))
    with pytest.raises(ValueError, match="reversed"):
        IntegralProblem(torch.sin, (1.0, 0.0))
    with pytest.raises(ValueError, match="lebesgue"):
        IntegralProblem(torch.sin, (0.0, 1.0), measure="gauss")
    with pytest.raises(TypeError, match="callable"):
        IntegralProblem(3.0, (0.0, 1.0))
    with pytest.raises(ValueError, match="nodes along the last"):
        solve(IntegralProblem(lambda t: torch.ones(3), (0.0, 1.0)), Trapezoid(n=5))
    with pytest.raises(TypeError, match="unknown option"):
        solve(IntegralProblem(torch.sin, (0.0, 1.0)), Trapezoid(), m=3)
