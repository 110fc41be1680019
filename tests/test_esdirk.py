"""ESDIRK methods (Kvaerno3, Kvaerno5): tableaux, observed orders, adaptive stiff solves against
scipy's Radau, the simplified Newton iteration (divergence, Jacobian reuse, singular matrices),
implicit-function-theorem gradients, per-sample batches, dense output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch
from torch.autograd import gradcheck

from solvers import ODEProblem, ReturnCode, solve
from solvers.ode.esdirk import (
    KVAERNO3,
    KVAERNO5,
    ESDIRKTableau,
    Kvaerno3,
    Kvaerno5,
    order_residuals,
    rooted_trees,
    stability_function,
)
from solvers.reference import ode_from_sympy, problem

METHODS = (Kvaerno3, Kvaerno5)
F64 = torch.float64


# -- problems -------------------------------------------------------------------------------------
_t = sp.Symbol("t", real=True)
_y1, _y2 = sp.Function("y1"), sp.Function("y2")


def stiff_linear(lam: int = -1000, stiff_forcing: bool = False) -> ODEProblem:
    """``y' = A y + g(t)`` with eigenvalues ``-1`` (eigenvector (1, 1)) and ``lam`` ((1, -1)).

    The slow mode follows ``cos t + e^-t``. The stiff mode is a free transient ``e^(lam t)``
    (``stiff_forcing=False``: the forcing drives the slow mode only), or is forced to follow ``sin t``
    (Prothero-Robinson type: the smooth solution has a component along the stiff eigenvector,
    the setting of order reduction, Hairer & Wanner II, IV.15)."""
    L = sp.Integer(lam)
    A = sp.Matrix([[(-1 + L) / 2, (-1 - L) / 2], [(-1 - L) / 2, (-1 + L) / 2]])
    slow = sp.cos(_t) + sp.exp(-_t)
    fast = sp.sin(_t) if stiff_forcing else sp.exp(L * _t)
    u = sp.Matrix([slow + fast, slow - fast])
    g = sp.simplify(u.diff(_t) - A * u)
    rhs = list(A * sp.Matrix([_y1(_t), _y2(_t)]) + g)
    y0 = [sp.simplify(c.subs(_t, 0)) for c in u]
    return ode_from_sympy(rhs, [_y1, _y2], _t, y0, (0.0, 2.0), solution=list(u),
                          name=f"stiff_linear({lam}, {'PR' if stiff_forcing else 'transient'})")


def vdp_f(mu):
    def f(t, y):
        m = mu if not isinstance(mu, torch.Tensor) else mu.to(y)[..., 0]
        return torch.stack([y[..., 1], m * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], -1)
    return f


def vdp_jac(mu: torch.Tensor):
    def jac(t, y):
        x, v, m = y[..., 0], y[..., 1], mu.to(y)[..., 0]
        return torch.stack([torch.stack([torch.zeros_like(x), torch.ones_like(x)], -1),
                            torch.stack([-2 * m * x * v - 1, m * (1 - x**2)], -1)], -2)
    return jac


def robertson_f(t, y):
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    return torch.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2], -1)


def _np(f):
    return lambda t, y: f(torch.tensor(t, dtype=F64), torch.as_tensor(y, dtype=F64)).numpy()


def fixed_errors(p: ODEProblem, method, dts: list[float]) -> list[float]:
    """End-point max errors of fixed-step solves; Newton converged to rounding (tight rtol/atol)."""
    exact = p.analytic(torch.tensor(p.tspan[1], dtype=F64))
    return [float((solve(p, method(max_newton_iters=50), dt=dt, rtol=1e-13, atol=1e-13).ys[-1] - exact)
                  .abs().max()) for dt in dts]


def orders(errs: list[float], dts: list[float]) -> list[float]:
    return [math.log(errs[i] / errs[i + 1]) / math.log(dts[i] / dts[i + 1]) for i in range(len(dts) - 1)]


# -- tableaux ---------------------------------------------------------------------------------------
def test_rooted_tree_counts():
    assert [len(v) for v in rooted_trees(6).values()] == [1, 1, 2, 4, 9, 20]


@pytest.mark.parametrize("tab", [KVAERNO3, KVAERNO5], ids=lambda t: t.name)
def test_tableau_facts(tab):
    a, b, bh = np.asarray(tab.a), np.asarray(tab.b), np.asarray(tab.bhat)
    # Every order condition up to the order holds; some of the next order fails (the order is exact).
    res = order_residuals(b, a, tab.order + 1)
    n_up_to = sum(len(v) for k, v in rooted_trees(tab.order).items())
    assert max(abs(r) for _, r in res[:n_up_to]) < 1e-14
    assert max(abs(r) for _, r in res[n_up_to:]) > 1e-4
    res_h = order_residuals(bh, a, tab.embedded_order + 1)
    n_h = sum(len(v) for k, v in rooted_trees(tab.embedded_order).items())
    assert max(abs(r) for _, r in res_h[:n_h]) < 1e-14
    assert max(abs(r) for _, r in res_h[n_h:]) > 1e-4
    assert np.allclose(a.sum(1), tab.c, atol=1e-15, rtol=0)
    assert np.array_equal(a[-1], b) and tab.c[-1] == 1.0      # stiffly accurate
    assert np.array_equal(a[-2], bh) and tab.c[-2] == 1.0     # embedded: stage s-1
    assert tab.stage_order == 2                               # explicit first stage: at most 2
    p, q = stability_function(a, b)
    s = tab.stages
    assert abs(p[s]) < 1e-14 and abs(p[s - 1] / q[s - 1]) < 1e-14  # R(-inf) = 0: L-stable
    ys = np.logspace(-3, 6, 2000)
    assert np.abs(np.polyval(p[::-1], 1j * ys) / np.polyval(q[::-1], 1j * ys)).max() <= 1 + 1e-13
    assert tab.dense_poly.shape == (s, 4)
    # Hermite weights at theta = 1 reproduce b; their derivative at 0 and 1 picks k_1 and k_s.
    assert np.allclose(tab.dense_poly.sum(1), b)
    assert tab.gamma == (0.26 if tab is KVAERNO5 else pytest.approx(0.435866521508459, abs=1e-15))


def _fields(tab: ESDIRKTableau, **changes):
    f = dict(a=tab.a, b=tab.b, c=tab.c, bhat=tab.bhat, order=tab.order, embedded_order=tab.embedded_order,
             predictor=tab.predictor, name=tab.name)
    f.update(changes)
    return f


def test_perturbed_coefficients_refused():
    a = [list(r) for r in KVAERNO5.a]
    # One entry moved, compensated in its row (row sum kept): an order condition breaks.
    a[4][1] += 1e-7
    a[4][2] -= 1e-7
    a = tuple(tuple(r) for r in a)
    with pytest.raises(ValueError, match="order condition"):
        ESDIRKTableau(**_fields(KVAERNO5, a=a, b=a[6], bhat=a[5]))
    # A row that no longer sums to c.
    a2 = [list(r) for r in KVAERNO5.a]
    a2[3][0] += 1e-9
    with pytest.raises(ValueError, match="sums to"):
        ESDIRKTableau(**_fields(KVAERNO5, a=tuple(tuple(r) for r in a2)))
    # Kvaerno3 with gamma off the cubic's root: still order 3, but no longer L-stable.
    g = KVAERNO3.gamma + 1e-6
    a31, a32 = (-4 * g**2 + 6 * g - 1) / (4 * g), (-2 * g + 1) / (4 * g)
    a41, a42, a43 = (6 * g - 1) / (12 * g), -1 / ((24 * g - 12) * g), (-6 * g**2 + 6 * g - 1) / (6 * g - 3)
    a3 = ((0, 0, 0, 0), (g, g, 0, 0), (a31, a32, g, 0), (a41, a42, a43, g))
    with pytest.raises(ValueError, match="R\\(-inf\\)"):
        ESDIRKTableau(**_fields(KVAERNO3, a=a3, b=a3[3], bhat=a3[2], c=(0.0, 2 * g, 1.0, 1.0),
                                predictor=((1.0,), (1 - 1 / (2 * g), 1 / (2 * g)), (a31, a32, g))))
    # A predictor row not summing to one; a non-constant diagonal.
    with pytest.raises(ValueError, match="predictor"):
        ESDIRKTableau(**_fields(KVAERNO3, predictor=((1.0,), (0.5, 0.4), KVAERNO3.predictor[2])))
    a4 = [list(r) for r in KVAERNO3.a]
    a4[2][2] += 1e-3
    a4[2][0] -= 1e-3
    with pytest.raises(ValueError, match="diagonal"):
        ESDIRKTableau(**_fields(KVAERNO3, a=tuple(tuple(r) for r in a4)))
    # The shipped tableau rebuilt from its own fields passes.
    ESDIRKTableau(**_fields(KVAERNO5))


# -- observed orders, fixed steps ----------------------------------------------------------------------
DTS = [0.2, 0.1, 0.05, 0.025]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_order_stiff_linear(method):
    """Eigenvalues -1 and -1000 (dt |lambda| = 25..200: the stiff regime), forcing in the slow mode,
    a stiff transient from y0. Measured: Kvaerno3 2.85, 2.93, 2.96; Kvaerno5 4.95, 4.97, 4.99."""
    p = stiff_linear()
    obs = orders(fixed_errors(p, method, DTS), DTS)
    print(method.__name__, "stiff linear observed orders", [f"{o:.2f}" for o in obs])
    assert all(abs(o - method.tableau.order) <= 0.3 for o in obs), obs


def test_order_reduction_prothero_robinson():
    """The smooth solution has a component along the stiff eigenvector (lambda = -1000): Kvaerno3
    keeps order 3 (its stage order 2 + 1 = 3), Kvaerno5 drops to about its stage order (measured
    2.15, 2.11, 2.32): order reduction, as for every method of stage order 2 (Hairer & Wanner II,
    IV.15). Its error is still below Kvaerno3's at every dt."""
    p = stiff_linear(stiff_forcing=True)
    e3, e5 = fixed_errors(p, Kvaerno3, DTS), fixed_errors(p, Kvaerno5, DTS)
    o3, o5 = orders(e3, DTS), orders(e5, DTS)
    print("Prothero-Robinson observed orders: Kvaerno3", [f"{o:.2f}" for o in o3], "Kvaerno5",
          [f"{o:.2f}" for o in o5])
    assert all(abs(o - 3) <= 0.3 for o in o3), o3
    assert all(1.7 <= o <= 3.3 for o in o5), o5
    assert all(x5 < x3 for x3, x5 in zip(e3, e5))


