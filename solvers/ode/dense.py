"""Dense output: evaluate the solution anywhere inside the integrated span.

On a step from ``t_n`` with size ``h`` the solution is the polynomial

    y(t_n + theta h) = y_n + h * sum_i b_i(theta) k_i,     0 <= theta <= 1,

whose weights ``b_i(theta)`` come from the tableau (``ButcherTableau.dense_poly``): the method's own
free interpolant (Tsit5, order 4), Shampine's quartic through a midpoint value (Dopri5, order 4), or
the cubic Hermite interpolant (order 3) for the other methods. Evaluation is differentiable in the
stored states and stages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class DenseOutput:
    """Piecewise polynomial interpolant over the accepted steps of a solve."""

    def __init__(self, poly: Tensor, shape: torch.Size, direction: float):
        self.poly = poly  # (stages, degree + 1), ascending powers of theta
        self.shape = shape
        self.direction = direction
        self.t0: list[float] = []
        self.dt: list[float] = []
        self.y0: list[Tensor] = []
        self.k: list[Tensor] = []
        #: Per-step weight polynomials where a step's differ from ``poly`` (composite methods).
        self.polys: dict[int, Tensor] = {}
        #: Where the covered span ends when a terminal event cut the last step short.
        self.end: float | None = None

    def append(self, t0: float, dt: float, y0: Tensor, k: Tensor | tuple[Tensor, Tensor]) -> None:
        """Add one accepted step; ``k`` is its stages, or ``(poly, stages)`` when the step's weight
        polynomials are not ``self.poly`` (a composite method's other sub-method)."""
        if isinstance(k, tuple):
            poly, k = k
            if poly is not self.poly:
                self.polys[len(self.t0)] = poly
        self.t0.append(t0)
        self.dt.append(dt)
        self.y0.append(y0)
        self.k.append(k)

    def __len__(self) -> int:
        return len(self.t0)

    @property
    def span(self) -> tuple[float, float]:
        if not self.t0:
            raise ValueError("no step has been taken yet")
        return self.t0[0], (self.t0[-1] + self.dt[-1]) if self.end is None else self.end

    @staticmethod
    def evaluate_step(poly: Tensor, y0: Tensor, k: Tensor, dt: float, thetas: Sequence[float]) -> Tensor:
        """Values at ``thetas`` inside one step: shape ``(len(thetas), y0.numel())``."""
        th = torch.as_tensor(list(thetas), dtype=poly.dtype, device=poly.device)
        powers = th[:, None] ** torch.arange(poly.shape[1], device=poly.device, dtype=poly.dtype)
        weights = powers @ poly.T  # (m, stages)
        return y0 + dt * (weights @ k)

    def __call__(self, t: float | Tensor) -> Tensor:
        """``y(t)`` for a scalar ``t`` (shape of y0) or a 1-D tensor of times (``(len(t), *shape)``)."""
        scalar = not isinstance(t, Tensor) or t.dim() == 0
        ts = torch.as_tensor(t, dtype=torch.float64).reshape(-1).cpu()
        if not bool(torch.isfinite(ts).all()):
            raise ValueError("dense output times must be finite")
        a, b = self.span
        lo, hi = min(a, b), max(a, b)
        tol = 1e-12 * max(1.0, abs(lo), abs(hi))
        if float(ts.min()) < lo - tol or float(ts.max()) > hi + tol:
            raise ValueError(f"dense output requested outside the integrated span [{lo}, {hi}]")
        starts = torch.tensor(self.t0, dtype=torch.float64) * self.direction
        idx = torch.searchsorted(starts, ts * self.direction, right=True) - 1
        idx = idx.clamp(0, len(self.t0) - 1)
        out = []
        for j, i in zip(range(len(ts)), idx.tolist()):
            theta = (float(ts[j]) - self.t0[i]) / self.dt[i]
            poly = self.polys.get(i, self.poly)
            out.append(self.evaluate_step(poly, self.y0[i], self.k[i], self.dt[i], [theta])[0])
        ys = torch.stack(out).view(len(ts), *self.shape)
        return ys[0] if scalar else ys
