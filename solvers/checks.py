"""Input checks shared by every solver and by the packages above (nde, pinn, quadrature): fail early,
with a message that names the culprit. Public: `from solvers.checks import check_finite, ...`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def check_finite(name: str, x: Tensor) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf."""
    if not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "Inf"
        raise ValueError(f"{name} contains {bad} values")


def check_floating(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")


def check_span(tspan: Any, allow_reversed: bool = True) -> tuple[float, float]:
    """A time span as two float64 Python floats; rejects NaN, Inf, zero length."""
    try:
        t0, t1 = (float(v) for v in tspan)
    except (TypeError, ValueError) as err:
        raise ValueError(f"tspan must be a pair of numbers (t0, t1), got {tspan!r}") from err
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise ValueError(f"tspan must be finite, got ({t0}, {t1})")
    if t0 == t1:
        raise ValueError(f"tspan has zero length: t0 = t1 = {t0}")
    if t1 < t0 and not allow_reversed:
        raise ValueError(f"tspan is reversed ({t0} > {t1}) and this solver integrates forwards only")
    return t0, t1


def check_tolerance(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number, got {value!r}") from err
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return v


def check_options(options: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    """Reject option names a solver does not know (a typo must not be silently ignored)."""
    valid = set(valid)
    unknown = sorted(set(options) - valid)
    if unknown:
        raise TypeError(f"{where}: unknown option(s) {', '.join(map(repr, unknown))}; "
                        f"valid options are {', '.join(sorted(valid))}")


@dataclass(frozen=True)
class StepOptions:
    """The options every time-stepping solver shares, validated."""

    rtol: float
    atol: float
    trace: bool
    throw: bool
    max_steps: int
    dtmin: float
    dtmax: float
    progress: bool


def step_options(options: Mapping[str, Any], rtol: float, atol: float) -> StepOptions:
    """Validate the shared stepping options; ``rtol``/``atol`` are the solver's defaults."""
    rtol = check_tolerance("rtol", options.get("rtol", rtol))
    atol = check_tolerance("atol", options.get("atol", atol))
    if rtol == 0 and atol == 0:
        raise ValueError("rtol and atol cannot both be zero")
    max_steps = int(options.get("max_steps", 100_000))
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    dtmin = check_tolerance("dtmin", options.get("dtmin", 0.0))
    dtmax = float(options.get("dtmax", math.inf))
    if not dtmax > 0:
        raise ValueError(f"dtmax must be > 0, got {dtmax}")
    return StepOptions(rtol, atol, bool(options.get("trace", False)), bool(options.get("throw", True)),
                       max_steps, dtmin, dtmax, bool(options.get("progress", False)))


def check_saveat(saveat: Any, t0: float, t1: float) -> list[float]:
    """Save times as floats inside ``[t0, t1]`` (either direction), ordered along the integration.

    Times within rounding of an end are clipped onto it."""
    st = torch.as_tensor(saveat, dtype=torch.float64).reshape(-1).cpu()
    if st.numel() == 0:
        raise ValueError("saveat is empty")
    if not bool(torch.isfinite(st).all()):
        raise ValueError("saveat contains NaN or Inf")
    lo, hi = min(t0, t1), max(t0, t1)
    tol = 1e-12 * max(1.0, abs(lo), abs(hi))
    if float(st.min()) < lo - tol or float(st.max()) > hi + tol:
        raise ValueError(f"saveat times must lie inside tspan [{lo}, {hi}]")
    direction = 1.0 if t1 > t0 else -1.0
    if bool(((st[1:] - st[:-1]) * direction < 0).any()):
        raise ValueError("saveat must be ordered along the direction of integration")
    return [min(max(s, lo), hi) for s in st.tolist()]


def fixed_step(options: Mapping[str, Any], adaptive: bool, method: str) -> float | None:
    """The ``dt=`` option: a fixed step size (``None`` for an adaptive solve), validated."""
    dt = options.get("dt")
    if dt is None:
        if not adaptive:
            raise ValueError(f"{method} has no error estimator: pass a fixed step dt=")
        return None
    dt = float(dt)
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a finite positive step size, got {options['dt']!r}")
    if options.get("controller") is not None:
        raise ValueError("dt= selects fixed steps; do not pass a controller with it")
    return dt
