"""``EnsembleSolution``: the outputs (or their reduction) of every trajectory, with diagnostics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..solution import RetcodeResult, ReturnCode, Stats
from .runner import Part
from .statistics import MonteCarloResult, MonteCarloStatistics


class EnsembleSolution(RetcodeResult):
    """The result of ``solve_ensemble`` (``solve(EnsembleProblem(...), algorithm, trajectories=N)``).

    Attributes:
        outputs: the trajectories' outputs stacked in trajectory order, shape ``(N, ...)``; a list when
            their shapes differ; ``None`` when a reduction ran without ``keep_outputs=True``. After a
            ``Distributed`` run they are detached CPU tensors.
        reduced: the reduction's result (``MonteCarloResult`` for ``MonteCarloStatistics``), else ``None``.
        retcodes: per-trajectory ``ReturnCode`` (a batched solve's code for each of its rows).
        retcode: ``SUCCESS`` when every trajectory succeeded, else the most common failure.
        stats: ``Stats`` over all solves: ``nfe`` counts vector-field calls as made (a batched call
            is one), ``naccept`` / ``nreject`` sum the solves' steps; ``extra``: ``solves``,
            ``trajectories``, ``nge`` (SDEs).
        trajectory_steps, trajectory_nfe: per trajectory, the accepted steps and the evaluations of the
            solve that computed it (``int64``, shape ``(N,)``; a batch's rows share its counts).
        ts: the saved times of the first trajectory (every trajectory's when they share them).
        trajectories: ``N``. world_size: processes that solved. backend: what ran, in words.
        seconds: wall time of the call; rank_seconds: each process's solving time (its ``inner`` work);
            rank_cpu_seconds: the CPU time each process used for it (all its threads; well below
            ``rank_seconds`` when the process waited for a core).

    ``mean``, ``var``, ``std``, ``se_mean``, ``se_var``, ``quantile(q)``, ``quantile_se(q)`` read the
    ``MonteCarloResult``: the reduction's, or one computed from the kept outputs
    (``MonteCarloStatistics(quantiles=True)``, bit-identical to reducing with it).
    """

    def __init__(self, outputs: Tensor | list[Tensor] | None, reduced: Any, retcodes: list[ReturnCode],
                 stats: Stats, trajectory_steps: Tensor, trajectory_nfe: Tensor, ts: Tensor | None,
                 trajectories: int, world_size: int, backend: str, seconds: float = 0.0,
                 rank_seconds: Sequence[float] = (), rank_cpu_seconds: Sequence[float] = ()):
        self.outputs = outputs
        self.reduced = reduced
        self.retcodes = retcodes
        self.stats = stats
        self.trajectory_steps = trajectory_steps
        self.trajectory_nfe = trajectory_nfe
        self.ts = ts
        self.trajectories = trajectories
        self.world_size = world_size
        self.backend = backend
        self.seconds = seconds
        self.rank_seconds = list(rank_seconds)
        self.rank_cpu_seconds = list(rank_cpu_seconds)
        failures = Counter(c for c in retcodes if not c.success)
        self.retcode = failures.most_common(1)[0][0] if failures else ReturnCode.SUCCESS
        self._stats_from_outputs: MonteCarloResult | None = None

    def __len__(self) -> int:
        return self.trajectories

    @property
    def failed(self) -> list[int]:
        """Indices of the trajectories that did not succeed."""
        return [i for i, c in enumerate(self.retcodes) if not c.success]

    @property
    def statistics(self) -> MonteCarloResult:
        """The Monte Carlo statistics of the outputs (see the class docstring)."""
        if isinstance(self.reduced, MonteCarloResult):
            return self.reduced
        if self._stats_from_outputs is None:
            if self.outputs is None:
                raise ValueError(f"no Monte Carlo statistics: the reduction {type(self.reduced).__name__} is "
                                 "not MonteCarloStatistics and the outputs were not kept")
            if not isinstance(self.outputs, Tensor):
                raise ValueError("the outputs have different shapes: no elementwise statistics")
            red = MonteCarloStatistics(quantiles=True)
            ok = torch.tensor([c.success for c in self.retcodes], dtype=torch.bool)
            state = None
            for k in range(0, self.trajectories, red.block_size):  # the blocks of a streaming reduction
                rows = self.outputs[k:k + red.block_size][ok[k:k + red.block_size]]
                if rows.shape[0]:
                    state = red.merge(state, red.reduce_block(rows))
            if state is None:
                raise ValueError("no trajectory succeeded: no statistics")
            self._stats_from_outputs = red.finalize(state)
        return self._stats_from_outputs

    @property
    def mean(self) -> Tensor:
        return self.statistics.mean

    @property
    def var(self) -> Tensor:
        return self.statistics.var

    @property
    def std(self) -> Tensor:
        return self.statistics.std

    @property
    def se_mean(self) -> Tensor:
        return self.statistics.se_mean

    @property
    def se_var(self) -> Tensor:
        return self.statistics.se_var

    def quantile(self, q: float) -> Tensor:
        return self.statistics.quantile(q)

    def quantile_se(self, q: float) -> Tensor:
        return self.statistics.quantile_se(q)

    def __repr__(self) -> str:
        what = (f"outputs={tuple(self.outputs.shape)}" if isinstance(self.outputs, Tensor)
                else "outputs=list" if self.outputs is not None else f"reduced={self.reduced!r}")
        return (f"EnsembleSolution(trajectories={self.trajectories}, retcode={self.retcode.name}, {what}, "
                f"nfe={self.stats.nfe}, world_size={self.world_size}, backend={self.backend})")


def _join_outputs(pieces: list[Tensor]) -> Tensor | list[Tensor]:
    if not pieces:
        return torch.empty(0)
    shape = pieces[0].shape[1:]
    if all(p.shape[1:] == shape for p in pieces):
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    return [row for p in pieces for row in p.unbind(0)]


def assemble(parts: list[Part], ensemble: Any, trajectories: int, world_size: int, backend: str,
             keep_outputs: bool, seconds: float = 0.0) -> EnsembleSolution:
    """Join the parts of every process (in trajectory order) and fold the reduction's block states in
    block order: the same result for any split of the trajectories into parts."""
    parts = sorted(parts, key=lambda p: p.start)
    pos = 0
    for p in parts:
        if p.start != pos or len(p.retcodes) != p.stop - p.start:  # pragma: no cover - an internal bug
            spans = [(q.start, q.stop) for q in parts]
            raise RuntimeError(f"ensemble parts do not tile the trajectories: {spans}")
        pos = p.stop
    if pos != trajectories:  # pragma: no cover
        raise RuntimeError(f"ensemble parts cover {pos} of {trajectories} trajectories")
    reduced = None
    red = ensemble.reduction
    if red is not None:
        blocks = sorted((b for p in parts for b in p.blocks), key=lambda b: b[0])
        state = None
        for _, s in blocks:  # left fold, block order
            state = red.merge(state, s)
        reduced = red.finalize(state)
    outputs = _join_outputs([o for p in parts for o in p.outputs]) if keep_outputs else None
    totals = {k: sum(p.totals[k] for p in parts) for k in parts[0].totals}
    extra = {"solves": totals["solves"], "trajectories": trajectories}
    if ensemble.is_sde:
        extra["nge"] = totals["nge"]
    stats = Stats(nfe=totals["nfe"], naccept=totals["naccept"], nreject=totals["nreject"], extra=extra)
    ts = next((p.ts for p in parts if p.ts is not None), None)
    return EnsembleSolution(
        outputs, reduced, [c for p in parts for c in p.retcodes], stats,
        torch.tensor([s for p in parts for s in p.steps], dtype=torch.int64),
        torch.tensor([s for p in parts for s in p.nfe], dtype=torch.int64), ts, trajectories, world_size,
        backend, seconds, [p.seconds for p in parts], [p.cpu_seconds for p in parts])
