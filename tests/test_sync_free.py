"""The sync-free loop (``solvers.stepping.device_loop``): the same method, tolerances and controller
as the default loop with every decision on the device, per-sample step sizes, and the compiled step.

The sync-free loop sums the stages in another order than the default loop, so the two agree to
rounding, not bit for bit: step sizes can differ in the last digits (most of all after a first step
whose error estimate is itself rounding noise). The checks below compare in float64 with margins far
above that noise and far below any real disagreement (a wrong stage, a wrong save time, a missed
rejection shows up at 1e-3 or worse).
"""

from __future__ import annotations

import math

import pytest
import torch

from nde.regularization import global_error
from solvers import ODEProblem, ReturnCode, SolverError, init, solve
from solvers.ode import RK4, Bosh3, Dopri5, Rodas5P, Tsit5, Vern7
from solvers.reference.ode_problems import NONSTIFF, problem
from solvers.stepping import IController, PIController
from solvers.stepping.controllers import ControllerState, PIDController

F64 = torch.float64


def _batched_decay(rates=(0.5, 3.0, 40.0), span=(0.0, 2.0)):
    k = torch.tensor(rates, dtype=F64)[:, None]
    y0 = torch.ones(len(rates), 2, dtype=F64)
    y0[:, 1] = -0.5
    return ODEProblem(lambda t, y: -k * y + torch.sin(t), y0, span), k


# -- the sync-free loop against the default loop ---------------------------------------------------


@pytest.mark.parametrize("name", NONSTIFF)
def test_sync_free_matches_default_loop_on_reference_problems(name):
    prob = problem(name)
    t0, t1 = prob.tspan
    saveat = torch.linspace(t0, t1, 7, dtype=F64).tolist()
    ref = solve(prob, Tsit5(), rtol=1e-8, atol=1e-10, saveat=saveat)
    sol = solve(prob, Tsit5(), rtol=1e-8, atol=1e-10, saveat=saveat, sync_free=True)
    assert sol.retcode is ReturnCode.SUCCESS
    assert abs(sol.stats.nfe - ref.stats.nfe) <= 0.1 * ref.stats.nfe
    assert torch.equal(sol.ts, ref.ts)
    scale = ref.ys.abs().max()
    assert float((sol.ys - ref.ys).abs().max()) <= 1e-8 * float(scale)
    exact = torch.stack([prob.analytic(torch.tensor(s, dtype=F64)) for s in saveat])
    err_ref = float((ref.ys - exact).abs().max())
    assert float((sol.ys - exact).abs().max()) <= 2 * err_ref + 1e-12


@pytest.mark.parametrize("method", [Tsit5, Dopri5, Bosh3, Vern7])
@pytest.mark.parametrize("controller", [None, PIController(), PIDController(pcoeff=0.3, icoeff=0.3)])
def test_sync_free_takes_the_default_loops_steps(method, controller):
    prob = problem("forced_oscillator")
    # dt0: the heuristic's first step is so small that its error estimate is rounding noise, which the
    # next step sizes inherit; from a step with a real error estimate the two loops agree to rounding.
    kw = dict(rtol=1e-7, atol=1e-9, trace=True, controller=controller, dt0=0.05)
    ref = solve(prob, method(), **kw)
    sol = solve(prob, method(), sync_free=True, **kw)
    assert (sol.stats.naccept, sol.stats.nreject) == (ref.stats.naccept, ref.stats.nreject)
    assert torch.equal(sol.trace.accepted, ref.trace.accepted)
    # Vern7's error estimates at rtol 1e-7 are ~1e-12 in absolute terms: rounding moves them (and the
    # proposals) by ~1e-5 relative. A wrong controller rule or stage moves them by percents.
    assert torch.allclose(sol.trace.dt, ref.trace.dt, rtol=1e-3, atol=0)
    # Saving every step (no saveat): the accepted steps' times and states.
    assert torch.allclose(sol.ts, ref.ts, rtol=1e-4, atol=1e-12)
    assert torch.allclose(sol.ys[-1], ref.ys[-1], rtol=1e-7, atol=1e-10)
    assert torch.allclose(sol.trace.error_estimate, ref.trace.error_estimate, rtol=1e-2, atol=1e-6)
    assert torch.allclose(sol.trace.stiffness_estimate, ref.trace.stiffness_estimate, rtol=1e-5, atol=1e-8)


