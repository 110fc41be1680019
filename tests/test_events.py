"""Events: detection, root location against exact times, direction, several events, bad input, and
the implicit-function-theorem gradient of the event time against exact derivatives and finite
differences."""

import math

import pytest
import sympy as sp
import torch
from torch import nn

from solvers import Dopri5, ODEProblem, ReturnCode, Tsit5, solve
from solvers.events import Event, EventRecord, EventTracker, brent_root
from solvers.ode.dense import DenseOutput

F64 = torch.float64
GRAV = 9.81


def _events_wired() -> bool:
    """Whether ``solve`` accepts ``events=`` (the step loop calls the tracker)."""
    prob = ODEProblem(lambda t, y: -y, torch.ones(1, dtype=F64), (0.0, 1.0))
    try:
        solve(prob, Tsit5(), events=Event(lambda t, y: y[0] - 0.5))
    except TypeError:
        return False
    return True


WIRED = _events_wired()
needs_loop = pytest.mark.skipif(not WIRED, reason="solve(..., events=) is not wired into the step loop yet "
                                "(solvers/stepping/loop.py does not call EventTracker)")


def step_by_hand(prob, events, method=None, dt=0.04):
    """Fixed steps of ``method().step`` fed to a tracker, with the method's own dense output on each
    step: (record, terminal hit). Independent of the step loop."""
    alg = method or Tsit5()
    y, t, t1 = prob.y0, prob.tspan[0], prob.tspan[1]
    d = 1.0 if t1 > t else -1.0
    co = alg.coefficients(y.dtype, y.device)
    tracker = EventTracker(events, t, y, d)
    f0 = None
    while (t1 - t) * d > 0:
        h = d * min(dt, abs(t1 - t))
        res = alg.step(prob.f, t, y, h, f0=f0)
        k, y_flat, t_old = res.k, y.reshape(-1), t

        def interp(s, k=k, y_flat=y_flat, t_old=t_old, h=h, shape=y.shape):
            return DenseOutput.evaluate_step(co.dense, y_flat, k, h, [(s - t_old) / h])[0].view(shape)

        t_new = t1 if abs(t1 - (t + h)) < 1e-12 * abs(dt) else t + h
        hit = tracker.check(t, y, t_new, res.y, interp, prob.f)
        if hit is not None:
            return tracker.results(), hit
        t, y, f0 = t_new, res.y, k[-1]
    return tracker.results(), None


def run(prob, events, method=None, driver=None, **opts):
    """Through ``solve(..., events=)`` once the loop calls the tracker, else (or with
    ``driver="by_hand"``) fixed steps by hand."""
    if driver == "by_hand" or not WIRED:
        return step_by_hand(prob, events, method, dt=opts.get("dt", 0.04))
    opts.setdefault("rtol", 1e-10)
    opts.setdefault("atol", 1e-12)
    sol = solve(prob, method or Tsit5(), events=events, **opts)
    terminal = [h for h in sol.events.hits if h.terminal]
    assert (sol.retcode is ReturnCode.EVENT) == bool(terminal)
    return sol.events, terminal[0] if terminal else None


@pytest.fixture(params=["solve", "by_hand"])
def driver(request):
    if request.param == "solve" and not WIRED:
        pytest.skip("solve(..., events=) is not wired into the step loop yet")
    return request.param


def ball(h, grav=GRAV, t1=5.0, dtype=F64):
    """Free fall y = (height, velocity) from rest at height ``h``."""
    h = torch.as_tensor(h, dtype=dtype)
    grav = torch.as_tensor(grav, dtype=dtype)

    def f(t, y):
        return torch.stack([y[1], -grav * torch.ones_like(y[1])])

    return ODEProblem(f, torch.stack([h, torch.zeros_like(h)]), (0.0, t1))


GROUND = Event(lambda t, y: y[0], direction=-1)


def oscillator(t1=13.0):
    """y = (sin t, cos t)."""
    return ODEProblem(lambda t, y: torch.stack([y[1], -y[0]]), torch.tensor([0.0, 1.0], dtype=F64), (0.0, t1))


def feed(tracker, grid, exact, f=lambda t, y: torch.ones_like(y)):
    """Feed the tracker steps along ``grid`` with the exact solution as the dense output."""
    hits = []
    for a, b in zip(grid[:-1], grid[1:]):
        hit = tracker.check(a, exact(a), b, exact(b), exact, f)
        if hit is not None:
            hits.append(hit)
            break
    return hits


