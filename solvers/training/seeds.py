"""Seeds of a training run: one ``torch.Generator`` per run for the shuffling, and every other random
draw (Brownian paths, collocation points, regularisers' sample times) from a seed that is a fixed
function of ``(seed, epoch, step, rank)``.

Why functions rather than a stream: a resumed run must replay exactly what the uninterrupted one drew,
and a run on ``K`` ranks must give each rank its own draws without any rank's sequence depending on how
many batches another rank has seen. A pure function of the position in the run gives both; the only
stateful generator is the shuffling one, which is saved in the checkpoint and is the same on every rank
(every rank draws the same *global* permutation and takes its own shard of each global batch).

``rank_seed(seed, 0) == seed`` and ``step_seed(seed, e, b, rank=0)`` is the formula the ``nde`` loops
always used, so a single-process run draws exactly what it drew before the trainer was shared. Other
ranks' seeds are scrambled with SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014), so the seeds of rank ``r`` do not collide with rank 0's shifted by a few
steps, as ``seed + rank`` would.
"""

from __future__ import annotations

__all__ = ["rank_seed", "step_seed"]

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix64(x: int) -> int:
    z = (x + _GOLDEN) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank`` of a run seeded ``seed``: ``seed`` itself on rank 0, a SplitMix64
    scramble of ``(seed, rank)`` (62 bits) on the others."""
    seed, rank = int(seed), int(rank)
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    if rank == 0:
        return seed
    return _splitmix64((seed & _M64) ^ ((rank * _GOLDEN) & _M64)) >> 2


def step_seed(seed: int, epoch: int, step: int, rank: int = 0) -> int:
    """The seed of the random draws of training step ``step`` of epoch ``epoch`` on rank ``rank``
    (a fixed function, so resumed runs replay it)."""
    return (rank_seed(seed, rank) * 1_000_003 + int(epoch) * 10_007 + int(step)) % (2**62)
