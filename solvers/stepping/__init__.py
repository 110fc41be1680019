"""The stepping layer shared by ODE and SDE methods.

* ``protocol``: ``Stepper``, the protocol every method implements, and
  ``StepResult``, what one attempted step returns;
* ``loop``: ``Integrator``, the one step loop (``init``/``solve``);
* ``controllers``: step-size controllers, which own the tolerances
  (``DEFAULT_TOLERANCES``) and the first step (Hairer's heuristic).
"""

from .controllers import (
    DEFAULT_TOLERANCES,
    ConstantStepSize,
    Controller,
    ControllerState,
    IController,
    PIController,
    PIDController,
    default_tolerances,
    initial_step,
)
from .loop import LOOP_OPTIONS, Integrator, step_grid
from .protocol import Stepper, StepResult
from .times import time_tensor

__all__ = ["Stepper", "StepResult", "Integrator", "LOOP_OPTIONS", "step_grid", "Controller",
           "ControllerState", "ConstantStepSize", "IController", "PIController", "PIDController",
           "DEFAULT_TOLERANCES", "default_tolerances",
           "initial_step", "time_tensor"]
