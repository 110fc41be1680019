"""SDE solvers behind the same ``solve``: Euler-Maruyama, Milstein, Euler-Heun, SRA1, adaptive LambaEM.

>>> import torch
>>> from solvers import solve
>>> from solvers.problem import SDEProblem
>>> from solvers.sde import EulerMaruyama
>>> prob = SDEProblem(lambda t, y: -y, lambda t, y: 0.1 * y, torch.ones(4, 1), (0.0, 1.0))
>>> sol = solve(prob, EulerMaruyama(), dt=0.01, seed=0)
>>> tuple(sol.ys.shape), sol.stats.nfe, sol.stats.nge
((101, 4, 1), 100, 100)
"""

from ..stepping.protocol import StepResult
from .brownian import GridIncrements, IntervalPath, fixed_grid
from .methods import EM, SRA1, EulerHeun, EulerMaruyama, LambaEM, Milstein, SDEAlgorithm, g_prod
from .solution import SDESolution

#: Every SDE method.
METHODS = (EulerMaruyama, EulerHeun, Milstein, SRA1, LambaEM)

__all__ = ["EulerMaruyama", "EM", "EulerHeun", "Milstein", "SRA1", "LambaEM", "SDEAlgorithm",
           "StepResult", "SDESolution", "GridIncrements", "IntervalPath", "fixed_grid",
           "g_prod", "METHODS"]
