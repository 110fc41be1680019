"""Shared pieces of the quadrature package: the solution type, input conversion, the rule protocol."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from solvers.algorithm import Algorithm
from solvers.problem import IntegralProblem
from solvers.solution import RetcodeResult, ReturnCode, Stats


@dataclass
class IntegralSolution(RetcodeResult):
    """Result of ``solve(IntegralProblem(...), rule)``.

    Attributes:
        mean: the integral estimate, shape ``batch`` of the integrand (0-d for one integrand). For
            Bayesian quadrature it is the posterior mean.
        variance: posterior variance (Bayesian quadrature), ``None`` for classical rules.
        nodes, weights: the nodes used and their weights (float64); the estimate is ``values @ weights``.
        error_estimate: an error estimate where the rule has one (Romberg: the last two diagonal
            entries' difference), else ``None``.
        retcode, stats: outcome and counters (``stats.nfe`` integrand evaluations, per-rule extras).
    """

    mean: Tensor
    variance: Tensor | None
    nodes: Tensor
    weights: Tensor
    retcode: ReturnCode
    stats: Stats
    error_estimate: Tensor | None = None

    @property
    def value(self) -> Tensor:
        """The integral estimate (the posterior mean for Bayesian quadrature)."""
        return self.mean

    @property
    def std(self) -> Tensor | None:
        return None if self.variance is None else self.variance.clamp_min(0).sqrt()



def as_values(values: Any) -> tuple[Tensor, bool]:
    """``values`` as a floating tensor, and whether the caller passed NumPy (to convert back)."""
    is_numpy = isinstance(values, np.ndarray) or np.isscalar(values)
    if isinstance(values, Tensor):
        t = values
    else:
        t = torch.as_tensor(np.asarray(values))
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t, is_numpy


def as_nodes(nodes: Any, name: str = "nodes") -> Tensor:
    """Nodes as a 1-D float64 CPU tensor, checked: finite, strictly increasing, at least 2."""
    x = torch.as_tensor(np.asarray(nodes.detach().cpu() if isinstance(nodes, Tensor) else nodes),
                        dtype=torch.float64).reshape(-1)
    if x.numel() < 2:
        raise ValueError(f"{name}: a quadrature rule needs at least 2 nodes, got {x.numel()}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contain NaN or Inf")
    if bool((x[1:] <= x[:-1]).any()):
        raise ValueError(f"{name} must be strictly increasing")
    return x


def check_n(n: Any, minimum: int = 2) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"the number of nodes must be an int, got {n!r}")
    if n < minimum:
        raise ValueError(f"the number of nodes must be >= {minimum}, got N = {n}")
    return int(n)


def check_domain(domain: Any) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in domain)
    except (TypeError, ValueError) as err:
        raise ValueError(f"domain must be a pair of numbers (a, b), got {domain!r}") from err
    if not (math.isfinite(a) and math.isfinite(b)) or not a < b:
        raise ValueError(f"domain must be finite with a < b, got ({a}, {b})")
    return a, b


def weighted_sum(values: Tensor, weights: Tensor, dim: int) -> Tensor:
    """``sum_j w_j values[..., j, ...]`` along ``dim``; the weights follow the values' dtype/device."""
    v = values.movedim(dim, -1)
    if v.shape[-1] != weights.shape[0]:
        raise ValueError(f"got {v.shape[-1]} values along dim {dim} for {weights.shape[0]} nodes")
    return v @ weights.to(dtype=v.dtype, device=v.device)


def evaluate(problem: IntegralProblem, nodes: Tensor) -> Tensor:
    """The integrand at the nodes, nodes along the last dimension, as a floating tensor."""
    out = problem.f(nodes)
    vals, _ = as_values(out)
    if vals.dim() == 0 or vals.shape[-1] != nodes.shape[0]:
        raise ValueError(f"the integrand must return values with the {nodes.shape[0]} nodes along the last "
                         f"dimension, got shape {tuple(vals.shape)}")
    if not bool(torch.isfinite(vals).all()):
        raise ValueError("the integrand returned NaN or Inf at a node")
    return vals


class QuadratureRule(Algorithm):
    """A rule ``int_a^b f ~ sum_j w_j f(x_j)`` with data-independent weights.

    Subclasses implement ``nodes(n, a, b)`` and ``weights(nodes, domain)``. The rule then integrates
    callables (``solve(IntegralProblem(f, (a, b)), rule)``) and sampled data (``rule.integrate``), batched
    over integrands, for torch and NumPy inputs.
    """

    problem_types = (IntegralProblem,)
    min_nodes = 2

    def __init__(self, n: int = 9):
        self.n = check_n(n, self.min_nodes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n})"

    @property
    def name(self) -> str:
        return type(self).__name__

    def nodes(self, n: int, a: float, b: float) -> Tensor:
        """Equally spaced nodes including both ends (overridden by Gauss-Legendre)."""
        n = check_n(n, self.min_nodes)
        a, b = check_domain((a, b))
        return torch.linspace(a, b, n, dtype=torch.float64)

    def weights(self, nodes: Any, domain: tuple[float, float] | None = None) -> Tensor:
        raise NotImplementedError

    def rule(self, n: int, a: float, b: float) -> tuple[Tensor, Tensor]:
        """Nodes and weights of the n-point rule on [a, b]."""
        x = self.nodes(n, a, b)
        return x, self.weights(x, (a, b))

    def integrate(self, values: Any, nodes: Any = None, domain: tuple[float, float] | None = None,
                  dim: int = -1) -> Any:
        """Integrate sampled data: ``values`` hold the integrand at ``nodes`` along ``dim``.

        ``nodes`` may be left out when ``domain`` is given: the rule's own nodes for that many values
        (equally spaced, or Gauss-Legendre points). Returns the type it was given (tensor or ndarray).
        """
        vals, is_numpy = as_values(values)
        n = vals.shape[dim]
        if nodes is None:
            if domain is None:
                raise ValueError("give the nodes or the domain of the samples")
            a, b = check_domain(domain)
            x = self.nodes(n, a, b)
        else:
            x = as_nodes(nodes)
        w = self.weights(x, domain)
        out = weighted_sum(vals, w, dim)
        return out.cpu().numpy() if is_numpy else out

    def solve(self, problem: IntegralProblem, **options: Any) -> IntegralSolution:
        from solvers.checks import check_options

        check_options(options, ("n",), f"{type(self).__name__}.solve")
        n = check_n(options.get("n", self.n), self.min_nodes)
        x, w = self.rule(n, *problem.domain)
        vals = evaluate(problem, x)
        mean = weighted_sum(vals, w, -1)
        return IntegralSolution(mean=mean, variance=None, nodes=x, weights=w, retcode=ReturnCode.SUCCESS,
                                stats=Stats(nfe=n, extra={"nodes": n}))
