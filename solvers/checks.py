"""Input checks shared by every solver and by the packages above (nde, pinn, quadrature): fail early,
with a message that names the culprit. Public: `from solvers.checks import check_finite, ...`."""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
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


def check_field_value(name: str, value: Any, y0: Tensor) -> None:
    """Raise ``ValueError`` unless the vector-field value ``value`` (e.g. ``f(t0, y0)``, named
    ``name``) is a finite tensor of ``y0``'s shape and dtype: the first evaluation of an ODE solve."""
    if not isinstance(value, Tensor) or value.shape != y0.shape:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must return a tensor of shape {tuple(y0.shape)}, got {got}")
    if value.dtype != y0.dtype:
        raise ValueError(f"{name} returned dtype {value.dtype}, but y0 has dtype {y0.dtype}")
    check_finite(name, value.detach())


def check_floating(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")


def check_signature(name: str, fn: Any, call: str) -> None:
    """Raise ``TypeError`` if the callable ``fn`` cannot be called as ``call`` (e.g. ``"f(t, y)"``):
    its positional arguments are counted with ``inspect.signature`` (an ``nn.Module``: its
    ``forward``). A callable whose signature cannot be read (some builtins) is let through; it meets
    the solver's first evaluation instead."""
    inside = call[call.index("(") + 1:call.rindex(")")].strip()
    nargs = len(inside.split(",")) if inside else 0
    target = fn
    try:
        from torch import nn

        if isinstance(fn, nn.Module):
            target = fn.forward
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*([None] * nargs))
    except TypeError as err:
        label = getattr(fn, "__name__", None) or type(fn).__name__
        raise TypeError(f"{name} must be callable as {call}, but {label}{sig} cannot be ({err})") from None


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


def check_real(name: str, value: Any) -> float:
    """A real number (a Python/NumPy number or a one-element real tensor) as a Python float.
    Strings, bools, complex numbers and other types are a ``TypeError`` naming ``name``: ``"1e-6"``
    or ``"fast"`` is not silently converted or passed on."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be a real number, got a tensor of shape {tuple(value.shape)} "
                            f"and dtype {value.dtype}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number (int or float), got {type(value).__name__} "
                        f"{value!r}")
    return float(value)


def check_tolerance(name: str, value: Any) -> float:
    """A tolerance as a Python float: a real number (``check_real``), finite and >= 0."""
    v = check_real(name, value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return v


#: Below this many machine epsilons (of the state's dtype, relative to the state's scale) the
#: tolerance is close enough to rounding that it will not be met reliably: a ``UserWarning``.
#: Measured with Tsit5 (pendulum, Lotka-Volterra, exponential growth; float32 against float64): at
#: 8.4 eps (rtol 1e-6) the float32 errors and NFE match float64's; at 4.2 eps (rtol 5e-7) the
#: float32 errors are 3-10x the tolerance and 3-60x float64's.
PRECISION_WARN_EPS = 8.0


def check_precision(y0: Tensor, rtol: float, atol: float, where: str = "solve") -> None:
    """Refuse (``ValueError``) or warn about (``UserWarning``) tolerances the state's dtype cannot meet,
    before any work starts.

    With ``eps`` the machine epsilon of ``y0``'s dtype and ``s = max |y0|`` the state's scale, the
    tolerance at that scale, relative to it, is ``r = rtol + atol / s`` (``s = 0``: ``rtol``, or
    no limit when ``atol > 0``). Rounding alone makes errors of about ``eps * s``, so

    * ``r < eps`` is a ``ValueError``: the tolerance is finer than one rounding unit of the state,
      no step can meet it (the controller shrinks the step until it underflows, as float16 or
      bfloat16 with the default tolerances do, or float32 with ``rtol=1e-10``);
    * ``atol > 0`` below the dtype's smallest positive number (float16: 6e-8, so ``atol=1e-9``) is
      a ``ValueError``: it rounds to zero in that dtype;
    * ``r < PRECISION_WARN_EPS * eps`` is a ``UserWarning`` naming the dtype, its eps and the
      tolerances: rounding errors are of the order of the tolerance (float32 with ``rtol=5e-7``).

    Only adaptive solves are checked (fixed steps do not use the tolerances). Complex states use the
    precision of their real part. A non-finite ``y0`` is left to the solver's own check."""
    if not isinstance(y0, Tensor) or not (y0.is_floating_point() or y0.is_complex()):
        return
    info = torch.finfo(y0.dtype)
    eps, smallest = float(info.eps), float(info.smallest_normal) * float(info.eps)
    name = str(y0.dtype).replace("torch.", "")
    fix = "use float64 (y0.double()) or looser tolerances"
    if 0 < atol < smallest:
        raise ValueError(f"{where}: atol = {atol:g} is below the smallest positive {name} number "
                         f"({smallest:.2g}) and rounds to zero in {name}; {fix}")
    if y0.numel() == 0:
        return
    s = float(y0.detach().abs().max())
    if not math.isfinite(s):
        return
    if s > 0:
        r = rtol + atol / s
    elif atol > 0:
        return
    else:
        r = rtol
    state = f" at the state's scale max|y0| = {s:.3g}" if atol > 0 and s > 0 else ""
    if r < eps:
        raise ValueError(f"{where}: rtol = {rtol:g}, atol = {atol:g} ask for a relative accuracy of {r:.3g}"
                         f"{state}, finer than {name}'s machine epsilon {eps:.3g}: no step can meet it; "
                         f"{fix} (rtol >= {PRECISION_WARN_EPS * eps:.2g} for {name})")
    if r < PRECISION_WARN_EPS * eps:
        warnings.warn(f"{where}: rtol = {rtol:g}, atol = {atol:g} ask for a relative accuracy of {r:.3g}"
                      f"{state}, within {PRECISION_WARN_EPS:g}x {name}'s machine epsilon {eps:.3g}: rounding "
                      f"errors are of the size of the tolerance, which will not be met reliably; {fix}",
                      UserWarning, stacklevel=3)


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
    max_steps = options.get("max_steps", 100_000)
    if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral):
        raise TypeError(f"max_steps must be an int, got {type(max_steps).__name__} {max_steps!r}")
    max_steps = int(max_steps)
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    dtmin = check_tolerance("dtmin", options.get("dtmin", 0.0))
    dtmax = check_real("dtmax", options.get("dtmax", math.inf))
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
    dt = check_real("dt", dt)
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a finite positive step size, got {options['dt']!r}")
    if options.get("controller") is not None:
        raise ValueError("dt= selects fixed steps; do not pass a controller with it")
    return dt
