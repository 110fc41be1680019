"""Input checks shared by every solver: fail early, with a message that names the culprit."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
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
