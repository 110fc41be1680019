"""Solving a contiguous range of an ensemble's trajectories in this process (what one rank does).

``run_range`` drives ``Serial`` or ``Batched`` over trajectories ``start..stop-1`` and returns a
``Part``: the outputs (kept or not), the reduction's block states, per-trajectory return codes, steps
and evaluation counts. ``Part`` objects are what processes exchange; ``assemble`` (``solution.py``)
joins them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..checks import check_saveat, fixed_step
from ..problem import SDEProblem
from ..solution import ReturnCode, Solution, SolverError
from ..stepping.loop import step_grid
from .backends import Batched, Serial
from .noise import RowIntervalPaths, row_grid_increments
from .problem import EnsembleProblem
from .statistics import compact


@dataclass
class Part:
    """What solving trajectories ``start..stop-1`` produced (one rank's share)."""

    start: int
    stop: int
    outputs: list[Tensor] = field(default_factory=list)  # pieces with a leading trajectory dimension
    blocks: list[tuple[int, Any]] = field(default_factory=list)  # (block index, reduction state)
    retcodes: list[ReturnCode] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    nfe: list[int] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=lambda: {"nfe": 0, "naccept": 0, "nreject": 0, "nge": 0,
                                                            "solves": 0})
    ts: Tensor | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    error: dict[str, Any] | None = None

    def portable(self) -> Part:
        """A copy safe to send to another process: tensors detached, on the CPU."""
        def cpu(x: Tensor) -> Tensor:
            return compact(x.detach().cpu())

        return Part(self.start, self.stop, [cpu(o) for o in self.outputs], self.blocks, self.retcodes,
                    self.steps, self.nfe, self.totals, None if self.ts is None else cpu(self.ts),
                    self.seconds, self.cpu_seconds, self.error)


class _BlockAccumulator:
    """Feeds consecutive trajectory outputs to the reduction, one block (of the ensemble's global block
    grid) at a time, leaving out failed trajectories."""

    def __init__(self, reduction: Any, start: int):
        self.reduction = reduction
        self.size = reduction.block_size
        self.block = start // self.size
        self.next = start
        self.pieces: list[Tensor] = []
        self.states: list[tuple[int, Any]] = []
        self.shape: tuple[int, ...] | None = None

    def add(self, rows: Tensor, ok: Tensor | None) -> None:
        """``rows``: the outputs of trajectories ``self.next, ...``; ``ok``: which of them succeeded."""
        shape = tuple(rows.shape[1:])
        if ok is not None and not bool(ok.any()):
            pass  # failed trajectories only: left out, whatever their shape
        elif self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            raise ValueError(f"the reduction needs outputs of one shape: trajectory {self.next} gave "
                             f"{shape}, earlier ones {self.shape}; pass saveat= so that every trajectory "
                             f"saves at the same times, or an output_func with outputs of one shape")
        k = 0
        n = rows.shape[0]
        while k < n:
            end = (self.block + 1) * self.size  # global index where the current block ends
            take = min(n - k, end - self.next)
            piece = rows[k:k + take]
            if ok is not None:
                piece = piece[ok[k:k + take]]
            if piece.shape[0]:
                self.pieces.append(piece)
            k += take
            self.next += take
            if self.next == end:
                self._close()

    def _close(self) -> None:
        if self.pieces:
            x = self.pieces[0] if len(self.pieces) == 1 else torch.cat(self.pieces)
            self.states.append((self.block, self.reduction.reduce_block(x)))
        self.pieces = []
        self.block += 1

    def finish(self) -> list[tuple[int, Any]]:
        if self.pieces:
            self._close()
        return self.states


def _count(part: Part, sol: Any, rows: int) -> None:
    st = sol.stats
    t = part.totals
    t["nfe"] += st.nfe
    t["naccept"] += st.naccept
    t["nreject"] += st.nreject
    t["nge"] += st.extra.get("nge", 0)
    t["solves"] += 1
    part.retcodes.extend([sol.retcode] * rows)
    part.steps.extend([st.naccept] * rows)
    part.nfe.extend([st.nfe] * rows)
    if part.ts is None:
        part.ts = sol.ts


