"""Automatic switching between a non-stiff and a stiff method, driven by the exposed stiffness estimate.

Every explicit step already measures Hairer's dominant-eigenvalue estimate ``|lambda|`` (the trace's
``stiffness_estimate * stability_size``); every implicit step reports ``||J||_inf``. The switch
looks, after each accepted step, at the *stiffness ratio* of the step the non-stiff method would take

    r = |lambda| * |dt_next| / S,        S = the non-stiff method's stability size

(``dt_next`` the controller's proposal). ``r > 1`` means the explicit method would be limited by
stability rather than accuracy. With the default thresholds (Hairer & Wanner II, IV.2 and IV.10's
stiffness detection in DOPRI5 / LSODA's switching; the numbers are OrdinaryDiffEq's ``AutoSwitch``
defaults but one):

* on the non-stiff method, ``r > stiff_tol`` (0.9) for more than ``max_stiff_steps`` (5; OrdinaryDiffEq
  uses 10) consecutive accepted steps switches to the stiff method and multiplies the step by ``dt_factor``
  (2): the stiff method is no longer stability limited, so it can take a larger step at once;
* on the stiff method, ``r <= nonstiff_tol`` (0.9) for more than ``max_nonstiff_steps`` (3)
  consecutive steps switches back and divides the step by ``dt_factor``.

``max_stiff_steps = 5`` rather than OrdinaryDiffEq's 10: on Van der Pol (mu = 1e3, [0, 300],
rtol 1e-6) the whole stiff solve takes about a dozen Rodas5P steps, and five more explicit steps at the
stability limit cost 30 evaluations (AutoSwitch / Rodas5P NFE 1.50 with 10, 1.26 with 5, 1.28 with 3;
HIRES and Robertson gain too; measured in this repository).

Choosing them: a smaller ``max_stiff_steps`` switches sooner on a problem that turns stiff (fewer
wasted explicit steps, more false switches on transients); a ``stiff_tol`` well below 1 switches
while the explicit method still runs at its stability boundary. Each switch is recorded in
``sol.stats["switches"]`` (as ``(t, "Rodas5P")``), and ``sol.trace.method`` names the method of
every attempt. The stiffness estimates in the trace are in the non-stiff method's units
(``stability_size`` = ``S``) for every step, so ``dt * stiffness`` reads as ``r`` throughout.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..problem import ODEProblem
from ..solution import Solution
from ..stepping.controllers import Controller, IController, PIController
from ..stepping.protocol import Stepper, StepResult
from .dense import DenseOutput


class SwitchTerms:
    """Per-solve state of an ``AutoSwitch``: both methods' terms, the current one and the counters."""

    def __init__(self, f: Any, terms: tuple[Any, Any], current: int):
        self.f = f
        self.terms = terms
        self.current = current
        self.count = 0  # > 0: consecutive stiff verdicts; < 0: consecutive non-stiff verdicts
        self.switches: list[tuple[float, str]] = []
        self.methods: list[int] = []  # which method took each attempt
        self.steps = [0, 0]  # accepted steps per method


