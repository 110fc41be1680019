"""Space-time PDE problems ``w_t + f(x, t, w) w_x = g(x, t, w) w_xx + s(x, t, w)``.

One spatial dimension, ``x`` in ``[a, b]`` (periodic or with Dirichlet boundary values), ``t`` in
``[t0, t1]``, initial data ``w(x, t0) = u0(x)``. ``f`` is the advection speed (convection: ``beta``;
Burgers: ``w``), ``g`` the diffusivity (``nu``), ``s`` a forcing term (manufactured solutions).

The constructors ``convection``, ``convection_diffusion``, ``burgers``,
``burgers_raissi``, ``burgers_moving_shock`` and ``manufactured`` attach an exact or
reference solution (see ``pinn.reference``), the cases of Mojgani, Balajewicz and Hassanzadeh,
"Lagrangian PINNs" (arXiv 2205.02902) and Krishnapriyan et al. (NeurIPS 2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sympy as sp
import torch
from torch import Tensor

from solvers.checks import check_real, check_span
from solvers.symbolic import to_torch

from .reference import T, X, cole_hopf, convection_diffusion_trig, periodic_gaussian_solution

W = sp.Symbol("w", real=True)
Coefficient = Callable[[Tensor, Tensor, Tensor], Tensor]


def fourier_interpolant(values: Tensor, domain: tuple[float, float]) -> Callable[[Tensor], Tensor]:
    """Trigonometric interpolant of samples on the uniform periodic grid ``a + j L / n``, ``j < n``.

    Smooth (so a hard initial condition ``u0(x) + t N`` has exact derivatives) and exact for
    trigonometric polynomials of degree below ``n / 2``.
    """
    if values.ndim != 1 or values.numel() < 2:
        raise ValueError(f"initial data given as samples must be a 1-D tensor of >= 2 values, "
                         f"got shape {tuple(values.shape)}")
    a, b = domain
    n = values.numel()
    coef = torch.fft.rfft(values.to(torch.float64)) / n
    k = torch.arange(coef.numel(), dtype=torch.float64)
    scale = torch.full_like(k, 2.0)
    scale[0] = 1.0
    if n % 2 == 0:
        scale[-1] = 1.0  # the Nyquist mode appears once
    omega = 2 * math.pi / (b - a)

    def u0(x: Tensor) -> Tensor:
        c = (coef * scale).to(x.device)
        theta = omega * (x.to(torch.float64).unsqueeze(-1) - a) * k.to(x.device)
        out = (c.real * torch.cos(theta) - c.imag * torch.sin(theta)).sum(-1)
        return out.to(x.dtype)

    return u0


@dataclass(frozen=True)
class PDEProblem:
    """``w_t + f(x, t, w) w_x = g(x, t, w) w_xx + s(x, t, w)``, ``w(x, t0) = u0(x)``.

    Attributes:
        u0: initial data, a function ``x -> u0(x)`` of the same shape (or a 1-D tensor of samples on
            the uniform periodic grid, turned into a trigonometric interpolant).
        domain: ``(a, b)``, ``a < b``.
        tspan: ``(t0, t1)``, ``t0 < t1``.
        flux: ``f(x, t, w)``, the advection speed (and the characteristic speed).
        diffusion: ``g`` as a number ``nu >= 0`` or a function ``g(x, t, w) >= 0``.
        forcing: ``s(x, t, w)`` or ``None``.
        boundary: ``"periodic"`` or ``"dirichlet"``.
        boundary_values: for Dirichlet, ``(left(t), right(t))``.
        reference: exact or reference solution ``u(x, t)`` (torch, differentiable) or ``None``.
        name: a label; params: the case's parameters (``beta``, ``nu``, ``C``...); symbolic: SymPy
            expressions of the case (``u`` exact solution where closed form, ``f``, ``g``, ``s``).
    """

    u0: Callable[[Tensor], Tensor]
    domain: tuple[float, float]
    tspan: tuple[float, float]
    flux: Coefficient
    diffusion: float | Coefficient = 0.0
    forcing: Coefficient | None = None
    boundary: str = "periodic"
    boundary_values: tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]] | None = None
    reference: Callable[[Tensor, Tensor], Tensor] | None = None
    name: str = "pde"
    params: Mapping[str, Any] = field(default_factory=dict)
    symbolic: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            a, b = (float(v) for v in self.domain)
        except (TypeError, ValueError) as err:
            raise ValueError(f"domain must be a pair of numbers (a, b), got {self.domain!r}") from err
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"domain must be finite, got ({a}, {b})")
        if not a < b:
            raise ValueError(f"empty domain: need a < b, got ({a}, {b})")
        object.__setattr__(self, "domain", (a, b))
        object.__setattr__(self, "tspan", check_span(self.tspan, allow_reversed=False))
        if self.boundary not in ("periodic", "dirichlet"):
            raise ValueError(f"boundary must be 'periodic' or 'dirichlet', got {self.boundary!r}")
        if self.boundary == "dirichlet":
            if self.boundary_values is None or len(self.boundary_values) != 2:
                raise ValueError("a Dirichlet problem needs boundary_values=(left(t), right(t))")
        if not callable(self.flux):
            raise TypeError("flux must be a function f(x, t, w)")
        if not callable(self.diffusion):
            nu = float(self.diffusion)
            if not math.isfinite(nu) or nu < 0:
                raise ValueError(f"the diffusion coefficient nu must be finite and >= 0, "
                                 f"got {self.diffusion}")
            object.__setattr__(self, "diffusion", nu)
        if isinstance(self.u0, Tensor):
            if self.boundary != "periodic":
                raise ValueError("initial data given as samples needs a periodic domain")
            object.__setattr__(self, "u0", fourier_interpolant(self.u0, (a, b)))
        if not callable(self.u0):
            raise TypeError("u0 must be a function x -> u0(x) or a 1-D tensor of samples")
        self._check_initial_data()

    def _check_initial_data(self) -> None:
        a, b = self.domain
        x = torch.linspace(a, b, 17, dtype=torch.float64)
        try:
            v = self.u0(x)
        except Exception as err:  # noqa: BLE001 - re-raised with context
            raise ValueError(f"u0 could not be evaluated on a tensor of x values: {err}") from err
        if not isinstance(v, Tensor) or v.shape != x.shape:
            shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"initial data of the wrong shape: u0(x) for x of shape {tuple(x.shape)} "
                             f"must have the same shape, got {shape}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError("u0 is not finite on the domain")
        g = self.g(x, torch.full_like(x, self.tspan[0]), v)
        if bool((g < 0).any()):
            raise ValueError("the diffusion coefficient g(x, t, w) must be >= 0")
        if self.boundary == "periodic":
            scale = 1.0 + float(v.abs().max())
            gap = abs(float(v[-1] - v[0]))
            if gap > 1e-6 * scale:
                raise ValueError(f"u0 is not periodic on [{a}, {b}]: u0(b) - u0(a) = {gap:.3g}; use "
                                 f"boundary='dirichlet' or periodic initial data")
            # the slope too: a kink at the wrap-around point breaks the smooth periodic ansatz
            xg = x.clone().requires_grad_(True)
            with torch.enable_grad():
                vg = self.u0(xg)
                dv = torch.autograd.grad(vg.sum(), xg, allow_unused=True)[0] if vg.requires_grad else None
            if dv is not None:
                gap = abs(float(dv[-1] - dv[0]))
                if gap > 1e-6 * (1.0 + float(dv.abs().max())):
                    raise ValueError(f"u0 is not periodic on [{a}, {b}]: u0'(b) - u0'(a) = {gap:.3g}")

    # -- coefficients -------------------------------------------------------------------------
    @property
    def periodic(self) -> bool:
        return self.boundary == "periodic"

    @property
    def length(self) -> float:
        return self.domain[1] - self.domain[0]

    @property
    def has_diffusion(self) -> bool:
        return callable(self.diffusion) or self.diffusion > 0

    def f(self, x: Tensor, t: Tensor, w: Tensor) -> Tensor:
        return self.flux(x, t, w)

    def g(self, x: Tensor, t: Tensor, w: Tensor) -> Tensor:
        if callable(self.diffusion):
            return self.diffusion(x, t, w)
        return torch.full_like(w, self.diffusion)

    def s(self, x: Tensor, t: Tensor, w: Tensor) -> Tensor:
        if self.forcing is None:
            return torch.zeros_like(w)
        return self.forcing(x, t, w)

    # -- residual -------------------------------------------------------------------------------
    def residual(self, u: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor) -> Tensor:
        """Eulerian residual ``u_t + f u_x - g u_xx - s`` of a function ``u(x, t)`` by autograd.

        ``x`` and ``t`` must be tensors of one shape; they are detached and marked as requiring
        gradients here. The result keeps the graph (for training).
        """
        x = x.detach().requires_grad_(True)
        t = t.detach().requires_grad_(True)
        w = u(x, t)
        w_x, w_t = torch.autograd.grad(w.sum(), (x, t), create_graph=True)
        r = w_t + self.f(x, t, w) * w_x - self.s(x, t, w)
        if self.has_diffusion:
            (w_xx,) = torch.autograd.grad(w_x.sum(), x, create_graph=True)
            r = r - self.g(x, t, w) * w_xx
        return r

    # -- evaluation grid ------------------------------------------------------------------------
    def grid(self, nx: int = 256, nt: int = 100, dtype: torch.dtype = torch.float64,
             device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """The standard evaluation grid, ``(x, t)`` of shape ``(nt, nx)``.

        ``nx`` points on ``[a, b)`` (periodic: the end point is the start point) or ``[a, b]``
        (Dirichlet), ``nt`` points on ``[t0, t1]``: 256 x 100 is Krishnapriyan et al.'s grid.
        """
        a, b = self.domain
        if self.periodic:
            xs = a + (b - a) * torch.arange(nx, dtype=dtype, device=device) / nx
        else:
            xs = torch.linspace(a, b, nx, dtype=dtype, device=device)
        ts = torch.linspace(*self.tspan, nt, dtype=dtype, device=device)
        tt, xx = torch.meshgrid(ts, xs, indexing="ij")
        return xx, tt

    def reference_grid(self, nx: int = 256, nt: int = 100, dtype: torch.dtype = torch.float64,
                       device: torch.device | str | None = None) -> Tensor:
        if self.reference is None:
            raise ValueError(f"problem {self.name!r} has no reference solution")
        x, t = self.grid(nx, nt, dtype, device)
        with torch.no_grad():
            return self.reference(x, t)


# ---------------------------------------------------------------------------------------------
# constructors
# ---------------------------------------------------------------------------------------------
def _initial_expr(u0: str | sp.Expr, domain: tuple[float, float], width: float) -> tuple[sp.Expr, str]:
    if isinstance(u0, str):
        if u0 == "sin":
            return sp.sin(X), "sin"
        if u0 == "gaussian":
            c = (domain[0] + domain[1]) / 2
            return sp.exp(-(X - sp.nsimplify(c)) ** 2 / (2 * sp.nsimplify(width) ** 2)), "gaussian"
        raise ValueError(f"u0 must be 'sin', 'gaussian' or a SymPy expression in x, got {u0!r}")
    if not isinstance(u0, sp.Expr):
        raise TypeError(f"u0 must be 'sin', 'gaussian' or a SymPy expression in x, got {type(u0).__name__}")
    return u0, str(u0)


def convection_diffusion(beta: float, nu: float, u0: str | sp.Expr = "sin", width: float = 0.3,
                         domain: tuple[float, float] = (0.0, 2 * math.pi),
                         tspan: tuple[float, float] = (0.0, 1.0)) -> PDEProblem:
    """``u_t + beta u_x = nu u_xx`` on a periodic interval with its exact solution.

    ``u0``: ``"sin"`` (``sin x``), ``"gaussian"`` (a front ``exp(-(x - c)^2 / (2 width^2))`` centred in
    the domain, periodised) or a SymPy trigonometric polynomial in ``x``.
    """
    beta, nu = check_real("beta", beta), check_real("nu", nu)
    width = check_real("width", width)
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")
    if not math.isfinite(nu) or nu < 0:
        raise ValueError(f"nu must be finite and >= 0, got {nu}")
    expr, label = _initial_expr(u0, domain, width)
    a, b = float(domain[0]), float(domain[1])
    if label == "gaussian":
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        center = (a + b) / 2
        ref = periodic_gaussian_solution(center, width, beta, nu, (a, b))
        from .reference import gaussian_heat

        exact = gaussian_heat(center, width, beta, nu)

        def u0_fn(x: Tensor) -> Tensor:
            return ref(x, torch.zeros_like(x))
    else:
        exact = convection_diffusion_trig(expr, beta, nu)
        ref = to_torch(exact, (X, T))
        u0_fn = to_torch(expr, (X,))
    kind = "convection" if nu == 0 else "convection-diffusion"
    return PDEProblem(
        u0=u0_fn, domain=(a, b), tspan=tspan,
        flux=lambda x, t, w: torch.full_like(w, beta), diffusion=nu,
        boundary="periodic", reference=ref,
        name=f"{kind} beta={beta:g}" + (f" nu={nu:g}" if nu else "") + f" u0={label}",
        params={"kind": kind, "beta": beta, "nu": nu, "u0": label},
        symbolic={"u": exact, "u0": expr, "f": sp.nsimplify(beta), "g": sp.nsimplify(nu), "s": sp.Integer(0)},
    )


def convection(beta: float, u0: str | sp.Expr = "sin", width: float = 0.3,
               domain: tuple[float, float] = (0.0, 2 * math.pi),
               tspan: tuple[float, float] = (0.0, 1.0)) -> PDEProblem:
    """``u_t + beta u_x = 0`` on a periodic interval (Krishnapriyan et al.'s failure case for ``sin x``)."""
    return convection_diffusion(beta, 0.0, u0, width, domain, tspan)


def burgers(nu: float, u0: sp.Expr, domain: tuple[float, float], tspan: tuple[float, float] = (0.0, 1.0),
            boundary: str = "periodic", nodes: int = 200, name: str = "burgers") -> PDEProblem:
    """Viscous Burgers ``u_t + u u_x = nu u_xx`` with the Cole-Hopf reference (Gauss-Hermite).

    ``u0`` is a SymPy expression in ``x`` (its antiderivative is taken symbolically). For
    ``boundary="dirichlet"`` the boundary values are read off the reference solution (which lives on
    the real line), so the case must be one where those are known (Raissi's zero boundaries).
    """
    nu = check_real("nu", nu)
    if not math.isfinite(nu) or nu <= 0:
        raise ValueError(f"viscous Burgers needs nu > 0, got {nu}")
    ref = cole_hopf(u0, nu, nodes)
    a, b = float(domain[0]), float(domain[1])
    bvals = None
    if boundary == "dirichlet":
        def left(t: Tensor) -> Tensor:
            return ref(torch.full_like(t, a), t)

        def right(t: Tensor) -> Tensor:
            return ref(torch.full_like(t, b), t)

        bvals = (left, right)
    return PDEProblem(
        u0=to_torch(u0, (X,)), domain=(a, b), tspan=tspan, flux=lambda x, t, w: w, diffusion=nu,
        boundary=boundary, boundary_values=bvals, reference=ref, name=name,
        params={"kind": "burgers", "nu": nu, "u0": str(u0)},
        symbolic={"u0": u0, "f": W, "g": sp.nsimplify(nu), "s": sp.Integer(0)},
    )


def burgers_raissi(nu: float = 0.01 / math.pi, nodes: int = 200) -> PDEProblem:
    """Raissi, Perdikaris, Karniadakis (JCP 2019): ``u0 = -sin(pi x)`` on ``[-1, 1]``, ``u(+-1, t) = 0``.

    With ``nu = 0.01/pi`` a shock forms at ``x = 0`` (``max |u_x(0, t)| = 152.005`` at ``t = 1.6037/pi``).
    """
    def zero(t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    p = burgers(nu, -sp.sin(sp.pi * X), (-1.0, 1.0), (0.0, 1.0), boundary="periodic", nodes=nodes)
    return PDEProblem(
        u0=p.u0, domain=(-1.0, 1.0), tspan=(0.0, 1.0), flux=p.flux, diffusion=p.diffusion,
        boundary="dirichlet", boundary_values=(zero, zero), reference=p.reference,
        name=f"burgers raissi nu={nu:.6g}", params={"kind": "burgers-raissi", "nu": nu},
        symbolic=p.symbolic,
    )


def burgers_moving_shock(C: float = 0.0, nu: float = 0.01, nodes: int = 200,
                         tspan: tuple[float, float] = (0.0, 1.0)) -> PDEProblem:
    """``u0 = sin x + C`` on ``[0, 2 pi)``, periodic (the moving-shock case of the LPINN paper).

    Galilean invariance: ``u(x, t) = C + v(x - C t, t)`` with ``v`` the Cole-Hopf solution for ``sin x``,
    so the shock forming near ``x = pi`` travels with speed ``C``.
    """
    C, nu = check_real("C", C), check_real("nu", nu)
    v = cole_hopf(sp.sin(X), nu, nodes)

    def ref(x: Tensor, t: Tensor) -> Tensor:
        return C + v(x - C * t, t)

    u0 = sp.sin(X) + sp.nsimplify(C)
    return PDEProblem(
        u0=to_torch(u0, (X,)), domain=(0.0, 2 * math.pi), tspan=tspan, flux=lambda x, t, w: w,
        diffusion=float(nu), boundary="periodic", reference=ref,
        name=f"burgers sin x + C, C={C:g} nu={nu:g}",
        params={"kind": "burgers-shift", "nu": float(nu), "C": C},
        symbolic={"u0": u0, "f": W, "g": sp.nsimplify(nu), "s": sp.Integer(0)},
    )


def manufactured(u: sp.Expr, flux: sp.Expr, diffusion: sp.Expr | float = 0,
                 domain: tuple[float, float] = (0.0, 2 * math.pi), tspan: tuple[float, float] = (0.0, 1.0),
                 boundary: str = "periodic", name: str = "manufactured") -> PDEProblem:
    """A manufactured solution: pick ``u(x, t)``, ``f(x, t, w)``, ``g(x, t, w)``; SymPy derives the forcing.

    ``s(x, t, w) = u_t + f(x, t, u) u_x - g(x, t, u) u_xx`` evaluated on the chosen ``u`` (a function
    of ``x, t`` only), so ``u`` solves the forced problem exactly. ``x, t, w`` are ``X``, ``T``,
    ``W`` (``sympy.Symbol('x', real=True)`` etc.).
    """
    g = sp.sympify(diffusion)
    fu, gu = flux.subs(W, u), g.subs(W, u)
    s = sp.simplify(sp.diff(u, T) + fu * sp.diff(u, X) - gu * sp.diff(u, X, 2))
    ref = to_torch(u, (X, T))
    t0 = float(tspan[0])
    u0 = u.subs(T, sp.nsimplify(t0))
    bvals = None
    if boundary == "dirichlet":
        a, b = float(domain[0]), float(domain[1])
        bvals = (to_torch(u.subs(X, sp.nsimplify(a)), (T,)), to_torch(u.subs(X, sp.nsimplify(b)), (T,)))
    g_fn = to_torch(g, (X, T, W)) if g.free_symbols else float(g)
    return PDEProblem(
        u0=to_torch(u0, (X,)), domain=domain, tspan=tspan, flux=to_torch(flux, (X, T, W)), diffusion=g_fn,
        forcing=to_torch(s, (X, T, W)), boundary=boundary, boundary_values=bvals, reference=ref, name=name,
        params={"kind": "manufactured"}, symbolic={"u": u, "f": flux, "g": g, "s": s},
    )
