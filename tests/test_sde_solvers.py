"""SDE solvers: strong/weak convergence orders against SymPy-verified exact solutions, equality with
torchsde on the same Brownian path, adaptive stepping on a consistent path, stats, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchsde

from solvers import SolverError, solve
from solvers.problem import SDEProblem
from solvers.reference.sde import (
    SDEComponent,
    SDEReference,
    SDEReferenceError,
    gbm,
    linear_additive,
    linear_multiplicative,
    nonlinear_diagonal,
    ornstein_uhlenbeck,
    t_sym,
    w_sym,
    x_sym,
)
from solvers.sde import SRA1, EulerHeun, EulerMaruyama, GridIncrements, LambaEM, Milstein, fixed_grid

F64 = torch.float64
K_FINE = 10  # finest grid 2^-10: every coarser step size sees the same Brownian path


def _slope(ks, errs) -> float:
    """Least-squares slope of -log(err) against -log(dt) with dt = 2^-k."""
    return float(np.polyfit(np.asarray(ks) * math.log(2), -np.log(errs), 1)[0])


def _strong_order(ref: SDEReference, alg, ks, n_paths=800, seed=0) -> float:
    prob = ref.problem(n_paths)
    m = ref.dim
    fine = GridIncrements(fixed_grid(0.0, 1.0, 2.0 ** -K_FINE), (n_paths, m), F64, "cpu", seed=seed,
                          levy_area=alg.needs_levy_area)
    exact = ref.exact(1.0, fine.dW.sum(0))
    errs = []
    for k in ks:
        sol = solve(prob, alg, dt=2.0 ** -k, brownian=fine.coarsen(2 ** (K_FINE - k)), saveat=[1.0])
        errs.append(float((sol.ys[-1] - exact).abs().mean()))
    return _slope(ks, errs)


@pytest.mark.parametrize("ref, alg, expected", [
    (gbm(), EulerMaruyama(), 0.5),
    (linear_multiplicative(), EulerMaruyama(), 0.5),
    (linear_additive(), EulerMaruyama(), 1.0),
    (gbm(), Milstein(), 1.0),
    (nonlinear_diagonal(), Milstein(), 1.0),
    (linear_multiplicative(), Milstein("jvp"), 1.0),
    (gbm(stratonovich=True), Milstein(), 1.0),
    (gbm(stratonovich=True), EulerHeun(), 1.0),  # scalar commutative noise: Euler-Heun is order 1
], ids=lambda v: getattr(v, "name", None) or repr(v))
def test_strong_order(ref, alg, expected):
    order = _strong_order(ref, alg, ks=range(3, 9))
    assert abs(order - expected) <= 0.2, f"{alg} on {ref.name}: strong order {order:.3f}, expected {expected}"


def test_sra1_strong_order_15_nonlinear_additive():
    """SRA1 is strong order 1.5 for additive noise. On linear drifts the terms that limit it vanish
    (it shows order 2 there), so it is measured on a nonlinear drift against SRA1 itself on the
    finest grid of the same path (the DiffEqDevTools analyticless protocol).

    The slope is fitted on dt = 2^-4 .. 2^-8: from 2^-3 the coarsest step is pre-asymptotic (local slope
    1.85 there), which pulled the fit over dt = 2^-3 .. 2^-7 to 1.64-1.71 over Brownian seeds 3-12, at
    the edge of the band (seed 5 fell outside it). Over 2^-4 .. 2^-8 the same ten seeds give 1.58-1.63,
    0.07 inside the band; the claim (order 1.5 +- 0.2 on this path) is unchanged."""
    n = 500
    kf = 12
    prob = SDEProblem(lambda t, y: torch.sin(3 * y) - y ** 3,
                      lambda t, y: torch.full((*y.shape, 1), 1.5, dtype=y.dtype),
                      torch.full((n, 1), 0.5, dtype=F64), (0.0, 1.0), noise="additive")
    fine = GridIncrements(fixed_grid(0.0, 1.0, 2.0 ** -kf), (n, 1), F64, "cpu", seed=3, levy_area=True)
    ref = solve(prob, SRA1(), dt=2.0 ** -kf, brownian=fine, saveat=[1.0]).ys[-1]
    ks = range(4, 9)
    errs = [float((solve(prob, SRA1(), dt=2.0 ** -k, brownian=fine.coarsen(2 ** (kf - k)),
                         saveat=[1.0]).ys[-1] - ref).abs().mean()) for k in ks]
    order = _slope(ks, errs)
    assert abs(order - 1.5) <= 0.2, f"SRA1 strong order {order:.3f} ({errs})"


def test_sra1_linear_additive_converges_fast():
    # The linear additive reference: SRA1 is at least order 1.5 (measured 2.0: linear drift).
    order = _strong_order(linear_additive(), SRA1(), ks=range(2, 7))
    assert order >= 1.5 - 0.2


def test_weak_order_euler_maruyama():
    """|E[X_N] - E[X(1)]| for GBM, E X(1) = x0 e^mu. The exact solution on the same path is a
    control variate: E[X_N] - E[X] is estimated by the mean of X_N - X(W) plus the known
    E[X(W)] - mean(X(W)), which removes most of the Monte-Carlo noise."""
    ref = gbm(mu=1.0, sigma=0.5)
    n = 20000
    prob = ref.problem(n)
    true_mean = math.exp(1.0)
    ks = range(1, 6)
    errs = []
    for k in ks:
        sol = solve(prob, EulerMaruyama(), dt=2.0 ** -k, seed=11 + k, save_noise=True, saveat=[1.0])
        exact = ref.exact(1.0, sol.ws[-1])
        est = float((sol.ys[-1] - exact).mean() + exact.mean() - true_mean)
        errs.append(abs(est))
    order = _slope(ks, errs)
    assert abs(order - 1.0) <= 0.25, f"weak order {order:.3f} ({errs})"


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
def test_euler_maruyama_matches_torchsde(dtype, tol):
    class SDE(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return torch.sin(y) - 0.5 * y

        def g(self, t, y):
            return 0.3 * torch.cos(y) + 0.1

    sde = SDE()
    gen = torch.Generator().manual_seed(0)
    y0 = torch.randn(16, 3, generator=gen).to(dtype)
    ts = torch.linspace(0, 1, 9, dtype=torch.float64)
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(16, 3), dtype=dtype, entropy=4)
    expected = torchsde.sdeint(sde, y0, ts.to(dtype), bm=bm, method="euler", dt=2.0 ** -6)
    sol = solve(SDEProblem(sde.f, sde.g, y0, (0.0, 1.0)), EulerMaruyama(), dt=2.0 ** -6, brownian=bm,
                saveat=ts)
    assert sol.ys.dtype == dtype
    assert torch.allclose(sol.ys, expected, atol=tol, rtol=0)


def test_sra1_matches_torchsde_srk_additive():
    """torchsde's 'srk' for additive noise is SRA1: same path (with its space-time Levy area), same result."""

    class SDE(torch.nn.Module):
        noise_type, sde_type = "additive", "ito"

        def f(self, t, y):
            return -y ** 3 + torch.sin(t) * y

        def g(self, t, y):
            return (0.5 + t) * torch.ones(*y.shape, 1, dtype=y.dtype)

    sde = SDE()
    y0 = torch.linspace(-1, 1, 10, dtype=F64).reshape(5, 2)
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(5, 1), dtype=F64, entropy=2,
                                   levy_area_approximation="space-time")
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    expected = torchsde.sdeint(sde, y0, ts, bm=bm, method="srk", dt=2.0 ** -5)
    sol = solve(SDEProblem(sde.f, sde.g, y0, (0.0, 1.0), noise="additive"), SRA1(), dt=2.0 ** -5,
                brownian=bm, saveat=ts)
    assert torch.allclose(sol.ys, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("alg, ref", [(LambaEM(), gbm()), (SRA1(), linear_additive()),
                                      (LambaEM(), linear_additive())])
def test_adaptive_converges_on_the_same_path(alg, ref):
    """Tightening the tolerance approaches the exact solution on one fixed Brownian path (rejected
    steps re-query the BrownianInterval, which keeps them on that path)."""
    prob = ref.problem(200)
    errs, steps = [], []
    for tol in (1e-1, 1e-2, 1e-3):
        sol = solve(prob, alg, rtol=tol, atol=tol, seed=7, save_noise=True, saveat=[1.0])
        exact = ref.exact(1.0, sol.ws[-1])
        errs.append(float((sol.ys[-1] - exact).abs().mean()))
        steps.append(sol.stats.naccept)
        # The path the solver used is the seeded BrownianInterval: W(1) agrees with a fresh query.
        assert torch.allclose(sol.ws[-1], sol.brownian.W(1.0), atol=1e-10)
    assert errs[0] > errs[1] > errs[2], errs
    assert steps[0] < steps[1] < steps[2], steps
    # Error ~ tol^(1/2) or better (order-1/2 method, estimate ~ dt): 100x tolerance, >= 4x error.
    assert errs[2] < 0.25 * errs[0]


def test_adaptive_stats_and_trace_are_consistent():
    ref = gbm(mu=1.5, sigma=1.0)
    sol = solve(ref.problem(64), LambaEM(), rtol=1e-2, atol=1e-2, seed=1, trace=True, dt0=0.5)
    s = sol.stats
    assert s.nreject > 0, "the test needs rejected steps"
    # FSAL: one drift and one diffusion per attempt, plus f(t0), g(t0) (dt0 given: no initial-step f).
    assert s.nfe == 1 + s.nsteps and s.nge == 1 + s.nsteps
    tr = sol.trace
    assert len(tr) == s.nsteps and int(tr.accepted.sum()) == s.naccept
    assert bool((tr.error_estimate[tr.accepted] <= 1).all())
    assert bool((tr.error_estimate[~tr.accepted] > 1).all())
    assert abs(float(tr.dt[tr.accepted].sum()) - 1.0) < 1e-12
    assert torch.allclose(sol.ts[1:] - sol.ts[:-1], tr.dt[tr.accepted])


def test_error_estimate_is_differentiable():
    theta = torch.tensor(0.7, dtype=F64, requires_grad=True)
    prob = SDEProblem(lambda t, y: -theta * y ** 3, lambda t, y: 0.5 * torch.ones(*y.shape, 1, dtype=y.dtype),
                      torch.ones(8, 2, dtype=F64), (0.0, 1.0), noise="additive")
    sol = solve(prob, SRA1(), rtol=1e-2, atol=1e-3, trace=True, seed=0)
    tr = sol.trace
    reg = (tr.error_estimate * tr.dt.to(F64))[tr.accepted].mean()
    (grad,) = torch.autograd.grad(reg, theta)
    assert torch.isfinite(grad) and grad != 0


def test_fixed_step_draws_increments_without_a_tree_and_counts():
    prob = SDEProblem(lambda t, y: -y, lambda t, y: 0.2 * y, torch.ones(4, 3), (0.0, 1.0))
    sol = solve(prob, EulerMaruyama(), dt=0.1, seed=0, trace=True)
    assert isinstance(sol.brownian, GridIncrements)
    assert sol.stats.nfe == 10 and sol.stats.nge == 10 and sol.stats.naccept == 10
    assert len(sol.ts) == 11 and sol.ys.shape == (11, 4, 3) and sol.ys.dtype == torch.float32
    assert bool(torch.isnan(sol.trace.error_estimate).all())  # EM has no error estimate
    again = solve(prob, EulerMaruyama(), dt=0.1, seed=0)
    assert torch.equal(sol.ys, again.ys)
    other = solve(prob, EulerMaruyama(), dt=0.1, seed=1)
    assert not torch.equal(sol.ys, other.ys)
    torch.manual_seed(5)
    a = solve(prob, EulerMaruyama(), dt=0.1)
    torch.manual_seed(5)
    b = solve(prob, EulerMaruyama(), dt=0.1)
    assert torch.equal(a.ys, b.ys)


def test_saveat_lands_exactly_fixed_and_adaptive():
    prob = gbm().problem(16)
    ts = [0.0, 0.3, 0.55, 1.0]
    for kwargs in (dict(dt=0.1), dict(rtol=1e-2, atol=1e-2)):
        alg = EulerMaruyama() if "dt" in kwargs else LambaEM()
        sol = solve(prob, alg, saveat=ts, seed=0, **kwargs)
        assert sol.ts.tolist() == ts and sol.ys.shape == (4, 16, 1)


def test_noise_shapes_general_and_scalar():
    y0 = torch.ones(5, 3, dtype=F64)
    A = torch.tensor([[0.1, 0.2], [0.0, 0.3], [0.4, 0.0]], dtype=F64)
    general = SDEProblem(lambda t, y: -y, lambda t, y: A * y[..., :1, None], y0, (0.0, 1.0), noise="general")
    assert solve(general, EulerMaruyama(), dt=0.05, seed=0).ys.shape == (21, 5, 3)
    assert solve(general, LambaEM(), seed=0).success
    scalar = SDEProblem(lambda t, y: -y, lambda t, y: 0.3 * y[..., None], y0, (0.0, 1.0), noise="scalar")
    sol = solve(scalar, EulerMaruyama(), dt=0.05, seed=0)
    assert sol.brownian.dW.shape == (20, 5, 1)


def test_references_are_verified_symbolically():
    bad = SDEComponent(x_sym, x_sym, 1.0, solution=1.0 * sp_exp(t_sym + w_sym))  # misses the Ito term
    with pytest.raises(SDEReferenceError, match="drift"):
        SDEReference("bad", (bad,))
    ou = ornstein_uhlenbeck(theta=2.0, mu=0.5, sigma=0.6, x0=1.5)
    assert abs(float(ou.mean(1.0)[0]) - (0.5 + math.exp(-2.0))) < 1e-12
    assert abs(float(ou.variance(1.0)[0]) - 0.36 / 4 * (1 - math.exp(-4.0))) < 1e-12


def sp_exp(x):
    import sympy

    return sympy.exp(x)


def test_ornstein_uhlenbeck_moments_sra1():
    ou = ornstein_uhlenbeck()
    sol = solve(ou.problem(20000), SRA1(), dt=2.0 ** -5, seed=3, saveat=[1.0])
    x = sol.ys[-1, :, 0]
    m, v = float(ou.mean(1.0)[0]), float(ou.variance(1.0)[0])
    se = math.sqrt(v / x.numel())
    assert abs(float(x.mean()) - m) < 4 * se
    assert abs(float(x.var()) - v) < 0.05 * v


def test_bad_input():
    y0 = torch.ones(2, 2)
    f = lambda t, y: -y  # noqa: E731
    g = lambda t, y: y  # noqa: E731
    with pytest.raises(ValueError, match="noise"):
        SDEProblem(f, g, y0, (0.0, 1.0), noise="colored")
    with pytest.raises(ValueError, match="sde_type"):
        SDEProblem(f, g, y0, (0.0, 1.0), sde_type="ito2")
    with pytest.raises(ValueError, match="reversed"):
        SDEProblem(f, g, y0, (1.0, 0.0))
    with pytest.raises(ValueError, match="NaN"):
        SDEProblem(f, g, torch.tensor([[float("nan")]]), (0.0, 1.0))
    with pytest.raises(TypeError, match="callable"):
        SDEProblem(f, 3.0, y0, (0.0, 1.0))
    prob = SDEProblem(f, g, y0, (0.0, 1.0))
    with pytest.raises(ValueError, match="error estimator"):
        solve(prob, EulerMaruyama())
    with pytest.raises(ValueError, match="diagonal"):
        solve(SDEProblem(f, lambda t, y: torch.ones(2, 2, 1), y0, (0.0, 1.0), noise="additive"), Milstein(),
              dt=0.1)
    with pytest.raises(ValueError, match="Ito"):
        solve(SDEProblem(f, g, y0, (0.0, 1.0), sde_type="stratonovich"), EulerMaruyama(), dt=0.1)
    with pytest.raises(ValueError, match="shape"):
        solve(SDEProblem(f, lambda t, y: torch.ones(3), y0, (0.0, 1.0)), EulerMaruyama(), dt=0.1)
    with pytest.raises(ValueError, match="inside tspan"):
        solve(prob, EulerMaruyama(), dt=0.1, saveat=[0.5, 2.0])
    with pytest.raises(TypeError, match="unknown option"):
        solve(prob, EulerMaruyama(), dt=0.1, rtoll=1e-3)
    with pytest.raises(ValueError, match="dt must be"):
        solve(prob, EulerMaruyama(), dt=-0.1)
    with pytest.raises(ValueError, match="U"):
        SRA1().step(f, lambda t, y: torch.ones(2, 2, 1), 0.0, y0, 0.1, torch.zeros(2, 1))
    with pytest.raises(SolverError):
        solve(SDEProblem(lambda t, y: y ** 3, lambda t, y: y, torch.full((1, 1), 10.0), (0.0, 1.0)),
              LambaEM(), max_steps=5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sde_solvers_on_gpu():
    ref = linear_additive()
    prob = ref.problem(64, dtype=torch.float32, device="cuda")
    for alg, kw in ((EulerMaruyama(), dict(dt=0.01)), (SRA1(), dict(rtol=1e-3, atol=1e-3)),
                    (LambaEM(), dict(rtol=1e-2, atol=1e-2))):
        sol = solve(prob, alg, seed=0, save_noise=True, saveat=[0.0, 1.0], **kw)
        assert sol.ys.device.type == "cuda" and sol.ys.dtype == torch.float32
        exact = ref.exact(1.0, sol.ws[-1])
        assert float((sol.ys[-1] - exact).abs().mean()) < 0.05