# -- root location ---------------------------------------------------------------------------------
def test_brent_root_to_machine_precision():
    root, val, nev = brent_root(lambda x: math.cos(x) - x, 0.0, 1.0, 1.0, math.cos(1.0) - 1.0, xtol=4e-16)
    assert abs(root - 0.7390851332151607) < 4e-16 and nev < 12
    # The root returned is on b's side: phi already has b's sign (or is zero).
    assert val <= 0 and math.cos(root) - root <= 0
    with pytest.raises(ValueError, match="sign change"):
        brent_root(math.cos, 0.0, 1.0, 1.0, math.cos(1.0), xtol=1e-12)


@pytest.mark.parametrize("rtol", [1e-4, 1e-7, 1e-10])
def test_exponential_decay_crosses_half_at_ln2(rtol):
    prob = ODEProblem(lambda t, y: -y, torch.ones(1, dtype=F64), (0.0, 5.0))
    rec, hit = run(prob, Event(lambda t, y: y[0] - 0.5), rtol=rtol, atol=rtol * 1e-2)
    assert hit is not None and hit.terminal and hit.index == 0
    # The event time is as good as the solution: |dt| = |dy| / |y'| = 2 |dy| with |dy| ~ rtol.
    assert abs(hit.t_float - math.log(2)) < 20 * rtol
    assert float(hit.t) == hit.t_float and hit.t.dtype == F64 and hit.t.dim() == 0
    assert len(rec) == 1 and rec.t.shape == (1,) and rec.y.shape == (1, 1) and rec.index.tolist() == [0]


def test_falling_ball_hits_the_ground_at_sympy_time(driver):
    h, g, t = sp.symbols("h g t", positive=True)
    height = h - g * t**2 / 2
    t_hit = sp.solve(sp.Eq(height, 0), t)[0]
    assert sp.simplify(t_hit - sp.sqrt(2 * h / g)) == 0
    exact = float(t_hit.subs({h: 3, g: sp.Rational(981, 100)}))
    rec, hit = run(ball(3.0), GROUND, driver=driver, rtol=1e-6, atol=1e-8)
    # The solution is a quadratic, which Tsit5 and its dense output reproduce: only root-finding error.
    assert abs(hit.t_float - exact) < 1e-13
    assert abs(float(hit.y[0])) < 1e-12 and abs(float(hit.y[1]) + GRAV * exact) < 1e-11


@pytest.mark.parametrize("method", [Tsit5, Dopri5])
def test_time_dependent_condition(method):
    # y = exp(-t) meets 0.5 t at t = W(2) (Lambert W); dg/dt = -0.5 enters the location and gradient.
    exact = float(sp.LambertW(2))
    prob = ODEProblem(lambda t, y: -y, torch.ones(1, dtype=F64), (0.0, 5.0))
    _, hit = run(prob, Event(lambda t, y: y[0] - 0.5 * t), method=method())
    assert abs(hit.t_float - exact) < 1e-9
    _, hit = run(prob, Event(lambda t, y: t - 1.5))
    assert hit.t_float == pytest.approx(1.5, abs=1e-14)


# -- direction, several events, counting -----------------------------------------------------------
@pytest.mark.parametrize("direction, expected", [(1, [2, 4]), (-1, [1, 3]), (0, [1, 2, 3, 4])])
def test_direction_filters_crossings(direction, expected, driver):
    # sin t is zero at t0 = 0 (not an event), then crosses at k pi: falling at odd k, rising at even k.
    rec, hit = run(oscillator(), Event(lambda t, y: y[0], terminal=False, direction=direction), driver=driver)
    assert hit is None and not rec.terminal.any()
    torch.testing.assert_close(rec.t, torch.tensor(expected, dtype=F64) * math.pi, atol=1e-9, rtol=0)
    torch.testing.assert_close(rec.y[:, 0], torch.zeros(len(expected), dtype=F64), atol=1e-9, rtol=0)


def test_terminal_after_count_occurrences():
    rec, hit = run(oscillator(), Event(lambda t, y: y[0], count=3))
    assert hit is not None and hit.t_float == pytest.approx(3 * math.pi, abs=1e-9)
    assert rec.terminal.tolist() == [False, False, True] and len(rec) == 3


