"""The classical low-order explicit methods (Hairer, Norsett, Wanner I, section II.1).

Euler (order 1), explicit midpoint, Heun and Ralston (order 2), and the classical fourth-order
Runge-Kutta method. Heun carries Euler as an embedded first-order solution, so it is also a
(cheap, low-accuracy) adaptive method; the others are fixed-step only (``dt=``).
"""

from __future__ import annotations

from .runge_kutta import ExplicitRungeKutta
from .tableau import ButcherTableau

_EULER = ButcherTableau(a=((0.0,),), b=(1.0,), c=(0.0,), order=1, name="Euler")

_MIDPOINT = ButcherTableau(a=((0, 0), (1 / 2, 0)), b=(0.0, 1.0), c=(0.0, 1 / 2), order=2, name="Midpoint")

# Heun's method with forward Euler embedded: e = b - b_hat = (1/2, 1/2) - (1, 0).
_HEUN = ButcherTableau(a=((0, 0), (1.0, 0)), b=(1 / 2, 1 / 2), c=(0.0, 1.0), order=2,
                       e=(-1 / 2, 1 / 2), embedded_order=1, name="Heun")

# Ralston (1962): the second-order two-stage method with minimum error bound.
_RALSTON = ButcherTableau(a=((0, 0), (2 / 3, 0)), b=(1 / 4, 3 / 4), c=(0.0, 2 / 3), order=2, name="Ralston")

_RK4 = ButcherTableau(
    a=((0, 0, 0, 0), (1 / 2, 0, 0, 0), (0, 1 / 2, 0, 0), (0, 0, 1, 0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), c=(0.0, 1 / 2, 1 / 2, 1.0), order=4, name="RK4")


class Euler(ExplicitRungeKutta):
    """Forward Euler, order 1. Fixed step only. No stiffness estimate (one stage)."""

    tableau = _EULER


class Midpoint(ExplicitRungeKutta):
    """Explicit midpoint rule, order 2, fixed step."""

    tableau = _MIDPOINT


class Heun(ExplicitRungeKutta):
    """Heun's method (explicit trapezoid), order 2, with an embedded Euler error estimate."""

    tableau = _HEUN


class Ralston(ExplicitRungeKutta):
    """Ralston's second-order method, fixed step."""

    tableau = _RALSTON


class RK4(ExplicitRungeKutta):
    """The classical fourth-order Runge-Kutta method (Kutta 1901), fixed step."""

    tableau = _RK4
