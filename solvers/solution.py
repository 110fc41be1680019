"""What every solve returns: return codes, statistics, per-step traces and the ODE solution.

Every solution object in the project carries a ``retcode`` (a ``ReturnCode``) and ``stats``
(a ``Stats``), and has ``success``. Packages whose results are not trajectories (linear solves,
integrals, PINNs) define their own solution dataclasses with these two fields.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


class ReturnCode(enum.Enum):
    """Outcome of a solve. ``code.message`` is a sentence a person can read."""

    SUCCESS = "success"
    MAX_STEPS = "max_steps"
    DT_MIN = "dt_min"
    UNSTABLE = "unstable"
    NOT_CONVERGED = "not_converged"
    MAX_ITERS = "max_iters"
    BREAKDOWN = "breakdown"
    INDEFINITE = "indefinite"
    CHARACTERISTICS_CROSSED = "characteristics_crossed"
    TERMINATED = "terminated"
    EVENT = "event"
    SINGULAR = "singular"

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    @property
    def success(self) -> bool:
        """Whether the solve did what was asked: reached its end, or stopped at a terminal event."""
        return self is ReturnCode.SUCCESS or self is ReturnCode.EVENT


_MESSAGES = {
    ReturnCode.SUCCESS: "The solve reached its end successfully.",
    ReturnCode.MAX_STEPS: "The maximum number of steps was reached before the end of the span.",
    ReturnCode.DT_MIN: "The step size fell below dtmin (or below the floating-point resolution of t).",
    ReturnCode.UNSTABLE: "The state or the vector field became NaN or Inf.",
    ReturnCode.NOT_CONVERGED: "The iteration did not reach the requested tolerance.",
    ReturnCode.MAX_ITERS: "The maximum number of iterations was reached.",
    ReturnCode.BREAKDOWN: "The iteration broke down (a zero or negative curvature or a zero denominator).",
    ReturnCode.INDEFINITE: "The operator is not positive definite.",
    ReturnCode.CHARACTERISTICS_CROSSED: "Characteristics crossed (the Lagrangian map lost monotonicity).",
    ReturnCode.TERMINATED: "The solve was stopped by the caller.",
    ReturnCode.EVENT: "A terminal event stopped the solve (sol.events holds where).",
    ReturnCode.SINGULAR: "A linear system of the method (the iteration matrix I - gamma dt J) was singular.",
}


class RetcodeResult:
    """``success`` and ``message`` for any result object that carries a ``retcode``."""

    retcode: ReturnCode

    @property
    def success(self) -> bool:
        return self.retcode.success

    @property
    def message(self) -> str:
        return self.retcode.message


class SolverError(RuntimeError):
    """A solve failed. Carries the return code, the time reached and the last step size."""

    def __init__(self, retcode: ReturnCode, t: float | None = None, dt: float | None = None,
                 detail: str = ""):
        self.retcode = retcode
        self.t = t
        self.dt = dt
        self.detail = detail
        where = ""
        if t is not None:
            where = f" Reached t = {t:.17g}"
            if dt is not None:
                where += f" with last step size dt = {dt:.6g}"
            where += "."
        extra = f" {detail}" if detail else ""
        super().__init__(f"{retcode.name}: {retcode.message}{where}{extra}")


@dataclass
class Stats:
    """Counters of a solve.

    ``nfe`` counts vector-field (or operator) evaluations, ``naccept``/``nreject`` the accepted and
    rejected steps. Solvers of other problems put their own counters in ``extra``; they read as
    attributes (``stats.iterations``) as well as items.
    """

    nfe: int = 0
    naccept: int = 0
    nreject: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def nsteps(self) -> int:
        """Attempted steps (accepted + rejected)."""
        return self.naccept + self.nreject

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: expose extra counters as attributes.
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"Stats has no counter {name!r}")

    def __getitem__(self, name: str) -> Any:
        if name in ("nfe", "naccept", "nreject", "nsteps"):
            return getattr(self, name)
        return self.extra[name]


@dataclass
class StepTrace:
    """Every attempted step of an adaptive solve, in order.

    Attributes:
        t: start time of each attempt (float64).
        dt: step size of each attempt (float64; negative when integrating backwards).
        accepted: whether the controller accepted the attempt.
        error_estimate: the scaled error norm the controller used,
            ``RMS(err / (atol + rtol * max(|y_n|, |y_{n+1}|)))`` (accept when <= 1). Stays on the
            autograd graph when the solve ran with ``trace=True`` and gradients enabled.
        stiffness_estimate: Hairer's eigenvalue estimate ``||k_s - k_{s-1}|| / ||g_s - g_{s-1}||``
            divided by the method's real stability-interval length ``stability_size`` (units 1/time).
            ``stiffness_estimate * |dt| > 1`` means the step was limited by stability, not accuracy.
        stability_size: the method's stability-interval length on the negative real axis.
        reason: per attempt, why the method itself rejected it (e.g. ``"Newton diverged"``), ``""``
            when the error estimate decided; ``None`` when not recorded.
        method: per attempt, which sub-method took it (composite methods such as ``AutoSwitch``),
            else ``None``.
    """

    t: Tensor
    dt: Tensor
    accepted: Tensor
    error_estimate: Tensor
    stiffness_estimate: Tensor
    stability_size: float
    reason: list[str] | None = None
    method: list[str] | None = None

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @property
    def eigenvalue_estimate(self) -> Tensor:
        """Hairer's estimate of the dominant eigenvalue magnitude (``stiffness * stability_size``)."""
        return self.stiffness_estimate * self.stability_size

    def accepted_only(self) -> StepTrace:
        """The trace restricted to accepted steps."""
        m = self.accepted
        keep = [i for i, a in enumerate(m.tolist()) if a]
        return StepTrace(self.t[m], self.dt[m], self.accepted[m], self.error_estimate[m],
                         self.stiffness_estimate[m], self.stability_size,
                         None if self.reason is None else [self.reason[i] for i in keep],
                         None if self.method is None else [self.method[i] for i in keep])


