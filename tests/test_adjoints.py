"""Adjoints (solvers.adjoint): gradients against the exact derivative of a linear flow and against
Backprop, gradcheck in float64, save times, reversed spans, the forward trace, bad input, NeuralODE
running the user's solver with every adjoint, and the local regulariser with every adjoint."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nde import GlobalError, LocalRegularizer, NeuralODE, NeuralSDE
from solvers import (
    RK4,
    Backprop,
    BacksolveAdjoint,
    CheckpointAdjoint,
    Dopri5,
    ODEProblem,
    SDEProblem,
    TorchDiffEq,
    TorchDiffEqAdjoint,
    Tsit5,
    solve,
)

F64 = torch.float64
TS = [0.0, 0.3, 0.55, 1.0, 1.5]  # t0, three inner times, t1


def _linear(seed: int = 0, n: int = 4, batch: int = 3):
    """y' = A y with a learnable A: y(t) = y0 expm(A t)^T exactly."""
    g = torch.Generator().manual_seed(seed)
    A = (0.5 * torch.randn(n, n, generator=g, dtype=F64) - torch.eye(n, dtype=F64)).requires_grad_()
    y0 = torch.randn(batch, n, generator=g, dtype=F64).requires_grad_()
    W = torch.randn(len(TS), batch, n, generator=g, dtype=F64)
    return A, y0, W


def _loss(ys, y_final, W):
    return (ys * W).sum() + y_final.pow(2).sum()


class MLP(nn.Module):
    def __init__(self, d: int = 2, width: int = 16, seed: int = 0, dtype=F64):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, d)).to(dtype)

    def forward(self, t, y):
        return self.net(y)


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def _maxdiff(ga, gb):
    return max(float((a - b).abs().max()) for a, b in zip(ga, gb))


def _scale(gs):
    return max(float(g.abs().max()) for g in gs)


# -- against the exact derivative of the flow -----------------------------------------------------

ADJOINTS = {
    "backprop": lambda p: Backprop(),
    "backsolve": lambda p: BacksolveAdjoint(params=p),
    "checkpoint1": lambda p: CheckpointAdjoint(1, params=p),
    "checkpoint3": lambda p: CheckpointAdjoint(3, params=p),
}


@pytest.mark.parametrize("name", [*ADJOINTS, "torchdiffeq"])
def test_gradient_matches_exact_linear_flow(name):
    A, y0, W = _linear()
    prob = ODEProblem(lambda t, y: y @ A.T, y0, (0.0, 1.5))
    if name == "torchdiffeq":
        alg, adj = TorchDiffEq("dopri5"), TorchDiffEqAdjoint(params=[A])
    else:
        alg, adj = Tsit5(), ADJOINTS[name]([A])
    sol = solve(prob, alg, adjoint=adj, saveat=TS, rtol=1e-10, atol=1e-12)
    y_final = sol.ys[-1] if name == "torchdiffeq" else sol.y_final
    got = _grads(_loss(sol.ys, y_final, W), (A, y0))
    exact_ys = torch.stack([y0 @ torch.linalg.matrix_exp(A * t).T for t in TS])
    want = _grads(_loss(exact_ys, exact_ys[-1], W), (A, y0))
    assert _maxdiff(got, want) < 1e-7 * _scale(want), name


@pytest.mark.parametrize("alg, kw", [(Tsit5(), dict(dt=0.04)), (RK4(), dict(dt=0.07)),
                                     (Tsit5(), dict(rtol=1e-6, atol=1e-8)),
                                     (Dopri5(), dict(rtol=1e-5, atol=1e-7))],
                         ids=["tsit5_fixed", "rk4_fixed", "tsit5", "dopri5"])
