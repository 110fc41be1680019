"""Discretise-then-optimise with recomputation: the exact gradient of the computed solution at
O(n_checkpoints) memory.

The forward solve runs without an autograd graph and keeps the state at (at most) ``n_checkpoints``
accepted steps, plus the accepted ``(t_j, dt_j)`` of every step. The backward pass walks the
segments between checkpoints from the last to the first: it replays the segment's accepted steps
through the stepper protocol (``algorithm.attempt``, the very call the step loop makes) and the
method's dense output at the save times inside it, this time with a graph, and
backpropagates through that segment only. Every recomputed step is the step the forward solve
took, so the gradient equals ``Backprop``'s to rounding.

Cost: one extra forward evaluation of every step (``nfe_backward`` = the forward's NFE over the
accepted steps), memory ``O(n_checkpoints + steps / n_checkpoints)`` states and graphs: the
``sqrt(steps)`` choice of checkpoints gives ``O(sqrt(steps))``. Griewank & Walther's binomial
"revolve" schedule (ACM TOMS 26, 2000) reaches logarithmic memory by recomputing more than once;
this class does the single-level scheme of ANODE (Gholami, Keutzer & Biros, "ANODE:
Unconditionally accurate memory-efficient gradients for neural ODEs", IJCAI 2019), which
recomputes each step exactly once. Kidger (thesis, 2021, section 5.1.2) discusses the trade-off.
The number of accepted steps is not known in advance, so checkpoints are kept every ``2^k``
steps, ``k`` doubling whenever more than ``n_checkpoints`` would be held.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..algorithm import Algorithm
from ..problem import ODEProblem
from ..solution import Stats
from ..stepping.times import time_tensor
from .base import Adjoint, nothing_to_differentiate
from .common import ATOL, RTOL, check_own_method, with_graph


class CheckpointAdjoint(Adjoint):
    """Recompute-and-backpropagate between checkpoints (discretise-then-optimise).

    Args:
        n_checkpoints: the most states kept by the forward pass (``>= 1``; 1 recomputes the whole
            solve from ``y0`` in one go, i.e. backprop's memory). ``None``: ``ceil(sqrt(steps))``
            for a fixed-step solve, 32 for an adaptive one.
        params: extra tensors to differentiate (for a plain-function ``f``).

    The forward solve's trace is available (``trace=True``, detached: the global regularisers
    need ``Backprop``). Recomputation evaluations and steps are counted in
    ``sol.stats.backward`` after ``loss.backward()``. Reversed spans are supported.
    """

    def __init__(self, n_checkpoints: int | None = None, params: Sequence[Tensor] | None = None):
        super().__init__(params)
        if n_checkpoints is not None:
            if isinstance(n_checkpoints, bool) or not isinstance(n_checkpoints, int):
                raise TypeError(f"n_checkpoints must be an int or None, got {type(n_checkpoints).__name__}")
            if n_checkpoints < 1:
                raise ValueError(f"n_checkpoints must be >= 1, got {n_checkpoints}")
        self.n_checkpoints = n_checkpoints

    def __repr__(self) -> str:
        return f"CheckpointAdjoint({self.n_checkpoints!r})"

    def budget(self, problem: ODEProblem, options: dict[str, Any]) -> int:
        if self.n_checkpoints is not None:
            return self.n_checkpoints
        dt = options.get("dt")
        if dt is None:
            return 32
        steps = max(1, int(abs(problem.t1 - problem.t0) / float(dt) + 0.5))
        return max(1, int(steps ** 0.5 + 0.999999))

    def solve(self, problem: ODEProblem, algorithm: Algorithm, **options: Any):
        check_own_method(self, problem, algorithm)
        params = self.parameters_of(problem)
        nothing_to_differentiate(problem, params, "CheckpointAdjoint")
        options = dict(options)
        options.setdefault("dense", False)
        if not torch.is_grad_enabled() or not (params or problem.y0.requires_grad):
            return algorithm.solve(problem, **options)
        holder: dict[str, Any] = {}
        backward = Stats()
        ys, y_final = _Checkpointed.apply(self, problem, algorithm, options, holder, backward, problem.y0,
                                          *params)
        return with_graph(holder["sol"], ys, y_final, self, backward, keep_trace=bool(options.get("trace")),
                          problem=problem)


def _forward(problem: ODEProblem, algorithm, options: dict[str, Any], budget: int):
    """The forward solve, stepped by hand to keep at most ``budget`` checkpoints; returns
    ``(solution, {step index: state})``."""
    from ..api import init

    integ = init(problem, algorithm, **dict(options, trace=True))
    ckpts: dict[int, Tensor] = {0: problem.y0}
    stride, j = 1, 0
    while True:
        t_before = integ.t
        more = integ.step()
        if integ.t != t_before:  # one more accepted step
            j += 1
            if more and j % stride == 0:
                ckpts[j] = integ.y
                while len(ckpts) > budget:
                    stride *= 2
                    ckpts = {k: v for k, v in ckpts.items() if k % stride == 0}
        if not more:
            break
    return integ.solution(), ckpts


def _save_map(ts: list[float], t0: float, starts: list[float], dts: list[float], ends: list[float],
              direction: float) -> list[tuple[str, int, float]]:
    """Where each saved state comes from, by the step loop's rule: ``("start", -1, 0)`` (``y0``),
    ``("end", j, 1)`` (the end of accepted step ``j``) or ``("inner", j, theta)`` (its dense output)."""
    out, j, d = [], 0, direction
    for s in ts:
        if s * d <= t0 * d:
            out.append(("start", -1, 0.0))
            continue
        while j < len(ends) - 1 and s * d > ends[j] * d:
            j += 1
        out.append(("end", j, 1.0) if s == ends[j] else ("inner", j, (s - starts[j]) / dts[j]))
    return out


class _Checkpointed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, adj: CheckpointAdjoint, problem: ODEProblem, algorithm, options, holder, backward,
                y0: Tensor, *params: Tensor):
        prob = problem.replace(y0=y0.detach())
        sol, ckpts = _forward(prob, algorithm, options, adj.budget(problem, options))
        # The solution handed back carries the trace only if the caller asked for it.
        holder["sol"] = sol
        acc = sol.trace.accepted_only()
        starts, dts = acc.t.tolist(), acc.dt.tolist()
        ends = starts[1:] + [float(sol.t_final)]
        direction = 1.0 if problem.t1 > problem.t0 else -1.0
        ctx.plan = (starts, dts, ends, _save_map(sol.ts.tolist(), problem.t0, starts, dts, ends, direction))
        ctx.ckpt_index = sorted(k for k in ckpts if k < len(starts))
        ctx.methods = None
        if acc.method is not None:  # composite methods: which sub-method took each accepted step
            names = [type(m).__name__ for m in algorithm.methods]
            ctx.methods = [names.index(m) for m in acc.method]
        ctx.adj, ctx.problem, ctx.algorithm = adj, problem, algorithm
        ctx.options, ctx.backward = options, backward
        ctx.save_for_backward(*(ckpts[k] for k in ctx.ckpt_index), *params)
        return sol.ys, sol.y_final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_ys: Tensor | None, g_final: Tensor | None):
        saved = ctx.saved_tensors
        nck = len(ctx.ckpt_index)
        ckpts, params = saved[:nck], tuple(saved[nck:])
        starts, dts, ends, save_map = ctx.plan
        alg = ctx.algorithm
        rtol, atol = ctx.options.get("rtol", RTOL), ctx.options.get("atol", ATOL)
        stats: Stats = ctx.backward
        y_ref = ckpts[0]
        shape = y_ref.shape
        # The replay steps through the stepper protocol (the loop's own calls): any method the
        # loop drives, explicit, implicit or composite, replays the forward's steps exactly.
        terms = alg.prepare(ctx.problem.replace(y0=y_ref.detach()), dict(ctx.options), None)
        methods = ctx.methods
        # Saved states grouped by the step that produces them.
        by_step: dict[int, list[tuple[int, str, float]]] = {}
        a = g_final if g_final is not None else torch.zeros_like(y_ref)
        g_y0 = torch.zeros_like(y_ref)
        for i, (kind, j, theta) in enumerate(save_map):
            if kind == "start":
                if g_ys is not None:
                    g_y0 = g_y0 + g_ys[i]
            else:
                by_step.setdefault(j, []).append((i, kind, theta))
        g_params = [torch.zeros_like(p) for p in params]
        bounds = [*ctx.ckpt_index, len(starts)]
        for c in range(nck - 1, -1, -1):
            ja, jb = bounds[c], bounds[c + 1]
            with torch.enable_grad():
                y_start = ckpts[c].detach().requires_grad_(True)
                y, f0 = y_start, None
                outs, gouts = [], []
                for j in range(ja, jb):
                    if methods is not None:  # a composite method: the sub-method the forward used
                        terms.current = methods[j]
                    if f0 is None:
                        f0 = terms.f(time_tensor(starts[j], y.device), y).reshape(-1)
                        stats.nfe += 1
                    res = alg.attempt(terms, starts[j], y, dts[j], f0, None, rtol, atol, need_error=False,
                                      need_stiffness=False, t_new=ends[j])
                    stats.nfe += res.nfe
                    stats.naccept += 1
                    saves = by_step.get(j, ()) if g_ys is not None else ()
                    inner = [theta for _, kind, theta in saves if kind == "inner"]
                    # Non-FSAL methods evaluate f at the step's end for their interpolant (then the
                    # next step's first stage), as the forward did with its dense output.
                    piece, extra = alg.dense_piece(terms, ends[j], res, True)
                    stats.nfe += extra
                    vals = iter(alg.interpolate(terms, y.reshape(-1), piece, dts[j], inner) if inner else ())
                    for i, kind, _theta in saves:
                        outs.append(res.y if kind == "end" else next(vals).view(shape))
                        gouts.append(g_ys[i])
                    f0 = res.f1
                    y = res.y
                outs.append(y)
                gouts.append(a)
                grads = torch.autograd.grad(outs, (y_start, *params), gouts, allow_unused=True)
            a = grads[0] if grads[0] is not None else torch.zeros_like(y_ref)
            for k, g in enumerate(grads[1:]):
                if g is not None:
                    g_params[k] = g_params[k] + g
        g_y0 = (g_y0 + a) if ctx.needs_input_grad[6] else None
        return (None, None, None, None, None, None, g_y0, *g_params)