def test_several_events_recorded_earliest_first(driver):
    events = [Event(lambda t, y: y[0] - 0.9, terminal=False),   # cos: after 2 pi
              Event(lambda t, y: y[1] - 0.5, terminal=False),   # cos t = 0.5 at pi/3, 5 pi/3
              Event(lambda t, y: y[0] + 0.5, direction=-1)]      # sin t = -0.5 at 7 pi/6: stops
    rec, hit = run(oscillator(), events, driver=driver)
    assert hit.index == 2 and hit.t_float == pytest.approx(7 * math.pi / 6, abs=1e-9)
    # sin = 0.9 at asin(0.9) and pi - asin(0.9); cos = 0.5 at pi/3; nothing after 7 pi / 6.
    a = math.asin(0.9)
    want = sorted([(a, 0), (math.pi / 3, 1), (math.pi - a, 0), (7 * math.pi / 6, 2)])
    torch.testing.assert_close(rec.t, torch.tensor([w[0] for w in want], dtype=F64), atol=1e-9, rtol=0)
    assert rec.index.tolist() == [w[1] for w in want]
    assert len(rec.of(0)) == 2 and rec.of(1).t.shape == (1,)


def test_several_events_in_one_step():
    # y' = 1 on one big step 0 -> 1: four roots inside it, in reverse index order.
    exact = lambda t: torch.tensor([t], dtype=F64)  # noqa: E731
    events = [Event(lambda t, y: y[0] - 0.8, terminal=False),
              Event(lambda t, y: y[0] - 0.6),              # terminal: stops here
              Event(lambda t, y: y[0] - 0.4),              # terminal and earlier: wins
              Event(lambda t, y: y[0] - 0.2, terminal=False)]
    tr = EventTracker(events, 0.0, exact(0.0), 1.0)
    (hit,) = feed(tr, [0.0, 1.0], exact)
    assert hit.index == 2 and hit.t_float == pytest.approx(0.4, abs=1e-15)
    rec = tr.results()
    assert rec.index.tolist() == [3, 2] and rec.terminal.tolist() == [False, True]
    with pytest.raises(RuntimeError, match="already stopped"):
        tr.check(1.0, exact(1.0), 2.0, exact(2.0), exact, lambda t, y: torch.ones_like(y))


def test_root_on_a_step_end_counts_once_and_zero_at_t0_is_not_an_event():
    exact = lambda t: torch.tensor([t], dtype=F64)  # noqa: E731
    events = [Event(lambda t, y: y[0] - 0.5, terminal=False),  # exactly zero at the end of step 2
              Event(lambda t, y: y[0], terminal=False),        # zero at t0, then positive
              Event(lambda t, y: (y[0] - 0.25) ** 2, terminal=False)]  # touches zero at a step end
    tr = EventTracker(events, 0.0, exact(0.0), 1.0)
    assert feed(tr, [0.0, 0.25, 0.5, 0.75, 1.0], exact) == []
    rec = tr.results()
    # The touch at 0.25 is g reaching exactly zero at a step end: one hit (as scipy, which counts g = 0).
    assert rec.index.tolist() == [2, 0] and rec.t.tolist() == [0.25, 0.5]
    assert rec.hits[1].y.tolist() == [0.5]  # the propagated state, not an interpolated one


def test_grazing_and_double_roots_in_one_step_are_missed():
    # Documented limitation (as scipy): no sign change between the step ends, no event.
    exact = lambda t: torch.tensor([t], dtype=F64)  # noqa: E731
    events = [Event(lambda t, y: (y[0] - 0.4) * (y[0] - 0.6), terminal=False),
              Event(lambda t, y: -((y[0] - 0.3) ** 2), terminal=False)]
    tr = EventTracker(events, 0.0, exact(0.0), 1.0)
    feed(tr, [0.0, 1.0], exact)
    assert len(tr.results()) == 0
    # With smaller steps both roots of the first condition are found, the graze still is not.
    tr = EventTracker(events, 0.0, exact(0.0), 1.0)
    feed(tr, [0.0, 0.5, 1.0], exact)
    assert tr.results().t.tolist() == pytest.approx([0.4, 0.6], abs=1e-15)


def test_backward_integration_direction_is_in_integration_order(driver):
    # y = exp(-t) integrated from 0 down to -2 grows through 2 at t = -ln 2.
    prob = ODEProblem(lambda t, y: -y, torch.ones(1, dtype=F64), (0.0, -2.0))
    _, hit = run(prob, Event(lambda t, y: y[0] - 2.0, direction=1), driver=driver)
    assert hit.t_float == pytest.approx(-math.log(2), abs=1e-9)
    rec, hit = run(prob, Event(lambda t, y: y[0] - 2.0, direction=-1), driver=driver)
    assert hit is None and len(rec) == 0


