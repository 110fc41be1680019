"""torchdiffeq's and torchsde's adjoints, kept as peers of ours for comparison."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..algorithm import Algorithm
from ..ode.torchdiffeq_backend import TorchDiffEq
from ..problem import ODEProblem
from .base import Adjoint, nothing_to_differentiate


class TorchDiffEqAdjoint(Adjoint):
    """``torchdiffeq.odeint_adjoint``: the continuous adjoint of Chen et al. (NeurIPS 2018) as
    torchdiffeq implements it, with torchdiffeq's own solver.

    The algorithm must be a ``TorchDiffEq`` (its method name is used; its
    ``adjoint`` flag is ignored): torchdiffeq cannot step with our methods, and an adjoint never
    swaps the caller's solver for another one. The backward solve uses torchdiffeq's defaults (the
    forward method and tolerances) unless ``options`` (torchdiffeq's ``adjoint_options``) say
    otherwise. No per-step trace (torchdiffeq reports none).

    Args:
        params: extra tensors to differentiate (torchdiffeq's ``adjoint_params``).
        options: passed to torchdiffeq as ``adjoint_options``.
    """

    keeps_trace = False
    own_methods = False

    def __init__(self, params: Sequence[Tensor] | None = None, options: dict | None = None):
        super().__init__(params)
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
        self.options = dict(options or {})

    def solve(self, problem: ODEProblem, algorithm: Algorithm, **options: Any):
        if not isinstance(algorithm, TorchDiffEq):
            raise ValueError(f"TorchDiffEqAdjoint runs torchdiffeq's own solver: pass TorchDiffEq('dopri5') "
                             f"(or another torchdiffeq method) as the algorithm, not {algorithm!r}; for an "
                             "adjoint that steps with our methods use BacksolveAdjoint()")
        params = self.parameters_of(problem)
        nothing_to_differentiate(problem, params, "TorchDiffEqAdjoint")
        if "adjoint_params" not in options:
            options["adjoint_params"] = params
        if self.options and "adjoint_options" not in options:
            options["adjoint_options"] = self.options
        if not torch.is_grad_enabled():
            options.pop("adjoint_params"), options.pop("adjoint_options", None)
            return TorchDiffEq(algorithm.method, adjoint=False).solve(problem, **options)
        return TorchDiffEq(algorithm.method, adjoint=True).solve(problem, **options)


class TorchSDEAdjoint(Adjoint):
    """``torchsde.sdeint_adjoint`` (Li, Wong, Chen & Duvenaud, "Scalable gradients for stochastic
    differential equations", AISTATS 2020): the stochastic adjoint with torchsde's fixed-step
    ``method`` for the forward and backward passes. Used by ``nde.NeuralSDE``; a fixed ``dt``
    is required there."""

    keeps_trace = False
    own_methods = False

    def __init__(self, method: str = "euler", params: Sequence[Tensor] | None = None):
        super().__init__(params)
        if not isinstance(method, str):
            raise TypeError(f"method must be a torchsde method name, got {type(method).__name__}")
        self.method = method

    def __repr__(self) -> str:
        return f"TorchSDEAdjoint({self.method!r})"

    def sdeint(self, sde: Any, y0: Tensor, ts: Tensor, bm: Any, dt: float,
               params: Sequence[Tensor] = ()) -> Tensor:
        """``torchsde.sdeint_adjoint(sde, y0, ts, bm=bm, method=self.method, dt=dt)`` with the
        parameters of ``sde`` (a module with ``f``/``g``) and ``self.params``."""
        import torchsde

        found = {id(p): p for p in (*params, *self.params) if p.requires_grad}
        return torchsde.sdeint_adjoint(sde, y0, ts, bm=bm, method=self.method, dt=dt,
                                       adjoint_params=tuple(found.values()))

    def solve(self, problem: Any, algorithm: Any, **options: Any):
        raise TypeError("TorchSDEAdjoint is used through nde.NeuralSDE(..., adjoint=TorchSDEAdjoint()); "
                        "solve(SDEProblem, ..., adjoint=...) is not supported")
