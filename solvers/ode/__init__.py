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
from .bosh3 import Bosh3
from .classic import RK4, Euler, Heun, Midpoint, Ralston
from .dopri5 import Dopri5
from .runge_kutta import ExplicitRungeKutta
from .tableau import ButcherTableau
from .torchdiffeq_backend import TorchDiffEq
from .tsit5 import Tsit5
from .verner import Vern6, Vern7, Verner65

#: Every explicit Runge-Kutta method, in order of increasing order.
METHODS = (Euler, Midpoint, Heun, Ralston, Bosh3, RK4, Dopri5, Tsit5, Verner65, Vern6, Vern7)

__all__ = [
    "ButcherTableau", "ExplicitRungeKutta", "StepResult", "initial_step",
    "Euler", "Midpoint", "Heun", "Ralston", "RK4", "Bosh3", "Dopri5", "Tsit5", "Verner65", "Vern6", "Vern7",
    "METHODS",
    "Controller", "ConstantStepSize", "IController", "PIController", "PIDController", "TorchDiffEq",
]
