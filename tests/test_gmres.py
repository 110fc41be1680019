"""Restarted GMRES: optimality and exactness, restarts, right preconditioning, agreement with scipy and
torch.linalg.solve, float32, iteration limits, breakdown, gradients and bad input."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from solvers import ReturnCode, SolverError, solve
from solvers.linear import CG, GMRES, GMRESInfo, LinearProblem, gmres

f64 = torch.float64


def convection_diffusion(m: int, eps: float = 0.01, wind=(1.0, 0.5)) -> sp.csr_matrix:
    """``-eps Laplace u + w . grad u`` on the unit square, ``m x m`` interior nodes, central diffusion and
    first-order upwind convection (``w > 0``): a non-symmetric M-matrix."""
    h = 1.0 / (m + 1)
    eye = sp.identity(m)
    lap = sp.diags([-np.ones(m - 1), 2 * np.ones(m), -np.ones(m - 1)], [-1, 0, 1]) / h**2
    upwind = sp.diags([-np.ones(m - 1), np.ones(m)], [-1, 0]) / h
    A = eps * (sp.kron(eye, lap) + sp.kron(lap, eye)) + wind[0] * sp.kron(eye, upwind) \
        + wind[1] * sp.kron(upwind, eye)
    return sp.csr_matrix(A)


def rhs(n: int, seed: int = 0, dtype=f64) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).standard_normal(n), dtype=dtype)


def random_nonsymmetric(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=f64) + 2.0 * torch.eye(n, dtype=f64)
    return A, torch.randn(n, generator=g, dtype=f64)


def true_residual(A: sp.spmatrix, x: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.linalg.norm(b.double().numpy() - A @ x.double().numpy()))


class Counting:
    """``v -> A v`` that counts its calls."""

    def __init__(self, A: torch.Tensor):
        self.A, self.calls = A, 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.A @ v


def test_converges_on_convection_diffusion_and_agrees_with_dense_solve():
    A = convection_diffusion(16)
    assert abs(A - A.T).max() > 10  # far from symmetric
    b = rhs(A.shape[0])
    with pytest.raises(ValueError, match="not symmetric"):
        solve(LinearProblem(A, b), CG())
    sol = solve(LinearProblem(A, b), GMRES(restart=20), rtol=1e-8)
    assert sol.success and sol.retcode is ReturnCode.SUCCESS
    bn = float(b.norm())
    r = true_residual(A, sol.x, b)
    assert r <= 1e-8 * bn
    assert sol.residuals[-1] == pytest.approx(r / bn, rel=1e-6)   # the reported residual is the true one
    assert sol.residuals[0] == pytest.approx(1.0) and len(sol.residuals) == sol.iterations + 1
    assert all(v > 1e-8 for v in sol.residuals[:-1])             # it stopped at the first step below rtol
    ref = torch.linalg.solve(torch.as_tensor(A.toarray()), b)
    # ||x - x*|| / ||x*|| <= cond(A) ||r|| / ||b||, and cond(A) ~ 40 here
    assert float((sol.x - ref).norm() / ref.norm()) < 1e-6
    for key in ("iterations", "restarts", "residuals", "matvecs", "precond_applies", "setup_time",
                "solve_time", "breakdown"):
        assert key in sol.stats.extra
    assert sol.stats.nfe == sol.stats.matvecs == sol.iterations + sol.stats.restarts + 1
    # atol alone, and a starting guess
    loose = solve(LinearProblem(A, b), GMRES(restart=20), rtol=0.0, atol=1e-3 * bn)
    assert true_residual(A, loose.x, b) <= 1e-3 * bn and loose.iterations < sol.iterations
    warm = solve(LinearProblem(A, b), GMRES(restart=20), rtol=1e-8, x0=loose.x)
    assert warm.iterations < sol.iterations and true_residual(A, warm.x, b) <= 1e-8 * bn
    assert warm.residuals[0] == pytest.approx(true_residual(A, loose.x, b) / bn, rel=1e-6)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_every_form_of_A_gives_the_same_solution():
    A = convection_diffusion(8)
    b = rhs(A.shape[0], seed=2)
    D = torch.as_tensor(A.toarray())
    forms = [A, D, D.to_sparse_coo(), D.to_sparse_csr(), lambda v: D @ v]
    xs = [solve(LinearProblem(M, b), GMRES(), rtol=1e-12).x for M in forms]
    for x in xs[1:]:
        assert torch.allclose(x, xs[0], rtol=0, atol=1e-10 * float(xs[0].abs().max()))


@pytest.mark.parametrize("n", [4, 8, 12])
def test_exact_in_n_steps_and_minimal_residual(n):
    A, b = random_nonsymmetric(n, seed=n)
    x, info = gmres(lambda v: A @ v, b, rtol=1e-12, restart=50)
    assert isinstance(info, GMRESInfo) and info.converged
    assert info.iterations == n and info.restarts == 0       # a random A needs all n steps, no more
    assert torch.allclose(x, torch.linalg.solve(A, b), rtol=1e-9, atol=1e-11)
    # GMRES's k-th residual is the least residual over x in K_k(A, b): check it against a direct
    # least-squares over an orthonormalised Krylov basis (independent of the Arnoldi recurrence)
    K = torch.stack([torch.linalg.matrix_power(A, i) @ b for i in range(n - 1)], dim=1)
    for k in range(1, n - 1):
        Q, _ = torch.linalg.qr(K[:, :k])
        c = torch.linalg.lstsq(A @ Q, b.unsqueeze(-1)).solution
        best = float((b - A @ Q @ c.squeeze(-1)).norm())
        assert info.residuals[k] == pytest.approx(best, rel=1e-7)


@pytest.mark.parametrize("record", [False, True])
def test_full_cycle_is_backward_stable_on_an_ill_conditioned_nonnormal_matrix(record):
    # Eigenvalues 1..1e10 and a strictly upper triangular part of O(1): the Krylov basis is numerically
    # dependent long before step n. With an orthogonal Arnoldi basis n steps give a solution with a
    # normwise backward error ||b - A x|| / (||A|| ||x|| + ||b||) of a few eps (measured 0.2-0.5 eps);
    # one Gram-Schmidt pass instead of two measured 1600-16000 eps on these seeds.
    n = 80
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=f64))
        T = torch.diag(torch.logspace(0, 10, n, dtype=f64)) + torch.triu(torch.randn(n, n, generator=g,
                                                                                    dtype=f64), 1)
        A = Q @ T @ Q.T
        b = torch.randn(n, generator=g, dtype=f64).requires_grad_(record)
        x, info = gmres(lambda v, A=A: A @ v, b, rtol=1e-15, restart=n, maxiter=n)
        assert info.iterations == n and info.restarts == 0 and x.requires_grad == record
        x, b = x.detach(), b.detach()
        eta = float((b - A @ x).norm()) / (float(torch.linalg.matrix_norm(A, 2)) * float(x.norm())
                                           + float(b.norm()))
        assert eta < 20 * torch.finfo(f64).eps


def test_happy_breakdown_is_convergence():
    # A = [[B, C], [0, D]] with B = [[1, 2], [3, 4]] and b = e_1: K_2(A, b) = span(e_1, e_2) is invariant,
    # the Arnoldi vector h_32 is exactly zero at step 2 and x = (B^-1 e_1, 0)
    g = torch.Generator().manual_seed(5)
    A = torch.randn(6, 6, generator=g, dtype=f64) + 4 * torch.eye(6, dtype=f64)
    A[2:, :2] = 0.0
    A[:2, :2] = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=f64)
    b = torch.zeros(6, dtype=f64)
    b[0] = 1.0
    x, info = gmres(lambda v: A @ v, b, rtol=1e-14)
    assert info.breakdown and info.converged and info.iterations == 2
    assert torch.allclose(x, torch.tensor([-2.0, 1.5, 0, 0, 0, 0], dtype=f64), atol=1e-14)
    sol = solve(LinearProblem(A, b), GMRES(), rtol=1e-14)
    assert sol.retcode is ReturnCode.SUCCESS and sol.stats.breakdown


def test_singular_system_without_a_solution_stops_with_breakdown():
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0, 0.0], dtype=f64))
    b = torch.ones(4, dtype=f64)                       # b has a component outside the range of A
    x, info = gmres(lambda v: A @ v, b)
    assert info.breakdown and not info.converged and info.iterations < 10
    assert info.residual_norm == pytest.approx(1.0)   # the least residual: the null-space component
    assert "singular" in info.message
    sol = solve(LinearProblem(A, b), GMRES(), throw=False)
    assert sol.retcode is ReturnCode.BREAKDOWN
    with pytest.raises(SolverError, match="BREAKDOWN"):
        solve(LinearProblem(A, b), GMRES())


def test_restart_converges_with_more_iterations_and_counts_right():
    A = torch.as_tensor(convection_diffusion(16).toarray())
    b = rhs(A.shape[0], seed=1)
    runs = {}
    for m in (5, 50):
        op = Counting(A)
        x, info = gmres(op, b, rtol=1e-8, restart=m)
        assert info.converged and float((b - A @ x).norm()) <= 1e-8 * float(b.norm())
        # every cycle but the last runs exactly m steps; one residual product per cycle
        assert info.restarts == (info.iterations - 1) // m
        assert op.calls == info.matvecs == info.iterations + info.restarts + 1
        assert len(info.residuals) == info.iterations + 1
        runs[m] = info
    assert runs[5].restarts >= 5 and runs[50].restarts == 0
    assert runs[5].iterations > runs[50].iterations
    # a starting guess costs one more product
    op = Counting(A)
    x, info = gmres(op, b, rtol=1e-8, restart=5, x0=torch.ones_like(b))
    assert info.converged and op.calls == info.matvecs == info.iterations + info.restarts + 2


def test_callback_sees_each_cycle_with_the_true_residual():
    A = torch.as_tensor(convection_diffusion(10).toarray())
    b = rhs(A.shape[0], seed=3)
    seen = []
    x, info = gmres(lambda v: A @ v, b, rtol=1e-8, restart=5,
                    callback=lambda k, x, r: seen.append((k, float(r.norm()), float((b - A @ x).norm()))))
    assert len(seen) == info.restarts + 1 and seen[-1][0] == info.iterations
    assert [k for k, _, _ in seen[:-1]] == [5 * (i + 1) for i in range(info.restarts)]
    for _, rn, true in seen:
        assert rn == pytest.approx(true, rel=1e-10)


def test_right_preconditioning_reduces_iterations():
    A = convection_diffusion(16)
    n = A.shape[0]
    # columns scaled over four decades: cond ~ 1e5. Right Jacobi undoes a column scaling exactly
    # (A D (diag(A) D)^-1 = A diag(A)^-1), and an incomplete LU approximates A itself
    d = np.logspace(0, 4, n)
    np.random.default_rng(1).shuffle(d)
    As = sp.csr_matrix(A @ sp.diags(d))
    b = rhs(n, seed=4)
    ilu = spla.spilu(sp.csc_matrix(As), drop_tol=1e-4, fill_factor=10)

    def ilu_apply(v):
        return torch.from_numpy(ilu.solve(v.numpy()))

    its = {}
    for name, pre in (("none", None), ("jacobi", "jacobi"), ("ilu", ilu_apply)):
        sol = solve(LinearProblem(As, b), GMRES(restart=20, preconditioner=pre), rtol=1e-8, maxiter=5000)
        assert sol.success
        assert true_residual(As, sol.x, b) <= 1e-8 * float(b.norm())  # the true, unpreconditioned residual
        # one M^-1 per inner step and one per cycle (M^-1 V y)
        assert sol.stats.precond_applies == sol.iterations + sol.stats.restarts + 1
        its[name] = sol.iterations
    print("iterations:", its)
    assert its["jacobi"] * 10 < its["none"]
    assert its["ilu"] * 5 < its["jacobi"]
    # the same through the plain function
    _, info = gmres(lambda v: torch.from_numpy(As @ v.numpy()), b, rtol=1e-8, restart=20, precond=ilu_apply)
    assert info.converged and info.iterations == its["ilu"]


def test_matches_scipy_gmres():
    A = convection_diffusion(12, eps=0.05)
    b = rhs(A.shape[0], seed=5)
    ref, code = spla.gmres(A, b.numpy(), rtol=1e-11, atol=0.0, restart=20, maxiter=1000)
    assert code == 0
    x, info = gmres(lambda v: torch.from_numpy(A @ v.numpy()), b, rtol=1e-11, restart=20)
    assert info.converged
    assert np.allclose(x.numpy(), ref, rtol=0, atol=1e-8 * np.abs(ref).max())
    # preconditioned, through solve
    ilu = spla.spilu(sp.csc_matrix(A), drop_tol=1e-2)
    M = spla.LinearOperator(A.shape, ilu.solve)
    ref, code = spla.gmres(A, b.numpy(), rtol=1e-11, atol=0.0, restart=20, M=M)
    assert code == 0
    sol = solve(LinearProblem(A, b), GMRES(restart=20, preconditioner=lambda v: torch.from_numpy(
        ilu.solve(v.numpy()))), rtol=1e-11)
    assert np.allclose(sol.x.numpy(), ref, rtol=0, atol=1e-8 * np.abs(ref).max())


def test_float32():
    A64 = torch.as_tensor(convection_diffusion(12).toarray())
    b64 = rhs(A64.shape[0], seed=6)
    A, b = A64.float(), b64.float()
    x, info = gmres(lambda v: A @ v, b, rtol=1e-5, restart=20)
    assert x.dtype == torch.float32 and info.converged
    assert float((b64 - A64 @ x.double()).norm()) <= 1e-5 * float(b64.norm())
    ref = torch.linalg.solve(A64, b64)
    assert float((x.double() - ref).norm() / ref.norm()) < 1e-4
    sol = solve(LinearProblem(sp.csr_matrix(A64.numpy()), b), GMRES(restart=20, preconditioner="jacobi"),
                rtol=1e-5)
    assert sol.x.dtype == torch.float32 and sol.success


def test_maxiter_gives_max_iters_or_raises():
    A = convection_diffusion(16)
    b = rhs(A.shape[0], seed=7)
    sol = solve(LinearProblem(A, b), GMRES(restart=4), rtol=1e-10, maxiter=10, throw=False)
    assert sol.retcode is ReturnCode.MAX_ITERS and not sol.success
    assert sol.iterations == 10 and sol.stats.restarts == 2 and len(sol.residuals) == 11
    assert sol.residuals[-1] > 1e-10 and sol.residuals[-1] == pytest.approx(
        true_residual(A, sol.x, b) / float(b.norm()), rel=1e-6)
    with pytest.raises(SolverError, match="MAX_ITERS") as err:
        solve(LinearProblem(A, b), GMRES(restart=4), rtol=1e-10, maxiter=10)
    assert err.value.retcode is ReturnCode.MAX_ITERS
    x, info = gmres(lambda v: torch.from_numpy(A @ v.numpy()), b, rtol=1e-10, maxiter=7)
    assert not info.converged and info.iterations == 7 and "maxiter" in info.message


def test_zero_rhs_and_converged_start_do_no_work():
    A = Counting(torch.eye(3, dtype=f64) * 2)
    x, info = gmres(A, torch.zeros(3, dtype=f64), x0=torch.ones(3, dtype=f64))
    assert torch.equal(x, torch.zeros(3, dtype=f64)) and info.converged and info.iterations == 0
    assert A.calls == 0
    b = torch.tensor([2.0, 4.0, 6.0], dtype=f64)
    x, info = gmres(A, b, x0=torch.tensor([1.0, 2.0, 3.0], dtype=f64))
    assert info.converged and info.iterations == 0 and A.calls == 1 and info.residual_norm == 0.0


def test_nan_from_the_operator_is_a_breakdown():
    def bad(v):
        return v * float("nan")
    x, info = gmres(bad, torch.ones(4, dtype=f64))
    assert info.breakdown and not info.converged and "NaN" in info.message
    assert torch.isfinite(x).all()


# ---- gradients ---------------------------------------------------------------------------------------


def test_gradcheck_wrt_b_and_matrix_entries():
    n = 6
    A, b = random_nonsymmetric(n, seed=11)
    A.requires_grad_(True)
    b.requires_grad_(True)

    def f(A, b):
        return gmres(lambda v: A @ v, b, rtol=1e-13, restart=n)[0]

    assert torch.autograd.gradcheck(f, (A, b))
    A0, b0 = A.detach(), b.detach()
    Ainv = torch.linalg.inv(A0)
    x = torch.linalg.solve(A0, b0)
    Jb = torch.autograd.functional.jacobian(lambda b: f(A0, b), b0)
    assert torch.allclose(Jb, Ainv, atol=1e-11)                 # d x / d b = A^-1
    JA = torch.autograd.functional.jacobian(lambda A: f(A, b0), A0)
    # d x_k / d A_ij = -(A^-1)_ki x_j
    assert torch.allclose(JA, -Ainv[:, :, None] * x[None, None, :], atol=1e-10)


def test_gradient_through_restarts_approaches_the_inverse():
    n = 20
    g = torch.Generator().manual_seed(12)
    A = torch.randn(n, n, generator=g, dtype=f64) / math.sqrt(n) + 2 * torch.eye(n, dtype=f64)
    b = torch.randn(n, generator=g, dtype=f64)
    Ainv = torch.linalg.inv(A)
    J = torch.autograd.functional.jacobian(lambda b: gmres(lambda v: A @ v, b, rtol=1e-10, restart=5)[0], b)
    _, info = gmres(lambda v: A @ v, b, rtol=1e-10, restart=5)
    assert info.restarts >= 3
    assert float((J - Ainv).abs().max() / Ainv.abs().max()) < 1e-7
    # a torch preconditioner stays on the graph too
    d = torch.diagonal(A)
    J = torch.autograd.functional.jacobian(
        lambda b: gmres(lambda v: A @ v, b, rtol=1e-10, restart=5, precond=lambda v: v / d)[0], b)
    assert float((J - Ainv).abs().max() / Ainv.abs().max()) < 1e-7


def test_no_grad_gives_the_same_result_as_the_recorded_solve():
    A, b = random_nonsymmetric(20, seed=13)
    b.requires_grad_(True)
    x_rec, i_rec = gmres(lambda v: A @ v, b, rtol=1e-10, restart=8)
    with torch.no_grad():
        x_ng, i_ng = gmres(lambda v: A @ v, b, rtol=1e-10, restart=8)
    assert x_rec.requires_grad and not x_ng.requires_grad
    assert i_rec.iterations == i_ng.iterations and i_rec.restarts == i_ng.restarts
    assert torch.allclose(x_rec.detach(), x_ng, rtol=0, atol=1e-9)
    with torch.inference_mode():
        x_inf, _ = gmres(lambda v: A @ v, b.detach(), rtol=1e-10, restart=8)
    assert torch.allclose(x_inf, x_ng, rtol=0, atol=1e-12)


def test_a_preconditioner_that_leaves_the_graph_is_an_error():
    A, b = random_nonsymmetric(5, seed=14)
    b.requires_grad_(True)
    with pytest.raises(RuntimeError, match="precond cut the autograd graph"):
        gmres(lambda v: A @ v, b, precond=lambda v: torch.from_numpy(v.detach().numpy() / 2))
    with pytest.raises(RuntimeError, match="matvec cut the autograd graph"):
        gmres(lambda v: torch.from_numpy(A.numpy() @ v.detach().numpy()), b)
    with torch.no_grad():                                 # fine when nothing is recorded
        _, info = gmres(lambda v: torch.from_numpy(A.numpy() @ v.numpy()), b, rtol=1e-10)
    assert info.converged


# ---- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "err", "match"), [
    (dict(restart=0), ValueError, "restart"),
    (dict(restart=2.5), TypeError, "restart"),
    (dict(restart=True), TypeError, "restart"),
    (dict(rtol=-1e-6), ValueError, "rtol"),
    (dict(atol=float("nan")), ValueError, "atol"),
    (dict(rtol="1e-6"), TypeError, "rtol"),
    (dict(rtol=0.0, atol=0.0), ValueError, "both 0"),
    (dict(maxiter=0), ValueError, "maxiter"),
    (dict(x0=torch.zeros(3, dtype=f64)), ValueError, "x0"),
    (dict(x0=torch.tensor([0.0, float("nan"), 0.0, 0.0], dtype=f64)), ValueError, "x0 contains NaN"),
    (dict(precond="jacobi"), TypeError, "precond"),
    (dict(b=torch.ones(2, 2, dtype=f64)), ValueError, "1-D"),
    (dict(b=torch.ones(4, dtype=torch.int64)), TypeError, "floating"),
    (dict(b=torch.tensor([1.0, float("inf"), 0.0, 0.0], dtype=f64)), ValueError, "b contains Inf"),
    (dict(b=torch.ones(4, dtype=torch.complex128)), TypeError, "real"),
    (dict(matvec="A"), TypeError, "matvec"),
])
def test_bad_input_is_refused_before_any_work(kwargs, err, match):
    op = Counting(torch.eye(4, dtype=f64))
    args = dict(matvec=op, b=torch.ones(4, dtype=f64))
    for key in ("matvec", "b"):
        if key in kwargs:
            args[key] = kwargs.pop(key)
    with pytest.raises(err, match=match):
        gmres(args["matvec"], args["b"], **kwargs)
    assert op.calls == 0


def test_operator_of_the_wrong_shape_or_dtype_is_refused_at_the_first_product():
    b = torch.ones(4, dtype=f64)
    with pytest.raises(ValueError, match=r"matvec returned a tensor of shape \(3,\)"):
        gmres(lambda v: v[:3], b)
    with pytest.raises(ValueError, match="matvec returned.*float32"):
        gmres(lambda v: v.float(), b)
    with pytest.raises(ValueError, match="precond returned"):
        gmres(lambda v: v, b, precond=lambda v: torch.ones(5, dtype=f64))


def test_gmres_algorithm_bad_input():
    A = convection_diffusion(4)
    b = rhs(A.shape[0])
    with pytest.raises(ValueError, match="restart"):
        GMRES(restart=0)
    with pytest.raises(ValueError, match="unknown preconditioner"):
        GMRES(preconditioner="ilu17")
    with pytest.raises(ValueError, match="rtol"):
        solve(LinearProblem(A, b), GMRES(), rtol=-1.0)
    with pytest.raises(TypeError, match="check_symmetry"):
        solve(LinearProblem(A, b), GMRES(), check_symmetry=False)
    with pytest.raises(TypeError, match="unknown option"):
        solve(LinearProblem(A, b), GMRES(), tol=1e-6)
    with pytest.raises(ValueError, match="x0"):
        solve(LinearProblem(A, b), GMRES(), x0=torch.zeros(3, dtype=f64))
    with pytest.raises(ValueError, match="square"):
        LinearProblem(torch.ones(4, 3, dtype=f64), torch.ones(4, dtype=f64))
    with pytest.raises(ValueError, match="null space"):
        solve(LinearProblem(A, b, nullspace=torch.ones(A.shape[0], dtype=f64)), GMRES())
    with pytest.raises(ValueError, match="Jacobi needs a non-zero diagonal"):
        solve(LinearProblem(torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=f64), torch.ones(2, dtype=f64)),
              GMRES(preconditioner="jacobi"))
    with pytest.raises(ValueError, match="Jacobi needs an explicit matrix"):
        solve(LinearProblem(lambda v: v, torch.ones(2, dtype=f64)), GMRES(preconditioner="jacobi"))
    assert repr(GMRES(restart=7)) == "GMRES(restart=7, preconditioner=Identity())"
