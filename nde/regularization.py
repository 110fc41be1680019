"""Regularisers that make neural differential equations cheaper to solve.

Each regulariser is a small object passed to a model's ``forward``::

    reg = LocalRegularizer("error", sampling="unbiased", weight=ExponentialDecay(2.5, 1.0, 1000))
    ys = model(y0, ts, regularizer=reg)
    loss = task_loss(ys) + model.reg_loss          # weighted penalty; model.reg_raw is unweighted

It runs the solve the way it needs (saving an extra time, recording the trace, augmenting the state,
moving the end time), returns the states at ``ts`` and leaves its penalty on the model. The weight
follows a schedule indexed by the number of training-mode calls.

Solver-heuristic regularisers (Pal et al. 2021, 2023):

* ``GlobalError`` (ERNODE): ``mean_j EEst_j |dt_j|`` over the accepted steps, EEst the scaled
  error estimate of step ``j`` (differentiated through the whole solve: ``adjoint=Backprop()``).
* ``GlobalStiffness`` (SRNODE): ``max_j S_j``, ``S_j = |rho_j| / stability_size`` with Hairer's
  eigenvalue estimate ``rho_j`` of step ``j`` (not multiplied by dt).
* ``GlobalCombined``: ``mean_j (EEst_j |dt_j| + 0.1 S_j)``.
* ``LocalRegularizer``: one extra differentiable step at a random time ``t1`` from the state
  ``u(t1)`` the solve produced, with the step size the controller would choose there; the penalty
  is ``EEst(t1) dt(t1)`` (``kind="error"``) or ``S(t1)`` (``kind="stiffness"``). ``sampling="unbiased"``
  draws ``t1 ~ U(t0, t_end)`` and adds it to the save times; ``"biased"`` draws ``t1`` among the
  accepted step times (never ``t_end``). Only ``u(t1)`` is differentiated, so it works with every
  adjoint (``Backprop``, ``CheckpointAdjoint``, ``BacksolveAdjoint``, torchdiffeq's) and with SDEs.

Baselines in the same harness:

* ``STEER`` (Ghosh et al., NeurIPS 2020): train on a random end time ``t_end + U(-b, b)``.
* ``RNODE`` (Finlay et al., ICML 2020): ``int ||f||^2 dt`` (kinetic energy) plus the
  Hutchinson estimate ``int ||eps^T df/dy||^2 dt`` of the Jacobian's Frobenius norm, integrated as
  extra state components.
* ``TayNODE`` (Kelly et al., NeurIPS 2020): ``int ||d^K y / dt^K||^2 dt`` for K = 2 via a
  nested Jacobian-vector product, also as an extra state component.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from solvers import StepTrace

# -- weight schedules ---------------------------------------------------------------------------


class Schedule:
    """A weight as a function of the training step (``schedule(step) -> float``)."""

    def __call__(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


class Constant(Schedule):
    """``w(step) = value``."""

    def __init__(self, value: float):
        value = float(value)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"a weight must be finite and >= 0, got {value}")
        self.value = value

    def __call__(self, step: int) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"Constant({self.value})"


class ExponentialDecay(Schedule):
    """``w(step) = start * (end / start)^(min(step, steps) / steps)``: from ``start`` to ``end``
    geometrically over ``steps`` training steps, then constant (Pal et al. decay e.g. 100 -> 10)."""

    def __init__(self, start: float, end: float, steps: int):
        if not (start > 0 and end > 0 and math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"start and end must be positive and finite, got {start}, {end}")
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.start, self.end, self.steps = float(start), float(end), int(steps)

    def __call__(self, step: int) -> float:
        frac = min(max(step, 0), self.steps) / self.steps
        return self.start * (self.end / self.start) ** frac

    def __repr__(self) -> str:
        return f"ExponentialDecay({self.start}, {self.end}, {self.steps})"


def as_schedule(weight: float | Schedule | Callable[[int], float]) -> Schedule:
    if isinstance(weight, Schedule):
        return weight
    if callable(weight):
        fn = weight

        class _Fn(Schedule):
            def __call__(self, step: int) -> float:
                return float(fn(step))

        return _Fn()
    return Constant(weight)


# -- base -----------------------------------------------------------------------------------------


class Regularizer:
    """Base class. Subclasses implement ``_run(model, y0, ts, seed) -> (ys, raw_penalty)``."""

    requires_backprop: ClassVar[bool] = False
    supports_sde: ClassVar[bool] = True

    def __init__(self, weight: float | Schedule | Callable[[int], float] = 1.0):
        self.weight = as_schedule(weight)
        self.step = 0

    def run(self, model: nn.Module, y0: Tensor, ts: Tensor, seed: int | None = None) -> Tensor:
        if self.requires_backprop and not _differentiates_solver(model):
            raise ValueError(f"{type(self).__name__} differentiates the solver's internals: it needs "
                             "backprop through our solver, adjoint=Backprop() (use LocalRegularizer with "
                             f"{getattr(model, 'adjoint', 'this adjoint')!r})")
        is_sde = hasattr(model, "sde")
        if is_sde and not self.supports_sde:
            raise ValueError(f"{type(self).__name__} is not available for neural SDEs")
        ys, raw = self._run(model, y0, ts, seed)
        w = self.weight(self.step)
        if model.training:
            self.step += 1
        model.reg_raw = raw
        model.reg_loss = raw * w
        return ys

    def _run(self, model, y0, ts, seed):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight!r})"


def _differentiates_solver(model: nn.Module) -> bool:
    """Whether the model's solve keeps the solver's error/stiffness estimates on the graph (Backprop)."""
    return bool(getattr(model, "differentiates_solver", model.sensitivity == "backprop"))


def _keeps_trace(model: nn.Module) -> bool:
    """Whether the model's solve returns its per-step trace (our solver, any of our adjoints)."""
    return bool(getattr(model, "keeps_trace", model.sensitivity == "backprop"))


