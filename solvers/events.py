"""Events: zero crossings of ``g(t, y(t))`` located on the dense output, with differentiable times.

An ``Event`` names a condition ``g(t, y)``; the solve stops (``terminal=True``) or records the
crossing and goes on. ``EventTracker`` is what the step loop calls after every accepted step:

1. **Detection.** ``g`` is evaluated at every step end (one host sync per step for all events
   together). A crossing is a change between the *non-zero* signs of ``g`` at consecutive step ends,
   or ``g`` reaching exactly zero at a step end (counted in that step, never again in the next one:
   a step that starts on an exact zero detects nothing). ``direction=+1`` keeps crossings where
   ``g`` goes from negative to positive *in the order of integration*, ``-1`` the opposite, ``0``
   both (``scipy.integrate.solve_ivp``'s convention). A condition that is zero at ``t0`` is not an
   event. Two roots inside one step (a graze, or ``g`` touching zero without changing sign) leave
   the signs at the step ends equal and are **missed**, exactly as in scipy; tighten ``rtol`` or
   cap ``dtmax`` when that matters.
2. **Location.** The root of ``phi(t) = g(t, y_h(t))`` on the step's dense output ``y_h`` is found
   with Brent's method (Brent, *Algorithms for Minimization without Derivatives*, 1973, ch. 4; the
   algorithm of scipy's ``brentq``) to ``|t - t_root| <= xtol + 4 eps |t|`` with ``xtol`` the
   event's option (default ``4 eps``), as Hairer, Norsett & Wanner, *Solving ODEs I*, 2nd ed.,
   section II.6 ("dense output, discontinuities, derivatives") recommend: the interpolant is
   accurate to the method's dense-output order, so no extra steps are needed. The reported time is
   the end of the final bracket on the *far* side of the root (``g`` already has its new sign
   there, or is zero), so a solve restarted from the event state does not see the same crossing
   again.
3. **Gradients (implicit function theorem).** At the root ``g(t*, y(t*; theta); theta) = 0``;
   differentiating in ``theta`` (``y`` moves with ``t*``, ``dy/dt = f``):

       dt*/dtheta = -(g_y . dy/dtheta + g_theta) / (g_t + g_y . f(t*, y*)).

   With ``t_d`` the located root (a float, no graph) and ``y_d = y_h(t_d)`` (which carries the graph
   of the solve), the tracker returns

       t* = t_d - (g(t_d, y_d) - sg[g(t_d, y_d)]) / sg[g_t + g_y . f(t_d, y_d)],
       y* = y_d + sg[f(t_d, y_d)] (t* - t_d),

   ``sg`` the stop-gradient. The value of ``t*`` is ``t_d`` and its first derivative is the IFT
   one above (the numerator's derivative is ``g_y . dy_d/dtheta + g_theta`` at fixed ``t_d``);
   ``y*`` has the value ``y_d`` and the total derivative ``dy/dtheta + f dt*/dtheta`` of the state
   at a moving event time. This is the construction of Chen, Amos & Nickel, "Learning
   neural event functions for ordinary differential equations", ICLR 2021 (torchdiffeq's
   ``odeint_event``), applied to the backpropagated dense output instead of an adjoint solve.
   Second derivatives of ``t*`` are not those of the true event time (the denominator is
   detached). A crossing with ``dg/dt = 0`` along the solution (tangential) has no IFT gradient:
   the time is returned detached, with a warning.

Batched states ``(*batch, d)`` share one step size, so a condition returns one scalar for the whole
batch (per-sample event times need one solve per sample).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .stepping.times import time_tensor

_EPS = float(torch.finfo(torch.float64).eps)

__all__ = ["Event", "EventHit", "EventRecord", "EventTracker"]


@dataclass(frozen=True)
class Event:
    """A zero crossing of ``condition(t, y)`` to detect during an ODE solve.

    Args:
        condition: ``g(t, y) -> 0-d tensor``; ``t`` is a 0-d float64 tensor, ``y`` shaped like
            ``y0``. It should be continuous in ``t`` along the solution; its value must be finite.
        terminal: stop the solve at the ``count``-th crossing (earlier ones are recorded only).
        direction: ``+1`` only crossings where ``g`` goes from negative to positive in the order
            of integration, ``-1`` only positive to negative, ``0`` both (scipy's convention).
        count: for a terminal event, the occurrence that stops the solve (scipy's integer
            ``terminal``); ignored when ``terminal=False``.
        xtol: absolute tolerance in ``t`` of the root location, added to ``4 eps |t|``; the
            default (0) means ``4 eps``, the float64 resolution.
        name: an optional label for reports.
    """

    condition: Callable[[Tensor, Tensor], Tensor]
    terminal: bool = True
    direction: int = 0
    count: int = 1
    xtol: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        if not callable(self.condition):
            raise TypeError(f"Event condition must be callable g(t, y), got {type(self.condition).__name__}")
        if not isinstance(self.terminal, bool):
            raise TypeError(f"Event terminal must be a bool, got {self.terminal!r} (use count= for 'after "
                            "N crossings')")
        if isinstance(self.direction, bool) or self.direction not in (-1, 0, 1):
            raise ValueError(f"Event direction must be -1, 0 or +1, got {self.direction!r}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"Event count must be an integer >= 1, got {self.count!r}")
        try:
            xtol = float(self.xtol)
        except (TypeError, ValueError) as err:
            raise TypeError(f"Event xtol must be a number, got {self.xtol!r}") from err
        if not (math.isfinite(xtol) and xtol >= 0):
            raise ValueError(f"Event xtol must be finite and >= 0, got {self.xtol!r}")
        if not isinstance(self.name, str):
            raise TypeError(f"Event name must be a str, got {type(self.name).__name__}")


@dataclass
class EventHit:
    """One located crossing.

    Attributes:
        t: the event time, a 0-d float64 tensor on ``y0``'s device, differentiable with respect to
            anything the solve depends on (implicit function theorem, see the module docs).
        t_float: the same time as a Python float.
        y: the state at ``t`` (shape of ``y0``), differentiable including the motion of ``t``.
        index: position of the event in the ``events`` sequence.
        terminal: whether this hit stopped the solve.
    """

    t: Tensor
    t_float: float
    y: Tensor
    index: int
    terminal: bool


@dataclass
class EventRecord:
    """Every hit of a solve in order of integration.

    Attributes:
        t: event times, float64 ``(n,)`` on ``y0``'s device (stacked from the differentiable hits).
        y: states at the events ``(n, *y0.shape)``.
        index: which event, int64 ``(n,)`` (CPU).
        terminal: whether the hit stopped the solve, bool ``(n,)`` (CPU).
        hits: the ``EventHit`` objects themselves.
    """

    t: Tensor
    y: Tensor
    index: Tensor
    terminal: Tensor
    hits: list[EventHit] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hits)

    def of(self, index: int) -> EventRecord:
        """The hits of event ``index`` only."""
        keep = [h for h in self.hits if h.index == index]
        return _record(keep, self.y.shape[1:], self.y.dtype, self.y.device)


def _record(hits: list[EventHit], shape: torch.Size, dtype: torch.dtype, device: torch.device) -> EventRecord:
    if hits:
        t = torch.stack([h.t for h in hits])
        y = torch.stack([h.y for h in hits])
    else:
        t = torch.zeros((0,), dtype=torch.float64, device=device)
        y = torch.zeros((0, *shape), dtype=dtype, device=device)
    return EventRecord(t=t, y=y, index=torch.tensor([h.index for h in hits], dtype=torch.int64),
                       terminal=torch.tensor([h.terminal for h in hits], dtype=torch.bool), hits=list(hits))


def brent_root(phi: Callable[[float], float], a: float, b: float, fa: float, fb: float,
               xtol: float, rtol: float = 4 * _EPS, maxiter: int = 100) -> tuple[float, float, int]:
    """A root of ``phi`` in the bracket ``[a, b]`` (``fa = phi(a)``, ``fb = phi(b)`` of opposite signs).

    Brent's method (inverse quadratic interpolation, secant, bisection safeguard) as in scipy's
    ``brentq`` (``scipy/optimize/Zeros/brentq.c``). Stops when the bracket is shorter than
    ``xtol + rtol |x|``. Returns ``(x, phi(x), evaluations)`` with ``x`` the end of the final bracket
    on ``b``'s side of the root (``phi(x)`` has ``fb``'s sign or is zero).
    """
    if fa == 0:
        return a, fa, 0
    if fb == 0:
        return b, fb, 0
    if (fa < 0) == (fb < 0):
        raise ValueError("brent_root needs a bracket with a sign change")
    far_negative = fb < 0
    xpre, xcur, fpre, fcur = a, b, fa, fb
    xblk, fblk, spre, scur = 0.0, 0.0, 0.0, 0.0
    nev = 0
    for _ in range(maxiter):
        if fpre != 0 and fcur != 0 and (fpre < 0) != (fcur < 0):
            xblk, fblk = xpre, fpre
            spre = scur = xcur - xpre
        if abs(fblk) < abs(fcur):
            xpre, xcur, xblk = xcur, xblk, xcur
            fpre, fcur, fblk = fcur, fblk, fcur
        delta = (xtol + rtol * abs(xcur)) / 2
        sbis = (xblk - xcur) / 2
        if fcur == 0 or abs(sbis) < delta:
            break
        if abs(spre) > delta and abs(fcur) < abs(fpre):
            if xpre == xblk:  # secant
                stry = -fcur * (xcur - xpre) / (fcur - fpre)
            else:  # inverse quadratic interpolation
                dpre = (fpre - fcur) / (xpre - xcur)
                dblk = (fblk - fcur) / (xblk - xcur)
                stry = -fcur * (fblk * dblk - fpre * dpre) / (dblk * dpre * (fblk - fpre))
            if 2 * abs(stry) < min(abs(spre), 3 * abs(sbis) - delta):
                spre, scur = scur, stry
            else:
                spre = scur = sbis
        else:
            spre = scur = sbis
        xpre, fpre = xcur, fcur
        xcur += scur if abs(scur) > delta else (delta if sbis > 0 else -delta)
        fcur = phi(xcur)
        nev += 1
    if fcur == 0 or (fcur < 0) == far_negative:
        return xcur, fcur, nev
    return xblk, fblk, nev


def _scalar(value: object, i: int, where: str) -> Tensor:
    """The condition's value as a 0-d real tensor, or a clear error."""
    if not isinstance(value, Tensor):
        raise TypeError(f"event {i}: condition must return a tensor, got {type(value).__name__} at {where}")
    if value.numel() != 1:
        raise ValueError(f"event {i}: condition must return a 0-d tensor (one value for the whole state), "
                         f"got shape {tuple(value.shape)} at {where}")
    if value.is_complex() or not value.is_floating_point():
        raise TypeError(f"event {i}: condition must return a real floating tensor, got {value.dtype}")
    return value.reshape(())


