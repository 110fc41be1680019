"""Sync-free adaptive stepping for explicit Runge-Kutta methods, optionally compiled, optionally with
a step size per batch row.

``solve(problem, Tsit5(), sync_free=True)`` runs the same method, tolerances and controller as the
default loop (``solvers.stepping.loop``), but every decision of a step is a tensor operation on the
state's device:

* the step is clipped to land on ``t1`` with ``torch.where``; the stages, the scaled error norm, the
  stiffness estimate, the controller's accept/reject and next step size (``Controller.adapt_tensor``),
  the interpolation of the save times the step covers, and the trace entries are all computed
  without reading a value on the host;
* a finished solve (or batch row) keeps stepping as a no-op (``dt = 0``, nothing written) until the
  loop next looks: termination is checked on the host once every ``sync_every`` attempts (default 1
  on the CPU, where reading a tensor costs nothing, and 16 on accelerators), so a GPU solve syncs
  once per ``sync_every`` steps, not once per step, and a block of steps between two checks can be
  captured in a CUDA graph (``compile="reduce-overhead"``). On an accelerator the last block may
  evaluate up to ``sync_every - 1`` no-op steps; ``sol.stats.nfe`` counts every evaluation made.

``compile=`` compiles with ``torch.compile(fullgraph=True, dynamic=False)``:

* ``"step"``: one whole attempt -- stages, error norm, stiffness estimate, controller proposal,
  accept/reject, save-time interpolation, trace entries, dense-output stages -- is one graph, called
  once per attempt from the host loop. Gradients flow through it (AOTAutograd compiles the backward
  too, on the first backward call).
* ``"solve"``: the whole loop is one graph (``torch._higher_order_ops.while_loop`` around the same
  attempt; termination and ``max_steps`` decided inside), so a solve is one call and no host sync
  at all until its end. Without gradients only (its backward is not trustworthy in torch 2.13),
  and without a trace, dense output or progress bar (they grow with the number of steps); needs
  ``saveat``.
* ``True``: ``"solve"`` when those conditions hold (no gradients: under ``torch.no_grad()``, no
  trace, no dense output, ``saveat`` given), else ``"step"``.

A graph is built on the first solve of a *signature* (method, controller, graph kind, state shape,
dtype, device, number of save times, trace and dense flags, direction, batch mode) and reused by
every later solve of that signature: tolerances, the span, the save times and ``max_steps`` are
graph inputs, not constants, so changing them does not recompile. A different vector field of the
same signature is a recompilation of the same graph (dynamo guards on the field); torch's
``recompile_limit`` (8) bounds those per signature, after which dynamo runs the step eagerly and
warns. ``sol.stats.extra`` reports ``graph`` (which one ran), ``compiles`` (graphs built during
the solve) and ``compile_time_s`` (when the solve compiled: the first call's wall time, i.e.
tracing, compilation and one attempt -- or, for ``"solve"``, the whole solve; 0 for a warm solve).
The vector field must be traceable as one graph; otherwise the solve raises with dynamo's reason.
The sync-free loop keeps dense output only when asked (``dense=True``).

``batch_mode="per_sample"`` (torchode's idea) gives each row of a batched state ``(B, ...)`` its
own time, step size, error norm (the RMS over that row), accept/reject and controller memory, so an
easy row is not held to a hard row's steps. The vector field is called on the whole batch with
``t`` of shape ``(B, 1, ..., 1)`` (broadcastable against ``y``); the save times are common to all
rows (``saveat`` is required). Per-row counters are in ``sol.stats.extra`` (``naccept_per_sample``,
``nreject_per_sample``, ``nfe_per_sample``), and the trace's fields have shape ``(attempts, B)``,
with ``accepted`` false where a row was already finished. Each batched evaluation costs the same
whether a row needs it or not: per-sample stepping saves evaluations per row, and wall time only
when it also lowers the number of batched attempts (rows with very different time scales, where the
shared mode's steps are set by the hardest row and its rejections are everyone's).

Gradients: backpropagation through the loop (``adjoint=None`` / ``Backprop()``), compiled or not;
``torch.where`` passes no gradient through rejected attempts. The trace's error and stiffness
estimates stay on the graph as in the default loop, so the regularisers of ``nde.regularization``
work on every path. Not supported here (the default loop has them): events, stepping by hand
(``init``), adjoint objects, and methods other than explicit Runge-Kutta.
"""

from __future__ import annotations

import math
import numbers
import time
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..checks import check_options, check_precision, check_saveat, fixed_step, step_options
from ..solution import ReturnCode, Solution, SolverError, Stats, StepTrace, as_time_tensor
from .controllers import Controller