def test_sync_free_dense_output_matches_default_loop():
    prob = problem("harmonic")
    ref = solve(prob, Tsit5(), rtol=1e-9, atol=1e-11)
    sol = solve(prob, Tsit5(), rtol=1e-9, atol=1e-11, sync_free=True, dense=True)
    assert solve(prob, Tsit5(), sync_free=True).interpolant is None  # only when asked
    tq = torch.linspace(*prob.tspan, 101, dtype=F64)
    assert torch.allclose(sol(tq), ref(tq), rtol=0, atol=1e-8)
    exact = torch.stack([prob.analytic(s) for s in tq])
    assert float((sol(tq) - exact).abs().max()) < 1e-7


def test_sync_free_fixed_steps_land_on_the_grid():
    prob = problem("linear")
    t0, t1 = prob.tspan
    ref = solve(prob, RK4(), dt=0.03, saveat=[t0, 0.5 * (t0 + t1), t1])
    sol = solve(prob, RK4(), dt=0.03, saveat=[t0, 0.5 * (t0 + t1), t1], sync_free=True)
    assert sol.stats.naccept == ref.stats.naccept and sol.stats.nreject == 0
    assert sol.stats.nfe == ref.stats.nfe
    assert torch.allclose(sol.ys, ref.ys, rtol=1e-12, atol=1e-14)


def test_sync_free_integrates_backwards():
    prob = problem("damped_oscillator")
    t0, t1 = prob.tspan
    y1 = prob.analytic(torch.tensor(t1, dtype=F64))
    back = ODEProblem(prob.f, y1, (t1, t0))
    ref = solve(back, Tsit5(), rtol=1e-9, atol=1e-11, saveat=[t1, t0])
    sol = solve(back, Tsit5(), rtol=1e-9, atol=1e-11, saveat=[t1, t0], sync_free=True)
    assert torch.allclose(sol.ys, ref.ys, rtol=1e-8, atol=1e-10)
    assert torch.allclose(sol.ys[-1], prob.y0, atol=1e-7)


def test_more_attempts_between_checks_change_nothing_but_the_count():
    prob = problem("spiral")
    one = solve(prob, Tsit5(), saveat=[0.5, 1.0], sync_free=True, sync_every=1)
    five = solve(prob, Tsit5(), saveat=[0.5, 1.0], sync_free=True, sync_every=5)
    assert torch.equal(one.ys, five.ys)
    assert (one.stats.naccept, one.stats.nreject) == (five.stats.naccept, five.stats.nreject)
    attempts = one.stats.naccept + one.stats.nreject
    assert five.stats.attempts == 5 * math.ceil(attempts / 5)
    assert five.stats.nfe - one.stats.nfe == (five.stats.attempts - attempts) * (Tsit5().stages - 1)


# -- gradients and the trace -------------------------------------------------------------------------


def _param_problem():
    a = torch.tensor([[-0.5, 2.0], [-2.0, -0.3]], dtype=F64, requires_grad=True)
    y0 = torch.tensor([[1.0, 0.5], [0.2, -1.0], [3.0, 0.0]], dtype=F64)
    return ODEProblem(lambda t, y: y @ a.T + torch.sin(t), y0, (0.0, 3.0)), a


def test_sync_free_gradients_equal_the_default_loops():
    prob, a = _param_problem()
    ts = [0.0, 0.7, 1.5, 3.0]
    grads = []
    for kw in ({}, {"sync_free": True}):
        sol = solve(prob, Tsit5(), rtol=1e-9, atol=1e-11, saveat=ts, **kw)
        grads.append(torch.autograd.grad(sol.ys.pow(2).sum(), a)[0])
    assert torch.allclose(grads[0], grads[1], rtol=1e-7, atol=1e-9)


def test_sync_free_gradcheck():
    w = torch.tensor([0.7, -0.4], dtype=F64, requires_grad=True)

    def end_state(w):
        prob = ODEProblem(lambda t, y: torch.stack([y[1], -w[0] * y[0] + w[1] * y[1]]),
                          torch.tensor([1.0, 0.0], dtype=F64), (0.0, 1.0))
        return solve(prob, Tsit5(), dt=0.05, saveat=[1.0], sync_free=True).ys[-1]

    assert torch.autograd.gradcheck(end_state, (w,))


