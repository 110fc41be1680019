"""Bayesian quadrature: closed-form kernel means against scipy.integrate.quad, posterior mean/variance
against independent computations, jitter-free weights, flat limits, Bayes-Sard exactness, rates."""

import math

import mpmath
import numpy as np
import pytest
import scipy.integrate as si
import torch

from quadrature import (
    RBF,
    BayesianQuadrature,
    Matern,
    bq_weights,
    fit_lengthscale,
    log_marginal_likelihood,
    scale_mle,
    trapezoid_weights,
)
from solvers import ReturnCode, solve
from solvers.problem import IntegralProblem

torch.set_num_threads(1)
KERNELS = [Matern(0.5, 0.3), Matern(1.5, 0.3), Matern(2.5, 0.3), Matern(3.5, 0.3), RBF(0.3),
           Matern(2.5, 2.0), RBF(0.05)]


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize("kernel", KERNELS, ids=repr)
def test_kernel_means_and_initial_error_against_quad(kernel):
    a, b = -0.2, 0.7
    for x in (-0.5, -0.2, 0.1, 0.55, 0.7, 1.3):
        pts = [x] if a < x < b else None
        ref = si.quad(lambda t, x=x: kernel.kappa(abs(t - x)), a, b, points=pts,
                      epsabs=1e-15, epsrel=1e-14)[0]
        assert kernel.kernel_mean(x, a, b) == pytest.approx(ref, rel=1e-12, abs=1e-15)
        with mpmath.workdps(30):
            assert float(kernel.kernel_mean_mp(mpmath.mpf(x), mpmath.mpf(a), mpmath.mpf(b))) == pytest.approx(
                ref, rel=1e-12, abs=1e-15)
    z0 = si.quad(lambda s: kernel.kernel_mean(s, a, b), a, b, epsabs=1e-15, epsrel=1e-14)[0]
    assert kernel.initial_error(a, b) == pytest.approx(z0, rel=1e-12)
    with mpmath.workdps(30):
        assert float(kernel.initial_error_mp(mpmath.mpf(a), mpmath.mpf(b))) == pytest.approx(z0, rel=1e-12)


def test_matern_closed_forms_match_textbook_expressions():
    r = np.linspace(0, 2, 7)
    for nu, poly in [(0.5, lambda u: 1), (1.5, lambda u: 1 + u), (2.5, lambda u: 1 + u + u * u / 3),
                     (3.5, lambda u: 1 + u + 2 * u ** 2 / 5 + u ** 3 / 15)]:
        u = math.sqrt(2 * nu) * r / 0.7
        np.testing.assert_allclose(Matern(nu, 0.7).kappa(r), poly(u) * np.exp(-u), rtol=1e-14)


def test_posterior_variance_against_double_quadrature_of_posterior_covariance():
    # V = s^2 int int [k(s,t) - k(s,X) K^{-1} k(X,t)] ds dt, computed by brute force (well-conditioned case).
    k = Matern(1.5, 0.4)
    x = np.array([0.0, 0.3, 0.55, 1.0])
    K = k(x, x)
    Kinv = np.linalg.inv(K)

    sc = math.sqrt(3) / 0.4

    def kap(r):
        return (1 + sc * r) * math.exp(-sc * r)

    def cov(s, t):
        ks = [kap(abs(s - xi)) for xi in x]
        kt = [kap(abs(t - xi)) for xi in x]
        return kap(abs(s - t)) - sum(ks[i] * Kinv[i, j] * kt[j] for i in range(4) for j in range(4))

    brute = si.dblquad(lambda t, s: cov(s, t), 0, 1, 0, 1, epsabs=1e-11, epsrel=1e-8)[0]
    entry = bq_weights(k, torch.tensor(x), (0.0, 1.0))
    assert entry.variance_factor == pytest.approx(brute, rel=1e-6)
    np.testing.assert_allclose(entry.weights, Kinv @ k.kernel_mean(x, 0.0, 1.0), rtol=1e-10)


