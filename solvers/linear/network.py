"""The network of the deep conjugate direction method (DCDM): a learned, geometry-aware multigrid cycle.

Kaneda et al. (ICML 2023, Sec. 4.2) use a nonlinear 3D CNN of ~1e5 parameters with residual blocks at full
and half resolution. What this module builds instead, and why (both measured on this project's CPU):

* **Symmetry.** With a half-trained nonlinear network, DCDM (which A-orthogonalises against only the
  last ``s`` directions) lost to plain CG by 4-7x in iterations: the iteration is no longer a Krylov
  method, so a mediocre direction costs conjugacy. This network is *linear in the residual and
  symmetric positive definite* for every geometry and every value of its weights, so DCDM with it is
  PCG with a learned preconditioner: it converges for any weights and training only makes it faster.
* **Cost and reach.** A convolution stack sees a few cells per layer, so a network of the paper's size
  costs more per application than the CG iterations it saves on a CPU, and its reach does not grow with
  the grid. This network is a *multigrid V-cycle* whose layers are stencils read off the geometry and
  whose parameters are learned: its cost is a few fine-grid stencil applications, and its depth grows
  with the grid (one level per halving), so weights trained at 32^3 run unchanged at 64^3.

The cycle (levels ``l = 0 .. L``, ``l = 0`` the grid of the problem)::

    A_0 = the pressure operator read off the geometry channels (fluid and air indicators);
    A_{l+1} = P_0^T A_l P_0,   P_0 = piecewise-constant prolongation from 2^d-cell blocks
              (Galerkin coarsening of a 2d+1-point operator with face weights is again 2d+1-point: the
              coarse face weight is the number of fluid-fluid faces between two blocks);
    P_l = (I - w_l D_l^{-1} A_l) P_0                                 (smoothed prolongation)
    cycle_l(r):  x = 0;  nu sweeps  x += omega_{l,k} D_l^{-1} (r - A_l x),     k = 1..nu
                 x += kappa_l P_l G_{l+1} cycle_{l+1}(G_{l+1} P_l^T (r - A_l x))
                 nu sweeps in the reverse order k = nu..1
    cycle_L(r) = A_L^+ r                               (dense pseudo-inverse, <= min_size^d cells)

The learned parameters are the Jacobi weights ``omega`` (in (0, 1) by a sigmoid), the coarse-correction
weights ``kappa > 0`` and the prolongation smoothing weights ``w``, one set for the finest level, one
for the second and one shared by all coarser levels, and two small convolutional networks of the
pooled geometry that output the positive diagonal gates ``G_l = 2 sigmoid(.)`` (started at 1), which
let the coarse correction adapt to obstacles and open faces (the role of the mask input of Lan et al.,
ICML 2024). Symmetric sweeps around a positive coarse correction, with ``omega < 1`` and
``lambda(D^{-1} A) <= 2``, make the cycle SPD for every weight (Hackbusch, *Multi-Grid Methods and
Applications*, 1985; the symmetric two-grid operator is
``K + K^T - K^T A K + (I - K^T A) P B P^T (I - A K)`` with ``B`` SPD).

At initialisation (``omega`` spread over ``[0.55, 0.8]``, ``kappa = 1.5``, ``w = 2/3``, gates 1) the
cycle is a hand-set aggregation multigrid: the benchmark reports it beside the trained one, so what
training adds is measured, not assumed. The operator is read off the geometry channels (cells beyond
the array solid); ``GridModel`` also passes the grid's diagonal, so Dirichlet faces beyond the
array (``dirichlet_grid``) enter the operator too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DCDMNet", "GridModel", "StencilOperator"]


def _pool_sum(x: Tensor, dim: int) -> Tensor:
    """Sum over 2^d-cell blocks of ``(B, C, *shape)``."""
    return (F.avg_pool2d(x, 2) if dim == 2 else F.avg_pool3d(x, 2)) * (2 ** dim)


def _inject(x: Tensor, dim: int) -> Tensor:
    """``P_0``: copy every coarse cell to its 2^d children (the adjoint of ``_pool_sum``)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


