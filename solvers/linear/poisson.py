"""Poisson systems on 2D/3D grids: Dirichlet boxes and smoke-simulation pressure domains.

Every cell of a grid carries a flag: ``FLUID`` (an unknown), ``SOLID`` (a wall or an obstacle: zero normal
flux, i.e. a homogeneous Neumann condition) or ``AIR`` (an open region where the pressure is 0: a
Dirichlet condition). The faces beyond the array are walls or Dirichlet faces according to ``outside``.
The unknowns are the fluid cells in C order. The matrix is the standard 5-point (2D) / 7-point (3D)
finite-volume Laplacian (the pressure matrix of Bridson, *Fluid Simulation for Computer Graphics*, 2nd ed.,
Sec. 5.3; Kaneda et al. 2023, Sec. 5)::

    (A p)_i = (1/h^2) * ( n_i p_i - sum_{fluid neighbours j} p_j )

where ``n_i`` counts the neighbours of cell ``i`` that are not solid (fluid, air or Dirichlet faces). ``A``
is symmetric positive semi-definite; it is singular exactly on fluid components that touch no Dirichlet
cell (pure Neumann), whose indicator vectors span the null space (``PoissonGrid.nullspace``).

On a box with all faces Dirichlet and every cell fluid (``dirichlet_grid``), the unknowns are the
interior nodes ``x_i = i h`` (``i = 1..n``, ``h = 1/(n+1)``) of the unit square/cube and ``A`` is the
second-order discretisation of ``-Laplace`` with the boundary values moved to the right-hand side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.ndimage as ndi
import scipy.sparse as sp
import torch
from torch import Tensor

from ..problem import LinearProblem

__all__ = ["FLUID", "SOLID", "AIR", "PoissonGrid", "Sphere", "Box", "dirichlet_grid", "smoke_domain",
           "random_obstacles", "poisson_problem", "dirichlet_poisson_problem", "divergence_rhs"]

FLUID, SOLID, AIR = 0, 1, 2
_BC = ("neumann", "dirichlet")


@dataclass(frozen=True, eq=False)
class PoissonGrid:
    """A grid of flagged cells and the Poisson operator on its fluid cells.

    Args:
        flags: integer array of ``FLUID``/``SOLID``/``AIR``, shape ``(n1, n2)`` or ``(n1, n2, n3)``.
        h: grid spacing (the matrix carries ``1/h^2``).
        outside: condition on the faces beyond the array, one string (``"neumann"`` or ``"dirichlet"``)
            or one per face in the order ``(axis0-, axis0+, axis1-, axis1+, ...)``.
        origin: coordinate of cell ``(0, .., 0)`` (for right-hand sides built from functions).
    """

    flags: np.ndarray
    h: float = 1.0
    outside: str | Sequence[str] = "neumann"
    origin: float = 0.0
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        flags = np.asarray(self.flags)
        if flags.ndim not in (2, 3):
            raise ValueError(f"flags must be 2-D or 3-D, got shape {flags.shape}")
        if not np.isin(flags, (FLUID, SOLID, AIR)).all():
            raise ValueError("flags must hold only FLUID (0), SOLID (1) and AIR (2)")
        if not (flags == FLUID).any():
            raise ValueError("the grid has no fluid cell (no unknowns)")
        if not (np.isfinite(self.h) and self.h > 0):
            raise ValueError(f"h must be positive and finite, got {self.h}")
        out = (self.outside,) * (2 * flags.ndim) if isinstance(self.outside, str) else tuple(self.outside)
        if len(out) != 2 * flags.ndim or any(o not in _BC for o in out):
            raise ValueError(f"outside must be 'neumann'/'dirichlet' or {2 * flags.ndim} of them, "
                             f"got {self.outside!r}")
        object.__setattr__(self, "flags", flags.astype(np.int8))
        object.__setattr__(self, "outside", out)

    # ----------------------------------------------------------------- structure
    @property
    def dim(self) -> int:
        return self.flags.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.flags.shape)

    @property
    def fluid(self) -> np.ndarray:
        return self.flags == FLUID

    @property
    def index(self) -> np.ndarray:
        """Flat (C-order) indices of the fluid cells: unknown ``k`` lives in cell ``index[k]``."""
        if "index" not in self._cache:
            self._cache["index"] = np.flatnonzero(self.fluid.ravel())
        return self._cache["index"]

    @property
    def n(self) -> int:
        return int(self.index.size)

    def _padded(self) -> np.ndarray:
        """Flags padded by one layer that encodes the outside condition (SOLID or AIR per face)."""
        p = np.pad(self.flags, 1, constant_values=SOLID)
        for ax in range(self.dim):
            for side in (0, 1):
                if self.outside[2 * ax + side] == "dirichlet":
                    sl = [slice(1, -1)] * self.dim
                    sl[ax] = slice(0, 1) if side == 0 else slice(-1, None)
                    p[tuple(sl)] = AIR
        return p

    def _neighbours(self):
        """Yield (axis, side, neighbour-flag array) for the 2*dim neighbours of every cell."""
        p = self._padded()
        for ax in range(self.dim):
            for shift in (-1, 1):
                sl = [slice(1, -1)] * self.dim
                sl[ax] = slice(1 + shift, p.shape[ax] - 1 + shift)
                yield ax, shift, p[tuple(sl)]

    def degree(self) -> np.ndarray:
        """Number of non-solid neighbours of each cell (the diagonal of ``h^2 A``)."""
        if "degree" not in self._cache:
            deg = np.zeros(self.shape, dtype=np.int8)
            for _, _, nb in self._neighbours():
                deg += (nb != SOLID)
            self._cache["degree"] = deg
        return self._cache["degree"]

    def matrix(self) -> sp.csr_matrix:
        """``A`` (float64 CSR, ``n x n``) on the fluid cells."""
        if "matrix" in self._cache:
            return self._cache["matrix"]
        n, shape = self.n, self.shape
        lookup = -np.ones(int(np.prod(shape)), dtype=np.int64)
        lookup[self.index] = np.arange(n)
        lookup = lookup.reshape(shape)
        fl = self.fluid
        rows, cols, vals = [np.arange(n)], [np.arange(n)], [self.degree()[fl].astype(np.float64)]
        for ax in range(self.dim):
            # fluid-fluid pairs across each interior face along this axis, both orders (symmetric)
            a = [slice(None)] * self.dim
            b = [slice(None)] * self.dim
            a[ax], b[ax] = slice(0, -1), slice(1, None)
            both = fl[tuple(a)] & fl[tuple(b)]
            i, j = lookup[tuple(a)][both], lookup[tuple(b)][both]
            rows += [i, j]
            cols += [j, i]
            vals += [-np.ones(i.size), -np.ones(i.size)]
        A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        A = (A / self.h ** 2).tocsr()
        A.sort_indices()
        self._cache["matrix"] = A
        return A

    def nullspace(self) -> np.ndarray | None:
        """Orthonormal basis ``(n, k)`` of ``null(A)``: one normalised indicator per fluid component that
        touches no Dirichlet cell or face (``None`` when ``A`` is nonsingular)."""
        p = self._padded()
        labels, count = ndi.label(p == FLUID)  # face connectivity (the stencil's)
        if count == 0:
            return None
        touches = np.zeros(count + 1, dtype=bool)
        air = p == AIR
        for ax in range(self.dim):
            for shift in (-1, 1):
                nb = np.roll(labels, shift, axis=ax)
                touches[np.unique(nb[air])] = True
        touches[0] = False
        inner = labels[(slice(1, -1),) * self.dim].ravel()[self.index]
        free = [c for c in range(1, count + 1) if not touches[c]]
        if not free:
            return None
        N = np.zeros((self.n, len(free)))
        for k, c in enumerate(free):
            m = inner == c
            N[m, k] = 1.0 / np.sqrt(m.sum())
        return N

    def coords(self) -> list[np.ndarray]:
        """Coordinates of the cell centres, one array (of the grid's shape) per axis."""
        axes = [self.origin + self.h * np.arange(s) for s in self.shape]
        return list(np.meshgrid(*axes, indexing="ij"))

    def dirichlet_boundary_rhs(self, g: Callable[..., np.ndarray]) -> np.ndarray:
        """``(1/h^2) sum g(x_j)`` over the Dirichlet neighbours ``j`` (air cells and Dirichlet faces) of
        each fluid cell: the boundary values moved to the right-hand side when ``p = g`` there."""
        out = np.zeros(self.shape)
        X = self.coords()
        for ax, shift, nb in self._neighbours():
            Y = [x.copy() for x in X]
            Y[ax] = Y[ax] + shift * self.h
            out += np.where(nb == AIR, g(*Y), 0.0)
        return out.ravel()[self.index] / self.h ** 2

    # ------------------------------------------------------------- grid <-> vector
    def to_grid(self, v: Tensor) -> Tensor:
        """Scatter ``(..., n)`` unknowns into ``(..., *shape)`` cells (zeros outside the fluid)."""
        idx = self._index_tensor(v.device)
        out = torch.zeros(*v.shape[:-1], int(np.prod(self.shape)), dtype=v.dtype, device=v.device)
        out.index_copy_(out.dim() - 1, idx, v)
        return out.reshape(*v.shape[:-1], *self.shape)

    def from_grid(self, g: Tensor) -> Tensor:
        """Gather the fluid cells of ``(..., *shape)`` into ``(..., n)``."""
        flat = g.reshape(*g.shape[: g.dim() - self.dim], -1)
        return flat.index_select(flat.dim() - 1, self._index_tensor(g.device))

    def _index_tensor(self, device: torch.device) -> Tensor:
        key = ("index_t", str(device))
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self.index, device=device)
        return self._cache[key]

    def geometry(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
        """The geometry channels the DCDM network reads: ``(2, *shape)`` = [fluid indicator, Dirichlet
        indicator] (air cells; the array's outside is read as solid, so domains carry explicit walls)."""
        return torch.stack([torch.as_tensor(self.flags == FLUID), torch.as_tensor(self.flags == AIR)]).to(
            device=device, dtype=dtype)

    def stencil(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
                ) -> Callable[[Tensor], Tensor]:
        """``A`` applied to grid fields ``(..., *shape)`` (zero outside the fluid) with torch ops: the same
        operator as ``matrix``, differentiable and batched (used by the training loss)."""
        deg = torch.as_tensor(self.degree(), dtype=dtype, device=device)
        fl = torch.as_tensor(self.fluid, dtype=dtype, device=device)
        d, inv_h2 = self.dim, 1.0 / self.h ** 2

        def apply(u: Tensor) -> Tensor:
            u = u * fl
            s = deg * u
            for ax in range(-d, 0):
                pad = [0, 0] * d
                k = 2 * (-1 - ax)
                pad[k], pad[k + 1] = 1, 1
                up = torch.nn.functional.pad(u, pad)
                n_ax = u.shape[ax]
                s = s - up.narrow(ax, 0, n_ax) - up.narrow(ax, 2, n_ax)
            return s * fl * inv_h2
        return apply


# ----------------------------------------------------------------------- geometries
@dataclass(frozen=True)
class Sphere:
    """A solid ball (a disc in 2D) of ``radius`` around ``center``, in unit-box coordinates."""

    center: tuple[float, ...]
    radius: float

    def inside(self, X: list[np.ndarray]) -> np.ndarray:
        return sum((x - c) ** 2 for x, c in zip(X, self.center)) <= self.radius ** 2


@dataclass(frozen=True)
class Box:
    """A solid axis-aligned box ``lo <= x <= hi``, in unit-box coordinates."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def inside(self, X: list[np.ndarray]) -> np.ndarray:
        m = np.ones(X[0].shape, dtype=bool)
        for x, a, b in zip(X, self.lo, self.hi):
            m &= (x >= a) & (x <= b)
        return m


def dirichlet_grid(n: int, dim: int = 3) -> PoissonGrid:
    """All-fluid ``n^dim`` interior nodes of the unit box, Dirichlet on every face, ``h = 1/(n+1)``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    h = 1.0 / (n + 1)
    return PoissonGrid(np.zeros((n,) * dim, dtype=np.int8), h=h, outside="dirichlet", origin=h)


def smoke_domain(n: int, dim: int = 3, obstacles: Sequence[Sphere | Box] = (), open_face: str | None = "top",
                 h: float = 1.0) -> PoissonGrid:
    """A smoke-simulation pressure domain on ``n^dim`` cells of the unit box.

    The outermost layer of cells is solid wall (Neumann), except the ``open_face`` layer (``"top"`` = the
    last axis, high side) which is air (Dirichlet, ``p = 0``); ``open_face=None`` closes the box (pure
    Neumann: ``A`` is singular, constants span the null space). ``obstacles`` are solid. The matrix is
    left unscaled (``h = 1``) as in graphics pressure solves; pass ``h`` to scale it.
    """
    if n < 4:
        raise ValueError(f"n must be >= 4, got {n}")
    flags = np.full((n,) * dim, SOLID, dtype=np.int8)
    flags[(slice(1, -1),) * dim] = FLUID
    if open_face == "top":
        flags[(slice(1, -1),) * (dim - 1) + (slice(n - 1, n),)] = AIR
    elif open_face is not None:
        raise ValueError(f"open_face must be 'top' or None, got {open_face!r}")
    axes = [(np.arange(n) + 0.5) / n] * dim
    X = list(np.meshgrid(*axes, indexing="ij"))
    for ob in obstacles:
        if len(getattr(ob, "center", getattr(ob, "lo", ()))) != dim:
            raise ValueError(f"obstacle {ob} does not have dimension {dim}")
        flags[ob.inside(X) & (flags == FLUID)] = SOLID
    return PoissonGrid(flags, h=h, outside="neumann", origin=0.5 / n)


def random_obstacles(dim: int = 3, count: int = 2, seed: int = 0, kinds: Sequence[str] = ("sphere", "box")
                     ) -> list[Sphere | Box]:
    """``count`` random spheres/boxes inside the unit box (kept away from the open top face)."""
    rng = np.random.default_rng(seed)
    obs: list[Sphere | Box] = []
    for _ in range(count):
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "sphere":
            r = float(rng.uniform(0.08, 0.2))
            c = tuple(float(v) for v in rng.uniform(0.2, 0.8, size=dim))
            c = c[:-1] + (min(c[-1], 0.7),)
            obs.append(Sphere(c, r))
        else:
            lo = rng.uniform(0.1, 0.6, size=dim)
            hi = lo + rng.uniform(0.1, 0.3, size=dim)
            hi[-1] = min(hi[-1], 0.8)
            obs.append(Box(tuple(float(v) for v in lo), tuple(float(v) for v in hi)))
    return obs


def divergence_rhs(grid: PoissonGrid, seed: int = 0, smoothing: float = 2.0) -> np.ndarray:
    """A consistent pressure right-hand side: ``b = -div(u*)`` of a random smooth face velocity ``u*``
    (Gaussian-filtered noise, zero normal velocity on solid faces), as in a smoke step's projection.

    On a closed fluid component (no Dirichlet contact) the fluxes through its faces cancel, so ``b`` sums
    to zero there: the singular system is consistent.
    """
    rng = np.random.default_rng(seed)
    shape, fl = grid.shape, grid.fluid
    pad = grid._padded()
    div = np.zeros(shape)
    for ax in range(grid.dim):
        fshape = list(shape)
        fshape[ax] += 1  # faces along this axis, including the two outer ones
        u = ndi.gaussian_filter(rng.standard_normal(fshape), smoothing) * smoothing
        # flag on both sides of every face
        lo = [slice(1, -1)] * grid.dim
        hi = [slice(1, -1)] * grid.dim
        lo[ax] = slice(0, shape[ax] + 1)
        hi[ax] = slice(1, shape[ax] + 2)
        a, b = pad[tuple(lo)], pad[tuple(hi)]
        u = np.where((a == SOLID) | (b == SOLID), 0.0, u)
        first = [slice(None)] * grid.dim
        last = [slice(None)] * grid.dim
        first[ax], last[ax] = slice(0, -1), slice(1, None)
        div += u[tuple(last)] - u[tuple(first)]
    return (-div * grid.h)[fl]


def poisson_problem(grid: PoissonGrid, b: np.ndarray | Tensor | None = None, seed: int = 0,
                    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> LinearProblem:
    """The ``LinearProblem`` of ``grid`` (scipy CSR ``A``, null space, geometry).

    ``b`` defaults to ``divergence_rhs`` with ``seed``. For a singular system a given ``b`` is
    projected onto the range of ``A`` (the component along the null space removed) so it is consistent.
    """
    A = grid.matrix()
    N = grid.nullspace()
    if b is None:
        b = divergence_rhs(grid, seed=seed)
    bt = torch.as_tensor(np.asarray(b) if not isinstance(b, Tensor) else b, dtype=dtype, device=device)
    if bt.shape != (grid.n,):
        raise ValueError(f"b must have shape ({grid.n},), got {tuple(bt.shape)}")
    Nt = None
    if N is not None:
        Nt = torch.as_tensor(N, dtype=dtype, device=device)
        bt = bt - Nt @ (Nt.T @ bt)
    return LinearProblem(A if torch.device(device).type == "cpu" else _to_torch(A, dtype, device), bt,
                         nullspace=Nt, grid=grid)


def _to_torch(A: sp.csr_matrix, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    return torch.sparse_csr_tensor(torch.from_numpy(A.indptr.astype(np.int64)),
                                   torch.from_numpy(A.indices.astype(np.int64)),
                                   torch.from_numpy(A.data), size=A.shape).to(device=device, dtype=dtype)


def dirichlet_poisson_problem(n: int, dim: int, f: Callable[..., np.ndarray], g: Callable[..., np.ndarray],
                              dtype: torch.dtype = torch.float64) -> tuple[LinearProblem, list[np.ndarray]]:
    """``-Laplace u = f`` in the unit box, ``u = g`` on its boundary, on ``n^dim`` interior nodes.

    Returns the problem (``b = f(x_i) + boundary terms``) and the node coordinates (arrays of the grid's
    shape). The discrete solution is second-order accurate in ``h = 1/(n+1)`` for smooth ``u``.
    """
    grid = dirichlet_grid(n, dim)
    X = grid.coords()
    fv = np.broadcast_to(np.asarray(f(*X), dtype=np.float64), grid.shape).ravel()[grid.index]
    b = fv + grid.dirichlet_boundary_rhs(lambda *Y: np.broadcast_to(np.asarray(g(*Y), dtype=np.float64),
                                                                    Y[0].shape))
    return poisson_problem(grid, b=b, dtype=dtype), X
