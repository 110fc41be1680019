"""Stiff ODE reference problems, with analytic Jacobians and high-accuracy end values.

Every vector field is written in torch: vectorised over a batch ``(*batch, d)`` (rows independent),
free of in-place writes and ``.item()``, so it runs under autograd and ``torch.func`` (``jacrev``,
``jvp``, ``vmap``). Each registered problem also has an analytic Jacobian ``jac(t, y)`` of shape
``(*batch, d, d)`` (``stiff_jacobian(name)``), so solvers can be tested with a user-supplied ``jac``.

==============  ==  ==================  ==========================================================
name            d   t in                problem (source)
==============  ==  ==================  ==========================================================
robertson       3   [0, 1e5]            Robertson's chemical reaction, HW II IV.1 eq. (1.4)
vdp_1e3         2   [0, 300]            van der Pol, unscaled, mu = 1e3, y0 = (2, 0)
vdpol           2   [0, 2]              van der Pol, scaled (HW II IV.1 (1.5')), eps = 1e-6 (mu = 1e3),
                                        y0 = (2, 0): the Test Set's ``vdpol``
hires           8   [0, 321.8122]       HIRES plant physiology, HW II IV.10; Test Set ``hires``
orego           3   [0, 360]            Oregonator, HW II IV.10; Test Set ``orego``
pollution       20  [0, 60]             POLLU air pollution, 25 reactions, Verwer (1994); Test Set
e5              4   [0, 1e13]           E5 (stiff DETEST), HW II IV.10; Test Set ``e5``
stiff_linear    3   [0, 2]              y' = A (y - p(t)) + p'(t), eig(A) = -1, -100, -1e4, exact
==============  ==  ==================  ==========================================================

HW II: E. Hairer and G. Wanner, *Solving Ordinary Differential Equations II. Stiff and
Differential-Algebraic Problems*, 2nd ed., Springer (1996). Test Set: F. Mazzia and C. Magherini
(earlier releases with F. Iavernaro), *Test Set for Initial Value Problem Solvers*, release 2.4,
University of Bari (2008), whose Fortran files (``rober.f``, ``vdpol.f``, ``hires.f``, ``orego.f``,
``pollu.f``, ``e5.f``) give the equations, Jacobians and reference values used here.

The equations
-------------

* Robertson: ``y1' = -k1 y1 + k3 y2 y3``, ``y2' = k1 y1 - k3 y2 y3 - k2 y2^2``, ``y3' = k2 y2^2``,
  ``k1 = 0.04, k2 = 3e7, k3 = 1e4``, ``y0 = (1, 0, 0)``. ``y1 + y2 + y3 = 1`` is conserved;
  ``y2 <= 3.65e-5``, so ``atol`` must be well below that (``STIFF_ATOL``).
* van der Pol, unscaled (``van_der_pol``): ``y1' = y2``, ``y2' = mu (1 - y1^2) y2 - y1``. The
  relaxation period is about ``(3 - 2 ln 2) mu``; with ``mu = 1e3`` the first jump comes near
  ``t = 807``, so ``vdp_1e3`` on ``[0, 300]`` follows the slow manifold only (stiff, no jump).
  ``van_der_pol_batch`` gives each row of a ``(B, 2)`` state its own ``mu``.
* van der Pol, scaled (``vdpol_scaled``, HW's VDPOL): ``y1' = y2``,
  ``y2' = ((1 - y1^2) y2 - y1) / eps``; time is scaled by ``mu`` and ``eps = 1 / mu^2``. The default
  start ``(2, -0.66)`` lies near the slow manifold; the Test Set's ``vdpol`` (``eps = 1e-6``, ``(2, 0)``,
  ``t1 = 2``, registered as ``vdpol``) starts off it, with an initial layer of width ``~eps``. Over
  ``[0, 2]`` the solution jumps once (the scaled period is about 1.614). ``eps = 1e-12`` (mu = 1e6)
  is beyond a float64 reference: scipy's Radau at ``rtol = 1e-12`` stops in the first jump ("required
  step size is less than spacing between numbers"), so it is not registered.
* HIRES: ``y1' = -1.71 y1 + 0.43 y2 + 8.32 y3 + 0.0007``, ``y2' = 1.71 y1 - 8.75 y2``,
  ``y3' = -10.03 y3 + 0.43 y4 + 0.035 y5``, ``y4' = 8.32 y2 + 1.71 y3 - 1.12 y4``,
  ``y5' = -1.745 y5 + 0.43 (y6 + y7)``,
  ``y6' = -280 y6 y8 + 0.69 y4 + 1.71 y5 - 0.43 y6 + 0.69 y7``, ``y7' = 280 y6 y8 - 1.81 y7``,
  ``y8' = -y7'``; ``y0 = (1, 0, 0, 0, 0, 0, 0, 0.0057)``.
* OREGO: ``y1' = s (y2 + y1 (1 - q y1 - y2))``, ``y2' = (y3 - (1 + y1) y2) / s``,
  ``y3' = w (y1 - y3)``, ``s = 77.27, q = 8.375e-6, w = 0.161``, ``y0 = (1, 2, 3)``. ``y2``
  reaches about ``1.8e3`` and ``y1`` about ``1.2e5``.
* POLLU (J. G. Verwer, "Gauss-Seidel iteration for stiff ODEs from chemical kinetics", SIAM J. Sci.
  Comput. 15(5):1243-1259, 1994): 20 species, 25 mass-action reactions ``r_k = k_k prod(reactants)``,
  ``y' = sum_k r_k (products_k - reactants_k)``; the reactions and rate constants are the table
  ``POLLU_REACTIONS`` (as in the Test Set's ``pollu.f``). ``y0`` is zero except ``NO = 0.2``,
  ``O3 = 0.04``, ``HCHO = 0.1``, ``CO = 0.3``, ``ALD = 0.01``, ``SO2 = 0.007``. ``O1D`` stays near
  ``4e-18``.
* E5: ``y1' = -A y1 - B y1 y3``, ``y2' = A y1 - M C y2 y3``, ``y4' = B y1 y3 - C y4``,
  ``y3' = y2' - y4'``, ``A = 7.89e-10, B = 1.1e7, C = 1.13e3, M = 1e6``, ``y0 = (1.76e-3, 0, 0, 0)``.
  Values fall to ``1e-22`` (``y2, y3``) and ``1e-291`` (``y1``): HW use ``atol = 1.7e-24``
  (``STIFF_ATOL["e5"]``); with a default ``atol`` the answer is noise. ``y3 - y2 + y4`` is a linear
  invariant (zero); in float64 it holds only to about ``1e-25`` absolute (rounding while ``y2, y4``
  were near their peak ``1.4e-10``), so ``y2`` and ``y3`` at ``t = 1e13`` are determined only to
  about ``1e-3`` relative (their sum to ``1e-7``): the Test Set's values and ours differ by ``3e-4``
  in each.
* stiff_linear: ``y' = A (y - p(t)) + p'(t)`` with ``A = S diag(-1, -100, -1e4) S^-1`` (integer
  entries, ``S = [[1, 1, 0], [1, 2, 1], [0, 1, 2]]``, ``det S = 1``; ``A`` is far from normal) and
  ``p(t) = (cos t, sin 2t, e^{-t/2})``, so the forcing ``g(t) = p' - A p`` depends on ``t``. The
  exact solution, verified by SymPy, is ``y = p(t) + S diag(e^{-t}, e^{-100 t}, e^{-1e4 t}) c`` with
  ``c = (1, 1/2, 0)``: the ``-1e4`` mode is not excited, so the solution is smooth on the scale of
  ``dt >= 1e-3`` and fixed-step order tests of implicit methods at ``dt`` in ``[1e-3, 1e-2]`` are
  meaningful (the stiff mode may show order reduction toward the stage order, as in Prothero &
  Robinson, Math. Comp. 28, 1974), while explicit methods stay limited to ``dt <~ 3e-4``.
  (The scalar Prothero-Robinson problem is ``stiff_smooth`` in ``ode_problems``.)
* 2-D Brusselator (``brusselator_2d``, not in the registry): the reaction-diffusion benchmark of
  DifferentialEquations.jl / SciMLBenchmarks, ``u_t = 1 + u^2 v - 4.4 u + alpha Lap u + f(x, y, t)``,
  ``v_t = 3.4 u - u^2 v + alpha Lap v`` on ``[0, 1]^2`` with periodic boundaries, the grid
  ``linspace(0, 1, n)`` in each direction (``dx = 1/(n - 1)``, as there) and the 5-point Laplacian;
  ``f = 5`` where ``(x - 0.3)^2 + (y - 0.6)^2 <= 0.1^2`` and ``t >= 1.1``, else 0;
  ``u0 = 22 (y (1 - y))^1.5``, ``v0 = 27 (x (1 - x))^1.5``, ``t in [0, 11.5]``. The forcing
  switches on at ``t = 1.1``: the vector field is discontinuous in time there (stop and restart, or
  use ``tspan = (0, 1)`` in tests). The state has shape ``(2, n, n)`` (``d = 2 n^2``; ``n = 71``
  gives ``d > 1e4``); it is meant for matrix-free solvers, so there is no dense Jacobian, but
  ``brusselator_jvp`` gives ``J v`` analytically.

References
----------

``stiff_reference(name)`` returns ``y(t1)`` in float64 and its source: ``"exact"`` for the SymPy
problem, else scipy's Radau (``rtol = 1e-12``, a small per-problem ``atol``, the analytic Jacobian),
computed at run time (nothing is downloaded) and cached in the process and on disk, in
``$SCIML_SOLVERS_CACHE/stiff_references.json`` (default ``$XDG_CACHE_HOME/sciml-solvers`` or
``~/.cache/sciml-solvers``), keyed by name, ``REFERENCE_VERSION`` and the scipy version. A corrupt
cache file is ignored and rewritten. ``TESTSET_REFERENCES`` holds the Test Set's published end values
(RADAU5 at ``rtol = atol = 1.1e-18``) that the scipy references are checked against.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import sympy as sp
import torch
from torch import Tensor

from ..problem import ODEProblem
from .builder import ode_from_sympy

__all__ = ["STIFF_PROBLEMS", "STIFF_ATOL", "TESTSET_REFERENCES", "POLLU_SPECIES", "POLLU_REACTIONS",
           "REFERENCE_VERSION", "PublishedReference", "stiff_problem", "stiff_jacobian", "stiff_reference",
           "reference_cache_path", "radau_end_value", "robertson", "robertson_jac", "van_der_pol",
           "van_der_pol_jac", "vdpol_scaled", "vdpol_scaled_jac", "van_der_pol_batch",
           "van_der_pol_batch_jac", "hires", "hires_jac", "orego", "orego_jac", "pollution",
           "pollution_jac", "e5", "e5_jac", "stiff_linear", "stiff_linear_jac", "STIFF_LINEAR_A",
           "brusselator_2d", "brusselator_jvp"]

Jacobian = Callable[[Tensor, Tensor], Tensor]
Array = Tensor | np.ndarray


def _cols(y: Array) -> tuple:
    """The components ``y[..., i]``; a NumPy ``y`` (fast path of the scipy reference solves) stays NumPy."""
    return y.unbind(-1) if isinstance(y, Tensor) else tuple(np.moveaxis(y, -1, 0))


def _stack(*cols: Array) -> Array:
    return torch.stack(cols, dim=-1) if isinstance(cols[0], Tensor) else np.stack(cols, axis=-1)


def _numpy_ok(f: Callable) -> Callable:
    """Mark a vector field that also evaluates NumPy float64 states (same formulas, no torch overhead)."""
    f.accepts_numpy = True  # type: ignore[attr-defined]
    return f


def _matrix(rows: Sequence[Sequence[Tensor | float]], like: Tensor) -> Tensor:
    """A ``(*batch, m, n)`` matrix from entries that are tensors shaped like ``like`` or numbers."""

    def entry(v: Tensor | float) -> Tensor:
        return v.expand(like.shape) if isinstance(v, Tensor) else torch.full_like(like, v)

    return torch.stack([torch.stack([entry(v) for v in row], dim=-1) for row in rows], dim=-2)


# -- Robertson -----------------------------------------------------------------------------------
ROBERTSON_K = (0.04, 3e7, 1e4)


@_numpy_ok
def _robertson_f(t: Tensor, y: Tensor) -> Tensor:
    k1, k2, k3 = ROBERTSON_K
    y1, y2, y3 = _cols(y)
    a, b, c = k1 * y1, k3 * y2 * y3, k2 * y2**2
    return _stack(b - a, a - b - c, c)


def robertson_jac(t: Tensor, y: Tensor) -> Tensor:
    """Analytic Jacobian of Robertson's problem, ``(*batch, 3, 3)``."""
    k1, k2, k3 = ROBERTSON_K
    y1, y2, y3 = _cols(y)
    return _matrix([[-k1, k3 * y3, k3 * y2],
                    [k1, -k3 * y3 - 2 * k2 * y2, -k3 * y2],
                    [0.0, 2 * k2 * y2, 0.0]], y1)