@pytest.mark.parametrize("saveat", [None, [0.0, 0.13, 0.5, 0.91]], ids=["every_step", "saveat"])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_checkpoint_equals_backprop(alg, kw, saveat, n):
    """The recomputation replays the forward's accepted steps, and a graph-free step sums its stages
    in the same order as a graph-keeping one, so the graph-free forward takes bit-identical steps to
    Backprop's, fixed or adaptive: the gradient is backprop's to rounding."""
    f = MLP()
    y0 = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    prob = ODEProblem(f, y0, (0.0, 1.0))
    params = [y0, *f.parameters()]
    ref = solve(prob, alg, saveat=saveat, **kw)
    g_ref = _grads(ref.ys.pow(2).sum() + ref.y_final.sum(), params)
    sol = solve(prob, alg, adjoint=CheckpointAdjoint(n), saveat=saveat, **kw)
    tol = 1e-12
    assert sol.stats.naccept == ref.stats.naccept and torch.equal(sol.ts, ref.ts)
    assert torch.allclose(sol.ys.detach(), ref.ys.detach(), rtol=tol, atol=tol * 1e-2)
    g = _grads(sol.ys.pow(2).sum() + sol.y_final.sum(), params)
    assert _maxdiff(g, g_ref) <= 100 * tol * _scale(g_ref)
    # One replay of every accepted step, nothing more.
    assert sol.stats.backward.naccept == ref.stats.naccept
    assert sol.stats.backward.nfe <= ref.stats.nfe + n + ref.stats.naccept


@pytest.mark.parametrize("saveat", [None, TS[1:4]], ids=["every_step", "inner_times"])
def test_backsolve_close_to_backprop_on_mlp(saveat):
    f = MLP(seed=2)
    y0 = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(2)).requires_grad_()
    prob = ODEProblem(f, y0, (0.0, 1.5))
    params = [y0, *f.parameters()]
    kw = dict(rtol=1e-9, atol=1e-11, saveat=saveat)
    ref = solve(prob, Tsit5(), **kw)
    g_ref = _grads(ref.ys.sin().sum() + ref.y_final.pow(2).sum(), params)
    sol = solve(prob, Tsit5(), adjoint=BacksolveAdjoint(), **kw)
    g = _grads(sol.ys.sin().sum() + sol.y_final.pow(2).sum(), params)
    assert _maxdiff(g, g_ref) < 1e-6 * _scale(g_ref)
    assert sol.stats.backward.nfe > 0 and sol.stats.adjoint == "BacksolveAdjoint()"


def test_backsolve_backward_tolerances_and_solver():
    """Looser backward tolerances: fewer backward evaluations, a (bounded) larger gradient error."""
    A, y0, W = _linear(seed=3)
    prob = ODEProblem(lambda t, y: y @ A.T, y0, (0.0, 1.5))
    exact_ys = torch.stack([y0 @ torch.linalg.matrix_exp(A * t).T for t in TS])
    want = _grads(_loss(exact_ys, exact_ys[-1], W), (A, y0))
    errs, nfes = [], []
    for adj in (BacksolveAdjoint(params=[A]), BacksolveAdjoint(params=[A], rtol=1e-4, atol=1e-6),
                BacksolveAdjoint(params=[A], solver=RK4(), dt=0.01)):
        sol = solve(prob, Tsit5(), adjoint=adj, saveat=TS, rtol=1e-10, atol=1e-12)
        got = _grads(_loss(sol.ys, sol.y_final, W), (A, y0))
        errs.append(_maxdiff(got, want) / _scale(want))
        nfes.append(sol.stats.backward.nfe)
    assert errs[0] < 1e-8 and errs[1] < 1e-3 and errs[2] < 1e-6
    assert nfes[1] < nfes[0]
    assert nfes[2] % 4 == 0 or nfes[2] > 0  # RK4 steps (4 evaluations each) plus per-segment starts


# -- gradcheck (finite differences, float64) --------------------------------------------------------