def test_regulariser_reads_the_sync_free_trace():
    prob, a = _param_problem()
    ref = solve(prob, Tsit5(), rtol=1e-6, atol=1e-8, trace=True, saveat=[3.0])
    sol = solve(prob, Tsit5(), rtol=1e-6, atol=1e-8, trace=True, saveat=[3.0], sync_free=True)
    r_ref, r = global_error(ref.trace), global_error(sol.trace)
    assert math.isclose(float(r), float(r_ref), rel_tol=1e-2)
    g_ref, g = (torch.autograd.grad(x, a)[0] for x in (r_ref, r))
    assert torch.allclose(g, g_ref, rtol=5e-2, atol=1e-8)
    assert float(g.abs().max()) > 0


# -- per-sample step sizes ---------------------------------------------------------------------------


def test_per_sample_matches_independent_solves():
    prob, k = _batched_decay()
    saveat = [0.0, 0.3, 1.0, 2.0]
    sol = solve(prob, Tsit5(), rtol=1e-8, atol=1e-10, saveat=saveat, batch_mode="per_sample")
    assert sol.retcode is ReturnCode.SUCCESS
    for i in range(3):
        row = ODEProblem(lambda t, y, i=i: -k[i] * y + torch.sin(t), prob.y0[i:i + 1], prob.tspan)
        alone = solve(row, Tsit5(), rtol=1e-8, atol=1e-10, saveat=saveat)
        assert torch.allclose(sol.ys[:, i:i + 1], alone.ys, rtol=1e-8, atol=1e-11)
        n_alone = alone.stats.naccept + alone.stats.nreject
        n_row = int(sol.stats.naccept_per_sample[i] + sol.stats.nreject_per_sample[i])
        assert abs(n_row - n_alone) <= 1
    # Each row took its own number of steps: the slow row far fewer than the fast one.
    steps = sol.stats.naccept_per_sample
    assert int(steps[0]) < int(steps[2]) / 2


def test_per_sample_saves_work_on_rows_with_different_time_scales():
    prob, _ = _batched_decay(rates=(0.1,) * 15 + (200.0,), span=(0.0, 1.0))
    kw = dict(rtol=1e-6, atol=1e-9, saveat=[1.0])
    shared = solve(prob, Tsit5(), sync_free=True, **kw)
    per = solve(prob, Tsit5(), batch_mode="per_sample", **kw)
    # The shared step is the hardest row's for everyone; per sample the easy rows take a few steps.
    assert float(per.stats.nfe_per_sample.float().mean()) < 0.5 * shared.stats.nfe
    assert torch.allclose(per.ys, shared.ys, rtol=1e-4, atol=1e-6)


def test_per_sample_field_sees_per_row_times():
    seen = []

    def f(t, y):
        seen.append(tuple(t.shape))
        return torch.cos(t) * torch.ones_like(y)

    y0 = torch.zeros(4, 3, dtype=F64)
    sol = solve(ODEProblem(f, y0, (0.0, 2.0)), Tsit5(), saveat=[2.0], batch_mode="per_sample", rtol=1e-9,
                atol=1e-12)
    assert (4, 1) in seen
    assert torch.allclose(sol.ys[-1], torch.full((4, 3), math.sin(2.0), dtype=F64), atol=1e-8)


def test_per_sample_trace_has_a_column_per_row():
    prob, _ = _batched_decay()
    sol = solve(prob, Tsit5(), saveat=[2.0], trace=True, batch_mode="per_sample")
    tr = sol.trace
    assert tr.error_estimate.shape == tr.accepted.shape == (len(tr), 3)
    assert torch.equal(tr.accepted.sum(0), sol.stats.naccept_per_sample)
    assert bool((tr.error_estimate[tr.accepted] <= 1).all())


# -- controllers' tensor rules -------------------------------------------------------------------------


@pytest.mark.parametrize("ctrl", [IController(), IController(shrink_on_accept=False),
                                  PIController(beta1=0.14, beta2=0.08),
                                  PIDController(pcoeff=0.2, icoeff=0.4, dcoeff=0.1)])
def test_controller_tensor_rule_equals_the_float_rule(ctrl):
    errors = [0.0, 1e-8, 0.3, 0.999, 1.0, 1.7, 40.0, 0.5, 1e-3]
    state = ControllerState()
    mem = (torch.ones((), dtype=F64), torch.ones((), dtype=F64))
    for e in errors:
        acc, dt = ctrl.adapt(state, 0.1, e, 5)
        acc_t, dt_t, mem = ctrl.adapt_tensor(mem, torch.tensor(0.1, dtype=F64), torch.tensor(e, dtype=F64), 5)
        assert bool(acc_t) == acc
        assert math.isclose(float(dt_t), dt, rel_tol=1e-12)