class StencilOperator:
    """A symmetric ``2d+1``-point operator with variable coefficients on a grid:

        (A u)_i = D_i u_i - sum_a ( W_a[i] u_{i+e_a} + W_a[i-e_a] u_{i-e_a} ),
        D_i = delta_i + sum_a ( W_a[i] + W_a[i-e_a] ),

    with face weights ``W_a >= 0`` (``W_a[i]`` couples cell ``i`` to ``i + e_a``) and Dirichlet weights
    ``delta >= 0``: diagonally dominant, hence positive semi-definite. Fields are ``(B, 1, *shape)``.
    """

    def __init__(self, W: list[Tensor], delta: Tensor):
        self.W, self.delta, self.dim = W, delta, len(W)
        D = delta.clone()
        for a, w in enumerate(W):
            D = D + w
            D.narrow(a, 1, w.shape[a] - 1).add_(w.narrow(a, 0, w.shape[a] - 1))
        self.D = D
        self.active = (D > 0).to(D.dtype)
        self.inv_d = torch.where(D > 0, 1.0 / D.clamp_min(1e-30), torch.zeros_like(D))

    @classmethod
    def from_geometry(cls, geom: Tensor, diagonal: Tensor | None = None) -> StencilOperator:
        """The pressure operator of a ``(2, *shape)`` geometry [fluid, air]: unit weights between fluid
        cells, a Dirichlet weight per air neighbour; cells beyond the array are solid unless
        ``diagonal`` (the operator's diagonal on the grid, e.g. ``PoissonGrid.degree()``) is given: then
        the Dirichlet weights are whatever the diagonal holds beyond the fluid-fluid faces."""
        fluid, air = geom[0], geom[1]
        W, delta = [], torch.zeros_like(fluid)
        for a in range(fluid.dim()):
            n = fluid.shape[a]
            w = torch.zeros_like(fluid)
            w.narrow(a, 0, n - 1).copy_(fluid.narrow(a, 0, n - 1) * fluid.narrow(a, 1, n - 1))
            W.append(w)
            delta.narrow(a, 0, n - 1).add_(air.narrow(a, 1, n - 1))
            delta.narrow(a, 1, n - 1).add_(air.narrow(a, 0, n - 1))
        if diagonal is not None:
            delta = diagonal.to(fluid) - cls(W, torch.zeros_like(fluid)).D
            if float(delta.min()) < -1e-6:
                raise ValueError("diagonal is smaller than the number of fluid neighbours somewhere")
        return cls(W, delta.clamp_min(0) * fluid)

    def __call__(self, u: Tensor) -> Tensor:
        out = self.D * u
        off = u.dim() - self.dim
        for a, w in enumerate(self.W):
            ax, n = off + a, u.shape[off + a]
            out.narrow(ax, 0, n - 1).addcmul_(w.narrow(a, 0, n - 1), u.narrow(ax, 1, n - 1), value=-1.0)
            out.narrow(ax, 1, n - 1).addcmul_(w.narrow(a, 0, n - 1), u.narrow(ax, 0, n - 1), value=-1.0)
        return out

    def coarsen(self) -> StencilOperator:
        """The Galerkin operator ``P_0^T A P_0`` on 2^d-cell blocks (every side must be even)."""
        d = self.dim
        Wc = []
        for a, w in enumerate(self.W):
            # faces that leave a block on its high side: the children with an odd index along a
            odd = torch.zeros_like(w)
            odd.narrow(a, 1, w.shape[a] - 1)[(slice(None),) * a + (slice(0, None, 2),)] = 1.0
            Wc.append(_pool_sum((w * odd)[None, None], d)[0, 0])
        return StencilOperator(Wc, _pool_sum(self.delta[None, None], d)[0, 0])

    def dense(self) -> Tensor:
        """The matrix on all cells of the grid (for the coarsest level)."""
        m = self.D.numel()
        eye = torch.eye(m, dtype=self.D.dtype, device=self.D.device).reshape(m, 1, *self.D.shape)
        return self(eye).reshape(m, m)