@pytest.mark.parametrize("method, dts", [(Kvaerno3, [0.25, 0.125, 0.0625]),
                                         (Kvaerno5, [0.125, 0.0625, 0.03125])], ids=["Kvaerno3", "Kvaerno5"])
def test_order_logistic(method, dts):
    """Non-stiff nonlinear reference. Measured: Kvaerno3 3.12, 3.06 (3.03 next); Kvaerno5 5.27, 5.18
    (from 5.71 at dt = 0.5: its asymptotic regime starts near dt = 0.1)."""
    obs = orders(fixed_errors(problem("logistic"), method, dts), dts)
    print(method.__name__, "logistic observed orders", [f"{o:.2f}" for o in obs])
    assert all(abs(o - method.tableau.order) <= 0.3 for o in obs), obs


# -- adaptive stiff solves against scipy's Radau -----------------------------------------------------------
#: End values from scipy's Radau (``solve_ivp(..., method="Radau", rtol=1e-12, atol=1e-12`` (Robertson:
#: ``1e-16``), with the exact Jacobian); ``test_stored_references`` recomputes them at rtol 1e-10.
REFERENCES = {
    "vdp100": ([2.0, 0.0], (0.0, 200.0), [1.7185872080197007, -0.008796821912414992]),
    "robertson": ([1.0, 0.0, 0.0], (0.0, 1e5),
                  [0.017865921142322477, 7.274751468528753e-08, 0.9821340061101634]),
}


