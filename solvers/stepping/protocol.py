"""The stepper protocol: what every time-stepping method (ODE or SDE) gives the one loop.

A *stepper* is an ``Algorithm`` that can attempt one step. The loop
(``solvers.stepping.loop``) owns everything else: the span, the step-size controller, rejection,
``saveat``, the trace, return codes, progress and events. A method supplies:

* facts: ``adaptive``, ``error_exponent`` (the ``k`` of the controller's ``E^(-1/k)``),
  ``initial_step_order`` (for Hairer's starting-step heuristic), ``stability_size``,
  ``interpolates`` (has dense output, so ``saveat`` is interpolated; otherwise steps land on the
  save times), ``kind`` (``"ode"`` or ``"sde"``: which default tolerances apply);
* ``prepare(problem, options, grid) -> terms``: per-solve set-up (the vector fields; for SDEs the
  Brownian path), done once before the first step;
* ``first_evaluations(terms, t0, y0) -> (f0, g0, nfe, nge)``: the evaluations at the start, which
  double as input validation (shape, dtype, finiteness);
* ``attempt(terms, t, y, dt, f0, g0, rtol, atol, need_error, need_stiffness, t_new) -> StepResult``:
  one step from ``(t, y)`` to ``t_new`` (the loop's exact end time, ``t + dt`` up to rounding);
  ``f0``/``g0`` (``f(t, y)``, ``g(t, y)``, or ``None``) are reused when known;
* ``dense_piece(terms, t_new, res, need) -> (piece, nfe)`` for interpolating methods: what dense
  output needs of an accepted step;
* ``make_solution(**fields)``: the solution object (SDE solutions carry the noise);
* optionally ``accepted(terms, t_new, dt_next, res) -> dt_next | None`` (after each accepted step,
  with the controller's proposal: a
  composite method switches there and may reset the step size) and ``extra_stats(terms)`` (counters
  such as Jacobian evaluations and factorisations, merged into ``sol.stats``).

An attempt that cannot produce a step says why: raising ``StepRejected(reason, dt_factor)`` rejects
it (the loop retries with ``dt * dt_factor``; the reason goes into the trace), e.g. a Newton
iteration that diverged; raising ``StepFailure(retcode, detail)`` ends the solve with that return
code, e.g. a singular iteration matrix.

The public one-step API of each method (``Tsit5().step(f, t, y, dt)``,
``EulerMaruyama().step(f, g, t, y, dt, dW)``) and the loop call the same ``attempt``: a step taken by
hand is bit for bit a step of ``solve``. Models: diffrax's ``AbstractSolver.init/step`` and
torchode's ``SingleStepMethod``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..algorithm import Algorithm
from ..solution import Solution
from .controllers import Controller, IController, PIController
from .failures import StepFailure, StepRejected
from .loop import Integrator

__all__ = ["Stepper", "StepResult", "StepFailure", "StepRejected", "nan_scalar"]


@dataclass
class StepResult:
    """One attempted step from ``(t, y)`` with step ``dt``.

    Attributes:
        y: the propagated state ``y_{n+1}`` (shape, dtype and device of ``y``).
        error_estimate: the scaled RMS error norm (0-d tensor; accept when ``<= 1``; ``NaN`` for
            methods without an error estimator). Stays on the autograd graph.
        stiffness_estimate: Hairer's eigenvalue estimate over the stability size (0-d tensor).
        nfe: drift / vector-field evaluations this step used.
        nge: diffusion evaluations (SDEs; 0 for ODEs).
        k: the Runge-Kutta stages, shape ``(s, y.numel())`` (ODE methods; what dense output needs).
        f0, g0: drift and diffusion at ``(t, y)`` (reused when the step is retried); for ODE
            methods ``f0`` is flattened.
        f1, g1: at ``(t + dt, y1)`` when the method computed them (FSAL), else ``None``.
        dW: the Brownian increment the step used (SDEs).
        error_exponent: the ``k`` of ``E^(-1/k)`` for this step when it differs from the method's
            (a composite method whose sub-methods have different orders); ``None``: the method's.
        reason: why the method itself rejects this step regardless of the error estimate (e.g. a
            Newton iteration converging too slowly), else ``None``; ``dt_factor`` then scales
            the retried step.

    Inside the loop ``error_estimate`` / ``stiffness_estimate`` are ``None`` when nothing needs them
    (fixed steps without a trace); the public ``step`` methods always compute both.
    """

    y: Tensor
    error_estimate: Tensor | None
    stiffness_estimate: Tensor | None
    nfe: int
    nge: int = 0
    k: Tensor | None = None
    f0: Tensor | None = None
    g0: Tensor | None = None
    f1: Tensor | None = None
    g1: Tensor | None = None
    dW: Tensor | None = None
    error_exponent: float | None = None
    reason: str | None = None
    dt_factor: float = 0.5


_NAN_CACHE: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def nan_scalar(like: Tensor) -> Tensor:
    """A shared 0-d NaN of ``like``'s dtype and device: "no estimate" without an allocation per step."""
    key = (like.dtype, like.device)
    v = _NAN_CACHE.get(key)
    if v is None:
        v = _NAN_CACHE[key] = torch.full((), float("nan"), dtype=like.dtype, device=like.device)
    return v


