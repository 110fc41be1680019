"""The result of a linear solve."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..solution import RetcodeResult, ReturnCode, Stats


@dataclass
class LinearSolution(RetcodeResult):
    """Solution of ``A x = b``.

    Attributes:
        x: the final iterate (dtype/device of ``b``).
        retcode: ``ReturnCode`` (``SUCCESS``, ``NOT_CONVERGED``, ``INDEFINITE``,
            ``BREAKDOWN``).
        stats: ``Stats`` with ``nfe`` = products with ``A`` and, in ``extra``:
            ``iterations``, ``residuals`` (``||r_k|| / ||b||`` for k = 0..iterations, float64 list),
            ``setup_time``, ``solve_time`` (seconds), ``precond_applies`` and solver-specific counters.
        problem, algorithm: what was solved and how.
    """

    x: Tensor
    retcode: ReturnCode
    stats: Stats = field(default_factory=Stats)
    problem: Any = None
    algorithm: Any = None


    @property
    def iterations(self) -> int:
        return int(self.stats.extra.get("iterations", 0))

    @property
    def residuals(self) -> list[float]:
        """Relative residual history ``||r_k|| / ||b||``."""
        return list(self.stats.extra.get("residuals", []))

    def __repr__(self) -> str:
        res = self.residuals[-1] if self.residuals else float("nan")
        return (f"LinearSolution(retcode={self.retcode.name}, iterations={self.iterations}, "
                f"relative_residual={res:.3g})")