# -- failures and bad input ------------------------------------------------------------------------------


def test_sync_free_max_steps_and_nan_are_reported():
    prob = problem("harmonic")
    sol = solve(prob, Tsit5(), sync_free=True, max_steps=5, throw=False, saveat=[prob.tspan[1]])
    assert sol.retcode is ReturnCode.MAX_STEPS
    with pytest.raises(SolverError, match="max_steps"):
        solve(prob, Tsit5(), sync_free=True, max_steps=5)
    blow = ODEProblem(lambda t, y: y * y, torch.ones(2, dtype=F64), (0.0, 2.0))
    bad = solve(blow, Tsit5(), sync_free=True, throw=False, saveat=[2.0])
    assert bad.retcode in (ReturnCode.DT_MIN, ReturnCode.UNSTABLE)
    assert bad.t_final < 1.01


def test_per_sample_failure_names_the_rows():
    y0 = torch.ones(3, 1, dtype=F64)
    y0[1] = 2.0
    blow = ODEProblem(lambda t, y: y * y, y0, (0.0, 0.8))  # row 1 blows up at t = 0.5, the others at 1
    with pytest.raises(SolverError, match=r"1 of 3 rows failed \(first: row 1\)"):
        solve(blow, Tsit5(), batch_mode="per_sample", saveat=[0.8])
    sol = solve(blow, Tsit5(), batch_mode="per_sample", saveat=[0.8], throw=False)
    codes = sol.stats.retcode_per_sample
    assert codes[0] is ReturnCode.SUCCESS and codes[2] is ReturnCode.SUCCESS
    assert codes[1] is not ReturnCode.SUCCESS
    assert torch.allclose(sol.ys[-1, 0], torch.tensor([1 / (1 - 0.8)], dtype=F64), rtol=1e-5)


def test_bad_options_are_refused_before_work():
    prob, _ = _batched_decay()
    with pytest.raises(ValueError, match="batch_mode"):
        solve(prob, Tsit5(), batch_mode="rows")
    with pytest.raises(ValueError, match="sync_every"):
        solve(prob, Tsit5(), sync_free=True, sync_every=0)
    with pytest.raises(ValueError, match="pass saveat"):
        solve(prob, Tsit5(), batch_mode="per_sample")
    with pytest.raises(ValueError, match="events"):
        from solvers.events import Event

        solve(prob, Tsit5(), sync_free=True, events=Event(lambda t, y: y[0, 0]))
    with pytest.raises(ValueError, match="explicit Runge-Kutta"):
        solve(prob, Rodas5P(), sync_free=True)
    with pytest.raises(ValueError, match="step by hand"):
        init(prob, Tsit5(), sync_free=True)
    with pytest.raises(TypeError, match="compile"):
        solve(prob, Tsit5(), compile=3)
    with pytest.raises(TypeError, match="unknown option"):
        solve(prob, Tsit5(), sync_free=True, sync_evry=2)
    from solvers.adjoint import BacksolveAdjoint

    with pytest.raises(ValueError, match="Backprop"):
        solve(prob, Tsit5(), adjoint=BacksolveAdjoint(), sync_free=True)
    # Off values of the options run the default loop.
    sol = solve(prob, Tsit5(), sync_free=False, compile=False, batch_mode="shared")
    assert "loop" not in sol.stats.extra


def test_sync_free_float32_state_keeps_time_in_float64():
    prob, _ = _batched_decay()
    p32 = ODEProblem(lambda t, y: -y, prob.y0.float(), (0.0, 1.0))
    sol = solve(p32, Tsit5(), saveat=[1.0 / 3.0, 1.0], sync_free=True, rtol=1e-5, atol=1e-7)
    assert sol.ys.dtype == torch.float32 and sol.ts.dtype == F64
    assert torch.allclose(sol.ys[-1], p32.y0 * math.exp(-1.0), rtol=1e-4)


# -- the compiled step ---------------------------------------------------------------------------------