@pytest.mark.parametrize("kernel", [Matern(3.5, 0.3), RBF(0.3)], ids=repr)
def test_weights_are_jitter_free_in_the_ill_conditioned_regime(kernel):
    # The paper's setting: 15 nodes on [0, 0.1], l = 0.3, cond(K) far beyond 1e10. The BQ rule must
    # integrate every kernel translate k(., x_j) exactly: K w = z. A 1e-8 jitter violates that visibly.
    x = np.linspace(0.0, 0.1, 15)
    K = kernel(x, x)
    z = kernel.kernel_mean(x, 0.0, 0.1)
    assert np.linalg.cond(K) > 1e12
    w = bq_weights(kernel, torch.tensor(x), (0.0, 0.1)).weights
    with mpmath.workdps(60):  # residual in extended precision, so float64 rounding of K w does not hide it
        Km = mpmath.matrix([[kernel.kappa_mp(mpmath.mpf(a) - mpmath.mpf(b)) for b in x] for a in x])
        zm = [kernel.kernel_mean_mp(mpmath.mpf(a), 0, mpmath.mpf(0.1)) for a in x]
        res = max(abs(sum(Km[i, j] * mpmath.mpf(w[j]) for j in range(15)) - zm[i]) for i in range(15))
    assert float(res) < 1e-14
    w_jit = np.linalg.solve(K + 1e-8 * np.eye(15), z)
    assert np.abs(K @ w_jit - z).max() > 1e-11  # about 1e-8 * |w|, a thousand times ours
    assert abs(w.sum() - 0.1) < 1e-6  # integrates constants almost exactly: a sane rule


def test_weights_are_cached_and_shift_invariant():
    k = Matern(2.5, 0.3)
    e1 = bq_weights(k, torch.linspace(0, 0.1, 7, dtype=torch.float64), (0.0, 0.1))
    e2 = bq_weights(k, torch.linspace(5, 5.1, 7, dtype=torch.float64), (5.0, 5.1))
    assert e1 is e2


def test_flat_limit_matern_half_is_trapezoid():
    x = torch.linspace(0, 1, 9, dtype=torch.float64)
    tw = trapezoid_weights(x).numpy()
    diffs = [np.abs(bq_weights(Matern(0.5, ell), x, (0.0, 1.0)).weights - tw).max() for ell in (10, 100, 1e4)]
    assert diffs[0] > diffs[1] > diffs[2] and diffs[2] < 1e-10
    assert diffs[0] / diffs[1] == pytest.approx(100, rel=0.05)  # the gap closes like (T / l)^2


def test_mean_is_exact_on_kernel_translates_and_variance_positive():
    k = Matern(2.5, 0.4)
    c = np.array([0.7, -1.2, 0.4])
    cx = np.array([0.15, 0.5, 0.8])

    def f(t):
        return torch.as_tensor(k(t.numpy(), cx) @ c)

    exact = float(k.kernel_mean(cx, 0.0, 1.0) @ c)
    # Nodes containing the centres: f lies in the span of the kernel translates, so the mean is exact.
    nodes = torch.tensor([0.0, 0.15, 0.3, 0.5, 0.65, 0.8, 1.0], dtype=torch.float64)
    sol = solve(IntegralProblem(f, (0.0, 1.0)), BayesianQuadrature(k), nodes=nodes)
    assert float(sol.mean) == pytest.approx(exact, rel=1e-12)
    assert float(sol.variance) > 0 and sol.retcode is ReturnCode.SUCCESS and sol.stats.nfe == 7


