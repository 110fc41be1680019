"""``solve_ensemble``: validate everything, then hand the trajectories to the backend."""

from __future__ import annotations

import numbers
import time
from typing import Any

from ..algorithm import Algorithm
from ..api import _check, _check_adjoint
from ..checks import check_options
from ..stepping.loop import LOOP_OPTIONS
from ..stepping.protocol import Stepper
from .backends import Backend, Batched, Distributed, Serial, check_backend
from .problem import EnsembleProblem
from .runner import run_range
from .solution import EnsembleSolution, assemble

#: Options ``solve_ensemble`` consumes itself (the rest go to every trajectory's solve).
ENSEMBLE_OPTIONS = ("trajectories", "backend", "keep_outputs", "progress", "adjoint")


def check_trajectories(trajectories: Any) -> int:
    if trajectories is None:
        raise TypeError("an ensemble solve needs the number of trajectories: trajectories=N")
    if isinstance(trajectories, bool) or not isinstance(trajectories, numbers.Integral):
        raise TypeError(f"trajectories must be an int >= 1, "
                        f"got {type(trajectories).__name__} {trajectories!r}")
    if trajectories < 1:
        raise ValueError(f"trajectories must be >= 1, got {trajectories}")
    return int(trajectories)


def _check_solve_options(ensemble: EnsembleProblem, algorithm: Algorithm, backend: Backend,
                         options: dict[str, Any]) -> None:
    for name, why in (("seed", "the ensemble seeds every trajectory from (EnsembleProblem(seed=...), i)"),
                      ("brownian", "every trajectory draws its own Brownian path from its seed")):
        if name in options:
            raise ValueError(f"solve_ensemble: do not pass {name}=: {why}")
    if isinstance(algorithm, Stepper):
        valid = set(LOOP_OPTIONS + algorithm.extra_options) - {"seed", "brownian", "progress"}
        check_options(options, valid, f"solve_ensemble with {type(algorithm).__name__}")
    inner = backend.inner if isinstance(backend, Distributed) else backend
    if isinstance(inner, Batched) and options.get("events") is not None:
        raise ValueError("events with Batched: a terminal event would stop the whole batch; use Serial()")


def solve_ensemble(ensemble: EnsembleProblem, algorithm: Algorithm, trajectories: int | None = None,
                   backend: Backend | None = None, *, keep_outputs: bool | None = None,
                   progress: bool = False, adjoint: Any = None, **options: Any) -> EnsembleSolution | None:
    """Solve ``trajectories`` trajectories of ``ensemble`` with ``algorithm``.

    Args:
        ensemble: an ``EnsembleProblem``.
        algorithm: any time-stepping algorithm for the ensemble's problem type.
        trajectories: ``N >= 1``.
        backend: ``Serial()`` (the default, ``None``), ``Batched(chunk=None)`` or ``Distributed(...)``.
        keep_outputs: keep every trajectory's output (default: only when there is no reduction).
        progress: a progress bar over trajectories (only on a TTY; rank 0 under ``Distributed``).
        adjoint: passed to every trajectory's ``solve``.
        **options: passed to every trajectory's ``solve`` (``dt``, ``rtol``, ``saveat``, ``throw``, ...);
            ``seed`` and ``brownian`` are the ensemble's and refused. With ``throw=False`` failed
            trajectories are recorded in ``retcodes`` and left out of the reduction.

    Returns:
        an ``EnsembleSolution``; under ``Distributed(root=r)`` the ranks other than ``r`` get ``None``.

    Everything is checked before any trajectory is solved (and, for spawned processes, before they
    start): the ensemble, algorithm, count, backend and option names.
    """
    if not isinstance(ensemble, EnsembleProblem):
        raise TypeError(f"solve_ensemble needs an EnsembleProblem, got {type(ensemble).__name__}")
    _check(ensemble.problem, algorithm)
    _check_adjoint(adjoint)
    trajectories = check_trajectories(trajectories)
    backend = Serial() if backend is None else check_backend(backend)
    if keep_outputs is None:
        keep_outputs = ensemble.reduction is None
    if not isinstance(keep_outputs, bool):
        raise TypeError(f"keep_outputs must be True, False or None, got {keep_outputs!r}")
    if not keep_outputs and ensemble.reduction is None:
        raise ValueError("keep_outputs=False without a reduction leaves nothing to return")
    _check_solve_options(ensemble, algorithm, backend, options)
    progress = bool(progress)

    if isinstance(backend, Distributed):
        from .distributed import launched, run_distributed

        if backend.nprocs and backend.nprocs > 1 and not launched():
            # Spawned processes would only meet a bad prob_func / batch after starting: try one here.
            ensemble.trajectory_problem(0)
            if isinstance(backend.inner, Batched):
                n = min(trajectories, 2)
                ensemble.batch_problem(list(range(n)), [ensemble.trajectory_seed(i) for i in range(n)])
        return run_distributed(ensemble, algorithm, adjoint, trajectories, backend, options, keep_outputs,
                               progress)
    t0 = time.perf_counter()
    part = run_range(ensemble, algorithm, adjoint, 0, trajectories, backend, options, keep_outputs, progress)
    return assemble([part], ensemble, trajectories, 1, repr(backend), keep_outputs, time.perf_counter() - t0)