class _Gate(nn.Module):
    """``G = 2 sigmoid(conv(tanh(conv(features))))`` of the pooled geometry; 1 at initialisation."""

    def __init__(self, dim: int, channels: int):
        super().__init__()
        Conv = nn.Conv2d if dim == 2 else nn.Conv3d
        self.inner = Conv(3, channels, 3, padding=1)
        self.outer = Conv(channels, 1, 3, padding=1)
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)

    def forward(self, features: Tensor) -> Tensor:
        return 2 * torch.sigmoid(self.outer(torch.tanh(self.inner(features))))


class DCDMNet(nn.Module):
    """``q = f(r; geometry) = M r``: a learned symmetric multigrid cycle (see the module docstring).

    Args:
        dim: 2 or 3.
        nu: Jacobi sweeps before and after each coarse correction.
        min_size: the coarsest level has sides ``<= min_size`` (solved densely).
        channels: hidden channels of the geometry gate networks.

    ``forward(r, geom)`` takes ``r`` of shape ``(B, *shape)`` and ``geom`` of shape ``(2, *shape)`` or
    ``(1, 2, *shape)`` (one geometry for the batch) and returns ``(B, *shape)``, zero outside the fluid.
    Sides need not be powers of two: the grid is padded with solid cells.
    """

    GROUPS = 3  # parameter sets: finest level, second level, all coarser levels

    def __init__(self, dim: int = 3, nu: int = 2, min_size: int = 4, channels: int = 8):
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim}")
        if not (isinstance(nu, int) and nu >= 1):
            raise ValueError(f"nu must be an int >= 1, got {nu!r}")
        if not (isinstance(min_size, int) and min_size >= 2):
            raise ValueError(f"min_size must be an int >= 2, got {min_size!r}")
        self.dim, self.nu, self.min_size, self.channels = dim, nu, min_size, channels
        G = self.GROUPS
        # Jacobi weights spread over [0.55, 0.8] (2/3 for nu = 1): the nu sweeps form a polynomial smoother
        # whose roots are 1/omega_k; equal starting weights would stay equal (the cycle is symmetric in
        # them), so spreading them lets training place the roots apart (as a Chebyshev smoother does)
        om = torch.linspace(0.55, 0.8, nu) if nu > 1 else torch.tensor([2 / 3])
        self.omega_logit = nn.Parameter(torch.logit(om).repeat(G, 1))
        self.kappa_raw = nn.Parameter(torch.full((G,), math.log(math.expm1(1.5))))  # softplus -> 1.5
        self.prolong_logit = nn.Parameter(torch.full((G,), math.log(2.0)))     # sigmoid -> 2/3
        self.gates = nn.ModuleList([_Gate(dim, channels) for _ in range(G - 1)])  # levels 1 and >= 2

    # ------------------------------------------------------------------ hierarchy (geometry only)
    def levels(self, shape: tuple[int, ...]) -> int:
        """Number of coarsenings ``L`` for a grid of this shape (the coarsest sides are <= min_size)."""
        k, m = 0, max(shape)
        while m > self.min_size:
            m = math.ceil(m / 2)
            k += 1
        return k

    def hierarchy(self, geom: Tensor, diagonal: Tensor | None = None) -> dict:
        """Operators, pseudo-inverse of the coarsest one and geometry features of every level; they
        depend on the geometry only (not on the weights), so callers cache them per domain. ``diagonal``
        (see ``StencilOperator.from_geometry``) carries Dirichlet faces beyond the array."""
        d = self.dim
        shape = tuple(geom.shape[1:])
        L = self.levels(shape)
        mult = 2 ** L
        pads: list[int] = []
        for s in reversed(shape):
            pads += [0, math.ceil(s / mult) * mult - s]
        g = F.pad(geom, pads)
        ops = [StencilOperator.from_geometry(g, None if diagonal is None else F.pad(diagonal, pads))]
        for _ in range(L):
            ops.append(ops[-1].coarsen())
        feats, f = [], g[None]
        for lvl in range(1, L + 1):
            f = _pool_sum(f, d) / 2 ** d  # fluid and air fractions of the block
            feats.append(torch.cat([f, ops[lvl].active[None, None]], 1))
        coarse = torch.linalg.pinv(ops[-1].dense(), hermitian=True)
        return dict(shape=shape, pads=pads, ops=ops, feats=feats, coarse=coarse)

    # ------------------------------------------------------------------ the cycle
    def forward(self, r: Tensor, geom: Tensor, cache: dict | None = None) -> Tensor:
        """``f(r)``; ``cache`` (a dict kept by the caller per geometry) stores the hierarchy and, when
        gradients are off, the gates (valid while the weights are unchanged)."""
        d = self.dim
        if geom.dim() == d + 2:
            if geom.shape[0] != 1:
                raise ValueError("one geometry per call: geom must be (2, *shape) or (1, 2, *shape)")
            geom = geom[0]
        if geom.dim() != d + 1 or geom.shape[0] != 2 or tuple(geom.shape[1:]) != tuple(r.shape[1:]):
            raise ValueError(f"geom must be (2, *shape) with shape {tuple(r.shape[1:])}, "
                             f"got {tuple(geom.shape)}")
        if cache is not None and "hierarchy" in cache:
            H = cache["hierarchy"]
        else:
            H = self.hierarchy(geom.to(r.dtype))
            if cache is not None:
                cache["hierarchy"] = H
        if cache is not None and "gates" in cache and not torch.is_grad_enabled():
            gates = cache["gates"]
        else:
            gates = [self.gates[min(lvl, self.GROUPS - 1) - 1](f) for lvl, f in enumerate(H["feats"], 1)]
            if cache is not None and not torch.is_grad_enabled():
                cache["gates"] = gates
        x = F.pad(r.unsqueeze(1), H["pads"]) * H["ops"][0].active
        q = self._cycle(0, x, H, gates)
        return q[(slice(None), 0) + tuple(slice(0, s) for s in H["shape"])]

    def _params(self, lvl: int) -> tuple[Tensor, Tensor, Tensor]:
        g = min(lvl, self.GROUPS - 1)
        return (torch.sigmoid(self.omega_logit[g]), F.softplus(self.kappa_raw[g]),
                torch.sigmoid(self.prolong_logit[g]))

    def _cycle(self, lvl: int, r: Tensor, H: dict, gates: list[Tensor]) -> Tensor:
        ops = H["ops"]
        if lvl == len(ops) - 1:
            return (r.flatten(1) @ H["coarse"]).view_as(r)  # the pseudo-inverse is symmetric
        A, d = ops[lvl], self.dim
        omega, kappa, w = self._params(lvl)
        # the scaled inverse diagonals, each a full-grid field: formed once per visit, used twice
        K = [om * A.inv_d for om in omega]      # Jacobi sweeps (pre- and post-smoothing)
        S = w * A.inv_d                         # prolongation smoothing (P and P^T)
        x = K[0] * r
        for k in range(1, self.nu):
            x = x + K[k] * (r - A(x))
        # restriction P^T = P_0^T (I - w A D^-1), on the residual of the pre-smoothed iterate
        res = r - A(x)
        res = res - A(S * res)
        G = gates[lvl]
        e = G * self._cycle(lvl + 1, G * _pool_sum(res, d), H, gates)
        u = _inject(e, d) * A.active
        x = x + kappa * (u - S * A(u))          # P e = (I - w D^-1 A) P_0 e
        for k in range(self.nu - 1, -1, -1):
            x = x + K[k] * (r - A(x))
        return x


class GridModel:
    """Wraps a grid network as the vector map ``r -> q`` that ``DCDM`` calls.

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
        if isinstance(net, DCDMNet):  # the multigrid hierarchy depends on the geometry only: set-up work
            deg = torch.as_tensor(grid.degree(), dtype=self.dtype, device=self.device)
            with torch.no_grad():  # the grid's own diagonal: Dirichlet faces beyond the array count too
                self.cache["hierarchy"] = net.hierarchy(self.geom, diagonal=deg * self.geom[0])

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