def _radau(f, y0, span, rtol, atol):
    from scipy.integrate import solve_ivp

    return solve_ivp(_np(f), span, y0, method="Radau", rtol=rtol, atol=atol)


def _compare_radau(f, y0, span, ref, method, rtol, atol, **kw):
    ref = np.asarray(ref)
    radau = _radau(f, y0, span, rtol, atol)  # the work scipy's Radau needs at the same tolerance
    sol = solve(ODEProblem(f, torch.tensor(y0, dtype=F64), span), method(**kw), rtol=rtol, atol=atol)
    tol = rtol * np.abs(ref) + atol
    ratio = float((np.abs(sol.ys[-1].numpy() - ref) / tol).max())
    radau_ratio = float((np.abs(radau.y[:, -1] - ref) / tol).max())
    e = sol.stats.extra
    print(f"{method.__name__}: {sol.stats.naccept} steps + {sol.stats.nreject} rejected, "
          f"nfe {sol.stats.nfe}, njac {e['njac']}, nfact {e['nfact']}, nsolve {e['nsolve']}, "
          f"Newton {e['nnewton']}, failures {e['nconvfail']}; error {ratio:.3g} x tol | scipy Radau: "
          f"{len(radau.t) - 1} steps, nfev {radau.nfev}, njev {radau.njev}, nlu {radau.nlu}; "
          f"error {radau_ratio:.3g} x tol")
    assert sol.retcode is ReturnCode.SUCCESS
    assert ratio <= 10, ratio
    assert e["njac"] < sol.stats.naccept  # the Jacobian is reused across steps
    assert e["nfact"] < e["nsolve"]
    return sol


