"""The ``Distributed`` backend on ``torch.distributed``: SPMD under ``torchrun``, or spawned local processes.

Scatter: the trajectories are split into contiguous ranges, one per rank, at the reduction's block
boundaries (``block_size``; 1 without a reduction): with ``nb`` blocks, rank ``r`` gets blocks
``floor(r nb / W) .. floor((r + 1) nb / W) - 1``. Nothing is sent to scatter: every rank builds the
same ``EnsembleProblem`` and derives its range and its trajectories' seeds from ``(seed, i)``.

Gather: each rank solves its range with ``inner`` and sends a ``Part`` (outputs as CPU tensors, the
reduction's block states, return codes, counters) with ``all_gather_object`` (``root=None``) or
``gather_object`` (``root=r``). The receiver joins the parts in trajectory order and folds the block
states in block order (``statistics.py``): the result is the same, bit for bit, for every world size,
and the same as ``Serial`` / ``Batched`` in one process. Object collectives pickle their payload
(``torch.distributed`` docs); the outputs, which can be large, travel once.

Failures: an exception on one rank must not leave the others blocked in a collective, so each rank
catches its own, still takes part in the gather, and every receiver then raises the first error in rank
order (the rank that failed re-raises its original exception).

Spawn (``Distributed(nprocs=K)`` outside ``torchrun``): ``K`` processes from
``multiprocessing.get_context("spawn")``, a gloo group on ``127.0.0.1`` and a free port, each with
``max(1, cpu_count // K)`` intra-op threads. The ensemble reaches them pickled (with ``cloudpickle``
when installed, or joblib's copy of it, so lambdas and closures travel; plain ``pickle`` otherwise, which
needs module-level functions); rank 0 returns the gathered result to the caller through a queue, as
bytes. A script that spawns must guard its entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import atexit
import builtins
import os
import pickle
import time
import traceback
from datetime import timedelta
from typing import Any

import torch

from ..solution import ReturnCode, SolverError
from ..training.distributed import free_port, gather_results
from .backends import Distributed
from .runner import Part, run_range
from .solution import EnsembleSolution, assemble


def partition(trajectories: int, world_size: int, block: int = 1) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` ranges of trajectories for ranks ``0..W-1``, cut at multiples of
    ``block`` (see the module docstring); ranks beyond the number of blocks get empty ranges."""
    nb = -(-trajectories // block)
    cuts = [min(trajectories, (r * nb // world_size) * block) for r in range(world_size + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def launched() -> bool:
    """Whether this process belongs to a ``torch.distributed`` world: initialised, or launched by
    ``torchrun`` (the ``RANK`` and ``WORLD_SIZE`` environment variables)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return True
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _pg_backend(spec: Distributed, y0: torch.Tensor) -> str:
    import torch.distributed as dist

    name = spec.backend
    if name is None:
        name = "nccl" if (y0.is_cuda and dist.is_nccl_available()) else "gloo"
    available = {"gloo": dist.is_gloo_available, "nccl": dist.is_nccl_available, "mpi": dist.is_mpi_available}
    if not available[name]():
        raise RuntimeError(f"Distributed: the {name!r} process-group backend is not available in this "
                           f"torch build")
    return name


def check_available() -> None:
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("Distributed needs torch.distributed, which this torch build does not have")


def _ensure_group(spec: Distributed, y0: torch.Tensor) -> None:
    """Join the ``torchrun`` world (``env://``) unless a process group exists already."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    name = _pg_backend(spec, y0)
    if name == "nccl":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local % torch.cuda.device_count())
    dist.init_process_group(name, init_method="env://", timeout=timedelta(seconds=spec.timeout))
    atexit.register(_destroy)


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# -- errors that cross processes ---------------------------------------------------------------------
def describe_error(exc: BaseException, rank: int) -> dict[str, Any]:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    info: dict[str, Any] = {"rank": rank, "type": type(exc).__name__, "message": str(exc), "traceback": tb}
    if isinstance(exc, SolverError):
        info["solver"] = (exc.retcode.value, exc.t, exc.dt, exc.detail)
    return info


def rebuild_error(info: dict[str, Any]) -> BaseException:
    """An exception like the one ``describe_error`` described, raised on another process."""
    where = f"on rank {info['rank']}"
    if "solver" in info:
        code, t, dt, detail = info["solver"]
        return SolverError(ReturnCode(code), t=t, dt=dt, detail=f"{detail} [{where}]".strip())
    kind = getattr(builtins, info["type"], None)
    if isinstance(kind, type) and issubclass(kind, Exception) and kind in (
            ValueError, TypeError, RuntimeError, KeyError, IndexError, AttributeError, NotImplementedError,
            ZeroDivisionError, ArithmeticError, AssertionError):
        return kind(f"{info['message']} [{where}]")
    return RuntimeError(f"{info['type']} {where}: {info['message']}\n{info['traceback']}")


# -- SPMD: what every rank of a world runs ---------------------------------------------------------
def describe_backend(spec: Distributed, world_size: int, pg: str | None) -> str:
    how = f"{pg}, " if pg else "in-process, "
    return f"Distributed({how}world_size={world_size}, inner={spec.inner!r})"


def run_spmd(ensemble: Any, algorithm: Any, adjoint: Any, trajectories: int, spec: Distributed,
             options: dict[str, Any], keep_outputs: bool, progress: bool, t_start: float,
             root: int | None) -> EnsembleSolution | None:
    """This rank's share of the ensemble, then the gather (see the module docstring)."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    if root is not None and root >= world:
        raise ValueError(f"Distributed: root = {root} but the world has {world} processes")
    block = ensemble.reduction.block_size if ensemble.reduction is not None else 1
    start, stop = partition(trajectories, world, block)[rank]
    own: BaseException | None = None
    try:
        part = run_range(ensemble, algorithm, adjoint, start, stop, spec.inner, options, keep_outputs,
                         progress and rank == 0).portable()
    except Exception as exc:  # the others are about to wait for this rank in the gather
        own = exc
        part = Part(start, stop, error=describe_error(exc, rank))
    if root is None:
        parts: list[Any] | None = [None] * world
        dist.all_gather_object(parts, part)
    else:
        parts = [None] * world if rank == root else None
        dist.gather_object(part, parts, dst=root)
    if parts is None:  # not the root
        if own is not None:
            raise own
        return None
    errors = [p.error for p in parts if p.error is not None]
    if errors:
        if own is not None:
            raise own
        raise rebuild_error(errors[0])
    desc = describe_backend(spec, world, dist.get_backend())
    return assemble(parts, ensemble, trajectories, world, desc, keep_outputs, time.perf_counter() - t_start)


def run_distributed(ensemble: Any, algorithm: Any, adjoint: Any, trajectories: int, spec: Distributed,
                    options: dict[str, Any], keep_outputs: bool, progress: bool) -> EnsembleSolution | None:
    """Run ``spec``: in the current world, in spawned processes, or in this process alone."""
    import torch.distributed as dist

    t_start = time.perf_counter()
    check_available()
    if launched():
        _ensure_group(spec, ensemble.problem.y0)
        world = dist.get_world_size()
        if spec.nprocs is not None and spec.nprocs != world:
            raise ValueError(f"Distributed(nprocs={spec.nprocs}) inside a world of {world} processes "
                             f"(torchrun): leave nprocs=None there")
        return run_spmd(ensemble, algorithm, adjoint, trajectories, spec, options, keep_outputs, progress,
                        t_start, spec.root)
    if spec.nprocs is not None and spec.nprocs > 1:
        return spawn(ensemble, algorithm, adjoint, trajectories, spec, options, keep_outputs, t_start)
    # A world of one, in this process: the same split and assembly as a real world.
    part = run_range(ensemble, algorithm, adjoint, 0, trajectories, spec.inner, options, keep_outputs,
                     progress)
    return assemble([part], ensemble, trajectories, 1, describe_backend(spec, 1, None), keep_outputs,
                    time.perf_counter() - t_start)


# -- spawned local processes ---------------------------------------------------------------------------
def _dumps(obj: Any) -> bytes:
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - joblib (a scikit-learn dependency) ships a copy
        try:
            from joblib.externals import cloudpickle
        except ImportError:
            cloudpickle = None
    try:
        return cloudpickle.dumps(obj) if cloudpickle is not None else pickle.dumps(obj)
    except Exception as err:
        how = "cloudpickle" if cloudpickle is not None else "pickle (install cloudpickle to send lambdas)"
        raise TypeError(f"Distributed(nprocs=K) sends the ensemble, the algorithm and the options to spawned "
                        f"processes with {how}, which failed: {type(err).__name__}: {err}. Define f, g, "
                        f"prob_func and output_func at module level, or launch with torchrun") from err


def _worker(rank: int, world: int, port: int, blob: bytes, results: Any, pg: str, timeout: float,
            threads: int) -> None:
    """Entry point of a spawned rank."""
    import torch.distributed as dist

    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
        torch.set_num_threads(threads)
        ensemble, algorithm, adjoint, trajectories, spec, options, keep_outputs = pickle.loads(blob)
        if pg == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(pg, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout))
        sol = run_spmd(ensemble, algorithm, adjoint, trajectories, spec, options, keep_outputs, False,
                       time.perf_counter(), 0)
        results.put(("ok", rank, pickle.dumps(sol) if rank == 0 else None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(("error", rank, describe_error(exc, rank)))
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def spawn(ensemble: Any, algorithm: Any, adjoint: Any, trajectories: int, spec: Distributed,
          options: dict[str, Any], keep_outputs: bool, t_start: float) -> EnsembleSolution:
    """Solve on ``spec.nprocs`` spawned local processes and return rank 0's gathered result."""
    import multiprocessing as mp

    world = int(spec.nprocs)
    if spec.root not in (None, 0):
        raise ValueError("Distributed(nprocs=K) returns the result to this process; root must be None or 0")
    pg = spec.backend or "gloo"
    _pg_backend(Distributed(backend=pg), ensemble.problem.y0)
    blob = _dumps((ensemble, algorithm, adjoint, trajectories, spec, options, keep_outputs))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    threads = max(1, (os.cpu_count() or 1) // world)
    procs = [ctx.Process(target=_worker, args=(r, world, port, blob, results, pg, spec.timeout, threads),
                         name=f"ensemble-rank-{r}", daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    got = gather_results(procs, results, spec.timeout, f"Distributed(nprocs={world})",
                         lambda rank, data: rebuild_error(data), poll=1.0)
    sol = pickle.loads(got[0])
    sol.seconds = time.perf_counter() - t_start
    return sol
