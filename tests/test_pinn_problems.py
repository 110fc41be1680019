"""PDE problems and their references: exact solutions satisfy the PDE, Cole-Hopf matches the literature."""

import math

import pytest
import sympy as sp
import torch

from pinn import (
    PDEProblem,
    burgers_moving_shock,
    burgers_raissi,
    convection,
    convection_diffusion,
    fourier_interpolant,
    manufactured,
)
from pinn.problem import W
from pinn.reference import T, X, cole_hopf, convection_diffusion_trig, gaussian_heat

torch.set_num_threads(1)


def _interior_points(problem, n=400, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 2, generator=gen, dtype=dtype)
    (a, b), (t0, t1) = problem.domain, problem.tspan
    return a + (b - a) * u[:, 0], t0 + (t1 - t0) * (0.01 + 0.99 * u[:, 1])


CLOSED_FORM = [
    convection(1.0), convection(50.0), convection(30.0, u0="gaussian"), convection_diffusion(50.0, 0.1),
    convection_diffusion(50.0, 0.01, u0="gaussian"), convection_diffusion(10.0, 0.1, u0="gaussian"),
    convection_diffusion(20.0, 0.05, u0=sp.sin(X) + sp.cos(3 * X) / 2 + sp.sin(X) * sp.cos(X)),
]


@pytest.mark.parametrize("problem", CLOSED_FORM, ids=lambda p: p.name)
def test_library_residual_vanishes_on_exact_solution(problem):
    x, t = _interior_points(problem)
    r = problem.residual(problem.reference, x, t)
    scale = float(problem.params["beta"]) + 1.0
    assert float(r.detach().abs().max()) < 1e-11 * scale
    # the residual is not trivially zero: a wrong speed leaves a residual
    wrong = problem.residual(lambda x, t: problem.reference(x, 0.9 * t), x, t)
    assert float(wrong.detach().abs().max()) > 1e-3


@pytest.mark.parametrize("problem", CLOSED_FORM, ids=lambda p: p.name)
def test_reference_matches_initial_data(problem):
    x, _ = problem.grid(256, 2)
    x = x[0]
    assert torch.allclose(problem.reference(x, torch.zeros_like(x)), problem.u0(x), atol=1e-14)


def test_sympy_exact_solutions_solve_the_pde_symbolically():
    beta, nu = sp.Rational(50), sp.Rational(1, 10)
    cases = (convection_diffusion_trig(sp.sin(X) + sp.cos(2 * X), 50, 0.1),
             gaussian_heat(math.pi, 0.3, 50, 0.1))
    for u in cases:
        res = sp.diff(u, T) + beta * sp.diff(u, X) - nu * sp.diff(u, X, 2)
        assert sp.simplify(res) == 0


def test_manufactured_solution_residual_vanishes():
    u = sp.exp(-T) * sp.sin(X - T) + sp.Rational(1, 2)
    p = manufactured(u, flux=W + sp.cos(X) / 4, diffusion=sp.Rational(1, 20) * (1 + W**2))
    x, t = _interior_points(p)
    assert float(p.residual(p.reference, x, t).detach().abs().max()) < 1e-12
    assert float(p.residual(lambda x, t: p.reference(x, 0.9 * t), x, t).detach().abs().max()) > 1e-3
    p0 = manufactured(u, flux=W + sp.cos(X) / 4, diffusion=0)  # the forcing accounts for diffusion
    w = p.reference(x, t)
    assert float((p.s(x, t, w) - p0.s(x, t, w)).abs().max()) > 1e-3


def test_raissi_shock_gradient_matches_basdevant():
    # Basdevant et al. (1986): max_t |u_x(0, t)| = 152.00516 at t = 1.6037 / pi.
    p = burgers_raissi()
    t = torch.tensor([1.6037 / math.pi], dtype=torch.float64)
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    (ux,) = torch.autograd.grad(p.reference(x, t).sum(), x)
    assert abs(abs(float(ux)) - 152.00516) < 5e-5
    # and it is the maximum over time
    ts = torch.linspace(1.55 / math.pi, 1.65 / math.pi, 101, dtype=torch.float64)
    x = torch.zeros_like(ts, requires_grad=True)
    (ux,) = torch.autograd.grad(p.reference(x, ts).sum(), x)
    i = int(ux.abs().argmax())
    assert abs(float(ts[i]) * math.pi - 1.6037) < 2e-3
    # boundary values: u(+-1, t) = 0 (odd symmetry of the real-line solution)
    tb = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert float(p.reference(torch.ones_like(tb), tb).abs().max()) < 1e-12


@pytest.mark.parametrize("problem", [burgers_raissi(), burgers_moving_shock(0.0), burgers_moving_shock(10.0)],
                         ids=lambda p: p.name)
