"""CG / PCG / flexible CG: exactness, preconditioners, stopping, diagnostics and bad input."""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from solvers import ReturnCode, SolverError, solve
from solvers.linear import (
    AMG,
    CG,
    IC0,
    PCG,
    FlexibleCG,
    Jacobi,
    LinearProblem,
    Sphere,
    as_operator,
    dirichlet_grid,
    ic0_factor,
    poisson_problem,
    smoke_domain,
)

f64 = torch.float64


def random_spd(n, seed=0, eigs=None):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=f64))
    lam = torch.linspace(1.0, 50.0, n, dtype=f64) if eigs is None else torch.as_tensor(eigs, dtype=f64)
    return (Q * lam) @ Q.T, torch.randn(n, generator=g, dtype=f64)


def poisson2d(n=12):
    g = dirichlet_grid(n, 2)
    b = torch.as_tensor(np.random.default_rng(1).standard_normal(g.n), dtype=f64)
    return poisson_problem(g, b=b)


@pytest.mark.parametrize("n", [5, 12, 20])
def test_cg_exact_in_n_steps(n):
    A, b = random_spd(n, seed=n)
    sol = solve(LinearProblem(A, b), CG(), rtol=1e-10)
    assert sol.success and sol.iterations <= n
    assert torch.allclose(sol.x, torch.linalg.solve(A, b), rtol=1e-8, atol=1e-10)


def test_cg_terminates_in_number_of_distinct_eigenvalues():
    eigs = [1.0] * 10 + [4.0] * 10 + [9.0] * 10  # 3 distinct eigenvalues: CG's polynomial has degree 3
    A, b = random_spd(30, seed=3, eigs=eigs)
    sol = solve(LinearProblem(A, b), CG(), rtol=1e-10)
    assert sol.iterations == 3
    assert len(sol.residuals) == 4 and sol.residuals[0] == pytest.approx(1.0)


def test_every_form_of_A_gives_the_same_solution():
    A, b = random_spd(15, seed=4)
    S = sp.csr_matrix(A.numpy())
    forms = [A, A.to_sparse_coo(), A.to_sparse_csr(), S, lambda x: A @ x]
    xs = [solve(LinearProblem(M, b), CG(), rtol=1e-12).x for M in forms]
    for x in xs[1:]:
        assert torch.allclose(x, xs[0], atol=1e-10)


def test_cg_matches_scipy_and_stops_on_rtol_and_atol():
    p = poisson2d(16)
    sol = solve(p, CG(), rtol=1e-8)
    A = p.A
    ref, info = spla.cg(A, p.b.numpy(), rtol=1e-12, maxiter=2000)
    assert info == 0
    assert np.allclose(sol.x.numpy(), ref, atol=1e-6 * np.abs(ref).max())
    bn = float(p.b.norm())
    assert np.linalg.norm(p.b.numpy() - A @ sol.x.numpy()) <= 1e-8 * bn * 1.01
    assert sol.residuals[-1] <= 1e-8 and all(r > 1e-8 for r in sol.residuals[:-1])
    s2 = solve(p, CG(), rtol=0.0, atol=1e-3 * bn)
    assert s2.residuals[-1] * bn <= 1e-3 * bn and s2.iterations < sol.iterations
    for key in ("setup_time", "solve_time", "iterations", "residuals", "matvecs"):
        assert key in s2.stats.extra
    assert s2.stats.nfe == s2.iterations  # one product with A per iteration (x0 = 0)


def explicit_inverse(apply, n):
    return torch.stack([apply(e) for e in torch.eye(n, dtype=f64)], dim=1)


@pytest.mark.parametrize("prec", [Jacobi(), IC0(), AMG()])
def test_preconditioners_are_spd(prec):
    p = poisson_problem(smoke_domain(8, 2, [Sphere((0.5, 0.4), 0.2)]))
    apply = prec.setup(as_operator(p))
    Minv = explicit_inverse(apply, p.n)
    assert torch.allclose(Minv, Minv.T, atol=1e-10 * float(Minv.abs().max()))
    assert float(torch.linalg.eigvalsh(0.5 * (Minv + Minv.T)).min()) > 0


def test_ic0_definition_and_exactness_on_tridiagonal():
    A = dirichlet_grid(8, 2).matrix()
    L = ic0_factor(A)
    R = (L @ L.T).tocsr()
    mask = A != 0
    assert np.allclose(R[mask], A[mask])  # L L^T = A on the pattern of A
    assert (sp.tril(L) != L).nnz == 0
    T = sp.diags([-1.0, 2.5, -1.0], [-1, 0, 1], shape=(20, 20)).tocsr()  # no fill: IC(0) = Cholesky
    Lt = ic0_factor(T).toarray()
    assert np.allclose(Lt, np.linalg.cholesky(T.toarray()))


def test_preconditioning_cuts_iterations_and_flexible_matches_pcg():
    p = poisson_problem(dirichlet_grid(24, 2), b=torch.ones(24 * 24, dtype=f64))
    it = {name: solve(p, alg, rtol=1e-8).iterations for name, alg in
          [("cg", CG()), ("ic0", PCG("ic0")), ("amg", PCG("amg"))]}
    assert it["amg"] < it["ic0"] < it["cg"]
    s1, s2 = solve(p, PCG("ic0"), rtol=1e-8), solve(p, FlexibleCG("ic0"), rtol=1e-8)
    assert abs(s1.iterations - s2.iterations) <= 1
    assert torch.allclose(s1.x, s2.x, atol=1e-6 * float(s1.x.abs().max()))


