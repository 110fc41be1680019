"""The DETEST non-stiff problem set (Hull, Enright, Fellen & Sedgwick 1972), classes A-E.

T. E. Hull, W. H. Enright, B. M. Fellen, A. E. Sedgwick, "Comparing numerical methods for ordinary
differential equations", SIAM J. Numer. Anal. 9(4):603-637 (1972); the same problems are used by
Enright & Pryce's DETEST packages (ACM TOMS 13(1), 1987). Every problem runs over ``t in [0, 20]``.

=====  ================================================================  ======================
name   problem                                                           reference at t = 20
=====  ================================================================  ======================
A1     y' = -y, y(0) = 1                                                 exact e^{-t}
A2     y' = -y^3 / 2, y(0) = 1                                           exact (1 + t)^{-1/2}
A3     y' = y cos t, y(0) = 1                                            exact e^{sin t}
A4     y' = y (1 - y/20) / 4, y(0) = 1                                   exact logistic
A5     y' = (y - t) / (y + t), y(0) = 4                                  DOP853
B1     Lotka-Volterra y1' = 2 (y1 - y1 y2), y2' = -(y2 - y1 y2), (1, 3)  DOP853
B2     linear chemical reaction, 3 equations, (2, 0, 1)                  exact (matrix exponential)
B3     nonlinear chemical reaction y1' = -y1, y2' = y1 - y2^2, y3' = y2^2  DOP853
B4     y1' = -y2 - y1 y3 / r, y2' = y1 - y2 y3 / r, y3' = y1 / r, (3, 0, 0)  DOP853
B5     Euler's rigid body y' = (y2 y3, -y1 y3, -0.51 y1 y2), (0, 1, 1)   DOP853
C1     10 equations, y1' = -y1, yi' = y_{i-1} - y_i, y10' = y9            exact (matrix exponential)
C2     10 equations, yi' = (i-1) y_{i-1} - i y_i, y10' = 9 y9             exact (matrix exponential)
C3     10 equations, tridiagonal (1, -2, 1)                              exact (matrix exponential)
C4     51 equations, tridiagonal (1, -2, 1)                              exact (matrix exponential)
C5     five outer planets around the sun (30 equations)                  DOP853
D1-D5  Kepler orbit with eccentricity 0.1, 0.3, 0.5, 0.7, 0.9            exact (Kepler's equation)
E1     Bessel y'' + y'/(t+1) + (1 - 1/(4 (t+1)^2)) y = 0                 exact J_{1/2}(t + 1)
E2     van der Pol y'' = (1 - y^2) y' - y, (2, 0)                        DOP853
E3     Duffing y'' = y^3/6 - y + 2 sin(2.78535 t), (0, 0)                DOP853
E4     y'' = 0.032 - 0.4 y'^2, (30, 0)                                   exact (log cosh)
E5     y'' = sqrt(1 + y'^2) / (25 - t), (0, 0)                           DOP853
=====  ================================================================  ======================

``detest_problems`` returns them as ``ODEProblem`` (float64 states of
shape ``(d,)``; vector fields also accept a batch ``(*batch, d)``); those with a closed form carry
it as ``analytic``. ``reference_end_value`` gives ``y(20)``: the exact value where known,
otherwise scipy's DOP853 at ``rtol = atol = 1e-13`` computed at run time (nothing is downloaded).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import numpy as np
import torch
from torch import Tensor

from ..problem import ODEProblem

T_END = 20.0
CLASSES = ("A", "B", "C", "D", "E")


def _stack(*cols: Tensor) -> Tensor:
    return torch.stack(cols, dim=-1)


# -- class A: single equations -----------------------------------------------------------------
def _a() -> dict[str, tuple[Callable, list[float], Callable | None]]:
    return {
        "A1": (lambda t, y: -y, [1.0], lambda t: torch.exp(-t)[None]),
        "A2": (lambda t, y: -0.5 * y**3, [1.0], lambda t: (1 + t).rsqrt()[None]),
        "A3": (lambda t, y: y * torch.cos(t), [1.0], lambda t: torch.exp(torch.sin(t))[None]),
        "A4": (lambda t, y: 0.25 * y * (1 - y / 20), [1.0],
               lambda t: (20 / (1 + 19 * torch.exp(-t / 4)))[None]),
        "A5": (lambda t, y: (y - t) / (y + t), [4.0], None),
    }


# -- class B: small systems ----------------------------------------------------------------------
def _b1(t: Tensor, y: Tensor) -> Tensor:
    y1, y2 = y[..., 0], y[..., 1]
    return _stack(2 * (y1 - y1 * y2), -(y2 - y1 * y2))


_B2 = [[-1.0, 1.0, 0.0], [1.0, -2.0, 1.0], [0.0, 1.0, -1.0]]


def _b3(t: Tensor, y: Tensor) -> Tensor:
    y1, y2 = y[..., 0], y[..., 1]
    return _stack(-y1, y1 - y2**2, y2**2)


def _b4(t: Tensor, y: Tensor) -> Tensor:
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    r = torch.sqrt(y1**2 + y2**2)
    return _stack(-y2 - y1 * y3 / r, y1 - y2 * y3 / r, y1 / r)


def _b5(t: Tensor, y: Tensor) -> Tensor:
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    return _stack(y2 * y3, -y1 * y3, -0.51 * y1 * y2)


# -- class C: moderate systems (C1-C4 linear) ------------------------------------------------------
def _c_matrix(name: str) -> np.ndarray:
    if name == "C1":
        m = np.diag(np.r_[-np.ones(9), 0.0]) + np.diag(np.ones(9), -1)
    elif name == "C2":
        m = np.diag(np.r_[-np.arange(1.0, 10.0), 0.0]) + np.diag(np.arange(1.0, 10.0), -1)
    else:
        n = 10 if name == "C3" else 51
        m = -2 * np.eye(n) + np.diag(np.ones(n - 1), 1) + np.diag(np.ones(n - 1), -1)
    return m


# C5: the five outer planets (Jupiter ... Pluto) about the sun and the inner planets, positions in
# AU; gravitational constant, masses and initial data as given by Hull et al. (1972).
_C5_K2 = 2.95912208286
_C5_M0 = 1.00000597682
_C5_M = (0.000954786104043, 0.000285583733151, 0.0000437273164546, 0.0000517759138449,
         0.00000277777777778)
_C5_X0 = ((3.42947415189, 3.35386959711, 1.35494901715),
          (6.64145542550, 5.97156957878, 2.18231499728),
          (11.2630437207, 14.6952576794, 6.27960525067),
          (-30.1552268759, 1.65699966404, 1.43785752721),
          (-21.1238353380, 28.4465098142, 15.3882659679))
_C5_V0 = ((-0.557160570446, 0.505696783289, 0.230578543901),
          (-0.415570776342, 0.365682722812, 0.169143213293),
          (-0.325325669158, 0.189706021964, 0.0877265322780),
          (-0.0240476254170, -0.287659532608, -0.117219543175),
          (-0.176860753121, -0.216393453025, -0.0148647893090))


def _c5(t: Tensor, y: Tensor) -> Tensor:
    """y = (positions (5, 3), velocities (5, 3)) flattened; Newtonian gravity in heliocentric form."""
    x = y[..., :15].unflatten(-1, (5, 3))
    v = y[..., 15:]
    m = torch.as_tensor(_C5_M, dtype=y.dtype, device=y.device)
    r3 = x.pow(2).sum(-1).pow(1.5)  # (..., 5)
    diff = x[..., None, :, :] - x[..., :, None, :]  # [j, k] = x_k - x_j
    d3 = diff.pow(2).sum(-1).pow(1.5)
    eye = torch.eye(5, dtype=torch.bool, device=y.device)
    d3 = torch.where(eye, torch.ones_like(d3), d3)
    pair = diff / d3[..., None] - (x / r3[..., None])[..., None, :, :]
    pair = torch.where(eye[..., None], torch.zeros_like(pair), pair)
    acc = -(_C5_M0 + m)[:, None] * x / r3[..., None] + (m[:, None] * pair).sum(-2)
    return torch.cat([v, (_C5_K2 * acc).flatten(-2)], dim=-1)


# -- class D: orbit equations ------------------------------------------------------------------------
def _orbit(t: Tensor, y: Tensor) -> Tensor:
    y1, y2 = y[..., 0], y[..., 1]
    r3 = (y1**2 + y2**2).pow(1.5)
    return _stack(y[..., 2], y[..., 3], -y1 / r3, -y2 / r3)


def _kepler(ecc: float) -> Callable[[Tensor], Tensor]:
    """Exact orbit from perihelion (period 2 pi): Kepler's equation E - e sin E = t by Newton."""

    def analytic(t: Tensor) -> Tensor:
        tt = float(t)
        big_e = tt if ecc < 0.8 else math.pi
        for _ in range(100):
            step = (big_e - ecc * math.sin(big_e) - tt) / (1 - ecc * math.cos(big_e))
            big_e -= step
            if abs(step) < 1e-16 * max(1.0, abs(big_e)):
                break
        s, c, w = math.sin(big_e), math.cos(big_e), math.sqrt(1 - ecc**2)
        den = 1 - ecc * c
        return torch.tensor([c - ecc, w * s, -s / den, w * c / den], dtype=torch.float64)

    return analytic


