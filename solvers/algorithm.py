"""The algorithm protocol behind ``solve``.

An algorithm is a small object holding a method's settings. ``solve(problem, algorithm, **options)``
checks the problem type against ``algorithm.problem_types`` and calls ``algorithm.solve``. Packages
above ``solvers`` (``pinn``, ``quadrature``, ``nde``) subclass ``Algorithm`` for their own
problems, so one entry point serves all of them.
"""

from __future__ import annotations

from typing import Any, ClassVar


class Algorithm:
    """Base class of every algorithm. Subclasses set ``problem_types`` and implement ``solve``."""

    problem_types: ClassVar[tuple[type, ...]] = ()

    def solve(self, problem: Any, **options: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def init(self, problem: Any, **options: Any) -> Any:
        raise TypeError(f"{type(self).__name__} cannot be stepped by hand (no init)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