if TYPE_CHECKING:
    from ..ode.runge_kutta import ExplicitRungeKutta

#: The options of the sync-free loop (``solve`` routes to it when one of them asks for it).
DEVICE_OPTIONS = ("sync_free", "compile", "batch_mode", "sync_every")
BATCH_MODES = ("shared", "per_sample")
COMPILE_MODES = ("auto", "step", "solve")

# Failure codes of a row, kept on the device as small integers.
_OK, _DT_MIN, _UNSTABLE = 0, 1, 2


def wants_device_loop(options: dict[str, Any]) -> bool:
    """Whether ``options`` ask for the sync-free loop (``sync_free``, ``compile`` or per-sample steps)."""
    return (bool(options.get("sync_free", False)) or bool(options.get("compile", False))
            or options.get("batch_mode", "shared") != "shared")


def strip_device_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without the sync-free loop's options at their off values (for the default loop)."""
    return {k: v for k, v in options.items() if k not in DEVICE_OPTIONS}


@dataclass(frozen=True)
class DeviceOptions:
    """The sync-free loop's own options, validated."""

    compile: str | bool  # False, "auto", "step" or "solve"
    per_sample: bool
    sync_every: int

    @staticmethod
    def parse(options: dict[str, Any], device: torch.device) -> DeviceOptions:
        comp = options.get("compile", False)
        if comp is None or comp is False:
            comp = False
        elif comp is True:
            comp = "auto"
        elif comp not in COMPILE_MODES:
            raise TypeError(f"compile must be a bool or one of {COMPILE_MODES}, got {comp!r}")
        mode = options.get("batch_mode", "shared")
        if mode not in BATCH_MODES:
            raise ValueError(f"batch_mode must be one of {BATCH_MODES}, got {mode!r}")
        k = options.get("sync_every")
        if k is None:
            k = 1 if device.type == "cpu" else 16
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"sync_every must be a positive int, got {k!r}")
        return DeviceOptions(comp, mode == "per_sample", int(k))

    def graph(self, want_trace: bool, want_dense: bool, saves: bool, progress: bool) -> str | None:
        """Which compiled graph runs: ``None`` (eager), ``"step"`` (one attempt) or ``"solve"`` (the
        whole loop as one ``while_loop``; no gradients, no trace, no dense output, given save times)."""
        if not self.compile:
            return None
        whole_ok = not (want_trace or want_dense or progress) and saves
        if self.compile == "solve":
            if torch.is_grad_enabled():
                raise ValueError("compile='solve' runs the whole loop as one graph without gradients: "
                                 "call it under torch.no_grad(), or use compile='step' (gradients through "
                                 "each step)")
            if not whole_ok:
                raise ValueError("compile='solve' keeps no trace, dense output or progress bar and needs "
                                 "saveat: use compile='step' for those")
            return "solve"
        if self.compile == "step":
            return "step"
        return "solve" if (whole_ok and not torch.is_grad_enabled()) else "step"


# -- the step kernel ------------------------------------------------------------------------------


def _combine(ks: list[Tensor], coeffs: list[float], stacked: Tensor | None = None) -> Tensor | None:
    """``sum_j coeffs[j] ks[j]`` over the nonzero coefficients, as a chain of fused multiply-adds
    (a compiled graph turns it into one kernel; eagerly it avoids re-stacking the stages)."""
    out = None
    for c, k in zip(coeffs, ks):
        if c == 0.0:
            continue
        out = k * c if out is None else out.add(k, alpha=c)
    return out


def _row_norm(x: Tensor) -> Tensor:
    """The 2-norm of each row of ``(R, n)`` ``x``, with a gradient that is 0 (not NaN) at a zero row.

    Written as a sum of squares rather than ``torch.linalg.vector_norm(x, dim=1)``: inductor's
    single-threaded CPU code for the latter's backward inside the per-step graph returned gradients
    1e6 too small in torch 2.13 (per-sample mode, one thread; the forward was right)."""
    sq = (x * x).sum(dim=1)
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq))


