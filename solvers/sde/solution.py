"""The SDE solution: a ``Solution`` that carries its noise."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..solution import Solution


class SDESolution(Solution):
    """An SDE solution: ``Solution`` plus the noise.

    Extra attributes: ``ws`` (``W(t) - W(t0)`` at ``ts`` when solved with ``save_noise=True``),
    ``brownian`` (the path used: a ``GridIncrements`` or an ``IntervalPath``), ``seed``.
    ``stats.nge`` counts diffusion evaluations. There is no dense output between steps.
    """

    def __init__(self, *args: Any, ws: Tensor | None = None, brownian: Any = None, seed: int | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ws = ws
        self.brownian = brownian
        self.seed = seed

    def __call__(self, t: float | Tensor) -> Tensor:
        raise ValueError("SDE solutions have no dense output: pass the times you need as saveat=")
