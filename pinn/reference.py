"""Exact and reference solutions: SymPy for convection(-diffusion), Cole-Hopf for viscous Burgers.

* Convection-diffusion ``u_t + beta u_x = nu u_xx`` on a periodic interval: each Fourier mode
  ``e^{ikx}`` of the initial data translates with speed ``beta`` and decays like ``e^{-nu k^2 t}``, so for
  ``u0 = sin x`` the solution is ``e^{-nu t} sin(x - beta t)``. A Gaussian front ``exp(-(x-c)^2 / (2 s^2))``
  spreads to ``s / s_t exp(-(x - c - beta t)^2 / (2 s_t^2))`` with ``s_t^2 = s^2 + 2 nu t`` (heat
  kernel), summed over periodic images. Both are built as SymPy expressions (tests check them
  symbolically and by autograd).
* Viscous Burgers ``u_t + u u_x = nu u_xx`` by the Cole-Hopf transform (Hopf 1950, Cole 1951):
  ``u = -2 nu phi_x / phi`` with ``phi`` solving the heat equation, so
  ``u(x, t) = int u0(x - eta) phi0(x - eta) G(eta) d eta / int phi0(x - eta) G(eta) d eta`` with
  ``G(eta) = exp(-eta^2 / (4 nu t))`` and ``phi0 = exp(-U0 / (2 nu))``, ``U0' = u0``. Substituting
  ``eta = sqrt(4 nu t) z`` turns both integrals into Gauss-Hermite sums (weight ``e^{-z^2}``); the largest
  exponent is subtracted before ``exp`` (the ratio is unchanged). This is the classical reference of
  Basdevant et al., "Spectral and finite difference solutions of the Burgers equation" (Computers & Fluids
  14, 1986) for Raissi's case ``u0 = -sin(pi x)``, ``nu = 0.01/pi``: ``max |u_x(0, t)| = 152.00516`` at
  ``t = 1.6037/pi``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sympy as sp
import torch
from scipy.special import roots_hermite
from sympy.simplify.fu import TR8
from torch import Tensor

from solvers.symbolic import to_torch

X, T = sp.symbols("x t", real=True)


def trig_modes(u0: sp.Expr) -> list[tuple[sp.Expr, sp.Expr]]:
    """Split ``u0`` into terms that are eigenfunctions of ``d^2/dx^2``: ``[(term, -k^2), ...]``.

    Products such as ``sin(x) cos(x)`` are first rewritten as sums (SymPy's ``TR8``). Raises
    ``ValueError`` when a term is still not an eigenfunction (a Gaussian is not a trigonometric polynomial).
    """
    expr = sp.expand(TR8(sp.expand(u0)))
    out = []
    for term in sp.Add.make_args(expr):
        if not term.has(X):
            out.append((term, sp.Integer(0)))
            continue
        lam = sp.simplify(sp.diff(term, X, 2) / term)
        if lam.has(X):
            raise ValueError(f"the convection-diffusion reference needs u0 as a sum of sin/cos modes; "
                             f"term {term} is not one")
        out.append((term, lam))
    return out


def convection_diffusion_trig(u0: sp.Expr, beta: float, nu: float) -> sp.Expr:
    """Exact solution of ``u_t + beta u_x = nu u_xx`` for a trigonometric polynomial ``u0(x)``."""
    beta_s, nu_s = sp.nsimplify(beta), sp.nsimplify(nu)
    return sp.Add(*[term.subs(X, X - beta_s * T) * sp.exp(nu_s * lam * T) for term, lam in trig_modes(u0)])


def gaussian_heat(center: float, width: float, beta: float, nu: float, shift: sp.Expr = 0) -> sp.Expr:
    """Translating, spreading Gaussian ``(s/s_t) exp(-(x - shift - c - beta t)^2 / (2 s_t^2))``.

    ``s_t^2 = s^2 + 2 nu t``; solves ``u_t + beta u_x = nu u_xx`` on the real line exactly.
    """
    c, s = sp.nsimplify(center), sp.nsimplify(width)
    st2 = s**2 + 2 * sp.nsimplify(nu) * T
    return s / sp.sqrt(st2) * sp.exp(-(X - shift - c - sp.nsimplify(beta) * T) ** 2 / (2 * st2))


def periodic_gaussian_solution(center: float, width: float, beta: float, nu: float,
                               domain: tuple[float, float],
                               images: int = 1) -> Callable[[Tensor, Tensor], Tensor]:
    """Periodic version of ``gaussian_heat``: wrap ``x - beta t`` into the domain, sum periodic images.

    With ``images = 1`` the terms dropped are ``exp(-(3 L / 2)^2 / (2 s_t^2))`` relative to the peak
    (below 1e-60 for ``s = 0.3``, ``nu <= 0.1``, ``L = 2 pi``, ``t <= 1``).
    """
    a, b = domain
    length = b - a
    core = to_torch(gaussian_heat(center, width, 0.0, nu), (X, T))

    def u(x: Tensor, t: Tensor) -> Tensor:
        xi = a + torch.remainder(x - beta * t - a, length)
        return sum(core(xi - n * length, t) for n in range(-images, images + 1))

    return u


def cole_hopf(u0: sp.Expr, nu: float, nodes: int = 200) -> Callable[[Tensor, Tensor], Tensor]:
    """Viscous Burgers solution ``u(x, t)`` on the real line by Cole-Hopf with Gauss-Hermite quadrature.

    ``u0`` is a SymPy expression in ``x`` whose antiderivative SymPy can find. The returned function is
    differentiable in ``x`` and ``t`` (autograd), dtype- and device-agnostic; at ``t = 0`` it returns
    ``u0(x)``. Accuracy: the integrand ``phi0(x - s z) e^{-z^2}`` is sharply peaked when ``nu`` is small;
    200 nodes reproduce Basdevant et al.'s 152.00516 to 6 digits for Raissi's case.
    """
    if nu <= 0:
        raise ValueError(f"Cole-Hopf needs nu > 0, got {nu}")
    y = sp.Symbol("y", real=True)
    big_u0 = sp.integrate(u0.subs(X, y), (y, 0, X))
    log_phi0 = to_torch(sp.simplify(-big_u0 / (2 * sp.nsimplify(nu))), (X,))
    u0_fn = to_torch(u0, (X,))
    z_np, w_np = roots_hermite(nodes)
    keep = w_np > 0  # outermost weights underflow to 0 in float64; they carry nothing
    z_np, logw_np = z_np[keep], np.log(w_np[keep])

    def u(x: Tensor, t: Tensor) -> Tensor:
        x, t = torch.broadcast_tensors(torch.as_tensor(x), torch.as_tensor(t, dtype=x.dtype, device=x.device))
        z = torch.as_tensor(z_np, dtype=x.dtype, device=x.device)
        logw = torch.as_tensor(logw_np, dtype=x.dtype, device=x.device)
        positive = t > 0
        t_safe = torch.where(positive, t, torch.ones_like(t))  # keeps sqrt's gradient finite at t = 0
        s = torch.sqrt(4 * nu * t_safe)
        yq = x.unsqueeze(-1) - s.unsqueeze(-1) * z
        e = log_phi0(yq) + logw
        e = e - e.max(dim=-1, keepdim=True).values.detach()
        p = torch.exp(e)
        val = (p * u0_fn(yq)).sum(-1) / p.sum(-1)
        return torch.where(positive, val, u0_fn(x))

    u.u0 = u0  # type: ignore[attr-defined]
    return u