def test_jacobi_pcg_on_scaled_system_beats_cg():
    A, b = random_spd(40, seed=5)
    D = torch.diag(torch.logspace(0, 3, 40, dtype=f64))
    As = D @ A @ D  # badly scaled: Jacobi fixes the scaling
    p = LinearProblem(As, b)
    assert solve(p, PCG("jacobi"), rtol=1e-8).iterations < solve(p, CG(), rtol=1e-8).iterations


def test_semidefinite_neumann_system_with_nullspace():
    g = smoke_domain(10, 2, open_face=None)  # closed box: pure Neumann, constants span null(A)
    p = poisson_problem(g, seed=3)
    assert p.nullspace is not None and p.nullspace.shape == (g.n, 1)
    assert abs(float(p.b.sum())) < 1e-10
    sol = solve(p, PCG("ic0"), rtol=1e-10)
    assert abs(float(sol.x.sum())) < 1e-8
    r = p.b.numpy() - p.A @ sol.x.numpy()
    assert np.linalg.norm(r) <= 1e-9 * float(p.b.norm())


def test_float32():
    p = poisson2d(10)
    p32 = LinearProblem(p.A, p.b.float())
    sol = solve(p32, CG(), rtol=1e-5)
    assert sol.x.dtype == torch.float32 and sol.success


def test_not_converged_retcode_and_error():
    p = poisson2d(16)
    sol = solve(p, CG(), rtol=1e-10, maxiter=5, throw=False)
    assert sol.retcode is ReturnCode.NOT_CONVERGED and not sol.success and sol.iterations == 5
    with pytest.raises(SolverError) as err:
        solve(p, CG(), rtol=1e-10, maxiter=5)
    assert err.value.retcode is ReturnCode.NOT_CONVERGED


def test_bad_inputs():
    A, b = random_spd(6)
    with pytest.raises(ValueError, match="square"):
        LinearProblem(torch.ones(6, 5, dtype=f64), b)
    with pytest.raises(ValueError, match="length"):
        LinearProblem(A, torch.ones(5, dtype=f64))
    with pytest.raises(ValueError, match="NaN"):
        LinearProblem(A, b * float("nan"))
    with pytest.raises(TypeError):
        LinearProblem("A", b)
    N = A.clone()
    N[0, 1] += 1.0
    with pytest.raises(ValueError, match="not symmetric"):
        solve(LinearProblem(N, b), CG())
    with pytest.raises(ValueError, match="not symmetric"):
        solve(LinearProblem(lambda x: N @ x, b), CG())
    with pytest.raises(ValueError, match="semi-definite"):
        solve(LinearProblem(-A, b), CG())
    Q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=f64, generator=torch.Generator().manual_seed(0)))
    indefinite = (Q * torch.tensor([-3.0, 1, 2, 3, 4, 5], dtype=f64)) @ Q.T
    op = LinearProblem(lambda x: indefinite @ x, b)  # no diagonal to check: caught in the iteration
    with pytest.raises(SolverError) as err:
        solve(op, CG(), rtol=1e-12)
    assert err.value.retcode is ReturnCode.INDEFINITE
    assert solve(op, CG(), rtol=1e-12, throw=False).retcode is ReturnCode.INDEFINITE
    with pytest.raises(TypeError, match="unknown option"):
        solve(LinearProblem(A, b), CG(), rtoll=1e-3)
    with pytest.raises(ValueError, match="rtol"):
        solve(LinearProblem(A, b), CG(), rtol=-1.0)
    with pytest.raises(ValueError, match="x0"):
        solve(LinearProblem(A, b), CG(), x0=torch.zeros(3, dtype=f64))
    with pytest.raises(ValueError, match="maxiter"):
        solve(LinearProblem(A, b), CG(), maxiter=0)
    with pytest.raises(ValueError, match="unknown preconditioner"):
        PCG("ilu7")
    with pytest.raises(ValueError, match="explicit"):
        solve(LinearProblem(lambda x: A @ x, b), PCG("ic0"))


def test_torch_sparse_diagonal_without_densifying():
    p = poisson2d(8)
    S = p.A.tocoo()
    T = torch.sparse_coo_tensor(np.vstack([S.row, S.col]), S.data, size=S.shape).coalesce()
    for M in (T, T.to_sparse_csr()):
        d = as_operator(LinearProblem(M, p.b)).diagonal()
        assert torch.allclose(d, torch.from_numpy(p.A.diagonal()))
        assert solve(LinearProblem(M, p.b), PCG("jacobi"), rtol=1e-8).success


@pytest.mark.gpu
def test_cg_and_dcdm_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from solvers.linear.dcdm import DCDM
    from solvers.linear.network import DCDMNet

    g = smoke_domain(16, 3, [Sphere((0.5, 0.5, 0.4), 0.2)])
    p = poisson_problem(g, seed=0, device="cuda")
    cpu = solve(poisson_problem(g, seed=0), CG(), rtol=1e-8)
    gpu = solve(p, CG(), rtol=1e-8)
    assert gpu.x.is_cuda and abs(gpu.iterations - cpu.iterations) <= 1
    assert torch.allclose(gpu.x.cpu(), cpu.x, atol=1e-6 * float(cpu.x.abs().max()))
    sol = solve(p, DCDM(DCDMNet(3).cuda()), rtol=1e-6)
    assert sol.success and sol.x.is_cuda


def test_uncoalesced_sparse_coo_is_accepted():
    # Duplicate entries sum: A = diag(2, 2.5); an uncoalesced COO tensor must not be rejected.
    idx = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    A = torch.sparse_coo_tensor(idx, torch.tensor([1.0, 1.0, 2.0, 0.5], dtype=torch.float64), (2, 2))
    assert not A.is_coalesced()
    sol = solve(LinearProblem(A, torch.ones(2, dtype=torch.float64)), CG(), rtol=1e-12)
    torch.testing.assert_close(sol.x, torch.tensor([0.5, 0.4], dtype=torch.float64))