@pytest.mark.parametrize("name", ["backprop", "backsolve", "checkpoint", "torchdiffeq"])
def test_gradcheck(name):
    g = torch.Generator().manual_seed(0)
    W = (0.8 * torch.randn(2, 2, generator=g, dtype=F64)).requires_grad_()
    y0 = torch.randn(2, generator=g, dtype=F64).requires_grad_()

    def fn(y0, W):
        prob = ODEProblem(lambda t, y: torch.tanh(W @ y), y0, (0.0, 1.0))
        if name == "torchdiffeq":
            return solve(prob, TorchDiffEq("rk4"), adjoint=TorchDiffEqAdjoint(params=[W]), dt=0.02,
                         saveat=[0.0, 0.5, 1.0]).ys
        adj = {"backprop": Backprop(), "backsolve": BacksolveAdjoint(params=[W]),
               "checkpoint": CheckpointAdjoint(2, params=[W])}[name]
        return solve(prob, Tsit5(), adjoint=adj, dt=0.05, saveat=[0.0, 0.37, 1.0]).ys

    # Backprop and checkpointing differentiate the discrete solve exactly; the continuous adjoints
    # agree with it to the discretisation error of the backward solve (O(dt^order)).
    exact = name in ("backprop", "checkpoint")
    assert torch.autograd.gradcheck(fn, (y0, W), eps=1e-6, atol=1e-8 if exact else 1e-5,
                                    rtol=1e-6 if exact else 1e-4)


# -- save times, reversed spans, the trace ------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: BacksolveAdjoint(), lambda: CheckpointAdjoint(3)],
                         ids=["backsolve", "checkpoint"])
def test_reversed_span(make):
    f = MLP(seed=3)
    y1 = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    prob = ODEProblem(f, y1, (1.0, 0.0))
    saveat = [1.0, 0.6, 0.2]
    params = [y1, *f.parameters()]
    ref = solve(prob, Tsit5(), saveat=saveat, rtol=1e-9, atol=1e-11)
    g_ref = _grads(ref.ys.pow(2).sum() + ref.y_final.sum(), params)
    sol = solve(prob, Tsit5(), adjoint=make(), saveat=saveat, rtol=1e-9, atol=1e-11)
    g = _grads(sol.ys.pow(2).sum() + sol.y_final.sum(), params)
    assert _maxdiff(g, g_ref) < 1e-6 * _scale(g_ref)


@pytest.mark.parametrize("make", [lambda: BacksolveAdjoint(), lambda: CheckpointAdjoint(4)],
                         ids=["backsolve", "checkpoint"])
def test_trace_of_the_forward_solve_is_returned_detached(make):
    f = MLP(seed=4)
    y0 = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    prob = ODEProblem(f, y0, (0.0, 2.0))
    ref = solve(prob, Tsit5(), trace=True, saveat=[1.0, 2.0])
    sol = solve(prob, Tsit5(), adjoint=make(), trace=True, saveat=[1.0, 2.0])
    assert sol.trace is not None and len(sol.trace) == len(ref.trace)
    assert torch.allclose(sol.trace.dt, ref.trace.dt, rtol=1e-6, atol=0)  # see the checkpoint test
    # Scaled error norms are O(1); a tiny first step has one at rounding level (hence the atol).
    assert torch.allclose(sol.trace.error_estimate, ref.trace.error_estimate.detach(), rtol=1e-6, atol=1e-6)
    assert not sol.trace.error_estimate.requires_grad and sol.ys.requires_grad
    assert solve(prob, Tsit5(), adjoint=make(), saveat=[1.0, 2.0]).trace is None


def test_no_grad_runs_a_plain_solve():
    f = MLP()
    prob = ODEProblem(f, torch.randn(2, 2, dtype=F64), (0.0, 1.0))
    with torch.no_grad():
        for adj in (BacksolveAdjoint(), CheckpointAdjoint(2)):
            sol = solve(prob, Tsit5(), adjoint=adj)
            assert not sol.ys.requires_grad and sol.retcode.success


# -- bad input -----------------------------------------------------------------------------------------

