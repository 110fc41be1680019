"""The step loop: an integrator that can be stepped by hand (``init``) or run to the end (``solve``).

Time is a float64 Python float; the state keeps ``y0``'s dtype and device. The only host sync per
adaptive step is reading the error estimate for the accept/reject decision; fixed-step solves do
not sync at all until the end.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..checks import check_finite, check_options, check_saveat, fixed_step, step_options
from ..problem import ODEProblem
from ..solution import ReturnCode, Solution, SolverError, Stats, StepTrace, as_time_tensor
from ..stepping.controllers import ConstantStepSize, Controller, PIController, initial_step
from ..stepping.times import time_tensor
from .dense import DenseOutput
from .runge_kutta import ExplicitRungeKutta

_OPTIONS = ("rtol", "atol", "dt", "dt0", "saveat", "dense", "trace", "controller", "max_steps",
            "dtmin", "dtmax", "throw", "progress")


class ODEIntegrator:
    """Integrates an :class:`~solvers.problem.ODEProblem` step by step.

    ``integ.step()`` advances by one accepted step (retrying rejected attempts) and returns
    ``False`` once the integration is over; ``integ.t``, ``integ.y``, ``integ.dt`` give where it
    stands; ``integ.solution()`` the result so far; ``integ.run()`` steps to the end.
    """

    def __init__(self, problem: ODEProblem, algorithm: ExplicitRungeKutta, **options: Any):
        check_options(options, _OPTIONS, f"solve with {type(algorithm).__name__}")
        self.problem = problem
        self.alg = algorithm
        opts = step_options(options, rtol=1e-6, atol=1e-9)
        self.rtol, self.atol = opts.rtol, opts.atol
        self.dense = bool(options.get("dense", True))
        self.want_trace, self.throw, self.max_steps = opts.trace, opts.throw, opts.max_steps
        self.dtmin, self.dtmax = opts.dtmin, opts.dtmax

        t0, t1 = problem.tspan
        self.t0, self.t1 = t0, t1
        self.direction = 1.0 if t1 > t0 else -1.0
        y0 = problem.y0
        self.shape = y0.shape

        dt = fixed_step(options, algorithm.adaptive, type(algorithm).__name__)
        self.fixed = dt is not None
        if self.fixed:
            self.controller: Controller = ConstantStepSize()
        else:
            ctrl = options.get("controller") or algorithm.default_controller()
            if not isinstance(ctrl, Controller):
                raise TypeError(f"controller must be a Controller, got {type(ctrl).__name__}")
            if isinstance(ctrl, PIController):
                ctrl = algorithm.pi_controller(ctrl)
            self.controller = ctrl
        self.ctrl_state = self.controller.new_state()
        self.k_exp = (algorithm.error_order or algorithm.order) + 1

        # Save times: validated, sorted along the direction of integration.
        saveat = options.get("saveat")
        self.save_steps = saveat is None
        self.saveat = check_saveat(saveat, t0, t1) if saveat is not None else []
        self._save_idx = 0

        # The first evaluation doubles as input validation: shape and finiteness of f(t0, y0).
        self.alg_coeffs = algorithm.coefficients(y0.dtype, y0.device)
        f0 = problem.f(time_tensor(t0, y0.device), y0)
        if not isinstance(f0, Tensor) or f0.shape != y0.shape:
            got = tuple(f0.shape) if isinstance(f0, Tensor) else type(f0).__name__
            raise ValueError(f"f(t0, y0) must return a tensor of shape {tuple(y0.shape)}, got {got}")
        if f0.dtype != y0.dtype:
            raise ValueError(f"f(t0, y0) returned dtype {f0.dtype}, but y0 has dtype {y0.dtype}")
        check_finite("f(t0, y0)", f0.detach())
        self.nfe = 1
        self.f = problem.f

        self.t = t0
        self.y = y0
        self.y_flat = y0.reshape(-1)
        self.k1: Tensor | None = f0.reshape(-1)
        if self.fixed:
            self.dt = self.direction * dt
            self._nfixed = max(1, math.ceil(abs(t1 - t0) / dt * (1 - 1e-10)))
        else:
            dt0 = options.get("dt0")
            if dt0 is None:
                h, extra = initial_step(self.f, t0, y0, f0, self.direction, self.alg.error_order or
                                        self.alg.order, self.rtol, self.atol)
                self.nfe += extra
            else:
                h = float(dt0)
                if not (math.isfinite(h) and h > 0):
                    raise ValueError(f"dt0 must be a finite positive step size, got {dt0!r}")
            self.dt = self.direction * min(h, self.dtmax, abs(t1 - t0))

        self.naccept = 0
        self.nreject = 0
        self.retcode: ReturnCode | None = None
        self._fail_detail = ""
        self._ts: list[float] = []
        self._ys: list[Tensor] = []
        if self.save_steps:
            self._ts.append(t0)
            self._ys.append(y0)
        self._trace: dict[str, list] = {"t": [], "dt": [], "accepted": [], "error": [], "stiff": []}
        self._dense = DenseOutput(self.alg_coeffs.dense, self.shape, self.direction) if self.dense else None
        self._consume_saveat_at_start()
        self._bar = None
        if opts.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=abs(t1 - t0), desc=type(algorithm).__name__, unit="t")

    # -- state --------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.retcode is not None

    def _consume_saveat_at_start(self) -> None:
        while self._save_idx < len(self.saveat) and self.saveat[self._save_idx] * self.direction <= \
                self.t0 * self.direction:
            self._ts.append(self.saveat[self._save_idx])
            self._ys.append(self.y)
            self._save_idx += 1

    def _fail(self, code: ReturnCode, detail: str = "") -> None:
        self.retcode = code
        self._fail_detail = detail

    # -- stepping -----------------------------------------------------------------------------
    def step(self) -> bool:
        """Advance by one accepted step. Returns ``False`` when the integration has ended."""
        if self.done:
            return False
        alg, co = self.alg, self.alg_coeffs
        remaining = self.t1 - self.t
        while True:
            if self.naccept + self.nreject >= self.max_steps:
                self._fail(ReturnCode.MAX_STEPS, f"max_steps = {self.max_steps}.")
                break
            if self.fixed:
                # Step i runs from t0 + i h to t0 + (i+1) h (no accumulated rounding in t).
                i = self.naccept
                last = i + 1 >= self._nfixed
                t_end = self.t1 if last else self.t0 + (i + 1) * self.dt
                dt = t_end - self.t
            else:
                dt = self.dt
                if abs(dt) > self.dtmax:
                    dt = self.direction * self.dtmax
                last = abs(dt) >= abs(remaining) * (1 - 1e-12)
                if last:
                    dt = remaining
            floor = max(self.dtmin, 1e-14 * max(1.0, abs(self.t)))
            if abs(dt) < floor and not last:
                if self._nonfinite:
                    self._fail(ReturnCode.UNSTABLE, "The error estimate was NaN/Inf at the last attempts.")
                else:
                    self._fail(ReturnCode.DT_MIN, f"dt fell below {floor:.3g}.")
                break
            k1 = self.k1
            if k1 is None:
                k1 = self.f(time_tensor(self.t, self.y.device), self.y).reshape(-1)
                self.nfe += 1
            y1, K, g = alg.stages_from(self.f, self.t, self.y_flat, dt, k1, self.shape, co)
            self.nfe += alg.stages - 1
            need_error = not self.fixed or self.want_trace
            if need_error:
                err_t = alg.error_norm(self.y_flat, y1, K, dt, self.rtol, self.atol, co)
            if self.fixed:
                accept, dt_next = True, self.dt
            else:
                err = err_t.detach().item()
                self._nonfinite = not math.isfinite(err)
                if self._nonfinite:
                    accept, dt_next = False, dt * 0.2
                else:
                    accept, dt_next = self.controller.adapt(self.ctrl_state, dt, err, self.k_exp)
            if self.want_trace:
                tr = self._trace
                tr["t"].append(self.t)
                tr["dt"].append(dt)
                tr["accepted"].append(accept)
                grad = torch.is_grad_enabled()
                tr["error"].append(err_t if grad else err_t.detach())
                st = alg.stiffness(K, g)
                tr["stiff"].append(st if grad else st.detach())
            if accept:
                self.naccept += 1
                self._accept(self.t1 if last else self.t + dt, dt, y1, K)
                if not last and not self.fixed:
                    self.dt = dt_next
                break
            self.nreject += 1
            self.k1 = k1  # f(t, y) is unchanged: reuse it
            self.dt = dt_next
        if self.retcode is None and self.t == self.t1:
            self.retcode = ReturnCode.SUCCESS
        return not self.done

    _nonfinite = False

    def _accept(self, t_new: float, dt: float, y1: Tensor, K: Tensor) -> None:
        t_old, y_old = self.t, self.y_flat
        alg = self.alg
        if alg.fsal:
            self.k1 = K[-1]
            Kd = K
        else:
            needs_f1 = self._dense is not None or self._save_idx < len(self.saveat)
            if needs_f1:
                f1 = self.f(time_tensor(t_new, y1.device), y1.view(self.shape)).reshape(-1)
                self.nfe += 1
                self.k1 = f1
                Kd = torch.cat([K, f1[None]])
            else:
                self.k1 = None
                Kd = K
        if self._dense is not None:
            self._dense.append(t_old, dt, y_old, Kd)
        # Save requested times that fall inside (t_old, t_new].
        if self._save_idx < len(self.saveat):
            j = self._save_idx
            d = self.direction
            while j < len(self.saveat) and self.saveat[j] * d <= t_new * d:
                j += 1
            if j > self._save_idx:
                times = self.saveat[self._save_idx:j]
                # A save time on the step's end is the step's own solution: no interpolation needed.
                inner = [s for s in times if s != t_new]
                vals = iter(DenseOutput.evaluate_step(self.alg_coeffs.dense, y_old, Kd, dt,
                                                      [(s - t_old) / dt for s in inner]) if inner else ())
                for s in times:
                    self._ts.append(s)
                    self._ys.append(y1.view(self.shape) if s == t_new else next(vals).view(self.shape))
                self._save_idx = j
        self.t = t_new
        self.y_flat = y1
        self.y = y1.view(self.shape)
        if self.save_steps:
            self._ts.append(t_new)
            self._ys.append(self.y)
        if self._bar is not None:
            self._bar.update(abs(t_new - t_old))

    def run(self) -> Solution:
        """Step to the end of the span and return the solution (raises on failure if ``throw``)."""
        while self.step():
            pass
        return self.solution()

    # -- result -------------------------------------------------------------------------------
    def solution(self) -> Solution:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        code = self.retcode
        if code is ReturnCode.SUCCESS or code is None:
            # Fixed steps never sync inside the loop: check the final state once here.
            if not bool(torch.isfinite(self.y.detach()).all()):
                code = self.retcode = ReturnCode.UNSTABLE
                self._fail_detail = "The state became NaN/Inf."
        if code is not None and code is not ReturnCode.SUCCESS and self.throw:
            raise SolverError(code, t=self.t, dt=abs(self.dt), detail=self._fail_detail)
        ts = as_time_tensor(self._ts)
        ys = torch.stack(self._ys) if self._ys else self.y.new_zeros((0, *self.shape))
        trace = None
        if self.want_trace:
            tr = self._trace
            dev = self.y.device
            empty = self.y.new_zeros((0,))
            trace = StepTrace(
                t=as_time_tensor(tr["t"]), dt=as_time_tensor(tr["dt"]),
                accepted=torch.tensor(tr["accepted"], dtype=torch.bool),
                error_estimate=torch.stack(tr["error"]).to(dev) if tr["error"] else empty,
                stiffness_estimate=torch.stack(tr["stiff"]).to(dev) if tr["stiff"] else empty,
                stability_size=self.alg.stability_size)
        stats = Stats(nfe=self.nfe, naccept=self.naccept, nreject=self.nreject)
        return Solution(ts=ts, ys=ys, stats=stats, retcode=code or ReturnCode.TERMINATED, trace=trace,
                        interpolant=self._dense, t_final=self.t, y_final=self.y, problem=self.problem,
                        algorithm=self.alg)