class AutoSwitch(Stepper):
    """``AutoSwitch(Tsit5(), Rodas5P())``: the non-stiff method while the problem is not stiff, the
    stiff one while it is (see the module docstring for the rule and its parameters).

    Args:
        nonstiff: an explicit method with a stiffness estimate (default ``Tsit5()``).
        stiff: an implicit method (default ``Rodas5P()``).
        max_stiff_steps, max_nonstiff_steps: consecutive verdicts needed to switch (5, 3).
        stiff_tol, nonstiff_tol: thresholds on ``r`` (0.9, 0.9).
        dt_factor: step-size factor applied at a switch (2).
        stiff_first: start on the stiff method.
    """

    problem_types = (ODEProblem,)
    kind = "ode"
    interpolates = True
    adaptive = True
    has_accept_hook = True
    extra_options = ("dense",)

    def __init__(self, nonstiff: Stepper | None = None, stiff: Stepper | None = None, *,
                 max_stiff_steps: int = 5, max_nonstiff_steps: int = 3, stiff_tol: float = 0.9,
                 nonstiff_tol: float = 0.9, dt_factor: float = 2.0, stiff_first: bool = False) -> None:
        from .tsit5 import Tsit5

        if stiff is None:
            from .rosenbrock import Rodas5P

            stiff = Rodas5P()
        nonstiff = Tsit5() if nonstiff is None else nonstiff
        for name, m in (("nonstiff", nonstiff), ("stiff", stiff)):
            if not isinstance(m, Stepper) or not m.interpolates or not m.adaptive or m.kind != "ode":
                raise TypeError(f"{name} must be an adaptive ODE method with dense output, got {m!r}")
        if getattr(nonstiff, "implicit", False):
            raise TypeError(f"nonstiff must be an explicit method, got {nonstiff!r}")
        if not getattr(stiff, "implicit", False):
            raise TypeError(f"stiff must be an implicit method (Rodas5P, Rosenbrock23, Kvaerno5...), "
                            f"got {stiff!r}")
        for name, v in (("max_stiff_steps", max_stiff_steps), ("max_nonstiff_steps", max_nonstiff_steps)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        for name, v in (("stiff_tol", stiff_tol), ("nonstiff_tol", nonstiff_tol)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if not (math.isfinite(dt_factor) and dt_factor >= 1):
            raise ValueError(f"dt_factor must be >= 1, got {dt_factor!r}")
        self.methods = (nonstiff, stiff)
        self.max_stiff_steps, self.max_nonstiff_steps = max_stiff_steps, max_nonstiff_steps
        self.stiff_tol, self.nonstiff_tol = float(stiff_tol), float(nonstiff_tol)
        self.dt_factor = float(dt_factor)
        self.stiff_first = bool(stiff_first)

    @property
    def nonstiff(self) -> Stepper:
        return self.methods[0]

    @property
    def stiff(self) -> Stepper:
        return self.methods[1]

    # -- facts (of the starting method; per-step exponents come with each StepResult) ---------------
    @property
    def stability_size(self) -> float:
        return self.nonstiff.stability_size

    @property
    def error_exponent(self) -> float:
        return self.methods[int(self.stiff_first)].error_exponent

    @property
    def initial_step_order(self) -> int:
        return self.methods[int(self.stiff_first)].initial_step_order

    def default_controller(self) -> Controller:
        """The I controller, the default of both Tsit5 and the Rosenbrock methods (a non-stiff solve
        then takes exactly Tsit5's steps). A ``PIController()`` without betas uses ``0.7/k``,
        ``0.4/k`` with each step's ``k``."""
        return IController()

    def pi_controller(self, ctrl: PIController) -> PIController:
        return ctrl  # unset betas stay unset: PIController takes 0.7/k, 0.4/k with each step's k

    def check_problem(self, problem: Any) -> None:
        for m in self.methods:
            m.check_problem(problem)

    # -- protocol ---------------------------------------------------------------------------------
    def prepare(self, problem: ODEProblem, options: dict[str, Any], grid: list[float] | None) -> SwitchTerms:
        terms = tuple(m.prepare(problem, options, grid) for m in self.methods)
        return SwitchTerms(problem.f, terms, int(self.stiff_first))

    def first_evaluations(self, terms: SwitchTerms, t0: float, y0: Tensor):
        out = self.methods[0].first_evaluations(terms.terms[0], t0, y0)
        stiff_terms = terms.terms[1]
        if getattr(getattr(stiff_terms, "opts", None), "jac", None) is not None:
            from .implicit import jacobian

            jacobian(stiff_terms, t0, y0)  # a wrong user jac is refused before the first step
            stiff_terms.counters.njac -= 1
        return out

    def _ratio_scale(self, i: int) -> float:
        """Converts method ``i``'s stiffness estimate to the non-stiff method's units."""
        return self.methods[i].stability_size / self.nonstiff.stability_size

    def attempt(self, terms: SwitchTerms, t: float, y: Tensor, dt: float, f0: Tensor | None,
                g0: Tensor | None, rtol: float, atol: float, need_error: bool = True,
                need_stiffness: bool = True, t_new: float | None = None) -> StepResult:
        i = terms.current
        m = self.methods[i]
        terms.methods.append(i)  # before the attempt: a rejection by exception is an attempt too
        res = m.attempt(terms.terms[i], t, y, dt, f0, g0, rtol, atol, need_error=need_error,
                        need_stiffness=True, t_new=t_new)
        if i == 1:
            res.stiffness_estimate = res.stiffness_estimate * self._ratio_scale(1)
        res.error_exponent = m.error_exponent
        return res

    def accepted(self, terms: SwitchTerms, t_new: float, dt: float, res: StepResult) -> float | None:
        """The switching rule (module docstring), after each accepted step; ``dt`` is the
        controller's proposal for the next step."""
        i = terms.current
        terms.steps[i] += 1
        # r = |lambda| |dt_next| / S (the estimate is already in S's units)
        r = float(res.stiffness_estimate.detach()) * abs(dt)
        stiff = r > (self.stiff_tol if i == 1 else self.nonstiff_tol) if math.isfinite(r) else (i == 1)
        terms.count = (max(terms.count, 0) + 1) if stiff else (min(terms.count, 0) - 1)
        if i == 0 and terms.count > self.max_stiff_steps:
            return self._switch(terms, 1, t_new, dt * self.dt_factor)
        if i == 1 and terms.count < -self.max_nonstiff_steps:
            return self._switch(terms, 0, t_new, dt / self.dt_factor)
        return None

    def _switch(self, terms: SwitchTerms, to: int, t: float, dt_next: float) -> float:
        terms.current = to
        terms.count = 0
        terms.switches.append((t, type(self.methods[to]).__name__))
        return dt_next

    def dense_piece(self, terms: SwitchTerms, t_new: float, res: StepResult, need: bool) -> tuple[Any, int]:
        i = terms.methods[-1]
        piece, extra = self.methods[i].dense_piece(terms.terms[i], t_new, res, need)
        return (None if piece is None else (i, piece)), extra

    def interpolate(self, terms: SwitchTerms, y_flat: Tensor, piece: Any, dt: float,
                    thetas: list[float]) -> Tensor:
        i, p = piece
        return self.methods[i].interpolate(terms.terms[i], y_flat, p, dt, thetas)

    def dense_output(self, terms: SwitchTerms, shape: torch.Size, direction: float) -> DenseOutput:
        outs = [m.dense_output(t, shape, direction) for m, t in zip(self.methods, terms.terms)]
        return _SwitchDense(outs[0].poly, outs[1].poly, shape, direction)

    def make_solution(self, **fields: Any) -> Solution:
        extras = fields.pop("extras")
        return Solution(**fields, events=extras["events"])

    def trace_methods(self, terms: SwitchTerms, n: int) -> list[str] | None:
        names = [type(m).__name__ for m in self.methods]
        return [names[i] for i in terms.methods[-n:]] if n else []

    def extra_stats(self, terms: SwitchTerms) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m, t in zip(self.methods, terms.terms):
            for k, v in m.extra_stats(t).items():
                out[k] = out.get(k, 0) + v if isinstance(v, int) else v
        out["switches"] = list(terms.switches)
        out["steps_nonstiff"], out["steps_stiff"] = terms.steps
        return out

    def __repr__(self) -> str:
        return f"AutoSwitch({self.nonstiff!r}, {self.stiff!r})"


class _SwitchDense(DenseOutput):
    """Dense output over steps of two methods: each piece carries which method's polynomials apply."""

    def __init__(self, poly0: Tensor, poly1: Tensor, shape: torch.Size, direction: float):
        super().__init__(poly0, shape, direction)
        self._polys = (poly0, poly1)

    def append(self, t0: float, dt: float, y0: Tensor, k: Any) -> None:
        i, piece = k
        super().append(t0, dt, y0, (self._polys[i], piece))