def test_cole_hopf_satisfies_burgers_by_finite_differences(problem):
    # Central differences: residual = O(h^2); check it is small and shrinks ~4x per halving of h.
    x, t = _interior_points(problem, n=200, seed=1)
    t = 0.1 + 0.85 * (t - problem.tspan[0])
    u, nu = problem.reference, problem.diffusion

    def fd_residual(h):
        ut = (u(x, t + h) - u(x, t - h)) / (2 * h)
        ux = (u(x + h, t) - u(x - h, t)) / (2 * h)
        uxx = (u(x + h, t) - 2 * u(x, t) + u(x - h, t)) / h**2
        return (ut + u(x, t) * ux - nu * uxx).abs().max()

    r1, r2 = float(fd_residual(2e-3)), float(fd_residual(1e-3))
    ux_scale = float(((u(x + 1e-3, t) - u(x - 1e-3, t)) / 2e-3).abs().max())
    assert r2 < 1e-2 * ux_scale
    assert 3.0 < r1 / r2 < 5.0


def test_moving_shock_is_galilean_shift():
    p0, p10 = burgers_moving_shock(0.0), burgers_moving_shock(10.0)
    x, t = _interior_points(p0, n=50)
    assert torch.allclose(p10.reference(x, t), 10.0 + p0.reference(x - 10.0 * t, t), atol=1e-12)
    assert torch.allclose(p10.reference(x, torch.zeros_like(x)), torch.sin(x) + 10.0, atol=1e-14)


def test_cole_hopf_float32_and_small_time():
    u = cole_hopf(sp.sin(X), 0.05)
    x = torch.linspace(0, 2 * math.pi, 33)
    v = u(x, torch.full_like(x, 1e-6))
    assert v.dtype == torch.float32
    assert torch.allclose(v, torch.sin(x), atol=1e-4)


def test_fourier_interpolant_is_exact_for_trig_polynomials():
    n = 16
    xs = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    f = lambda x: torch.sin(x) + 0.3 * torch.cos(3 * x) - 0.1  # noqa: E731
    g = fourier_interpolant(f(xs), (0.0, 2 * math.pi))
    x = torch.rand(50, dtype=torch.float64) * 2 * math.pi
    assert torch.allclose(g(x), f(x), atol=1e-13)
    p = PDEProblem(u0=f(xs), domain=(0.0, 2 * math.pi), tspan=(0.0, 1.0), flux=lambda x, t, w: w)
    assert torch.allclose(p.u0(x), f(x), atol=1e-13)


def _sin(x):
    return torch.sin(x)


def _const(x, t, w):
    return torch.ones_like(w)


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="nu must be"):
        convection_diffusion(10.0, -0.1)
    with pytest.raises(ValueError, match="nu must be"):
        PDEProblem(u0=_sin, domain=(0, 2 * math.pi), tspan=(0, 1), flux=_const, diffusion=-1.0)
    with pytest.raises(ValueError, match="empty domain"):
        PDEProblem(u0=_sin, domain=(1.0, 1.0), tspan=(0, 1), flux=_const)
    with pytest.raises(ValueError, match="empty domain"):
        PDEProblem(u0=_sin, domain=(2.0, 1.0), tspan=(0, 1), flux=_const)
    with pytest.raises(ValueError, match="zero length|reversed"):
        PDEProblem(u0=_sin, domain=(0, 2 * math.pi), tspan=(1, 1), flux=_const)
    with pytest.raises(ValueError, match="wrong shape"):
        PDEProblem(u0=lambda x: torch.stack([x, x]), domain=(0, 2 * math.pi), tspan=(0, 1), flux=_const)
    with pytest.raises(ValueError, match="wrong shape"):
        PDEProblem(u0=lambda x: x.sum(), domain=(0, 2 * math.pi), tspan=(0, 1), flux=_const)
    with pytest.raises(ValueError, match="1-D tensor"):
        PDEProblem(u0=torch.zeros(4, 4), domain=(0, 2 * math.pi), tspan=(0, 1), flux=_const)
    with pytest.raises(ValueError, match="not periodic"):
        PDEProblem(u0=lambda x: x, domain=(0, 2 * math.pi), tspan=(0, 1), flux=_const)
    with pytest.raises(ValueError, match="not periodic"):
        convection(10.0, u0=sp.sin(X / 2))
    # the same data are fine with Dirichlet boundaries
    PDEProblem(u0=lambda x: x, domain=(0, 1), tspan=(0, 1), flux=_const, boundary="dirichlet",
               boundary_values=(lambda t: 0 * t, lambda t: 0 * t + 1))
    with pytest.raises(ValueError, match="boundary_values"):
        PDEProblem(u0=lambda x: x, domain=(0, 1), tspan=(0, 1), flux=_const, boundary="dirichlet")
    with pytest.raises(ValueError, match="boundary must be"):
        PDEProblem(u0=_sin, domain=(0, 2 * math.pi), tspan=(0, 1), flux=_const, boundary="neumann")
    with pytest.raises(ValueError, match="sin/cos modes"):
        convection_diffusion(1.0, 0.1, u0=sp.exp(sp.cos(X)))
    with pytest.raises(ValueError, match="nu > 0"):
        burgers_moving_shock(0.0, nu=0.0)