def robertson(tspan: tuple[float, float] = (0.0, 1e5), dtype: torch.dtype = torch.float64) -> ODEProblem:
    """Robertson's chemical kinetics (HW II, IV.1 eq. (1.4)), ``y0 = (1, 0, 0)``."""
    return ODEProblem(_robertson_f, torch.tensor([1.0, 0.0, 0.0], dtype=dtype), tspan, name="robertson")


# -- van der Pol -------------------------------------------------------------------------------------
def _vdp_f(mu: float | Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    def f(t: Tensor, y: Tensor) -> Tensor:
        y1, y2 = _cols(y)
        m = mu.to(y) if isinstance(mu, Tensor) else mu
        return _stack(y2, m * (1 - y1**2) * y2 - y1)

    return f if isinstance(mu, Tensor) else _numpy_ok(f)


def _vdp_jac(mu: float | Tensor) -> Jacobian:
    def jac(t: Tensor, y: Tensor) -> Tensor:
        y1, y2 = _cols(y)
        m = mu.to(y) if isinstance(mu, Tensor) else mu
        return _matrix([[0.0, 1.0], [-2 * m * y1 * y2 - 1, m * (1 - y1**2)]], y1)

    return jac


def van_der_pol(mu: float = 1e3, tspan: tuple[float, float] = (0.0, 300.0),
                dtype: torch.dtype = torch.float64) -> ODEProblem:
    """Unscaled van der Pol ``y1' = y2, y2' = mu (1 - y1^2) y2 - y1``, ``y0 = (2, 0)``."""
    return ODEProblem(_vdp_f(float(mu)), torch.tensor([2.0, 0.0], dtype=dtype), tspan,
                      name=f"van_der_pol(mu={mu:g})")


def van_der_pol_jac(mu: float = 1e3) -> Jacobian:
    """Analytic Jacobian ``(*batch, 2, 2)`` of ``van_der_pol(mu)``."""
    return _vdp_jac(float(mu))


def _vdpol_scaled_f(eps: float) -> Callable[[Tensor, Tensor], Tensor]:
    def f(t: Tensor, y: Tensor) -> Tensor:
        y1, y2 = _cols(y)
        return _stack(y2, ((1 - y1**2) * y2 - y1) / eps)

    return _numpy_ok(f)


def vdpol_scaled(eps: float = 1e-6, tspan: tuple[float, float] = (0.0, 2.0),
                 y0: tuple[float, float] = (2.0, -0.66), dtype: torch.dtype = torch.float64) -> ODEProblem:
    """HW's VDPOL ``y1' = y2, y2' = ((1 - y1^2) y2 - y1) / eps`` (HW II, IV.1 (1.5')), ``mu = eps^-1/2``.

    ``y0 = (2, 0)`` with ``eps = 1e-6`` is the Test Set's ``vdpol`` (``TESTSET_REFERENCES["vdpol"]``).
    """
    return ODEProblem(_vdpol_scaled_f(float(eps)), torch.tensor(y0, dtype=dtype), tspan,
                      name=f"vdpol(eps={eps:g})")


def vdpol_scaled_jac(eps: float = 1e-6) -> Jacobian:
    """Analytic Jacobian ``(*batch, 2, 2)`` of ``vdpol_scaled(eps)``."""
    eps = float(eps)

    def jac(t: Tensor, y: Tensor) -> Tensor:
        y1, y2 = _cols(y)
        return _matrix([[0.0, 1.0], [(-2 * y1 * y2 - 1) / eps, (1 - y1**2) / eps]], y1)

    return jac


def _check_mus(mus: Tensor | Sequence[float]) -> Tensor:
    mus = torch.as_tensor(mus, dtype=torch.float64)
    if mus.dim() != 1 or mus.numel() == 0:
        raise ValueError(f"mus must be a non-empty 1-D tensor (one mu per row), got shape {tuple(mus.shape)}")
    return mus


def van_der_pol_batch(mus: Tensor | Sequence[float], tspan: tuple[float, float] = (0.0, 300.0),
                      dtype: torch.dtype = torch.float64) -> ODEProblem:
    """``B`` independent unscaled van der Pol oscillators: state ``(B, 2)``, row ``i`` with ``mus[i]``.

    Every row starts at ``(2, 0)``. The vector field broadcasts ``mus`` over the second-to-last
    dimension, so it also accepts ``(*batch, B, 2)``; ``van_der_pol_batch_jac(mus)`` gives the
    per-row Jacobians ``(B, 2, 2)``. E.g. ``mus = torch.logspace(1, 3, 1024)`` spreads mu over
    ``[10, 1000]``.
    """
    mus = _check_mus(mus)
    y0 = torch.tensor([2.0, 0.0], dtype=dtype).repeat(mus.numel(), 1)
    return ODEProblem(_vdp_f(mus), y0, tspan, name=f"van_der_pol_batch(B={mus.numel()})")


def van_der_pol_batch_jac(mus: Tensor | Sequence[float]) -> Jacobian:
    """Per-row analytic Jacobians ``(*batch, B, 2, 2)`` of ``van_der_pol_batch(mus)``."""
    return _vdp_jac(_check_mus(mus))


# -- HIRES -----------------------------------------------------------------------------------------
@_numpy_ok
def _hires_f(t: Tensor, y: Tensor) -> Tensor:
    y1, y2, y3, y4, y5, y6, y7, y8 = _cols(y)
    r = 280 * y6 * y8
    f7 = r - 1.81 * y7
    return _stack(-1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
                  1.71 * y1 - 8.75 * y2,
                  -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
                  8.32 * y2 + 1.71 * y3 - 1.12 * y4,
                  -1.745 * y5 + 0.43 * (y6 + y7),
                  -r + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
                  f7,
                  -f7)


def hires_jac(t: Tensor, y: Tensor) -> Tensor:
    """Analytic Jacobian of HIRES, ``(*batch, 8, 8)``."""
    y6, y8 = y[..., 5], y[..., 7]
    a, b = 280 * y8, 280 * y6
    z = 0.0
    return _matrix([[-1.71, 0.43, 8.32, z, z, z, z, z],
                    [1.71, -8.75, z, z, z, z, z, z],
                    [z, z, -10.03, 0.43, 0.035, z, z, z],
                    [z, 8.32, 1.71, -1.12, z, z, z, z],
                    [z, z, z, z, -1.745, 0.43, 0.43, z],
                    [z, z, z, 0.69, 1.71, -a - 0.43, 0.69, -b],
                    [z, z, z, z, z, a, -1.81, b],
                    [z, z, z, z, z, -a, 1.81, -b]], y6)


def hires(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """HIRES (HW II, IV.10; Test Set ``hires``), 8 species on ``[0, 321.8122]``."""
    y0 = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0057], dtype=dtype)
    return ODEProblem(_hires_f, y0, (0.0, 321.8122), name="hires")


