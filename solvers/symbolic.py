"""SymPy expressions as torch functions: the one conversion every package uses.

Reference problems are written once in SymPy (so they can be solved, differentiated and checked
symbolically) and evaluated through torch (so autograd, dtypes and devices work on them). The ODE
references (``solvers.reference.builder``), the SDE references (``solvers.reference.sde``) and
the PDE problems of ``pinn`` all convert through this module.

* ``TORCH_FUNCTIONS`` maps the names ``sympy.lambdify``'s printer emits to functions that apply
  torch to tensors and ``math`` to plain numbers (SymPy constants such as ``sqrt(2)`` reach the
  generated code as Python numbers): ``sin cos tan asin acos atan sinh cosh tanh exp log sqrt erf
  Abs`` and the constants ``pi``, ``E``. ``Mod(a, b)`` prints as ``a % b``, which on tensors is
  ``torch.remainder`` (result in ``[0, b)`` for ``b > 0``).
* ``lambdify_torch`` is ``sympy.lambdify`` with those functions: a constant expression comes back
  as a Python number.
* ``to_torch`` wraps it so the result is always a tensor broadcast to the common shape of the
  tensor arguments, so ``to_torch(sympy.Integer(0), (x, t))(x, t)`` is a zero tensor like ``x``.

>>> import sympy, torch
>>> x = sympy.Symbol("x")
>>> fn = to_torch(sympy.exp(-x) * sympy.sin(x), (x,))
>>> round(float(fn(torch.tensor(1.0, dtype=torch.float64))), 6)
0.309560
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import sympy as sp
import torch
from torch import Tensor

__all__ = ["TORCH_FUNCTIONS", "lambdify_torch", "to_torch"]


def _dual(torch_fn: Callable, number_fn: Callable) -> Callable:
    """A function that applies ``torch_fn`` to tensors and ``number_fn`` to plain numbers."""

    def fn(a):
        return torch_fn(a) if isinstance(a, Tensor) else number_fn(a)

    fn.__name__ = getattr(number_fn, "__name__", "fn")
    return fn


_NAMES = ("sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "exp", "log", "sqrt", "erf")

#: SymPy function names (as ``sympy.lambdify``'s printer emits them) mapped to torch-or-math functions.
TORCH_FUNCTIONS: dict[str, object] = {
    name: _dual(getattr(torch, name), getattr(math, name)) for name in _NAMES
}
TORCH_FUNCTIONS.update({"Abs": _dual(torch.abs, abs), "pi": math.pi, "E": math.e})


def lambdify_torch(args: Sequence[sp.Symbol], expr: sp.Expr) -> Callable:
    """``sympy.lambdify(args, expr)`` with the functions of ``TORCH_FUNCTIONS``.

    The result takes tensors or Python numbers; a constant expression comes back as a Python number
    (use ``to_torch`` for a result that is always a broadcast tensor).
    """
    return sp.lambdify(args, expr, modules=[TORCH_FUNCTIONS, "math"])


def to_torch(expr: sp.Expr, symbols: Sequence[sp.Symbol]) -> Callable[..., Tensor]:
    """``expr`` as a function of ``(*symbols)`` returning a tensor of the arguments' broadcast shape.

    Arguments may be tensors or Python numbers. The result has the broadcast shape of the tensor
    arguments (a result that does not depend on some argument is still broadcast, so
    ``to_torch(sympy.Integer(0), (x, t))(x, t)`` is a zero tensor like ``x``); a constant result takes
    the dtype and device of the first tensor argument. With no tensor argument the result is
    ``torch.as_tensor`` of the number. The function keeps ``expr`` and ``symbols`` as attributes.
    """
    fn = lambdify_torch(tuple(symbols), expr)

    def wrapped(*args: Tensor | float) -> Tensor:
        tensors = [a for a in args if isinstance(a, Tensor)]
        out = fn(*args)
        if not tensors:
            return torch.as_tensor(out)
        shape = tensors[0].shape if len(tensors) == 1 else torch.broadcast_shapes(*(a.shape for a in tensors))
        if not isinstance(out, Tensor):
            return torch.full(shape, float(out), dtype=tensors[0].dtype, device=tensors[0].device)
        return out.expand(shape) if out.shape != shape else out

    wrapped.expr = expr  # type: ignore[attr-defined]
    wrapped.symbols = tuple(symbols)  # type: ignore[attr-defined]
    return wrapped

