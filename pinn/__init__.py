"""Physics-informed neural networks for 1D + time transport problems: Eulerian PINN and Lagrangian PINN.

>>> from solvers import solve
>>> from pinn import LagrangianPINN, convection
>>> sol = solve(convection(30.0), LagrangianPINN(adam_iters=300, lbfgs_iters=0), progress=False)
>>> sol.stats.rel_l2 < 0.1
True
"""

from .lagrangian import (
    LagrangianNet,
    LagrangianPINN,
    LagrangianSolution,
    lagrangian_derivatives,
    lagrangian_residuals,
)
from .networks import MLP, SpaceTimeEmbedding
from .pinn import PINN, EulerianNet, PINNSolution, causal_residual_loss, collocation_points, relative_l2
from .problem import (
    PDEProblem,
    burgers,
    burgers_moving_shock,
    burgers_raissi,
    convection,
    convection_diffusion,
    fourier_interpolant,
    manufactured,
)
from .reference import cole_hopf, convection_diffusion_trig, gaussian_heat, periodic_gaussian_solution
from .training import TrainResult, train

__all__ = [
    "PDEProblem", "convection", "convection_diffusion", "burgers", "burgers_raissi", "burgers_moving_shock",
    "manufactured", "fourier_interpolant", "cole_hopf", "convection_diffusion_trig", "gaussian_heat",
    "periodic_gaussian_solution", "PINN", "LagrangianPINN", "PINNSolution", "LagrangianSolution",
    "EulerianNet", "LagrangianNet", "lagrangian_derivatives", "lagrangian_residuals", "causal_residual_loss",
    "collocation_points", "relative_l2", "MLP", "SpaceTimeEmbedding", "train", "TrainResult",
]