class Stepper(Algorithm):
    """Base class of every method the loop drives (explicit Runge-Kutta, SDE methods).

    Subclasses fill in the facts and ``prepare`` / ``first_evaluations`` / ``attempt``; see the
    module docstring for the protocol.
    """

    #: Which default tolerances apply (``DEFAULT_TOLERANCES``).
    kind: ClassVar[str] = "ode"
    #: Dense output between steps: ``saveat`` is interpolated, events can be located.
    interpolates: ClassVar[bool] = False
    #: Recommended PI coefficients (beta1, beta2); ``None`` means (0.7/k, 0.4/k).
    pi_coefficients: ClassVar[tuple[float, float] | None] = None
    #: Options ``solve`` accepts for this method, beyond the loop's own.
    extra_options: ClassVar[tuple[str, ...]] = ()

    #: Whether a failed solve (``MAX_STEPS`` / ``DT_MIN``) measures stiffness and names the stiff
    #: methods in its message (explicit ODE methods).
    stiffness_hint: ClassVar[bool] = False

    adaptive: bool = False
    stability_size: float = 2.0

    @property
    def error_exponent(self) -> float:
        """``k`` in the controller's ``E^(-1/k)``: the error estimate behaves like ``dt^k``."""
        raise NotImplementedError

    @property
    def initial_step_order(self) -> int:
        """The order used by Hairer's starting-step heuristic."""
        return 1

    def default_controller(self) -> Controller:
        return IController()

    def pi_controller(self, ctrl: PIController) -> PIController:
        """``ctrl`` with unset betas filled from the method's recommendation (0.7/k, 0.4/k)."""
        k = self.error_exponent
        beta1, beta2 = self.pi_coefficients or (0.7 / k, 0.4 / k)
        return ctrl.with_defaults(beta1, beta2)

    def check_problem(self, problem: Any) -> None:
        """Raise if this method cannot solve ``problem`` (e.g. the wrong noise type)."""

    # -- the protocol ---------------------------------------------------------------------------
    def prepare(self, problem: Any, options: dict[str, Any], grid: list[float] | None) -> Any:
        raise NotImplementedError

    def first_evaluations(self, terms: Any, t0: float, y0: Tensor) -> tuple[Tensor, Tensor | None, int, int]:
        raise NotImplementedError

    def attempt(self, terms: Any, t: float, y: Tensor, dt: float, f0: Tensor | None, g0: Tensor | None,
                rtol: float, atol: float, need_error: bool = True, need_stiffness: bool = True,
                t_new: float | None = None) -> StepResult:
        raise NotImplementedError

    def dense_piece(self, terms: Any, t_new: float, res: StepResult, need: bool) -> tuple[Any, int]:
        return None, 0

    def interpolate(self, terms: Any, y_flat: Tensor, piece: Any, dt: float, thetas: list[float]) -> Tensor:
        """Dense output inside one accepted step at ``t_old + theta dt``: shape ``(len(thetas), n)``."""
        raise NotImplementedError(f"{type(self).__name__} has no dense output")

    def dense_output(self, terms: Any, shape: torch.Size, direction: float) -> Any:
        """An empty interpolant to append accepted steps to (``None``: no dense output)."""
        return None

    def make_solution(self, **fields: Any) -> Solution:
        fields.pop("extras", None)
        return Solution(**fields)

    #: Whether ``accepted`` is overridden (the loop skips the call otherwise).
    has_accept_hook: ClassVar[bool] = False

    def accepted(self, terms: Any, t_new: float, dt_next: float, res: StepResult) -> float | None:
        """Called after each accepted step with the controller's proposed next step; may return
        another (``None``: keep the proposal)."""
        return None

    def trace_methods(self, terms: Any, n: int) -> list[str] | None:
        """Which sub-method took each of the ``n`` traced attempts (composite methods), else ``None``."""
        return None

    def extra_stats(self, terms: Any) -> dict[str, Any]:
        """Method-specific counters of the solve, merged into ``sol.stats.extra``."""
        return {}

    # -- solving ---------------------------------------------------------------------------------
    def init(self, problem: Any, **options: Any):
        """An integrator to step by hand (``integ.step()``), then ``integ.solution()``."""
        return Integrator(problem, self, **options)

    def solve(self, problem: Any, **options: Any):
        from .device_loop import wants_device_loop

        if wants_device_loop(options):
            raise ValueError(f"sync_free / compile / batch_mode='per_sample' drive explicit Runge-Kutta "
                             f"methods (Tsit5, Dopri5, Bosh3, Verner, RK4, ...); {type(self).__name__} runs "
                             "on the default loop: drop those options")
        return self.init(problem, **options).run()