def _span(ts: Tensor) -> tuple[float, float]:
    return float(ts[0]), float(ts[-1])


# -- global (Pal et al. 2021) ------------------------------------------------------------------------


def _accepted(trace: StepTrace | None) -> tuple[Tensor, Tensor, Tensor]:
    if trace is None or len(trace) == 0:
        raise ValueError("this regulariser needs the solve's trace (solve with trace=True)")
    m = trace.accepted.to(trace.error_estimate.device)
    e, s = trace.error_estimate[m], trace.stiffness_estimate[m]
    dt = trace.dt[trace.accepted].to(e.device, e.dtype).abs()
    return e, s, dt


def global_error(trace: StepTrace) -> Tensor:
    """ERNODE: ``mean_j EEst_j |dt_j|`` over accepted steps."""
    e, _, dt = _accepted(trace)
    if bool(torch.isnan(e.detach()).all()):
        raise ValueError("the method has no error estimate (use an adaptive method such as Tsit5)")
    return torch.nan_to_num(e * dt).mean()


def global_stiffness(trace: StepTrace) -> Tensor:
    """SRNODE: ``max_j S_j`` over accepted steps (S already divided by the stability size)."""
    _, s, _ = _accepted(trace)
    return torch.nan_to_num(s).max()


def global_combined(trace: StepTrace, stiffness_weight: float = 0.1) -> Tensor:
    """``mean_j (EEst_j |dt_j| + 0.1 S_j)``."""
    e, s, dt = _accepted(trace)
    return torch.nan_to_num(e * dt + stiffness_weight * s).mean()


class _Global(Regularizer):
    requires_backprop = True
    _fn: ClassVar[Callable[[StepTrace], Tensor]]

    def __call__(self, solution: Any) -> Tensor:
        """The unweighted penalty of a solution solved with ``trace=True``."""
        return type(self)._fn(solution.trace)

    def _run(self, model, y0, ts, seed):
        sol = model.solve(y0, ts, _span(ts), trace=True, seed=seed)
        model.last_solution = sol
        return sol.ys, type(self)._fn(sol.trace)


