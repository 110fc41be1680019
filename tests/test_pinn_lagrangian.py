"""Lagrangian frame: u_xx by the chain rule, residuals on exact characteristics, interpolation, crossing."""

import math

import pytest
import torch
from torch import nn

from pinn import (
    LagrangianPINN,
    LagrangianSolution,
    burgers_raissi,
    convection_diffusion,
    lagrangian_derivatives,
    lagrangian_residuals,
)
from pinn.problem import PDEProblem
from solvers import ReturnCode, Stats

torch.set_num_threads(1)


def _U(x):  # an Eulerian profile with known derivatives
    return torch.sin(x) + 0.5 * torch.cos(2 * x)


def _U_xx(x):
    return -torch.sin(x) - 2.0 * torch.cos(2 * x)


def test_lagrangian_uxx_equals_eulerian_uxx_on_a_known_mapping():
    x0 = torch.linspace(0, 2 * math.pi, 101, dtype=torch.float64).requires_grad_(True)
    t = 0.7
    x = x0 + 0.4 * t * torch.sin(x0) + 0.3 * t  # J = 1 + 0.28 cos x0 > 0
    u = _U(x)
    j, u_x, u_xx = lagrangian_derivatives(x, u, x0)
    assert torch.allclose(j, 1 + 0.4 * t * torch.cos(x0), atol=1e-14)
    assert torch.allclose(u_x, torch.cos(x) - torch.sin(2 * x), atol=1e-12)
    assert torch.allclose(u_xx, _U_xx(x), atol=1e-12)
    # differentiating twice in x0 (exact only for J = 1) is wrong here
    (u_x0,) = torch.autograd.grad(u.sum(), x0, create_graph=True)
    (u_x0x0,) = torch.autograd.grad(u_x0.sum(), x0)
    assert float((u_x0x0 - _U_xx(x)).detach().abs().max()) > 0.1


class _ExactCharacteristics(nn.Module):
    """x = x0 + beta t, u = exp(-nu t) sin(x0): convection-diffusion with u0 = sin x, exactly."""

    def __init__(self, beta, nu, perturb=0.0):
        super().__init__()
        self.beta, self.nu, self.perturb = beta, nu, perturb
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x0, t):
        x = x0 + self.beta * t + self.perturb * t * torch.sin(x0)
        return x, torch.exp(-self.nu * t) * torch.sin(x0)


@pytest.mark.parametrize("form", ["division_free", "chain_rule"])
def test_lagrangian_residuals_vanish_on_exact_characteristics(form):
    p = convection_diffusion(50.0, 0.1)
    gen = torch.Generator().manual_seed(0)
    x0 = 2 * math.pi * torch.rand(300, generator=gen, dtype=torch.float64)
    t = torch.rand(300, generator=gen, dtype=torch.float64)
    r = lagrangian_residuals(p, _ExactCharacteristics(50.0, 0.1), x0, t, form)
    assert float(r["x"].detach().abs().max()) < 1e-12
    assert float(r["u"].detach().abs().max()) < 1e-12
    # a deformed map with the same u(x0, t) is no longer a solution (u_xx and x_t both change)
    r = lagrangian_residuals(p, _ExactCharacteristics(50.0, 0.1, perturb=0.3), x0, t, form)
    assert float(r["x"].detach().abs().max()) > 0.1
    assert float(r["u"].detach().abs().max()) > 1e-3


def _solution(problem, model, **alg_kwargs):
    alg = LagrangianPINN(dtype=torch.float64, **alg_kwargs)
    return alg, LagrangianSolution(problem, alg, model, ReturnCode.SUCCESS, Stats(), torch.float64,
                                   torch.device("cpu"))


def test_eulerian_interpolation_from_exact_characteristics():
    p = convection_diffusion(50.0, 0.1)
    _, sol = _solution(p, _ExactCharacteristics(50.0, 0.1), n_lagrangian=2048)
    assert sol.relative_l2() < 1e-5  # linear interpolation, h = 2 pi / 2048
    # arbitrary points, including outside one period and repeated times
    gen = torch.Generator().manual_seed(1)
    x = 20 * torch.rand(500, generator=gen, dtype=torch.float64) - 10
    t = torch.rand(500, generator=gen, dtype=torch.float64).round(decimals=1)
    assert torch.allclose(sol(x, t), p.reference(x, t), atol=5e-6)
    assert sol(1.0, 0.5).shape == ()


class _CrossingMap(nn.Module):
    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x0, t):
        return x0 + 2.0 * t * torch.sin(x0), torch.sin(x0)  # J = 1 + 2 t cos x0 < 0 once t > 1/2


def test_crossing_characteristics_give_retcode_and_warning():
    p = convection_diffusion(1.0, 0.0)
    alg, sol = _solution(p, _CrossingMap())
    with pytest.warns(RuntimeWarning, match="characteristics crossed"):
        alg.finish(p, sol)
    assert sol.retcode is ReturnCode.CHARACTERISTICS_CROSSED and not sol.success
    assert sol.stats.min_jacobian == pytest.approx(-1.0, abs=1e-3)
    alg, sol = _solution(p, _ExactCharacteristics(1.0, 0.0))
    alg.finish(p, sol)
    assert sol.retcode is ReturnCode.SUCCESS and sol.stats.min_jacobian == pytest.approx(1.0)


def test_lpinn_rejects_inflow_dirichlet_boundaries():
    p = PDEProblem(u0=lambda x: torch.sin(math.pi * x), domain=(0, 1), tspan=(0, 1),
                   flux=lambda x, t, w: torch.ones_like(w), boundary="dirichlet",
                   boundary_values=(lambda t: 0 * t, lambda t: 0 * t))
    from solvers import solve

    with pytest.raises(ValueError, match="no inflow"):
        solve(p, LagrangianPINN(adam_iters=1, lbfgs_iters=0), progress=False)
    LagrangianPINN().check_problem(burgers_raissi())  # zero speed at both ends: accepted


def test_lpinn_bad_settings():
    with pytest.raises(ValueError, match="form"):
        LagrangianPINN(form="naive")
    with pytest.raises(ValueError, match="loss weight"):
        LagrangianPINN(weights={"residual": 1.0})
    with pytest.raises(ValueError, match="n_lagrangian"):
        LagrangianPINN(n_lagrangian=2)
