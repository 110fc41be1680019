"""DCDM: identity = CG, safeguards, the network, training (loss, resume) and a trained toy that beats CG."""

import numpy as np
import pytest
import torch

from solvers import ReturnCode, SolverError, solve
from solvers.linear import CG, LinearProblem, Sphere, dirichlet_grid, poisson_problem, smoke_domain
from solvers.linear.dcdm import DCDM
from solvers.linear.network import DCDMNet, GridModel, StencilOperator
from solvers.linear.training import (
    RitzSampler,
    TrainConfig,
    dcdm_loss,
    lanczos_ritz,
    load_dcdm,
    load_pretrained,
    pretrained_path,
    train_dcdm,
    unrolled_dcdm_loss,
)

f64 = torch.float64


@pytest.mark.parametrize("s", [1, 2, 4])
def test_identity_model_reproduces_cg(s):
    for p in (poisson_problem(smoke_domain(24, 2, [Sphere((0.5, 0.45), 0.2)]), seed=1),
              poisson_problem(dirichlet_grid(8, 3), b=torch.ones(512, dtype=f64))):
        cg = solve(p, CG(), rtol=1e-8)
        dc = solve(p, DCDM(None, s=s, refresh=0), rtol=1e-8)
        assert dc.iterations == cg.iterations
        assert dc.stats.fallbacks == 0
        k = min(len(cg.residuals), 20)
        assert np.allclose(dc.residuals[:k], cg.residuals[:k], rtol=1e-6)
        assert torch.allclose(dc.x, cg.x, atol=1e-6 * float(cg.x.abs().max()))


def test_safeguard_handles_ascent_and_nan_directions():
    p = poisson_problem(smoke_domain(12, 2), seed=2)
    cg = solve(p, CG(), rtol=1e-8)
    for bad in (lambda r: -r, lambda r: r * float("nan")):
        sol = solve(p, DCDM(bad), rtol=1e-8)
        assert sol.success and sol.stats.fallbacks == sol.iterations
        assert sol.iterations == cg.iterations  # every step fell back to the (orthogonalised) residual


def test_dcdm_options_and_errors():
    p = poisson_problem(smoke_domain(12, 2), seed=2)
    sol = solve(p, DCDM(), rtol=1e-12, maxiter=3, throw=False)
    assert sol.retcode is ReturnCode.NOT_CONVERGED and sol.iterations == 3
    with pytest.raises(SolverError):
        solve(p, DCDM(), rtol=1e-12, maxiter=3)
    with pytest.raises(ValueError):
        DCDM(s=-1)
    with pytest.raises(TypeError):
        DCDM(model=3)
    net = DCDMNet(2)
    with pytest.raises(ValueError, match="grid"):
        solve(LinearProblem(p.A, p.b), DCDM(net))
    with pytest.raises(TypeError, match="unknown option"):
        solve(p, DCDM(), tol=1e-3)


def test_network_shapes_masks_and_homogeneity_of_the_loss():
    torch.manual_seed(0)
    for dim, n in ((2, 20), (3, 12)):
        g = smoke_domain(n, dim, [Sphere((0.5,) * dim, 0.2)])
        net = DCDMNet(dim)
        r = torch.randn(2, *g.shape)
        q = net(r, g.geometry())
        assert q.shape == r.shape
        assert float(q.detach()[:, ~torch.as_tensor(g.fluid)].abs().max()) == 0.0  # nothing outside the fluid
    b = torch.randn(4, 30)
    q, Aq = torch.randn(4, 30), torch.randn(4, 30)
    # the loss does not see the scale of q (exact line search)
    assert torch.allclose(dcdm_loss(q, b, Aq), dcdm_loss(7.0 * q, b, 7.0 * Aq))
    # and is 0 when q is the exact solution direction
    A = torch.diag(torch.arange(1.0, 31.0))
    assert float(dcdm_loss(b @ torch.linalg.inv(A), b, b)) < 1e-10


def test_lanczos_ritz_values_bracket_spectrum():
    A = dirichlet_grid(10, 2).matrix()
    theta, Y = lanczos_ritz(A, 40, seed=0)
    lam = np.linalg.eigvalsh(A.toarray())
    assert np.allclose(Y.T @ Y, np.eye(Y.shape[1]), atol=1e-8)
    assert lam[0] - 1e-8 <= theta[0] < lam[0] + 0.5 and lam[-1] + 1e-8 >= theta[-1] > lam[-1] - 1.0
    assert abs(theta[0] - lam[0]) < 1e-6  # extreme Ritz values converge first
    b = RitzSampler(Y).sample(5, torch.Generator().manual_seed(0))
    assert torch.allclose(torch.linalg.vector_norm(b, dim=1), torch.ones(5))


