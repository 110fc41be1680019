"""SDE reference problems written in SymPy, with exact solutions checked by Ito's formula.

Each reference states the drift ``f(t, x)``, the diffusion ``g(t, x)`` and, where one exists, the
exact solution ``X(t, W)`` as a function of time and the Brownian value ``W_t``. When the reference
is built, SymPy verifies the solution symbolically:

* Ito: ``dX = (dX/dt + 1/2 d2X/dW2) dt + dX/dW dW``, so ``dX/dt + 1/2 d2X/dW2 = f(t, X)`` and
  ``dX/dW = g(t, X)`` must simplify to identities (Kloeden & Platen, section 4.2);
* Stratonovich (ordinary chain rule): ``dX/dt = f(t, X)`` and ``dX/dW = g(t, X)``;
* and ``X(t0, 0) = x0``.

The Ornstein-Uhlenbeck process has no solution that is a function of ``W_t`` alone (it depends on
the whole path through ``int e^{theta s} dW_s``); for it the reference gives the mean and variance,
solved by ``sympy.dsolve`` from the moment equations ``m' = E f``, ``v' = 2 E[(x - m) f] + E g^2``.

References (Kloeden & Platen, *Numerical Solution of SDEs*, 1992, section 4.4; Rossler 2010 for the
additive test equation also used by SciML's DiffEqProblemLibrary):

========================  ===========  ======================================================
name                      noise        SDE, solution
========================  ===========  ======================================================
``gbm``                   diagonal     dX = mu X dt + sigma X dW;  X = x0 exp((mu - s^2/2) t + s W)
``linear_multiplicative`` diagonal     d independent GBMs with different (mu_i, sigma_i)
``nonlinear_diagonal``    diagonal     dX = -a^2 sin X cos^3 X dt + a cos^2 X dW; X = atan(a W + tan x0)
``linear_additive``       additive     dX = (b/sqrt(1+t) - X/(2(1+t))) dt + a b/sqrt(1+t) dW;
                                       X = x0/sqrt(1+t) + b (t + a W)/sqrt(1+t)
``ornstein_uhlenbeck``    additive     dX = theta (mu - X) dt + sigma dW; mean and variance only
``gbm_stratonovich``      diagonal     dX = mu X dt + sigma X o dW;  X = x0 exp(mu t + sigma W)
========================  ===========  ======================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import sympy as sp
import torch
from torch import Tensor

from ..problem import SDEProblem
from ..symbolic import lambdify_torch, to_torch

t_sym, x_sym, w_sym = sp.symbols("t x W", real=True)


class SDEReferenceError(ValueError):
    """A reference's exact solution does not satisfy its SDE symbolically."""


@dataclass(frozen=True)
class SDEComponent:
    """One scalar component ``dX = f(t, X) dt + g(t, X) dW`` (``X`` is ``x``, ``W`` is ``W``)."""

    f: sp.Expr
    g: sp.Expr
    x0: float
    solution: sp.Expr | None = None     # X(t, W)
    mean: sp.Expr | None = None         # E X(t)
    variance: sp.Expr | None = None     # Var X(t)