def test_empty_record_keeps_shape_dtype_device():
    rec, hit = run(oscillator(1.0), Event(lambda t, y: y[0] - 5.0))
    assert hit is None and isinstance(rec, EventRecord)
    assert rec.t.shape == (0,) and rec.t.dtype == F64 and rec.y.shape == (0, 2)
    assert rec.index.dtype == torch.int64


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, err, match", [
    ({"condition": 3.0}, TypeError, "callable"),
    ({"direction": 2}, ValueError, "direction"),
    ({"direction": True}, ValueError, "direction"),
    ({"count": 0}, ValueError, "count"),
    ({"count": 1.5}, ValueError, "count"),
    ({"terminal": 2}, TypeError, "terminal"),
    ({"xtol": -1.0}, ValueError, "xtol"),
    ({"xtol": "tight"}, TypeError, "xtol"),
])
def test_bad_event(kwargs, err, match):
    args = {"condition": lambda t, y: y[0], **kwargs}
    with pytest.raises(err, match=match):
        Event(**args)


@pytest.mark.parametrize("cond, err, match", [
    (lambda t, y: y, ValueError, "0-d"),
    (lambda t, y: 1.0, TypeError, "must return a tensor"),
    (lambda t, y: (y[0] > 0).long(), TypeError, "real floating"),
    (lambda t, y: y[0] / 0.0, ValueError, "finite"),
])
def test_bad_condition_is_caught_at_t0(cond, err, match):
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    with pytest.raises(err, match=match):
        EventTracker(Event(cond), 0.0, y0, 1.0)


def test_bad_tracker_arguments():
    y0 = torch.ones(1, dtype=F64)
    ev = Event(lambda t, y: y[0])
    with pytest.raises(ValueError, match="empty"):
        EventTracker([], 0.0, y0, 1.0)
    with pytest.raises(TypeError, match="must be an Event"):
        EventTracker([lambda t, y: y[0]], 0.0, y0, 1.0)
    with pytest.raises(TypeError, match="sequence of Events"):
        EventTracker(lambda t, y: y[0], 0.0, y0, 1.0)
    with pytest.raises(ValueError, match="direction"):
        EventTracker(ev, 0.0, y0, 0.0)
    with pytest.raises(TypeError, match="floating"):
        EventTracker(ev, 0.0, torch.ones(1, dtype=torch.long), 1.0)
    tr = EventTracker(ev, 0.0, y0, 1.0)
    ident = lambda t: y0  # noqa: E731
    with pytest.raises(ValueError, match="contiguous"):
        tr.check(0.5, y0, 1.0, y0, ident, lambda t, y: y)
    with pytest.raises(ValueError, match="against the direction"):
        tr.check(0.0, y0, -1.0, y0, ident, lambda t, y: y)


# -- gradients -------------------------------------------------------------------------------------
def _hit_time(h, grav, **opts):
    _, hit = run(ball(h, grav), GROUND, **opts)
    return hit


def test_event_time_gradient_matches_exact_derivatives(driver):
    h = torch.tensor(2.0, dtype=F64, requires_grad=True)
    grav = torch.tensor(GRAV, dtype=F64, requires_grad=True)
    hit = _hit_time(h, grav, driver=driver, rtol=1e-8, atol=1e-10)
    dt_dh, dt_dg = torch.autograd.grad(hit.t, (h, grav), retain_graph=True)
    # t* = sqrt(2h/g): dt/dh = 1/sqrt(2 h g), dt/dg = -sqrt(2h) g^(-3/2) / 2.
    assert float(dt_dh) == pytest.approx(1 / math.sqrt(2 * 2.0 * GRAV), rel=1e-9)
    assert float(dt_dg) == pytest.approx(-math.sqrt(2 * 2.0) * GRAV**-1.5 / 2, rel=1e-9)
    # The impact velocity v* = -g t* = -sqrt(2 g h): at a fixed time v would not depend on h at all,
    # so this checks the f dt*/dtheta term of the event state.
    dv_dh, = torch.autograd.grad(hit.y[1], h)
    assert float(dv_dh) == pytest.approx(-math.sqrt(GRAV / (2 * 2.0)), rel=1e-9)