# -- class E: second-order equations ------------------------------------------------------------------
def _e1(t: Tensor, y: Tensor) -> Tensor:
    x = t + 1
    return _stack(y[..., 1], -(y[..., 1] / x + y[..., 0] * (1 - 0.25 / x**2)))


def _e1_exact(t: Tensor) -> Tensor:
    x = (t + 1).to(torch.float64)
    k = math.sqrt(2 / math.pi)
    return torch.stack([k * torch.sin(x) / x.sqrt(),
                        k * (torch.cos(x) / x.sqrt() - 0.5 * torch.sin(x) / x**1.5)])


def _e2(t: Tensor, y: Tensor) -> Tensor:
    y1, y2 = y[..., 0], y[..., 1]
    return _stack(y2, (1 - y1**2) * y2 - y1)


def _e3(t: Tensor, y: Tensor) -> Tensor:
    y1 = y[..., 0]
    return _stack(y[..., 1], y1**3 / 6 - y1 + 2 * torch.sin(2.78535 * t))


def _e4(t: Tensor, y: Tensor) -> Tensor:
    return _stack(y[..., 1], 0.032 - 0.4 * y[..., 1] ** 2)


def _e4_exact(t: Tensor) -> Tensor:
    w = math.sqrt(0.032 * 0.4)
    tt = t.to(torch.float64)
    return torch.stack([30 + torch.log(torch.cosh(w * tt)) / 0.4,
                        math.sqrt(0.032 / 0.4) * torch.tanh(w * tt)])


