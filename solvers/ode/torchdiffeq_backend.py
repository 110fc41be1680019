"""torchdiffeq as a first-class backend behind the same ``solve`` call.

``solve(problem, TorchDiffEq("dopri5", adjoint=True), rtol=..., atol=..., saveat=ts)`` runs
``torchdiffeq.odeint`` (or ``odeint_adjoint``, which is how adjoint sensitivities enter the
interface) and returns the same :class:`~solvers.solution.Solution` type. torchdiffeq reports no
statistics, so ``f`` is wrapped to count evaluations: ``stats.nfe`` counts the forward solve, and
``stats.nfe_counter.backward`` keeps counting the evaluations made by a later backward pass.
torchdiffeq exposes no per-step error or stiffness estimates, so ``trace`` is not available here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..algorithm import Algorithm
from ..checks import check_options, check_tolerance
from ..problem import ODEProblem
from ..solution import ReturnCode, Solution, SolverError, Stats, as_time_tensor
from ..stepping.controllers import DEFAULT_TOLERANCES

_OPTIONS = ("rtol", "atol", "saveat", "dt", "options", "adjoint_params", "adjoint_options", "throw")


class NFECounter:
    """Evaluations of ``f``, split into the forward solve and anything after it (the backward)."""

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0
        self.in_forward = True

    def __repr__(self) -> str:
        return f"NFECounter(forward={self.forward}, backward={self.backward})"


class _CountingField(nn.Module):
    """Wraps ``f`` as an ``nn.Module`` (odeint_adjoint finds its parameters) and counts calls."""

    def __init__(self, f, counter: NFECounter):
        super().__init__()
        if isinstance(f, nn.Module):
            self.inner = f
        else:
            self._f = f
        self.counter = counter

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        if self.counter.in_forward:
            self.counter.forward += 1
        else:
            self.counter.backward += 1
        f = self.inner if hasattr(self, "inner") else self._f
        return f(t, y)


class TorchDiffEq(Algorithm):
    """Route a solve through torchdiffeq.

    Args:
        method: any torchdiffeq method name ("dopri5", "bosh3", "rk4", "euler", "dopri8", ...).
        adjoint: use ``odeint_adjoint`` (O(1) memory in the number of steps; the backward pass
            re-solves an augmented ODE backwards in time).

    Options: ``rtol``, ``atol``, ``saveat`` (default: just the two ends of the span), ``dt`` (the
    step size of torchdiffeq's fixed-grid methods), ``options`` (passed to torchdiffeq),
    ``adjoint_params`` (for plain functions closing over parameters), ``adjoint_options``, ``throw``.
    """

    problem_types = (ODEProblem,)

    def __init__(self, method: str = "dopri5", adjoint: bool = False):
        import torchdiffeq  # noqa: F401  (fail early if missing)

        self.method = method
        self.adjoint = bool(adjoint)

    def __repr__(self) -> str:
        return f"TorchDiffEq({self.method!r}, adjoint={self.adjoint})"

    def solve(self, problem: ODEProblem, **options: Any) -> Solution:
        import torchdiffeq

        check_options(options, _OPTIONS, f"solve with {self!r}")
        d_rtol, d_atol = DEFAULT_TOLERANCES["ode"]
        rtol = check_tolerance("rtol", options.get("rtol", d_rtol))
        atol = check_tolerance("atol", options.get("atol", d_atol))
        y0 = problem.y0
        saveat = options.get("saveat")
        ts = as_time_tensor(problem.tspan if saveat is None else saveat)
        if ts.numel() < 2:
            ts_full = as_time_tensor([problem.t0, float(ts[0])])
            keep_from = 1
        else:
            ts_full, keep_from = ts, 0
        t_dev = ts_full.to(y0.device)
        counter = NFECounter()
        func = _CountingField(problem.f, counter)
        kwargs: dict[str, Any] = dict(rtol=rtol, atol=atol, method=self.method)
        opts = dict(options.get("options") or {})
        if options.get("dt") is not None:
            opts["step_size"] = float(options["dt"])
        if opts:
            kwargs["options"] = opts
        try:
            if self.adjoint:
                if options.get("adjoint_params") is None and not isinstance(problem.f, nn.Module) \
                        and not problem.y0.requires_grad:
                    raise ValueError("adjoint=True with a plain function f: pass adjoint_params=... (the "
                                     "tensors f closes over), or make f an nn.Module")
                if options.get("adjoint_params") is not None:
                    kwargs["adjoint_params"] = tuple(options["adjoint_params"])
                if options.get("adjoint_options") is not None:
                    kwargs["adjoint_options"] = options["adjoint_options"]
                ys = torchdiffeq.odeint_adjoint(func, y0, t_dev, **kwargs)
            else:
                ys = torchdiffeq.odeint(func, y0, t_dev, **kwargs)
        except (AssertionError, RuntimeError) as err:
            # torchdiffeq signals dt underflow and max_num_steps by AssertionError/RuntimeError.
            code = ReturnCode.DT_MIN if "underflow" in str(err) else ReturnCode.MAX_STEPS \
                if "max_num_steps" in str(err) else ReturnCode.UNSTABLE
            if options.get("throw", True):
                raise SolverError(code, detail=f"torchdiffeq: {err}") from err
            return Solution(ts=ts[:1], ys=y0[None], stats=Stats(nfe=counter.forward), retcode=code,
                            t_final=problem.t0, y_final=y0, problem=problem, algorithm=self)
        finally:
            counter.in_forward = False
        ys = ys[keep_from:]
        code = ReturnCode.SUCCESS
        if not bool(torch.isfinite(ys[-1].detach()).all()):
            code = ReturnCode.UNSTABLE
            if options.get("throw", True):
                raise SolverError(code, t=float(ts[-1]), detail="torchdiffeq returned NaN/Inf.")
        stats = Stats(nfe=counter.forward, extra={"nfe_counter": counter})
        return Solution(ts=ts, ys=ys, stats=stats, retcode=code, t_final=float(ts[-1]), y_final=ys[-1],
                        problem=problem, algorithm=self)
