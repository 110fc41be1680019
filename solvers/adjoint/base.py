"""What an adjoint is: a rule for how ``solve`` makes its output differentiable.

``solve(problem, algorithm, adjoint=A, **options)`` hands the solve to ``A.solve(problem, algorithm,
**options)``. The forward result is the same solution (same steps, same ``ts``/``ys``); the adjoint
decides what autograd sees and therefore the time and memory of the backward pass. Kidger, *On
Neural Differential Equations* (thesis, Oxford 2021), section 5.1, compares the options:

* discretise-then-optimise (``Backprop``, ``CheckpointAdjoint``): the
  exact gradient of the computed solution, at O(steps) or O(checkpoints) memory;
* optimise-then-discretise (``BacksolveAdjoint``, torchdiffeq's adjoint): the
  adjoint ODE solved numerically backwards, O(1) memory in the number of steps, a gradient that is
  only as accurate as the backward solve (and the backward reconstruction of ``y``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


def _check_params(params: Any) -> tuple[Tensor, ...]:
    if params is None:
        return ()
    if isinstance(params, Tensor):
        raise TypeError("params must be a sequence of tensors (e.g. [w, b] or list(module.parameters())), "
                        "not a single tensor")
    try:
        out = tuple(params)
    except TypeError as err:
        raise TypeError(f"params must be a sequence of tensors, got {type(params).__name__}") from err
    for i, p in enumerate(out):
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{i}] must be a torch.Tensor, got {type(p).__name__}")
        if not p.is_floating_point():
            raise TypeError(f"params[{i}] must have a floating dtype, got {p.dtype}")
    return out


class Adjoint:
    """Base class of the gradient rules passed as ``solve(..., adjoint=...)``.

    Args:
        params: extra tensors to differentiate with respect to, for a vector field that closes over
            tensors instead of being an ``nn.Module``. The parameters of ``problem.f`` are found
            automatically when it is an ``nn.Module``.

    Class attributes say what a rule offers (the neural-DE regularisers read them):

    * ``differentiates_solver``: the solver's internals (its error and stiffness estimates in
      ``sol.trace``) are on the autograd graph, as the global regularisers need;
    * ``keeps_trace``: ``trace=True`` returns the (possibly detached) per-step trace of the forward solve;
    * ``own_methods``: the forward solve runs our Runge-Kutta methods (``False``: torchdiffeq's).
    """

    differentiates_solver: ClassVar[bool] = False
    keeps_trace: ClassVar[bool] = True
    own_methods: ClassVar[bool] = True

    def __init__(self, params: Sequence[Tensor] | None = None):
        self.params = _check_params(params)

    def parameters_of(self, problem: Any) -> tuple[Tensor, ...]:
        """The tensors the gradient flows to: ``problem.f``'s parameters (if a module) that require
        grad, then ``params``, without duplicates."""
        found: list[Tensor] = []
        seen: set[int] = set()
        candidates: Iterable[Tensor] = problem.f.parameters() if isinstance(problem.f, nn.Module) else ()
        for p in (*candidates, *self.params):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                found.append(p)
        return tuple(found)

    def solve(self, problem: Any, algorithm: Any, **options: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Backprop(Adjoint):
    """Differentiate through every operation of the solver (discretise-then-optimise).

    Autograd records the whole solve; the gradient is the exact derivative of the computed
    solution (to rounding), the solver's error and stiffness estimates included, so the global
    regularisers (ERNODE/SRNODE, Pal et al. 2021) work only with this rule. Memory grows linearly
    with the number of steps (every stage of every step is kept for the backward pass); the
    backward pass evaluates no vector field, it replays the recorded graph. This is what
    ``solve(problem, algorithm)`` without ``adjoint=`` does.
    """

    differentiates_solver = True

    def solve(self, problem: Any, algorithm: Any, **options: Any) -> Any:
        return algorithm.solve(problem, **options)


def nothing_to_differentiate(problem: Any, params: tuple[Tensor, ...], name: str) -> None:
    """The continuous adjoints' policy: with gradients enabled, a plain-function ``f`` with no
    ``params=`` and a ``y0`` that does not require grad is a ``ValueError`` (autograd would silently
    give no gradient to the tensors ``f`` closes over). A module with no trainable parameters is fine."""
    if not torch.is_grad_enabled() or params or problem.y0.requires_grad:
        return
    if not isinstance(problem.f, nn.Module):
        raise ValueError(f"{name}: nothing to differentiate: f is a plain function, y0 does not require "
                         f"grad and no params were given; pass {name}(params=[...]) with the tensors f "
                         "closes over, or make f an nn.Module")