def _e5(t: Tensor, y: Tensor) -> Tensor:
    return _stack(y[..., 1], torch.sqrt(1 + y[..., 1] ** 2) / (25 - t))


def _linear(mat: np.ndarray) -> tuple[Callable, Callable]:
    m = torch.as_tensor(mat, dtype=torch.float64)

    def f(t: Tensor, y: Tensor) -> Tensor:
        return y @ m.to(y.dtype).T

    def exact_from(y0: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda t: torch.linalg.matrix_exp(m * float(t)) @ y0.to(torch.float64)

    return f, exact_from


def _build(dtype: torch.dtype) -> dict[str, ODEProblem]:
    out: dict[str, ODEProblem] = {}

    def add(name: str, f: Callable, y0, exact: Callable | None) -> None:
        y = torch.as_tensor(y0, dtype=dtype)
        out[name] = ODEProblem(f, y, (0.0, T_END), analytic=exact, name=name)

    for name, (f, y0, exact) in _a().items():
        add(name, f, y0, exact)
    add("B1", _b1, [1.0, 3.0], None)
    f, ex = _linear(np.asarray(_B2))
    add("B2", f, [2.0, 0.0, 1.0], ex(torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)))
    add("B3", _b3, [1.0, 0.0, 0.0], None)
    add("B4", _b4, [3.0, 0.0, 0.0], None)
    add("B5", _b5, [0.0, 1.0, 1.0], None)
    for name in ("C1", "C2", "C3", "C4"):
        mat = _c_matrix(name)
        y0 = torch.zeros(mat.shape[0], dtype=torch.float64)
        y0[0] = 1.0
        f, ex = _linear(mat)
        add(name, f, y0, ex(y0))
    add("C5", _c5, [c for row in _C5_X0 for c in row] + [c for row in _C5_V0 for c in row], None)
    for i, ecc in enumerate((0.1, 0.3, 0.5, 0.7, 0.9), start=1):
        add(f"D{i}", _orbit, [1 - ecc, 0.0, 0.0, math.sqrt((1 + ecc) / (1 - ecc))], _kepler(ecc))
    add("E1", _e1, _e1_exact(torch.tensor(0.0, dtype=torch.float64)).tolist(), _e1_exact)
    add("E2", _e2, [2.0, 0.0], None)
    add("E3", _e3, [0.0, 0.0], None)
    add("E4", _e4, [30.0, 0.0], _e4_exact)
    add("E5", _e5, [0.0, 0.0], None)
    return out


