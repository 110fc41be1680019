"""torchdiffeq as a first-class backend behind the same ``solve`` call.

``solve(problem, TorchDiffEq("dopri5", adjoint=True), rtol=..., atol=..., saveat=ts)`` runs
``torchdiffeq.odeint`` (or ``odeint_adjoint``, which is how adjoint sensitivities enter the
interface) and returns the same ``Solution`` type. torchdiffeq reports no
statistics, so ``f`` is wrapped to count evaluations: ``stats.nfe`` counts the forward solve, and
``stats.nfe_counter.backward`` keeps counting the evaluations made by a later backward pass.
``stats.naccept``/``stats.nreject`` come from torchdiffeq's step callbacks (``callback_accept_step``/
``callback_reject_step`` of its adaptive Runge-Kutta solvers, ``callback_step`` of its fixed-grid
ones); ``"scipy_solver"`` has no callbacks, so its step counts stay 0.
torchdiffeq exposes no per-step error or stiffness estimates, so ``trace`` is not available here.

Failures: only torchdiffeq's own failures become return codes (its ``AssertionError`` messages
``"underflow in dt ..."`` -> ``DT_MIN``, or ``UNSTABLE`` when the step size is NaN;
``"max_num_steps exceeded ..."`` -> ``MAX_STEPS``; ``"non-finite values in state `y`..."`` ->
``UNSTABLE``). Any other exception, in particular one raised by the user's ``f``, propagates
unchanged, as it does with our own methods.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from ..algorithm import Algorithm
from ..checks import check_options, check_precision, check_tolerance
from ..problem import ODEProblem
from ..solution import ReturnCode, Solution, SolverError, Stats, as_time_tensor
from ..stepping.controllers import default_tolerances

_OPTIONS = ("rtol", "atol", "saveat", "dt", "options", "adjoint_params", "adjoint_options", "throw")

# torchdiffeq's own failure messages (torchdiffeq/_impl/rk_common.py, ``_adaptive_step`` and
# ``_advance``), each with the return code it means. Nothing else is relabelled.
_TORCHDIFFEQ_FAILURES = (("underflow in dt", ReturnCode.DT_MIN),
                         ("max_num_steps exceeded", ReturnCode.MAX_STEPS),
                         ("non-finite values in state", ReturnCode.UNSTABLE))


def _torchdiffeq_failure(err: BaseException) -> ReturnCode | None:
    """The return code of a failure torchdiffeq itself raised, or ``None`` for anything else.

    The exception must be one of torchdiffeq's known assertion messages *and* be raised by a frame
    of the torchdiffeq package (the innermost frame of its traceback), so an ``AssertionError``
    with the same words raised inside the user's ``f`` is not mistaken for it."""
    if not isinstance(err, AssertionError):
        return None
    tb = err.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    import torchdiffeq

    pkg = os.path.dirname(os.path.abspath(torchdiffeq.__file__))
    if not os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(pkg + os.sep):
        return None
    msg = str(err)
    for text, code in _TORCHDIFFEQ_FAILURES:
        if msg.startswith(text):
            if code is ReturnCode.DT_MIN and "nan" in msg.lower():
                return ReturnCode.UNSTABLE   # a NaN step size: the error estimate was NaN
            return code
    return None


def _solver_class(method: str):
    from torchdiffeq._impl.odeint import SOLVERS

    return SOLVERS[method]


class NFECounter:
    """Evaluations of ``f``, split into the forward solve and anything after it (the backward)."""

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0
        self.in_forward = True
        self.accepted = 0
        self.rejected = 0

    def __repr__(self) -> str:
        return f"NFECounter(forward={self.forward}, backward={self.backward})"


