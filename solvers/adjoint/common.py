"""Helpers the adjoints share: input checks and the solution they return."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..ode.torchdiffeq_backend import TorchDiffEq
from ..problem import ODEProblem
from ..solution import Solution, Stats
from ..stepping.protocol import Stepper

#: Defaults of our Runge-Kutta solves (``ExplicitRungeKutta``); the backward solve inherits them.
RTOL, ATOL = 1e-6, 1e-9


def check_own_method(adjoint: Any, problem: Any, algorithm: Any) -> None:
    """Our adjoints step with our explicit Runge-Kutta methods and solve ODEs only."""
    name = type(adjoint).__name__
    if not isinstance(problem, ODEProblem):
        raise TypeError(f"{name} differentiates ODE solves (an ODEProblem), not {type(problem).__name__}")
    if isinstance(algorithm, TorchDiffEq):
        raise ValueError(f"{name} steps with the solvers Runge-Kutta methods, but the algorithm is "
                         f"{algorithm!r}: pass e.g. Tsit5(), or use TorchDiffEqAdjoint() for torchdiffeq's "
                         "adjoint")
    if not isinstance(algorithm, Stepper) or algorithm.kind != "ode" or not algorithm.interpolates:
        raise ValueError(f"{name} needs an ODE method of solvers (Tsit5(), Dopri5(), RK4(), Rodas5P(), "
                         f"Kvaerno5(), AutoSwitch() ...), got {algorithm!r}")


def check_backward_tolerance(name: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number or None, got {value!r}") from err
    if not (v >= 0 and v < float("inf")):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return v


def with_graph(sol: Solution, ys: Tensor, y_final: Tensor, adjoint: Any, backward: Stats,
               keep_trace: bool, problem: Any) -> Solution:
    """``sol`` with its states replaced by the differentiable ones; ``stats.backward`` (a
    ``Stats`` filled in by the backward pass) and ``stats.adjoint`` added."""
    extra = dict(sol.stats.extra)
    extra["adjoint"] = repr(adjoint)
    extra["backward"] = backward
    stats = Stats(nfe=sol.stats.nfe, naccept=sol.stats.naccept, nreject=sol.stats.nreject, extra=extra)
    trace = sol.trace if keep_trace else None
    return Solution(ts=sol.ts, ys=ys, stats=stats, retcode=sol.retcode, trace=trace,
                    interpolant=sol.interpolant, t_final=sol.t_final, y_final=y_final, problem=problem,
                    algorithm=sol.algorithm)