def test_event_time_gradient_of_a_neural_field_matches_finite_differences():
    torch.manual_seed(0)
    net = nn.Linear(2, 2).to(F64)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[-0.3, 1.0], [-1.0, -0.2]]))
        net.bias.copy_(torch.tensor([0.1, -0.05]))
    prob = ODEProblem(lambda t, y: net(y), torch.tensor([1.0, 0.0], dtype=F64), (0.0, 10.0))
    ev = Event(lambda t, y: y[0], direction=-1)
    _, hit = run(prob, ev)
    params = list(net.parameters())
    grads = torch.autograd.grad(hit.t, params)
    eps = 1e-5
    for p, gp in zip(params, grads):
        for j in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[j] += eps
                tp = run(prob, ev)[1].t_float
                p.view(-1)[j] -= 2 * eps
                tm = run(prob, ev)[1].t_float
                p.view(-1)[j] += eps
            fd = (tp - tm) / (2 * eps)
            assert float(gp.view(-1)[j]) == pytest.approx(fd, rel=1e-5, abs=1e-7)


def test_gradient_of_a_condition_parameter():
    # A ground at height c: t* = sqrt(2 (h - c) / g), dt*/dc = -1 / sqrt(2 (h - c) g).
    c = torch.tensor(0.5, dtype=F64, requires_grad=True)
    _, hit = run(ball(2.0), Event(lambda t, y: y[0] - c, direction=-1), rtol=1e-8)
    (dc,) = torch.autograd.grad(hit.t, c)
    assert float(dc) == pytest.approx(-1 / math.sqrt(2 * 1.5 * GRAV), rel=1e-9)