def toy_config(**kw):
    base = dict(n=16, dim=2, geometries=2, obstacles=1, ritz=60, batch=8, steps=250, lr=2e-2, lr_final=2e-3,
                channels=4, checkpoint_every=1000)
    base.update(kw)
    return TrainConfig(**base)


def test_training_resumes_exactly_from_checkpoint(tmp_path):
    torch.set_num_threads(1)
    cfg = toy_config(steps=6, checkpoint_every=3)
    ref, h_ref = train_dcdm(cfg, progress=False)
    ck = tmp_path / "ck.pt"
    train_dcdm(cfg, checkpoint=ck, progress=False, until=3)  # "interrupted" after 3 steps
    net, h = train_dcdm(cfg, checkpoint=ck, progress=False)  # resumes at step 3
    assert len(h) == 6 and np.allclose(h, h_ref)
    for a, b in zip(ref.parameters(), net.parameters()):
        assert torch.allclose(a, b)


def test_trained_toy_dcdm_beats_cg_and_its_initial_cycle():
    """A tiny 2D network trained for seconds: the loss falls, and DCDM with it needs far fewer iterations
    than CG and no more than the hand-set cycle it started from."""
    torch.set_num_threads(1)
    cfg = toy_config(steps=60, unroll=3, lr=2e-2)
    net, hist = train_dcdm(cfg, progress=False)
    assert np.mean(hist[-10:]) < np.mean(hist[:10]) - 0.05  # log residual per iteration
    from solvers.linear.training import training_grids
    g = training_grids(cfg)[0]
    init = DCDMNet(2, channels=4)
    its = {"cg": [], "init": [], "trained": []}
    for seed in range(3):
        p = poisson_problem(g, seed=seed)
        its["cg"].append(solve(p, CG(), rtol=1e-6).iterations)
        its["init"].append(solve(p, DCDM(init), rtol=1e-6).iterations)
        its["trained"].append(solve(p, DCDM(net), rtol=1e-6).iterations)
    assert np.mean(its["trained"]) < 0.5 * np.mean(its["cg"]), its
    assert np.mean(its["trained"]) <= np.mean(its["init"]), its


def test_unrolled_loss_is_the_log_of_the_one_step_loss_for_one_step():
    torch.manual_seed(0)
    g = smoke_domain(12, 2, [Sphere((0.5, 0.45), 0.2)])
    net = DCDMNet(2).double()
    A = g.stencil(f64)
    b = torch.randn(3, g.n, dtype=f64)
    b = b / torch.linalg.vector_norm(b, dim=1, keepdim=True)
    bg = g.to_grid(b)
    one = unrolled_dcdm_loss(lambda r: net(r, g.geometry(f64)), A, bg, 1)
    q = net(g.to_grid(b * g.n ** 0.5), g.geometry(f64))
    qv, Aqv = g.from_grid(q), g.from_grid(A(q))
    per_sample = [dcdm_loss(qv[i:i + 1], b[i:i + 1], Aqv[i:i + 1]) for i in range(3)]
    assert torch.allclose(one, torch.log(torch.stack(per_sample)).mean())
    # K steps of the unrolled loss follow the solver: log ||r_K||^2 / K from DCDM's own residual history
    p = poisson_problem(g, b=b[0])
    sol = solve(p, DCDM(net, refresh=0), rtol=1e-14, maxiter=4, throw=False)
    with torch.no_grad():
        k4 = unrolled_dcdm_loss(lambda r: net(r, g.geometry(f64)), A, bg[:1], 4)
    assert abs(float(k4) - 2 * np.log(sol.residuals[4]) / 4) < 1e-6


def test_shipped_weights_load_and_run():
    if not pretrained_path().exists():
        pytest.skip("no shipped weights")
    net = load_pretrained()
    g = smoke_domain(16, 3, [Sphere((0.5, 0.5, 0.4), 0.2)])
    p = poisson_problem(g, seed=0)
    sol = solve(p, DCDM(net), rtol=1e-6)
    cg = solve(p, CG(), rtol=1e-6)
    assert sol.success and sol.iterations * 3 < cg.iterations  # 16^3 with an obstacle not seen in training
    net2 = load_dcdm(pretrained_path())
    gm1, gm2 = GridModel(net, g), GridModel(net2, g)
    assert torch.allclose(gm1(p.b), gm2(p.b))


