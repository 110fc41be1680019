"""``torch.distributed`` for the trainer: which world this process is in, sharding, reductions, and a
helper that spawns ``K`` local gloo processes without ``torchrun``.

**World.** ``DistContext`` is read from an initialised process group, or created from ``torchrun``'s
environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) by
``init_distributed``: NCCL when CUDA is available (each process on ``cuda:LOCAL_RANK``), gloo otherwise.
Without either, the context is the single process (rank 0 of 1) and nothing is initialised.

**Sharding.** Every rank draws the same *global* batch (the shuffling generator is the same everywhere)
and takes the contiguous chunk ``torch.tensor_split(global_batch, K)[rank]`` (``shard``). The global
batch therefore does not depend on ``K``; a sampler that pads or drops samples per rank
(``DistributedSampler``) would change it, and with it the loss curve.

**Reductions.** ``all_reduce_sum`` sums a float64 vector (the per-step metrics); gloo reduces in a fixed
order for a given world size, so the result is repeatable run to run and identical on every rank.
``broadcast_object`` sends rank 0's Python object (validation metrics, stop decisions) to every rank,
so decisions never differ between ranks.

**Spawn.** ``spawn(fn, nprocs=K)`` starts ``K`` processes (by default the ``multiprocessing`` "spawn"
context: fresh interpreters, nothing of the parent's threads or locks inherited; ``start_method="fork"``
on Linux starts them at once from the parent's imported modules), joins them into a gloo group on
``127.0.0.1`` and a free port, calls ``fn(*args)`` in each and returns the ``K`` return values (sent
back as bytes through a queue). A rank that raises makes ``spawn`` stop the others and re-raise with
that rank's traceback; a run that exceeds ``timeout`` seconds is stopped and raises ``TimeoutError``.
``fn`` must be picklable (a module-level function; with ``cloudpickle`` installed, closures too). A
script that spawns (with "spawn") must guard its entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import io
import os
import pickle
import queue as queue_module
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

__all__ = ["DistContext", "distributed_available", "init_distributed", "current_context", "default_backend",
           "local_device", "shard", "all_reduce_sum", "broadcast_object", "barrier", "free_port",
           "gather_results", "spawn"]


@dataclass(frozen=True)
class DistContext:
    """Rank, world size, local rank and backend of this process (``world_size == 1``: no group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """More than one process: the trainer wraps the model in ``DistributedDataParallel``."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints and shows progress."""
        return self.rank == 0


def distributed_available() -> tuple[bool, str]:
    """Whether ``torch.distributed`` with gloo can run here, and if not, why (for skips and errors)."""
    import torch.distributed as dist

    if not dist.is_available():
        return False, "this torch build has no torch.distributed"
    if not dist.is_gloo_available():
        return False, "this torch build has no gloo backend"
    try:
        free_port()
    except OSError as err:
        return False, f"cannot bind a localhost TCP socket ({err})"
    return True, ""


def default_backend() -> str:
    """NCCL with CUDA (and an NCCL build), gloo otherwise."""
    import torch.distributed as dist

    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def current_context() -> DistContext:
    """The context of an initialised process group, else the single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    return DistContext(rank, world, local, str(dist.get_backend()))


def init_distributed(backend: str | None = None, timeout: float = 1800.0) -> DistContext:
    """Join the process group ``torchrun`` describes in the environment, if not yet joined.

    ``WORLD_SIZE`` unset or 1: the single-process context, nothing initialised. With CUDA and NCCL the
    process's device is set to ``cuda:LOCAL_RANK`` (put the model on ``local_device()``)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return current_context()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} asks for {world} processes, but this torch build has no "
                           "torch.distributed")
    backend = backend or default_backend()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout))
    return current_context()


def local_device(ctx: DistContext | None = None) -> torch.device:
    """``cuda:LOCAL_RANK`` under NCCL, the CPU otherwise."""
    ctx = ctx or current_context()
    if ctx.backend == "nccl":
        return torch.device("cuda", ctx.local_rank)
    return torch.device("cpu")