class GlobalError(_Global):
    """ERNODE (Pal et al. 2021): penalise ``mean_j EEst_j |dt_j|`` of the whole solve."""

    _fn = staticmethod(global_error)


class GlobalStiffness(_Global):
    """SRNODE (Pal et al. 2021): penalise ``max_j S_j`` of the whole solve."""

    _fn = staticmethod(global_stiffness)


class GlobalCombined(_Global):
    """ERNODE + SRNODE: ``mean_j (EEst_j |dt_j| + 0.1 S_j)``."""

    _fn = staticmethod(global_combined)


# -- local (Pal, Edelman, Rackauckas 2023) -------------------------------------------------------------


class LocalRegularizer(Regularizer):
    """Local error or stiffness regularisation at one random time per solve.

    Args:
        kind: ``"error"`` (penalty ``EEst(t1) * dt(t1)``) or ``"stiffness"`` (``S(t1)``).
        sampling: ``"unbiased"`` (``t1 ~ U(t0, t_end)``) or ``"biased"`` (``t1`` among accepted
            step times; with the adjoint, among the times where the previous forward solve
            evaluated the field, since torchdiffeq does not report its steps).
        weight: a number or a ``Schedule``.
        seed: seeds the sampling of ``t1`` (and of the SDE increment of the extra step).
        step_size: the (not differentiated) size of the extra step:

            * ``"solver"``: the step the solve itself took at ``t1`` (read from its trace: needs our
              solver, with ``Backprop``, ``CheckpointAdjoint`` or ``BacksolveAdjoint``; costs
              nothing extra: 7 evaluations in all);
            * ``"controller"``: the step the solver would take next from ``(t1, u1)``: Hairer's
              starting step tried once without gradient, then the integral controller's proposal
              (14 evaluations in all; works with the adjoint);
            * ``"initial"``: Hairer's starting step itself (8 evaluations; what LocalRegNeuralDE.jl
              gets from a fresh integrator). It is often several times smaller than the solver's
              working step, so its penalty is orders of magnitude smaller (``EEst ~ dt^5``);
            * ``"auto"`` (default): ``"solver"`` with ``Backprop``, ``"controller"`` with any other
              adjoint.
    """

    def __init__(self, kind: str = "error", sampling: str = "unbiased",
                 weight: float | Schedule | Callable[[int], float] = 1.0, seed: int | None = None,
                 step_size: str = "auto"):
        super().__init__(weight)
        if step_size not in ("auto", "solver", "controller", "initial"):
            raise ValueError("step_size must be 'auto', 'solver', 'controller' or 'initial', "
                             f"got {step_size!r}")
        self.step_size = step_size
        if kind not in ("error", "stiffness"):
            raise ValueError(f"kind must be 'error' or 'stiffness', got {kind!r}")
        if sampling not in ("unbiased", "biased"):
            raise ValueError(f"sampling must be 'unbiased' or 'biased', got {sampling!r}")
        self.kind, self.sampling = kind, sampling
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, ())))
        self._prev_times: list[float] = []
        self._span: tuple[float, float] | None = None
        self.last_t = float("nan")

    def __repr__(self) -> str:
        return (f"LocalRegularizer({self.kind!r}, sampling={self.sampling!r}, weight={self.weight!r}, "
                f"step_size={self.step_size!r})")

    def _resolve(self, model: nn.Module) -> str:
        if self.step_size == "auto":
            return "solver" if _differentiates_solver(model) else "controller"
        if self.step_size == "solver" and not _keeps_trace(model):
            raise ValueError("step_size='solver' reads the solve's trace: it needs our solver with "
                             "Backprop(), CheckpointAdjoint() or BacksolveAdjoint() (not torchdiffeq's or "
                             "torchsde's adjoint)")
        return self.step_size

    def penalty_at(self, model: nn.Module, t: float, y: Tensor, dt: float | None = None) -> Tensor:
        """The unweighted penalty of one step from ``(t, y)``: ``EEst * dt`` or ``S``. ``dt``
        overrides the regulariser's step-size rule."""
        if not (isinstance(y, Tensor) and y.is_floating_point()):
            raise TypeError("y must be a floating tensor")
        lo, hi = self._span if self._span is not None else model.tspan
        if not lo <= float(t) <= hi:
            raise ValueError(f"the sampling time t = {float(t)} lies outside the span [{lo}, {hi}]")
        rule = self.step_size if self.step_size in ("controller", "initial") else "controller"
        res, dt = model.local_step(float(t), y, self.generator, dt if dt is not None else rule)
        self.last_t = float(t)
        if self.kind == "error":
            return torch.nan_to_num(res.error_estimate) * dt
        return torch.nan_to_num(res.stiffness_estimate)

    def _uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.generator, dtype=torch.float64))

    def _run(self, model, y0, ts, seed):
        t0, tend = _span(ts)
        self._span = (t0, tend)
        is_sde = hasattr(model, "sde")
        if self.sampling == "biased" and _differentiates_solver(model):
            if is_sde:
                raise ValueError("biased sampling of a neural SDE is not implemented (SDE solutions have "
                                 "no dense output); use sampling='unbiased'")
            rule = self._resolve(model)
            sol = model.solve(y0, None, (t0, tend), seed=seed)
            model.last_solution = sol
            ys = sol(ts)
            i = int(torch.randint(0, len(sol.ts) - 1, (), generator=self.generator))
            t1, u1 = float(sol.ts[i]), sol.ys[i]
            dt = float(sol.ts[i + 1] - sol.ts[i]) if rule == "solver" else None
            return ys, self.penalty_at(model, t1, u1, dt)
        if self.sampling == "biased":
            times = [t for t in self._prev_times if t0 <= t < tend]
            t1 = times[int(torch.randint(0, len(times), (), generator=self.generator))] if times \
                else self._uniform(t0, tend)
        else:
            t1 = self._uniform(t0, tend)
        tl = ts.tolist()
        if t1 in tl:  # a duplicate save time would break torchdiffeq's strictly increasing check
            t1 = self._uniform(t0, tend)
        j = sum(1 for t in tl if t < t1)
        saveat = tl[:j] + [t1] + tl[j:]
        rule = self._resolve(model)
        sol = model.solve(y0, saveat, (t0, tend), seed=seed, trace=rule == "solver")
        model.last_solution = sol
        if self.sampling == "biased":
            self._prev_times = sorted(set(model.counter.times))
        ys = torch.cat([sol.ys[:j], sol.ys[j + 1:]])
        dt = _step_at(sol.trace, t1) if rule == "solver" else None
        return ys, self.penalty_at(model, t1, sol.ys[j], dt)


