"""Neural ODE/SDE modules and the regularisers: hand computations on y' = lambda y, gradients,
NFE reduction on a toy, adjoint compatibility, exact NFE counts, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from nde import (
    RNODE,
    STEER,
    Constant,
    ExponentialDecay,
    GlobalCombined,
    GlobalError,
    GlobalStiffness,
    LocalRegularizer,
    NeuralODE,
    NeuralSDE,
    TayNODE,
)
from solvers import (
    Backprop,
    BacksolveAdjoint,
    CheckpointAdjoint,
    Euler,
    TorchDiffEq,
    TorchDiffEqAdjoint,
    TorchSDEAdjoint,
    Tsit5,
)
from solvers.ode.tsit5 import _TSIT5
from solvers.sde import EulerMaruyama, LambaEM

F64 = torch.float64
LAM = -2.0
RTOL, ATOL = 1e-3, 1e-6


class Linear(nn.Module):
    """f(t, y) = lambda y."""

    def __init__(self, lam: float = LAM):
        super().__init__()
        self.lam = nn.Parameter(torch.tensor(lam, dtype=F64))

    def forward(self, t, y):
        return self.lam * y


class MLP(nn.Module):
    def __init__(self, d=2, width=16, scale=1.0, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1, self.l2 = nn.Linear(d, width), nn.Linear(width, d)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale / math.sqrt(max(p.shape[-1], 1)))

    def forward(self, t, y):
        return self.l2(torch.tanh(self.l1(y)))


# -- hand computations (numpy, from the tableau) -----------------------------------------------------

def _tsit5_step(y: float, h: float, lam: float = LAM):
    a, b, e = (np.array(v, dtype=float) for v in (_TSIT5.a, _TSIT5.b, _TSIT5.e))
    k = np.zeros(7)
    Y = np.zeros(7)
    for i in range(7):
        Y[i] = y + h * (a[i, :i] @ k[:i])
        k[i] = lam * Y[i]
    y1 = y + h * (b @ k)
    eest = abs(h * (e @ k)) / (ATOL + RTOL * max(abs(y), abs(y1)))
    stiff = abs(k[6] - k[5]) / abs(Y[6] - Y[5]) / _TSIT5.stability_size
    return y1, eest, stiff


def _hairer_dt(y: float, order: int = 4, lam: float = LAM) -> float:
    sc = ATOL + RTOL * abs(y)
    f0 = lam * y
    d0, d1 = abs(y) / sc, abs(f0) / sc
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    f1 = lam * (y + h0 * f0)
    d2 = abs(f1 - f0) / sc / h0
    h1 = (0.01 / max(d1, d2)) ** (1 / (order + 1))
    return min(100 * h0, h1)


def _model(**kw):
    return NeuralODE(Linear(), Tsit5(), rtol=RTOL, atol=ATOL, **kw)


def test_global_regularisers_match_hand_computation():
    h, y = 0.25, 1.0
    eests, stiffs = [], []
    for _ in range(4):
        y, e, s = _tsit5_step(y, h)
        eests.append(e)
        stiffs.append(s)
    expected = {
        GlobalError: np.mean(np.array(eests) * h),
        GlobalStiffness: max(stiffs),
        GlobalCombined: np.mean(np.array(eests) * h + 0.1 * np.array(stiffs)),
    }
    assert abs(max(stiffs) - abs(LAM) / _TSIT5.stability_size) < 1e-9  # rho = |lambda| for a linear field
    y0 = torch.ones(1, 1, dtype=F64)
    for cls, value in expected.items():
        m = _model(dt=h)
        ys = m(y0, regularizer=cls(weight=3.0))
        assert abs(float(ys[-1, 0, 0]) - y) < 1e-12
        assert abs(float(m.reg_raw) - value) <= 1e-10 * max(1.0, abs(value)), cls.__name__
        assert abs(float(m.reg_loss) - 3.0 * value) <= 1e-9 * max(1.0, abs(value))
        # The same number directly from a solution's trace.
        assert abs(float(cls()(m.last_solution)) - value) <= 1e-10 * max(1.0, abs(value))


@pytest.mark.parametrize("kind", ["error", "stiffness"])
@pytest.mark.parametrize("step_size", ["auto", "initial"])
@pytest.mark.parametrize("adjoint", [Backprop, BacksolveAdjoint, lambda: CheckpointAdjoint(2)],
                         ids=["backprop", "backsolve", "checkpoint"])
def test_local_regulariser_matches_hand_computation(kind, adjoint, step_size):
    m = _model(adjoint=adjoint())
    reg = LocalRegularizer(kind, sampling="unbiased", seed=3, step_size=step_size)
    y0 = torch.ones(1, 1, dtype=F64)
    m(y0, regularizer=reg)
    t1 = reg.last_t
    assert 0.0 < t1 < 1.0
    # u(t1) as the solve produced it (within the solve's tolerance of the exact e^{lambda t1}).
    sol = m.last_solution
    u1 = float(sol.ys[[i for i, t in enumerate(sol.ts.tolist()) if t == t1][0]])
    assert abs(u1 - math.exp(LAM * t1)) < 1e-4
    dt = _hairer_dt(u1)
    if step_size == "auto" and adjoint is Backprop:
        # "solver": the accepted step of this very solve that contains t1.
        tr = sol.trace
        starts, dts = tr.t[tr.accepted].tolist(), tr.dt[tr.accepted].tolist()
        dt = [h for s, h in zip(starts, dts) if s <= t1 < s + h][0]
        assert m.nfe_regularizer == 7
    elif step_size == "auto":
        # "controller": Hairer's step tried once, then the I controller's proposal (k = 5).
        _, e0, _ = _tsit5_step(u1, dt)
        dt = dt * min(10.0, max(0.2, 0.9 * e0 ** (-1 / 5)))
        assert m.nfe_regularizer == 14
    else:
        assert m.nfe_regularizer == 8
    _, eest, stiff = _tsit5_step(u1, dt)
    expected = eest * dt if kind == "error" else stiff
    assert abs(float(m.reg_raw) - expected) <= 1e-9 * max(abs(expected), 1e-12)


def test_biased_sampling_picks_an_accepted_step_time():
    m = _model()
    reg = LocalRegularizer("error", sampling="biased", seed=0)
    y0 = torch.ones(1, 1, dtype=F64)
    ts = torch.linspace(0, 1, 5, dtype=F64)
    plain = m(y0, ts)  # saveat=ts: the same steps, values from the same interpolant
    for _ in range(5):
        ys = m(y0, ts, regularizer=reg)
        steps = m.last_solution.ts.tolist()
        assert reg.last_t in steps[:-1]
        assert torch.allclose(ys, plain, atol=1e-12, rtol=0)


REGULARISERS = [GlobalError, GlobalStiffness, GlobalCombined,
                lambda: LocalRegularizer("error", "unbiased", seed=0),
                lambda: LocalRegularizer("stiffness", "unbiased", seed=0),
                lambda: LocalRegularizer("error", "biased", seed=0),
                lambda: RNODE(seed=0), TayNODE]


@pytest.mark.parametrize("make", REGULARISERS, ids=lambda f: getattr(f, "__name__", "local"))
def test_gradients_finite_and_nonzero(make):
    reg = make()
    m = NeuralODE(MLP(), rtol=1e-4, atol=1e-6)
    ys = m(torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), regularizer=reg)
    assert ys.shape == (2, 8, 2)
    grads = torch.autograd.grad(m.reg_loss, list(m.parameters()))
    flat = torch.cat([g.flatten() for g in grads])
    assert bool(torch.isfinite(flat).all()) and float(flat.abs().max()) > 0


@pytest.mark.parametrize("make", [lambda: GlobalError(weight=10.0),
                                  lambda: LocalRegularizer("error", "unbiased", weight=10.0, seed=0)],
                         ids=["global_error", "local_error"])
def test_a_few_steps_lower_the_nfe(make):
    """Minimising the penalty alone makes the field easier to integrate: fewer evaluations.

    The NFE of an adaptive solve moves in steps of 6 and jumps around from one update to the next, and
    one short run's path depends on the CPU's floating-point kernels (30 updates of one seed went
    134 -> 146 on one machine and fell on another). So the claim is judged with margin: three
    independently seeded fields, 45 updates each, the typical NFE of the last 15 updates against the
    field's initial NFE. Every seed must end below its start, and the median seed at most 85% of it
    (measured here, 1 or 2 threads: 0.49-0.63 for the global, 0.61-0.72 for the local error penalty;
    other seeds 0.40-0.84).
    """
    ratios = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        m = NeuralODE(MLP(scale=3.0, seed=seed), rtol=1e-6, atol=1e-8)
        y0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(seed))
        reg = make()
        with torch.no_grad():
            m(y0)
        nfe0 = m.nfe_forward
        opt = torch.optim.Adam(m.parameters(), lr=2e-2)
        nfes = []
        for _ in range(45):
            opt.zero_grad()
            m(y0, regularizer=reg)
            (m.reg_loss / m.reg_raw.detach().clamp_min(1e-12)).backward()  # normalised: a fixed-size step
            opt.step()
            with torch.no_grad():
                m(y0)
            nfes.append(m.nfe_forward)
        ratios.append(float(np.median(nfes[-15:])) / nfe0)
    assert max(ratios) < 1.0, ratios
    assert sorted(ratios)[1] < 0.85, ratios


def test_local_regularisation_with_adjoint_backward():
    m = NeuralODE(MLP(), adjoint=TorchDiffEqAdjoint(), rtol=1e-4, atol=1e-6)
    reg = LocalRegularizer("error", seed=0)
    ys = m(torch.randn(4, 2), torch.linspace(0, 1, 4), regularizer=reg)
    (ys[-1].pow(2).mean() + m.reg_loss).backward()
    grads = torch.cat([p.grad.flatten() for p in m.parameters()])
    assert bool(torch.isfinite(grads).all()) and float(grads.abs().max()) > 0
    # f(t1), Hairer's extra f, 6 stages of the trial step, 6 of the differentiable one.
    assert m.nfe_backward > 0 and m.nfe_regularizer == 14
    with pytest.raises(ValueError, match="backprop"):
        m(torch.randn(4, 2), regularizer=GlobalError())


def test_nfe_counts_exact_on_fixed_steps():
    y0 = torch.randn(3, 2)
    ts = torch.linspace(0, 1, 3)
    # Our Euler, 10 steps: f(t0), then f at each accepted step's end (FSAL-like reuse, saved times).
    m = NeuralODE(MLP(), Euler(), dt=0.1)
    m(y0, ts).sum().backward()
    assert (m.nfe_forward, m.nfe_backward) == (11, 0)
    # torchdiffeq's adjoint Euler: 10 forward evaluations, 10 vector-Jacobian products backwards.
    m = NeuralODE(MLP(), TorchDiffEq("euler", adjoint=True), adjoint=TorchDiffEqAdjoint(), dt=0.1)
    m(y0, ts).sum().backward()
    assert (m.nfe_forward, m.nfe_backward) == (10, 10)
    # Neural SDE with Euler-Maruyama: one drift and one diffusion per step, no backward evaluations.
    s = NeuralSDE(MLP(), MLP(), EulerMaruyama(), dt=0.1)
    s(y0, ts, seed=0).sum().backward()
    assert (s.nfe_forward, s.nge_forward, s.nfe_backward) == (10, 10, 0)


def test_neural_sde_local_regularisation_backprop_and_adjoint():
    class Diff(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, t, y):
            return 0.3 * torch.sigmoid(self.lin(y))

    y0 = torch.randn(6, 2)
    cases = ((Backprop(), dict(solver=LambaEM())), (TorchSDEAdjoint(), dict(solver=EulerMaruyama(), dt=0.05)))
    for adjoint, kw in cases:
        m = NeuralSDE(MLP(), Diff(), adjoint=adjoint, **kw)
        ys = m(y0, torch.linspace(0, 1, 3), regularizer=LocalRegularizer("error", seed=0), seed=1)
        assert ys.shape == (3, 6, 2)
        (ys[-1].sum() + m.reg_loss).backward()
        g = torch.cat([p.grad.flatten() for p in m.parameters()])
        assert bool(torch.isfinite(g).all()) and float(g.abs().max()) > 0
        assert float(m.reg_raw) > 0
    # The global error of a neural SDE: the adaptive SDE method's own differentiable estimate.
    m = NeuralSDE(MLP(), Diff(), LambaEM())
    m(y0, regularizer=GlobalError(), seed=0)
    m.reg_loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_steer_moves_only_the_training_end_time():
    m = _model()
    reg = STEER(b=0.5, seed=0)
    y0 = torch.ones(1, 1, dtype=F64)
    ends = []
    for _ in range(5):
        m(y0, regularizer=reg)
        ends.append(float(m.last_solution.ts[-1]))
    assert all(0.5 <= e <= 1.5 for e in ends) and len(set(ends)) == 5
    m.eval()
    m(y0, regularizer=reg)
    assert float(m.last_solution.ts[-1]) == 1.0
    assert float(m.reg_loss) == 0.0


def test_rnode_integrals_by_hand():
    """For f = lambda y the kinetic energy is int lambda^2 y^2 = lambda y0^2 (e^{2 lambda} - 1) / 2 and
    ||eps^T J||^2 = lambda^2 eps^2 (constant)."""
    m = NeuralODE(Linear(), Tsit5(), rtol=1e-10, atol=1e-12)
    reg = RNODE(weight=1.0, seed=0)
    y0 = torch.full((1, 1), 1.5, dtype=F64)
    m(y0, regularizer=reg)
    eps = float(reg._eps)
    kinetic = LAM * 1.5 ** 2 * (math.exp(2 * LAM) - 1) / 2
    assert abs(float(m.reg_raw) - (kinetic + LAM ** 2 * eps ** 2)) < 1e-8


def test_taynode_by_hand():
    """d^2y/dt^2 = lambda^2 y, so int ||y''||^2 = lambda^4 y0^2 (e^{2 lambda} - 1) / (2 lambda)."""
    m = NeuralODE(Linear(), Tsit5(), rtol=1e-10, atol=1e-12)
    m(torch.full((1, 1), 1.5, dtype=F64), regularizer=TayNODE())
    expected = LAM ** 4 * 1.5 ** 2 * (math.exp(2 * LAM) - 1) / (2 * LAM)
    assert abs(float(m.reg_raw) - expected) < 1e-8


def test_schedules():
    s = ExponentialDecay(100.0, 10.0, 10)
    assert s(0) == 100.0 and abs(s(5) - math.sqrt(1000.0)) < 1e-9 and abs(s(10) - 10.0) < 1e-12
    assert abs(s(50) - 10.0) < 1e-12
    assert Constant(0.1)(7) == 0.1
    reg = LocalRegularizer(weight=ExponentialDecay(2.5, 1.0, 2), seed=0)
    m = _model()
    y0 = torch.ones(1, 1, dtype=F64)
    ws = []
    for _ in range(3):
        m(y0, regularizer=reg)
        ws.append(float(m.reg_loss / m.reg_raw))
    assert np.allclose(ws, [2.5, math.sqrt(2.5), 1.0])


def test_bad_input():
    with pytest.raises(ValueError, match="sensitivity"):
        NeuralODE(MLP(), sensitivity="forward")
    with pytest.raises(ValueError, match="kind"):
        LocalRegularizer("curvature")
    with pytest.raises(ValueError, match="sampling"):
        LocalRegularizer("error", sampling="stratified")
    with pytest.raises(ValueError, match="weight"):
        Constant(-1.0)
    with pytest.raises(ValueError):
        ExponentialDecay(1.0, 0.0, 10)
    with pytest.raises(ValueError, match="b must"):
        STEER(b=1.5)
    m = NeuralODE(MLP())
    with pytest.raises(ValueError, match="increasing"):
        m(torch.randn(2, 2), torch.tensor([0.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="at least two"):
        m(torch.randn(2, 2), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="shape"):
        NeuralODE(lambda t, y: y[..., :1])(torch.randn(2, 2))  # a field of the wrong output shape
    with pytest.raises(ValueError, match="dimension"):
        m(torch.tensor(1.0))
    reg = LocalRegularizer(seed=0)
    m(torch.randn(2, 2), regularizer=reg)
    with pytest.raises(ValueError, match="outside the span"):
        reg.penalty_at(m, 1.5, torch.randn(2, 2))
    with pytest.raises(ValueError, match="adjoint"):
        NeuralSDE(MLP(), MLP(), adjoint=TorchSDEAdjoint())  # needs dt
    with pytest.raises(ValueError, match="biased"):
        NeuralSDE(MLP(), MLP())(torch.randn(2, 2), regularizer=LocalRegularizer(sampling="biased"))
