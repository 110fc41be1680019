"""AutoSwitch: switching on the exposed stiffness estimate; stiff methods under the adjoints and NeuralODE."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from torch import nn

from nde import NeuralODE
from solvers import (
    AutoSwitch,
    BacksolveAdjoint,
    CheckpointAdjoint,
    Kvaerno5,
    ODEProblem,
    Rodas5P,
    Rosenbrock23,
    Tsit5,
    solve,
)
from solvers.reference import NONSTIFF, problem

F64 = torch.float64


def turning_stiff(lam: float = 1e4):
    """``y' = -k(t) (y - cos t) - sin t`` with ``k`` rising smoothly from 1 to ``lam`` around t = 1:
    non-stiff first, stiff after (the solution stays near cos t)."""

    def k(t):
        return 1.0 + lam * torch.sigmoid(40.0 * (t - 1.0))

    def f(t, y):
        return -k(t) * (y - torch.cos(t)) - torch.sin(t)

    def f_np(t, y):
        kk = 1.0 + lam / (1.0 + np.exp(-40.0 * (t - 1.0)))
        return -kk * (y - np.cos(t)) - np.sin(t)

    return ODEProblem(f, torch.tensor([2.0], dtype=F64), (0.0, 2.0)), f_np


def reference(f_np, tspan, y0, ts):
    s = solve_ivp(f_np, tspan, y0, method="Radau", rtol=1e-12, atol=1e-14, t_eval=ts, dense_output=True)
    assert s.success
    return s


@pytest.mark.parametrize("name", ["harmonic", "logistic", "riccati", "spiral"])
def test_on_a_non_stiff_problem_it_is_tsit5_step_for_step(name):
    prob = problem(name)
    a = solve(prob, AutoSwitch(), rtol=1e-6, atol=1e-9)
    b = solve(prob, Tsit5(), rtol=1e-6, atol=1e-9)
    assert a.stats.switches == []
    assert (a.stats.nfe, a.stats.naccept, a.stats.nreject) == (b.stats.nfe, b.stats.naccept, b.stats.nreject)
    assert torch.equal(a.ys, b.ys)


def test_all_nonstiff_references_take_tsit5s_work():
    worst = max(solve(problem(n), AutoSwitch(), rtol=1e-6, atol=1e-9).stats.nfe
                / solve(problem(n), Tsit5(), rtol=1e-6, atol=1e-9).stats.nfe for n in NONSTIFF)
    assert worst <= 1.1


def test_switches_to_the_stiff_method_when_the_problem_turns_stiff():
    prob, f_np = turning_stiff()
    sol = solve(prob, AutoSwitch(Tsit5(), Rodas5P()), rtol=1e-6, atol=1e-9, trace=True)
    switches = sol.stats.switches
    assert switches and switches[0][1] == "Rodas5P"
    assert 0.8 < switches[0][0] < 1.5  # k(t) is ~1 before t ~ 0.85 and ~1e4 after 1.15
    tr = sol.trace
    assert set(tr.method) == {"Tsit5", "Rodas5P"}
    first_stiff = tr.method.index("Rodas5P")
    assert float(tr.t[first_stiff]) >= switches[0][0] - 1e-12
    assert sol.stats.steps_nonstiff + sol.stats.steps_stiff == sol.stats.naccept
    ts = np.linspace(0.0, 2.0, 41)
    ref = reference(f_np, (0.0, 2.0), [2.0], ts)
    got = sol(torch.tensor(ts, dtype=F64)).reshape(-1).numpy()  # dense output across the switch
    assert np.max(np.abs(got - ref.y[0])) < 1e-4
    explicit = solve(prob, Tsit5(), rtol=1e-6, atol=1e-9, max_steps=100_000)
    assert sol.stats.nfe < 0.2 * explicit.stats.nfe  # the stiff phase costs Tsit5 thousands of steps


def test_switches_back_and_forth_on_van_der_pol():
    mu = 100.0

    def f(t, y):
        return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    prob = ODEProblem(f, torch.tensor([2.0, 0.0], dtype=F64), (0.0, 200.0))
    sol = solve(prob, AutoSwitch(Tsit5(), Rodas5P()), rtol=1e-6, atol=1e-8)
    to = [m for _, m in sol.stats.switches]
    assert "Rodas5P" in to and "Tsit5" in to  # the relaxation jumps are not stiff, the slow phases are
    ts = sorted(t for t, _ in sol.stats.switches)
    assert ts == [t for t, _ in sol.stats.switches]
    ref = solve_ivp(lambda t, y: [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]], (0.0, 200.0), [2.0, 0.0],
                    method="Radau", rtol=1e-11, atol=1e-12).y[:, -1]
    assert np.max(np.abs(sol.y_final.numpy() - ref)) < 1e-3
    tsit = solve(prob, Tsit5(), rtol=1e-6, atol=1e-8, max_steps=10**6)
    assert sol.stats.nfe < 0.5 * tsit.stats.nfe


def test_trace_stiffness_is_in_the_nonstiff_units_throughout():
    prob, _ = turning_stiff()
    sol = solve(prob, AutoSwitch(), rtol=1e-6, atol=1e-9, trace=True)
    tr = sol.trace
    assert tr.stability_size == Tsit5().stability_size
    lam = (tr.stiffness_estimate * tr.stability_size).detach()
    stiff_phase = torch.tensor([m == "Rodas5P" for m in tr.method])
    # ||J||_inf = k(t) there: ~1e4 in the stiff phase
    assert float(lam[stiff_phase].median()) > 5e3


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="nonstiff must be an explicit"):
        AutoSwitch(Rodas5P(), Rodas5P())
    with pytest.raises(TypeError, match="stiff must be an implicit"):
        AutoSwitch(Tsit5(), Tsit5())
    with pytest.raises(ValueError, match="max_stiff_steps"):
        AutoSwitch(max_stiff_steps=-1)
    with pytest.raises(ValueError, match="dt_factor"):
        AutoSwitch(dt_factor=0.5)


@pytest.mark.parametrize("method", [lambda: Rodas5P(), lambda: AutoSwitch(), lambda: Kvaerno5()])
def test_checkpoint_adjoint_equals_backprop_with_stiff_methods(method):
    prob0, _ = turning_stiff(lam=1e3)
    lam = torch.tensor(1e3, dtype=F64, requires_grad=True)

    def f(t, y):
        return -(1.0 + lam * torch.sigmoid(40.0 * (t - 1.0))) * (y - torch.cos(t)) - torch.sin(t)

    y0 = torch.tensor([2.0], dtype=F64, requires_grad=True)
    grads = []
    for adjoint in (None, CheckpointAdjoint(4, params=[lam])):
        prob = ODEProblem(f, y0, (0.0, 1.5))
        sol = solve(prob, method(), rtol=1e-6, atol=1e-9, saveat=[0.5, 1.0, 1.5], adjoint=adjoint)
        loss = (sol.ys ** 2).sum()
        grads.append(torch.autograd.grad(loss, (y0, lam)))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_backsolve_refuses_implicit_methods_clearly():
    prob, _ = turning_stiff()
    y0 = prob.y0.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="CheckpointAdjoint"):
        solve(prob.replace(y0=y0), Rodas5P(), adjoint=BacksolveAdjoint(params=[]))


class _Decay(nn.Module):
    def __init__(self):
        super().__init__()
        self.log_k = nn.Parameter(torch.tensor([0.0, 6.0], dtype=F64))

    def forward(self, t, y):
        return -self.log_k.exp() * y


@pytest.mark.parametrize("solver", [Rosenbrock23, Rodas5P, Kvaerno5, AutoSwitch])
def test_neural_ode_trains_through_stiff_methods(solver):
    grads = []
    for adjoint in (None, CheckpointAdjoint()):
        model = NeuralODE(_Decay(), solver(), rtol=1e-6, atol=1e-9, adjoint=adjoint)
        out = model(torch.ones(2, dtype=F64), torch.tensor([0.0, 0.5, 1.0], dtype=F64))
        out[-1].sum().backward()
        grads.append(model.func.log_k.grad.clone())
    # The two adjoints give the gradient of the same discrete solve. ESDIRK methods carry state
    # across steps (a Jacobian kept while Newton converges fast), which a replay from a checkpoint
    # starts afresh: their Newton iterates, hence the gradients, agree to the Newton tolerance only.
    tight = solver is not Kvaerno5
    assert torch.allclose(grads[0], grads[1], rtol=1e-9 if tight else 1e-5, atol=1e-15)
    # and it is the exact d/dlog k of exp(-e^{log k} t) at t = 1, -k e^{-k}, to the solve's accuracy
    # (the stiff component, k = e^6, decays to ~1e-175: its computed value and gradient are at the
    # absolute tolerance's scale)
    k = _Decay().log_k.detach().exp()
    assert torch.allclose(grads[0], -k * torch.exp(-k), rtol=1e-4, atol=1e-5)