def _with_trajectory(err: SolverError, what: str) -> SolverError:
    detail = f"{err.detail} ({what})".strip() if err.detail else f"({what})"
    new = SolverError(err.retcode, t=err.t, dt=err.dt, detail=detail)
    return new


class _RowInterpolant:
    """Dense output of one row of a batched solve."""

    def __init__(self, interp: Any, row: int, ndim: int):
        self.interp, self.row, self.ndim = interp, row, ndim

    def __call__(self, t: Any) -> Tensor:
        y = self.interp(t)
        # Scalar t: shape (B, *s); a 1-D tensor of times: (len(t), B, *s).
        return y[self.row] if y.dim() == self.ndim else y[:, self.row]


def row_solution(sol: Any, row: int) -> Any:
    """Trajectory ``row`` of a batched solution, as a solution of its own (``stats``, ``retcode``,
    ``trace`` and ``problem`` are those of the batch)."""
    ndim = sol.ys.dim() - 1
    kwargs = dict(trace=sol.trace, t_final=sol.t_final,
                  y_final=None if sol.y_final is None else sol.y_final[row],
                  interpolant=None if sol.interpolant is None else _RowInterpolant(sol, row, ndim),
                  problem=sol.problem, algorithm=sol.algorithm)
    ys = sol.ys[:, row]
    if hasattr(sol, "ws"):
        ws = None if sol.ws is None else sol.ws[:, row]
        return type(sol)(sol.ts, ys, sol.stats, sol.retcode, ws=ws, brownian=None, seed=None, **kwargs)
    return Solution(sol.ts, ys, sol.stats, sol.retcode, **kwargs)


class _BatchOfOneInterpolant:
    def __init__(self, interp: Any, ndim: int):
        self.interp, self.ndim = interp, ndim

    def __call__(self, t: Any) -> Tensor:
        y = self.interp(t)
        return y.unsqueeze(0) if y.dim() == self.ndim else y.unsqueeze(1)


def batch_of_one(sol: Any) -> Any:
    """A solution of one trajectory seen as a batch of one (``ys`` of shape ``(len(ts), 1, ...)``), for
    a ``batch_output_func``."""
    ndim = sol.ys.dim() - 1
    kwargs = dict(trace=sol.trace, t_final=sol.t_final,
                  y_final=None if sol.y_final is None else sol.y_final.unsqueeze(0),
                  interpolant=None if sol.interpolant is None else _BatchOfOneInterpolant(sol, ndim),
                  problem=sol.problem, algorithm=sol.algorithm)
    ys = sol.ys.unsqueeze(1)
    if hasattr(sol, "ws"):
        ws = None if sol.ws is None else sol.ws.unsqueeze(1)
        return type(sol)(sol.ts, ys, sol.stats, sol.retcode, ws=ws, brownian=sol.brownian, seed=sol.seed,
                         **kwargs)
    return Solution(sol.ts, ys, sol.stats, sol.retcode, **kwargs)


def batched_noise(problem: SDEProblem, algorithm: Any, seeds: list[int], options: dict[str, Any]) -> Any:
    """The Brownian path of a batched SDE solve whose row ``b`` is trajectory ``b``'s own path (seeded
    with ``seeds[b]``): fixed steps draw row-seeded grid increments, adaptive steps stack per-row
    ``IntervalPath`` s (``noise.py``)."""
    from ..sde.methods import SDEAlgorithm, _brownian_shape
    from ..stepping.times import time_tensor

    if not isinstance(algorithm, SDEAlgorithm):
        raise TypeError(f"Batched SDE ensembles need a solvers.sde method (their Brownian paths are drawn "
                        f"per trajectory); {type(algorithm).__name__} is not one: use Serial()")
    y0 = problem.y0
    if problem.noise == "diagonal":
        bshape = tuple(y0.shape)
    else:
        g0 = problem.g(time_tensor(problem.t0, y0.device), y0)
        bshape = _brownian_shape(problem, g0)
    row = bshape[1:]
    levy = algorithm.needs_levy_area
    dt = fixed_step(options, algorithm.adaptive, type(algorithm).__name__)
    if dt is None:
        return RowIntervalPaths(problem.t0, problem.t1, row, seeds, y0.dtype, y0.device, levy_area=levy)
    saveat = options.get("saveat")
    stops = check_saveat(saveat, problem.t0, problem.t1) if saveat is not None else []
    grid = step_grid(problem.t0, problem.t1, dt, [] if algorithm.interpolates else stops)
    return row_grid_increments(grid, row, seeds, y0.dtype, y0.device, levy_area=levy)