def test_bad_input():
    prob = ODEProblem(MLP(), torch.randn(2, 2, dtype=F64), (0.0, 1.0))
    with pytest.raises(TypeError, match="adjoint"):
        solve(prob, Tsit5(), adjoint="backsolve")
    with pytest.raises(TypeError, match="instance"):
        solve(prob, Tsit5(), adjoint=BacksolveAdjoint)
    with pytest.raises(ValueError, match="n_checkpoints"):
        CheckpointAdjoint(0)
    with pytest.raises(TypeError, match="n_checkpoints"):
        CheckpointAdjoint(2.5)
    with pytest.raises(ValueError, match="rtol"):
        BacksolveAdjoint(rtol=-1.0)
    with pytest.raises(ValueError, match="dt"):
        BacksolveAdjoint(dt=0.0)
    with pytest.raises(TypeError, match="params"):
        BacksolveAdjoint(params=torch.ones(2))
    with pytest.raises(TypeError, match="params"):
        CheckpointAdjoint(2, params=[1.0])
    for adj in (BacksolveAdjoint(), CheckpointAdjoint(2)):
        with pytest.raises(ValueError, match="TorchDiffEqAdjoint"):
            solve(prob, TorchDiffEq("dopri5"), adjoint=adj)
    with pytest.raises(ValueError, match="TorchDiffEq"):
        solve(prob, Tsit5(), adjoint=TorchDiffEqAdjoint())
    # A plain function with nothing to differentiate: a clear error instead of a silent zero gradient.
    w = torch.ones(2, dtype=F64, requires_grad=True)
    plain = ODEProblem(lambda t, y: -w * y, torch.ones(2, dtype=F64), (0.0, 1.0))
    for adj in (BacksolveAdjoint(), CheckpointAdjoint(2)):
        with pytest.raises(ValueError, match="nothing to differentiate"):
            solve(plain, Tsit5(), adjoint=adj)
    sol = solve(plain, Tsit5(), adjoint=BacksolveAdjoint(params=[w]))
    (gw,) = torch.autograd.grad(sol.y_final.sum(), w)
    assert abs(float(gw[0]) + math.exp(-1.0)) < 1e-5  # d/dw e^{-w} at w = 1
    sde = SDEProblem(lambda t, y: -y, lambda t, y: 0.1 * torch.ones_like(y), torch.ones(1, dtype=F64),
                     (0.0, 1.0))
    from solvers.sde import EulerMaruyama

    with pytest.raises(TypeError, match="ODE"):
        solve(sde, EulerMaruyama(), adjoint=BacksolveAdjoint(), dt=0.1)


# -- NeuralODE runs the user's solver with every adjoint ---------------------------------------------

def _node(adjoint, solver=None, **kw):
    return NeuralODE(MLP(seed=5), solver if solver is not None else Tsit5(), adjoint=adjoint, rtol=1e-6,
                     atol=1e-8, **kw)


@pytest.mark.parametrize("solver", [Tsit5(), Dopri5()], ids=["tsit5", "dopri5"])
def test_neural_ode_runs_the_users_solver(solver):
    y0 = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    ts = torch.linspace(0, 1, 4, dtype=F64)
    ref = _node(Backprop(), solver)
    ref(y0, ts).pow(2).sum().backward()
    g_ref = [p.grad.clone() for p in ref.parameters()]
    assert ref.nfe_backward == 0
    for adj in (BacksolveAdjoint(), CheckpointAdjoint(3)):
        m = _node(adj, solver)
        ys = m(y0, ts)
        assert m.last_solution.algorithm is solver
        # The same forward solve, evaluation for evaluation.
        assert m.nfe_forward == ref.nfe_forward
        assert torch.allclose(ys.detach(), ref.last_solution.ys.detach(), rtol=1e-12, atol=1e-14)
        ys.pow(2).sum().backward()
        assert m.nfe_backward > 0
        g = [p.grad for p in m.parameters()]
        tol = 1e-6 if isinstance(adj, CheckpointAdjoint) else 1e-4  # see test_checkpoint_equals_backprop
        assert _maxdiff(g, g_ref) <= tol * _scale(g_ref), adj
    ck = _node(CheckpointAdjoint(3), solver)
    ck(y0, ts).sum().backward()
    naccept = ck.last_solution.stats.naccept
    # One recomputation of every accepted step: (stages - 1) per step plus one f(t, y) per segment.
    assert naccept * (solver.stages - 1) < ck.nfe_backward <= naccept * (solver.stages - 1) + 3