@dataclass(frozen=True)
class SDEReference:
    """A (vector) SDE made of independent scalar components, each driven by its own ``W_i``.

    ``problem(n_paths)`` builds an ``SDEProblem`` with state
    ``(n_paths, d)``; ``exact(t, W)`` evaluates the verified solution; ``mean(t)``/``variance(t)``
    the exact moments (shape ``(d,)``) where derived.
    """

    name: str
    components: tuple[SDEComponent, ...]
    noise: str = "diagonal"
    sde_type: str = "ito"
    tspan: tuple[float, float] = (0.0, 1.0)
    description: str = ""
    _fns: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for i, c in enumerate(self.components):
            _verify(self.name, i, c, self.sde_type, self.tspan[0])
        fx = [to_torch(c.f, [t_sym, x_sym]) for c in self.components]
        gx = [to_torch(c.g, [t_sym, x_sym]) for c in self.components]
        sol = [to_torch(c.solution, [t_sym, w_sym]) if c.solution is not None else None
               for c in self.components]
        # the moments are evaluated at a float t: Python numbers in double precision, no tensors
        mean = [lambdify_torch([t_sym], c.mean) if c.mean is not None else None for c in self.components]
        var = [lambdify_torch([t_sym], c.variance) if c.variance is not None else None
               for c in self.components]
        self._fns.update(f=fx, g=gx, sol=sol, mean=mean, var=var)

    @property
    def dim(self) -> int:
        return len(self.components)

    @property
    def has_solution(self) -> bool:
        return all(c.solution is not None for c in self.components)

    def _stack(self, fns, t, x) -> Tensor:
        # to_torch broadcasts each component over x's batch; the state keeps x's dtype and device
        return torch.stack([fn(t, x[..., i]).to(x) for i, fn in enumerate(fns)], -1)

    def drift(self, t: Tensor, x: Tensor) -> Tensor:
        return self._stack(self._fns["f"], t, x)

    def diffusion(self, t: Tensor, x: Tensor) -> Tensor:
        gv = self._stack(self._fns["g"], t, x)
        if self.noise == "diagonal":
            return gv
        return torch.diag_embed(gv)  # additive: (..., d, d) with one Brownian motion per component

    def exact(self, t: float | Tensor, W: Tensor) -> Tensor:
        """``X(t)`` given ``W_t - W_{t0}`` of shape ``(..., d)``."""
        if not self.has_solution:
            raise ValueError(f"{self.name} has no exact solution in terms of W_t (see mean/variance)")
        tt = torch.as_tensor(t, dtype=W.dtype, device=W.device)
        return self._stack(self._fns["sol"], tt, W)

    def mean(self, t: float) -> Tensor:
        return torch.tensor([float(fn(float(t))) for fn in self._fns["mean"]], dtype=torch.float64)

    def variance(self, t: float) -> Tensor:
        return torch.tensor([float(fn(float(t))) for fn in self._fns["var"]], dtype=torch.float64)

    def y0(self, n_paths: int, dtype: torch.dtype = torch.float64,
           device: torch.device | str = "cpu") -> Tensor:
        x0 = torch.tensor([c.x0 for c in self.components], dtype=dtype, device=device)
        return x0.expand(n_paths, self.dim).clone()

    def problem(self, n_paths: int = 1, dtype: torch.dtype = torch.float64,
                device: torch.device | str = "cpu") -> SDEProblem:
        analytic = self.exact if self.has_solution else None
        return SDEProblem(self.drift, self.diffusion, self.y0(n_paths, dtype, device), self.tspan,
                          noise=self.noise, sde_type=self.sde_type, analytic=analytic, name=self.name)


def _verify(name: str, i: int, c: SDEComponent, sde_type: str, t0: float) -> None:
    X = c.solution
    if X is not None:
        fX = c.f.subs(x_sym, X)
        gX = c.g.subs(x_sym, X)
        ito = sp.Rational(1, 2) * sp.diff(X, w_sym, 2) if sde_type == "ito" else 0
        drift_res = sp.simplify(sp.diff(X, t_sym) + ito - fX)
        diff_res = sp.simplify(sp.diff(X, w_sym) - gX)
        init_res = sp.simplify(X.subs({t_sym: t0, w_sym: 0}) - c.x0)
        for what, res in (("drift", drift_res), ("diffusion", diff_res), ("initial value", init_res)):
            if res != 0 and not _numerically_zero(res):
                raise SDEReferenceError(f"{name}[{i}]: the solution fails the {what} identity: {res}")
    if c.mean is not None:
        # Linear-in-x drift and x-independent or linear diffusion: check the moment equations
        # m' = f(t, m) and, for additive noise, v' = 2 f_x v + g^2.
        m = c.mean
        if sp.simplify(sp.diff(m, t_sym) - c.f.subs(x_sym, m)) != 0:
            raise SDEReferenceError(f"{name}[{i}]: the mean does not satisfy m' = f(t, m)")
        if c.variance is not None:
            fx = sp.diff(c.f, x_sym)
            if sp.diff(c.g, x_sym) != 0 or sp.diff(fx, x_sym) != 0:
                raise SDEReferenceError(f"{name}[{i}]: variance check needs linear drift, additive noise")
            v = c.variance
            if sp.simplify(sp.diff(v, t_sym) - (2 * fx * v + c.g ** 2)) != 0:
                raise SDEReferenceError(f"{name}[{i}]: the variance does not satisfy v' = 2 f_x v + g^2")


def _numerically_zero(expr: sp.Expr) -> bool:
    fn = sp.lambdify([t_sym, w_sym], expr, "math")
    pts = [(0.1, -0.7), (0.5, 0.3), (0.9, 1.1), (0.3, -0.2)]
    return all(abs(fn(a, b)) < 1e-12 for a, b in pts)


# -- the library ------------------------------------------------------------------------------------