def shard(x: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s contiguous chunk of ``x`` along dim 0 (``torch.tensor_split`` into ``world_size``
    chunks: the first ``len(x) % world_size`` chunks have one more element)."""
    if world_size == 1:
        return x
    return torch.tensor_split(x, world_size)[rank]


def _reduce_device(ctx: DistContext) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
    return local_device(ctx) if ctx.backend == "nccl" else torch.device("cpu")


def all_reduce_sum(values: Sequence[float] | Tensor, ctx: DistContext) -> list[float]:
    """The sums over ranks of ``values`` (float64); the values themselves on one process."""
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if not ctx.distributed:
        return t.tolist()
    import torch.distributed as dist

    t = t.to(_reduce_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src, device=_reduce_device(ctx) if ctx.backend == "nccl" else None)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.local_rank])
        else:
            dist.barrier()


# -- spawned local processes -----------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gather_results(procs: Sequence[Any], results: Any, timeout: float, label: str,
                   on_error: Callable[[int, Any], BaseException], poll: float = 0.5) -> dict[int, Any]:
    """One ``(kind, rank, data)`` message per process from ``results``: ``{rank: data}``.

    The processes' launcher waits here (shared by ``spawn`` and the ensembles' ``Distributed``): a
    message of kind ``"error"`` raises ``on_error(rank, data)``; a rank that exits without a message
    (after 2 s more for one still in the pipe) raises ``RuntimeError``; nothing within ``timeout``
    seconds raises ``TimeoutError``. Every process is stopped before this returns or raises: those that
    delivered get 10 s to exit by themselves, the others are terminated; the queue is closed."""
    n = len(procs)
    got: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    done = False
    try:
        while len(got) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{label}: no result within timeout = {timeout} s (results from ranks "
                                   f"{sorted(got)})")
            try:
                kind, rank, data = results.get(timeout=min(left, poll))
            except queue_module.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode is not None and r not in got]
                if not dead:
                    continue
                try:  # a rank that exited may still have its message in the pipe
                    kind, rank, data = results.get(timeout=2.0)
                except queue_module.Empty:
                    codes = {r: procs[r].exitcode for r in dead}
                    raise RuntimeError(f"{label}: rank(s) {sorted(codes)} exited without a result "
                                       f"(exit codes {codes})") from None
            if kind == "error":
                raise on_error(rank, data)
            got[rank] = data
        done = True
    finally:
        end = time.monotonic() + (10.0 if done else 0.0)
        for p in procs:
            p.join(max(0.0, end - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
        results.close()
    return got


def _dumps(obj: Any) -> bytes:
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - cloudpickle comes with the test environment
        return pickle.dumps(obj)
    return cloudpickle.dumps(obj)


def _to_bytes(value: Any) -> bytes:
    # torch.save, not the queue's pickler: tensors would otherwise travel as shared-memory handles that
    # die with the child process.
    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()


def _worker(rank: int, world: int, port: int, blob: bytes, results: Any, backend: str, timeout: float,
            threads: int) -> None:
    """Entry point of a spawned rank: join the group, run the function, report."""
    import torch.distributed as dist

    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
        torch.set_num_threads(threads)
        fn, args, kwargs = pickle.loads(blob)
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout))
        value = fn(*args, **kwargs)
        results.put(("ok", rank, _to_bytes(value)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(("error", rank, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn: Callable[..., Any], nprocs: int = 2, args: Sequence[Any] = (), kwargs: dict | None = None, *,
          timeout: float = 120.0, backend: str = "gloo", threads: int | None = None,
          start_method: str = "spawn") -> list[Any]:
    """Run ``fn(*args, **kwargs)`` on ``nprocs`` spawned local processes joined in one process group;
    return their return values in rank order.

    Inside ``fn``, ``current_context()`` (and every ``Trainer``) sees the group. ``threads``: intra-op
    threads per process (default ``max(1, cpu_count // nprocs)``). ``timeout`` bounds the whole run
    (start-up included) and every collective inside it."""
    import multiprocessing as mp

    ok, why = distributed_available()
    if not ok:
        raise RuntimeError(f"spawn: {why}")
    nprocs = int(nprocs)
    if nprocs < 1:
        raise ValueError(f"nprocs must be >= 1, got {nprocs}")
    if start_method not in ("spawn", "fork", "forkserver"):
        raise ValueError(f"start_method must be 'spawn', 'fork' or 'forkserver', got {start_method!r}")
    if start_method == "fork" and torch.cuda.is_available() and torch.cuda.is_initialized():
        raise RuntimeError("spawn: CUDA is initialised in this process, so forked children cannot use it; "
                           "use start_method='spawn'")
    threads = threads or max(1, (os.cpu_count() or 1) // nprocs)
    blob = _dumps((fn, tuple(args), dict(kwargs or {})))
    ctx = mp.get_context(start_method)
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, name=f"trainer-rank-{r}", daemon=True,
                         args=(r, nprocs, port, blob, results, backend, float(timeout), threads))
             for r in range(nprocs)]
    for p in procs:
        p.start()
    got = gather_results(procs, results, timeout, f"spawn ({nprocs} processes)",
                         lambda rank, data: RuntimeError(f"spawn: rank {rank} of {nprocs} failed: {data}"),
                         poll=0.5)
    # weights_only=False: the values are arbitrary Python objects returned by our own child processes
    return [torch.load(io.BytesIO(got[r]), weights_only=False) for r in range(nprocs)]