@cache
def _problems(dtype: torch.dtype) -> dict[str, ODEProblem]:
    return _build(dtype)


def detest_problems(dtype: torch.dtype = torch.float64) -> dict[str, ODEProblem]:
    """All 25 DETEST non-stiff problems by name (``"A1"`` ... ``"E5"``), in order."""
    return dict(_problems(dtype))


def detest_problem(name: str, dtype: torch.dtype = torch.float64) -> ODEProblem:
    """One DETEST problem by name."""
    probs = _problems(dtype)
    if name not in probs:
        raise ValueError(f"unknown DETEST problem {name!r}; choose from {', '.join(probs)}")
    return probs[name]


def scipy_rhs(problem: ODEProblem) -> Callable[[float, np.ndarray], np.ndarray]:
    """The problem's vector field as a NumPy function ``f(t, y)`` for ``scipy.integrate.solve_ivp``."""

    def f(t: float, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return problem.f(torch.tensor(t, dtype=torch.float64), torch.from_numpy(y)).numpy()

    return f


@cache
def _reference(name: str) -> tuple[tuple[float, ...], str]:
    problem = detest_problem(name)
    if problem.analytic is not None:
        with torch.no_grad():
            value = problem.analytic(torch.tensor(problem.t1, dtype=torch.float64))
        return tuple(float(v) for v in value.reshape(-1)), "exact"
    from scipy.integrate import solve_ivp

    sol = solve_ivp(scipy_rhs(problem), problem.tspan, problem.y0.double().numpy(), method="DOP853",
                    rtol=1e-13, atol=1e-13)
    if not sol.success:
        raise RuntimeError(f"DETEST {name}: the DOP853 reference solve failed: {sol.message}")
    return tuple(float(v) for v in sol.y[:, -1]), "DOP853 rtol=atol=1e-13"


def reference_end_value(name: str) -> tuple[Tensor, str]:
    """``y(20)`` of problem ``name`` (float64) and where it comes from (``"exact"`` or DOP853)."""
    value, source = _reference(name)
    return torch.tensor(value, dtype=torch.float64), source