@pytest.mark.parametrize("nu", [1, 2, 3])
def test_network_is_linear_symmetric_positive_for_random_weights(nu):
    """f(r) = M r with M SPD for any weights: DCDM with it is PCG with a learned preconditioner."""
    torch.manual_seed(1)
    g = smoke_domain(16, 3, [Sphere((0.5, 0.5, 0.4), 0.2)])
    net = DCDMNet(3, nu=nu, channels=4).double()
    with torch.no_grad():
        for prm in net.parameters():
            prm.add_(0.5 * torch.randn_like(prm))
    G = g.geometry(torch.float64)
    u, v = (g.to_grid(torch.randn(g.n, dtype=f64))[None] for _ in range(2))
    with torch.no_grad():
        fu, fv = net(u, G), net(v, G)
        assert torch.allclose(net(2 * u - 3 * v, G), 2 * fu - 3 * fv, atol=1e-10 * float(fu.abs().max()))
        assert abs(float((fu * v).sum() - (fv * u).sum())) < 1e-10 * float((fu * u).sum().abs())
        # damped Jacobi with omega < 1 and lambda(D^-1 A) <= 2 keeps the symmetric cycle definite
        cols = [g.from_grid(net(g.to_grid(e)[None], G)[0]) for e in torch.eye(g.n, dtype=f64)[:200]]
        S = torch.stack(cols)[:, :200]  # a principal submatrix of an SPD matrix is SPD
        assert float(torch.linalg.eigvalsh(0.5 * (S + S.T)).min()) > 0


def test_stencil_operator_is_the_pressure_matrix_and_coarsens_by_galerkin():
    import scipy.sparse as sp
    for dim, n, obs in ((3, 12, [Sphere((0.5, 0.5, 0.4), 0.25)]), (2, 16, [Sphere((0.4, 0.5), 0.2)])):
        g = smoke_domain(n, dim, obs)
        A = StencilOperator.from_geometry(g.geometry(f64))
        w = torch.randn(g.n, dtype=f64)
        Aw = g.from_grid(A(g.to_grid(w)[None, None])[0, 0])
        assert torch.allclose(Aw, torch.from_numpy(g.matrix() @ w.numpy()), atol=1e-12)
        # P_0^T A P_0 with P_0 the piecewise-constant prolongation from 2^d blocks, assembled by scipy
        cells = np.arange(n ** dim).reshape((n,) * dim)
        block = np.zeros_like(cells)
        for ax in range(dim):
            block = block * (n // 2) + (np.indices((n,) * dim)[ax] // 2)
        P0 = sp.csr_matrix((np.ones(g.n), (np.arange(g.n), block.ravel()[g.index])),
                           shape=(g.n, (n // 2) ** dim))
        Ac = (P0.T @ g.matrix() @ P0).toarray()
        dense_c = A.coarsen().dense().numpy()
        assert np.allclose(dense_c, Ac, atol=1e-12)


def test_untrained_cycle_iterations_barely_grow_with_the_grid():
    """The multigrid structure alone: iterations at 32^3 within a few of those at 16^3 (CG doubles)."""
    net = DCDMNet(3)
    its = {}
    for n in (16, 32):
        p = poisson_problem(smoke_domain(n, 3, [Sphere((0.5, 0.5, 0.4), 0.2)]), seed=0)
        its[n] = (solve(p, DCDM(net), rtol=1e-6).iterations, solve(p, CG(), rtol=1e-6).iterations)
    assert its[32][0] <= its[16][0] + 3 and its[32][1] > 1.6 * its[16][1], its
    assert its[32][0] <= 15, its


def test_grid_model_reads_dirichlet_faces_beyond_the_array():
    """dirichlet_grid has no explicit air cells: the grid's diagonal brings its boundary into the cycle."""
    g = dirichlet_grid(8, 3)
    gm = GridModel(DCDMNet(3).double(), g)
    A0 = gm.cache["hierarchy"]["ops"][0]
    w = torch.randn(g.n, dtype=f64)
    Aw = g.from_grid(A0(g.to_grid(w)[None, None])[0, 0])
    assert torch.allclose(Aw, torch.from_numpy(g.h ** 2 * (g.matrix() @ w.numpy())), atol=1e-12)
    p = poisson_problem(dirichlet_grid(16, 3), seed=0)
    assert solve(p, DCDM(DCDMNet(3)), rtol=1e-6).iterations * 4 < solve(p, CG(), rtol=1e-6).iterations


def test_dcdm_and_the_shipped_network_are_public_in_solvers_linear():
    import solvers.linear
    from solvers.linear import DCDM as PublicDCDM
    from solvers.linear import DCDMNet as PublicNet
    from solvers.linear import load_dcdm as public_load_dcdm
    from solvers.linear import load_pretrained as public_load_pretrained

    assert {"DCDM", "DCDMNet", "load_pretrained", "load_dcdm"} <= set(solvers.linear.__all__)
    assert (PublicDCDM, PublicNet, public_load_dcdm, public_load_pretrained) == (
        DCDM, DCDMNet, load_dcdm, load_pretrained)
    p = poisson_problem(smoke_domain(8, 3), seed=0)
    sol = solve(p, PublicDCDM(public_load_pretrained()), rtol=1e-6)
    assert sol.retcode == ReturnCode.SUCCESS and sol.iterations > 0