class _CountingField(nn.Module):
    """Wraps ``f`` as an ``nn.Module`` (odeint_adjoint finds its parameters) and counts calls."""

    def __init__(self, f, counter: NFECounter, callbacks: frozenset = frozenset()):
        super().__init__()
        if isinstance(f, nn.Module):
            self.inner = f
        else:
            self._f = f
        self.counter = counter
        # Only the callbacks the torchdiffeq solver calls (it warns about the others).
        if "callback_accept_step" in callbacks and "callback_reject_step" in callbacks:
            self.callback_accept_step = self._accepted
            self.callback_reject_step = self._rejected
        elif "callback_step" in callbacks:
            self.callback_step = self._accepted

    def _accepted(self, t0, y0, dt) -> None:
        if self.counter.in_forward:
            self.counter.accepted += 1

    def _rejected(self, t0, y0, dt) -> None:
        if self.counter.in_forward:
            self.counter.rejected += 1

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
    step size of torchdiffeq's fixed-grid methods; refused, ``ValueError``, for its adaptive ones,
    where it would have no effect), ``options`` (passed to torchdiffeq),
    ``adjoint_params`` (for plain functions closing over parameters), ``adjoint_options``, ``throw``.
    Tolerances the state's dtype cannot meet are refused or warned about before the solve
    (``solvers.checks.check_precision``).
    """

    problem_types = (ODEProblem,)

    def __init__(self, method: str = "dopri5", adjoint: bool = False):
        from torchdiffeq._impl.odeint import SOLVERS  # fail early if torchdiffeq is missing

        if not isinstance(method, str) or method not in SOLVERS:
            raise ValueError(f"unknown torchdiffeq method {method!r}; torchdiffeq has "
                             f"{', '.join(sorted(SOLVERS))}")
        self.method = method
        self.adjoint = bool(adjoint)

    def __repr__(self) -> str:
        return f"TorchDiffEq({self.method!r}, adjoint={self.adjoint})"

    def solve(self, problem: ODEProblem, **options: Any) -> Solution:
        import torchdiffeq

        check_options(options, _OPTIONS, f"solve with {self!r}")
        # None means the default, as in the step loop.
        rtol, atol = default_tolerances("ode", options.get("rtol"), options.get("atol"))
        rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
        y0 = problem.y0
        from torchdiffeq._impl.solvers import FixedGridODESolver

        solver_cls = _solver_class(self.method)
        adaptive = not issubclass(solver_cls, FixedGridODESolver)
        user_opts = dict(options.get("options") or {})
        if adaptive:
            for key in ("dt", "step_size"):
                given = options.get(key) if key == "dt" else user_opts.get(key)
                if given is not None:
                    where = "dt=" if key == "dt" else "options={'step_size': ...}"
                    raise ValueError(f"{where} has no effect on torchdiffeq's adaptive method "
                                     f"{self.method!r} (it chooses its own steps from rtol/atol): drop it, "
                                     "or use a fixed-grid method such as TorchDiffEq('rk4') with dt=")
            check_precision(y0, rtol, atol, where=f"solve with {self!r}")
        saveat = options.get("saveat")
        ts = as_time_tensor(problem.tspan if saveat is None else saveat)
        if ts.numel() < 2:
            ts_full = as_time_tensor([problem.t0, float(ts[0])])
            keep_from = 1
        else:
            ts_full, keep_from = ts, 0
        t_dev = ts_full.to(y0.device)
        counter = NFECounter()
        func = _CountingField(problem.f, counter, frozenset(solver_cls.valid_callbacks()))
        kwargs: dict[str, Any] = dict(rtol=rtol, atol=atol, method=self.method)
        opts = user_opts
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
        except AssertionError as err:
            # Only torchdiffeq's own failures (dt underflow, max_num_steps, a non-finite state) are
            # return codes; anything else, e.g. raised by the user's f, propagates unchanged.
            code = _torchdiffeq_failure(err)
            if code is None:
                raise
            if options.get("throw", True):
                raise SolverError(code, detail=f"torchdiffeq: {err}") from err
            stats = Stats(nfe=counter.forward, naccept=counter.accepted, nreject=counter.rejected,
                          extra={"nfe_counter": counter})
            return Solution(ts=ts[:1], ys=y0[None], stats=stats, retcode=code,
                            t_final=problem.t0, y_final=y0, problem=problem, algorithm=self)
        finally:
            counter.in_forward = False
        ys = ys[keep_from:]
        code = ReturnCode.SUCCESS
        if not bool(torch.isfinite(ys[-1].detach()).all()):
            code = ReturnCode.UNSTABLE
            if options.get("throw", True):
                raise SolverError(code, t=float(ts[-1]), detail="torchdiffeq returned NaN/Inf.")
        stats = Stats(nfe=counter.forward, naccept=counter.accepted, nreject=counter.rejected,
                      extra={"nfe_counter": counter})
        return Solution(ts=ts, ys=ys, stats=stats, retcode=code, t_final=float(ts[-1]), y_final=ys[-1],
                        problem=problem, algorithm=self)
