"""The one entry point: ``solve(problem, algorithm, **options) -> solution``.

Modelled on SciML's CommonSolve (``solve(prob, alg)``, ``init(prob, alg)``): the problem says what,
the algorithm says how, the options tune the run, and the solution carries its own diagnostics.
"""

from __future__ import annotations

from typing import Any

from .algorithm import Algorithm


def _check(problem: Any, algorithm: Any) -> None:
    if not isinstance(algorithm, Algorithm):
        if isinstance(algorithm, type) and issubclass(algorithm, Algorithm):
            raise TypeError(f"pass an instance: {algorithm.__name__}() rather than {algorithm.__name__}")
        raise TypeError(f"algorithm must be a solvers Algorithm, got {type(algorithm).__name__}")
    if algorithm.problem_types and not isinstance(problem, algorithm.problem_types):
        accepted = ", ".join(t.__name__ for t in algorithm.problem_types)
        raise TypeError(f"{type(algorithm).__name__} solves {accepted}, not {type(problem).__name__}")


def solve(problem: Any, algorithm: Algorithm, **options: Any) -> Any:
    """Solve ``problem`` with ``algorithm``; see each algorithm's docs for its options.

    ODE options (explicit Runge-Kutta methods): ``rtol``, ``atol``, ``dt`` (fixed step), ``dt0``
    (first adaptive step), ``saveat``, ``dense``, ``trace``, ``controller``, ``max_steps``,
    ``dtmin``, ``dtmax``, ``throw``.
    """
    _check(problem, algorithm)
    return algorithm.solve(problem, **options)


def init(problem: Any, algorithm: Algorithm, **options: Any) -> Any:
    """An integrator that can be stepped by hand (``integ.step()``), then ``integ.solution()``."""
    _check(problem, algorithm)
    return algorithm.init(problem, **options)
