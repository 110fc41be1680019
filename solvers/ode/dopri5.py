"""Dormand-Prince 5(4): order 5 with an embedded order-4 estimate, 7 stages, FSAL.

Source: J. R. Dormand and P. J. Prince, "A family of embedded Runge-Kutta formulae", J. Comp.
Appl. Math. 6:19-26 (1980). Dense output: L. F. Shampine, "Some practical Runge-Kutta formulas",
Math. Comp. 46:135-150 (1986): the midpoint weights below, fitted by a quartic through
``y_n, y_{n+1}, f_n, f_{n+1}, y_{n+1/2}`` (order 4). PI coefficients from Hairer's DOPRI5 code
(beta = 0.04, 0.2 - 0.75 beta = 0.17).
"""

from __future__ import annotations

from .runge_kutta import ExplicitRungeKutta
from .tableau import ButcherTableau

_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
# The embedded 4th-order weights used by Shampine's and torchdiffeq's implementations (a member of
# the same family as Hairer's 5179/57600 row; it checks the order-4 conditions below).
_B_HAT = (1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60)

_DOPRI5 = ButcherTableau(
    a=(
        (0, 0, 0, 0, 0, 0, 0),
        (1 / 5, 0, 0, 0, 0, 0, 0),
        (3 / 40, 9 / 40, 0, 0, 0, 0, 0),
        (44 / 45, -56 / 15, 32 / 9, 0, 0, 0, 0),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0, 0, 0),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0, 0),
        (35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0),
    ),
    b=_B,
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    order=5,
    e=tuple(b - bh for b, bh in zip(_B, _B_HAT)),
    embedded_order=4,
    fsal=True,
    dense="hermite_mid",
    mid=(6025192743 / 30085553152 / 2, 0.0, 51252292925 / 65400821598 / 2, -2691868925 / 45128329728 / 2,
         187940372067 / 1594534317056 / 2, -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2),
    name="Dopri5",
)


class Dopri5(ExplicitRungeKutta):
    """Dormand-Prince 5(4) with Shampine's order-4 dense output."""

    tableau = _DOPRI5
    pi_coefficients = (0.17, 0.04)
