"""sciml-solvers core: one ``solve(problem, algorithm, **options)`` interface.

>>> import torch
>>> from solvers import ODEProblem, Tsit5, solve
>>> sol = solve(ODEProblem(lambda t, y: -y, torch.ones(1, dtype=torch.float64), (0.0, 1.0)), Tsit5())
>>> bool(abs(sol.ys[-1, 0] - torch.exp(torch.tensor(-1.0, dtype=torch.float64))) < 1e-6)
True
"""

from .adjoint import (
    Adjoint,
    Backprop,
    BacksolveAdjoint,
    CheckpointAdjoint,
    TorchDiffEqAdjoint,
    TorchSDEAdjoint,
)
from .algorithm import Algorithm
from .api import init, solve
from .ensemble import (
    Batched,
    Distributed,
    EnsembleProblem,
    EnsembleSolution,
    MonteCarloStatistics,
    Serial,
    solve_ensemble,
)
from .events import Event, EventRecord
from .ode import (
    METHODS,
    RK4,
    AutoSwitch,
    Bosh3,
    ButcherTableau,
    ConstantStepSize,
    Dopri5,
    Euler,
    Heun,
    IController,
    Kvaerno3,
    Kvaerno5,
    Midpoint,
    PIController,
    PIDController,
    Ralston,
    Rodas4,
    Rodas5P,
    Rosenbrock23,
    TorchDiffEq,
    Tsit5,
    Vern6,
    Vern7,
    Verner65,
)
from .problem import IntegralProblem, LinearProblem, ODEProblem, SDEProblem
from .solution import ReturnCode, Solution, SolverError, Stats, StepTrace
from .training import Trainer

__version__ = "0.1.0"

__all__ = [
    "Algorithm", "solve", "init", "Event", "EventRecord",
    "EnsembleProblem", "EnsembleSolution", "solve_ensemble", "Serial", "Batched", "Distributed",
    "MonteCarloStatistics", "Trainer",
    "ODEProblem", "SDEProblem", "LinearProblem", "IntegralProblem",
    "Solution", "Stats", "StepTrace", "ReturnCode", "SolverError",
    "ButcherTableau", "Euler", "Midpoint", "Heun", "Ralston", "RK4", "Bosh3", "Dopri5", "Tsit5", "Verner65",
    "Vern6", "Vern7", "Rosenbrock23", "Rodas4", "Rodas5P", "Kvaerno3", "Kvaerno5",
    "AutoSwitch",
    "METHODS", "ConstantStepSize", "IController", "PIController", "PIDController", "TorchDiffEq",
    "Adjoint", "Backprop", "BacksolveAdjoint", "CheckpointAdjoint", "TorchDiffEqAdjoint", "TorchSDEAdjoint",
]
