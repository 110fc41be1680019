"""Where the trajectories of an ensemble are solved: ``Serial()``, ``Batched(chunk)``, ``Distributed(...)``.

Backends are small frozen descriptions, validated when built; ``solve_ensemble`` runs them.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


def _positive_int(name: str, value: object, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")


class Backend:
    """Base class of the ensemble backends."""


@dataclass(frozen=True)
class Serial(Backend):
    """One solve per trajectory, in order, in this process: trajectory ``i`` is exactly
    ``solve(problem_i, algorithm, seed=seed_i, **options)`` (``seed`` for SDEs). Works for any ensemble
    (trajectories of different shapes, spans or vector fields)."""

    def __repr__(self) -> str:
        return "Serial()"


@dataclass(frozen=True)
class Batched(Backend):
    """Trajectories stacked into one batched solve per ``chunk`` of them (``None``: all of a process's
    trajectories in one solve), the batch dimension prepended to ``y0``.

    Needs a batched formulation: problems that differ in ``y0`` only (stacked automatically), or an
    ``EnsembleProblem(batch_prob_func=...)``. The batch shares its step sizes: fixed-step solves give
    each trajectory exactly its serial result (bit for bit with elementwise vector fields, SDEs
    included: each row draws its own seeded increments), adaptive solves take the steps the whole
    batch's error norm allows (results agree with serial ones to the tolerance, not bit for bit).
    """

    chunk: int | None = None

    def __post_init__(self) -> None:
        _positive_int("Batched: chunk", self.chunk)

    def __repr__(self) -> str:
        return f"Batched(chunk={self.chunk})"


#: Process-group backends ``Distributed`` accepts (``None``: NCCL for CUDA states, else gloo).
PROCESS_GROUP_BACKENDS = ("gloo", "nccl", "mpi")


@dataclass(frozen=True)
class Distributed(Backend):
    """Trajectories scattered over the processes of a ``torch.distributed`` world.

    Under ``torchrun`` (or any launcher that sets ``RANK`` / ``WORLD_SIZE``), or once
    ``torch.distributed`` is initialised, every process calls ``solve`` with the same arguments
    (SPMD); each solves a contiguous block of trajectories with ``inner`` and the results are
    gathered. Outside such a world, ``nprocs=K > 1`` spawns ``K`` local processes (gloo on
    localhost, a free port) and returns their gathered result here; ``nprocs`` of ``None`` or 1 solves
    in this process (a world of one).

    Args:
        nprocs: processes to spawn when not launched by ``torchrun``; under ``torchrun`` it must be
            ``None`` or the world size.
        backend: process-group backend when this call initialises the group (``"gloo"``, ``"nccl"``,
            ``"mpi"``; ``None``: ``"nccl"`` for CUDA states, else ``"gloo"``).
        inner: how each process solves its block: ``Serial()`` (default) or ``Batched(chunk)``.
        root: ``None`` (default): every process returns the full ``EnsembleSolution``
            (``all_gather_object``); a rank: only that process gets it (``gather_object``), the others
            return ``None`` (less memory when the outputs are large).
        timeout: seconds for the process group's collectives (and for spawned processes to finish).
    """

    nprocs: int | None = None
    backend: str | None = None
    inner: Backend = Serial()
    root: int | None = None
    timeout: float = 1800.0

    def __post_init__(self) -> None:
        _positive_int("Distributed: nprocs", self.nprocs)
        if self.backend is not None and self.backend not in PROCESS_GROUP_BACKENDS:
            names = ", ".join(PROCESS_GROUP_BACKENDS)
            raise ValueError(f"Distributed: backend must be one of {names} or None, got {self.backend!r}")
        if not isinstance(self.inner, (Serial, Batched)):
            raise TypeError(f"Distributed: inner must be Serial() or Batched(chunk), got {self.inner!r}")
        if self.root is not None:
            if isinstance(self.root, bool) or not isinstance(self.root, numbers.Integral) or self.root < 0:
                raise ValueError(f"Distributed: root must be None or a rank >= 0, got {self.root!r}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, numbers.Real) or not (
                math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"Distributed: timeout must be a positive number of seconds, "
                             f"got {self.timeout!r}")

    def __repr__(self) -> str:
        return (f"Distributed(nprocs={self.nprocs}, backend={self.backend!r}, inner={self.inner!r}, "
                f"root={self.root})")


def check_backend(backend: object) -> Backend:
    """``backend`` itself if it is a backend instance; a clear ``TypeError`` otherwise."""
    if isinstance(backend, Backend):
        return backend
    if isinstance(backend, type) and issubclass(backend, Backend):
        raise TypeError(f"backend: pass an instance: {backend.__name__}() rather than {backend.__name__}")
    raise TypeError("backend must be Serial(), Batched(chunk=...) or Distributed(...) from solvers.ensemble, "
                    f"got {backend!r}")