def test_gradcheck_on_fixed_steps():
    # Fixed steps make t*(theta) smooth (adaptive steps jump with theta), so gradcheck applies.
    def event_time(y0, k):
        prob = ODEProblem(lambda t, y: -k * y, y0, (0.0, 3.0))
        _, hit = run(prob, Event(lambda t, y: y[0] - 0.5), dt=0.1)
        return hit.t

    y0 = torch.tensor([1.3], dtype=F64, requires_grad=True)
    k = torch.tensor(0.8, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(event_time, (y0, k), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_no_graph_when_nothing_requires_grad():
    _, hit = run(ball(2.0), GROUND)
    assert not hit.t.requires_grad and not hit.y.requires_grad
    h = torch.tensor(2.0, dtype=F64, requires_grad=True)
    with torch.no_grad():
        _, hit = run(ball(h), GROUND)
    assert not hit.t.requires_grad


def test_float32(driver):
    h = torch.tensor(2.0, requires_grad=True)
    rec, hit = run(ball(h, dtype=torch.float32), GROUND, driver=driver, rtol=1e-5, atol=1e-6)
    exact = math.sqrt(2 * 2.0 / GRAV)
    assert hit.t.dtype == F64 and hit.y.dtype == torch.float32 and rec.y.dtype == torch.float32
    assert abs(hit.t_float - exact) < 1e-6
    (dh,) = torch.autograd.grad(hit.t, h)
    assert float(dh) == pytest.approx(1 / math.sqrt(2 * 2.0 * GRAV), rel=1e-5)


@pytest.mark.gpu
def test_cuda():
    h = torch.tensor(2.0, device="cuda", requires_grad=True)
    rec, hit = run(ball(h.to("cuda"), torch.tensor(GRAV, device="cuda"), dtype=torch.float32), GROUND,
                   rtol=1e-5, atol=1e-6)
    assert hit.t.device.type == "cuda" and rec.y.device.type == "cuda"
    assert abs(hit.t_float - math.sqrt(2 * 2.0 / GRAV)) < 1e-6
    (dh,) = torch.autograd.grad(hit.t, h)
    assert float(dh) == pytest.approx(1 / math.sqrt(2 * 2.0 * GRAV), rel=1e-5)


# -- end to end through solve(..., events=) -----------------------------------------------------------
@needs_loop
def test_solve_stops_at_a_terminal_event():
    sol = solve(ball(2.0), Tsit5(), rtol=1e-8, atol=1e-10, events=GROUND)
    exact = math.sqrt(2 * 2.0 / GRAV)
    assert sol.retcode is ReturnCode.EVENT and sol.success
    assert sol.t_final == pytest.approx(exact, abs=1e-12)
    assert float(sol.ts[-1]) == pytest.approx(exact, abs=1e-12)
    assert abs(float(sol.y_final[0])) < 1e-12
    assert isinstance(sol.events, EventRecord) and sol.events.index.tolist() == [0]


@needs_loop
def test_solve_records_non_terminal_events_and_runs_to_the_end():
    sol = solve(oscillator(), Tsit5(), rtol=1e-10, atol=1e-12,
                events=[Event(lambda t, y: y[0], terminal=False, direction=1)])
    assert sol.retcode is ReturnCode.SUCCESS
    torch.testing.assert_close(sol.events.t, torch.tensor([2.0, 4.0], dtype=F64) * math.pi, atol=1e-9, rtol=0)


@needs_loop
def test_solve_event_time_gradient():
    h = torch.tensor(2.0, dtype=F64, requires_grad=True)
    sol = solve(ball(h), Tsit5(), rtol=1e-8, atol=1e-10, events=GROUND)
    (dh,) = torch.autograd.grad(sol.events.t[0], h)
    assert float(dh) == pytest.approx(1 / math.sqrt(2 * 2.0 * GRAV), rel=1e-9)


@needs_loop
def test_solve_rejects_bad_events():
    with pytest.raises(TypeError):
        solve(ball(2.0), Tsit5(), events=[lambda t, y: y[0]])


@needs_loop
def test_solve_truncates_saves_and_dense_output_at_the_event():
    exact = math.sqrt(2 * 2.0 / GRAV)
    sol = solve(ball(2.0), Tsit5(), rtol=1e-8, atol=1e-10, saveat=[0.1, 0.5, 0.6, 1.0], events=GROUND)
    assert sol.ts.tolist() == [0.1, 0.5, 0.6]  # nothing past the event at 0.6386
    lo, hi = sol.interpolant.span
    assert hi == pytest.approx(exact, abs=1e-12)
    with pytest.raises(ValueError, match="outside"):
        sol(0.7)


@needs_loop
@pytest.mark.parametrize("method, opts", [(Tsit5, {"dt": 0.05}), ("RK4", {"dt": 0.05}), ("Bosh3", {})])
def test_solve_events_with_fixed_steps_and_other_methods(method, opts):
    import solvers

    alg = getattr(solvers, method)() if isinstance(method, str) else method()
    opts = {"rtol": 1e-8, "atol": 1e-10, **opts}
    sol = solve(ball(2.0), alg, events=GROUND, **opts)
    assert sol.retcode is ReturnCode.EVENT
    # A quadratic: every method of order >= 2 with its dense output is exact up to rounding.
    assert sol.t_final == pytest.approx(math.sqrt(2 * 2.0 / GRAV), abs=1e-10)


def test_tangential_crossing_warns_and_returns_no_gradient():
    # g = (t - 1)^3 crosses zero at t = 1 with dg/dt = 0 there: the IFT denominator vanishes.
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    exact = lambda t: y0 * 1.0  # noqa: E731
    tr = EventTracker(Event(lambda t, y: (t - 1) ** 3 + 0 * y[0]), 0.0, exact(0.0), 1.0)
    with pytest.warns(RuntimeWarning, match="tangential"):
        (hit,) = feed(tr, [0.0, 2.0], exact, f=lambda t, y: torch.zeros_like(y))
    assert hit.t_float == 1.0 and not hit.t.requires_grad


def test_vector_field_evaluations_are_counted():
    h = torch.tensor(2.0, dtype=F64, requires_grad=True)
    prob = ball(h)
    tr = EventTracker(GROUND, 0.0, prob.y0, 1.0)
    t_hit = math.sqrt(2 * 2.0 / GRAV)

    def exact(t):
        return torch.stack([h - GRAV * t**2 / 2, torch.full_like(h, -GRAV * t)])

    (hit,) = feed(tr, [0.0, 0.5, 1.0], exact, f=prob.f)
    assert hit.t_float == pytest.approx(t_hit, abs=1e-14) and tr.nfe == 1 and tr.nfe_condition > 3


def test_events_need_backprop():
    from solvers import BacksolveAdjoint, CheckpointAdjoint

    w = torch.ones(1, dtype=torch.float64, requires_grad=True)
    p = ODEProblem(lambda t, y: -w * y, torch.ones(1, dtype=torch.float64), (0.0, 2.0))
    ev = Event(lambda t, y: y[0] - 0.5)
    for adj in (BacksolveAdjoint(params=[w]), CheckpointAdjoint(2, params=[w])):
        with pytest.raises(ValueError, match="Backprop"):
            solve(p, Tsit5(), adjoint=adj, events=ev)
