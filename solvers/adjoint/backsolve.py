"""The continuous adjoint, solved backwards in time with our own Runge-Kutta methods.

For ``dy/dt = f(t, y, theta)`` on ``[t0, t1]`` and a loss ``L`` of the saved states, the adjoint
``a(t) = dL/dy(t)`` and the parameter gradient satisfy (Pontryagin; Chen, Rubanova, Bettencourt &
Duvenaud, "Neural Ordinary Differential Equations", NeurIPS 2018, eqs. (4)-(5) and Algorithm 1)

    da/dt = -a^T df/dy,          a(t1) = dL/dy(t1),
    dg/dt = -a^T df/dtheta,      g(t1) = 0,        dL/dtheta = g(t0),

solved from ``t1`` back to ``t0`` together with ``y`` itself (``dy/dt = f``, from ``y(t1)``) as one
augmented ODE ``z = [y, a, g]``. Between save times the system is solved piecewise; at each save
time ``t_i`` the jump ``a += dL/dy(t_i)`` is added and ``y`` is reset to the forward value (as
torchdiffeq does: it limits the drift of the backward reconstruction of ``y``).

Trade-offs (Kidger, *On Neural Differential Equations*, 2021, section 5.1): memory is O(1) in the
number of steps (only the saved states are kept), each backward step costs one vector-Jacobian
product per stage, and the gradient is that of the exact flow, accurate to the backward solve's
tolerance, not the exact gradient of the computed forward solution. Reconstructing ``y``
backwards is unstable when the forward flow is strongly contracting (stiff or dissipative
dynamics); prefer ``CheckpointAdjoint`` there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..algorithm import Algorithm
from ..problem import ODEProblem
from ..solution import Stats
from .base import Adjoint, nothing_to_differentiate
from .common import ATOL, RTOL, check_backward_tolerance, check_own_method, with_graph

# Forward options the backward solve inherits unless the adjoint overrides them.
_INHERITED = ("controller", "max_steps", "dtmin", "dtmax")


class BacksolveAdjoint(Adjoint):
    """Continuous adjoint (optimise-then-discretise) solved backwards with our own methods.

    ``solve(problem, Tsit5(), adjoint=BacksolveAdjoint(), saveat=ts, rtol=..., atol=...)`` runs
    the forward solve without an autograd graph (``trace=True`` still returns the forward solve's
    error and stiffness estimates, detached) and makes ``sol.ys`` and ``sol.y_final``
    differentiable through the adjoint equations above.

    Args:
        params: extra tensors to differentiate (for a plain-function ``f``); the parameters of an
            ``nn.Module`` ``f`` are found automatically.
        rtol, atol: tolerances of the backward solve (default: the forward ones).
        dt: fixed step of the backward solve (default: the forward's ``dt`` when it was fixed,
            else adaptive).
        solver: the method of the backward solve (default: the forward's method).
        reset_state: reset ``y`` to the forward value at each save time (default ``True``).

    Nothing to differentiate (a plain function ``f``, no ``params``, ``y0`` not requiring grad,
    gradients enabled) is a ``ValueError``: autograd would otherwise silently return no
    gradient for the tensors ``f`` closes over. The backward pass's evaluations and steps are
    counted in ``sol.stats.backward`` (a ``Stats``, filled in by
    ``loss.backward()``). ``sol(t)`` (with ``dense=True``, default ``False`` here) is not
    differentiable. Reversed spans (``t1 < t0``) are supported; double backward is not.
    """

    def __init__(self, params: Sequence[Tensor] | None = None, *, rtol: float | None = None,
                 atol: float | None = None, dt: float | None = None, solver: Algorithm | None = None,
                 reset_state: bool = True):
        super().__init__(params)
        self.rtol = check_backward_tolerance("rtol", rtol)
        self.atol = check_backward_tolerance("atol", atol)
        if dt is not None and not (float(dt) > 0 and float(dt) < float("inf")):
            raise ValueError(f"dt must be a finite positive step size or None, got {dt!r}")
        self.dt = None if dt is None else float(dt)
        if solver is not None and not isinstance(solver, Algorithm):
            raise TypeError("solver must be a solvers Algorithm instance or None, got "
                            f"{type(solver).__name__}")
        self.solver = solver
        self.reset_state = bool(reset_state)

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in (("rtol", self.rtol), ("atol", self.atol), ("dt", self.dt),
                                            ("solver", self.solver)) if v is not None]
        return f"BacksolveAdjoint({', '.join(parts)})"

    def solve(self, problem: ODEProblem, algorithm: Algorithm, **options: Any):
        check_own_method(self, problem, algorithm)
        if self.solver is not None:
            check_own_method(self, problem, self.solver)
        backward_alg = self.solver or algorithm
        if getattr(backward_alg, "implicit", False) or hasattr(backward_alg, "methods"):
            # The augmented field differentiates f inside itself (autograd.grad on detached inputs),
            # so an implicit method would get a wrong (zero) Jacobian of it: refuse, do not guess.
            raise ValueError(f"BacksolveAdjoint cannot solve the adjoint system with {backward_alg!r}: "
                             "implicit and switching methods need the Jacobian of the augmented "
                             "system, which it does not provide. Use CheckpointAdjoint() (the exact "
                             "gradient at O(sqrt(steps)) memory) or Backprop() with stiff methods.")
        params = self.parameters_of(problem)
        nothing_to_differentiate(problem, params, "BacksolveAdjoint")
        options = dict(options)
        options.setdefault("dense", False)  # a dense interpolant would keep every step (O(steps) memory)
        if not torch.is_grad_enabled() or not (params or problem.y0.requires_grad):
            return algorithm.solve(problem, **options)
        holder: dict[str, Any] = {}
        backward = Stats()
        ys, y_final = _Backsolve.apply(self, problem, algorithm, options, holder, backward, problem.y0,
                                       *params)
        return with_graph(holder["sol"], ys, y_final, self, backward, keep_trace=bool(options.get("trace")),
                          problem=problem)

    # -- the backward pass ----------------------------------------------------------------------------
    def backward_options(self, forward: dict[str, Any]) -> dict[str, Any]:
        opts = {k: forward[k] for k in _INHERITED if k in forward}
        opts["rtol"] = self.rtol if self.rtol is not None else forward.get("rtol", RTOL)
        opts["atol"] = self.atol if self.atol is not None else forward.get("atol", ATOL)
        dt = self.dt if self.dt is not None else forward.get("dt")
        if dt is not None:
            opts["dt"] = dt
        opts["dense"] = False
        return opts


def augmented_field(f, shape: torch.Size, params: tuple[Tensor, ...]):
    """``z = [y, a, g] -> [f, -a^T df/dy, -a^T df/dtheta]`` on the flattened augmented state."""
    n = shape.numel()

    def aug(t: Tensor, z: Tensor) -> Tensor:
        y, a = z[:n].view(shape), z[n:2 * n].view(shape)
        with torch.enable_grad():
            yv = y.detach().requires_grad_(True)
            fy = f(t, yv)
            grads = torch.autograd.grad(fy, (yv, *params), -a, allow_unused=True)
        parts = [fy.detach().reshape(-1)]
        for g, like in zip(grads, (yv, *params)):
            parts.append((torch.zeros_like(like) if g is None else g).reshape(-1).to(z.dtype))
        return torch.cat(parts)

    return aug


class _Backsolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, adj: BacksolveAdjoint, problem: ODEProblem, algorithm, options, holder, backward,
                y0: Tensor, *params: Tensor):
        sol = algorithm.solve(problem.replace(y0=y0.detach()), **options)  # grad is off in forward
        holder["sol"] = sol
        ctx.adj, ctx.problem, ctx.algorithm = adj, problem, algorithm
        ctx.options, ctx.backward = options, backward
        ctx.ts = sol.ts.tolist()
        ctx.t_final = float(sol.t_final)
        ctx.save_for_backward(sol.ys, sol.y_final, *params)
        return sol.ys, sol.y_final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_ys: Tensor | None, g_final: Tensor | None):
        ys, y_final, *params = ctx.saved_tensors
        params = tuple(params)
        adj: BacksolveAdjoint = ctx.adj
        problem: ODEProblem = ctx.problem
        shape = y_final.shape
        n = shape.numel()
        alg = adj.solver or ctx.algorithm
        opts = adj.backward_options(ctx.options)
        every_step = ctx.options.get("saveat") is None and "dt" not in opts
        aug = augmented_field(problem.f, shape, params)
        stats: Stats = ctx.backward

        def back(t_a: float, t_b: float, z: Tensor) -> Tensor:
            o = dict(opts, saveat=[t_b])
            if every_step:
                o["dt0"] = abs(t_b - t_a)  # each segment is one step the forward solve accepted
            sol = alg.solve(ODEProblem(aug, z, (t_a, t_b)), **o)
            stats.nfe += sol.stats.nfe
            stats.naccept += sol.stats.naccept
            stats.nreject += sol.stats.nreject
            return sol.y_final

        n_par = sum(p.numel() for p in params)
        a = g_final.reshape(-1) if g_final is not None else y_final.new_zeros(n)
        z = torch.cat([y_final.reshape(-1), a, y_final.new_zeros(n_par)])
        t_cur = ctx.t_final
        for i in range(len(ctx.ts) - 1, -1, -1):
            s = ctx.ts[i]
            if s != t_cur:
                z = back(t_cur, s, z)
                t_cur = s
            if adj.reset_state:
                z = torch.cat([ys[i].reshape(-1), z[n:]])
            if g_ys is not None:
                z = torch.cat([z[:n], z[n:2 * n] + g_ys[i].reshape(-1), z[2 * n:]])
        if t_cur != problem.t0:
            z = back(t_cur, problem.t0, z)
        g_y0 = z[n:2 * n].view(shape) if ctx.needs_input_grad[6] else None
        g_params, k = [], 2 * n
        for p in params:
            g_params.append(z[k:k + p.numel()].view(p.shape).to(p.dtype))
            k += p.numel()
        return (None, None, None, None, None, None, g_y0, *g_params)
