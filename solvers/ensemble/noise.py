"""Per-trajectory seeds and row-seeded Brownian paths: trajectory ``i`` draws the same noise whatever
backend solves it.

Seeds
-----
Trajectory ``i`` of an ensemble with seed ``s`` gets the seed ``trajectory_seed(s, i)``, a function of
``(s, i)`` only, so which process solves it, and next to which other trajectories, cannot change it.
torch's CPU generator (an MT19937) keeps only the low 32 bits of a seed (``manual_seed(1)`` and
``manual_seed(1 + 2**32)`` give the same numbers). With 32 random bits, ``10^5`` trajectories would
share a path with probability ``1 - exp(-N^2 / 2^33) = 0.69`` (birthday bound), so the low 32 bits are made
*distinct by construction*: with ``k = splitmix64(s)``,

    low_i  = lowbias32((i + k) mod 2^32)      a bijection of i: distinct for i < 2^32
    high   = k >> 33                            31 bits of the ensemble's seed
    seed_i = high * 2^32 + low_i                in [0, 2^63)

``splitmix64`` is the output function of Steele, Lea & Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014; ``lowbias32`` is C. Wellons' 32-bit integer hash ("Prospecting for hash
functions", 2018), a bijection (xor-shifts and odd multiplications are invertible), so no two
trajectories of one ensemble share a CPU seed. No Python ``hash`` is involved (it is salted per process).

Row-seeded paths
----------------
A fixed-step SDE solve draws its increments with ``GridIncrements``: one ``torch.Generator`` seeded with
the solve's seed, ``Z = randn((n_steps, *size))``, ``dW = Z sqrt(h)``. A batched solve of ``B``
trajectories has ``size = (B, *row)``; one generator would interleave the trajectories' numbers, so
row ``b`` would not get what trajectory ``b`` gets alone. ``row_grid_increments`` draws each row from
its own generator seeded with that row's trajectory seed, with the exact call sequence (shapes, dtype,
order: ``dW`` then, for SRA1, the Levy-area normals) ``GridIncrements`` makes for one trajectory, and
stacks the rows on dimension 1: row ``b`` equals ``GridIncrements(grid, row, seed=seed_b).dW`` bit for
bit (tests/test_ensemble.py checks this against ``GridIncrements`` itself).

Adaptive solves query a ``torchsde.BrownianInterval`` on intervals chosen by the step controller.
``RowIntervalPaths`` keeps one ``IntervalPath`` per row, seeded as a serial solve of that trajectory
would be, and stacks their answers: every trajectory sees its own Brownian path in every backend. The
batch shares its step sizes, so the *discretisation* of that path differs from a serial solve's (the
solutions agree to the method's accuracy, not bit for bit), and each step costs one tree query per row
(as it does serially).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..sde.brownian import GridIncrements, IntervalPath

_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1


def splitmix64(x: int) -> int:
    """SplitMix64's output for state ``x`` (Steele, Lea & Flood 2014): a bijection of 64-bit ints."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def lowbias32(x: int) -> int:
    """C. Wellons' ``lowbias32`` integer hash: a bijection of 32-bit ints with low bias."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    x ^= x >> 16
    return x


def trajectory_seed(seed: int, i: int) -> int:
    """The seed of trajectory ``i`` of an ensemble seeded with ``seed``: in ``[0, 2^63)``, a function
    of ``(seed, i)`` only, with distinct low 32 bits for the first ``2^32`` trajectories (see the
    module docstring)."""
    k = splitmix64(int(seed) & _MASK64)
    low = lowbias32((int(i) + k) & _MASK32)
    return ((k >> 33) << 32) | low


def row_grid_increments(grid: Sequence[float], row_size: Sequence[int], seeds: Sequence[int],
                        dtype: torch.dtype, device: torch.device | str,
                        levy_area: bool = False) -> GridIncrements:
    """A ``GridIncrements`` for a batch of ``len(seeds)`` trajectories whose row ``b`` (dimension 1 of
    ``dW``) holds exactly the increments ``GridIncrements(grid, row_size, seed=seeds[b])`` draws."""
    grid = list(map(float, grid))
    n = len(grid) - 1
    row_size = tuple(int(s) for s in row_size)
    device = torch.device(device)
    B = len(seeds)
    # One contiguous (B, n, *row) buffer: row b is filled in place by the generator, seeded with the
    # row's seed, exactly as a single-trajectory GridIncrements fills its own: ``randn(shape)`` is
    # ``empty(shape).normal_()``, and ``z[b]`` is a contiguous tensor of that shape, so the numbers are
    # the same (checked against GridIncrements in the tests). ``normal_`` skips randn's allocation.
    z = torch.empty((B, n, *row_size), dtype=dtype, device=device)
    zh = torch.empty_like(z) if levy_area else None
    gen = torch.Generator(device=device)
    for b, s in enumerate(seeds):
        gen.manual_seed(int(s))
        z[b].normal_(generator=gen)
        if zh is not None:
            zh[b].normal_(generator=gen)
    # The same elementwise arithmetic as GridIncrements (h from the same Python floats).
    h = torch.tensor([b - a for a, b in zip(grid[:-1], grid[1:])], dtype=dtype, device=device)
    shape_h = (n, 1) + (1,) * len(row_size)
    out = GridIncrements.__new__(GridIncrements)
    out.seed = None
    out.grid = grid
    out.levy_area = levy_area
    out.dW = z.transpose(0, 1).contiguous().mul_(h.sqrt().view(shape_h))
    out.U = None
    if zh is not None:
        H = zh.transpose(0, 1).contiguous().mul_((h / 12).sqrt().view(shape_h))
        out.U = h.view(shape_h) * (0.5 * out.dW + H)
    return out


class RowIntervalPaths:
    """One ``IntervalPath`` per trajectory, queried together: ``path(ta, tb)`` stacks the rows'
    increments on dimension 0 (the batch dimension of the state)."""

    def __init__(self, t0: float, t1: float, row_size: Sequence[int], seeds: Sequence[int],
                 dtype: torch.dtype, device: torch.device | str, levy_area: bool = False):
        self.paths = [IntervalPath(t0, t1, row_size, dtype, device, seed=int(s), levy_area=levy_area)
                      for s in seeds]
        self.levy_area = levy_area
        self.t0, self.t1 = float(t0), float(t1)

    def __call__(self, ta: float, tb: float, return_U: bool = False):
        if not return_U:
            return torch.stack([p(ta, tb) for p in self.paths])
        pairs = [p(ta, tb, return_U=True) for p in self.paths]
        return torch.stack([dw for dw, _ in pairs]), torch.stack([u for _, u in pairs])

    def W(self, t: float) -> Tensor:
        """``W(t) - W(t0)`` of every row."""
        return torch.stack([p.W(t) for p in self.paths])
