"""Integral policy iteration: SymPy HJB check of the nonlinear optimum, Riccati/Kleinman references,
recovery of the Riccati solution with exact evaluation, the trapezoid's O(N^-2) bias, clear errors."""

import numpy as np
import pytest
import sympy as sp
import torch

from quadrature import (
    BayesianQuadrature,
    ControlAffineProblem,
    GaussLegendre,
    IntegralPolicyIteration,
    Matern,
    QuadraticBasis,
    Romberg,
    Simpson,
    Trapezoid,
    f16_short_period,
    kleinman,
    linear_third_order,
    lqr,
    nonlinear_2d,
    power_system,
    simulate_closed_loop,
    solve_many,
)
from solvers import RK4, ReturnCode, SolverError, solve

torch.set_num_threads(1)


def test_nonlinear_optimum_solves_the_hjb_symbolically():
    x1, x2 = sp.symbols("x1 x2", real=True)
    f = sp.Matrix([-x1 + x2, -sp.Rational(1, 2) * (x1 + x2) + sp.Rational(1, 2) * x2 * sp.sin(x1) ** 2])
    g = sp.Matrix([0, sp.sin(x1)])
    V = sp.Rational(1, 2) * x1 ** 2 + x2 ** 2
    grad = sp.Matrix([V.diff(x1), V.diff(x2)])
    u = -sp.Rational(1, 2) * (g.T * grad)[0]  # R = 1
    hjb = (grad.T * f)[0] + x1 ** 2 + x2 ** 2 - sp.Rational(1, 4) * ((grad.T * g)[0]) ** 2
    assert sp.simplify(hjb) == 0
    assert sp.simplify(u + x2 * sp.sin(x1)) == 0
    # The problem object encodes the same optimum.
    prob = nonlinear_2d()
    xs = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(prob.policy(prob.w_star, xs), prob.u_star(xs))
    ufun = sp.lambdify((x1, x2), u)
    np.testing.assert_allclose(prob.u_star(xs)[:, 0].numpy(), ufun(xs[:, 0].numpy(), xs[:, 1].numpy()),
                               rtol=1e-14)


def test_quadratic_basis_jacobian_and_matrix_round_trip():
    b = QuadraticBasis(3)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    J = torch.func.vmap(torch.func.jacrev(b))(x)
    torch.testing.assert_close(b.jacobian(x), J)
    w = torch.randn(6, dtype=torch.float64)
    P = b.to_matrix(w)
    torch.testing.assert_close(b.from_matrix(P), w)
    torch.testing.assert_close((b(x) * w).sum(-1), torch.einsum("bi,ij,bj->b", x, P, x))


@pytest.mark.parametrize("make", [linear_third_order, power_system, f16_short_period])
def test_kleinman_converges_to_the_riccati_solution(make):
    prob = make()
    P, K = lqr(prob.A, prob.B, prob.Q, prob.R)
    Pk, Kk, hist = kleinman(prob.A, prob.B, prob.Q, prob.R)
    torch.testing.assert_close(Pk, P, rtol=1e-9, atol=1e-9)
    # Quadratic convergence: the error at least squares (up to a constant) late in the iteration.
    errs = [float(torch.linalg.norm(h - P)) for h in hist]
    big = [e for e in errs if e > 1e-6]
    assert len(hist) < 20 and errs[0] > 1e-3 and big[-1] < 1e-1
    torch.testing.assert_close(prob.gain(prob.w_star), K)


# The paper's protocol (one continuing trajectory, stop at ||w_i - w_{i-1}|| < 1e-3) and the reset protocol.
@pytest.mark.parametrize("protocol, tol", [("continuing", 1e-3), ("reset", 1e-9)])
def test_exact_policy_iteration_recovers_riccati(protocol, tol):
    prob = linear_third_order()
    sol = solve(prob, IntegralPolicyIteration("exact", protocol=protocol, tol=tol, max_iter=30))
    P, K = lqr(prob.A, prob.B, prob.Q, prob.R)
    assert sol.success and sol.retcode is ReturnCode.SUCCESS
    assert float(torch.linalg.norm(sol.P - P)) < 1e-6 and sol.K_error < 1e-6
    # Policy iteration is Kleinman's iteration: the iterates follow it.
    _, _, hist = kleinman(prob.A, prob.B, prob.Q, prob.R, max_iter=5)
    for i in range(1, 4):
        torch.testing.assert_close(prob.basis.to_matrix(sol.w_history[i]), hist[i - 1], rtol=1e-6, atol=1e-6)


