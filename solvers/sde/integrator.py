"""The SDE step loop (fixed and adaptive) and the SDE solution.

Fixed steps: the grid ``t0 + i dt`` (merged with ``saveat``) is known before the first step, so all
Brownian increments are drawn in one ``randn`` call (:class:`~solvers.sde.brownian.GridIncrements`)
and the loop does no host synchronisation. Adaptive steps query a ``torchsde.BrownianInterval``,
which returns increments of one consistent path whatever intervals are asked for, so a rejected
step retried with a smaller ``dt`` stays on the same sample path.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..checks import check_finite, check_options, check_saveat, fixed_step, step_options
from ..problem import SDEProblem
from ..solution import ReturnCode, Solution, SolverError, Stats, StepTrace, as_time_tensor
from ..stepping.controllers import Controller, initial_step
from ..stepping.times import time_tensor
from .brownian import GridIncrements, IntervalPath, default_seed, fixed_grid
from .methods import EulerMaruyama, SDEAlgorithm, g_prod

_OPTIONS = ("rtol", "atol", "dt", "dt0", "saveat", "trace", "controller", "max_steps", "dtmin", "dtmax",
            "throw", "brownian", "seed", "save_noise", "progress")


class SDESolution(Solution):
    """An SDE solution: :class:`~solvers.solution.Solution` plus the noise.

    Extra attributes: ``ws`` (``W(t) - W(t0)`` at ``ts`` when solved with ``save_noise=True``),
    ``brownian`` (the path used: a :class:`GridIncrements` or an :class:`IntervalPath`), ``seed``.
    ``stats.nge`` counts diffusion evaluations. There is no dense output between steps.
    """

    def __init__(self, *args: Any, ws: Tensor | None = None, brownian: Any = None, seed: int | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ws = ws
        self.brownian = brownian
        self.seed = seed

    def __call__(self, t: float | Tensor) -> Tensor:
        raise ValueError("SDE solutions have no dense output: pass the times you need as saveat=")


def _brownian_shape(problem: SDEProblem, g0: Tensor) -> tuple[int, ...]:
    y0 = problem.y0
    if problem.noise == "diagonal":
        if g0.shape != y0.shape:
            raise ValueError(f"diagonal noise: g(t0, y0) must have the shape of y0 {tuple(y0.shape)}, "
                             f"got {tuple(g0.shape)}")
        return tuple(y0.shape)
    if g0.dim() < 2 or g0.shape[-2] != y0.shape[-1]:
        raise ValueError(f"{problem.noise} noise: g(t0, y0) must have shape (*batch, d={y0.shape[-1]}, m), "
                         f"got {tuple(g0.shape)}")
    m = g0.shape[-1]
    if problem.noise == "scalar" and m != 1:
        raise ValueError(f"scalar noise: g(t0, y0) must end in a dimension of size 1, got {tuple(g0.shape)}")
    if problem.brownian_size is not None and m != problem.brownian_size:
        raise ValueError(f"g(t0, y0) has {m} noise columns but brownian_size = {problem.brownian_size}")
    return (*y0.shape[:-1], m)


class SDEIntegrator:
    """Integrates an :class:`~solvers.problem.SDEProblem` with an :class:`SDEAlgorithm`."""

    def __init__(self, problem: SDEProblem, alg: SDEAlgorithm, **options: Any):
        check_options(options, _OPTIONS, f"solve with {type(alg).__name__}")
        alg.check_problem(problem)
        self.problem, self.alg = problem, alg
        opts = step_options(options, rtol=1e-3, atol=1e-6)
        self.rtol, self.atol = opts.rtol, opts.atol
        self.want_trace, self.throw, self.max_steps = opts.trace, opts.throw, opts.max_steps
        self.save_noise = bool(options.get("save_noise", False))
        self.dtmin, self.dtmax, self.progress = opts.dtmin, opts.dtmax, opts.progress
        t0, t1 = problem.tspan
        self.t0, self.t1 = t0, t1

        saveat = options.get("saveat")
        self.save_steps = saveat is None
        self.saveat: list[float] = []
        if saveat is not None:
            self.saveat = check_saveat(saveat, t0, t1)

        dt = fixed_step(options, alg.adaptive, type(alg).__name__)
        self.fixed = dt is not None
        self.dt_opt = dt
        ctrl = options.get("controller") or (None if self.fixed else alg.default_controller())
        if ctrl is not None and not isinstance(ctrl, Controller):
            raise TypeError(f"controller must be a Controller, got {type(ctrl).__name__}")
        self.controller = ctrl
        self.dt0 = options.get("dt0")
        if self.dt0 is not None and not (math.isfinite(float(self.dt0)) and float(self.dt0) > 0):
            raise ValueError(f"dt0 must be a finite positive step size, got {self.dt0!r}")

        # First evaluations double as input validation (shapes, dtype, finiteness).
        y0 = problem.y0
        tt = time_tensor(t0, y0.device)
        f0 = problem.f(tt, y0)
        if not isinstance(f0, Tensor) or f0.shape != y0.shape:
            got = tuple(f0.shape) if isinstance(f0, Tensor) else type(f0).__name__
            raise ValueError(f"f(t0, y0) must return a tensor of shape {tuple(y0.shape)}, got {got}")
        g0 = problem.g(tt, y0)
        if not isinstance(g0, Tensor):
            raise ValueError(f"g(t0, y0) must return a tensor, got {type(g0).__name__}")
        check_finite("f(t0, y0)", f0.detach())
        check_finite("g(t0, y0)", g0.detach())
        self.bshape = _brownian_shape(problem, g0)
        self.f0, self.g0 = f0, g0
        self.brownian = options.get("brownian")
        if self.brownian is not None and not callable(self.brownian):
            raise TypeError("brownian must be callable as bm(ta, tb) (e.g. a torchsde.BrownianInterval)")
        self.seed = None if self.brownian is not None else default_seed(options.get("seed"))

    # ------------------------------------------------------------------------------------------
    def run(self) -> SDESolution:
        if self.fixed:
            return self._run_fixed()
        return self._run_adaptive()

    def _finish(self, ts, ys, ws, nfe, nge, naccept, nreject, code, t, y, dt, trace, path, detail=""):
        if code is ReturnCode.SUCCESS and not bool(torch.isfinite(y.detach()).all()):
            code, detail = ReturnCode.UNSTABLE, "The state became NaN/Inf."
        if code is not ReturnCode.SUCCESS and self.throw:
            raise SolverError(code, t=t, dt=abs(dt), detail=detail)
        tr = None
        if self.want_trace:
            empty = y.new_zeros((0,))
            tr = StepTrace(t=as_time_tensor(trace["t"]), dt=as_time_tensor(trace["dt"]),
                           accepted=torch.tensor(trace["accepted"], dtype=torch.bool),
                           error_estimate=torch.stack(trace["error"]) if trace["error"] else empty,
                           stiffness_estimate=torch.stack(trace["stiff"]) if trace["stiff"] else empty,
                           stability_size=self.alg.stability_size)
        stats = Stats(nfe=nfe, naccept=naccept, nreject=nreject, extra={"nge": nge})
        return SDESolution(ts=as_time_tensor(ts), ys=torch.stack(ys), stats=stats, retcode=code, trace=tr,
                           t_final=t, y_final=y, problem=self.problem, algorithm=self.alg,
                           ws=torch.stack(ws) if ws is not None else None, brownian=path, seed=self.seed)

    def _record(self, trace, t, dt, accepted, res) -> None:
        grad = torch.is_grad_enabled()
        trace["t"].append(t)
        trace["dt"].append(dt)
        trace["accepted"].append(accepted)
        trace["error"].append(res.error_estimate if grad else res.error_estimate.detach())
        trace["stiff"].append(res.stiffness_estimate if grad else res.stiffness_estimate.detach())

    def _run_fixed(self) -> SDESolution:
        p, alg = self.problem, self.alg
        grid = fixed_grid(self.t0, self.t1, self.dt_opt, self.saveat)
        n = len(grid) - 1
        if n > self.max_steps:
            raise ValueError(f"dt = {self.dt_opt} needs {n} steps, more than max_steps = {self.max_steps}")
        y0 = p.y0
        levy = alg.needs_levy_area
        if self.brownian is None:
            path = GridIncrements(grid, self.bshape, y0.dtype, y0.device, seed=self.seed, levy_area=levy)
            dWs, Us = path.dW, path.U
        elif isinstance(self.brownian, GridIncrements) and self.brownian.grid == grid:
            path = self.brownian
            dWs, Us = path.dW, path.U
            if levy and Us is None:
                raise ValueError(f"{type(alg).__name__} needs increments drawn with levy_area=True")
        else:
            path = self.brownian
            dWs, Us = None, None
        save = set(self.saveat)
        save_steps = self.save_steps
        ts: list[float] = []
        ys: list[Tensor] = []
        ws: list[Tensor] | None = [] if self.save_noise else None
        W = torch.zeros(self.bshape, dtype=y0.dtype, device=y0.device) if self.save_noise else None
        if save_steps or grid[0] in save:
            ts.append(grid[0])
            ys.append(y0)
            if ws is not None:
                ws.append(W)
        trace = {"t": [], "dt": [], "accepted": [], "error": [], "stiff": []}
        f, g, noise = p.f, p.g, p.noise
        y = y0
        fv, gv = self.f0, self.g0
        nfe = nge = 1
        bar = _bar(self.progress, self.t1 - self.t0, type(alg).__name__)
        fast = type(alg) is EulerMaruyama and not self.want_trace
        dev = y0.device
        for i in range(n):
            ta, tb = grid[i], grid[i + 1]
            h = tb - ta
            if dWs is not None:
                dW = dWs[i]
                U = Us[i] if levy else None
            elif levy:
                dW, U = path(ta, tb, return_U=True)
            else:
                dW, U = path(ta, tb), None
            if fast:
                # Euler-Maruyama inline: the hot loop of neural-SDE training, kept free of overhead.
                if fv is None:
                    tt = time_tensor(ta, dev)
                    fv, gv = f(tt, y), g(tt, y)
                    nfe += 1
                    nge += 1
                y = torch.add(y, fv, alpha=h) + (gv * dW if noise == "diagonal" else g_prod(gv, dW, noise))
                fv = gv = None
            else:
                res = alg.step(f, g, ta, y, h, dW, U, noise=noise, sde_type=p.sde_type, f0=fv, g0=gv,
                               rtol=self.rtol, atol=self.atol)
                nfe += res.nfe
                nge += res.nge
                if self.want_trace:
                    self._record(trace, ta, h, True, res)
                y = res.y
                fv, gv = res.f1, res.g1
            if W is not None:
                W = W + dW
            if save_steps or tb in save:
                ts.append(tb)
                ys.append(y)
                if ws is not None:
                    ws.append(W)
            if bar is not None:
                bar.update(h)
        if bar is not None:
            bar.close()
        return self._finish(ts, ys, ws, nfe, nge, n, 0, ReturnCode.SUCCESS, self.t1, y, grid[-1] - grid[-2],
                            trace, path)

    def _run_adaptive(self) -> SDESolution:
        p, alg = self.problem, self.alg
        y0 = p.y0
        t0, t1 = self.t0, self.t1
        levy = alg.needs_levy_area
        if self.brownian is None:
            path = IntervalPath(t0, t1, self.bshape, y0.dtype, y0.device, seed=self.seed, levy_area=levy)
        else:
            path = self.brownian
        nfe = nge = 1
        if self.dt0 is not None:
            dt = float(self.dt0)
        else:
            # Hairer's heuristic on the drift, for an order-1 method: a cautious first step.
            dt, extra = initial_step(p.f, t0, y0, self.f0, 1.0, 1, self.rtol, self.atol)
            nfe += extra
        dt = min(dt, self.dtmax, t1 - t0)
        stops = [s for s in self.saveat if s > t0] + [t1]
        save_set = set(self.saveat)
        ts: list[float] = []
        ys: list[Tensor] = []
        ws: list[Tensor] | None = [] if self.save_noise else None
        W = torch.zeros(self.bshape, dtype=y0.dtype, device=y0.device) if self.save_noise else None
        if self.save_steps or t0 in save_set:
            ts.append(t0)
            ys.append(y0)
            if ws is not None:
                ws.append(W)
        trace = {"t": [], "dt": [], "accepted": [], "error": [], "stiff": []}
        state = self.controller.new_state()
        k = alg.error_exponent
        t, y = t0, y0
        fv, gv = self.f0, self.g0
        naccept = nreject = 0
        si = 0
        code, detail = ReturnCode.SUCCESS, ""
        nonfinite = False
        bar = _bar(self.progress, t1 - t0, type(alg).__name__)
        while t < t1:
            if naccept + nreject >= self.max_steps:
                code, detail = ReturnCode.MAX_STEPS, f"max_steps = {self.max_steps}."
                break
            while stops[si] <= t:
                si += 1
            stop = stops[si]
            h = min(dt, self.dtmax)
            land = h >= (stop - t) * (1 - 1e-12)
            if land:
                h = stop - t
            floor = max(self.dtmin, 1e-14 * max(1.0, abs(t)))
            if h < floor and not land:
                code = ReturnCode.UNSTABLE if nonfinite else ReturnCode.DT_MIN
                detail = "The error estimate was NaN/Inf." if nonfinite else f"dt fell below {floor:.3g}."
                break
            if levy:
                dW, U = path(t, t + h, return_U=True)
            else:
                dW, U = path(t, t + h), None
            res = alg.step(p.f, p.g, t, y, h, dW, U, noise=p.noise, sde_type=p.sde_type, f0=fv, g0=gv,
                           rtol=self.rtol, atol=self.atol)
            nfe += res.nfe
            nge += res.nge
            err = float(res.error_estimate.detach())
            nonfinite = not math.isfinite(err)
            if nonfinite:
                accept, dt_next = False, h * 0.2
            else:
                accept, dt_next = self.controller.adapt(state, h, err, k)
            if self.want_trace:
                self._record(trace, t, h, accept, res)
            if accept:
                naccept += 1
                t = stop if land else t + h
                y = res.y
                fv, gv = res.f1, res.g1
                if W is not None:
                    W = W + dW
                if self.save_steps or (land and t in save_set):
                    ts.append(t)
                    ys.append(y)
                    if ws is not None:
                        ws.append(W)
                if bar is not None:
                    bar.update(h)
                # A step clipped to land on a save time does not shrink the controller's proposal.
                dt = max(dt_next, dt) if land else dt_next
            else:
                nreject += 1
                fv, gv = res.f0, res.g0
                dt = dt_next
        if bar is not None:
            bar.close()
        return self._finish(ts, ys, ws, nfe, nge, naccept, nreject, code, t, y, dt, trace, path, detail)


def _bar(enabled: bool, total: float, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="t")