# -- OREGO ------------------------------------------------------------------------------------------
OREGO_S, OREGO_Q, OREGO_W = 77.27, 8.375e-6, 0.161


@_numpy_ok
def _orego_f(t: Tensor, y: Tensor) -> Tensor:
    s, q, w = OREGO_S, OREGO_Q, OREGO_W
    y1, y2, y3 = _cols(y)
    return _stack(s * (y2 + y1 * (1 - q * y1 - y2)), (y3 - (1 + y1) * y2) / s, w * (y1 - y3))


def orego_jac(t: Tensor, y: Tensor) -> Tensor:
    """Analytic Jacobian of the Oregonator, ``(*batch, 3, 3)``."""
    s, q, w = OREGO_S, OREGO_Q, OREGO_W
    y1, y2, y3 = _cols(y)
    return _matrix([[s * (1 - 2 * q * y1 - y2), s * (1 - y1), 0.0],
                    [-y2 / s, -(1 + y1) / s, 1 / s],
                    [w, 0.0, -w]], y1)


def orego(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """The Oregonator (HW II, IV.10; Test Set ``orego``), ``y0 = (1, 2, 3)`` on ``[0, 360]``."""
    return ODEProblem(_orego_f, torch.tensor([1.0, 2.0, 3.0], dtype=dtype), (0.0, 360.0), name="orego")


# -- POLLU -------------------------------------------------------------------------------------------
#: The 20 species of POLLU, in the order of the state vector (Verwer 1994; Test Set ``pollu.f``).
POLLU_SPECIES: tuple[str, ...] = ("NO2", "NO", "O3P", "O3", "HO2", "OH", "HCHO", "CO", "ALD", "MEO2",
                                  "C2O3", "CO2", "PAN", "CH3O", "HNO3", "O1D", "SO2", "SO4", "NO3",
                                  "N2O5")

#: The 25 reactions of POLLU: (rate constant, reactants, products); rate = k * product of reactants.
POLLU_REACTIONS: tuple[tuple[float, str, str], ...] = (
    (0.35, "NO2", "NO + O3P"),                # r1
    (26.6, "NO + O3", "NO2"),                 # r2
    (1.23e4, "HO2 + NO", "NO2 + OH"),         # r3
    (8.6e-4, "HCHO", "2 HO2 + CO"),           # r4
    (8.2e-4, "HCHO", "CO"),                   # r5
    (1.5e4, "HCHO + OH", "HO2 + CO"),         # r6
    (1.3e-4, "ALD", "MEO2 + HO2 + CO"),       # r7
    (2.4e4, "ALD + OH", "C2O3"),              # r8
    (1.65e4, "C2O3 + NO", "NO2 + MEO2 + CO2"),  # r9
    (9.0e3, "C2O3 + NO2", "PAN"),             # r10
    (2.2e-2, "PAN", "C2O3 + NO2"),            # r11
    (1.2e4, "MEO2 + NO", "CH3O + NO2"),       # r12
    (1.88, "CH3O", "HCHO + HO2"),             # r13
    (1.63e4, "NO2 + OH", "HNO3"),             # r14
    (4.8e6, "O3P", "O3"),                     # r15
    (3.5e-4, "O3", "O1D"),                    # r16
    (1.75e-2, "O3", "O3P"),                   # r17
    (1.0e8, "O1D", "2 OH"),                   # r18
    (4.44e11, "O1D", "O3P"),                  # r19
    (1.24e3, "SO2 + OH", "SO4 + HO2"),        # r20
    (2.1, "NO3", "NO"),                       # r21
    (5.78, "NO3", "NO2 + O3P"),               # r22
    (4.74e-2, "NO2 + O3", "NO3"),             # r23
    (1.78e3, "NO3 + NO2", "N2O5"),            # r24
    (3.12, "N2O5", "NO3 + NO2"),              # r25
)

_POLLU_Y0 = {"NO": 0.2, "O3": 0.04, "HCHO": 0.1, "CO": 0.3, "ALD": 0.01, "SO2": 0.007}


def _species_counts(side: str) -> dict[int, int]:
    counts: dict[int, int] = {}
    for term in side.split("+"):
        parts = term.split()
        n, name = (int(parts[0]), parts[1]) if len(parts) == 2 else (1, parts[0])
        i = POLLU_SPECIES.index(name)
        counts[i] = counts.get(i, 0) + n
    return counts


@cache
def _pollu_tables() -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Rate constants ``(25,)``, stoichiometry ``S (20, 25)``, reactant indices ``ia, ib`` (``ib = 20``
    for a unimolecular reaction: the appended constant 1) and their one-hot rows ``Pa, Pb (25, 20)``."""
    n, m = len(POLLU_SPECIES), len(POLLU_REACTIONS)
    k = torch.tensor([r[0] for r in POLLU_REACTIONS], dtype=torch.float64)
    stoich = torch.zeros(n, m, dtype=torch.float64)
    ia, ib = [], []
    for j, (_, lhs, rhs) in enumerate(POLLU_REACTIONS):
        reactants = [i for i, c in _species_counts(lhs).items() for _ in range(c)]
        if len(reactants) not in (1, 2):
            raise AssertionError(f"POLLU reaction {j + 1} is not uni- or bimolecular")
        ia.append(reactants[0])
        ib.append(reactants[1] if len(reactants) == 2 else n)
        for i in reactants:
            stoich[i, j] -= 1
        for i, c in _species_counts(rhs).items():
            stoich[i, j] += c
    ia_t, ib_t = torch.tensor(ia), torch.tensor(ib)
    eye = torch.eye(n + 1, dtype=torch.float64)
    return k, stoich, ia_t, ib_t, eye[ia_t, :n], eye[ib_t, :n]


def _pollu_rates(y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    k, _, ia, ib, _, _ = _pollu_tables()
    yext = torch.cat([y, torch.ones_like(y[..., :1])], dim=-1)
    ya, yb = yext.index_select(-1, ia.to(y.device)), yext.index_select(-1, ib.to(y.device))
    return k.to(y), ya, yb


@_numpy_ok
def _pollu_f(t: Tensor, y: Tensor) -> Tensor:
    k, stoich, ia, ib, _, _ = _pollu_tables()
    if not isinstance(y, Tensor):  # NumPy fast path for the reference solve
        k, stoich, ia, ib = k.numpy(), stoich.numpy(), ia.numpy(), ib.numpy()
        yext = np.concatenate([y, np.ones_like(y[..., :1])], axis=-1)
        return (k * yext[..., ia] * yext[..., ib]) @ stoich.T
    k, ya, yb = _pollu_rates(y)
    return (k * ya * yb) @ stoich.to(y).T


def pollution_jac(t: Tensor, y: Tensor) -> Tensor:
    """Analytic Jacobian of POLLU, ``(*batch, 20, 20)``: ``S diag(k) d(prod reactants)/dy``."""
    _, stoich, _, _, pa, pb = _pollu_tables()
    k, ya, yb = _pollu_rates(y)
    drate = k[:, None] * (yb[..., :, None] * pa.to(y) + ya[..., :, None] * pb.to(y))  # (*batch, 25, 20)
    return stoich.to(y) @ drate


def pollution(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """POLLU (Verwer 1994; Test Set ``pollu``): 20 species, 25 reactions, on ``[0, 60]``."""
    y0 = torch.tensor([_POLLU_Y0.get(s, 0.0) for s in POLLU_SPECIES], dtype=dtype)
    return ODEProblem(_pollu_f, y0, (0.0, 60.0), name="pollution")


# -- E5 -----------------------------------------------------------------------------------------------
E5_A, E5_B, E5_C, E5_M = 7.89e-10, 1.1e7, 1.13e3, 1e6


@_numpy_ok
def _e5_f(t: Tensor, y: Tensor) -> Tensor:
    y1, y2, y3, y4 = _cols(y)
    p1, p2, p3, p4 = E5_A * y1, E5_B * y1 * y3, E5_M * E5_C * y2 * y3, E5_C * y4
    f2, f4 = p1 - p3, p2 - p4
    return _stack(-p1 - p2, f2, f2 - f4, f4)


def e5_jac(t: Tensor, y: Tensor) -> Tensor:
    """Analytic Jacobian of E5, ``(*batch, 4, 4)``."""
    a, b, c, mc = E5_A, E5_B, E5_C, E5_M * E5_C
    y1, y2, y3, _ = _cols(y)
    return _matrix([[-a - b * y3, 0.0, -b * y1, 0.0],
                    [a, -mc * y3, -mc * y2, 0.0],
                    [a - b * y3, -mc * y3, -b * y1 - mc * y2, c],
                    [b * y3, 0.0, b * y1, -c]], y1)


def e5(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """E5 (HW II, IV.10; Test Set ``e5``) on ``[0, 1e13]``; use ``atol = STIFF_ATOL["e5"]``."""
    return ODEProblem(_e5_f, torch.tensor([1.76e-3, 0.0, 0.0, 0.0], dtype=dtype), (0.0, 1e13), name="e5")


# -- stiff linear system with an exact solution ---------------------------------------------------------
_S = sp.Matrix([[1, 1, 0], [1, 2, 1], [0, 1, 2]])
_LAMBDAS = (-1, -100, -10000)
_A_SYM = _S * sp.diag(*_LAMBDAS) * _S.inv()

#: ``A`` of ``stiff_linear`` (integer entries; eigenvalues -1, -100, -1e4).
STIFF_LINEAR_A: tuple[tuple[int, ...], ...] = tuple(tuple(int(v) for v in _A_SYM.row(i)) for i in range(3))


def stiff_linear(dtype: torch.dtype = torch.float64) -> ODEProblem:
    """``y' = A (y - p(t)) + p'(t)``, eig(A) = -1, -100, -1e4, with a SymPy-verified exact solution."""
    t = sp.Symbol("t", real=True)
    funcs = [sp.Function(f"y{i}") for i in (1, 2, 3)]
    p = sp.Matrix([sp.cos(t), sp.sin(2 * t), sp.exp(-t / 2)])
    c = sp.Matrix([1, sp.Rational(1, 2), 0])
    g = p.diff(t) - _A_SYM * p
    y = sp.Matrix([fn(t) for fn in funcs])
    rhs = _A_SYM * y + g
    solution = p + _S * sp.diag(*[sp.exp(lam * t) for lam in _LAMBDAS]) * c
    y0 = list(solution.subs(t, 0))
    return ode_from_sympy(list(rhs), funcs, t, y0, (0.0, 2.0), solution=list(solution),
                          name="stiff_linear", dtype=dtype)


def stiff_linear_jac(t: Tensor, y: Tensor) -> Tensor:
    """The constant Jacobian ``A`` of ``stiff_linear``, broadcast to ``(*batch, 3, 3)``."""
    a = torch.tensor(STIFF_LINEAR_A, dtype=y.dtype, device=y.device)
    return a.expand(*y.shape[:-1], 3, 3)


# -- 2-D Brusselator --------------------------------------------------------------------------------------
def _laplacian(u: Tensor, inv_dx2: float) -> Tensor:
    """5-point periodic Laplacian over the last two dimensions."""
    return (torch.roll(u, 1, -1) + torch.roll(u, -1, -1) + torch.roll(u, 1, -2) + torch.roll(u, -1, -2)
            - 4 * u) * inv_dx2


def _brusselator_grid(n: int) -> tuple[Tensor, float]:
    if int(n) != n or n < 3:
        raise ValueError(f"brusselator_2d needs n >= 3 grid points per direction, got {n!r}")
    return torch.linspace(0.0, 1.0, int(n), dtype=torch.float64), 1.0 / (int(n) - 1)


def brusselator_2d(n: int = 32, alpha: float = 10.0, tspan: tuple[float, float] = (0.0, 11.5),
                   flat: bool = False, dtype: torch.dtype = torch.float64) -> ODEProblem:
    """The 2-D Brusselator of SciMLBenchmarks, method of lines on an ``n x n`` periodic grid.

    The state has shape ``(2, n, n)`` (``u`` then ``v``, index ``[c, i, j]`` at ``x = x_i, y = y_j``),
    or ``(2 n^2,)`` with ``flat=True`` (the same numbers, flattened, for solvers that want
    ``(*batch, d)``). The vector field accepts extra leading batch dimensions. The forcing switches on at
    ``t = 1.1``: a discontinuity in time.
    """
    x, dx = _brusselator_grid(n)
    inv_dx2 = 1.0 / dx**2
    xx, yy = torch.meshgrid(x, x, indexing="ij")
    disc = (xx - 0.3) ** 2 + (yy - 0.6) ** 2 <= 0.1**2
    alpha = float(alpha)
    shape = (2, int(n), int(n))

    def f(t: Tensor, y: Tensor) -> Tensor:
        s = y.unflatten(-1, shape) if flat else y
        u, v = s[..., 0, :, :], s[..., 1, :, :]
        on = (torch.as_tensor(t) >= 1.1).to(y.dtype)
        forcing = 5.0 * disc.to(device=y.device, dtype=y.dtype) * on
        u2v = u**2 * v
        du = 1.0 + u2v - 4.4 * u + alpha * _laplacian(u, inv_dx2) + forcing
        dv = 3.4 * u - u2v + alpha * _laplacian(v, inv_dx2)
        out = torch.stack([du, dv], dim=-3)
        return out.flatten(-3) if flat else out

    u0 = 22 * (yy * (1 - yy)) ** 1.5
    v0 = 27 * (xx * (1 - xx)) ** 1.5
    y0 = torch.stack([u0, v0]).to(dtype)
    return ODEProblem(f, y0.flatten() if flat else y0, tspan, name=f"brusselator_2d(n={n})")


def brusselator_jvp(t: Tensor, y: Tensor, v: Tensor, alpha: float = 10.0, flat: bool = False) -> Tensor:
    """``J(t, y) v`` of ``brusselator_2d(n, alpha, flat=flat)``, analytically (``n`` read off ``y``;
    pass the problem's ``alpha`` and ``flat``).

    With ``w = (du, dv)``: ``J w = (alpha Lap du + (2 u v - 4.4) du + u^2 dv,
    alpha Lap dv + (3.4 - 2 u v) du - u^2 dv)``. The forcing does not depend on ``y``.
    """
    if flat:
        n = math.isqrt(y.shape[-1] // 2)
        if 2 * n * n != y.shape[-1]:
            raise ValueError(f"a flat Brusselator state has length 2 n^2, got {y.shape[-1]}")
        return brusselator_jvp(t, y.unflatten(-1, (2, n, n)), v.unflatten(-1, (2, n, n)), alpha).flatten(-3)
    _, dx = _brusselator_grid(y.shape[-1])
    inv_dx2 = 1.0 / dx**2
    u, w = y[..., 0, :, :], y[..., 1, :, :]
    du, dw = v[..., 0, :, :], v[..., 1, :, :]
    uw2, u2 = 2 * u * w, u**2
    ju = alpha * _laplacian(du, inv_dx2) + (uw2 - 4.4) * du + u2 * dw
    jw = alpha * _laplacian(dw, inv_dx2) + (3.4 - uw2) * du - u2 * dw
    return torch.stack([ju, jw], dim=-3)


# -- registry ---------------------------------------------------------------------------------------------
_BUILDERS: dict[str, tuple[Callable[[torch.dtype], ODEProblem], Jacobian]] = {
    "robertson": (lambda dtype: robertson(dtype=dtype), robertson_jac),
    "vdp_1e3": (lambda dtype: van_der_pol(1e3, (0.0, 300.0), dtype=dtype).replace(name="vdp_1e3"),
                van_der_pol_jac(1e3)),
    "vdpol": (lambda dtype: vdpol_scaled(1e-6, (0.0, 2.0), y0=(2.0, 0.0), dtype=dtype).replace(name="vdpol"),
              vdpol_scaled_jac(1e-6)),
    "hires": (hires, hires_jac),
    "orego": (orego, orego_jac),
    "pollution": (pollution, pollution_jac),
    "e5": (e5, e5_jac),
    "stiff_linear": (stiff_linear, stiff_linear_jac),
}

#: Names of the registered stiff problems.
STIFF_PROBLEMS: tuple[str, ...] = tuple(_BUILDERS)

#: Recommended absolute tolerances where a default one would be meaningless: E5's values are ~1e-22
#: (HW II, IV.10 use 1.7e-24); Robertson's y2 stays below 3.65e-5 and is ~7e-8 at t = 1e5 (1e-10 is
#: our choice, not the literature's).
STIFF_ATOL: dict[str, float] = {"e5": 1.7e-24, "robertson": 1e-10}


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise KeyError(f"unknown stiff problem {name!r}; available: {', '.join(STIFF_PROBLEMS)}")


@cache
def stiff_problem(name: str, dtype: torch.dtype = torch.float64) -> ODEProblem:
    """The registered stiff problem ``name`` (built once per dtype, then cached)."""
    _check_name(name)
    return _BUILDERS[name][0](dtype)


def stiff_jacobian(name: str) -> Jacobian:
    """The analytic Jacobian ``jac(t, y) -> (*batch, d, d)`` of the registered problem ``name``."""
    _check_name(name)
    return _BUILDERS[name][1]


# -- published reference values ---------------------------------------------------------------------------
class PublishedReference(NamedTuple):
    """A published end value: ``y(t1)`` of the problem (built with ``tspan = (0, t1)``)."""

    t1: float
    y: tuple[float, ...]
    source: str


_TESTSET = "Test Set for IVP Solvers (Mazzia et al., Bari), {}.f: RADAU5, rtol = 1.1e-18, {}"
_CRAY, _ALPHA = "128-bit double precision (Cray C90)", "Alphaserver DS20E"

#: Reference end values of the Test Set for IVP Solvers. ``robertson`` is at ``t1 = 1e11`` (not the
#: default 1e5); the others are at the registered problem's ``t1``.
TESTSET_REFERENCES: dict[str, PublishedReference] = {
    "robertson": PublishedReference(1e11, (0.2083340149701255e-07, 0.8333360770334713e-13,
                                         0.9999999791665050e00), _TESTSET.format("rober", _ALPHA)),
    "vdpol": PublishedReference(2.0, (0.1706167732170483e01, -0.8928097010247975e00),
                              _TESTSET.format("vdpol", _ALPHA)),
    "hires": PublishedReference(321.8122, (0.7371312573325668e-3, 0.1442485726316185e-3,
                                         0.5888729740967575e-4, 0.1175651343283149e-2,
                                         0.2386356198831331e-2, 0.6238968252742796e-2,
                                         0.2849998395185769e-2, 0.2850001604814231e-2),
                              _TESTSET.format("hires", _CRAY)),
    "orego": PublishedReference(360.0, (0.1000814870318523e01, 0.1228178521549917e04,
                                      0.1320554942846706e03), _TESTSET.format("orego", _ALPHA)),
    "pollution": PublishedReference(60.0, (
        0.5646255480022769e-01, 0.1342484130422339e00, 0.4139734331099427e-08, 0.5523140207484359e-02,
        0.2018977262302196e-06, 0.1464541863493966e-06, 0.7784249118997964e-01, 0.3245075353396018e00,
        0.7494013383880406e-02, 0.1622293157301561e-07, 0.1135863833257075e-07, 0.2230505975721359e-02,
        0.2087162882798630e-03, 0.1396921016840158e-04, 0.8964884856898295e-02, 0.4352846369330103e-17,
        0.6899219696263405e-02, 0.1007803037365946e-03, 0.1772146513969984e-05, 0.5682943292316392e-04),
        _TESTSET.format("pollu", _CRAY)),
    "e5": PublishedReference(1e13, (0.1152903278711829e-290, 0.8867655517642120e-22, 0.8854814626268838e-22,
                                  0.0), _TESTSET.format("e5", _ALPHA)),
}


# -- scipy references and their cache ------------------------------------------------------------------------
#: Bump when a problem or the reference settings change: old cache entries are then ignored.
REFERENCE_VERSION = "1"
REFERENCE_RTOL = 1e-12
#: Absolute tolerances of the Radau reference solves, well below each problem's smallest relevant value.
_REFERENCE_ATOL: dict[str, float] = {"robertson": 1e-22, "vdp_1e3": 1e-12, "vdpol": 1e-12, "hires": 1e-18,
                                     "orego": 1e-12, "pollution": 1e-22, "e5": 1e-32}
_CACHE_FILE = "stiff_references.json"


def reference_cache_path() -> Path:
    """The on-disk reference cache: ``$SCIML_SOLVERS_CACHE/stiff_references.json``, by default under
    ``$XDG_CACHE_HOME/sciml-solvers`` or ``~/.cache/sciml-solvers``."""
    root = os.environ.get("SCIML_SOLVERS_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "sciml-solvers")
    return Path(root) / _CACHE_FILE


def radau_end_value(problem: ODEProblem, jac: Jacobian | None = None, *, rtol: float = REFERENCE_RTOL,
                    atol: float = 1e-12) -> Tensor:
    """``y(t1)`` of ``problem`` (state ``(d,)``) by scipy's Radau in float64, with ``jac`` if given."""
    from scipy.integrate import solve_ivp

    def f(t: float, y: np.ndarray) -> np.ndarray:
        if getattr(problem.f, "accepts_numpy", False):
            return problem.f(t, y)
        with torch.no_grad():
            return problem.f(torch.tensor(t, dtype=torch.float64), torch.from_numpy(y)).numpy()

    def jac_np(t: float, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return jac(torch.tensor(t, dtype=torch.float64), torch.from_numpy(y)).numpy()

    if problem.y0.dim() != 1:
        raise ValueError(f"radau_end_value needs a state of shape (d,), got {tuple(problem.y0.shape)}")
    y0 = problem.y0.detach().to(torch.float64).cpu().numpy()
    sol = solve_ivp(f, problem.tspan, y0, method="Radau", rtol=rtol, atol=atol,
                    jac=None if jac is None else jac_np)
    if not sol.success:
        raise RuntimeError(f"{problem.name}: the Radau reference solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1].copy())


def _cache_key(name: str) -> str:
    import scipy

    return f"{name}|v{REFERENCE_VERSION}|scipy-{scipy.__version__}"


def _read_cache(path: Path) -> dict:
    """The cache file's entries; an unreadable, corrupt or malformed file reads as empty."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, not UTF-8, not JSON
        return {}
    return data if isinstance(data, dict) else {}


def _valid_entry(entry: object, d: int) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
        return False
    y = entry.get("y")
    return (isinstance(y, list) and len(y) == d
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in y))


def _write_cache(path: Path, key: str, entry: dict) -> None:
    """Add ``entry`` under ``key``, atomically (temporary file, then ``os.replace``); errors are ignored."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = entry
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:  # a read-only or full cache directory must not break a solve
        pass


def _compute_reference(name: str) -> dict:
    problem = stiff_problem(name)
    atol = _REFERENCE_ATOL[name]
    start = time.perf_counter()
    y = radau_end_value(problem, stiff_jacobian(name), atol=atol)
    seconds = time.perf_counter() - start
    return {"y": [float(v) for v in y], "source": f"scipy Radau rtol={REFERENCE_RTOL:g} atol={atol:g}",
            "seconds": round(seconds, 3)}


@cache
def _reference(name: str) -> tuple[tuple[float, ...], str]:
    problem = stiff_problem(name)
    if problem.analytic is not None:
        with torch.no_grad():
            value = problem.analytic(torch.tensor(problem.t1, dtype=torch.float64))
        return tuple(float(v) for v in value.reshape(-1)), "exact"
    path, key = reference_cache_path(), _cache_key(name)
    entry = _read_cache(path).get(key)
    if not _valid_entry(entry, problem.y0.numel()):
        entry = _compute_reference(name)
        _write_cache(path, key, entry)
    return tuple(float(v) for v in entry["y"]), entry["source"]


def stiff_reference(name: str) -> tuple[Tensor, str]:
    """``y(t1)`` of the registered problem ``name`` (float64) and its source.

    The source is ``"exact"`` (SymPy problems) or ``"scipy Radau rtol=1e-12 atol=..."``. Computed
    once, then cached in the process and in ``reference_cache_path()``.
    """
    _check_name(name)
    value, source = _reference(name)
    return torch.tensor(value, dtype=torch.float64), source


stiff_reference.cache_clear = _reference.cache_clear  # type: ignore[attr-defined]