def test_neural_ode_adjoint_and_solver_checks():
    with pytest.raises(ValueError, match="TorchDiffEq"):
        NeuralODE(MLP(), Tsit5(), adjoint=TorchDiffEqAdjoint())
    with pytest.raises(ValueError, match="Runge-Kutta"):
        NeuralODE(MLP(), TorchDiffEq("dopri5"), adjoint=BacksolveAdjoint())
    with pytest.raises(TypeError, match="adjoint"):
        NeuralODE(MLP(), adjoint="adjoint")
    with pytest.raises(ValueError, match="not both"):
        NeuralODE(MLP(), adjoint=Backprop(), sensitivity="backprop")
    with pytest.raises(ValueError, match="TorchSDEAdjoint"):
        NeuralSDE(MLP(), MLP(), adjoint=BacksolveAdjoint())
    m = NeuralODE(MLP(), adjoint=TorchDiffEqAdjoint())
    assert isinstance(m.solver, TorchDiffEq)  # no solver given: torchdiffeq's default method
    with pytest.warns(DeprecationWarning, match="BacksolveAdjoint"):
        m = NeuralODE(MLP(), Tsit5(), sensitivity="adjoint")
    assert isinstance(m.adjoint, BacksolveAdjoint) and isinstance(m.solver, Tsit5)
    with pytest.warns(DeprecationWarning, match="TorchDiffEqAdjoint"):
        m = NeuralODE(MLP(), sensitivity="adjoint")
    assert isinstance(m.adjoint, TorchDiffEqAdjoint)


# -- the local regulariser with every adjoint ---------------------------------------------------------

def _local_case(adj, solver=None):
    m = NeuralODE(MLP(seed=6), solver or Tsit5(), adjoint=adj, rtol=1e-7, atol=1e-9)
    reg = LocalRegularizer("error", seed=0, step_size="controller")
    y0 = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(6))
    ys = m(y0, torch.linspace(0, 1, 3, dtype=F64), regularizer=reg)
    (ys[-1].pow(2).mean() + 1e3 * m.reg_loss).backward()
    return m, [p.grad for p in m.parameters()], reg.last_t


def test_local_regulariser_with_every_adjoint():
    m_ref, g_ref, t_ref = _local_case(Backprop())
    assert m_ref.nfe_regularizer == 14 and float(m_ref.reg_raw.detach()) > 0
    # The penalty is an error estimate, a sum of stages that cancels to ~1e-8 of their size: the
    # few-ulp differences of u(t1) between a graph-keeping and a graph-free forward solve show in it
    # at ~1e-8 relative, hence 1e-6 here (for the checkpointed gradient too).
    for adj, tol in ((CheckpointAdjoint(2), 1e-6), (BacksolveAdjoint(), 1e-4)):
        m, g, t1 = _local_case(adj)
        assert t1 == t_ref and m.nfe_regularizer == 14
        raw, raw_ref = float(m.reg_raw.detach()), float(m_ref.reg_raw.detach())
        assert abs(raw - raw_ref) <= 1e-6 * raw_ref
        assert _maxdiff(g, g_ref) <= tol * _scale(g_ref), adj
    m, g, t1 = _local_case(TorchDiffEqAdjoint(), TorchDiffEq("dopri5"))
    assert t1 == t_ref and m.nfe_backward > 0
    flat = torch.cat([x.flatten() for x in g])
    assert bool(torch.isfinite(flat).all()) and float(flat.abs().max()) > 0
    # The global regularisers differentiate the solver's internals: Backprop only.
    for adj in (CheckpointAdjoint(2), BacksolveAdjoint()):
        with pytest.raises(ValueError, match="backprop"):
            NeuralODE(MLP(), adjoint=adj)(torch.randn(2, 2), regularizer=GlobalError())


def test_local_regulariser_reads_the_step_from_the_adjoints_trace():
    """step_size='solver' reads the forward trace, which our adjoints keep (detached)."""
    for adj in (Backprop(), CheckpointAdjoint(2), BacksolveAdjoint()):
        m = NeuralODE(MLP(seed=7), Tsit5(), adjoint=adj, rtol=1e-5, atol=1e-7)
        reg = LocalRegularizer("error", seed=1, step_size="solver")
        m(torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(7)), regularizer=reg)
        assert m.nfe_regularizer == 7 and m.last_solution.trace is not None
    m = NeuralODE(MLP(), adjoint=TorchDiffEqAdjoint())
    with pytest.raises(ValueError, match="trace"):
        m(torch.randn(2, 2), regularizer=LocalRegularizer(step_size="solver", seed=0))
