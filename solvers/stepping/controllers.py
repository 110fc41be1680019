"""Step-size controllers.

A controller sees the scaled error estimate ``E`` of an attempted step (accept when ``E <= 1``) and
proposes the next step size. The update is plain float arithmetic: the step size is never
differentiated (the error estimate itself is, in the trace).

Choosing one:

* ``IController`` (``dt_new = dt * safety * E^(-1/k)``, ``k`` = embedded order + 1) is the
  textbook rule and what torchdiffeq and diffrax use by default; it is our default too. On smooth
  non-stiff problems it reaches a given accuracy with the fewest evaluations, but its step sizes
  can oscillate (with rejections) when the step is limited by stability rather than accuracy.
* ``PIController`` (Gustafsson; Hairer & Wanner II, section IV.2) damps that oscillation by
  also using the previous accepted error, at the price of growing the step more slowly. Each method
  ships recommended ``(beta1, beta2)`` used when they are left unset (Tsit5: 0.7/5 and 0.4/5, as
  OrdinaryDiffEq; Dopri5: Hairer's 0.17 and 0.04).
* ``PIDController`` (Soderlind, ACM TOMS 29, 2003) adds a derivative term. Practical
  ``(pcoeff, icoeff)`` pairs: (0.4, 0.3) and (0.3, 0.3) for smooth non-stiff problems, (0.2, 0.4) when
  steps are often stability limited, (0.1, 0.3) for SDEs; ``(0, 1, 0)`` is the I controller.
* ``ConstantStepSize`` is what ``dt=`` selects: every step accepted.

Tolerances and the first step belong to the controller. Every controller takes keyword-only
``rtol`` / ``atol``; ``solve(..., rtol=, atol=)`` sets them for one solve (passing both ways is an
error); where neither says, ``DEFAULT_TOLERANCES`` for the problem kind applies. The starting
step of an adaptive solve is ``Controller.initial_step`` (Hairer's heuristic) unless ``dt0=``
is given.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .times import time_tensor


@dataclass
class ControllerState:
    """Memory a controller keeps between steps of one solve."""

    prev_error: float = 1.0
    prev_prev_error: float = 1.0


DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "ode": (1e-6, 1e-9), "sde": (1e-3, 1e-6), "neural_ode": (1e-3, 1e-4), "neural_sde": (1e-2, 1e-3),
    "stable_sde": (1e-2, 1e-2)}
"""Default ``(rtol, atol)`` of every time-stepping solve, by use: the one place they are set.

* ``"ode"`` 1e-6 / 1e-9: ``solve`` of an ODE (our methods and ``TorchDiffEq``); near float64
  reference accuracy at moderate cost. The atol is tighter than rtol since states are often O(1)
  and a 1e-6 atol would dominate near zero.
* ``"sde"`` 1e-3 / 1e-6: ``solve`` of an SDE with an adaptive method (strong order 0.5-1.5: a
  tighter tolerance buys little against the Monte Carlo error).
* ``"neural_ode"`` 1e-3 / 1e-4: ``nde.NeuralODE`` training (Pal et al. 2021/2023 train at 1e-3
  / 1e-4 and below; the gradient noise of SGD dwarfs the solver error there).
* ``"neural_sde"`` 1e-2 / 1e-3: ``nde.NeuralSDE`` training with an adaptive method.
* ``"stable_sde"`` 1e-2 / 1e-2: the stable neural SDE classifiers (Oh et al. 2024) when given an
  adaptive method (their default is fixed-step Euler-Maruyama, where tolerances do not apply).
