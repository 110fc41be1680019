"""``EnsembleProblem``: many solves of one problem, varied per trajectory (SciML's ``EnsembleProblem``)."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..checks import check_signature
from ..problem import ODEProblem, SDEProblem
from .noise import trajectory_seed
from .statistics import Reduction

#: The problem types an ensemble varies.
ENSEMBLE_PROBLEM_TYPES = (ODEProblem, SDEProblem)

# Fields that must agree for problems to be solved as one batch (y0 is stacked; analytic and name dropped).
_BATCH_FIELDS = {ODEProblem: ("f", "tspan"),
                 SDEProblem: ("f", "g", "tspan", "noise", "sde_type", "brownian_size")}


@dataclass(frozen=True, eq=False)  # eq=False: fields hold tensors and callables (identity is what matters)
class EnsembleProblem:
    """``trajectories`` solves of ``problem``, trajectory ``i`` being ``prob_func(problem, i, seed_i)``.

    Args:
        problem: an ``ODEProblem`` or ``SDEProblem``.
        prob_func: ``prob_func(problem, i, seed_i) -> problem_i``, the problem of trajectory ``i``
            (default: ``problem`` itself; an SDE trajectory still gets its own Brownian path, seeded
            with ``seed_i``). ``seed_i = trajectory_seed(seed, i)`` depends on ``(seed, i)`` only; use it
            for any other randomness of the trajectory (random ``y0``, parameters) so that every backend
            and world size sees the same ensemble.
        output_func: ``output_func(solution, i) -> Tensor``, what is kept of trajectory ``i``
            (default: ``solution.ys``). Keep it small: it is what travels between processes.
        reduction: a streaming ``Reduction`` of the outputs (e.g. ``MonteCarloStatistics()``); with one,
            the outputs themselves are not kept unless ``solve(..., keep_outputs=True)``.
        seed: the ensemble's seed (an int >= 0; ``None``: drawn from torch's global generator now).
        batch_prob_func: ``batch_prob_func(problem, indices, seeds) -> problem_batch``, one problem
            for a chunk of trajectories, its ``y0`` of shape ``(len(indices), *y0.shape)`` and its
            ``f`` (``g``) written for that batch (e.g. with per-row parameters). ``Batched`` uses it;
            without it ``Batched`` stacks the ``y0`` of the ``prob_func`` problems, which must then
            differ in ``y0`` only. ``Serial`` uses ``prob_func`` when given, else ``batch_prob_func``
            with one index.
        batch_output_func: ``batch_output_func(solution, indices) -> Tensor`` of shape
            ``(len(indices), ...)``, the outputs of a batched solve at once (its ``ys`` has shape
            ``(len(ts), len(indices), ...)``): ``Batched`` uses it instead of calling ``output_func``
            on each row (which costs a Python call per trajectory). ``Serial`` uses ``output_func``
            when given, else ``batch_output_func`` on a batch of one.

    Give the per-trajectory and the batched forms the same meaning: which one runs depends on the
    backend.

    ``ensemble.solve(algorithm, trajectories=N, backend=..., **options)`` (or
    ``solve_ensemble(ensemble, algorithm, ...)``) runs it.
    """

    problem: Any
    prob_func: Callable[[Any, int, int], Any] | None = None
    output_func: Callable[[Any, int], Tensor] | None = None
    reduction: Reduction | None = None
    seed: int | None = 0
    batch_prob_func: Callable[[Any, Sequence[int], Sequence[int]], Any] | None = None
    batch_output_func: Callable[[Any, Sequence[int]], Tensor] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.problem, ENSEMBLE_PROBLEM_TYPES):
            accepted = " or ".join(t.__name__ for t in ENSEMBLE_PROBLEM_TYPES)
            raise TypeError(f"EnsembleProblem: problem must be an {accepted}, "
                            f"got {type(self.problem).__name__}")
        for name, call in (("prob_func", "prob_func(problem, i, seed)"),
                           ("output_func", "output_func(solution, i)"),
                           ("batch_prob_func", "batch_prob_func(problem, indices, seeds)"),
                           ("batch_output_func", "batch_output_func(solution, indices)")):
            fn = getattr(self, name)
            if fn is None:
                continue
            if not callable(fn):
                raise TypeError(f"EnsembleProblem: {name} must be callable as {call} or None, "
                                f"got {type(fn).__name__}")
            check_signature(name, fn, call)
        if self.reduction is not None and not isinstance(self.reduction, Reduction):
            if isinstance(self.reduction, type) and issubclass(self.reduction, Reduction):
                raise TypeError(f"reduction: pass an instance: {self.reduction.__name__}() rather than "
                                f"{self.reduction.__name__}")
            raise TypeError("reduction must be None or a solvers.ensemble Reduction (e.g. "
                            f"MonteCarloStatistics()), got {type(self.reduction).__name__}")
        seed = self.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be an int >= 0 or None, got {self.seed!r}")
        object.__setattr__(self, "seed", int(seed))

    @property
    def is_sde(self) -> bool:
        return isinstance(self.problem, SDEProblem)

    def replace(self, **changes: Any) -> EnsembleProblem:
        """A copy with some fields changed (e.g. another ``seed``)."""
        fields = dict(problem=self.problem, prob_func=self.prob_func, output_func=self.output_func,
                      reduction=self.reduction, seed=self.seed, batch_prob_func=self.batch_prob_func,
                      batch_output_func=self.batch_output_func)
        fields.update(changes)
        return EnsembleProblem(**fields)

    def trajectory_seed(self, i: int) -> int:
        """The seed of trajectory ``i`` (``solvers.ensemble.noise.trajectory_seed(seed, i)``)."""
        return trajectory_seed(self.seed, i)

    # -- the problems of trajectories -------------------------------------------------------------------
    def trajectory_problem(self, i: int) -> tuple[Any, bool]:
        """The problem a serial solve of trajectory ``i`` uses, and whether it is a batch of one (built by
        ``batch_prob_func``; its row 0 is the trajectory)."""
        s = self.trajectory_seed(i)
        if self.prob_func is not None:
            return self._checked(self.prob_func(self.problem, i, s), f"prob_func(problem, {i}, seed)"), False
        if self.batch_prob_func is not None:
            p = self._checked(self.batch_prob_func(self.problem, [i], [s]),
                              f"batch_prob_func(problem, [{i}], seeds)")
            _check_rows(p, 1, "batch_prob_func")
            return p, True
        return self.problem, False

    def batch_problem(self, indices: Sequence[int], seeds: Sequence[int]) -> Any:
        """One problem for the trajectories ``indices``: ``y0`` of shape ``(len(indices), *y0.shape)``."""
        B = len(indices)
        if self.batch_prob_func is not None:
            p = self._checked(self.batch_prob_func(self.problem, list(indices), list(seeds)),
                              "batch_prob_func(problem, indices, seeds)")
            _check_rows(p, B, "batch_prob_func")
            return p
        if self.prob_func is None:
            y0 = self.problem.y0
            return self.problem.replace(y0=y0.unsqueeze(0).expand(B, *y0.shape).clone(), analytic=None)
        probs = [self._checked(self.prob_func(self.problem, i, s), f"prob_func(problem, {i}, seed)")
                 for i, s in zip(indices, seeds)]
        first = probs[0]
        fields = _BATCH_FIELDS[type(first)]
        for i, p in zip(indices[1:], probs[1:]):
            if type(p) is not type(first):
                raise ValueError(f"Batched: prob_func returned a {type(p).__name__} for trajectory {i} but a "
                                 f"{type(first).__name__} for trajectory {indices[0]}")
            for name in fields:
                a, b = getattr(first, name), getattr(p, name)
                if not (a is b or (name in ("tspan", "noise", "sde_type", "brownian_size") and a == b)):
                    raise ValueError(
                        f"Batched stacks trajectories into one solve, which needs problems that differ in y0 "
                        f"only; prob_func gave trajectory {i} another {name} than trajectory {indices[0]}. "
                        f"Give EnsembleProblem a batch_prob_func(problem, indices, seeds) returning one "
                        f"batched problem (its {name} written for the batch, e.g. with per-row parameters), "
                        f"or use Serial() / Distributed(inner=Serial())")
            if p.y0.shape != first.y0.shape or p.y0.dtype != first.y0.dtype or p.y0.device != first.y0.device:
                raise ValueError(
                    f"Batched needs trajectories of equal shapes: prob_func gave y0 of shape "
                    f"{tuple(p.y0.shape)} ({p.y0.dtype}, {p.y0.device}) for trajectory {i} and "
                    f"{tuple(first.y0.shape)} ({first.y0.dtype}, {first.y0.device}) for trajectory "
                    f"{indices[0]}; use Serial() for trajectories of different shapes")
        return first.replace(y0=torch.stack([p.y0 for p in probs]), analytic=None)

    def _checked(self, p: Any, call: str) -> Any:
        if not isinstance(p, type(self.problem)):
            raise TypeError(f"{call} must return a {type(self.problem).__name__}, got {type(p).__name__}")
        return p

    def output(self, solution: Any, i: int) -> Tensor:
        """What is kept of trajectory ``i``."""
        if self.output_func is None:
            return solution.ys
        out = self.output_func(solution, i)
        if isinstance(out, numbers.Number) and not isinstance(out, bool):
            out = torch.as_tensor(out)
        if not isinstance(out, Tensor):
            raise TypeError(f"output_func must return a Tensor (or a number), got {type(out).__name__} "
                            f"for trajectory {i}")
        return out

    def batch_output(self, solution: Any, indices: Sequence[int]) -> Tensor:
        """What is kept of the trajectories ``indices`` of a batched solution: ``(len(indices), ...)``."""
        B = len(indices)
        if self.batch_output_func is not None:
            out = self.batch_output_func(solution, list(indices))
            if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != B:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"batch_output_func must return a Tensor with one row per trajectory, shape "
                                 f"({B}, ...), got {got}")
            return out
        if self.output_func is None:
            return solution.ys.movedim(1, 0)
        from .runner import row_solution

        return torch.stack([self.output(row_solution(solution, b), i) for b, i in enumerate(indices)])

    def solve(self, algorithm: Any, **options: Any) -> Any:
        """``solve_ensemble(self, algorithm, **options)``."""
        from .solve import solve_ensemble

        return solve_ensemble(self, algorithm, **options)


def _check_rows(p: Any, B: int, name: str) -> None:
    y0 = p.y0
    if y0.dim() < 2 or y0.shape[0] != B:
        raise ValueError(f"{name} must return a problem whose y0 has one row per trajectory: shape "
                         f"({B}, *shape) for {B} trajectories, got {tuple(y0.shape)}")
