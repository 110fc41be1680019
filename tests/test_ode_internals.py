"""Exposed internals: error and stiffness estimates, the single-step API, gradients through them."""

import math

import pytest
import torch

from solvers import RK4, Bosh3, Dopri5, ODEProblem, Tsit5, Verner65, solve


def _rotating_system(freqs=(1.0, 3.0, 8.0), seed=0):
    """y' = A y with A orthogonally similar to rotation blocks: spectral radius max(freqs), and no
    mode decays, so the dominant mode stays present for the whole span."""
    g = torch.Generator().manual_seed(seed)
    n = 2 * len(freqs)
    blocks = torch.zeros(n, n, dtype=torch.float64)
    for i, w in enumerate(freqs):
        blocks[2 * i, 2 * i + 1], blocks[2 * i + 1, 2 * i] = w, -w
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))
    a = q @ blocks @ q.T
    y0 = torch.randn(n, dtype=torch.float64, generator=g)
    return ODEProblem(lambda t, y: y @ a.T, y0, (0.0, 3.0)), max(freqs)


@pytest.mark.parametrize("method", [Tsit5, Dopri5, Verner65])
def test_stiffness_estimate_approximates_spectral_radius(method):
    p, rho = _rotating_system()
    sol = solve(p, method(), rtol=1e-8, atol=1e-10, trace=True)
    tr = sol.trace.accepted_only()
    # Non-stiff side: every step is limited by accuracy, well inside the stability region.
    assert float((tr.stiffness_estimate * tr.dt.abs()).max()) < 1.0
    est = float(tr.eigenvalue_estimate.median())
    assert abs(est - rho) <= 0.2 * rho, est


def test_stiffness_estimate_flags_stability_limited_steps():
    p = ODEProblem(lambda t, y: -1000.0 * (y - torch.cos(t)) - torch.sin(t),
                   torch.tensor([2.0], dtype=torch.float64), (0.0, 1.0))
    sol = solve(p, Tsit5(), rtol=1e-6, atol=1e-8, trace=True)
    tr = sol.trace.accepted_only()
    late = tr.t > 0.1  # after the transient, only stability limits the step
    ratio = (tr.stiffness_estimate * tr.dt.abs())[late]
    assert float(ratio.median()) > 0.5
    assert abs(float(tr.eigenvalue_estimate[late].median()) - 1000.0) < 200.0


def test_single_step_matches_trace_and_counts():
    p, _ = _rotating_system()
    alg = Tsit5()
    sol = solve(p, alg, rtol=1e-6, atol=1e-8, trace=True, dt0=0.05)
    res = alg.step(p.f, 0.0, p.y0, 0.05, rtol=1e-6, atol=1e-8)
    assert res.nfe == 7
    torch.testing.assert_close(res.error_estimate, sol.trace.error_estimate[0])
    torch.testing.assert_close(res.stiffness_estimate, sol.trace.stiffness_estimate[0])
    f0 = p.f(torch.tensor(0.0, dtype=torch.float64), p.y0)
    res2 = alg.step(p.f, 0.0, p.y0, 0.05, f0=f0, rtol=1e-6, atol=1e-8)
    assert res2.nfe == 6
    torch.testing.assert_close(res.y, res2.y)
    # One step of an order-5 method on a linear problem: y1 = exp(hA) y0 up to O(h^6).
    exact = sol(0.05)
    assert float((res.y - exact).abs().max()) < 1e-6


def test_error_estimate_is_the_scaled_rms_norm():
    # y' = y, one Heun-Euler-like check by hand with Bosh3: err = h * sum e_i k_i.
    alg = Bosh3()
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    res = alg.step(lambda t, y: y, 0.0, y0, 0.1, rtol=1e-3, atol=1e-6)
    e = torch.tensor(alg.tableau.e, dtype=torch.float64)
    err = 0.1 * (e @ res.k)
    scale = 1e-6 + 1e-3 * torch.maximum(y0.abs(), res.y.abs())
    expected = torch.sqrt(torch.mean((err / scale) ** 2))
    torch.testing.assert_close(res.error_estimate, expected)


def test_trace_estimates_are_differentiable_and_penalisable():
    w = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    p = ODEProblem(lambda t, y: -w * y + torch.sin(t), torch.tensor([1.0], dtype=torch.float64), (0.0, 2.0))
    sol = solve(p, Tsit5(), rtol=1e-6, atol=1e-8, trace=True)
    tr = sol.trace
    assert tr.error_estimate.requires_grad and tr.stiffness_estimate.requires_grad
    penalty = (tr.error_estimate * tr.dt.to(tr.error_estimate)).sum() + tr.stiffness_estimate.max()
    (g,) = torch.autograd.grad(penalty, w)
    assert torch.isfinite(g) and g != 0
    # Without grad the trace is detached data.
    with torch.no_grad():
        sol2 = solve(p, Tsit5(), rtol=1e-6, atol=1e-8, trace=True)
    assert not sol2.trace.error_estimate.requires_grad


def test_gradcheck_through_fixed_step_solve():
    a = torch.tensor([[0.0, 1.0], [-2.0, -0.3]], dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)

    def run(a_, y0_):
        p = ODEProblem(lambda t, y: torch.tanh(y @ a_.T) + torch.cos(t), y0_, (0.0, 1.0))
        return solve(p, Tsit5(), dt=0.1, saveat=[0.5, 1.0]).ys

    assert torch.autograd.gradcheck(run, (a, y0))

    def run_err(a_, y0_):
        p = ODEProblem(lambda t, y: torch.tanh(y @ a_.T), y0_, (0.0, 1.0))
        return solve(p, RK4(), dt=0.25, trace=True).ys[-1]

    assert torch.autograd.gradcheck(run_err, (a, y0))

    def error_estimates(a_, y0_):
        p = ODEProblem(lambda t, y: torch.tanh(y @ a_.T), y0_, (0.0, 1.0))
        return solve(p, Dopri5(), dt=0.25, trace=True, rtol=1e-3, atol=1e-6).trace.error_estimate

    assert torch.autograd.gradcheck(error_estimates, (a, y0))


def test_adaptive_gradient_matches_finite_differences():
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    p = ODEProblem(lambda t, y: torch.stack([y[1], -torch.sin(y[0])]), y0, (0.0, 3.0))
    out = solve(p, Tsit5(), rtol=1e-11, atol=1e-12).ys[-1].sum()
    (g,) = torch.autograd.grad(out, y0)
    eps = 1e-5
    fd = []
    for i in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[i] = eps
        hi = solve(p.replace(y0=(y0 + e).detach()), Tsit5(), rtol=1e-11, atol=1e-12).ys[-1].sum()
        lo = solve(p.replace(y0=(y0 - e).detach()), Tsit5(), rtol=1e-11, atol=1e-12).ys[-1].sum()
        fd.append(float(hi - lo) / (2 * eps))
    torch.testing.assert_close(g, torch.tensor(fd, dtype=torch.float64), rtol=1e-5, atol=1e-6)


def test_one_stage_method_reports_no_stiffness_estimate():
    from solvers import Euler

    res = Euler().step(lambda t, y: -y, 0.0, torch.ones(1, dtype=torch.float64), 0.1)
    assert math.isnan(float(res.stiffness_estimate)) and math.isnan(float(res.error_estimate))