def _step_at(trace: StepTrace, t: float) -> float:
    """The size of the accepted step of ``trace`` that contains ``t``."""
    acc = trace.accepted
    starts, dts = trace.t[acc], trace.dt[acc]
    i = int(torch.searchsorted(starts, torch.tensor([t], dtype=starts.dtype), right=True)[0]) - 1
    return float(dts[max(i, 0)])


# -- baselines ---------------------------------------------------------------------------------------


class STEER(Regularizer):
    """STEER (Ghosh, Behl, Dupont, Torr, Namboodiri 2020): in training, integrate to a random end
    time ``t_end + U(-b, b) (t_end - t0)`` (kept after the previous save time). No penalty term:
    ``model.reg_loss`` is 0. In eval mode the end time is the requested one."""

    def __init__(self, b: float = 0.5, seed: int | None = None):
        super().__init__(0.0)
        if not 0 < b < 1:
            raise ValueError(f"b must be in (0, 1) (a fraction of the span), got {b}")
        self.b = float(b)
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, ())))

    def _run(self, model, y0, ts, seed):
        t = ts.clone()
        if model.training:
            t0, tend = _span(ts)
            u = float(torch.rand((), generator=self.generator, dtype=torch.float64)) * 2 - 1
            new_end = tend + self.b * u * (tend - t0)
            prev = float(ts[-2])
            t[-1] = max(new_end, prev + 1e-3 * (tend - t0))
        sol = model.solve(y0, t, (float(t[0]), float(t[-1])), seed=seed)
        model.last_solution = sol
        return sol.ys, y0.new_zeros(())


