"""SymPy expressions as torch functions.

Reference solutions are written once in SymPy (so they can be differentiated and checked symbolically)
and evaluated through torch (so autograd, dtypes and devices work on them). ``to_torch`` is a small
``sympy.lambdify`` wrapper whose elementary functions accept both Python numbers and tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import sympy as sp
import torch
from torch import Tensor


def _dual(name: str) -> Callable:
    tfn = getattr(torch, name)
    mfn = getattr(math, name)

    def fn(a):
        return tfn(a) if isinstance(a, Tensor) else mfn(a)

    return fn


_MODULE = {name: _dual(name) for name in ("sin", "cos", "tan", "exp", "log", "sqrt", "tanh", "sinh",
                                          "cosh", "atan", "erf")}
_MODULE.update({"Abs": lambda a: torch.abs(a) if isinstance(a, Tensor) else abs(a), "pi": math.pi,
                "E": math.e})


def to_torch(expr: sp.Expr, symbols: Sequence[sp.Symbol]) -> Callable[..., Tensor]:
    """``expr`` as a function of tensors ``(*symbols)``, broadcast to the shape of the arguments.

    ``Mod(a, b)`` prints as ``a % b``, which is ``torch.remainder`` (result in ``[0, b)`` for ``b > 0``).
    A result that does not depend on some argument is still broadcast to the common shape, so
    ``to_torch(sympy.Integer(0), (x, t))(x, t)`` is a zero tensor like ``x``.
    """
    fn = sp.lambdify(tuple(symbols), expr, modules=[_MODULE, "math"])

    def wrapped(*args: Tensor) -> Tensor:
        tensors = [a for a in args if isinstance(a, Tensor)]
        out = fn(*args)
        if not tensors:
            return torch.as_tensor(out)
        shape = torch.broadcast_shapes(*(a.shape for a in tensors))
        ref = tensors[0]
        if not isinstance(out, Tensor):
            return torch.full(shape, float(out), dtype=ref.dtype, device=ref.device)
        return out.expand(shape) if out.shape != shape else out

    wrapped.expr = expr  # type: ignore[attr-defined]
    return wrapped
