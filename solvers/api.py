"""The one entry point: ``solve(problem, algorithm, **options) -> solution``.

Modelled on SciML's CommonSolve (``solve(prob, alg)``, ``init(prob, alg)``): the problem says what,
the algorithm says how, the options tune the run, and the solution carries its own diagnostics.
"""

from __future__ import annotations

from typing import Any

from .adjoint.base import Adjoint, Backprop
from .algorithm import Algorithm


def _check(problem: Any, algorithm: Any) -> None:
    if not isinstance(algorithm, Algorithm):
        if isinstance(algorithm, type) and issubclass(algorithm, Algorithm):
            raise TypeError(f"pass an instance: {algorithm.__name__}() rather than {algorithm.__name__}")
        raise TypeError(f"algorithm must be a solvers Algorithm, got {type(algorithm).__name__}")
    if algorithm.problem_types and not isinstance(problem, algorithm.problem_types):
        accepted = ", ".join(t.__name__ for t in algorithm.problem_types)
        raise TypeError(f"{type(algorithm).__name__} solves {accepted}, not {type(problem).__name__}")


def _check_adjoint(adjoint: Any) -> None:
    if adjoint is None or isinstance(adjoint, Adjoint):
        return
    if isinstance(adjoint, type) and issubclass(adjoint, Adjoint):
        raise TypeError(f"adjoint: pass an instance: {adjoint.__name__}() rather than {adjoint.__name__}")
    raise TypeError(f"adjoint must be None or a solvers.adjoint Adjoint (Backprop(), BacksolveAdjoint(), "
                    f"CheckpointAdjoint(n), TorchDiffEqAdjoint()), got {type(adjoint).__name__}")


def solve(problem: Any, algorithm: Algorithm, adjoint: Adjoint | None = None, **options: Any) -> Any:
    """Solve ``problem`` with ``algorithm``; see each algorithm's docs for its options.

    Time-stepping methods (ODE and SDE, one loop: ``solvers.stepping``) take ``rtol``, ``atol``
    (defaults: ``DEFAULT_TOLERANCES``), ``dt`` (fixed step),
    ``dt0`` (first adaptive step), ``saveat``, ``trace``, ``controller``, ``max_steps``, ``dtmin``,
    ``dtmax``, ``throw``, ``progress`` and ``events`` (an ``Event`` or several;
    methods with dense output). ODE methods add ``dense``; SDE methods ``brownian``, ``seed``,
    ``save_noise``. Explicit Runge-Kutta methods also run on the sync-free loop
    (``solvers.stepping.device_loop``): ``sync_free=True``, ``compile=True`` (one ``torch.compile``d
    graph per step), ``batch_mode="per_sample"`` (a step size per batch row), ``sync_every=k``.

    ``adjoint`` chooses how gradients of the solution are computed (``solvers.adjoint``):
    ``None`` or ``Backprop()`` differentiates through the step loop; ``BacksolveAdjoint()``,
    ``CheckpointAdjoint(n)`` and ``TorchDiffEqAdjoint()`` run ``adjoint.solve(problem, algorithm,
    **options)``.

    An ``EnsembleProblem`` (``solvers.ensemble``) is solved as an ensemble: ``trajectories=N`` and
    ``backend=Serial() | Batched() | Distributed()`` (see ``solve_ensemble``).
    """
    from .ensemble.problem import EnsembleProblem  # lazy: solvers.ensemble imports this module

    if isinstance(problem, EnsembleProblem):
        return problem.solve(algorithm, adjoint=adjoint, **options)
    _check(problem, algorithm)
    _check_adjoint(adjoint)
    if adjoint is None or type(adjoint) is Backprop:
        return algorithm.solve(problem, **options)
    from .stepping.device_loop import wants_device_loop

    if wants_device_loop(options):
        raise ValueError(f"sync_free / compile / batch_mode='per_sample' differentiate by backpropagation "
                         f"through the loop; adjoint={adjoint!r} runs its own solves on the default loop: "
                         "use adjoint=Backprop() (the default) with them, or drop them")
    if options.get("events") is not None:
        # The event time's gradient (implicit function theorem) differentiates the dense output of
        # the solve's own graph, which only Backprop keeps.
        raise ValueError(f"events with adjoint={adjoint!r}: the event time is differentiated through the "
                         "solve's graph; use adjoint=Backprop() (the default) with events")
    return adjoint.solve(problem, algorithm, **options)


def init(problem: Any, algorithm: Algorithm, **options: Any) -> Any:
    """An integrator that can be stepped by hand (``integ.step()``), then ``integ.solution()``.

    Works for every time-stepping method, ODE and SDE (``Integrator``)."""
    _check(problem, algorithm)
    return algorithm.init(problem, **options)