def test_compiled_step_agrees_and_is_reused_across_solves():
    """One compilation, then warm solves with other tolerances, values and spans reuse it."""
    torch._dynamo.reset()
    a = torch.tensor([[-0.3, 1.0], [-1.0, -0.2]], dtype=F64)
    prob = ODEProblem(lambda t, y: y @ a.T, torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64), (0.0, 4.0))
    kw = dict(saveat=[0.0, 1.0, 4.0], dense=False)
    eager = solve(prob, Tsit5(), sync_free=True, rtol=1e-8, atol=1e-10, **kw)
    first = solve(prob, Tsit5(), compile=True, rtol=1e-8, atol=1e-10, **kw)
    assert first.stats.compiles >= 1 and first.stats.compile_time_s > 0
    assert first.stats.nfe == eager.stats.nfe
    assert torch.allclose(first.ys, eager.ys, rtol=1e-12, atol=1e-14)
    exact = torch.linalg.matrix_exp(4.0 * a) @ prob.y0.T
    assert torch.allclose(first.ys[-1], exact.T, atol=1e-7)
    other = ODEProblem(prob.f, 3 * prob.y0, (0.0, 2.5))
    warm = solve(other, Tsit5(), compile=True, rtol=1e-6, atol=1e-9, saveat=[0.0, 1.0, 2.5], dense=False)
    assert warm.stats.compiles == 0 and warm.stats.compile_time_s == 0.0
    ref = solve(other, Tsit5(), sync_free=True, rtol=1e-6, atol=1e-9, saveat=[0.0, 1.0, 2.5], dense=False)
    assert torch.allclose(warm.ys, ref.ys, rtol=1e-12, atol=1e-14)


@pytest.mark.slow
def test_compiled_gradients_trace_and_per_sample():
    torch._dynamo.reset()
    prob, a = _param_problem()
    ts = [0.0, 1.5, 3.0]
    outs = {}
    for label, kw in [("eager", {"sync_free": True}), ("compiled", {"compile": True}),
                      ("per_sample", {"batch_mode": "per_sample"}),
                      ("compiled_per_sample", {"compile": True, "batch_mode": "per_sample"})]:
        sol = solve(prob, Tsit5(), rtol=1e-8, atol=1e-10, saveat=ts, trace=True, dense=False, **kw)
        g_ys = torch.autograd.grad(sol.ys.pow(2).sum(), a, retain_graph=True)[0]
        g_reg = torch.autograd.grad(global_error(sol.trace), a)[0]
        outs[label] = (sol, g_ys, g_reg)
    for base, other in [("eager", "compiled"), ("per_sample", "compiled_per_sample")]:
        (s0, g0, r0), (s1, g1, r1) = outs[base], outs[other]
        assert s0.stats.nfe == s1.stats.nfe
        assert torch.allclose(s0.ys, s1.ys, rtol=1e-10, atol=1e-12)
        assert torch.allclose(g0, g1, rtol=1e-8, atol=1e-10)
        # Error estimates are differences of nearly equal stage sums: the compiled graph's fused
        # arithmetic moves them (and their gradients) at ~1e-5 relative; a wrong gradient is O(1) off.
        assert torch.allclose(r0, r1, rtol=1e-3, atol=1e-9)
        assert float(r1.abs().max()) > 0


@pytest.mark.slow
def test_recompilation_is_bounded_by_the_signature():
    """Same shapes: no recompilation for new values, tolerances, spans or save times; a new batch size
    is one new graph."""
    torch._dynamo.reset()
    f = torch.nn.Linear(3, 3).double()
    for p in f.parameters():
        p.requires_grad_(False)

    def field(t, y):
        return torch.tanh(f(y))

    compiles = []
    for i, (batch, rtol) in enumerate([(8, 1e-6), (8, 1e-8), (8, 1e-5), (16, 1e-6), (16, 1e-7)]):
        y0 = torch.randn(batch, 3, dtype=F64, generator=torch.Generator().manual_seed(i))
        sol = solve(ODEProblem(field, y0, (0.0, 1.0 + i)), Tsit5(), compile=True, rtol=rtol, atol=1e-9,
                    saveat=[0.0, 0.5, 1.0 + i], dense=False)
        compiles.append(sol.stats.compiles)
    assert compiles[0] >= 1 and compiles[1:3] == [0, 0]
    assert compiles[3] >= 1 and compiles[4] == 0


