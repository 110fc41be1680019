"""Adaptive solves meet their tolerance; parity with torchdiffeq; controllers; backwards time."""

import pytest
import torch
import torchdiffeq

from solvers import (
    Bosh3,
    Dopri5,
    Heun,
    IController,
    ODEProblem,
    PIController,
    PIDController,
    TorchDiffEq,
    Tsit5,
    Verner65,
    init,
    solve,
)
from solvers.reference import problem


def _err(p, sol):
    return float((sol.ys[-1] - p.analytic(torch.tensor(p.t1, dtype=torch.float64))).abs().max())


@pytest.mark.parametrize("method", [Bosh3, Dopri5, Tsit5, Verner65])
@pytest.mark.parametrize("name", ["logistic", "damped_oscillator", "forced_linear", "linear3"])
@pytest.mark.parametrize("rtol", [1e-5, 1e-8])
def test_adaptive_global_error_within_small_factor_of_rtol(method, name, rtol):
    p = problem(name)
    sol = solve(p, method(), rtol=rtol, atol=rtol * 1e-2)
    scale = float(p.analytic(torch.linspace(p.t0, p.t1, 50, dtype=torch.float64)).abs().max())
    assert sol.success
    assert _err(p, sol) <= 20 * rtol * max(scale, 1.0), _err(p, sol)


@pytest.mark.parametrize("controller", [IController(), PIController(), PIDController(),
                                        PIDController(0.2, 0.4, 0.0), PIController(0.17, 0.04)])
def test_every_controller_meets_tolerance(controller):
    p = problem("damped_oscillator")
    sol = solve(p, Tsit5(), rtol=1e-7, atol=1e-9, controller=controller)
    assert _err(p, sol) < 1e-5


def test_heun_is_adaptive_with_euler_embedded():
    p = problem("logistic")
    sol = solve(p, Heun(), rtol=1e-5, atol=1e-7)
    assert _err(p, sol) < 1e-3


def test_dopri5_takes_torchdiffeqs_steps_with_its_controller_settings():
    # torchdiffeq's dopri5: I controller, safety 0.9, factors [0.2, 10], exponent 1/5, an accepted
    # step never shrinks the next, Hairer's initial step. Same settings here.
    for name in ["damped_oscillator", "logistic", "linear3"]:
        p = problem(name)
        for rtol in [1e-5, 1e-8]:
            ctrl = IController(safety=0.9, factormin=0.2, factormax=10.0, shrink_on_accept=False)
            ours = solve(p, Dopri5(), rtol=rtol, atol=rtol * 1e-2, controller=ctrl)
            count = [0]

            def f(t, y, _f=p.f, count=count):
                count[0] += 1
                return _f(t, y)

            ys = torchdiffeq.odeint(f, p.y0, torch.tensor([p.t0, p.t1], dtype=torch.float64),
                                    rtol=rtol, atol=rtol * 1e-2, method="dopri5")
            tde_steps = (count[0] - 2) / 6  # f0 + one for the initial step, then 6 per attempt
            assert abs(ours.stats.nsteps - tde_steps) <= max(1, 0.1 * tde_steps), (ours.stats, tde_steps)
            assert float((ours.ys[-1] - ys[-1]).abs().max()) < 50 * rtol


def test_torchdiffeq_backend_matches_and_counts():
    p = problem("damped_oscillator")
    sol = solve(p, TorchDiffEq("dopri5"), rtol=1e-8, atol=1e-10, saveat=torch.linspace(0, 5, 11))
    assert sol.ys.shape == (11, 2) and sol.stats.nfe > 0 and sol.success
    assert float((sol.ys - p.analytic(sol.ts)).abs().max()) < 1e-6
    assert sol.stats.nfe_counter.forward == sol.stats.nfe


def test_torchdiffeq_adjoint_gradient_matches_backprop():
    net = torch.nn.Linear(2, 2).double()
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    p = ODEProblem(lambda t, y: torch.tanh(net(y)), y0, (0.0, 1.0))
    grads = []
    with pytest.raises(ValueError, match="adjoint_params"):
        solve(p, TorchDiffEq("dopri5", adjoint=True))
    for alg in [TorchDiffEq("dopri5", adjoint=True), Tsit5()]:
        net.zero_grad()
        extra = {"adjoint_params": tuple(net.parameters())} if isinstance(alg, TorchDiffEq) else {}
        sol = solve(p, alg, rtol=1e-10, atol=1e-12, saveat=[0.0, 1.0], **extra)
        sol.ys[-1].sum().backward()
        grads.append(net.weight.grad.clone())
        if isinstance(alg, TorchDiffEq):
            assert sol.stats.nfe_counter.backward > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("method", [Tsit5, Dopri5, Verner65])
def test_backwards_in_time(method):
    p = problem("damped_oscillator")
    end = p.analytic(torch.tensor(p.t1, dtype=torch.float64))
    back = ODEProblem(p.f, end, (p.t1, p.t0))
    sol = solve(back, method(), rtol=1e-9, atol=1e-11)
    assert sol.ts[0] == p.t1 and sol.ts[-1] == p.t0
    assert float((sol.ys[-1] - p.y0).abs().max()) < 1e-6
    mid = sol(torch.tensor([4.0, 2.5, 1.0], dtype=torch.float64))
    assert float((mid - p.analytic(torch.tensor([4.0, 2.5, 1.0], dtype=torch.float64))).abs().max()) < 1e-6


def test_init_steps_by_hand_like_solve():
    p = problem("logistic")
    integ = init(p, Tsit5(), rtol=1e-6, atol=1e-8)
    times = [integ.t]
    while integ.step():
        times.append(integ.t)
        assert integ.t > times[-2]
    times.append(integ.t)
    sol = integ.solution()
    ref = solve(p, Tsit5(), rtol=1e-6, atol=1e-8)
    assert sol.stats.nfe == ref.stats.nfe
    torch.testing.assert_close(sol.ys, ref.ys)
    assert integ.step() is False


def test_saveat_values_and_order():
    p = problem("forced_linear")
    ts = torch.tensor([0.0, 0.1, 1.7, 3.3, 5.0], dtype=torch.float64)
    sol = solve(p, Tsit5(), rtol=1e-9, atol=1e-11, saveat=ts)
    assert torch.equal(sol.ts, ts)
    assert float((sol.ys - p.analytic(ts)).abs().max()) < 1e-7


@pytest.mark.parametrize("method", [Tsit5, Dopri5])
def test_fsal_reuse_counts(method):
    p = problem("linear")
    sol = solve(p, method(), rtol=1e-6, atol=1e-9, dt0=0.1)
    # f(t0, y0) once, then s - 1 new evaluations per attempted step (FSAL).
    assert sol.stats.nfe == 1 + (method().stages - 1) * sol.stats.nsteps
