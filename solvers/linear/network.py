"""A light fully convolutional network for the deep conjugate direction method (DCDM).

Kaneda et al. (ICML 2023, Sec. 4.2) use a nonlinear 3D CNN of ~1e5 parameters with residual blocks at full
and half resolution. Two things change here, both measured on this project's CPU:

* **Cost.** A network of the paper's size costs more per iteration than CG saves on a CPU, so this
  one does almost all its work at coarse resolution, in the shape of a multilevel (BPX-like)
  preconditioner: at full and half resolution only cheap learned stencils and smoothed transfers
  (``R = pool S`` with a learned separable symmetric filter ``S``, started at full weighting);
  convolutions start at ``N/4``; one encoder convolution is *shared by every coarser level*, so the
  depth grows with the grid and weights trained at 32^3 run unchanged at 64^3 with one more level (the
  unscaled Poisson operator is self-similar under coarsening).
* **Symmetry.** With a half-trained nonlinear network, DCDM (which A-orthogonalises against only the
  last ``s`` directions) lost to plain CG by 4-7x in iterations in our runs: the iteration is no longer
  a Krylov method, so a mediocre direction costs conjugacy. This network is *linear in the residual and
  symmetric positive semi-definite* for every geometry,

      f(r) = M r,  M = symmetric two-level cycle: nu damped-Jacobi sweeps, then B, then nu sweeps,
      B = K_0 + R^T K_1 R + R^T E^T E R   (the learned part),

  where ``R`` is the smoothed 2x restriction, ``K_0``, ``K_1`` are symmetric diagonally dominant (hence
  SPD) learned stencils, and ``E`` is a linear encoder ``r -> (h_2, h_3, ...)`` through the coarse
  levels whose features are gated by sigmoid functions of the *geometry* (fluid / Dirichlet indicators,
  pooled), not of ``r``. ``E^T`` is applied explicitly (transposed convolutions with the same weights),
  so ``f`` is SPD by construction and DCDM with it is PCG with a learned preconditioner: it converges for
  any weights, and training only makes it faster. The Jacobi sweeps use the pressure operator read off
  the geometry channels (the smoke-domain matrix exactly); ``smoothing = 0`` leaves the purely additive
  learned part. The geometry enters nonlinearly, so one network adapts
  to obstacles and open faces (as the mask input of Lan et al., ICML 2024).

Inputs: the residual on the grid scaled to unit RMS over the fluid cells (the output scale does not
matter because of the exact line search) and two geometry channels; outside the array is read as solid.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DCDMNet", "GridModel"]


def _axis_pairs(u: Tensor, first_axis: int, last_axis: int | None = None,
                weights: Tensor | None = None) -> Tensor:
    """``sum_ax w_ax (u(x - e_ax) + u(x + e_ax))`` over axes ``first..last`` with zeros outside."""
    last = u.dim() - 1 if last_axis is None else last_axis
    if weights is None:  # one buffer, in-place slice additions (the cheap path, used at full resolution)
        out = torch.zeros_like(u)
        for ax in range(first_axis, last + 1):
            n = u.shape[ax]
            out.narrow(ax, 1, n - 1).add_(u.narrow(ax, 0, n - 1))
            out.narrow(ax, 0, n - 1).add_(u.narrow(ax, 1, n - 1))
        return out
    out = None
    for k, ax in enumerate(range(first_axis, last + 1)):
        n = u.shape[ax]
        t = torch.zeros_like(u)
        t.narrow(ax, 1, n - 1).add_(u.narrow(ax, 0, n - 1))
        t.narrow(ax, 0, n - 1).add_(u.narrow(ax, 1, n - 1))
        t = weights[k] * t
        out = t if out is None else out + t
    return out


def _pool(x: Tensor, dim: int) -> Tensor:
    return F.avg_pool2d(x, 2) if dim == 2 else F.avg_pool3d(x, 2)


def _pool_T(x: Tensor, dim: int) -> Tensor:
    """Adjoint of 2x average pooling: copy to the 2^d children, divided by 2^d."""
    return F.interpolate(x, scale_factor=2, mode="nearest") / (2 ** dim)


def _conv(x: Tensor, w: Tensor, dim: int) -> Tensor:
    return (F.conv2d if dim == 2 else F.conv3d)(x, w, padding=1)


def _conv_T(x: Tensor, w: Tensor, dim: int) -> Tensor:
    """Adjoint of ``_conv`` (zero padding, stride 1) with the same weight."""
    return (F.conv_transpose2d if dim == 2 else F.conv_transpose3d)(x, w, padding=1)


class DCDMNet(nn.Module):
    """``q = f(r; geometry)``, linear and SPD in ``r`` (see the module docstring).

    Args:
        dim: 2 or 3.
        channels: feature channels of the coarse encoder (levels ``N/4`` and coarser).
        min_size: coarsest level side.

    ``forward(r, geom)`` takes ``r`` of shape ``(B, *shape)`` and ``geom`` of shape ``(2, *shape)`` or
    ``(B, 2, *shape)`` and returns ``(B, *shape)``. Sides need not be powers of two: the input is padded
    with solid cells to a multiple of ``2^(levels + 1)``.
    """

    def __init__(self, dim: int = 3, channels: int = 16, min_size: int = 2, c_quarter: int | None = None,
                 smoothing: int = 2):
        super().__init__()
        self.smoothing = smoothing
        self.omega_logit = nn.Parameter(torch.tensor(math.log(2.0)))  # Jacobi weight, sigmoid -> 2/3
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim}")
        self.dim, self.channels, self.min_size = dim, channels, min_size
        self.c_quarter = c_quarter  # accepted for config compatibility; unused
        c, k = channels, (3,) * dim
        # symmetric stencils at N and N/2: centre (softplus, plus diagonal dominance) and one weight per axis
        self.stencil_centre = nn.Parameter(torch.zeros(2))
        self.stencil_axes = nn.Parameter(torch.zeros(2, dim))
        self.w_in = nn.Parameter(torch.randn(c, 1, *k) / math.sqrt(27))          # N/4 entry, 1 -> c
        self.w_shared = nn.Parameter(torch.randn(c, c, *k) / math.sqrt(27 * c) * 2.0)  # N/8 and coarser
        self.gate_in = nn.Conv2d(2, c, 3, padding=1) if dim == 2 else nn.Conv3d(2, c, 3, padding=1)
        self.gate_shared = nn.Conv2d(2, c, 3, padding=1) if dim == 2 else nn.Conv3d(2, c, 3, padding=1)
        for g in (self.gate_in, self.gate_shared):
            nn.init.zeros_(g.weight)
            nn.init.zeros_(g.bias)
        self.log_scale = nn.Parameter(torch.zeros(()))  # weight of the coarse term E^T E
        # smoothing of the two fine transfers (N -> N/2 -> N/4): per-axis symmetric 3-tap filters
        # (a, b, a), started at full weighting (1/4, 1/2, 1/4), so R = pool S and R^T = S pool^T
        self.transfer = nn.Parameter(torch.tensor([[0.5, 0.25], [0.5, 0.25]]))

    def levels(self, shape: tuple[int, ...]) -> int:
        """Number of encoder levels (``N/4`` and coarser) for a grid of this shape."""
        m = min(shape) / 4
        k = 0
        while m >= self.min_size:
            k += 1
            m /= 2
        return max(k, 1)

    def _sym_stencil(self, r: Tensor, level: int) -> Tensor:
        """``c r + sum_a w_a (r(x - e_a) + r(x + e_a))`` with ``c = softplus + 2 sum |w_a|``: SPD."""
        w = self.stencil_axes[level]
        c = F.softplus(self.stencil_centre[level] + 1.0) + 2 * w.abs().sum()
        if not torch.is_grad_enabled():  # inference: in-place slice updates with Python scalars
            out = r * float(c)
            for k in range(self.dim):
                ax, n, wk = k + 1, r.shape[k + 1], float(w[k])
                out.narrow(ax, 1, n - 1).add_(r.narrow(ax, 0, n - 1), alpha=wk)
                out.narrow(ax, 0, n - 1).add_(r.narrow(ax, 1, n - 1), alpha=wk)
            return out
        return c * r + _axis_pairs(r, first_axis=1, weights=w)

    def _smooth(self, x: Tensor, level: int) -> Tensor:
        """Separable symmetric filter ``b x + a (x(-e) + x(+e))`` along every axis (symmetric operator)."""
        b, a = self.transfer[level]
        if not torch.is_grad_enabled():  # inference: in-place slice updates with Python scalars
            bf, af = float(b), float(a)
            for ax in range(2, x.dim()):
                n = x.shape[ax]
                y = x * bf
                y.narrow(ax, 1, n - 1).add_(x.narrow(ax, 0, n - 1), alpha=af)
                y.narrow(ax, 0, n - 1).add_(x.narrow(ax, 1, n - 1), alpha=af)
                x = y
            return x
        for ax in range(2, x.dim()):
            x = b * x + a * _axis_pairs(x, first_axis=ax, last_axis=ax)
        return x

    def gates(self, geom: Tensor, L: int) -> list[Tensor]:
        """Geometry-only gates ``2 sigmoid(conv(geom_l))`` at levels N/4, N/8, ... (1 at initialisation)."""
        d = self.dim
        g = _pool(_pool(geom, d), d)
        out = [2 * torch.sigmoid(self.gate_in(g))]
        for _ in range(1, L):
            g = _pool(g, d)
            out.append(2 * torch.sigmoid(self.gate_shared(g)))
        return out

    def forward(self, r: Tensor, geom: Tensor, cache: dict | None = None) -> Tensor:
        """``f(r)``; ``cache`` (a dict kept by the caller) stores the geometry gates between calls on
        the same geometry (they do not depend on ``r``; valid only while the weights are unchanged)."""
        d = self.dim
        if geom.dim() == d + 1:
            geom = geom.unsqueeze(0)
        shape = tuple(r.shape[1:])
        L = self.levels(shape)
        mult = 2 ** (L + 1)
        padded = tuple(math.ceil(s / mult) * mult for s in shape)
        pads: list[int] = []
        for s, p in zip(reversed(shape), reversed(padded)):
            pads += [0, p - s]
        geom = F.pad(geom, pads)
        fluid = geom[:, :1]
        r0 = F.pad(r.unsqueeze(1), pads) * fluid
        if cache is not None and "gates" in cache:
            G = cache["gates"]
        else:
            G = self.gates(geom, L)
            if cache is not None:
                cache["gates"] = G
        if self.smoothing:
            q = self._two_level(r0[:, 0], lambda u: self._learned(u, G, fluid, L), geom, cache)
        else:
            q = self._learned(r0[:, 0], G, fluid, L)
        return q[(slice(None),) + tuple(slice(0, s) for s in shape)]

    def _learned(self, r: Tensor, G: list[Tensor], fluid: Tensor, L: int) -> Tensor:
        """The learned additive multilevel part ``K_0 r + R^T K_1 R r + E^T E r`` on ``(B, *padded)``."""
        d = self.dim
        r0 = r.unsqueeze(1) * fluid
        # encoder E: h_2 = G_2 conv_in(R R r), h_{l+1} = G_{l+1} conv_shared(R h_l)
        r1 = _pool(self._smooth(r0, 0), d)
        hs = [G[0] * _conv(_pool(self._smooth(r1, 1), d), self.w_in, d)]
        for lvl in range(1, L):
            hs.append(G[lvl] * _conv(_pool(hs[-1], d), self.w_shared, d))
        # E^T (Horner form): v_L = h_L, v_l = h_l + R^T conv_shared^T (G_{l+1} v_{l+1})
        v = hs[-1]
        for lvl in range(L - 2, -1, -1):
            v = hs[lvl] + _pool_T(_conv_T(G[lvl + 1] * v, self.w_shared, d), d)
        coarse = self._smooth(_pool_T(_conv_T(G[0] * v, self.w_in, d), d), 1)   # back at N/2
        mid = self._sym_stencil(r1[:, 0], 1)[:, None] + torch.exp(self.log_scale) * coarse
        q = self._sym_stencil(r0[:, 0], 0)[:, None] + self._smooth(_pool_T(mid, d), 0)
        return (q * fluid)[:, 0]

    def _laplacian(self, geom: Tensor, cache: dict | None):
        """The pressure operator read off the geometry (fluid/air channels; solid elsewhere, including
        outside the array): ``(A u)_i = n_i u_i - sum_{fluid j ~ i} u_j`` on fluid cells, ``n_i`` the
        number of non-solid neighbours. Returns ``(apply, 1 / n, n)``."""
        if cache is not None and "laplacian" in cache:
            return cache["laplacian"]
        fluid, nonsolid = geom[:, 0], geom[:, 0] + geom[:, 1]
        deg = self._shift_sum(nonsolid)
        inv = torch.where(fluid > 0, 1.0 / deg.clamp_min(1.0), torch.zeros_like(deg))

        def apply(u: Tensor) -> Tensor:
            u = u * fluid
            return fluid * (deg * u - self._shift_sum(u))
        out = (apply, inv, deg)
        if cache is not None:
            cache["laplacian"] = out
        return out

    def _two_level_inplace(self, r: Tensor, B, K: Tensor, fluid: Tensor, deg: Tensor) -> Tensor:
        """The same cycle with fewer temporaries (inference; full-resolution buffers dominate the cost)."""
        def residual(x: Tensor) -> Tensor:  # r - A x for x vanishing outside the fluid
            out = deg * x
            out.sub_(self._shift_sum(x)).mul_(fluid)
            return out.neg_().add_(r)
        x = K * r
        for _ in range(self.smoothing - 1):
            x.addcmul_(K, residual(x))
        x.add_(B(residual(x)))
        for _ in range(self.smoothing):
            x.addcmul_(K, residual(x))
        return x

    def _shift_sum(self, u: Tensor) -> Tensor:
        return _axis_pairs(u, first_axis=1)

    def _two_level(self, r: Tensor, B, geom: Tensor, cache: dict | None) -> Tensor:
        """Symmetric two-level cycle around the learned part ``B`` (= the map computed so far):
        ``x = K r``; ``x += B (r - A x)``; ``x += K (r - A x)``, with ``K = omega D^{-1}`` (damped Jacobi,
        ``omega`` learned). ``M^{-1} = K + B + K - KAB - BAK - KAK + KABAK`` is symmetric."""
        A, inv_d, deg = self._laplacian(geom, cache)
        K = torch.sigmoid(self.omega_logit) * inv_d
        if not torch.is_grad_enabled():
            return self._two_level_inplace(r, B, K, geom[:, 0], deg)
        x = K * r
        for _ in range(self.smoothing - 1):
            x = x + K * (r - A(x))
        x = x + B(r - A(x))
        for _ in range(self.smoothing):
            x = x + K * (r - A(x))
        return x


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
        self.cache: dict = {}

    def __call__(self, r: Tensor) -> Tensor:
        with torch.no_grad():
            v = r.to(device=self.device, dtype=self.dtype)
            v = v * (math.sqrt(v.numel()) / torch.linalg.vector_norm(v).clamp_min(1e-30))
            q = self.net(self.grid.to_grid(v).unsqueeze(0), self.geom, cache=self.cache)[0]
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
