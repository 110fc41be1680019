"""Linear solvers for symmetric positive (semi-)definite systems: CG, PCG, flexible CG and the deep
conjugate direction method (DCDM), plus Poisson-system generators on 2D/3D grids.

>>> import torch
>>> from solvers import solve
>>> from solvers.problem import LinearProblem
>>> from solvers.linear import CG
>>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
>>> sol = solve(LinearProblem(A, torch.tensor([1.0, 2.0], dtype=torch.float64)), CG(), rtol=1e-12)
>>> sol.iterations, [round(v, 6) for v in sol.x.tolist()]
(2, [0.090909, 0.636364])

The deep conjugate direction method takes a network; the shipped one (trained at 32^3) is
``load_pretrained()``: ``solve(problem, DCDM(load_pretrained()), rtol=1e-6)``.
"""

from ..problem import LinearProblem
from .dcdm import DCDM
from .gmres import GMRES, GMRESInfo, gmres
from .krylov import CG, PCG, FlexibleCG
from .network import DCDMNet
from .operators import LinearOperator, as_operator, as_scipy, check_symmetric
from .poisson import (
    AIR,
    FLUID,
    SOLID,
    Box,
    PoissonGrid,
    Sphere,
    dirichlet_grid,
    dirichlet_poisson_problem,
    divergence_rhs,
    poisson_problem,
    random_obstacles,
    smoke_domain,
)
from .preconditioners import AMG, IC0, Identity, Jacobi, Preconditioner, ic0_factor, make_preconditioner
from .solution import LinearSolution
from .training import load_dcdm, load_pretrained

__all__ = [
    "LinearProblem", "LinearSolution", "CG", "PCG", "FlexibleCG", "DCDM", "DCDMNet", "load_pretrained",
    "load_dcdm", "GMRES", "GMRESInfo", "gmres", "Preconditioner", "Identity", "Jacobi",
    "IC0", "AMG", "ic0_factor", "make_preconditioner", "LinearOperator", "as_operator", "as_scipy",
    "check_symmetric", "PoissonGrid", "FLUID", "SOLID", "AIR", "Sphere", "Box", "dirichlet_grid",
    "smoke_domain", "random_obstacles", "divergence_rhs", "poisson_problem", "dirichlet_poisson_problem",
]
