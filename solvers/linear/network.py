"""A light fully convolutional network for the deep conjugate direction method (DCDM).

Kaneda et al. (ICML 2023, Sec. 4.2) use a 3D CNN of ~1e5 parameters with residual blocks at full and half
resolution. On a CPU that costs more per iteration than CG saves, so this network does almost all of its
work at coarse resolution, in the shape of a multigrid V-cycle:

* full resolution ``N``: only cheap ops: average pooling of the residual and the geometry, one learned
  ``3^d`` stencil on the residual (a smoother-like term, applied as shifted additions) and the upsampled
  coarse output;
* ``N/2``: one convolution in, one out (``c_half`` channels);
* ``N/4`` and coarser, down to 2 cells per side: a residual block *shared by every level* (encoder and
  decoder), fed with the pooled geometry at each level. The unscaled Poisson operator is self-similar
  under coarsening (``A_{2h} ~ A_h / 4`` up to scale), so one block serves every level and the depth grows
  with the grid: weights trained at 32^3 run unchanged at 64^3 with one more level.

Inputs: the residual scattered on the grid and scaled to unit RMS over the fluid cells (the DCDM loop
passes ``r / ||r||``; the output scale does not matter because of the exact line search), and two
geometry channels, fluid and Dirichlet (air) indicators, so one network serves many geometries (as in Lan
et al., ICML 2024). Everything outside the array is read as solid wall.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DCDMNet", "GridModel"]


def _conv(dim: int, cin: int, cout: int) -> nn.Module:
    return (nn.Conv2d if dim == 2 else nn.Conv3d)(cin, cout, 3, padding=1)


def _pool(x: Tensor, dim: int) -> Tensor:
    return F.avg_pool2d(x, 2) if dim == 2 else F.avg_pool3d(x, 2)


def _up(x: Tensor, size: tuple[int, ...]) -> Tensor:
    return F.interpolate(x, size=size, mode="nearest")


def _up_smooth(x: Tensor, size: tuple[int, ...]) -> Tensor:
    """(Bi/tri)linear prolongation: smooth corrections, as multigrid interpolation."""
    return F.interpolate(x, size=size, mode="bilinear" if x.dim() == 4 else "trilinear", align_corners=False)


class DCDMNet(nn.Module):
    """``q = f(r; geometry)``, a V-cycle-shaped CNN (see the module docstring).

    Args:
        dim: 2 or 3.
        channels: width of the shared coarse block (levels ``N/8`` and coarser).
        c_quarter: width at quarter resolution ``N/4``.
        min_size: coarsest level side (levels stop when a side would drop below it).

    ``forward(r, geom)`` takes ``r`` of shape ``(B, *shape)`` and ``geom`` of shape ``(2, *shape)`` or
    ``(B, 2, *shape)`` and returns ``(B, *shape)``. Sides need not be powers of two: the input is padded
    with solid cells to a multiple of ``2^(levels + 2)``.
    """

    def __init__(self, dim: int = 3, channels: int = 16, c_quarter: int = 8, min_size: int = 2):
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim}")
        self.dim, self.channels, self.c_quarter, self.min_size = dim, channels, c_quarter, min_size
        c, cq = channels, c_quarter
        # learned 2d+1-point stencils on the residual at N and N/2 (smoother-like terms; centre starts at 1)
        init = torch.zeros(2, 2 * dim + 1)
        init[:, 0] = 1.0
        self.stencils = nn.Parameter(init)
        self.gains = nn.Parameter(torch.ones(2))                    # weights of the coarser corrections
        self.q_in = _conv(dim, 3, cq)                               # [r, fluid, air] at N/4
        self.to_coarse = _conv(dim, cq + 2, c)                      # N/4 -> N/8 entry
        self.enc = nn.ModuleList([_conv(dim, c + 2, c), _conv(dim, c, c)])     # shared down block
        self.dec = nn.ModuleList([_conv(dim, 2 * c + 2, c), _conv(dim, c, c)])  # shared up block
        self.from_coarse = _conv(dim, c + cq + 2, cq)               # back at N/4
        self.q_out = _conv(dim, cq, 1)
        self.act = nn.ELU()

    def levels(self, shape: tuple[int, ...]) -> int:
        """Number of shared levels (``N/8`` and coarser) for a grid of this shape."""
        m = min(shape) / 8
        k = 0
        while m >= self.min_size:
            k += 1
            m /= 2
        return max(k, 1)

    def forward(self, r: Tensor, geom: Tensor) -> Tensor:
        d = self.dim
        if geom.dim() == d + 1:
            geom = geom.unsqueeze(0).expand(r.shape[0], *geom.shape)
        shape = tuple(r.shape[1:])
        L = self.levels(shape)
        mult = 2 ** (L + 2)
        padded = tuple(math.ceil(s / mult) * mult for s in shape)
        pads: list[int] = []
        for s, p in zip(reversed(shape), reversed(padded)):
            pads += [0, p - s]
        x0 = F.pad(torch.cat([r.unsqueeze(1), geom], dim=1), pads)
        x1 = _pool(x0, d)
        x2 = _pool(x1, d)
        e2 = self.act(self.q_in(x2))
        g = _pool(x2[:, 1:], d)
        h = self.act(self.to_coarse(torch.cat([_pool(e2, d), g], dim=1)))
        skips, geoms = [], []
        for lvl in range(L):  # shared encoder block at N/8, N/16, ...
            h = h + self.enc[1](self.act(self.enc[0](torch.cat([h, g], dim=1))))
            skips.append(h)
            geoms.append(g)
            if lvl < L - 1:
                h, g = _pool(h, d), _pool(g, d)
        u = torch.zeros_like(skips[-1])
        for lvl in reversed(range(L)):  # shared decoder block, coarse to fine
            s, gl = skips[lvl], geoms[lvl]
            if u.shape[2:] != s.shape[2:]:
                u = _up(u, tuple(s.shape[2:]))
            u = u + self.dec[1](self.act(self.dec[0](torch.cat([s, u, gl], dim=1))))
        u = _up(u, tuple(e2.shape[2:]))
        o2 = self.q_out(self.act(self.from_coarse(torch.cat([u, e2, x2[:, 1:]], dim=1))))[:, 0]
        o1 = self._stencil(x1[:, 0], self.stencils[1]) + self.gains[1] * _up_smooth(o2[:, None], x1.shape[2:])[:, 0]
        o1 = o1 * x1[:, 1]
        q = self._stencil(x0[:, 0], self.stencils[0]) + self.gains[0] * _up_smooth(o1[:, None], padded)[:, 0]
        q = q * x0[:, 1]  # zero outside the fluid
        return q[(slice(None),) + tuple(slice(0, s) for s in shape)]

    def _stencil(self, r: Tensor, w: Tensor) -> Tensor:
        """``w[0] r + sum_axes (w[2a+1] r(x - e_a) + w[2a+2] r(x + e_a))`` with zero outside."""
        d = self.dim
        out = w[0] * r
        for a in range(d):
            ax = a + 1
            n = r.shape[ax]
            z = torch.zeros_like(r.narrow(ax, 0, 1))
            minus = torch.cat([z, r.narrow(ax, 0, n - 1)], dim=ax)
            plus = torch.cat([r.narrow(ax, 1, n - 1), z], dim=ax)
            out = out + w[2 * a + 1] * minus + w[2 * a + 2] * plus
        return out


class GridModel:
    """Wraps a grid network as the vector map ``r -> q`` that :class:`~solvers.linear.DCDM` calls.

    Scatters the unknowns on the grid, scales them to unit RMS, runs the network without gradients in its
    own dtype, and gathers the fluid cells back in the residual's dtype.
    """

    def __init__(self, net: nn.Module, grid, dtype: torch.dtype | None = None):
        self.net, self.grid = net, grid
        p = next(net.parameters())
        self.dtype = dtype or p.dtype
        self.device = p.device
        self.geom = grid.geometry(dtype=self.dtype, device=self.device)

    def __call__(self, r: Tensor) -> Tensor:
        with torch.no_grad():
            v = r.to(device=self.device, dtype=self.dtype)
            v = v * (math.sqrt(v.numel()) / torch.linalg.vector_norm(v).clamp_min(1e-30))
            q = self.net(self.grid.to_grid(v).unsqueeze(0), self.geom)[0]
            return self.grid.from_grid(q).to(device=r.device, dtype=r.dtype)


def as_vector_model(model: object, grid) -> Callable[[Tensor], Tensor]:
    """A DCDM model as a map on vectors: networks need the problem's grid; callables pass through."""
    if isinstance(model, nn.Module) and hasattr(model, "dim") and hasattr(model, "levels"):
        if grid is None:
            raise ValueError("a grid network needs the problem's grid: build the problem with "
                             "solvers.linear.poisson_problem (LinearProblem(..., grid=...))")
        return GridModel(model, grid)
    if callable(model):
        return model
    raise TypeError(f"model must be a DCDMNet, a callable r -> q or None, got {type(model).__name__}")
