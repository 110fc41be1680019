"""Bogacki-Shampine 3(2): order 3 with an embedded order-2 estimate, 4 stages, FSAL.

Source: P. Bogacki and L. F. Shampine, "A 3(2) pair of Runge-Kutta formulas", Appl. Math. Lett.
2(4):321-325 (1989). Used by MATLAB's ode23.
"""

from __future__ import annotations

from .runge_kutta import ExplicitRungeKutta
from .tableau import ButcherTableau

_BOSH3 = ButcherTableau(
    a=((0, 0, 0, 0), (1 / 2, 0, 0, 0), (0, 3 / 4, 0, 0), (2 / 9, 1 / 3, 4 / 9, 0)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    order=3,
    e=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
    embedded_order=2,
    fsal=True,
    name="Bosh3",
)


class Bosh3(ExplicitRungeKutta):
    """Bogacki-Shampine 3(2), FSAL; cubic Hermite dense output (order 3)."""

    tableau = _BOSH3