def test_whole_solve_graph_agrees_with_the_step_loop():
    """``compile=True`` without gradients runs the whole loop as one graph: same steps, same values."""
    a = torch.tensor([[-0.3, -1.0], [1.0, -0.2]], dtype=F64)
    prob = ODEProblem(lambda t, y: y @ a, torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64), (0.0, 4.0))
    kw = dict(saveat=[0.0, 1.0, 4.0], rtol=1e-8, atol=1e-10)
    with torch.no_grad():
        eager = solve(prob, Tsit5(), sync_free=True, **kw)
        whole = solve(prob, Tsit5(), compile=True, **kw)
        short = solve(prob, Tsit5(), compile="solve", max_steps=4, throw=False, **kw)
    assert whole.stats.graph == "solve"
    assert (whole.stats.nfe, whole.stats.naccept, whole.stats.nreject) == (
        eager.stats.nfe, eager.stats.naccept, eager.stats.nreject)
    assert torch.allclose(whole.ys, eager.ys, rtol=1e-12, atol=1e-14)
    # max_steps is decided inside the graph, and is an input (no recompilation).
    assert short.retcode is ReturnCode.MAX_STEPS and short.stats.attempts == 4 and short.stats.compiles == 0
    with pytest.raises(ValueError, match="no_grad"):
        solve(prob, Tsit5(), compile="solve", **kw)
    with pytest.raises(ValueError, match="compile='step'"):
        with torch.no_grad():
            solve(prob, Tsit5(), compile="solve", trace=True, **kw)
    # torch 2.13 lifts a closure's ``a.T`` as a second input aliasing ``a``, which a while_loop refuses:
    # compile=True then runs the per-step graph, and says why.
    transposed = ODEProblem(lambda t, y: y @ a.T.T, prob.y0, prob.tspan)
    with torch.no_grad():
        sol = solve(transposed, Tsit5(), compile=True, **kw)
        again = solve(transposed, Tsit5(), compile=True, **kw)
    if sol.stats.graph == "step":
        assert "graph_fallback" in sol.stats.extra and again.stats.graph == "step"
        assert "graph_fallback" in again.stats.extra and again.stats.compiles == 0
    assert torch.allclose(sol.ys, eager.ys, rtol=1e-12, atol=1e-14)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sync_free_gpu_solve_has_no_host_sync_per_step():
    """Inside the loop nothing is read on the host between termination checks: with
    ``set_sync_debug_mode("error")`` around the attempts (the checks every ``sync_every`` attempts
    are the only syncs, and they are made outside that mode), a GPU solve runs through."""
    import solvers.stepping.device_loop as dl

    dev = torch.device("cuda")
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2)).to(dev)
    y0 = torch.randn(4096, 2, device=dev)
    prob = ODEProblem(lambda t, y: net(y), y0, (0.0, 5.0))
    kernel_calls = []
    orig = dl._call

    def strict(call, name, *args):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = orig(call, name, *args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        kernel_calls.append(1)
        return out

    dl._call = strict
    try:
        with torch.no_grad():
            sol = solve(prob, Tsit5(), sync_free=True, sync_every=8, saveat=torch.linspace(0, 5, 20).tolist())
            ref = solve(prob, Tsit5(), saveat=torch.linspace(0, 5, 20).tolist())
        sol_g = solve(prob, Tsit5(), sync_free=True, saveat=[5.0])
        sol_g.ys.pow(2).sum().backward()
    finally:
        dl._call = orig
    assert len(kernel_calls) >= sol.stats.naccept
    assert sol.retcode is ReturnCode.SUCCESS
    assert torch.allclose(sol.ys, ref.ys, rtol=1e-4, atol=1e-5)
    assert net[0].weight.grad is not None and bool(torch.isfinite(net[0].weight.grad).all())


def test_neural_ode_trains_on_the_sync_free_loop_with_a_regulariser():
    """``NeuralODE(solve_options={"sync_free": True})`` with ERNODE's global-error regulariser: the
    loss and its gradients equal the default loop's (same model, same data)."""
    from nde import NeuralODE
    from nde.regularization import GlobalError

    torch.manual_seed(0)
    field = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    y0 = torch.randn(8, 2, dtype=F64)
    ts = torch.linspace(0, 1, 5, dtype=F64)
    grads = []
    for opts in ({}, {"sync_free": True}):
        model = NeuralODE(lambda t, y: field(y), rtol=1e-6, atol=1e-8, solve_options=opts)
        reg = GlobalError(weight=0.1)
        ys = model(y0, ts, regularizer=reg)
        loss = ys.pow(2).mean() + model.reg_loss
        field.zero_grad()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in field.parameters()]))
        assert model.reg_loss is not None and float(model.reg_loss) > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-9)