class Solution(RetcodeResult):
    """The result of an ODE solve.

    Attributes:
        ts: saved times (float64, 1-D).
        ys: saved states, shape ``(len(ts), *y0.shape)``, dtype and device of ``y0``.
        stats: ``Stats`` (nfe, naccept, nreject).
        trace: ``StepTrace`` when the solve ran with ``trace=True``, else ``None``.
        retcode: ``ReturnCode``.
        t_final, y_final: where the solve stopped (the end of the span on success, the event on
            ``ReturnCode.EVENT``).
        events: every event hit (``EventRecord``) when solved with ``events=``.

    ``sol(t)`` evaluates the dense output at any time (or a 1-D tensor of times) inside the span
    actually covered; it needs ``dense=True`` (the default).
    """

    def __init__(self, ts: Tensor, ys: Tensor, stats: Stats, retcode: ReturnCode,
                 trace: StepTrace | None = None, interpolant: Any = None,
                 t_final: float | None = None, y_final: Tensor | None = None,
                 problem: Any = None, algorithm: Any = None, events: Any = None):
        self.ts = ts
        self.ys = ys
        self.stats = stats
        self.retcode = retcode
        self.trace = trace
        self.interpolant = interpolant
        self.t_final = t_final
        self.y_final = y_final
        self.problem = problem
        self.algorithm = algorithm
        self.events = events

    def __call__(self, t: float | Tensor) -> Tensor:
        if self.interpolant is None:
            raise ValueError("this solution has no dense output: solve with dense=True")
        return self.interpolant(t)

    def __repr__(self) -> str:
        return (f"Solution(retcode={self.retcode.name}, len(ts)={len(self.ts)}, "
                f"nfe={self.stats.nfe}, naccept={self.stats.naccept}, nreject={self.stats.nreject})")


def as_time_tensor(values: Any) -> Tensor:
    """Times as a 1-D float64 CPU tensor (time is always float64 in this project)."""
    return torch.as_tensor(values, dtype=torch.float64).reshape(-1).cpu()