def gbm(mu: float = 1.0, sigma: float = 0.5, x0: float = 1.0, stratonovich: bool = False) -> SDEReference:
    """Geometric Brownian motion (Ito, or Stratonovich with ``stratonovich=True``)."""
    mu_, s_ = sp.nsimplify(mu), sp.nsimplify(sigma)
    if stratonovich:
        X = x0 * sp.exp(mu_ * t_sym + s_ * w_sym)
    else:
        X = x0 * sp.exp((mu_ - s_ ** 2 / 2) * t_sym + s_ * w_sym)
    comp = SDEComponent(mu_ * x_sym, s_ * x_sym, x0, solution=X, mean=x0 * sp.exp(mu_ * t_sym)
                        if not stratonovich else None)
    return SDEReference("gbm_stratonovich" if stratonovich else "gbm", (comp,),
                        sde_type="stratonovich" if stratonovich else "ito",
                        description="geometric Brownian motion")


def linear_multiplicative(mus: Sequence[float] = (1.0, -0.5), sigmas: Sequence[float] = (0.5, 0.8),
                          x0s: Sequence[float] = (1.0, 2.0)) -> SDEReference:
    """``dX_i = mu_i X_i dt + sigma_i X_i dW_i``: a diagonal linear system with multiplicative noise."""
    comps = []
    for mu, s, x0 in zip(mus, sigmas, x0s):
        mu_, s_ = sp.nsimplify(mu), sp.nsimplify(s)
        comps.append(SDEComponent(mu_ * x_sym, s_ * x_sym, x0,
                                  solution=x0 * sp.exp((mu_ - s_ ** 2 / 2) * t_sym + s_ * w_sym),
                                  mean=x0 * sp.exp(mu_ * t_sym)))
    return SDEReference("linear_multiplicative", tuple(comps),
                        description="diagonal linear SDE with multiplicative noise")


def nonlinear_diagonal(a: float = 1.0, x0: float = 0.5) -> SDEReference:
    """Kloeden & Platen eq. (4.4.48)-type reducible SDE with a nonlinear diffusion."""
    a_ = sp.nsimplify(a)
    comp = SDEComponent(-a_ ** 2 * sp.sin(x_sym) * sp.cos(x_sym) ** 3, a_ * sp.cos(x_sym) ** 2, x0,
                        solution=sp.atan(a_ * w_sym + sp.tan(sp.nsimplify(x0))))
    return SDEReference("nonlinear_diagonal", (comp,),
                        description="dX = -a^2 sin X cos^3 X dt + a cos^2 X dW")


def linear_additive(alphas: Sequence[float] = (0.1, 0.3), betas: Sequence[float] = (0.5, 1.0),
                    x0s: Sequence[float] = (1.0, 0.5)) -> SDEReference:
    """``dX = (b/sqrt(1+t) - X/(2(1+t))) dt + a b/sqrt(1+t) dW`` per component (additive, time-dependent)."""
    comps = []
    for a, b, x0 in zip(alphas, betas, x0s):
        a_, b_ = sp.nsimplify(a), sp.nsimplify(b)
        r = sp.sqrt(1 + t_sym)
        comps.append(SDEComponent(b_ / r - x_sym / (2 * (1 + t_sym)), a_ * b_ / r, x0,
                                  solution=x0 / r + b_ * (t_sym + a_ * w_sym) / r))
    return SDEReference("linear_additive", tuple(comps), noise="additive",
                        description="linear SDE with additive, time-dependent noise")


def ornstein_uhlenbeck(theta: float = 2.0, mu: float = 0.5, sigma: float = 0.6,
                       x0: float = 1.5) -> SDEReference:
    """Ornstein-Uhlenbeck: exact mean and variance from ``sympy.dsolve`` of the moment equations."""
    th, m_, s_ = sp.nsimplify(theta), sp.nsimplify(mu), sp.nsimplify(sigma)
    fexpr = th * (m_ - x_sym)
    mf, vf = sp.Function("m"), sp.Function("v")
    mean = sp.dsolve(sp.Eq(mf(t_sym).diff(t_sym), fexpr.subs(x_sym, mf(t_sym))), mf(t_sym),
                     ics={mf(0): sp.nsimplify(x0)}).rhs
    var = sp.dsolve(sp.Eq(vf(t_sym).diff(t_sym), -2 * th * vf(t_sym) + s_ ** 2), vf(t_sym),
                    ics={vf(0): 0}).rhs
    comp = SDEComponent(fexpr, s_ + 0 * x_sym, x0, mean=sp.simplify(mean), variance=sp.simplify(var))
    return SDEReference("ornstein_uhlenbeck", (comp,), noise="additive",
                        description="Ornstein-Uhlenbeck (moments only)")


def all_references() -> dict[str, SDEReference]:
    """Every SDE reference with its default parameters, by name."""
    refs = [gbm(), linear_multiplicative(), nonlinear_diagonal(), linear_additive(), ornstein_uhlenbeck(),
            gbm(stratonovich=True)]
    return {r.name: r for r in refs}
