"""The stepping layer shared by ODE and SDE methods.

* :mod:`~solvers.stepping.protocol`: :class:`Stepper`, the protocol every method implements, and
  :class:`StepResult`, what one attempted step returns;
* :mod:`~solvers.stepping.loop`: :class:`Integrator`, the one step loop (``init``/``solve``);
* :mod:`~solvers.stepping.controllers`: step-size controllers, which own the tolerances
  (:data:`DEFAULT_TOLERANCES`) and the first step (Hairer's heuristic).
"""

from .controllers import (
    DEFAULT_TOLERANCES,
    ConstantStepSize,
    Controller,
    ControllerState,
    IController,
    PIController,
    PIDController,
    initial_step,
)
from .loop import LOOP_OPTIONS, Integrator, step_grid
from .protocol import Stepper, StepResult
from .times import time_tensor

__all__ = ["Stepper", "StepResult", "Integrator", "LOOP_OPTIONS", "step_grid", "Controller",
           "ControllerState", "ConstantStepSize", "IController", "PIController", "PIDController",
           "DEFAULT_TOLERANCES",
           "initial_step", "time_tensor"]
