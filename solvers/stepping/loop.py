"""The one step loop, for ODE and SDE methods alike.

An ``Integrator`` drives any stepper (``solvers.stepping.protocol``): ``integ.step()``
advances by one accepted step (retrying rejected attempts) and returns ``False`` once the
integration is over; ``integ.t``, ``integ.y``, ``integ.dt`` say where it stands;
``integ.solution()`` gives the result so far and ``integ.run()`` steps to the end. ``solve`` is
``init(...).run()``.

What the loop owns, once: the option checks, the fixed-step grid, the controller and its
tolerances, the first step, ``max_steps``, the ``dt`` floor, rejection of NaN/Inf error estimates,
``saveat`` (interpolated for methods with dense output, landed on otherwise), the trace, events,
progress, return codes and ``SolverError``.

Time is a float64 Python float; the state keeps ``y0``'s dtype and device. The only host sync per
adaptive step is reading the error estimate for the accept/reject decision; fixed-step solves do
not sync at all until the end (where the final state is checked for NaN/Inf once).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..checks import check_options, check_precision, check_saveat, fixed_step, step_options
from ..solution import ReturnCode, SolverError, Stats, StepTrace, as_time_tensor
from .controllers import ConstantStepSize, Controller, PIController
from .failures import StepFailure, StepRejected

if TYPE_CHECKING:
    from .protocol import Stepper, StepResult

#: The options every stepped solve takes; methods add theirs (``Stepper.extra_options``).
LOOP_OPTIONS = ("rtol", "atol", "dt", "dt0", "saveat", "trace", "controller", "max_steps", "dtmin",
                "dtmax", "throw", "progress", "events")

#: ``dt * |lambda| / stability_size`` above which a failed explicit solve is called stiff in its
#: message: a step at or beyond half the method's real stability interval is limited by stability,
#: not accuracy (Hairer & Wanner II, IV.2: Dopri5 flags stiffness at ``h |lambda| >= 3.25``, its
#: interval's length; we say so earlier since the last step alone is the evidence).
STIFF_HINT_RATIO = 0.5


def step_grid(t0: float, t1: float, dt: float, stops: list[float] = ()) -> list[float]:
    """The fixed-step grid ``t0 + i dt`` (either direction; the last step shortened to land on
    ``t1``), merged with ``stops`` (the save times a method without dense output must land on).

    Every grid point is computed from ``t0`` (no accumulated rounding in ``t``)."""
    d = 1.0 if t1 > t0 else -1.0
    n = max(1, math.ceil(abs(t1 - t0) / dt * (1 - 1e-10)))
    grid = [t0 + d * i * dt for i in range(n)] + [t1]
    inner = sorted({float(s) for s in stops if min(t0, t1) < float(s) < max(t0, t1)}, key=lambda s: d * s)
    if not inner:
        return grid
    tol = 1e-9 * dt
    stop_set = set(inner)
    merged = sorted(grid + inner, key=lambda s: d * s)
    # Where a stop and a grid point (nearly) coincide keep the stop's exact value, so that saved
    # times equal the requested ones bit for bit.
    out = [merged[0]]
    for s in merged[1:]:
        if abs(s - out[-1]) > tol:
            out.append(s)
        elif s in stop_set or s == t1:
            out[-1] = s
    out[0], out[-1] = t0, t1
    return out


def resolve_controller(options: dict[str, Any], alg: Stepper, fixed: bool) -> Controller:
    """The solve's controller: ``ConstantStepSize`` for fixed steps, else the ``controller`` option
    (a ``PIController`` without betas takes the method's), else the method's default."""
    ctrl = options.get("controller")
    if ctrl is not None and not isinstance(ctrl, Controller):
        raise TypeError(f"controller must be a Controller, got {type(ctrl).__name__}")
    if fixed:
        return ConstantStepSize()
    if ctrl is None:
        return alg.default_controller()
    return alg.pi_controller(ctrl) if isinstance(ctrl, PIController) else ctrl


def first_step_option(options: dict[str, Any]) -> float | None:
    """The ``dt0`` option (the first adaptive step), validated; ``None`` when not given."""
    dt0 = options.get("dt0")
    if dt0 is None:
        return None
    h = float(dt0)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"dt0 must be a finite positive step size, got {dt0!r}")
    return h


class Integrator:
    """Integrates a problem with a stepper, step by step (see the module docstring)."""

    def __init__(self, problem: Any, alg: Stepper, **options: Any):
        name = type(alg).__name__
        check_options(options, LOOP_OPTIONS + alg.extra_options, f"solve with {name}")
        alg.check_problem(problem)
        self.problem, self.alg = problem, alg
        t0, t1 = problem.tspan
        self.t0, self.t1 = t0, t1
        self.direction = d = 1.0 if t1 > t0 else -1.0
        y0 = problem.y0
        self.shape = y0.shape

        # Controller and tolerances (fixed steps: every step accepted; tolerances still scale the
        # error estimates a trace records).
        dt_fixed = fixed_step(options, alg.adaptive, name)
        self.fixed = dt_fixed is not None
        self.controller = ctrl = resolve_controller(options, alg, self.fixed)
        rtol, atol = ctrl.tolerances(options, alg.kind)
        opts = step_options(options, rtol=rtol, atol=atol)
        self.rtol, self.atol = opts.rtol, opts.atol
        if not self.fixed:  # tolerances the state's dtype cannot meet: refused or warned, before work
            check_precision(y0, self.rtol, self.atol, where=f"solve with {name}")
        self.want_trace, self.throw, self.max_steps = opts.trace, opts.throw, opts.max_steps
        self.dtmin, self.dtmax = opts.dtmin, opts.dtmax
        self.ctrl_state = ctrl.new_state()
        self.k_exp = alg.error_exponent

        # Save times, sorted along the integration. Methods with dense output interpolate them;
        # the others land a step on each.
        saveat = options.get("saveat")
        self.save_steps = saveat is None
        self.saveat = check_saveat(saveat, t0, t1) if saveat is not None else []
        self.interpolates = alg.interpolates
        self._save_idx = 0
        self.grid: list[float] | None = None
        if self.fixed:
            self.grid = step_grid(t0, t1, dt_fixed, [] if self.interpolates else self.saveat)
            if len(self.grid) - 1 > self.max_steps:
                raise ValueError(f"dt = {dt_fixed} needs {len(self.grid) - 1} steps, more than "
                                 f"max_steps = {self.max_steps}")
        # Landing stops of a method without dense output: the save times after t0, then t1.
        self._stops = ([s for s in self.saveat if s * d > t0 * d] + [t1]) if not self.interpolates else [t1]
        self._stop_idx = 0

        # Per-solve set-up and the first evaluations (which validate shapes, dtypes, finiteness).
        self.terms = alg.prepare(problem, options, self.grid)
        self.fv, self.gv, self.nfe, self.nge = alg.first_evaluations(self.terms, t0, y0)

        self.t = t0
        self.y = y0
        if self.fixed:
            self.dt = self.grid[1] - self.grid[0]
        else:
            h = first_step_option(options)
            if h is None:
                h, extra = ctrl.initial_step(self.terms.f, t0, y0, self.fv.view(self.shape), d,
                                             alg.initial_step_order, self.rtol, self.atol)
                self.nfe += extra
            self.dt = d * min(h, self.dtmax, abs(t1 - t0))

        self.naccept = 0
        self.nreject = 0
        self.retcode: ReturnCode | None = None
        self._fail_detail = ""
        self._nonfinite = False
        self._ts: list[float] = []
        self._ys: list[Tensor] = []
        self._trace: dict[str, list] = {"t": [], "dt": [], "accepted": [], "error": [], "stiff": []}
        want_dense = self.interpolates and bool(options.get("dense", True))
        self._dense = alg.dense_output(self.terms, self.shape, d) if want_dense else None
        # The noise, accumulated for ``save_noise`` (SDE methods put ``dW`` in their step results).
        self._noise: Tensor | None = getattr(self.terms, "noise_start", None)
        self._ws: list[Tensor] | None = [] if self._noise is not None else None
        self._events = None
        events = options.get("events")
        if events is not None:
            if not self.interpolates:
                raise ValueError(f"events need dense output; {name} has none")
            from ..events import EventTracker

            self._events = EventTracker(events, t0, y0, d)
        self.event_hit = None

        if self.save_steps:
            self._save(t0, y0)
        while self._save_idx < len(self.saveat) and self.saveat[self._save_idx] * d <= t0 * d:
            self._save(self.saveat[self._save_idx], y0)
            self._save_idx += 1
        self._bar = None
        if opts.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=abs(t1 - t0), desc=name, unit="t", disable=None)  # None: only on a TTY

    # -- state ------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.retcode is not None

    def _fail(self, code: ReturnCode, detail: str = "") -> None:
        self.retcode = code
        self._fail_detail = detail
        if code in (ReturnCode.MAX_STEPS, ReturnCode.DT_MIN) and self.alg.stiffness_hint:
            hint = self._stiffness_hint()
            if hint:
                self._fail_detail = f"{detail} {hint}".strip()

    def _stiffness_hint(self) -> str:
        """After ``MAX_STEPS`` / ``DT_MIN`` of an explicit ODE method: one more attempt at the last
        step size, measuring ``dt |lambda| / stability_size``; a sentence naming the stiff methods
        when it is at least ``STIFF_HINT_RATIO``."""
        dt = self.dt if math.isfinite(self.dt) and self.dt != 0 else None
        if dt is None:
            return ""
        try:
            with torch.no_grad():
                res = self.alg.attempt(self.terms, self.t, self.y.detach(), dt, None, None, self.rtol,
                                       self.atol, need_error=False, need_stiffness=True, t_new=self.t + dt)
            ratio = float(res.stiffness_estimate) * abs(dt)
        except Exception:  # the hint must never mask the failure being reported
            return ""
        if not (math.isfinite(ratio) and ratio >= STIFF_HINT_RATIO):
            return ""
        lam = ratio * self.alg.stability_size / abs(dt)
        return (f"The problem looks stiff here: at t = {self.t:.6g} the dominant eigenvalue estimate is "
                f"|lambda| ~ {lam:.3g}, so dt |lambda| / stability size = {ratio:.2f}: the steps are limited "
                f"by stability, not accuracy. Use a stiff method: Rodas5P(), Rosenbrock23(), Kvaerno5(), "
                f"or AutoSwitch(Tsit5(), Rodas5P()) to switch automatically.")

    def _save(self, t: float, y: Tensor) -> None:
        self._ts.append(t)
        self._ys.append(y)
        if self._ws is not None:
            self._ws.append(self._noise)

    # -- stepping ---------------------------------------------------------------------------------
    def step(self) -> bool:
        """Advance by one accepted step. Returns ``False`` when the integration has ended."""
        if self.retcode is not None:
            return False
        alg, terms, d = self.alg, self.terms, self.direction
        fixed, trace = self.fixed, self.want_trace
        while True:
            if self.naccept + self.nreject >= self.max_steps:
                self._fail(ReturnCode.MAX_STEPS, f"max_steps = {self.max_steps}.")
                break
            t = self.t
            if fixed:
                i = self.naccept
                t_new = self.grid[i + 1]
                dt = t_new - t
                land = True
            else:
                stops = self._stops
                while stops[self._stop_idx] * d <= t * d:
                    self._stop_idx += 1
                stop = stops[self._stop_idx]
                dt = self.dt
                if not math.isfinite(dt):
                    self._fail(ReturnCode.UNSTABLE, f"The step size became {dt}.")
                    break
                if abs(dt) > self.dtmax:
                    dt = d * self.dtmax
                land = abs(dt) >= abs(stop - t) * (1 - 1e-12)
                if land:
                    dt = stop - t
                floor = max(self.dtmin, 1e-14 * max(1.0, abs(t)))
                if abs(dt) < floor and not land:
                    if self._nonfinite:
                        self._fail(ReturnCode.UNSTABLE,
                                   "The error estimate was NaN/Inf at the last attempts.")
                    else:
                        self._fail(ReturnCode.DT_MIN, f"dt fell below {floor:.3g}.")
                    break
                t_new = stop if land else t + dt
            try:
                res = alg.attempt(terms, t, self.y, dt, self.fv, self.gv, self.rtol, self.atol,
                                  need_error=not fixed or trace, need_stiffness=trace, t_new=t_new)
            except StepRejected as rej:
                if fixed:
                    self._fail(ReturnCode.NOT_CONVERGED, f"A fixed step failed: {rej.reason}.")
                    break
                self.nreject += 1
                if trace:
                    self._record(t, dt, False, None, rej.reason)
                self.dt = dt * rej.dt_factor
                continue
            except StepFailure as fail:
                self.dt = dt
                self._fail(fail.retcode, fail.detail)
                break
            self.nfe += res.nfe
            self.nge += res.nge
            if fixed and res.reason is not None:  # a fixed step cannot be retried smaller
                if trace:
                    self._record(t, dt, False, res, res.reason)
                self.nreject += 1
                self._fail(ReturnCode.NOT_CONVERGED, f"A fixed step failed: {res.reason}.")
                break
            if fixed:
                accept, dt_next = True, dt
            elif res.reason is not None:
                accept, dt_next = False, dt * res.dt_factor
            else:
                err = float(res.error_estimate.detach())
                self._nonfinite = not math.isfinite(err)
                if self._nonfinite:
                    accept, dt_next = False, dt * 0.2
                else:
                    accept, dt_next = self.controller.adapt(self.ctrl_state, dt, err,
                                                            res.error_exponent or self.k_exp)
            if trace:
                self._record(t, dt, accept, res, res.reason)
            if accept:
                self.naccept += 1
                self._accept(t_new, dt, res)
                if not fixed:
                    # A step clipped to land on a save time does not shrink the controller's proposal.
                    self.dt = (d * max(abs(dt_next), abs(self.dt))) if land else dt_next
                if alg.has_accept_hook:
                    dt_hook = alg.accepted(terms, t_new, self.dt, res)
                    if dt_hook is not None and not fixed:
                        self.dt = dt_hook
                break
            self.nreject += 1
            self.fv, self.gv = res.f0, res.g0  # f(t, y), g(t, y) are unchanged: reuse them
            self.dt = dt_next
        if self.retcode is None and self.t == self.t1:
            self.retcode = ReturnCode.SUCCESS
        return self.retcode is None

    def _record(self, t: float, dt: float, accepted: bool, res: StepResult | None,
                reason: str | None = None) -> None:
        tr = self._trace
        tr["t"].append(t)
        tr["dt"].append(dt)
        tr["accepted"].append(accepted)
        if reason is not None:
            # Reasons are rare: stored sparsely by attempt index.
            tr.setdefault("reason", {})[len(tr["t"]) - 1] = reason
        if res is None:  # the method gave up on the attempt: no estimates
            nan = self.y.new_full((), float("nan"))
            tr["error"].append(nan)
            tr["stiff"].append(nan)
            return
        grad = torch.is_grad_enabled()
        err, st = res.error_estimate, res.stiffness_estimate
        tr["error"].append(err if grad else err.detach())
        tr["stiff"].append(st if grad else st.detach())

    def _accept(self, t_new: float, dt: float, res: StepResult) -> None:
        t_old, y_old = self.t, self.y
        y1 = res.y
        if self._noise is not None:
            self._noise = self._noise + res.dW
        if self.interpolates:
            pending = self._save_idx < len(self.saveat)
            need = self._dense is not None or pending or self._events is not None
            piece, extra = self.alg.dense_piece(self.terms, t_new, res, need)
            self.nfe += extra
            hit = None
            if self._events is not None:
                hit = self._events.check(t_old, y_old, t_new, y1, self._interp(t_old, dt, y_old, piece),
                                         self.terms.f)
            t_end = t_new
            if hit is not None:
                # A terminal event ends the solve at the event: nothing is saved past it.
                t_end, y1 = hit.t_float, hit.y
                self.event_hit = hit
            if self._dense is not None:
                self._dense.append(t_old, dt, y_old.reshape(-1), piece)
                if hit is not None:
                    self._dense.end = t_end
            if pending:
                self._save_interpolated(t_old, dt, y_old, piece, t_end, y1)
            if hit is not None:
                t_new = t_end
                self._fail(ReturnCode.EVENT)
            if self.save_steps:
                self._save(t_new, y1)
        elif self.save_steps or (self._save_idx < len(self.saveat) and self.saveat[self._save_idx] == t_new):
            self._save(t_new, y1)
            if not self.save_steps:
                self._save_idx += 1
        self.fv, self.gv = res.f1, res.g1
        self.t = t_new
        self.y = y1
        if self._bar is not None:
            self._bar.update(abs(t_new - t_old))

    def _interp(self, t_old: float, dt: float, y_old: Tensor, piece: Any):
        alg, terms, shape, flat = self.alg, self.terms, self.shape, y_old.reshape(-1)

        def interp(t: float) -> Tensor:
            return alg.interpolate(terms, flat, piece, dt, [(t - t_old) / dt])[0].view(shape)

        return interp

    def _save_interpolated(self, t_old: float, dt: float, y_old: Tensor, piece: Any, t_new: float,
                           y1: Tensor) -> None:
        """Save the requested times inside ``(t_old, t_new]`` from the step's dense output."""
        d = self.direction
        j = self._save_idx
        while j < len(self.saveat) and self.saveat[j] * d <= t_new * d:
            j += 1
        if j == self._save_idx:
            return
        times = self.saveat[self._save_idx:j]
        # A save time on the step's end is the step's own solution: no interpolation needed.
        inner = [s for s in times if s != t_new]
        vals = iter(self.alg.interpolate(self.terms, y_old.reshape(-1), piece, dt,
                                         [(s - t_old) / dt for s in inner]) if inner else ())
        for s in times:
            self._save(s, y1 if s == t_new else next(vals).view(self.shape))
        self._save_idx = j

    def run(self):
        """Step to the end of the span and return the solution (raises on failure if ``throw``)."""
        while self.step():
            pass
        return self.solution()

    # -- result -----------------------------------------------------------------------------------
    def solution(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        code = self.retcode
        if code is None or code.success:
            # Fixed steps never sync inside the loop: check the final state once here.
            if not bool(torch.isfinite(self.y.detach()).all()):
                code = self.retcode = ReturnCode.UNSTABLE
                self._fail_detail = "The state became NaN/Inf."
        if code is not None and not code.success and self.throw:
            raise SolverError(code, t=self.t, dt=abs(self.dt), detail=self._fail_detail)
        trace = None
        if self.want_trace:
            tr = self._trace
            empty = self.y.new_zeros((0,))
            trace = StepTrace(
                t=as_time_tensor(tr["t"]), dt=as_time_tensor(tr["dt"]),
                accepted=torch.tensor(tr["accepted"], dtype=torch.bool),
                error_estimate=torch.stack(tr["error"]) if tr["error"] else empty,
                stiffness_estimate=torch.stack(tr["stiff"]) if tr["stiff"] else empty,
                stability_size=self.alg.stability_size,
                reason=[tr.get("reason", {}).get(i, "") for i in range(len(tr["t"]))],
                method=self.alg.trace_methods(self.terms, len(tr["t"])))
        extra = {"nge": self.nge} if self.alg.kind == "sde" else {}
        extra.update(self.alg.extra_stats(self.terms))
        nfe = self.nfe + (self._events.nfe if self._events is not None else 0)
        stats = Stats(nfe=nfe, naccept=self.naccept, nreject=self.nreject, extra=extra)
        ys = torch.stack(self._ys) if self._ys else self.y.new_zeros((0, *self.shape))
        return self.alg.make_solution(
            ts=as_time_tensor(self._ts), ys=ys, stats=stats, retcode=code or ReturnCode.TERMINATED,
            trace=trace, interpolant=self._dense, t_final=self.t, y_final=self.y, problem=self.problem,
            algorithm=self.alg,
            extras={"terms": self.terms, "ws": torch.stack(self._ws) if self._ws is not None else None,
                    "events": self._events.results() if self._events is not None else None})
