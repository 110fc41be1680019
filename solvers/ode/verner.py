"""Verner's Runge-Kutta pairs: 6(5) DVERK, and the "most efficient" 6(5) and 7(6) pairs.

* ``Verner65``: J. H. Verner, "Explicit Runge-Kutta methods with estimates of the local
  truncation error", SIAM J. Numer. Anal. 15(4):772-790 (1978); the pair implemented in DVERK
  (Hull, Enright, Jackson 1976). 8 stages, order 6 with an embedded order-5 estimate.
* ``Vern6``: Verner's "most efficient" 6(5) pair RKV65.IIIXb (9 stages, FSAL).
* ``Vern7``: Verner's "most efficient" 7(6) pair RKV76.IIa (10 stages, not FSAL).

The coefficients of ``Vern6``/``Vern7`` are the correctly rounded float64 values of the rational
coefficients on Verner's page of RK pairs (https://www.sfu.ca/~jverner/), as transcribed in
OrdinaryDiffEq.jl's ``verner_tableaus.jl``; in exact rational arithmetic they satisfy every
rooted-tree order condition up to order 7 (``b``) and 6 (``b_hat``) for ``Vern7``, 6 and 5 for
``Vern6``, and ``tests/test_verner.py`` checks all 85 (resp. 41) conditions numerically.

Dense output of all three is the cubic Hermite interpolant through ``y0, y1, f0, f1`` (order 3):
values between steps are less accurate than the steps themselves (Verner's own higher-order
interpolants need 3-6 extra stages; they are not implemented). Non-FSAL methods spend one extra
evaluation ``f(t1, y1)`` per step when dense output is on (it is reused as the next first stage).
"""

from __future__ import annotations

from typing import ClassVar

from .runge_kutta import ExplicitRungeKutta
from .tableau import ButcherTableau


def _lower(rows: tuple) -> tuple:
    """Pad the rows of a strictly lower-triangular stage matrix with zeros to ``s x s``."""
    s = len(rows)
    return tuple(tuple(row) + (0.0,) * (s - len(row)) for row in rows)

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
    """Verner's 1978 6(5) pair (DVERK), 8 stages, cubic Hermite dense output.

    The tableau is DVERK's, and its weights satisfy every order condition to orders 6 and 5 exactly
    (``tests/test_verner.py``), but the pair's error estimate is weak for local extrapolation: the
    principal error coefficients of the propagated 6th-order weights (2-norm 2.1e-3) are three times
    those of the embedded 5th-order weights (7.0e-4), where Dopri5 has 0.5x, Vern7 0.045x and Vern6
    0.001x. The estimate therefore says little about the error of the solution carried forward, and
    on DETEST the error at t = 20 exceeds the tolerance by a median 40x (class B) to 800x (class D),
    more than Dopri5 at the same NFE (``benchmarks/detest.py``). Prefer ``Vern6`` or
    ``Vern7``; Verner65 is kept for comparison with DVERK.
    """

    tableau = _VERN6


# Vern6: Verner's RKV65.IIIXb "most efficient" pair. The last row of A is b (FSAL).
_V6_A = _lower((
    (),
    (0.06,),
    (0.019239962962962962, 0.07669337037037037),
    (0.035975, 0.0, 0.107925),
    (1.3186834152331484, 0.0, -5.042058063628562, 4.220674648395414),
    (-41.872591664327516, 0.0, 159.4325621631375, -122.11921356501003, 5.531743066200054),
    (-54.430156935316504, 0.0, 207.06725136501848, -158.61081378459, 6.991816585950242,
     -0.018597231062203234),
    (-54.66374178728198, 0.0, 207.95280625538936, -159.2889574744995, 7.018743740796944,
     -0.018338785905045722, -0.0005119484997882099),
    (0.03438957868357036, 0.0, 0.0, 0.2582624555633503, 0.4209371189673537, 4.40539646966931,
     -176.48311902429865, 172.36413340141507),
))
_V6_B = (0.03438957868357036, 0.0, 0.0, 0.2582624555633503, 0.4209371189673537, 4.40539646966931,
    -176.48311902429865, 172.36413340141507, 0.0)
_V6_BH = (0.04301298296577121, 0.0, 0.0, 0.23882842561019763, 0.4493871915553917, 2.2956854086040193,
    -73.02457612433467, 70.96432878226597, 0.03333333333333333)
_V6_C = (0.0, 0.06, 0.09593333333333333, 0.1439, 0.4973, 0.9725, 0.9995, 1.0, 1.0)

_VERN6 = ButcherTableau(
    a=_V6_A,
    b=_V6_B,
    c=_V6_C,
    order=6,
    e=tuple(b - bh for b, bh in zip(_V6_B, _V6_BH)),
    embedded_order=5,
    fsal=True,
    name="Vern6",
)


class Vern6(ExplicitRungeKutta):
    """Verner's "most efficient" 6(5) pair (RKV65.IIIXb), 9 stages, FSAL, cubic Hermite dense output."""

    tableau = _VERN6


# Vern7: Verner's RKV76.IIa "most efficient" pair; stages 9 and 10 are both at t + h.
_V7_A = _lower((
    (),
    (0.005,),
    (-1.07679012345679, 1.185679012345679),
    (0.04083333333333333, 0.0, 0.1225),
    (0.6389139236255726, 0.0, -2.455672638223657, 2.272258714598084),
    (-2.6615773750187572, 0.0, 10.804513886456137, -8.3539146573962, 0.820487594956657),
    (6.067741434696771, 0.0, -24.711273635911084, 20.427517930788895, -1.9061579788166472,
     1.006172249242068),
    (12.054670076253203, 0.0, -49.75478495046899, 41.142888638604674, -4.461760149974004,
     2.042334822239175, -0.09834843665406108),
    (10.138146522881808, 0.0, -42.6411360317175, 35.76384003992257, -4.3480228403929075,
     2.0098622683770357, 0.3487490460338272, -0.27143900510483127),
    (-45.030072034298676, 0.0, 187.3272437654589, -154.02882369350186, 18.56465306347536,
     -7.141809679295079, 1.3088085781613785, 0.0, 0.0),
))
_V7_B = (0.04715561848627222, 0.0, 0.0, 0.25750564298434153, 0.2621665397741262, 0.15216092656738558,
    0.49399691700324844, -0.29430311714032503, 0.0813174723249511, 0.0)
_V7_BH = (0.044608606606341174, 0.0, 0.0, 0.26716403785713727, 0.2201018300177293, 0.2188431703143157,
    0.22898717054112028, 0.0, 0.0, 0.020295184663356284)
_V7_C = (0.0, 0.005, 0.10888888888888888, 0.16333333333333333, 0.4555, 0.6095094489978381, 0.884, 0.925,
    1.0, 1.0)


_VERN7 = ButcherTableau(
    a=_V7_A,
    b=_V7_B,
    c=_V7_C,
    order=7,
    e=tuple(b - bh for b, bh in zip(_V7_B, _V7_BH)),
    embedded_order=6,
    name="Vern7",
)


class Vern7(ExplicitRungeKutta):
    """Verner's "most efficient" 7(6) pair (RKV76.IIa), 10 stages, cubic Hermite dense output."""

    tableau = _VERN7
    #: Order 7 crosses 1e-9..1e-14 within two halvings of dt: measure the order on a quarter-octave
    #: ladder in that window (``solvers.convergence``).
    order_window: ClassVar[dict] = {"ladder": "quarter", "floor": 2e-14, "ceiling": 1e-9, "keep": 5}
