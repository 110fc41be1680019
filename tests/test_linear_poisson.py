"""Poisson generators: the operator, its null space, consistent right-hand sides, and second-order
convergence to a SymPy manufactured solution."""

import numpy as np
import pytest
import sympy as sp_
import torch

from solvers import solve
from solvers.linear import (
    AIR,
    CG,
    FLUID,
    PCG,
    SOLID,
    Box,
    PoissonGrid,
    Sphere,
    dirichlet_poisson_problem,
    divergence_rhs,
    poisson_problem,
    random_obstacles,
    smoke_domain,
)


def manufactured(dim):
    """u with non-zero boundary values; f = -Laplace(u) derived symbolically."""
    X = sp_.symbols("x y z")[:dim]
    u = sp_.exp(X[0]) * sp_.sin(sp_.pi * X[1]) + X[0] * X[-1] ** 2
    if dim == 3:
        u = u + sp_.cos(2 * X[2]) * X[1]
    f = sp_.simplify(-sum(sp_.diff(u, x, 2) for x in X))
    return sp_.lambdify(X, u, "numpy"), sp_.lambdify(X, f, "numpy")


@pytest.mark.parametrize("dim,sizes", [(2, (8, 16, 32)), (3, (4, 8, 16))])
def test_manufactured_solution_second_order(dim, sizes):
    u, f = manufactured(dim)
    errs, hs = [], []
    for n in sizes:
        prob, X = dirichlet_poisson_problem(n, dim, f, u)
        sol = solve(prob, PCG("amg"), rtol=1e-13)
        exact = u(*X).ravel()
        errs.append(float(np.abs(sol.x.numpy() - exact).max()))
        hs.append(1.0 / (n + 1))
    orders = np.diff(np.log(errs)) / np.diff(np.log(hs))
    assert np.all(orders > 1.85) and np.all(orders < 2.3), (errs, orders)


def test_matrix_structure_and_stencil_agree():
    g = smoke_domain(12, 3, [Sphere((0.5, 0.5, 0.4), 0.2), Box((0.1, 0.1, 0.1), (0.3, 0.4, 0.3))])
    A = g.matrix()
    assert (abs(A - A.T)).max() == 0
    assert g.nullspace() is None  # open top: Dirichlet contact, nonsingular
    # rows of cells with no air neighbour sum to zero (Neumann), others are strictly dominant
    rowsum = np.asarray(A.sum(axis=1)).ravel()
    assert np.all(rowsum >= 0) and np.any(rowsum > 0) and np.any(rowsum == 0)
    v = torch.randn(3, g.n, dtype=torch.float64)
    grid_apply = g.stencil(dtype=torch.float64)
    Av = g.from_grid(grid_apply(g.to_grid(v)))
    assert torch.allclose(Av, torch.from_numpy((A @ v.numpy().T).T), atol=1e-12)
    assert float(np.linalg.eigvalsh(A.toarray()).min()) > 0


def test_flags_and_boundary_layers():
    g = smoke_domain(8, 2, open_face="top")
    assert (g.flags[:, -1][1:-1] == AIR).all() and (g.flags[0] == SOLID).all()
    assert g.n == 6 * 6 and (g.flags[1:-1, 1:-1] == FLUID).all()
    # obstacles are solid cells
    g2 = smoke_domain(16, 2, [Sphere((0.5, 0.5), 0.25)])
    removed = 14 * 14 - g2.n
    assert abs(removed - np.pi * 0.25 ** 2 * 16 ** 2) < 10  # the disc's area in cells


def test_pure_neumann_nullspace_and_consistent_rhs():
    flags = np.full((10, 10), FLUID, dtype=np.int8)
    flags[:, 5] = SOLID  # two closed components
    g = PoissonGrid(flags, outside="neumann")
    N = g.nullspace()
    assert N.shape == (g.n, 2)
    assert np.allclose(N.T @ N, np.eye(2))
    assert np.abs(g.matrix() @ N).max() < 1e-12
    b = divergence_rhs(g, seed=1)
    assert np.abs(N.T @ b).max() < 1e-10  # consistent: flux cancels on closed components
    p = poisson_problem(g, b=np.ones(g.n))  # an inconsistent b is projected onto range(A)
    assert abs(float(p.nullspace.T.matmul(p.b).abs().max())) < 1e-12
    sol = solve(p, CG(), rtol=1e-10)
    assert sol.success


def test_dirichlet_faces_make_it_nonsingular():
    flags = np.zeros((6, 6), dtype=np.int8)
    assert PoissonGrid(flags, outside="neumann").nullspace() is not None
    one_face = ("dirichlet", "neumann", "neumann", "neumann")
    assert PoissonGrid(flags, outside=one_face).nullspace() is None


def test_random_obstacles_repeatable():
    a, b = random_obstacles(3, 3, seed=7), random_obstacles(3, 3, seed=7)
    assert a == b and len(a) == 3


def test_bad_grids():
    with pytest.raises(ValueError):
        PoissonGrid(np.full((4, 4), 5))
    with pytest.raises(ValueError):
        PoissonGrid(np.full((4, 4), SOLID))
    with pytest.raises(ValueError):
        PoissonGrid(np.zeros((4, 4)), h=-1.0)
    with pytest.raises(ValueError):
        PoissonGrid(np.zeros((4, 4)), outside="robin")
    with pytest.raises(ValueError):
        PoissonGrid(np.zeros(4))
    with pytest.raises(ValueError):
        smoke_domain(16, 3, [Sphere((0.5, 0.5), 0.2)])
    with pytest.raises(ValueError):
        poisson_problem(smoke_domain(8, 2), b=np.ones(3))
