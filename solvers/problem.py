"""Problem definitions: what to solve, independent of how.

Problems are frozen dataclasses validated when built: a bad problem raises ``ValueError`` or
``TypeError`` before any solver sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from ._checks import check_finite, check_floating, check_span


@dataclass(frozen=True)
class ODEProblem:
    """The initial value problem ``dy/dt = f(t, y)``, ``y(t0) = y0`` on ``tspan = (t0, t1)``.

    Args:
        f: vector field ``f(t, y) -> dy/dt``; ``t`` is a 0-d float64 tensor, ``y`` has the shape,
            dtype and device of ``y0`` (torchdiffeq's convention). Batched states ``(*batch, d)``
            share one step size.
        y0: initial state, a floating tensor with at least one dimension.
        tspan: ``(t0, t1)``; ``t1 < t0`` integrates backwards in time.
        analytic: exact solution ``analytic(t) -> y(t)`` where known (reference problems).
        name: optional label used in tables and plots.
    """

    f: Callable[[Tensor, Tensor], Tensor]
    y0: Tensor
    tspan: tuple[float, float]
    analytic: Callable[[Tensor], Tensor] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not callable(self.f):
            raise TypeError(f"f must be callable, got {type(self.f).__name__}")
        check_floating("y0", self.y0)
        if self.y0.dim() == 0:
            raise ValueError("y0 must have at least one dimension (shape (*batch, d)); got a 0-d tensor")
        if self.y0.numel() == 0:
            raise ValueError(f"y0 is empty (shape {tuple(self.y0.shape)})")
        check_finite("y0", self.y0)
        object.__setattr__(self, "tspan", check_span(self.tspan))
        if self.analytic is not None and not callable(self.analytic):
            raise TypeError("analytic must be callable or None")

    @property
    def t0(self) -> float:
        return self.tspan[0]

    @property
    def t1(self) -> float:
        return self.tspan[1]

    def replace(self, **changes) -> ODEProblem:
        """A copy with some fields changed (e.g. another ``y0`` or ``tspan``)."""
        fields = dict(f=self.f, y0=self.y0, tspan=self.tspan, analytic=self.analytic, name=self.name)
        fields.update(changes)
        return ODEProblem(**fields)