def run_range(ensemble: EnsembleProblem, algorithm: Any, adjoint: Any, start: int, stop: int, inner: Any,
              options: dict[str, Any], keep_outputs: bool, progress: bool = False) -> Part:
    """Solve trajectories ``start..stop-1`` with ``inner`` (``Serial()`` or ``Batched(chunk)``)."""
    from ..api import solve

    t_begin, cpu_begin = time.perf_counter(), time.process_time()
    part = Part(start, stop)
    acc = _BlockAccumulator(ensemble.reduction, start) if ensemble.reduction is not None else None
    bar = None
    if progress and stop > start:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop - start, desc="ensemble", unit="traj", disable=None)  # None: only on a TTY

    def take(rows: Tensor, codes: list[ReturnCode]) -> None:
        ok = None
        if not all(c.success for c in codes):
            ok = torch.tensor([c.success for c in codes], dtype=torch.bool)
        if acc is not None:
            acc.add(rows, ok)
        if keep_outputs:
            part.outputs.append(compact(rows))  # not a view pinning a whole batch's ys
        if bar is not None:
            bar.update(rows.shape[0])

    sde = ensemble.is_sde
    try:
        if isinstance(inner, Serial):
            for i in range(start, stop):
                prob, one_row = ensemble.trajectory_problem(i)
                s = ensemble.trajectory_seed(i)
                opts = dict(options, seed=s) if sde else options
                try:
                    sol = solve(prob, algorithm, adjoint=adjoint, **opts)
                except SolverError as err:
                    raise _with_trajectory(err, f"trajectory {i} of the ensemble, seed {s}") from err
                _count(part, sol, 1)
                if ensemble.batch_output_func is not None and ensemble.output_func is None:
                    rows = ensemble.batch_output(sol if one_row else batch_of_one(sol), [i])
                else:
                    rows = ensemble.output(row_solution(sol, 0) if one_row else sol, i).unsqueeze(0)
                take(rows, [sol.retcode])
        elif isinstance(inner, Batched):
            chunk = inner.chunk or max(1, stop - start)
            for c0 in range(start, stop, chunk):
                idx = list(range(c0, min(c0 + chunk, stop)))
                seeds = [ensemble.trajectory_seed(i) for i in idx]
                prob = ensemble.batch_problem(idx, seeds)
                opts = options
                if sde:
                    opts = dict(options, brownian=batched_noise(prob, algorithm, seeds, options))
                try:
                    sol = solve(prob, algorithm, adjoint=adjoint, **opts)
                except SolverError as err:
                    raise _with_trajectory(err, f"the batch of trajectories {idx[0]}..{idx[-1]}") from err
                _count(part, sol, len(idx))
                take(ensemble.batch_output(sol, idx), [sol.retcode] * len(idx))
        else:  # pragma: no cover - solve_ensemble checks the backend
            raise TypeError(f"inner backend must be Serial() or Batched(), got {inner!r}")
    finally:
        if bar is not None:
            bar.close()
    if acc is not None:
        part.blocks = acc.finish()
    part.seconds = time.perf_counter() - t_begin
    part.cpu_seconds = time.process_time() - cpu_begin  # < seconds when the process waited for a core
    return part