def test_exact_policy_iteration_other_linear_and_nonlinear_tasks():
    for prob in (f16_short_period(), power_system(), nonlinear_2d()):
        sol = solve(prob, IntegralPolicyIteration("exact", protocol="reset", tol=1e-9, max_iter=20))
        assert sol.success and sol.w_error < 1e-7, prob.name
    states = torch.rand(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    assert sol.u_error(states) < 1e-7


def test_fixed_step_rk4_plant_gives_the_same_answer():
    prob = nonlinear_2d()
    sol = solve(prob, IntegralPolicyIteration("exact", protocol="reset", tol=1e-9, max_iter=20,
                                              ode_solver=RK4(), ode_options={"dt": 0.0025}))
    assert sol.success and sol.w_error < 1e-7


def test_trapezoid_bias_is_second_order_and_rules_rank_as_expected():
    prob = linear_third_order()
    ns = [3, 5, 9]
    algs = [IntegralPolicyIteration(Trapezoid(), N=n, protocol="reset", tol=1e-10, max_iter=30) for n in ns]
    algs += [IntegralPolicyIteration(q, N=5, protocol="reset", tol=1e-10, max_iter=30)
             for q in (Simpson(), BayesianQuadrature(Matern(3.5, 0.3)), GaussLegendre(), Romberg())]
    sols = solve_many(prob, algs)
    assert all(s.success for s in sols)
    errs = np.array([s.w_error for s in sols[:3]])
    slope = np.polyfit(np.log(np.array(ns) - 1), np.log(errs), 1)[0]
    assert abs(slope + 2) < 0.1, slope
    trap5, simp5, bq5, gl5, romb5 = errs[1], *(s.w_error for s in sols[3:])
    assert simp5 < bq5 < trap5 and gl5 < simp5 and romb5 < simp5
    # The computation changes the controller: the learned gains differ measurably between rules.
    assert float(torch.linalg.norm(sols[1].K - sols[3].K)) > 1e-4


def test_optimal_closed_loop_cost_equals_riccati_value():
    prob = linear_third_order()
    P, K = lqr(prob.A, prob.B, prob.Q, prob.R)
    sol = simulate_closed_loop(prob, prob.u_star, prob.x0, 60.0)
    cost = float(sol.ys[-1, -1])
    assert cost == pytest.approx(float(prob.x0 @ P @ prob.x0), rel=1e-7)


def test_bad_input_raises_clear_errors():
    prob = linear_third_order()
    with pytest.raises(ValueError, match="N = 1"):
        IntegralPolicyIteration(Trapezoid(), N=1)
    with pytest.raises(ValueError, match="T must be finite and > 0"):
        IntegralPolicyIteration(Trapezoid(), T=0.0)
    with pytest.raises(ValueError, match="T must be finite and > 0"):
        IntegralPolicyIteration(Trapezoid(), T=-0.1)
    with pytest.raises(ValueError, match=">= 3, got N = 2"):
        IntegralPolicyIteration(Simpson(), N=2)
    with pytest.raises(ValueError, match="data-independent"):
        IntegralPolicyIteration(BayesianQuadrature(lengthscale="ml"))
    with pytest.raises(ValueError, match="singular least squares"):
        solve(prob, IntegralPolicyIteration("exact", rows_per_iteration=4))
    at_rest = ControlAffineProblem.linear(prob.A, prob.B, prob.Q, prob.R, [0.0, 0.0, 0.0])
    with pytest.raises(SolverError, match="singular least squares"):
        solve(at_rest, IntegralPolicyIteration("exact"))
    unstable = ControlAffineProblem.linear([[0.5, 1.0], [0.0, -1.0]], [[0.0], [1.0]], np.eye(2), [[1.0]],
                                           [1.0, 1.0])
    with pytest.raises(ValueError, match="not stabilising"):
        solve(unstable, IntegralPolicyIteration("exact"))
    with pytest.raises(ValueError, match="stabilising K0"):
        kleinman(unstable.A, unstable.B, unstable.Q, unstable.R)
    with pytest.raises(ValueError, match="Q must be"):
        ControlAffineProblem.linear(prob.A, prob.B, np.eye(2), prob.R, prob.x0)
    with pytest.raises(ValueError, match="g\\(x0\\) must have shape"):
        ControlAffineProblem(f=prob.f, g=lambda x: torch.ones(2, 1, dtype=torch.float64), Q=prob.Q, R=prob.R,
                             x0=prob.x0, basis=prob.basis)
    with pytest.raises(ValueError, match="w0 must have shape"):
        ControlAffineProblem(f=prob.f, g=prob.g, Q=prob.Q, R=prob.R, x0=prob.x0, basis=prob.basis,
                             w0=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="R must be symmetric positive definite"):
        ControlAffineProblem.linear(prob.A, prob.B, prob.Q, [[-1.0]], prob.x0)


def _float32_and_device_run(device: str) -> tuple[float, float]:
    ref = linear_third_order()
    p32 = ControlAffineProblem.linear(ref.A, ref.B, ref.Q, ref.R, ref.x0, dtype=torch.float32)
    A, B = p32.A.to(device), p32.B.to(device)
    prob = ControlAffineProblem(f=lambda x: x @ A.T, g=lambda x: B.expand(*x.shape[:-1], 3, 1),
                                Q=p32.Q.to(device), R=p32.R.to(device), x0=p32.x0.to(device), basis=p32.basis,
                                w_star=p32.w_star.to(device), A=A, B=B)
    alg = IntegralPolicyIteration(Trapezoid(), N=5, protocol="reset", tol=1e-4, rtol=1e-6, atol=1e-8)
    sol = solve(prob, alg)
    assert sol.success and sol.w.dtype == torch.float32 and sol.w.device.type == device
    sol64 = solve(ref, IntegralPolicyIteration(Trapezoid(), N=5, protocol="reset", tol=1e-9))
    return sol.w_error, sol64.w_error


def test_float32_state_follows_dtype():
    err32, err64 = _float32_and_device_run("cpu")
    assert abs(err32 - err64) < 1e-4 * 30  # float32 and rtol 1e-6 resolve the O(h^2) bias to a few percent


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_policy_iteration_on_cuda():
    err32, err64 = _float32_and_device_run("cuda")
    assert abs(err32 - err64) < 1e-4 * 30


@pytest.mark.slow
def test_benchmark_quick_meets_the_slope_targets(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "intrl.py"
    spec = importlib.util.spec_from_file_location("bench_intrl", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    report = mod.main(["--quick", "--out", str(tmp_path)])
    for task in ("linear", "nonlinear"):
        for protocol in ("paper", "reset"):
            slopes = report["tasks"][task]["slopes"][protocol]["w_error"]
            assert abs(slopes["trapezoid"]["slope_all"] + 2) < 0.1
            assert slopes["bq-matern-3.5"]["slope_all"] <= -4
    assert (tmp_path / "results.json").exists() and (tmp_path / "intrl_linear_w_error.png").exists()
