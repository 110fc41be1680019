"""Neural differential equations as ``torch.nn`` modules on top of ``solvers``.

``NeuralODE`` integrates ``dy/dt = f_theta(t, y)`` with any ``solvers`` Runge-Kutta method (or
torchdiffeq's); ``NeuralSDE`` integrates ``dy = f_theta(t, y) dt + g_theta(t, y) dW`` with any
``solvers.sde`` method (or torchsde's adjoint). Both keep the last solve's statistics and trace,
count vector-field evaluations of the forward and the backward pass separately, and accept a
regulariser from ``nde.regularization`` that adds its penalty to ``model.reg_loss``.

Gradients come from an adjoint object (``solvers.adjoint``, ``docs/adjoints.md``):

* ``Backprop()`` (default; discretise-then-optimise): autograd through every operation of our
  solver. The backward pass replays the recorded graph and evaluates no vector field
  (``nfe_backward == 0``); memory grows with the number of steps. The only rule the global
  regularisers work with, since they differentiate the solver's own error estimates.
* ``CheckpointAdjoint(n)``: the same gradient, recomputing the steps between ``n`` checkpoints in
  the backward pass (``nfe_backward`` = one more evaluation of every accepted step).
* ``BacksolveAdjoint()`` (optimise-then-discretise): our solver forwards without a graph, the
  adjoint equation solved backwards with our methods; O(1) memory in the number of steps.
* ``TorchDiffEqAdjoint()`` / ``TorchSDEAdjoint()``: torchdiffeq's / torchsde's adjoints, with their
  solvers (pass ``TorchDiffEq(method)`` as the solver).

The local regularisers (and RNODE, TayNODE, STEER) work with every adjoint. The older
``sensitivity="backprop" | "adjoint"`` is a deprecated alias (see ``adjoint_from_sensitivity``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from solvers import (
    Adjoint,
    Backprop,
    BacksolveAdjoint,
    CheckpointAdjoint,
    ODEProblem,
    Solution,
    TorchDiffEq,
    TorchDiffEqAdjoint,
    TorchSDEAdjoint,
    Tsit5,
    solve,
)
from solvers.algorithm import Algorithm
from solvers.checks import check_tolerance
from solvers.ode.runge_kutta import ExplicitRungeKutta
from solvers.problem import SDEProblem
from solvers.sde import LambaEM, SDEAlgorithm
from solvers.stepping.controllers import ControllerState, IController, default_tolerances, initial_step
from solvers.stepping.protocol import Stepper

_SENSITIVITIES = ("backprop", "adjoint")


def adjoint_from_sensitivity(sensitivity: str, solver: Algorithm | None, sde: bool = False) -> Adjoint:
    """The adjoint the deprecated ``sensitivity=`` string stands for (with a ``DeprecationWarning``).

    ``"backprop"`` is ``Backprop``. ``"adjoint"`` is torchdiffeq's adjoint
    (``TorchDiffEqAdjoint``) when the solver is ``None`` or a
    ``TorchDiffEq``, torchsde's for a neural SDE, and ``BacksolveAdjoint``
    (the same continuous adjoint, run with the caller's method) when the solver is one of our
    Runge-Kutta methods: the user's solver is never replaced by another one.
    """
    if sensitivity not in _SENSITIVITIES:
        raise ValueError(f"sensitivity must be 'backprop' or 'adjoint', got {sensitivity!r}")
    if sensitivity == "backprop":
        new = "Backprop()"
        adj: Adjoint = Backprop()
    elif sde:
        new, adj = "TorchSDEAdjoint()", TorchSDEAdjoint()
    elif solver is None or isinstance(solver, TorchDiffEq):
        new, adj = "TorchDiffEqAdjoint()", TorchDiffEqAdjoint()
    else:
        new, adj = "BacksolveAdjoint()", BacksolveAdjoint()
    warnings.warn(f"sensitivity={sensitivity!r} is deprecated: pass adjoint={new}", DeprecationWarning,
                  stacklevel=3)
    return adj


def _own_ode_method(solver: Any) -> bool:
    """One of our ODE steppers (explicit, implicit or switching), as opposed to torchdiffeq's."""
    return isinstance(solver, Stepper) and solver.kind == "ode"


def _check_adjoint(adjoint: Any) -> Adjoint:
    if isinstance(adjoint, type) and issubclass(adjoint, Adjoint):
        raise TypeError(f"adjoint: pass an instance: {adjoint.__name__}() rather than {adjoint.__name__}")
    if not isinstance(adjoint, Adjoint):
        raise TypeError(f"adjoint must be a solvers Adjoint (Backprop(), BacksolveAdjoint(), "
                        f"CheckpointAdjoint(n), TorchDiffEqAdjoint() ...), got {type(adjoint).__name__}")
    return adjoint


def _times(ts: Any, default: tuple[float, float]) -> Tensor:
    if ts is None:
        ts = default
    t = torch.as_tensor(ts, dtype=torch.float64).reshape(-1).cpu()
    if t.numel() < 2:
        raise ValueError(f"ts must hold at least two times (start and end), got {t.tolist()}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("ts contains NaN or Inf")
    if not bool((t[1:] > t[:-1]).all()):
        raise ValueError(f"ts must be strictly increasing, got {t.tolist()}")
    return t



def _tolerances(kind: str, rtol: float | None, atol: float | None) -> tuple[float, float]:
    """The model's tolerances: the given ones, else ``DEFAULT_TOLERANCES[kind]``."""
    rtol, atol = default_tolerances(kind, rtol, atol)
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    if rtol == 0 and atol == 0:
        raise ValueError("rtol and atol cannot both be zero")
    return rtol, atol

class _Counter:
    """Vector-field evaluations, split by phase (forward solve / regulariser / backward)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.forward = 0
        self.regularizer = 0
        self.backward = 0
        self.phase = "forward"
        self.times: list[float] = []

    def tick(self, t: Any, record: bool = False) -> None:
        if self.phase == "forward":
            self.forward += 1
            if record:
                self.times.append(float(t))
        elif self.phase == "regularizer":
            self.regularizer += 1
        else:
            self.backward += 1


class _CountedField(nn.Module):
    """``f(t, y)`` that counts its calls (a module, so the adjoint finds its parameters)."""

    def __init__(self, func: nn.Module, counter: _Counter, record_times: bool = False):
        super().__init__()
        self.func = func
        self.counter = counter
        self.record_times = record_times

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.counter.tick(t, self.record_times)
        return self.func(t, y)


class _CountsEvaluations:
    """NFE read-outs of a model that owns a ``counter`` (``_Counter``)."""

    counter: _Counter

    @property
    def nfe_forward(self) -> int:
        return self.counter.forward

    @property
    def nfe_backward(self) -> int:
        """Evaluations made by the backward pass (adjoint); 0 for backprop (no re-evaluation)."""
        return self.counter.backward

    @property
    def nfe_regularizer(self) -> int:
        return self.counter.regularizer


class NeuralODE(_CountsEvaluations, nn.Module):
    """``y(t) = y0 + int_t0^t f_theta(s, y(s)) ds`` as a module (Chen et al., NeurIPS 2018).

    Args:
        vector_field: an ``nn.Module`` called as ``vector_field(t, y)`` with ``y`` of shape ``(*batch, d)``.
        solver: a ``solvers`` explicit Runge-Kutta method (default ``Tsit5``), or a
            ``TorchDiffEq`` for ``TorchDiffEqAdjoint`` (default there:
            ``TorchDiffEq(adjoint_method)``). It is always the method that runs: an adjoint that
            cannot use it raises ``ValueError``.
        rtol, atol: tolerances of the adaptive solve (default ``DEFAULT_TOLERANCES["neural_ode"]``,
            1e-3 / 1e-4); ``dt``: fixed step instead.
        adjoint: how gradients are computed (default ``Backprop``; see the module docs).
        sensitivity: deprecated alias of ``adjoint`` (``"backprop"`` / ``"adjoint"``).
        tspan: default ``(t0, t1)`` when ``forward`` gets no ``ts``.
        solve_options: extra options for ``solve`` (``max_steps``, ``controller`` ...).

    After ``forward``: ``last_solution`` (a ``Solution``), ``nfe_forward``,
    ``nfe_backward`` (read it after ``loss.backward()``), ``nfe_regularizer``, ``reg_loss``.
    """

    def __init__(self, vector_field: nn.Module, solver: Algorithm | None = None, *, rtol: float | None = None,
                 atol: float | None = None, dt: float | None = None, adjoint: Adjoint | None = None,
                 sensitivity: str | None = None, adjoint_method: str = "dopri5",
                 tspan: tuple[float, float] = (0.0, 1.0), solve_options: dict | None = None):
        super().__init__()
        if not callable(vector_field):
            raise TypeError("vector_field must be callable as vector_field(t, y)")
        if sensitivity is not None:
            if adjoint is not None:
                raise ValueError("pass adjoint= or the deprecated sensitivity=, not both")
            adjoint = adjoint_from_sensitivity(sensitivity, solver)
        adjoint = _check_adjoint(adjoint if adjoint is not None else Backprop())
        self.func = vector_field
        self.adjoint = adjoint
        if solver is None:
            solver = TorchDiffEq(adjoint_method) if isinstance(adjoint, TorchDiffEqAdjoint) else Tsit5()
        if isinstance(adjoint, TorchDiffEqAdjoint):
            if not isinstance(solver, TorchDiffEq):
                raise ValueError(f"TorchDiffEqAdjoint runs torchdiffeq's own solver, not {solver!r}: pass "
                                 "solver=TorchDiffEq('dopri5') (or another torchdiffeq method), or use "
                                 "BacksolveAdjoint() to keep this solver")
        elif isinstance(adjoint, (Backprop, BacksolveAdjoint, CheckpointAdjoint)):
            if isinstance(solver, TorchDiffEq) and (solver.adjoint or not isinstance(adjoint, Backprop)):
                raise ValueError(f"{adjoint!r} with {solver!r}: torchdiffeq's adjoint is "
                                 "adjoint=TorchDiffEqAdjoint(); our adjoints need a solvers Runge-Kutta "
                                 "method")
            if not (isinstance(solver, TorchDiffEq) or _own_ode_method(solver)):
                raise ValueError(f"{adjoint!r} needs a solvers ODE method (Tsit5(), Rodas5P(), Kvaerno5(), "
                                 f"AutoSwitch() ...), got {solver!r}")
        else:
            raise ValueError(f"{adjoint!r} does not differentiate ODE solves")
        self.solver = solver
        self.rtol, self.atol, self.dt = *_tolerances("neural_ode", rtol, atol), dt
        self.tspan = (float(tspan[0]), float(tspan[1]))
        self.solve_options = dict(solve_options or {})
        self.counter = _Counter()
        # Times of forward evaluations: what biased local regularisation samples from without backprop.
        self.counted = _CountedField(vector_field, self.counter, record_times=not self.differentiates_solver)
        self.last_solution: Solution | None = None
        self.reg_loss: Tensor | None = None
        self.reg_raw: Tensor | None = None

    @property
    def sensitivity(self) -> str:
        """``"backprop"`` for ``Backprop``, ``"adjoint"`` for any other adjoint (kept for
        code written against the deprecated ``sensitivity=``)."""
        return "backprop" if type(self.adjoint) is Backprop else "adjoint"

    @property
    def differentiates_solver(self) -> bool:
        """Whether the solver's internals (the trace's error/stiffness estimates) are differentiable."""
        return self.adjoint.differentiates_solver and _own_ode_method(self.solver)

    @property
    def keeps_trace(self) -> bool:
        """Whether ``trace=True`` returns the forward solve's per-step trace."""
        return self.adjoint.keeps_trace and _own_ode_method(self.solver)

    @property
    def adaptive_solver(self) -> ExplicitRungeKutta:
        """The method the local regulariser steps with (the model's own, or Tsit5 for adjoint)."""
        return self.solver if isinstance(self.solver, ExplicitRungeKutta) else Tsit5()

    def local_step(self, t: float, y: Tensor, generator: torch.Generator | None = None,
                   step_size: str | float = "controller"):
        """One differentiable step of the adaptive method from ``(t, y)``: ``(StepResult, dt)``.

        ``dt`` is not differentiated: a number is used as it is; ``step_size="initial"``: Hairer's
        starting-step heuristic (as the authors' LocalRegNeuralDE.jl does, via the integrator's
        initial dt);
        ``"controller"``: that step is tried once (no gradient) and ``dt`` is the integral
        controller's proposal after it, i.e. the step the solver would take next from ``(t, y)``
        (6 more evaluations). Evaluations are counted as ``nfe_regularizer``."""
        alg = self.adaptive_solver
        f = self.counted
        self.counter.phase = "regularizer"
        try:
            f0 = f(torch.tensor(t, dtype=torch.float64, device=y.device), y)
            k = alg.error_order or alg.order
            if not isinstance(step_size, str):
                dt = float(step_size)
            else:
                dt, _ = initial_step(f, t, y.detach(), f0.detach(), 1.0, k, self.rtol, self.atol)
            if step_size == "controller":
                with torch.no_grad():
                    trial = alg.step(f, t, y.detach(), dt, f0=f0.detach(), rtol=self.rtol, atol=self.atol)
                dt = _propose(dt, float(trial.error_estimate), k + 1)
            res = alg.step(f, t, y, dt, f0=f0, rtol=self.rtol, atol=self.atol)
        finally:
            self.counter.phase = "backward"
        return res, dt

    # -- solving ---------------------------------------------------------------------------------
    def solve(self, y0: Tensor, saveat: Sequence[float] | Tensor | None, t_span: tuple[float, float],
              trace: bool = False, seed: int | None = None, field: nn.Module | None = None) -> Solution:
        """One solve with the model's settings (counted as forward evaluations). ``field``
        replaces the vector field (an augmented one, as RNODE uses); it must call ``self.counted``."""
        prob = ODEProblem(field if field is not None else self.counted, y0, t_span)
        opts: dict[str, Any] = dict(rtol=self.rtol, atol=self.atol, **self.solve_options)
        if self.dt is not None:
            opts["dt"] = self.dt
        if saveat is not None:
            opts["saveat"] = saveat
        if _own_ode_method(self.solver):
            opts["trace"] = trace
            # A dense interpolant is only differentiable with backprop (biased sampling reads it).
            opts.setdefault("dense", saveat is None and type(self.adjoint) is Backprop)
        self.counter.phase = "forward"
        try:
            sol = solve(prob, self.solver, adjoint=self.adjoint, **opts)
        finally:
            self.counter.phase = "backward"
        return sol

    def forward(self, y0: Tensor, ts: Sequence[float] | Tensor | None = None,
                regularizer: Any = None) -> Tensor:
        """States at ``ts`` (default: the two ends of ``tspan``), shape ``(len(ts), *y0.shape)``.

        With a ``regularizer`` its weighted penalty is left in ``self.reg_loss`` (add it to the loss).
        """
        t = _times(ts, self.tspan)
        self.counter.reset()
        self.reg_loss = self.reg_raw = None
        if regularizer is None:
            sol = self.solve(y0, t, (float(t[0]), float(t[-1])))
            self.last_solution = sol
            self.counter.phase = "backward"
            return sol.ys
        ys = regularizer.run(self, y0, t)
        self.counter.phase = "backward"
        return ys


class _SDEModule(nn.Module):
    """Drift and diffusion as one module with torchsde's ``f``/``g`` interface, counting calls."""

    def __init__(self, drift: nn.Module, diffusion: nn.Module, noise: str, sde_type: str, counter: _Counter):
        super().__init__()
        self.drift, self.diffusion = drift, diffusion
        self.noise_type, self.sde_type = noise, sde_type
        self.counter = counter
        self.ngev = {"forward": 0, "regularizer": 0, "backward": 0}

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        self.counter.tick(t)
        return self.drift(t, y)

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        self.ngev[self.counter.phase] += 1
        return self.diffusion(t, y)


class NeuralSDE(_CountsEvaluations, nn.Module):
    """``dy = f_theta(t, y) dt + g_theta(t, y) dW`` as a module (Tzen & Raginsky 2019; Li et al. 2020).

    Args:
        drift, diffusion: modules called as ``drift(t, y)``, ``diffusion(t, y)`` (shapes as in
            ``SDEProblem`` for the chosen ``noise``).
        solver: a ``solvers.sde`` method (default ``LambaEM``, adaptive).
        noise, sde_type: as in ``SDEProblem``.
        rtol, atol, dt: adaptive tolerances (default ``DEFAULT_TOLERANCES["neural_sde"]``, 1e-2 / 1e-3)
            or a fixed step.
        adjoint: ``Backprop`` (default: through our solver) or
            ``TorchSDEAdjoint`` (``torchsde.sdeint_adjoint`` with its method; a fixed
            step ``dt`` is required). Our ODE adjoints do not apply to SDEs (``ValueError``).
        sensitivity: deprecated alias (``"backprop"``; ``"adjoint"`` = ``TorchSDEAdjoint(adjoint_method)``).

    ``forward(y0, ts, seed=None)`` returns ``(len(ts), *y0.shape)``; ``nfe_forward`` counts drift
    evaluations, ``nge_forward`` diffusion evaluations, ``nfe_backward`` drift evaluations of the
    adjoint pass.
    """

    def __init__(self, drift: nn.Module, diffusion: nn.Module, solver: SDEAlgorithm | None = None, *,
                 noise: str = "diagonal", sde_type: str = "ito", rtol: float | None = None,
                 atol: float | None = None,
                 dt: float | None = None, adjoint: Adjoint | None = None, sensitivity: str | None = None,
                 adjoint_method: str = "euler", tspan: tuple[float, float] = (0.0, 1.0),
                 solve_options: dict | None = None):
        super().__init__()
        if sensitivity is not None:
            if adjoint is not None:
                raise ValueError("pass adjoint= or the deprecated sensitivity=, not both")
            adjoint = adjoint_from_sensitivity(sensitivity, solver, sde=True)
            if isinstance(adjoint, TorchSDEAdjoint):
                adjoint = TorchSDEAdjoint(adjoint_method)
        adjoint = _check_adjoint(adjoint if adjoint is not None else Backprop())
        if type(adjoint) is not Backprop and not isinstance(adjoint, TorchSDEAdjoint):
            raise ValueError(f"{adjoint!r} differentiates ODE solves; a NeuralSDE takes Backprop() or "
                             "TorchSDEAdjoint()")
        self.adjoint = adjoint
        self.counter = _Counter()
        self.sde = _SDEModule(drift, diffusion, noise, sde_type, self.counter)
        self.solver = solver if solver is not None else LambaEM()
        if not isinstance(self.solver, SDEAlgorithm):
            raise ValueError(f"solver must be a solvers.sde method, got {self.solver!r}")
        if isinstance(adjoint, TorchSDEAdjoint) and dt is None:
            raise ValueError("the adjoint TorchSDEAdjoint (torchsde.sdeint_adjoint) needs a fixed step dt")
        self.noise, self.sde_type = noise, sde_type
        self.rtol, self.atol, self.dt = *_tolerances("neural_sde", rtol, atol), dt
        self.adjoint_method = adjoint.method if isinstance(adjoint, TorchSDEAdjoint) else adjoint_method
        self.tspan = (float(tspan[0]), float(tspan[1]))
        self.solve_options = dict(solve_options or {})
        self.last_solution = None
        self.reg_loss: Tensor | None = None
        self.reg_raw: Tensor | None = None

    @property
    def sensitivity(self) -> str:
        """``"backprop"`` or ``"adjoint"`` (kept for code written against ``sensitivity=``)."""
        return "backprop" if type(self.adjoint) is Backprop else "adjoint"

    @property
    def differentiates_solver(self) -> bool:
        return type(self.adjoint) is Backprop

    @property
    def keeps_trace(self) -> bool:
        return type(self.adjoint) is Backprop

    @property
    def drift(self) -> nn.Module:
        return self.sde.drift

    @property
    def diffusion(self) -> nn.Module:
        return self.sde.diffusion

    @property
    def nge_forward(self) -> int:
        return self.sde.ngev["forward"]

    @property
    def adaptive_solver(self) -> SDEAlgorithm:
        return self.solver if self.solver.adaptive else LambaEM()

    def solve(self, y0: Tensor, saveat, t_span: tuple[float, float], trace: bool = False,
              seed: int | None = None):
        self.counter.phase = "forward"
        try:
            if isinstance(self.adjoint, TorchSDEAdjoint):
                from solvers.sde import IntervalPath

                ts = torch.as_tensor(saveat if saveat is not None else t_span, dtype=y0.dtype,
                                     device=y0.device)
                m = y0.shape[-1] if self.noise == "diagonal" else self._brownian_m(y0, t_span)
                size = (*y0.shape[:-1], m)
                bm = IntervalPath(t_span[0], t_span[1], size, y0.dtype, y0.device, seed=seed, dt=self.dt).bm
                ys = self.adjoint.sdeint(self.sde, y0, ts, bm, self.dt, tuple(self.parameters()))
                return _AdjointSDESolution(ts.double().cpu(), ys)
            prob = SDEProblem(self.sde.f, self.sde.g, y0, t_span, noise=self.noise, sde_type=self.sde_type)
            opts: dict[str, Any] = dict(rtol=self.rtol, atol=self.atol, trace=trace, seed=seed,
                                        **self.solve_options)
            if self.dt is not None:
                opts["dt"] = self.dt
            if saveat is not None:
                opts["saveat"] = saveat
            return solve(prob, self.solver, **opts)
        finally:
            self.counter.phase = "backward"

    def local_step(self, t: float, y: Tensor, generator: torch.Generator | None = None,
                   step_size: str | float = "controller"):
        """One differentiable step of the adaptive SDE method from ``(t, y)`` with a fresh Brownian
        increment drawn from ``generator``; ``dt`` (not differentiated) as for
        ``NeuralODE.local_step``, with Hairer's heuristic applied to the drift. Returns
        ``(SDEStepResult, dt)``."""
        alg = self.adaptive_solver
        sde = self.sde
        self.counter.phase = "regularizer"
        try:
            tt = torch.tensor(t, dtype=torch.float64, device=y.device)
            f0, g0 = sde.f(tt, y), sde.g(tt, y)
            if not isinstance(step_size, str):
                dt = float(step_size)
            else:
                dt, _ = initial_step(sde.f, t, y.detach(), f0.detach(), 1.0, 1, self.rtol, self.atol)
            shape = y.shape if self.noise == "diagonal" else (*y.shape[:-1], g0.shape[-1])

            def noise(h: float):
                z = torch.randn(shape, generator=generator, dtype=y.dtype, device=y.device)
                dW = z * h ** 0.5
                if not alg.needs_levy_area:
                    return dW, None
                zh = torch.randn(shape, generator=generator, dtype=y.dtype, device=y.device)
                return dW, h * (0.5 * dW + zh * (h / 12) ** 0.5)

            kw = dict(noise=self.noise, sde_type=self.sde_type, rtol=self.rtol, atol=self.atol)
            if step_size == "controller":
                with torch.no_grad():
                    trial = alg.step(sde.f, sde.g, t, y.detach(), dt, *noise(dt), f0=f0.detach(),
                                     g0=g0.detach(), **kw)
                dt = _propose(dt, float(trial.error_estimate), alg.error_exponent)
            res = alg.step(sde.f, sde.g, t, y, dt, *noise(dt), f0=f0, g0=g0, **kw)
        finally:
            self.counter.phase = "backward"
        return res, dt

    def _brownian_m(self, y0: Tensor, t_span) -> int:
        with torch.no_grad():
            return int(self.diffusion(torch.tensor(t_span[0], dtype=torch.float64), y0).shape[-1])

    def forward(self, y0: Tensor, ts: Sequence[float] | Tensor | None = None, regularizer: Any = None,
                seed: int | None = None) -> Tensor:
        t = _times(ts, self.tspan)
        self.counter.reset()
        for k in self.sde.ngev:
            self.sde.ngev[k] = 0
        self.reg_loss = self.reg_raw = None
        if regularizer is None:
            sol = self.solve(y0, t, (float(t[0]), float(t[-1])), seed=seed)
            self.last_solution = sol
            return sol.ys
        return regularizer.run(self, y0, t, seed=seed)


def _propose(dt: float, error: float, k: float) -> float:
    """The integral controller's next step after an attempt with scaled error ``error``."""
    if not math.isfinite(error):
        return dt * 0.2
    return IController().adapt(ControllerState(), dt, error, k)[1]


class _AdjointSDESolution:
    """What an adjoint SDE solve returns (torchsde reports no statistics or trace)."""

    def __init__(self, ts: Tensor, ys: Tensor):
        self.ts, self.ys, self.trace, self.stats = ts, ys, None, None
