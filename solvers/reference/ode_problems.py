"""A library of ODE reference problems, each derived and verified in SymPy.

Every problem is built by ``ode_from_sympy``: the exact solution is
found by ``dsolve`` (or stated in closed form) and checked by ``checkodesol`` before use. Builders
are cached; ``problem(name)`` returns one by name, ``PROBLEMS`` lists them all.

=====================  ==============================================  ==============================
name                   ODE                                             exact solution
=====================  ==============================================  ==============================
linear                 y' = -y/2, y(0) = 1, t in [0, 2]                e^{-t/2}
logistic               y' = y (1 - y/2), y(0) = 1/10, t in [0, 5]      2 / (1 + 19 e^{-t})
bernoulli              y' = -y + t y^3, y(0) = 1/2, t in [0, 2]        sqrt(2 / (2t + 1 + 7 e^{2t}))
riccati                y' = 1 + y^2, y(0) = 0, t in [0, 1.2]           tan t
exponential_sine       y' = cos(t) y, y(0) = 1, t in [0, 5]            e^{sin t}
time_nonlinear         y' = -2 t y^2, y(0) = 1, t in [0, 3]            1 / (1 + t^2)
forced_linear          y' = -y + sin t, y(0) = 1, t in [0, 5]          (sin t - cos t + 3 e^{-t}) / 2
harmonic               x' = v, v' = -4 x, (1, 0), t in [0, 5]          x = cos 2t, v = -2 sin 2t
damped_oscillator      x' = v, v' = -4 x - 2/5 v, (1, 0), t in [0, 5]  e^{-t/5} (cos wt + sin(wt)/(5w))
forced_oscillator      x' = v, v' = -x + cos 2t, (1, 0), t in [0, 6]   (4 cos t - cos 2t) / 3
spiral                 x' = -x/2 + v, v' = -x - v/2, (1, 0), [0, 5]    e^{-t/2} (cos t, -sin t)
linear3                y' = A y, eigenvalues -1, -2, -3, t in [0, 2]   sum of three exponentials
stiff_smooth           y' = -1000 (y - cos t) - sin t, y(0) = 2        cos t + e^{-1000 t}
=====================  ==============================================  ==============================
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import sympy as sp
import torch

from ..problem import ODEProblem
from .builder import ode_from_sympy

t = sp.Symbol("t", real=True)
_y, _x, _v = sp.Function("y"), sp.Function("x"), sp.Function("v")
_y1, _y2, _y3 = sp.Function("y1"), sp.Function("y2"), sp.Function("y3")
R = sp.Rational


def linear(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """Scalar linear decay ``y' = -y/2``: the simplest problem with a smooth exact solution."""
    return ode_from_sympy([-_y(t) / 2], [_y], t, [1], (0.0, 2.0), name="linear", dtype=dtype)