"""


def default_tolerances(kind: str, rtol: float | None = None,
                       atol: float | None = None) -> tuple[float, float]:
    """``(rtol, atol)``: the given values, ``DEFAULT_TOLERANCES[kind]`` where ``None``."""
    d_rtol, d_atol = DEFAULT_TOLERANCES[kind]
    return (d_rtol if rtol is None else rtol), (d_atol if atol is None else atol)


@dataclass(frozen=True, kw_only=True)
class Controller:
    """Base class: ``adapt(state, dt, error, k) -> (accept, dt_next)``; ``k`` = embedded order + 1.

    Args:
        rtol, atol: the tolerances of the scaled error estimate (keyword-only; ``None``: the
            solve's options, else ``DEFAULT_TOLERANCES``).
    """

    rtol: float | None = None
    atol: float | None = None

    def new_state(self) -> ControllerState:
        return ControllerState()

    def tolerances(self, options: dict, kind: str) -> tuple[float, float]:
        """``(rtol, atol)`` for one solve: ``solve``'s options, else the controller's own, else the
        defaults of ``kind``. Validation of the values is the caller's (``checks.step_options``)."""
        out = []
        for name, default in zip(("rtol", "atol"), DEFAULT_TOLERANCES[kind]):
            mine, given = getattr(self, name), options.get(name)
            if mine is not None and given is not None:
                raise ValueError(f"{name} was passed both to solve ({given!r}) and to the controller "
                                 f"({mine!r}): pass it once")
            out.append(given if given is not None else (mine if mine is not None else default))
        return out[0], out[1]

    def initial_step(self, f, t0: float, y0: Tensor, f0: Tensor, direction: float, order: int,
                     rtol: float, atol: float) -> tuple[float, int]:
        """The first step of an adaptive solve: Hairer's heuristic (``initial_step``)."""
        return initial_step(f, t0, y0, f0, direction, order, rtol, atol)

    def adapt(self, state: ControllerState, dt: float, error: float, k: int) -> tuple[bool, float]:
        raise NotImplementedError

    def adapt_tensor(self, memory: tuple[Tensor, Tensor], dt: Tensor, error: Tensor,
                     k: float) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """``adapt`` on tensors, for the sync-free loop (``solvers.stepping.device_loop``): ``dt``
        and ``error`` are float64 tensors of one shape (one entry per independently stepped batch
        row, or a single entry), ``memory`` the two previous accepted errors (ones at the start).
        Returns ``(accept, dt_next, memory)``, every branch taken with ``torch.where`` so that no
        value is read on the host. Must equal ``adapt`` entry by entry."""
        raise NotImplementedError(f"{type(self).__name__} has no tensor rule: it cannot drive a sync-free "
                                  "solve")


@dataclass(frozen=True)
class ConstantStepSize(Controller):
    """Accept every step and keep the step size (fixed-step integration)."""

    def adapt(self, state: ControllerState, dt: float, error: float, k: int) -> tuple[bool, float]:
        return True, dt

    def adapt_tensor(self, memory, dt, error, k):
        return torch.ones_like(dt, dtype=torch.bool), dt, memory


def _check_factors(safety: float, factormin: float, factormax: float) -> None:
    if not 0 < safety <= 1:
        raise ValueError(f"safety must be in (0, 1], got {safety}")
    if not 0 < factormin < 1 < factormax:
        raise ValueError(f"need 0 < factormin < 1 < factormax, got {factormin}, {factormax}")


@dataclass(frozen=True)
class IController(Controller):
    """Integral control: ``dt_new = dt * clamp(safety * E^(-1/k), factormin, factormax)``.

    Args:
        safety: safety factor (0.9).
        factormin, factormax: bounds of the step-size ratio (0.2, 10).
        exponent_order: ``k`` in the exponent; ``None`` uses embedded order + 1.
        shrink_on_accept: if ``False`` (torchdiffeq's behaviour) an accepted step never shrinks
            the next one.
    """

    safety: float = 0.9
    factormin: float = 0.2
    factormax: float = 10.0
    exponent_order: int | None = None
    shrink_on_accept: bool = True

    def __post_init__(self) -> None:
        _check_factors(self.safety, self.factormin, self.factormax)

    def adapt(self, state: ControllerState, dt: float, error: float, k: int) -> tuple[bool, float]:
        k = self.exponent_order or k
        accept = error <= 1.0
        if error == 0.0:
            return True, dt * self.factormax
        lo = 1.0 if (accept and not self.shrink_on_accept) else self.factormin
        factor = min(self.factormax, max(lo, self.safety * error ** (-1.0 / k)))
        return accept, dt * factor

    def adapt_tensor(self, memory, dt, error, k):
        k = self.exponent_order or k
        accept = error <= 1.0
        # error = 0 gives inf here, clipped to factormax: the host rule's special case.
        factor = torch.clamp(self.safety * error.pow(-1.0 / k), self.factormin, self.factormax)
        if not self.shrink_on_accept:  # an accepted step never shrinks the next
            factor = torch.where(accept, factor.clamp(min=1.0), factor)
        return accept, dt * factor, memory


@dataclass(frozen=True)
class PIController(Controller):
    """Proportional-integral control in Hairer's form (as in DOPRI5 and OrdinaryDiffEq).

    ``q = clamp(E^beta1 / E_prev^beta2 / gamma, 1/qmax, 1/qmin)``, ``dt_new = dt / q``; on reject
    only the ``E^beta1`` term is used and the step is not allowed to grow. ``E_prev`` is the error of
    the last accepted step (floored at 1e-4).

    Args:
        beta1, beta2: ``None`` takes the method's recommendation (``0.7/p``, ``0.4/p`` by default).
        gamma: safety factor (0.9). qmin, qmax: bounds of the step-size ratio (0.2, 10).
    """

    beta1: float | None = None
    beta2: float | None = None
    gamma: float = 0.9
    qmin: float = 0.2
    qmax: float = 10.0

    def __post_init__(self) -> None:
        _check_factors(self.gamma, self.qmin, self.qmax)

    def with_defaults(self, beta1: float, beta2: float) -> PIController:
        return dataclasses.replace(self, beta1=self.beta1 if self.beta1 is not None else beta1,
                                   beta2=self.beta2 if self.beta2 is not None else beta2)

    def adapt(self, state: ControllerState, dt: float, error: float, k: int) -> tuple[bool, float]:
        beta1 = self.beta1 if self.beta1 is not None else 0.7 / k
        beta2 = self.beta2 if self.beta2 is not None else 0.4 / k
        q11 = error ** beta1
        if error <= 1.0:
            q = q11 / state.prev_error ** beta2 / self.gamma
            q = min(1.0 / self.qmin, max(1.0 / self.qmax, q))
            state.prev_error = max(error, 1e-4)
            return True, dt / q
        return False, dt / min(1.0 / self.qmin, q11 / self.gamma)

    def adapt_tensor(self, memory, dt, error, k):
        beta1 = self.beta1 if self.beta1 is not None else 0.7 / k
        beta2 = self.beta2 if self.beta2 is not None else 0.4 / k
        prev, prev_prev = memory
        q11 = error.pow(beta1)
        accept = error <= 1.0
        q_acc = torch.clamp(q11 / prev.pow(beta2) / self.gamma, 1.0 / self.qmax, 1.0 / self.qmin)
        q_rej = torch.clamp(q11 / self.gamma, max=1.0 / self.qmin)
        prev = torch.where(accept, error.clamp(min=1e-4), prev)
        return accept, dt / torch.where(accept, q_acc, q_rej), (prev, prev_prev)


@dataclass(frozen=True)
class PIDController(Controller):
    """PID control (Soderlind 2003) in the coefficient form diffrax documents.

    ``factor = safety * E_n^(-b1) * E_{n-1}^(-b2) * E_{n-2}^(-b3)`` with
    ``b1 = (p + i + d)/k``, ``b2 = -(p + 2d)/k``, ``b3 = d/k`` and ``k`` = embedded order + 1, clipped
    to ``[factormin, factormax]``; a rejected step uses ``E_n`` alone and never grows.
    """

    pcoeff: float = 0.4
    icoeff: float = 0.3
    dcoeff: float = 0.0
    safety: float = 0.9
    factormin: float = 0.2
    factormax: float = 10.0

    def __post_init__(self) -> None:
        _check_factors(self.safety, self.factormin, self.factormax)
        if self.pcoeff + self.icoeff + self.dcoeff <= 0:
            raise ValueError("pcoeff + icoeff + dcoeff must be positive")

    def adapt(self, state: ControllerState, dt: float, error: float, k: int) -> tuple[bool, float]:
        e = max(error, 1e-10)
        b1 = (self.pcoeff + self.icoeff + self.dcoeff) / k
        if error > 1.0:
            factor = max(self.factormin, min(1.0, self.safety * e ** (-b1)))
            return False, dt * factor
        b2 = -(self.pcoeff + 2 * self.dcoeff) / k
        b3 = self.dcoeff / k
        factor = self.safety * e ** (-b1) * state.prev_error ** (-b2) * state.prev_prev_error ** (-b3)
        factor = min(self.factormax, max(self.factormin, factor)) if math.isfinite(factor) else self.factormax
        state.prev_prev_error, state.prev_error = state.prev_error, e
        return True, dt * factor

    def adapt_tensor(self, memory, dt, error, k):
        prev, prev_prev = memory
        e = error.clamp(min=1e-10)
        b1 = (self.pcoeff + self.icoeff + self.dcoeff) / k
        b2 = -(self.pcoeff + 2 * self.dcoeff) / k
        b3 = self.dcoeff / k
        accept = error <= 1.0
        f_rej = torch.clamp(self.safety * e.pow(-b1), self.factormin, 1.0)
        f_acc = self.safety * e.pow(-b1) * prev.pow(-b2) * prev_prev.pow(-b3)
        f_acc = torch.where(torch.isfinite(f_acc), torch.clamp(f_acc, self.factormin, self.factormax),
                            self.factormax)
        new = (torch.where(accept, e, prev), torch.where(accept, prev, prev_prev))
        return accept, dt * torch.where(accept, f_acc, f_rej), new


def initial_step(f, t0: float, y0: Tensor, f0: Tensor, direction: float, order: int, rtol: float,
                 atol: float) -> tuple[float, int]:
    """Hairer, Norsett & Wanner I, section II.4: a first step from two evaluations of f.

    Returns ``(|dt0|, nfe used)`` (one evaluation beyond ``f0``).
    """
    with torch.no_grad():
        if y0.dtype in (torch.float16, torch.bfloat16):
            # Norms of half-precision states overflow (65504) long before the state does: measure
            # in float64, step in the state's own dtype.
            f_low, low = f, y0.dtype
            y0, f0 = y0.double(), f0.double()

            def f(t, y):
                return f_low(t, y.to(low)).double()
        scale = y0.abs().mul(rtol).add(atol)
        d0 = float(torch.linalg.vector_norm(y0 / scale)) / math.sqrt(y0.numel())
        d1 = float(torch.linalg.vector_norm(f0 / scale)) / math.sqrt(y0.numel())
        h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
        if not (math.isfinite(h0) and h0 > 0):
            # f(t0, y0) overflowed the state's dtype: no step size to propose (the loop ends UNSTABLE).
            return math.nan, 0
        y1 = y0 + (direction * h0) * f0
        f1 = f(time_tensor(t0 + direction * h0, y0.device), y1)
        d2 = float(torch.linalg.vector_norm((f1 - f0) / scale)) / math.sqrt(y0.numel()) / h0
        dmax = max(d1, d2)
        if not math.isfinite(dmax):
            return math.nan, 1
        h1 = max(1e-6, h0 * 1e-3) if dmax <= 1e-15 else (0.01 / dmax) ** (1.0 / (order + 1))
    return min(100 * h0, h1), 1