class _Augmented(nn.Module):
    """``[y, a] -> [f(t, y), extra(t, y, f)]``: extra integrands as additional state components."""

    def __init__(self, counted: nn.Module, d: int, extra: Callable, n_extra: int):
        super().__init__()
        self.counted = counted
        self.d, self.extra, self.n_extra = d, extra, n_extra

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        with torch.enable_grad():
            y = z[..., : self.d]
            if not y.requires_grad:
                y = y.detach().requires_grad_(True)
            dy = self.counted(t, y)
            return torch.cat([dy, self.extra(t, y, dy)], -1)


class _AugmentedRegularizer(Regularizer):
    supports_sde = False
    n_extra: ClassVar[int] = 1

    def extra(self, t: Tensor, y: Tensor, dy: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, model, y0, ts, seed):
        d = y0.shape[-1]
        self._prepare(y0)
        field = _Augmented(model.counted, d, self.extra, self.n_extra)
        z0 = torch.cat([y0, y0.new_zeros(*y0.shape[:-1], self.n_extra)], -1)
        sol = model.solve(z0, ts, _span(ts), field=field)
        model.last_solution = sol
        integrals = sol.ys[-1][..., d:]
        return sol.ys[..., :d], self._combine(integrals)

    def _prepare(self, y0: Tensor) -> None:
        pass

    def _combine(self, integrals: Tensor) -> Tensor:
        return integrals.sum(-1).mean()


class RNODE(_AugmentedRegularizer):
    """RNODE (Finlay, Jacobsen, Nurbekyan, Oberman 2020): ``lambda_K int ||f||^2 dt +
    lambda_J int ||eps^T df/dy||^2 dt`` (Hutchinson, ``eps ~ N(0, I)`` drawn once per solve),
    averaged over the batch. ``weight`` multiplies the sum (Finlay et al. use 0.01 for both)."""

    n_extra = 2

    def __init__(self, weight: float | Schedule = 0.01, kinetic: float = 1.0, jacobian: float = 1.0,
                 seed: int | None = None):
        super().__init__(weight)
        self.kinetic, self.jacobian = float(kinetic), float(jacobian)
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, ())))
        self._eps: Tensor | None = None

    def _prepare(self, y0: Tensor) -> None:
        self._eps = torch.randn(y0.shape, generator=self.generator, dtype=y0.dtype).to(y0.device)

    def extra(self, t: Tensor, y: Tensor, dy: Tensor) -> Tensor:
        (vjp,) = torch.autograd.grad(dy, y, self._eps, create_graph=True)
        return torch.stack([(dy * dy).sum(-1), (vjp * vjp).sum(-1)], -1)

    def _combine(self, integrals: Tensor) -> Tensor:
        return (self.kinetic * integrals[..., 0] + self.jacobian * integrals[..., 1]).mean()


class TayNODE(_AugmentedRegularizer):
    """TayNODE (Kelly, Bettencourt, Johnson, Duvenaud 2020) for K = 2: ``int ||d^2 y/dt^2||^2 dt``
    with ``d^2 y/dt^2 = df/dt + (df/dy) f``, computed by one forward-mode JVP of ``f`` along
    ``(1, f)`` (Taylor mode to order 2), averaged over the batch."""

    n_extra = 1

    def extra(self, t: Tensor, y: Tensor, dy: Tensor) -> Tensor:
        func = self._field
        tt = t.to(y.dtype) if t.dtype != y.dtype else t
        _, d2 = torch.func.jvp(lambda s, z: func(s.to(t.dtype), z), (tt, y.detach()),
                               (torch.ones_like(tt), dy))
        return (d2 * d2).sum(-1, keepdim=True)

    def _run(self, model, y0, ts, seed):
        self._field = model.func
        return super()._run(model, y0, ts, seed)