class StepKernel:
    """One attempt of an explicit Runge-Kutta method for ``R`` rows at once, as a pure function of
    tensors (see the module docstring). ``R = 1`` is the shared mode (the whole state is one row).

    The coefficients, the controller and the flags are constants of the kernel; everything that
    changes between solves of one signature (tolerances, span, save times, the vector field's
    parameters) is an input.
    """

    def __init__(self, alg: ExplicitRungeKutta, controller: Controller, rows: int, shape: torch.Size,
                 direction: float, nsave: int, want_trace: bool, want_dense: bool, fixed: bool,
                 per_sample: bool, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"):
        tab = alg.tableau
        self.s = tab.stages
        self.a = [[float(x) for x in row[:i]] for i, row in enumerate(tab.a)]
        self.c = [float(x) for x in tab.c]
        self.b = [float(x) for x in tab.b]
        self.e = [float(x) for x in tab.e] if tab.e is not None else None
        self.fsal = tab.fsal
        self.pair = tab.stiffness_pair
        self.stability_size = float(tab.stability_size)
        # Dense-output weights b_i(theta) as polynomial coefficients (pieces, P), on the state's device once
        # (not copied to it at every attempt).
        self.poly = torch.as_tensor(tab.dense_poly, dtype=torch.float64).to(device, dtype)
        self.controller = controller
        self.k_exp = float(alg.error_exponent)
        self.rows, self.shape, self.direction = rows, tuple(int(v) for v in shape), direction
        self.nsave, self.want_trace, self.want_dense, self.fixed = nsave, want_trace, want_dense, fixed
        # Shape of t handed to the field: 0-d when shared, (B, 1, ..., 1) per sample.
        self.t_shape = (rows,) + (1,) * (len(shape) - 1) if per_sample else ()

    def field_time(self, t: Tensor) -> Tensor:
        return t.reshape(self.t_shape)

    def __call__(self, f, t, dt, y, f0, done, code, mem1, mem2, nacc, nrej, ys, step_no,
                 t0, t1, ts, rtol, atol, dtmax, dtmin):
        """One attempt. ``t, dt, mem1, mem2, t0, t1`` float64 ``(R,)`` (``t0``/``t1``/``ts`` broadcast);
        ``y, f0`` ``(R, n)``; ``done`` bool ``(R,)``; ``code`` int ``(R,)``; ``ys`` ``(S, R, n)``."""
        d = self.direction
        shape = self.shape
        active = ~done
        rem = (t1 - t) * d
        if self.fixed:
            h = dt.abs()
        else:
            h = torch.minimum(dt.abs(), dtmax)
        land = h >= rem * (1 - 1e-12)
        h = torch.where(land, rem, h)
        h = torch.where(active, h, torch.zeros_like(h))
        if self.fixed:  # grid points from t0 (no accumulated rounding), the last one on t1
            t_new = torch.where(land, t1, t0 + d * (step_no + 1) * dt.abs())
        else:
            t_new = torch.where(land, t1, t + d * h)
        hs = t_new - t  # the signed step actually taken (0 on finished rows)
        hs = torch.where(active, hs, torch.zeros_like(hs))
        floor = torch.maximum(t.abs().clamp(min=1.0) * 1e-14, dtmin)
        too_small = active & ~land & (h < floor) if not self.fixed else torch.zeros_like(active)
        bad_dt = active & ~torch.isfinite(dt)

        hy = hs.to(y.dtype)[:, None]
        ks = [f0]
        gi, gj = self.pair
        g = [y, y]
        for i in range(1, self.s):
            yi = y + hy * _combine(ks, self.a[i])
            if i == gi:
                g[0] = yi
            elif i == gj:
                g[1] = yi
            ti = t + self.c[i] * hs
            ks.append(f(self.field_time(ti), yi.view(shape)).reshape(y.shape))
        if self.fsal:
            y1 = g[1] if gj == self.s - 1 else y + hy * _combine(ks, self.b)
            f1 = ks[-1]
        else:
            y1 = y + hy * _combine(ks, self.b)
            f1 = f(self.field_time(t_new), y1.view(shape)).reshape(y.shape)
        pieces = ks if self.fsal else ks + [f1]
        # The stacked stages (pieces, R, n), built once when dense output or a one-row save needs them.
        kst = torch.stack(pieces) if (self.want_dense or (self.nsave and self.rows == 1)) else None

        n = y.shape[1]
        if self.e is not None:
            scale = torch.maximum(y.abs(), y1.abs()) * rtol + atol
            err_rows = _row_norm(_combine(ks, self.e) / scale)
            err = err_rows * (hs.abs().to(y.dtype) / math.sqrt(n))
        else:
            err = torch.full_like(hs, float("nan"), dtype=y.dtype)
        stiff = None
        if self.want_trace and gi >= 0:
            num = _row_norm(ks[gj] - ks[gi])
            den = _row_norm(g[1] - g[0])
            stiff = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                                torch.zeros_like(den)) / self.stability_size

        # The controller, in float64 and off the graph (step sizes are never differentiated).
        e64 = err.detach().to(torch.float64)
        if self.fixed:
            accept = torch.ones_like(active)
            dt_next = dt
            new_mem = (mem1, mem2)
        else:
            finite = torch.isfinite(e64)
            accept, dt_next, new_mem = self.controller.adapt_tensor(
                (mem1, mem2), hs, torch.where(finite, e64, torch.zeros_like(e64)), self.k_exp)
            accept = accept & finite
            dt_next = torch.where(finite, dt_next, 0.2 * hs)
            # A step clipped to land on t1 does not shrink the proposal.
            grown = d * torch.maximum(dt_next.abs(), dt.abs())
            dt_next = torch.where(land & accept, grown, dt_next)
        ok = active & ~too_small & ~bad_dt
        acc = ok & accept
        rej = ok & ~accept

        # Save times inside (t, t_new] from the step's dense output (or the step's end itself).
        if self.nsave:
            tt, tn = t[None, :], t_new[None, :]
            tsc = ts[:, None]
            inside = acc[None, :] & (tsc * d > tt * d) & (tsc * d <= tn * d)
            safe_h = torch.where(hs != 0, hs, torch.ones_like(hs))
            theta = ((tsc - tt) / safe_h[None, :]).to(y.dtype)[..., None]  # (S, R, 1)
            # The weights b_j(theta) by Horner's rule: (S, R, pieces). (Powers by ``**`` and a matmul
            # with K = 5 were most of a per-sample attempt's time.)
            w = self.poly[:, -1].expand(*theta.shape[:2], -1)
            for p in range(self.poly.shape[1] - 2, -1, -1):
                w = w * theta + self.poly[:, p]
            if self.rows == 1:  # one row: the weighted stage sum is one (S x pieces) @ (pieces x n) product
                acc_k = (w[:, 0] @ kst[:, 0])[:, None]
            else:  # per row: a fused multiply-add per stage (batched matmuls of K = pieces are slower)
                acc_k = sum(w[..., j, None] * kj[None] for j, kj in enumerate(pieces))
            interp = y[None] + hy[None] * acc_k
            at_end = (tsc == tn)[..., None]
            val = torch.where(at_end, y1[None].expand_as(interp), interp)
            ys = torch.where(inside[..., None], val, ys)

        y_out = torch.where(acc[:, None], y1, y)
        f_out = torch.where(acc[:, None], f1, f0)
        t_out = torch.where(acc, t_new, t)
        dt_out = torch.where(ok, dt_next, dt) if not self.fixed else dt
        mem1 = torch.where(ok, new_mem[0], mem1)
        mem2 = torch.where(ok, new_mem[1], mem2)
        last_bad = ok & ~torch.isfinite(e64)
        code = torch.where(active & too_small, torch.where(last_bad, _UNSTABLE, _DT_MIN), code)
        code = torch.where(bad_dt, _UNSTABLE, code)
        done = done | (acc & land) | (code != _OK)
        nacc = nacc + acc.to(nacc.dtype)
        nrej = nrej + rej.to(nrej.dtype)
        step_no = step_no + acc.to(step_no.dtype)
        out = (t_out, dt_out, y_out, f_out, done, code, mem1, mem2, nacc, nrej, ys, step_no)
        record = (t, hs, acc, err, stiff, active) if self.want_trace else None
        dense = (t, hs, y, kst, acc) if self.want_dense else None
        keep = (t_new, y1, acc) if self.nsave == 0 else None
        return out, record, dense, keep