def test_adaptive_van_der_pol_mu100():
    _compare_radau(vdp_f(100.0), *REFERENCES["vdp100"], Kvaerno5, 1e-6, 1e-8)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_adaptive_robertson(method):
    _compare_radau(robertson_f, *REFERENCES["robertson"], method, 1e-6, 1e-10)


@pytest.mark.slow
def test_adaptive_van_der_pol_mu100_kvaerno3():
    _compare_radau(vdp_f(100.0), *REFERENCES["vdp100"], Kvaerno3, 1e-6, 1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_adaptive_van_der_pol_mu1000(method):
    """``mu = 1000`` over two relaxation transitions; reference computed here (rtol 1e-10)."""
    y0, span = [2.0, 0.0], (0.0, 3000.0)
    ref = _radau(vdp_f(1000.0), y0, span, 1e-10, 1e-12).y[:, -1]
    _compare_radau(vdp_f(1000.0), y0, span, ref, method, 1e-6, 1e-8)


@pytest.mark.slow
def test_stored_references():
    for name, f in (("vdp100", vdp_f(100.0)), ("robertson", robertson_f)):
        y0, span, ref = REFERENCES[name]
        got = _radau(f, y0, span, 1e-10, 1e-12 if name == "vdp100" else 1e-16).y[:, -1]
        assert np.allclose(got, ref, rtol=1e-8, atol=1e-15)


def test_jacobian_reuse_rule_matters():
    """``jac_theta = 0`` takes a new Jacobian every step; the default reuses it."""
    p = ODEProblem(robertson_f, torch.tensor([1.0, 0.0, 0.0], dtype=F64), (0.0, 1e3))
    every = solve(p, Kvaerno5(jac_theta=0.0), rtol=1e-6, atol=1e-10)
    reuse = solve(p, Kvaerno5(), rtol=1e-6, atol=1e-10)
    assert every.stats.extra["njac"] >= every.stats.naccept
    assert reuse.stats.extra["njac"] < 0.9 * reuse.stats.naccept
    assert torch.allclose(every.ys[-1], reuse.ys[-1], rtol=1e-4, atol=1e-9)


# -- Newton failures ---------------------------------------------------------------------------------------
def test_newton_divergence_rejects_with_reason():
    """A first step of 1e3 on Robertson: Newton diverges, the attempt is rejected with its reason in the
    trace, the step shrinks, and the solve still succeeds."""
    p = ODEProblem(robertson_f, torch.tensor([1.0, 0.0, 0.0], dtype=F64), (0.0, 1e5))
    sol = solve(p, Kvaerno5(), dt0=1e3, trace=True, rtol=1e-6, atol=1e-10)
    tr = sol.trace
    assert sol.retcode is ReturnCode.SUCCESS
    assert not bool(tr.accepted[0]) and "Newton diverged" in tr.reason[0]
    assert float(tr.dt[1]) == pytest.approx(0.25 * float(tr.dt[0]))
    assert sol.stats.extra["nconvfail"] >= 1
    assert all(r == "" or "Newton" in r for r in tr.reason)
    assert abs(float(sol.ys[-1, 0]) - 0.0178659) < 1e-5


def test_newton_failure_fixed_step_and_by_hand():
    f = lambda t, y: -100 * y**3  # noqa: E731
    y0 = torch.tensor([10.0], dtype=F64)
    sol = solve(ODEProblem(f, y0, (0.0, 10.0)), Kvaerno3(), dt=5.0, throw=False)
    assert sol.retcode is ReturnCode.NOT_CONVERGED
    res = Kvaerno3().step(f, 0.0, y0, 5.0)
    assert res.reason is not None and "Newton" in res.reason and res.dt_factor < 1
    assert torch.equal(res.y, y0)
    ok = Kvaerno3().step(f, 0.0, y0, 1e-6)
    assert ok.reason is None and float(ok.y) < 10


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_singular_iteration_matrix(method):
    """``y' = 2 y`` with ``gamma dt * 2 == 1`` exactly: ``W = 1 - gamma dt J = 0``."""
    g, lam = method.tableau.gamma, 2.0
    dt = 0.5 / g
    while 1.0 - (g * dt) * lam != 0.0:
        dt = math.nextafter(dt, math.inf)
    p = ODEProblem(lambda t, y: lam * y, torch.ones(1, dtype=F64), (0.0, 10.0))
    sol = solve(p, method(), dt0=dt, throw=False)
    assert sol.retcode is ReturnCode.SINGULAR
    assert sol.t_final == 0.0
    ok = solve(p.replace(tspan=(0.0, 1.0)), method(), dt0=1.01 * dt)
    assert ok.retcode is ReturnCode.SUCCESS


# -- gradients ---------------------------------------------------------------------------------------------
def _param_f(p):
    def f(t, y):
        return torch.stack([-p[0] * y[..., 0] + y[..., 1] ** 2 + torch.sin(t).to(y),
                            -p[1] * y[..., 1] * (1 + y[..., 0] ** 2)], -1)
    return f


_Y0 = torch.tensor([1.0, 0.5], dtype=F64)
_P = torch.tensor([50.0, 2.0], dtype=F64)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_gradcheck_one_step(method):
    def step(y, p):
        res = method(max_newton_iters=50).step(_param_f(p), 0.1, y, 0.1, rtol=1e-13, atol=1e-13)
        assert res.reason is None
        return res.y

    assert gradcheck(step, (_Y0.clone().requires_grad_(), _P.clone().requires_grad_()))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_gradcheck_fixed_step_solve(method):
    def run(y, p):
        return solve(ODEProblem(_param_f(p), y, (0.0, 0.5)), method(max_newton_iters=50), dt=0.1,
                     rtol=1e-13, atol=1e-13).ys[-1]

    assert gradcheck(run, (_Y0.clone().requires_grad_(), _P.clone().requires_grad_()))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_ift_gradient_equals_unrolled(method):
    """The implicit-function-theorem gradient against differentiating a fully converged Newton."""
    grads = []
    for gradient in ("ift", "unrolled"):
        y, p = _Y0.clone().requires_grad_(), _P.clone().requires_grad_()
        sol = solve(ODEProblem(_param_f(p), y, (0.0, 1.0)), method(max_newton_iters=50, gradient=gradient),
                    dt=0.05, rtol=1e-13, atol=1e-13)
        grads.append(torch.cat(torch.autograd.grad((sol.ys[-1] * torch.tensor([1.0, -2.0])).sum(), (y, p))))
    assert torch.allclose(grads[0], grads[1], rtol=1e-8, atol=1e-10), grads
    assert float(grads[0].abs().min()) > 1e-4  # every entry is a real gradient, not a zero


def test_ift_gradient_per_sample_adaptive():
    mus = torch.tensor([[1.0], [5.0], [20.0]], dtype=F64)
    grads = []
    for gradient in ("ift", "unrolled"):
        y = torch.tensor([[2.0, 0.0]] * 3, dtype=F64, requires_grad=True)
        sol = solve(ODEProblem(vdp_f(mus), y, (0.0, 0.3)), Kvaerno5(per_sample=True, gradient=gradient),
                    rtol=1e-9, atol=1e-9)
        grads.append(torch.autograd.grad(sol.ys[-1].sum(), y)[0])
    assert torch.allclose(grads[0], grads[1], rtol=1e-7, atol=1e-9)


def test_no_graph_work_without_gradients():
    """Without anything requiring a gradient the IFT costs nothing but one probe per solve."""
    p = problem("logistic")
    with torch.no_grad():
        a = solve(p, Kvaerno5(), rtol=1e-8, atol=1e-10)
    b = solve(p, Kvaerno5(), rtol=1e-8, atol=1e-10)
    assert b.stats.nfe == a.stats.nfe + 1
    assert torch.equal(a.ys[-1], b.ys[-1])
    assert not b.ys.requires_grad


# -- batches, user Jacobians, dtypes, dense output ---------------------------------------------------------
def test_per_sample_batch_matches_separate_solves():
    """Three Van der Pol oscillators (mu = 1, 5, 20) as one per-sample batch (block-diagonal Jacobian,
    batched LU) against three separate solves; automatic and user Jacobians take the same steps."""
    mus = torch.tensor([[1.0], [5.0], [20.0]], dtype=F64)
    y0 = torch.tensor([[2.0, 0.0]] * 3, dtype=F64)
    span = (0.0, 2.0)
    opts = dict(rtol=1e-10, atol=1e-10)
    auto = solve(ODEProblem(vdp_f(mus), y0, span), Kvaerno5(per_sample=True), **opts)
    user = solve(ODEProblem(vdp_f(mus), y0, span), Kvaerno5(per_sample=True, jac=vdp_jac(mus)), **opts)
    assert auto.stats.naccept == user.stats.naccept
    assert torch.allclose(auto.ys[-1], user.ys[-1], rtol=0, atol=1e-12)
    sep = torch.cat([solve(ODEProblem(vdp_f(mus[b:b + 1]), y0[b:b + 1], span),
                           Kvaerno5(per_sample=True, jac=vdp_jac(mus[b:b + 1])), **opts).ys[-1]
                     for b in range(3)])
    assert torch.allclose(auto.ys[-1], sep, rtol=0, atol=1e-8)
    assert float((auto.ys[-1] - sep).abs().max()) > 0  # different step sequences: a real comparison


def test_user_jacobian_is_used():
    calls = []
    mus = torch.tensor([[100.0]], dtype=F64)
    jac = vdp_jac(mus)

    def counted(t, y):
        calls.append(1)
        return jac(t, y)

    p = ODEProblem(vdp_f(mus), torch.tensor([[2.0, 0.0]], dtype=F64), (0.0, 5.0))
    auto = solve(p, Kvaerno5(per_sample=True), rtol=1e-8, atol=1e-10)
    user = solve(p, Kvaerno5(per_sample=True, jac=counted), rtol=1e-8, atol=1e-10)
    assert len(calls) == user.stats.extra["njac"] + 1  # + the check before the first step
    assert torch.allclose(auto.ys[-1], user.ys[-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_float32(method):
    mus = torch.tensor([[1.0], [5.0], [20.0]])
    y0 = torch.tensor([[2.0, 0.0]] * 3)
    ref = solve(ODEProblem(vdp_f(mus.double()), y0.double(), (0.0, 3.0)), Kvaerno5(per_sample=True),
                rtol=1e-10, atol=1e-10)
    sol = solve(ODEProblem(vdp_f(mus), y0, (0.0, 3.0)), method(per_sample=True), rtol=1e-4, atol=1e-6)
    assert sol.ys.dtype == torch.float32 and sol.retcode is ReturnCode.SUCCESS
    assert float((sol.ys[-1].double() - ref.ys[-1]).abs().max()) < 1e-2


def test_dense_output_and_stiffness_estimate():
    p = stiff_linear()
    sol = solve(p, Kvaerno5(), rtol=1e-8, atol=1e-10, trace=True, saveat=[0.3, 1.1, 1.7])
    ts = torch.linspace(0.05, 2.0, 40, dtype=F64)
    err = (sol.interpolant(ts) - torch.stack([p.analytic(t) for t in ts])).abs().max()
    assert float(err) < 1e-5  # cubic Hermite between steps, order 3
    assert torch.allclose(sol.ys, sol.interpolant(torch.tensor([0.3, 1.1, 1.7], dtype=F64)), rtol=0, atol=0)
    # ||A||_inf = 1000 for this A: the trace carries |lambda| itself (stability size 1).
    assert sol.trace.stability_size == 1.0
    assert torch.allclose(sol.trace.stiffness_estimate, torch.full_like(sol.trace.stiffness_estimate, 1000.0))


def test_backward_in_time():
    p = ODEProblem(lambda t, y: -y, torch.ones(1, dtype=F64), (1.0, 0.0))
    sol = solve(p, Kvaerno5(), rtol=1e-9, atol=1e-12)
    assert float(sol.ys[-1]) == pytest.approx(math.e, rel=1e-7)
    assert sol.stats.naccept > 3


_A = torch.tensor([[-500.5, 499.5], [499.5, -500.5]], dtype=F64)


def _linear_f(t, y):
    return y @ _A.T + (torch.cos(t) - torch.sin(t)).to(y)  # stiff_linear() without SymPy


def test_matrix_free_gmres():
    """``linsolve="gmres"``: Jacobian-vector products, no Jacobian; the solution to tolerance and the
    implicit-function-theorem gradient (transposed GMRES by vector-Jacobian products) equal to the
    dense one."""
    lin = stiff_linear()
    span = (0.0, 0.5)
    exact = lin.analytic(torch.tensor(span[1], dtype=F64))
    sol = solve(ODEProblem(_linear_f, lin.y0, span), Kvaerno5(linsolve="gmres", krylov_rtol=1e-10),
                rtol=1e-6, atol=1e-8)
    assert sol.stats.extra["nkrylov"] > 0 and sol.stats.extra["njac"] == 0
    assert float((sol.ys[-1] - exact).abs().max()) < 10 * (1e-6 * float(exact.abs().max()) + 1e-8)
    grads = []
    for kw in ({"linsolve": "gmres", "krylov_rtol": 1e-12}, {}):
        y0 = lin.y0.clone().requires_grad_()
        out = solve(ODEProblem(_linear_f, y0, (0.0, 0.05)), Kvaerno5(**kw), dt=0.01, rtol=1e-12, atol=1e-12)
        grads.append(torch.autograd.grad(out.ys[-1, 0], y0)[0])
    assert torch.allclose(grads[0], grads[1], rtol=1e-8, atol=1e-12)
    # For y' = A y + g(t) the discrete map has dy_N/dy_0 = R(dt A)^N exactly, R the stability function.
    pc, qc = stability_function(np.asarray(KVAERNO5.a), np.asarray(KVAERNO5.b))
    M = 0.01 * _A.numpy()
    powers = [np.linalg.matrix_power(M, k) for k in range(len(pc))]
    R = np.linalg.solve(sum(c * Mk for c, Mk in zip(qc, powers)), sum(c * Mk for c, Mk in zip(pc, powers)))
    assert np.allclose(grads[1].numpy(), np.linalg.matrix_power(R, 5)[0], rtol=0, atol=1e-12)
