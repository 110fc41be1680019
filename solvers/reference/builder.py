"""Build ODE reference problems from SymPy: solve symbolically, verify, and turn into torch.

``ode_from_sympy`` takes the right-hand sides of ``y' = F(t, y)`` as SymPy expressions in the
unknown functions, solves the initial value problem with ``sympy.dsolve`` (or takes a closed form
you supply), verifies it with ``sympy.checkodesol`` and by substituting ``t0`` into the initial
condition, and returns an ``ODEProblem`` whose ``f`` and ``analytic`` are
torch functions made by ``solvers.symbolic.to_torch``. A reference whose exact solution does not
check out symbolically is an error, never a silent approximation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sympy as sp
import torch
from torch import Tensor

from ..problem import ODEProblem
from ..symbolic import TORCH_FUNCTIONS, lambdify_torch, to_torch

__all__ = ["ode_from_sympy", "ReferenceError", "SymbolicODE", "lambdify_torch", "TORCH_FUNCTIONS"]


class ReferenceError(ValueError):
    """The symbolic solution of a reference problem could not be found or verified."""


def ode_from_sympy(
    rhs: Sequence[sp.Expr],
    funcs: Sequence[sp.Function],
    t: sp.Symbol,
    y0: Sequence[float | sp.Expr],
    tspan: tuple[float, float],
    *,
    solution: Sequence[sp.Expr] | None = None,
    name: str = "",
    dtype: torch.dtype = torch.float64,
) -> ODEProblem:
    """An ODEProblem with a verified exact solution.

    Args:
        rhs: right-hand sides ``F_i(t, y_1(t), ..., y_n(t))``.
        funcs: the unknown functions ``y_i`` (SymPy ``Function`` objects, *not* applied to ``t``).
        t: the time symbol.
        y0: initial values at ``tspan[0]`` (exact SymPy numbers are kept exact for the check).
        tspan: the time span.
        solution: optional closed forms ``y_i(t)``; when omitted, ``sympy.dsolve`` finds them.
        name: label for tables and plots.
        dtype: dtype of ``y0`` (float64 by default).
    """
    if len(rhs) != len(funcs) or len(y0) != len(funcs):
        raise ValueError("rhs, funcs and y0 must have the same length")
    applied = [fn(t) for fn in funcs]
    t0 = sp.nsimplify(tspan[0])
    y0_exact = [sp.nsimplify(v) for v in y0]
    eqs = [sp.Eq(y.diff(t), r) for y, r in zip(applied, rhs)]
    if solution is None:
        ics = {y.subs(t, t0): v for y, v in zip(applied, y0_exact)}
        try:
            sol = sp.dsolve(eqs if len(eqs) > 1 else eqs[0], applied if len(eqs) > 1 else applied[0], ics=ics)
        except Exception as err:  # sympy raises many types here
            raise ReferenceError(f"{name}: dsolve failed: {err}") from err
        sols = sol if isinstance(sol, list) else [sol]
        if len(sols) != len(funcs) or not all(isinstance(s, sp.Eq) for s in sols):
            raise ReferenceError(f"{name}: dsolve returned {sol!r}, not one explicit solution per unknown")
        by_func = {s.lhs: s.rhs for s in sols}
        exprs = [sp.simplify(by_func[y]) for y in applied]
    else:
        exprs = [sp.sympify(e) for e in solution]
    # Verification 1: the ODE residual vanishes identically.
    sol_eqs = [sp.Eq(y, e) for y, e in zip(applied, exprs)]
    ok, residual = sp.checkodesol(eqs if len(eqs) > 1 else eqs[0], sol_eqs if len(eqs) > 1 else sol_eqs[0])
    if not ok:
        raise ReferenceError(f"{name}: checkodesol rejects the solution (residual {residual})")
    # Verification 2: the initial condition holds exactly.
    for e, v in zip(exprs, y0_exact):
        if sp.simplify(e.subs(t, t0) - v) != 0:
            raise ReferenceError(f"{name}: the solution does not satisfy y({t0}) = {v}")

    ysyms = sp.symbols(f"y0:{len(funcs)}")
    rhs_syms = [r.subs(dict(zip(applied, ysyms))) for r in rhs]
    rhs_fns = [to_torch(r, [t, *ysyms]) for r in rhs_syms]
    sol_fns = [to_torch(e, [t]) for e in exprs]

    def f(tt: Tensor, y: Tensor) -> Tensor:
        comps = [y[..., i] for i in range(y.shape[-1])]
        # to_torch broadcasts over y's batch (a right-hand side in t alone too); y's dtype and device
        return torch.stack([fn(tt, *comps).to(comps[0]) for fn in rhs_fns], dim=-1)

    def analytic(tt: Tensor | float) -> Tensor:
        tt = torch.as_tensor(tt, dtype=torch.float64)
        return torch.stack([fn(tt) for fn in sol_fns], dim=-1).to(dtype)

    y0_t = torch.tensor([float(v) for v in y0_exact], dtype=dtype)
    problem = ODEProblem(f=f, y0=y0_t, tspan=tspan, analytic=analytic, name=name)
    object.__setattr__(problem, "symbolic", SymbolicODE(t, applied, list(rhs), exprs))
    return problem


class SymbolicODE:
    """The SymPy form a reference problem was built from (for documentation and checks)."""

    def __init__(self, t: sp.Symbol, funcs: list, rhs: list, solution: list):
        self.t, self.funcs, self.rhs, self.solution = t, funcs, rhs, solution

    def latex(self) -> Mapping[str, str]:
        return {"ode": ", ".join(sp.latex(sp.Eq(y.diff(self.t), r)) for y, r in zip(self.funcs, self.rhs)),
                "solution": ", ".join(sp.latex(sp.Eq(y, s)) for y, s in zip(self.funcs, self.solution))}