def logistic(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """Logistic growth ``y' = y (1 - y/K)`` with K = 2: nonlinear, saturating."""
    return ode_from_sympy([_y(t) * (1 - _y(t) / 2)], [_y], t, [R(1, 10)], (0.0, 5.0), name="logistic",
                          dtype=dtype)


def bernoulli(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """Bernoulli equation ``y' = -y + t y^3`` (n = 3), solved by the substitution u = y^-2."""
    return ode_from_sympy([-_y(t) + t * _y(t) ** 3], [_y], t, [R(1, 2)], (0.0, 2.0), name="bernoulli",
                          dtype=dtype)


def riccati(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """Riccati equation ``y' = 1 + y^2`` with closed form tan t (grows fast near pi/2)."""
    return ode_from_sympy([1 + _y(t) ** 2], [_y], t, [0], (0.0, 1.2), name="riccati", dtype=dtype)


def exponential_sine(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """Linear, time-dependent rate ``y' = cos(t) y``: solution e^{sin t} oscillates."""
    return ode_from_sympy([sp.cos(t) * _y(t)], [_y], t, [1], (0.0, 5.0), name="exponential_sine",
                          dtype=dtype)


def time_nonlinear(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """Time-dependent nonlinear ``y' = -2 t y^2``, solution 1 / (1 + t^2)."""
    return ode_from_sympy([-2 * t * _y(t) ** 2], [_y], t, [1], (0.0, 3.0), name="time_nonlinear", dtype=dtype)


def forced_linear(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """Forced linear ``y' = -y + sin t``: a transient plus a periodic steady state."""
    return ode_from_sympy([-_y(t) + sp.sin(t)], [_y], t, [1], (0.0, 5.0), name="forced_linear", dtype=dtype)


def harmonic(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """Harmonic oscillator ``x'' = -omega^2 x`` with omega = 2, as a first-order system."""
    return ode_from_sympy([_v(t), -4 * _x(t)], [_x, _v], t, [1, 0], (0.0, 5.0), name="harmonic", dtype=dtype)


def damped_oscillator(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """Damped oscillator ``x'' + 2 zeta omega x' + omega^2 x = 0``, omega = 2, zeta = 0.1."""
    return ode_from_sympy([_v(t), -4 * _x(t) - R(2, 5) * _v(t)], [_x, _v], t, [1, 0], (0.0, 5.0),
                          name="damped_oscillator", dtype=dtype)


def forced_oscillator(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """Undamped oscillator driven off resonance, ``x'' + x = cos 2t``."""
    return ode_from_sympy([_v(t), -_x(t) + sp.cos(2 * t)], [_x, _v], t, [1, 0], (0.0, 6.0),
                          name="forced_oscillator", dtype=dtype)


def spiral(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """Damped rotation ``x' = -x/2 + v, v' = -x - v/2`` (eigenvalues -1/2 +- i)."""
    return ode_from_sympy([-_x(t) / 2 + _v(t), -_x(t) - _v(t) / 2], [_x, _v], t, [1, 0], (0.0, 5.0),
                          name="spiral", dtype=dtype)


def linear3(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """3x3 linear system ``y' = A y``, A = [[-1, 1, 0], [0, -2, 1], [0, 0, -3]] (distinct eigenvalues)."""
    rhs = [-_y1(t) + _y2(t), -2 * _y2(t) + _y3(t), -3 * _y3(t)]
    return ode_from_sympy(rhs, [_y1, _y2, _y3], t, [1, 1, 1], (0.0, 2.0), name="linear3", dtype=dtype)


def stiff_smooth(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """Prothero-Robinson type ``y' = -1000 (y - cos t) - sin t``, y(0) = 2: the solution
    ``cos t + e^{-1000 t}`` is smooth after a short transient, but explicit steps stay bounded by
    stability (|dt| <~ stability_size / 1000) for the whole span."""
    return ode_from_sympy([-1000 * (_y(t) - sp.cos(t)) - sp.sin(t)], [_y], t, [2], (0.0, 1.0),
                          solution=[sp.cos(t) + sp.exp(-1000 * t)], name="stiff_smooth", dtype=dtype)


_BUILDERS: dict[str, Callable[..., ODEProblem]] = {
    fn.__name__: fn for fn in (linear, logistic, bernoulli, riccati, exponential_sine, time_nonlinear,
                               forced_linear, harmonic, damped_oscillator, forced_oscillator, spiral, linear3,
                               stiff_smooth)
}

#: Names of every reference ODE problem.
PROBLEMS: tuple[str, ...] = tuple(_BUILDERS)

#: The non-stiff problems used by the convergence-order table.
NONSTIFF: tuple[str, ...] = tuple(n for n in PROBLEMS if n != "stiff_smooth")


@cache
def problem(name: str, dtype: torch.dtype = torch.float64) -> ODEProblem:
    """The reference problem ``name`` (built once, then cached)."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown reference problem {name!r}; available: {', '.join(PROBLEMS)}")
    return _BUILDERS[name](dtype)
