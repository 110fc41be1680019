"""Explicit Runge-Kutta integrators, step-size controllers and dense output."""

from ..stepping.controllers import (
    ConstantStepSize,
    Controller,
    IController,
    PIController,
    PIDController,
    initial_step,
)
from ..stepping.protocol import StepResult
from .autoswitch import AutoSwitch
from .bosh3 import Bosh3
from .classic import RK4, Euler, Heun, Midpoint, Ralston
from .dopri5 import Dopri5
from .esdirk import ESDIRK, ESDIRKTableau, Kvaerno3, Kvaerno5
from .implicit import ImplicitStepper
from .newton import NewtonOptions
from .rosenbrock import Rodas4, Rodas5P, Rosenbrock, Rosenbrock23
from .rosenbrock_tableaux import RODAS4, RODAS5P, ROSENBROCK23, RosenbrockTableau
from .runge_kutta import ExplicitRungeKutta
from .tableau import ButcherTableau
from .torchdiffeq_backend import TorchDiffEq
from .tsit5 import Tsit5
from .verner import Vern6, Vern7, Verner65

#: The explicit Runge-Kutta methods of the order table, in order of increasing order.
#: (``Vern6`` is left out of this list of order-tested methods: its large, cancelling weights put a
#: float64 error floor near 1e-12 before its order-6 regime is reached, so no fixed-step ladder shows
#: its order; ``tests/test_verner.py`` checks its order conditions and observed order 6-7.)
METHODS = (Euler, Midpoint, Heun, Ralston, Bosh3, RK4, Dopri5, Tsit5, Verner65, Vern7)

__all__ = [
    "ButcherTableau", "ExplicitRungeKutta", "StepResult", "initial_step",
    "Euler", "Midpoint", "Heun", "Ralston", "RK4", "Bosh3", "Dopri5", "Tsit5", "Verner65", "Vern6", "Vern7",
    "METHODS", "ImplicitStepper", "Rosenbrock", "Rosenbrock23", "Rodas4", "Rodas5P", "RosenbrockTableau",
    "RODAS4", "RODAS5P", "ROSENBROCK23", "AutoSwitch", "ESDIRK", "ESDIRKTableau", "Kvaerno3", "Kvaerno5",
    "NewtonOptions",
    "Controller", "ConstantStepSize", "IController", "PIController", "PIDController", "TorchDiffEq",
]