# -- compiled kernels, cached per signature ---------------------------------------------------------

_KERNELS: dict[tuple, tuple[StepKernel, Any]] = {}
#: (field code, method, controller, signature) -> why its whole-solve graph could not be traced.
_SOLVE_FAILED: dict[tuple, str] = {}


def _fresh_function(fn, tag: str):
    """A copy of ``fn`` with its own code object: dynamo keeps its cache and its recompile limit per
    code object, so each compiled signature gets its own instead of sharing one."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _kernel(alg: ExplicitRungeKutta, controller: Controller, signature: tuple, build: dict,
            mode: str | None) -> tuple[StepKernel, Any]:
    """The kernel of ``signature`` and its callable: eager (``mode=None``), one compiled attempt
    (``"step"``) or the whole solve as one compiled ``while_loop`` (``"solve"``), compiled once
    per signature."""
    if mode is None:
        k = StepKernel(alg, controller, **build)
        return k, k.__call__
    key = (type(alg), repr(controller), mode) + signature
    hit = _KERNELS.get(key)
    if hit is None:
        k = StepKernel(alg, controller, **build)
        if mode == "step":
            _no_donated_buffers()

            def run(f, *args):
                return k(f, *args)
        else:
            from torch._higher_order_ops.while_loop import while_loop

            def run(f, max_steps, *args):
                state, fixed = args[:_NSTATE], args[_NSTATE:]

                def cond(it, *st):
                    return (it < max_steps) & ~st[4].all()

                def body(it, *st):
                    return (it + 1,) + tuple(k(f, *st, *fixed)[0])

                return while_loop(cond, body, (torch.zeros_like(max_steps),) + tuple(state))

        fn = _fresh_function(run, f"{mode}_{len(_KERNELS)}")
        options = dict(INDUCTOR_OPTIONS, **(SOLVE_GRAPH_OPTIONS if mode == "solve" else {}))
        hit = _KERNELS[key] = (k, torch.compile(fn, fullgraph=True, dynamic=False, options=options))
    return hit


#: Inductor options of the compiled graphs. The graphs' inputs have the shapes of their signature by
#: construction, so the generated code's per-call size and stride assertions are dropped (inside a
#: ``while_loop`` they run at every iteration).
INDUCTOR_OPTIONS: dict[str, Any] = {"size_asserts": False}
#: The whole-solve graph also gets a C++ wrapper: its Python wrapper's per-iteration cost (a call per
#: kernel, allocations) was a fifth of a batch-256 MLP solve here (16.1 -> 13.6 ms), for ~50% more
#: compile time. The per-step graph keeps the Python wrapper (it carries the autograd backward).
SOLVE_GRAPH_OPTIONS: dict[str, Any] = {"cpp_wrapper": True}

#: Tensors in the loop's state (``StepKernel.__call__``'s first outputs).
_NSTATE = 12


def _no_donated_buffers() -> None:
    """Turn off AOTAutograd's donated buffers, process-wide, before the first per-step graph is built.

    With them the backward may reuse the saved activations' memory, so a second backward through a
    solve (``retain_graph=True``: the loss and a regulariser read from the trace) raises -- or, when
    the backward is compiled lazily outside a ``config.patch`` context, returns wrong gradients without
    a word (measured here: a regulariser's gradient 1e-9 instead of 2e-3). The setting is read when a
    backward is compiled, which can be after the solve returns, so a scoped patch is not enough; the
    cost is memory reuse in the backward of every compiled graph of the process."""
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


# -- the first step on the device ------------------------------------------------------------------


def initial_step_rows(f, field_time, t0: Tensor, y0: Tensor, f0: Tensor, direction: float, order: int,
                      rtol: float, atol: float, shape: torch.Size) -> Tensor:
    """Hairer, Norsett & Wanner I, II.4 (as ``controllers.initial_step``), per row and on the device:
    rows ``(R, n)`` in, ``|dt0|`` float64 ``(R,)`` out; one evaluation of ``f``."""
    with torch.no_grad():
        # The norms in the state's dtype, as the default loop's heuristic (half precision in float64).
        low = y0.dtype in (torch.float16, torch.bfloat16)
        y, fv = (y0.double(), f0.double()) if low else (y0, f0)
        n = y.shape[1]
        scale = y.abs() * rtol + atol
        d0 = (torch.linalg.vector_norm(y / scale, dim=1) / math.sqrt(n)).double()
        d1 = (torch.linalg.vector_norm(fv / scale, dim=1) / math.sqrt(n)).double()
        small = (d0 < 1e-5) | (d1 < 1e-5)
        h0 = torch.where(small, 1e-6, 0.01 * d0 / torch.where(small, torch.ones_like(d1), d1))
        y1 = (y + (direction * h0).to(y.dtype)[:, None] * fv).to(y0.dtype)
        f1 = f(field_time(t0 + direction * h0), y1.view(shape)).reshape(y0.shape).to(y.dtype)
        d2 = (torch.linalg.vector_norm((f1 - fv) / scale, dim=1) / math.sqrt(n)).double() / h0
        dmax = torch.maximum(d1, d2)
        h1 = torch.where(dmax <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6),
                         (0.01 / dmax.clamp(min=1e-300)) ** (1.0 / (order + 1)))
        h = torch.minimum(100 * h0, h1)
        # Non-finite (the field overflowed): NaN, which the first attempt reports as UNSTABLE.
        return torch.where(torch.isfinite(h) & (h > 0), h, float("nan"))


# -- the solve --------------------------------------------------------------------------------------


def solve_sync_free(problem: Any, alg: ExplicitRungeKutta, **options: Any) -> Solution:
    """``solve`` on the sync-free loop (see the module docstring)."""
    from .loop import LOOP_OPTIONS, first_step_option, resolve_controller

    name = type(alg).__name__
    check_options(options, LOOP_OPTIONS + alg.extra_options + DEVICE_OPTIONS, f"solve with {name}")
    if options.get("events") is not None:
        raise ValueError("events are located on the host between steps; the sync-free loop (sync_free, "
                         "compile, batch_mode='per_sample') does not take them: use the default loop")
    alg.check_problem(problem)
    y0 = problem.y0
    shape, device = y0.shape, y0.device
    dopts = DeviceOptions.parse(options, device)
    t0, t1 = problem.tspan
    d = 1.0 if t1 > t0 else -1.0
    if dopts.per_sample:
        if y0.dim() < 1 or y0.shape[0] < 1:
            raise ValueError(f"batch_mode='per_sample' needs a batched state (B, ...); y0 has shape "
                             f"{tuple(shape)}")
        if options.get("saveat") is None:
            raise ValueError("batch_mode='per_sample' saves at times common to every row: pass saveat")
        if options.get("dense"):
            raise ValueError("batch_mode='per_sample' keeps no dense output (each row has its own steps): "
                             "use saveat")
    rows = y0.shape[0] if dopts.per_sample else 1

    dt_fixed = fixed_step(options, alg.adaptive, name)
    fixed = dt_fixed is not None
    ctrl = resolve_controller(options, alg, fixed)
    h_first = None if fixed else first_step_option(options)
    rtol, atol = ctrl.tolerances(options, alg.kind)
    opts = step_options(options, rtol=rtol, atol=atol)
    if not fixed:
        check_precision(y0, opts.rtol, opts.atol, where=f"solve with {name}")
    saveat = options.get("saveat")
    save_list = check_saveat(saveat, t0, t1) if saveat is not None else []
    want_dense = (not dopts.per_sample) and bool(options.get("dense", False))
    want_trace = opts.trace
    graph = dopts.graph(want_trace, want_dense, bool(save_list), opts.progress)

    # The first evaluation validates the field (shape, dtype, finiteness), as in the default loop.
    terms = alg.prepare(problem, options, None)
    f = terms.f
    f0_flat, _, nfe, _ = alg.first_evaluations(terms, t0, y0)

    build = dict(rows=rows, shape=shape, direction=d, nsave=len(save_list), want_trace=want_trace,
                 want_dense=want_dense, fixed=fixed, per_sample=dopts.per_sample, dtype=y0.dtype,
                 device=device)
    signature = (tuple(shape), y0.dtype, str(device), rows, d, len(save_list), want_trace, want_dense, fixed,
                 dopts.per_sample)
    # A field whose whole-solve graph failed to trace before goes straight to the per-step graph.
    failed_key = (getattr(f, "__code__", None) or type(f), type(alg), repr(ctrl)) + signature
    if graph == "solve" and dopts.compile == "auto" and failed_key in _SOLVE_FAILED:
        graph = "step"
    kernel, call = _kernel(alg, ctrl, signature, build, graph)

    f64 = dict(dtype=torch.float64, device=device)
    y = y0.reshape(rows, -1)
    fv = f0_flat.view(rows, -1)
    t = torch.full((rows,), t0, **f64)
    t0_t = torch.full((rows,), t0, **f64)
    t1_t = torch.full((rows,), t1, **f64)
    if fixed:
        dt = torch.full((rows,), d * dt_fixed, **f64)
    elif h_first is not None:
        dt = torch.full((rows,), d * min(h_first, opts.dtmax, abs(t1 - t0)), **f64)
    else:
        h = initial_step_rows(f, kernel.field_time, t0_t, y, fv, d, alg.initial_step_order, opts.rtol,
                              opts.atol, shape)
        nfe += 1
        dt = d * torch.clamp(h, max=min(opts.dtmax, abs(t1 - t0)))
    if fixed and math.ceil(abs(t1 - t0) / dt_fixed * (1 - 1e-10)) > opts.max_steps:
        raise ValueError(f"dt = {dt_fixed} needs more than max_steps = {opts.max_steps} steps")
    ts = torch.tensor(save_list if save_list else [t0], **f64)
    ys = y0.reshape(1, rows, -1).expand(max(len(save_list), 1), rows, y.shape[1]).clone()
    if not save_list:
        ys = ys[:0]
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    code = torch.zeros(rows, dtype=torch.int64, device=device)
    mem1 = torch.ones(rows, **f64)
    mem2 = torch.ones(rows, **f64)
    nacc = torch.zeros(rows, dtype=torch.int64, device=device)
    nrej = torch.zeros(rows, dtype=torch.int64, device=device)
    step_no = torch.zeros(rows, **f64)
    rtol_t = torch.tensor(opts.rtol, dtype=y0.dtype, device=device)
    atol_t = torch.tensor(opts.atol, dtype=y0.dtype, device=device)
    dtmax_t = torch.tensor(opts.dtmax, **f64)
    dtmin_t = torch.tensor(opts.dtmin, **f64)
    state = (t, dt, y, fv, done, code, mem1, mem2, nacc, nrej, ys, step_no)
    fixed_args = (t0_t, t1_t, ts, rtol_t, atol_t, dtmax_t, dtmin_t)

    per_attempt = alg.stages - 1 if alg.fsal else alg.stages
    records, denses, keeps = [], [], []
    graphs_before = _graph_count() if graph else 0
    compile_time = 0.0
    bar = None
    if opts.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=abs(t1 - t0), desc=name, unit="t", disable=None)
    attempts = 0
    reached_limit = False
    fallback = None
    if graph == "solve":
        # A while_loop's carried inputs may not alias one another (y0 reshaped, f(t0, y0) ...).
        state = tuple(x.clone() for x in state)
        start = time.perf_counter()
        try:
            out = _call(call, name, f, torch.tensor(opts.max_steps, device=device), *state, *fixed_args)
        except RuntimeError as exc:
            if dopts.compile == "solve" or not _is_dynamo_error(exc.__cause__):
                raise
            # Some fields trace as a step but not inside a while_loop (e.g. a closure's ``a.T`` is
            # lifted as an input aliasing ``a``): compile=True falls back to the per-step graph.
            fallback = str(exc.__cause__).splitlines()[0][:200]
            _SOLVE_FAILED[failed_key] = fallback
            graph = "step"
            kernel, call = _kernel(alg, ctrl, signature, build, graph)
            state = tuple(x.clone() for x in state)
        else:
            compile_time = time.perf_counter() - start
            attempts = int(out[0])
            state = tuple(out[1:])
            nfe += attempts * per_attempt
            reached_limit = attempts >= opts.max_steps
    while graph != "solve":
        if attempts >= opts.max_steps:
            reached_limit = True
            break
        start = time.perf_counter() if (graph and attempts == 0) else 0.0
        state, record, dense, keep = _call(call, name, f, *state, *fixed_args)
        if start:
            compile_time = time.perf_counter() - start
        attempts += 1
        nfe += per_attempt
        if record is not None:
            records.append(record)
        if dense is not None:
            denses.append(dense)
        if keep is not None:
            keeps.append(keep)
        if attempts % dopts.sync_every == 0:
            finished = bool(state[4].all())
            if bar is not None:
                bar.n = float(((state[0] - t0) * d).min().clamp(min=0))
                bar.refresh()
            if finished:
                break
    if bar is not None:
        bar.close()
    compiles = (_graph_count() - graphs_before) if graph else 0
    if not compiles:
        compile_time = 0.0
    t, dt, y, fv, done, code, mem1, mem2, nacc, nrej, ys, step_no = state

    # -- return code ---------------------------------------------------------------------------
    codes = code.tolist()
    finished = done.tolist()
    per_row = []
    for c, fin in zip(codes, finished):
        if c == _DT_MIN:
            per_row.append(ReturnCode.DT_MIN)
        elif c == _UNSTABLE:
            per_row.append(ReturnCode.UNSTABLE)
        elif not fin:
            per_row.append(ReturnCode.MAX_STEPS if reached_limit else ReturnCode.SUCCESS)
        else:
            per_row.append(ReturnCode.SUCCESS)
    y_final = y.view(shape)
    if not bool(torch.isfinite(y.detach()).all()):
        bad = (~torch.isfinite(y.detach())).any(dim=1).tolist()
        per_row = [ReturnCode.UNSTABLE if b else r for b, r in zip(bad, per_row)]
    failed = [r for r in per_row if r is not ReturnCode.SUCCESS]
    retcode = failed[0] if failed else ReturnCode.SUCCESS
    t_reached = t.tolist()
    detail = ""
    if failed:
        which = [i for i, r in enumerate(per_row) if r is not ReturnCode.SUCCESS]
        detail = {ReturnCode.MAX_STEPS: f"max_steps = {opts.max_steps}.",
                  ReturnCode.DT_MIN: "dt fell below the floor.",
                  ReturnCode.UNSTABLE: "The state or the error estimate became NaN/Inf."}[retcode]
        if rows > 1:
            detail += f" {len(which)} of {rows} rows failed (first: row {which[0]})."
    t_fail = min(t_reached, key=lambda v: v * d)
    if retcode is not ReturnCode.SUCCESS and opts.throw:
        raise SolverError(retcode, t=t_fail, dt=float(dt.abs().min()), detail=detail)

    # -- saved states, trace, dense output --------------------------------------------------------
    if save_list:
        ts_out = as_time_tensor(save_list)
        ys_out = ys.reshape(len(save_list), *shape)
    else:  # every accepted step (shared mode only)
        acc_all = torch.stack([a[0] for (_, _, a) in keeps]) if keeps else torch.zeros(0, dtype=torch.bool)
        idx = acc_all.nonzero().flatten().tolist()
        tk = [t0] + [float(keeps[i][0][0]) for i in idx]
        ts_out = as_time_tensor(tk)
        ys_out = torch.stack([y0.reshape(-1)] + [keeps[i][1][0] for i in idx]).view(len(tk), *shape)

    trace = None
    if want_trace:
        cols = (list(z) for z in zip(*records)) if records else ([],) * 6
        tr_t, tr_dt, tr_acc, tr_err, tr_st, tr_act = cols
        active = torch.stack(tr_act) if records else torch.zeros((0, rows), dtype=torch.bool, device=device)
        acc_m = torch.stack(tr_acc) if records else active
        err_m = torch.stack(tr_err) if records else y0.new_zeros((0, rows))
        if tr_st and tr_st[0] is not None:
            st_m = torch.stack(tr_st)
        else:
            st_m = torch.full_like(err_m, float("nan"))
        t_m = torch.stack(tr_t) if records else torch.zeros((0, rows), **f64)
        dt_m = torch.stack(tr_dt) if records else torch.zeros((0, rows), **f64)
        if rows == 1:
            keep_rows = active[:, 0].nonzero().flatten()  # no-op attempts after the end are not steps
            t_m, dt_m, acc_m = t_m[keep_rows, 0], dt_m[keep_rows, 0], acc_m[keep_rows, 0]
            err_m, st_m = err_m[keep_rows, 0], st_m[keep_rows, 0]
        else:
            err_m = torch.where(active, err_m, torch.zeros_like(err_m))
            st_m = torch.where(active, st_m, torch.zeros_like(st_m))
        trace = StepTrace(t=t_m.cpu(), dt=dt_m.cpu(), accepted=acc_m.cpu(), error_estimate=err_m,
                          stiffness_estimate=st_m, stability_size=alg.stability_size)

    interp = None
    if want_dense:
        from ..ode.dense import DenseOutput

        interp = DenseOutput(terms.co.dense, shape, d)
        if denses:
            acc_all = torch.stack([z[4][0] for z in denses]).tolist()
            t_all = torch.stack([z[0][0] for z in denses]).tolist()
            h_all = torch.stack([z[1][0] for z in denses]).tolist()
            for (_, _, y_old, kst, _), a, ta, ha in zip(denses, acc_all, t_all, h_all):
                if a:
                    interp.append(ta, ha, y_old[0], kst[:, 0])

    naccept_rows, nreject_rows = nacc.tolist(), nrej.tolist()
    extra: dict[str, Any] = {"loop": "sync_free", "attempts": attempts, "sync_every": dopts.sync_every}
    if graph:
        extra.update(graph=graph, compiles=compiles, compile_time_s=compile_time)
        if fallback or failed_key in _SOLVE_FAILED and graph == "step" and dopts.compile == "auto":
            extra["graph_fallback"] = fallback or _SOLVE_FAILED[failed_key]
    if dopts.per_sample:
        start_nfe = nfe - attempts * per_attempt
        extra.update(naccept_per_sample=nacc, nreject_per_sample=nrej,
                     nfe_per_sample=start_nfe + (nacc + nrej) * per_attempt,
                     retcode_per_sample=per_row, t_final_per_sample=t)
    stats = Stats(nfe=nfe, naccept=int(sum(naccept_rows)), nreject=int(sum(nreject_rows)), extra=extra)
    return Solution(ts=ts_out, ys=ys_out, stats=stats, retcode=retcode, trace=trace, interpolant=interp,
                    t_final=t_fail if rows == 1 or failed else t1, y_final=y_final, problem=problem,
                    algorithm=alg)


def _call(call, name: str, *args):
    """One call of the step (or solve) graph; a failure to trace says what to do instead.

    """
    try:
        return call(*args)
    except Exception as exc:
        if _is_dynamo_error(exc):
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise RuntimeError(
                f"compile=True could not trace {name}'s step as one graph (fullgraph): {type(exc).__name__}: "
                f"{first}. The vector field must be torch.compile-able without graph breaks; sync_free=True "
                "runs the same loop eagerly") from exc
        raise


def _is_dynamo_error(exc: BaseException) -> bool:
    mod = type(exc).__module__ or ""
    return mod.startswith("torch._dynamo") or mod.startswith("torch._inductor")