class EventTracker:
    """Detects, locates and records the events of one solve; the step loop's side of ``events=``.

    Args:
        events: an ``Event`` or a sequence of them.
        t0: initial time (float).
        y0: initial state.
        direction: ``+1.0`` or ``-1.0``, the direction of integration.

    The loop calls ``check`` after every accepted step and stops when it returns a hit.
    """

    def __init__(self, events: Event | Sequence[Event], t0: float, y0: Tensor, direction: float):
        if isinstance(events, Event):
            events = (events,)
        if isinstance(events, (str, bytes)) or not isinstance(events, Sequence):
            raise TypeError(f"events must be an Event or a sequence of Events, got {type(events).__name__}")
        events = tuple(events)
        if not events:
            raise ValueError("events is empty: pass at least one Event (or leave the option out)")
        for i, ev in enumerate(events):
            if not isinstance(ev, Event):
                raise TypeError(f"events[{i}] must be an Event, got {type(ev).__name__}")
        if not isinstance(y0, Tensor) or not y0.is_floating_point():
            raise TypeError("y0 must be a floating-point tensor")
        t0 = float(t0)
        if not math.isfinite(t0):
            raise ValueError(f"t0 must be finite, got {t0}")
        if direction not in (1.0, -1.0):
            raise ValueError(f"direction must be +1.0 or -1.0, got {direction!r}")
        self.events = events
        self.direction = float(direction)
        self.shape, self.dtype, self.device = y0.shape, y0.dtype, y0.device
        self._t = t0
        g0 = self._values(t0, y0, "(t0, y0)", validate=True)
        # The sign of g at the last step end; 0 means "exactly zero there": no crossing is counted
        # from it (a zero at t0 is not an event, a zero at a step end was counted in that step).
        self._sign = [_sign(v) for v in g0]
        self._g = g0  # the conditions' values at the last step end
        self._occurrences = [0] * len(events)
        self._hits: list[EventHit] = []
        self.terminated: EventHit | None = None
        self.nfe_condition = len(events)  # condition evaluations, for diagnostics
        self.nfe = 0  # vector-field evaluations (one per hit with a gradient): the loop may add them

    # -- evaluation ----------------------------------------------------------------------------
    def _values(self, t: float, y: Tensor, where: str, validate: bool = False) -> list[float]:
        """All conditions at ``(t, y)`` as floats (one host sync for all of them). Every step runs
        this, so after the full check at ``t0`` only the cheap ones remain (a 0-d tensor stays one)."""
        tt = time_tensor(t, self.device)
        with torch.no_grad():
            vals = [ev.condition(tt, y) for ev in self.events]
        for i, v in enumerate(vals):
            if validate or not isinstance(v, Tensor) or v.dim() != 0:
                vals[i] = _scalar(v, i, where)
        if len(vals) == 1:
            out = [vals[0].item()]
        else:
            out = torch.stack([v.to(torch.float64) for v in vals]).tolist()
        for i, v in enumerate(out):
            if not math.isfinite(v):
                raise ValueError(f"event {i}: condition is {v} at t = {t!r} ({where}); it must be finite")
        return out

    def _phi(self, ev: Event, i: int, interp: Callable[[float], Tensor]) -> Callable[[float], float]:
        def phi(t: float) -> float:
            with torch.no_grad():
                v = float(_scalar(ev.condition(time_tensor(t, self.device), interp(t)), i, f"t = {t!r}"))
            if not math.isfinite(v):
                raise ValueError(f"event {i}: condition is {v} at t = {t!r} during root finding")
            return v

        return phi

    # -- the loop's entry point ----------------------------------------------------------------
    def check(self, t_old: float, y_old: Tensor, t_new: float, y_new: Tensor,
              interp: Callable[[float], Tensor], f: Callable[[Tensor, Tensor], Tensor]) -> EventHit | None:
        """Process the accepted step ``t_old -> t_new``; return the earliest terminal hit or ``None``.

        Args:
            t_old, y_old: start of the step (``t_old`` must be the previous call's ``t_new``).
            t_new, y_new: end of the step (``y_new`` the propagated state, on the graph).
            interp: ``interp(t) -> y_h(t)`` for any float ``t`` in the step, the differentiable dense
                output (shape of ``y0``).
            f: the vector field ``f(t, y)``, for the IFT denominator.

        Every crossing in the step up to and including the earliest terminal one is recorded (in
        order of integration; simultaneous ones in event order). After a terminal hit the solve
        must stop: further calls raise ``RuntimeError``.
        """
        if self.terminated is not None:
            raise RuntimeError("a terminal event already stopped this solve at t = "
                               f"{self.terminated.t_float!r}; EventTracker.check must not be called again")
        t_old, t_new = float(t_old), float(t_new)
        if t_old != self._t:
            raise ValueError(f"steps must be contiguous: this step starts at t = {t_old!r}, the previous "
                             f"one ended at t = {self._t!r}")
        if (t_new - t_old) * self.direction <= 0:
            raise ValueError(f"the step {t_old!r} -> {t_new!r} goes against the direction of integration")
        g_new = self._values(t_new, y_new, f"t = {t_new!r}")
        self.nfe_condition += len(self.events)
        found: list[tuple[float, int, Tensor | None]] = []  # (root, event index, state if exact)
        for i, ev in enumerate(self.events):
            s_old, s_new = self._sign[i], _sign(g_new[i])
            if s_old == 0 or s_new == s_old:
                continue
            rising = s_old < 0
            if ev.direction and (ev.direction > 0) != rising:
                continue
            if s_new == 0:  # exactly zero at the step end: the propagated state, not the interpolant
                found.append((t_new, i, y_new))
                continue
            phi = self._phi(ev, i, interp)
            root, _, nev = brent_root(phi, t_old, t_new, self._g[i], g_new[i],
                                      xtol=max(float(ev.xtol), 4 * _EPS))
            self.nfe_condition += nev
            found.append((root, i, y_new if root == t_new else None))
        self._t = t_new
        self._sign = [_sign(v) for v in g_new]
        self._g = g_new
        if not found:
            return None
        found.sort(key=lambda r: (r[0] * self.direction, r[1]))
        stop_at: float | None = None
        first_terminal: EventHit | None = None
        for root, i, y_exact in found:
            if stop_at is not None and root * self.direction > stop_at * self.direction:
                break
            ev = self.events[i]
            self._occurrences[i] += 1
            terminal = ev.terminal and self._occurrences[i] >= ev.count
            hit = self._hit(root, i, terminal, interp if y_exact is None else (lambda _t, y=y_exact: y), f)
            self._hits.append(hit)
            if terminal and first_terminal is None:
                first_terminal, stop_at = hit, root
        if first_terminal is not None:
            self.terminated = first_terminal
        return first_terminal

    def _hit(self, t_d: float, i: int, terminal: bool, interp: Callable[[float], Tensor],
             f: Callable[[Tensor, Tensor], Tensor]) -> EventHit:
        """The hit at the located root ``t_d``, with the IFT graph attached when there is one."""
        cond = self.events[i].condition
        tt = time_tensor(t_d, self.device)
        y_d = interp(t_d)
        t_star, y_star = tt, y_d
        if torch.is_grad_enabled():
            g = _scalar(cond(tt, y_d), i, f"t = {t_d!r}")
            if g.requires_grad:
                with torch.no_grad():
                    fv = f(tt, y_d.detach())
                self.nfe += 1
                denom = self._denominator(cond, t_d, y_d.detach(), fv, i)
                if denom is None:
                    warnings.warn(f"event {i} at t = {t_d!r}: dg/dt along the solution is zero (a tangential "
                                  "crossing); the event time is returned without a gradient", RuntimeWarning,
                                  stacklevel=3)
                else:
                    dt = (g - g.detach()).to(torch.float64) / denom
                    t_star = tt - dt
                    y_star = y_d + fv.detach() * (t_star - tt).to(y_d.dtype)
        return EventHit(t=t_star, t_float=t_d, y=y_star, index=i, terminal=terminal)

    def _denominator(self, cond: Callable[[Tensor, Tensor], Tensor], t_d: float, y_d: Tensor, fv: Tensor,
                     i: int) -> Tensor | None:
        """``dg/dt + dg/dy . f`` at the root (detached, float64), or ``None`` when it vanishes."""
        t_req = time_tensor(t_d, self.device).requires_grad_(True)
        y_req = y_d.detach().requires_grad_(True)
        with torch.enable_grad():
            g = _scalar(cond(t_req, y_req), i, f"t = {t_d!r}")
            if not g.requires_grad:
                return None
            dg_dt, dg_dy = torch.autograd.grad(g, (t_req, y_req), allow_unused=True)
        den = torch.zeros((), dtype=torch.float64, device=self.device)
        if dg_dt is not None:
            den = den + dg_dt.to(torch.float64)
        if dg_dy is not None:
            den = den + (dg_dy * fv).sum().to(torch.float64)
        den = den.detach()
        if not bool(torch.isfinite(den)) or float(den) == 0.0:
            return None
        return den

    # -- result --------------------------------------------------------------------------------
    def results(self) -> EventRecord:
        """Every hit so far, in order of integration."""
        return _record(self._hits, self.shape, self.dtype, self.device)

    @property
    def hits(self) -> list[EventHit]:
        return list(self._hits)


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)
