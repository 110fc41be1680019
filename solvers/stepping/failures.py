"""How an attempted step says it could not be taken (see ``solvers.stepping.protocol``)."""

from __future__ import annotations

from typing import Any


class StepRejected(Exception):
    """Raised by ``attempt``: this attempt failed (``reason``); retry with ``dt * dt_factor``."""

    def __init__(self, reason: str, dt_factor: float = 0.5):
        super().__init__(reason)
        self.reason = reason
        self.dt_factor = dt_factor


class StepFailure(Exception):
    """Raised by ``attempt``: the solve cannot go on; it ends with ``retcode`` (``detail`` says why)."""

    def __init__(self, retcode: Any, detail: str = ""):
        super().__init__(detail)
        self.retcode = retcode
        self.detail = detail