def test_scale_mle_matches_float64_in_a_well_conditioned_case():
    k = Matern(1.5, 0.1)
    x = np.linspace(0, 1, 6)
    y = np.stack([np.sin(3 * x), np.exp(x)])
    entry = bq_weights(k, torch.tensor(x), (0.0, 1.0))
    K = k(x, x)
    ref = np.einsum("bi,ij,bj->b", y, np.linalg.inv(K), y) / 6
    np.testing.assert_allclose(scale_mle(entry, y), ref, rtol=1e-10)
    mean, var = BayesianQuadrature(k).posterior(y, x, (0.0, 1.0))
    assert isinstance(mean, np.ndarray) and mean.shape == (2,)
    np.testing.assert_allclose(var, ref * entry.variance_factor, rtol=1e-10)


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5, 3.5])
def test_convergence_rate_at_least_sobolev_order(nu):
    # Matern-nu BQ converges at least as O(N^-(nu + 1/2)) for integrands in its RKHS (smooth ones here).
    f = lambda t: torch.exp(torch.sin(3 * t))  # noqa: E731
    exact = si.quad(lambda t: math.exp(math.sin(3 * t)), 0, 1, epsabs=1e-14, epsrel=1e-13, limit=200)[0]
    ns = np.array([5, 9, 17, 33])
    errs = [abs(float(solve(IntegralProblem(f, (0.0, 1.0)), BayesianQuadrature(Matern(nu, 0.5), n=n)).mean)
                - exact) for n in ns]
    slope = np.polyfit(np.log(ns - 1), np.log(errs), 1)[0]
    assert slope <= -(nu + 0.5), slope


def test_bayes_sard_is_exact_on_polynomials_and_zero_mean_is_not():
    k = Matern(2.5, 0.2)
    for deg in (0, 2, 3):
        alg = BayesianQuadrature(k, n=7, prior_degree=deg)
        for p in range(deg + 1):
            got = float(solve(IntegralProblem(lambda t, p=p: t ** p, (0.5, 2.0)), alg).mean)
            assert got == pytest.approx((2.0 ** (p + 1) - 0.5 ** (p + 1)) / (p + 1), rel=1e-12)
    plain = float(solve(IntegralProblem(lambda t: t ** 0, (0.5, 2.0)), BayesianQuadrature(k, n=7)).mean)
    assert abs(plain - 1.5) > 1e-6
    sard = bq_weights(k, torch.linspace(0.5, 2, 7, dtype=torch.float64), (0.5, 2.0), degree=2)
    zero = bq_weights(k, torch.linspace(0.5, 2, 7, dtype=torch.float64), (0.5, 2.0))
    assert sard.variance_factor > zero.variance_factor > 0  # a flat prior on the mean only adds uncertainty


def test_marginal_likelihood_lengthscale_is_a_local_maximum():
    k = Matern(2.5, 1.0)
    x = torch.linspace(0, 1, 9, dtype=torch.float64)
    y = np.sin(4 * x.numpy())
    best = fit_lengthscale(k, x, (0.0, 1.0), y)
    ll = lambda ell: log_marginal_likelihood(bq_weights(k.with_lengthscale(ell), x, (0.0, 1.0)), y)  # noqa: E731
    assert ll(best.lengthscale) >= max(ll(best.lengthscale * 0.8), ll(best.lengthscale * 1.25))
    sol = solve(IntegralProblem(lambda t: torch.sin(4 * t), (0.0, 1.0)),
                BayesianQuadrature(k, n=9, lengthscale="ml"))
    err = abs(float(sol.mean) - (1 - math.cos(4)) / 4)
    assert err < 1e-3 and err < 3 * float(sol.std)


def test_bad_input():
    with pytest.raises(ValueError, match="half-integer"):
        Matern(1.0)
    with pytest.raises(ValueError, match="lengthscale"):
        RBF(-1.0)
    with pytest.raises(ValueError, match="inside the domain"):
        bq_weights(Matern(1.5), torch.tensor([0.0, 2.0]), (0.0, 1.0))
    with pytest.raises(ValueError, match="needs at least 4 nodes"):
        bq_weights(Matern(1.5), torch.tensor([0.0, 1.0]), (0.0, 1.0), degree=3)
    with pytest.raises(ValueError, match="scale"):
        BayesianQuadrature(scale=-1.0)
    with pytest.raises(TypeError, match="Kernel"):
        BayesianQuadrature(kernel="rbf")
    with pytest.raises(ValueError, match="at least 2 nodes"):
        BayesianQuadrature().posterior(np.ones(1), np.array([0.5]), (0.0, 1.0))
