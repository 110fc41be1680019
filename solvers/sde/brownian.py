"""Brownian paths for the SDE solvers.

Two sources of Brownian increments, behind one small interface ``path(ta, tb, return_U=False)``:

* ``IntervalPath`` wraps ``torchsde.BrownianInterval`` (Kidger et al., "Efficient and accurate
  gradients for neural SDEs", NeurIPS 2021). It can be queried on any interval, in any order, and
  always returns values of the *same* path: a rejected adaptive step asks again for a shorter
  interval and gets the Brownian-bridge-consistent increment. This is what adaptive solves use.
* ``GridIncrements`` draws all the increments of a fixed grid up front with one ``randn``
  call (no tree, no cache, no bridge sampling). Fixed-step solves use it: they never revisit an
  interval, so they should not pay for a structure that only rejected steps need.

With ``return_U=True`` both also return the space-time integral ``U = int_ta^tb (W_s - W_ta) ds``
(``= I_(1,0)`` of Kloeden & Platen), which the order-1.5 additive-noise method SRA1 needs. Given
the increment ``dW`` over a step ``h``, ``U = h (dW / 2 + H)`` where the space-time Levy area
``H ~ N(0, h / 12)`` is independent of ``dW`` (Foster, Lyons & Oberhauser 2020).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..stepping.loop import step_grid


def default_seed(seed: int | None) -> int:
    """``seed`` itself, or one drawn from torch's global generator (so ``torch.manual_seed`` makes
    every solve repeatable)."""
    if seed is not None:
        return int(seed)
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


class IntervalPath:
    """A ``torchsde.BrownianInterval`` on ``[t0, t1]`` with increments of shape ``size``.

    Args:
        t0, t1: the time span.
        size: shape of one increment (``(*batch, m)``).
        dtype, device: of the increments.
        seed: entropy of the path (``None``: drawn from torch's global generator).
        levy_area: also sample the space-time Levy area (needed for ``return_U=True``).
        dt: expected step size (lets torchsde lay out its tree for that step; optional).
    """

    def __init__(self, t0: float, t1: float, size: Sequence[int], dtype: torch.dtype,
                 device: torch.device | str, seed: int | None = None, levy_area: bool = False,
                 dt: float | None = None):
        import torchsde

        self.seed = default_seed(seed)
        self.t0, self.t1 = float(t0), float(t1)
        kwargs = dict(size=tuple(size), dtype=dtype, device=device, entropy=self.seed,
                      levy_area_approximation="space-time" if levy_area else "none")
        if dt is not None:
            kwargs["dt"] = float(dt)
        self.bm = torchsde.BrownianInterval(self.t0, self.t1, **kwargs)
        self.levy_area = levy_area

    def __call__(self, ta: float, tb: float, return_U: bool = False):
        if return_U and not self.levy_area:
            raise ValueError("this path was built without levy_area=True; it cannot return U")
        return self.bm(ta, tb, return_U=return_U)

    def W(self, t: float) -> Tensor:
        """``W(t) - W(t0)``."""
        return self.bm(self.t0, float(t))


class GridIncrements:
    """Increments of a Brownian path on a fixed grid, drawn all at once.

    ``dW[i] = sqrt(h_i) Z_i`` with ``Z`` standard normal from a seeded ``torch.Generator``; with
    ``levy_area=True`` also ``U[i] = h_i (dW[i] / 2 + sqrt(h_i / 12) Z'_i)``.
    """

    def __init__(self, grid: Sequence[float], size: Sequence[int], dtype: torch.dtype,
                 device: torch.device | str, seed: int | None = None, levy_area: bool = False):
        self.seed = default_seed(seed)
        self.grid = list(map(float, grid))
        n = len(self.grid) - 1
        device = torch.device(device)
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed)
        size = tuple(size)
        h = torch.tensor([b - a for a, b in zip(self.grid[:-1], self.grid[1:])], dtype=dtype, device=device)
        shape_h = (n,) + (1,) * len(size)
        z = torch.randn((n, *size), generator=gen, dtype=dtype, device=device)
        self.dW = z.mul_(h.sqrt().view(shape_h))
        self.U = None
        if levy_area:
            zh = torch.randn((n, *size), generator=gen, dtype=dtype, device=device)
            H = zh.mul_((h / 12).sqrt().view(shape_h))
            self.U = h.view(shape_h) * (0.5 * self.dW + H)
        self.levy_area = levy_area

    def __len__(self) -> int:
        return len(self.grid) - 1

    def __call__(self, ta: float, tb: float, return_U: bool = False):
        """The increment over ``[ta, tb]``, both grid points (sums of the grid's increments)."""
        index = self.__dict__.get("_index")
        if index is None:
            index = self._index = {t: i for i, t in enumerate(self.grid)}
            # One view per grid step, made in one call: a fixed-step solve asks for each in turn.
            self._steps = self.dW.unbind(0)
        try:
            i, j = index[ta], index[tb]
        except KeyError as err:
            raise ValueError(f"GridIncrements can only be queried between its grid points; got "
                             f"[{ta}, {tb}]") from err
        if return_U and self.U is None:
            raise ValueError("these increments were drawn without levy_area=True; they cannot return U")
        if j == i + 1 and not return_U:  # one grid step: the hot path of a fixed-step solve
            return self._steps[i]
        if j == i + 1:
            return self.dW[i], self.U[i]
        dW = self.dW[i:j].sum(0)
        if not return_U:
            return dW
        return dW, self._aggregate_U(i, j)

    def _aggregate_U(self, i: int, j: int) -> Tensor:
        # U over [a, c] = sum_k (U_k + h_k (W(t_k) - W(a))): exact, by additivity of the integral.
        h = torch.tensor([self.grid[k + 1] - self.grid[k] for k in range(i, j)], dtype=self.dW.dtype,
                         device=self.dW.device).view((j - i,) + (1,) * (self.dW.dim() - 1))
        W_before = torch.cat([torch.zeros_like(self.dW[:1]), self.dW[i:j - 1].cumsum(0)])
        return (self.U[i:j] + h * W_before).sum(0)

    def coarsen(self, factor: int) -> GridIncrements:
        """The same path on every ``factor``-th grid point (exact increments and ``U``): the
        standard way to measure strong convergence, every step size on one Brownian path."""
        factor = int(factor)
        n = len(self)
        if factor < 1 or n % factor:
            raise ValueError(f"factor must divide the number of steps {n}, got {factor}")
        out = GridIncrements.__new__(GridIncrements)
        out.seed = self.seed
        out.grid = self.grid[::factor]
        out.levy_area = self.levy_area
        out.dW = self.dW.view(n // factor, factor, *self.dW.shape[1:]).sum(1)
        out.U = None
        if self.U is not None:
            out.U = torch.stack([self._aggregate_U(k, k + factor) for k in range(0, n, factor)])
        return out

    def W(self) -> Tensor:
        """``W(grid[i]) - W(grid[0])`` for every grid point, shape ``(len(grid), *size)``."""
        return torch.cat([torch.zeros_like(self.dW[:1]), self.dW.cumsum(0)])


def fixed_grid(t0: float, t1: float, dt: float, stops: Sequence[float] = ()) -> list[float]:
    """The grid ``t0 + i dt`` (the last step shortened to land on ``t1``) merged with ``stops``: the
    step loop's own grid (``solvers.stepping.loop.step_grid``), so increments drawn on it match a
    fixed-step solve's steps exactly."""
    return step_grid(t0, t1, dt, list(stops))
