"""Verner 6(5): order 6 with an embedded order-5 estimate, 8 stages.

Source: J. H. Verner, "Explicit Runge-Kutta methods with estimates of the local truncation error",
SIAM J. Numer. Anal. 15(4):772-790 (1978); the pair implemented in DVERK (Hull, Enright, Jackson
1976). Dense output is the cubic Hermite interpolant (order 3), so values between steps are less
accurate than the steps themselves.
"""

from __future__ import annotations

from .runge_kutta import ExplicitRungeKutta
from .tableau import ButcherTableau

_B = (3 / 40, 0.0, 875 / 2244, 23 / 72, 264 / 1955, 0.0, 125 / 11592, 43 / 616)
_B_HAT = (13 / 160, 0.0, 2375 / 5984, 5 / 16, 12 / 85, 3 / 44, 0.0, 0.0)

_VERN6 = ButcherTableau(
    a=(
        (0, 0, 0, 0, 0, 0, 0, 0),
        (1 / 6, 0, 0, 0, 0, 0, 0, 0),
        (4 / 75, 16 / 75, 0, 0, 0, 0, 0, 0),
        (5 / 6, -8 / 3, 5 / 2, 0, 0, 0, 0, 0),
        (-165 / 64, 55 / 6, -425 / 64, 85 / 96, 0, 0, 0, 0),
        (12 / 5, -8, 4015 / 612, -11 / 36, 88 / 255, 0, 0, 0),
        (-8263 / 15000, 124 / 75, -643 / 680, -81 / 250, 2484 / 10625, 0, 0, 0),
        (3501 / 1720, -300 / 43, 297275 / 52632, -319 / 2322, 24068 / 84065, 0, 3850 / 26703, 0),
    ),
    b=_B,
    c=(0.0, 1 / 6, 4 / 15, 2 / 3, 5 / 6, 1.0, 1 / 15, 1.0),
    order=6,
    e=tuple(b - bh for b, bh in zip(_B, _B_HAT)),
    embedded_order=5,
    name="Verner65",
)


class Verner65(ExplicitRungeKutta):
    """Verner's 6(5) pair (DVERK), 8 stages, cubic Hermite dense output."""

    tableau = _VERN6
