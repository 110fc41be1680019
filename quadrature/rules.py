"""Classical quadrature rules: trapezoid, Simpson, Gauss-Legendre, Romberg.

Each rule is an ``Algorithm`` for ``IntegralProblem``
and also integrates sampled data (``rule.integrate(values, nodes)``). Degrees of exactness (the
highest polynomial degree integrated exactly) and error orders on a grid of spacing ``h``:

* trapezoid: degree 1, error ``-(b - a) h^2 f''/12`` (order 2);
* composite Simpson: degree 3 on equally spaced nodes (2 on non-uniform ones), error
  ``-(b - a) h^4 f''''/180`` (order 4); for an even number of
  nodes the last three intervals use the 3/8 rule (also degree 3);
* Gauss-Legendre with n points: degree ``2n - 1`` (Golub-Welsch nodes, numpy's ``leggauss``);
* Romberg with ``2^k + 1`` nodes: Richardson extrapolation of the trapezoid rule, degree ``2k + 1``.

Source: Davis & Rabinowitz, *Methods of Numerical Integration* (2nd ed., 1984), ch. 2 and 6.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from solvers.checks import check_options, check_tolerance
from solvers.problem import IntegralProblem
from solvers.solution import ReturnCode, SolverError, Stats

from ._base import (
    IntegralSolution,
    QuadratureRule,
    as_nodes,
    as_values,
    check_domain,
    check_n,
    evaluate,
    weighted_sum,
)


def _check_closed(x: Tensor, domain: tuple[float, float] | None) -> None:
    """Closed Newton-Cotes rules integrate from the first node to the last."""
    if domain is None:
        return
    a, b = check_domain(domain)
    tol = 1e-12 * max(1.0, abs(a), abs(b))
    if abs(float(x[0]) - a) > tol or abs(float(x[-1]) - b) > tol:
        raise ValueError(f"this closed rule integrates over [nodes[0], nodes[-1]] = [{float(x[0])}, "
                         f"{float(x[-1])}], which is not the domain ({a}, {b})")


def _interpolatory(xs: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Weights of ``int_lo^hi p`` where p interpolates at the few nodes ``xs`` (moment equations).

    Centred and scaled so the small Vandermonde system stays well conditioned.
    """
    c = 0.5 * (xs[0] + xs[-1])
    s = 0.5 * (xs[-1] - xs[0])
    u = (xs - c) / s
    k = np.arange(len(xs))
    V = u[None, :] ** k[:, None]
    ul, uh = (lo - c) / s, (hi - c) / s
    moments = s * (uh ** (k + 1) - ul ** (k + 1)) / (k + 1)
    return np.linalg.solve(V, moments)


def trapezoid_weights(nodes: Any) -> Tensor:
    """Composite trapezoid weights on arbitrary increasing nodes."""
    x = as_nodes(nodes)
    h = x[1:] - x[:-1]
    w = torch.zeros_like(x)
    w[:-1] += h / 2
    w[1:] += h / 2
    return w


def simpson_weights(nodes: Any) -> Tensor:
    """Composite Simpson weights on arbitrary increasing nodes (n >= 3).

    Odd n: Simpson on consecutive interval pairs (the non-uniform form integrates the quadratic through
    each triple). Even n: pairs on the first n - 4 intervals and a cubic (the 3/8 rule on a uniform grid)
    on the last three, so the rule stays exact for cubics.
    """
    x = as_nodes(nodes)
    n = x.numel()
    if n < 3:
        raise ValueError(f"Simpson's rule needs at least 3 nodes, got {n}")
    xn = x.numpy()
    w = np.zeros(n)
    last_pair_end = n - 1 if n % 2 == 1 else n - 4
    for i in range(0, last_pair_end, 2):
        w[i:i + 3] += _interpolatory(xn[i:i + 3], xn[i], xn[i + 2])
    if n % 2 == 0:
        w[n - 4:] += _interpolatory(xn[n - 4:], xn[n - 4], xn[n - 1])
    return torch.from_numpy(w)


def gauss_legendre_rule(n: int, a: float, b: float) -> tuple[Tensor, Tensor]:
    """The n-point Gauss-Legendre nodes and weights on [a, b] (exact for degree 2n - 1)."""
    n = check_n(n, 1)
    a, b = check_domain((a, b))
    t, w = np.polynomial.legendre.leggauss(n)
    x = 0.5 * (b - a) * t + 0.5 * (a + b)
    return torch.from_numpy(x), torch.from_numpy(0.5 * (b - a) * w)


def romberg_weights(nodes: Any) -> Tensor:
    """Weights of Romberg's rule on ``2^k + 1`` equally spaced nodes.

    ``R[i, 0]`` is the trapezoid rule with step ``H / 2^i``; ``R[i, j] = R[i, j-1] + (R[i, j-1] -
    R[i-1, j-1]) / (4^j - 1)``. Every entry is linear in the values, so the table is built on weight
    vectors and ``R[k, k]`` is returned.
    """
    x = as_nodes(nodes)
    n = x.numel()
    k = int(round(np.log2(n - 1))) if n > 1 else -1
    if n < 2 or 2 ** k + 1 != n:
        raise ValueError(f"Romberg's rule needs 2^k + 1 equally spaced nodes, got {n}")
    h = x[1:] - x[:-1]
    if float((h - h.mean()).abs().max()) > 1e-10 * float(h.mean()):
        raise ValueError("Romberg's rule needs equally spaced nodes")
    table: list[list[Tensor]] = []
    for i in range(k + 1):
        step = 2 ** (k - i)
        wi = torch.zeros_like(x)
        wi[::step] = trapezoid_weights(x[::step])
        row = [wi]
        for j in range(1, i + 1):
            row.append(row[j - 1] + (row[j - 1] - table[i - 1][j - 1]) / (4 ** j - 1))
        table.append(row)
    return table[k][k]


class Trapezoid(QuadratureRule):
    """Composite trapezoid rule (degree 1, error O(h^2))."""

    degree = 1

    def weights(self, nodes: Any, domain: tuple[float, float] | None = None) -> Tensor:
        x = as_nodes(nodes)
        _check_closed(x, domain)
        return trapezoid_weights(x)


class Simpson(QuadratureRule):
    """Composite Simpson rule for odd and even numbers of nodes (degree 3, error O(h^4))."""

    degree = 3
    min_nodes = 3

    def weights(self, nodes: Any, domain: tuple[float, float] | None = None) -> Tensor:
        x = as_nodes(nodes)
        _check_closed(x, domain)
        return simpson_weights(x)


class GaussLegendre(QuadratureRule):
    """n-point Gauss-Legendre rule (degree 2n - 1). Sampled data must sit at its nodes."""

    min_nodes = 1

    @property
    def degree(self) -> int:
        return 2 * self.n - 1

    def nodes(self, n: int, a: float, b: float) -> Tensor:
        return gauss_legendre_rule(n, a, b)[0]

    def weights(self, nodes: Any, domain: tuple[float, float] | None = None) -> Tensor:
        x = torch.as_tensor(np.asarray(nodes.detach().cpu() if isinstance(nodes, Tensor) else nodes),
                            dtype=torch.float64).reshape(-1)
        if domain is None:
            raise ValueError("Gauss-Legendre weights need the domain (a, b): the nodes do not contain it")
        gx, gw = gauss_legendre_rule(x.numel(), *domain)
        a, b = check_domain(domain)
        if float((x - gx).abs().max()) > 1e-12 * max(1.0, abs(a), abs(b)):
            raise ValueError(f"the nodes are not the {x.numel()}-point Gauss-Legendre nodes of ({a}, {b})")
        return gw


class Romberg(QuadratureRule):
    """Romberg integration: Richardson extrapolation of the trapezoid rule.

    With ``n`` given (``2^k + 1``) it is a fixed rule on equally spaced nodes. With ``n=None``,
    ``solve`` is adaptive: it halves the step until two successive diagonal entries agree to
    ``max(atol, rtol * |R|)`` or ``max_levels`` is reached (then ``retcode = MAX_ITERS``).
    """

    min_nodes = 2

    def __init__(self, n: int | None = None, rtol: float = 1e-10, atol: float = 1e-12, max_levels: int = 20):
        if n is not None:
            romberg_weights(torch.linspace(0, 1, check_n(n), dtype=torch.float64))
        self.n = n
        self.rtol = check_tolerance("rtol", rtol)
        self.atol = check_tolerance("atol", atol)
        if not isinstance(max_levels, int) or max_levels < 1:
            raise ValueError(f"max_levels must be a positive int, got {max_levels!r}")
        self.max_levels = max_levels

    def __repr__(self) -> str:
        return f"Romberg(n={self.n}, rtol={self.rtol:g}, atol={self.atol:g})"

    def weights(self, nodes: Any, domain: tuple[float, float] | None = None) -> Tensor:
        x = as_nodes(nodes)
        _check_closed(x, domain)
        return romberg_weights(x)

    def solve(self, problem: IntegralProblem, **options: Any) -> IntegralSolution:
        check_options(options, ("n", "rtol", "atol", "max_levels", "throw"), "Romberg.solve")
        n = options.get("n", self.n)
        if n is not None:
            x, w = self.rule(check_n(n), *problem.domain)
            romberg_weights(x)
            vals = evaluate(problem, x)
            return IntegralSolution(weighted_sum(vals, w, -1), None, x, w, ReturnCode.SUCCESS,
                                    Stats(nfe=x.numel(), extra={"nodes": x.numel()}))
        rtol = check_tolerance("rtol", options.get("rtol", self.rtol))
        atol = check_tolerance("atol", options.get("atol", self.atol))
        max_levels = options.get("max_levels", self.max_levels)
        a, b = problem.domain
        x = torch.tensor([a, b], dtype=torch.float64)
        vals = evaluate(problem, x)
        prev_row = [0.5 * (b - a) * (vals[..., 0] + vals[..., 1])]
        err = None
        retcode = ReturnCode.MAX_ITERS
        level = 0
        for level in range(1, max_levels + 1):
            m = 2 ** (level - 1)
            h = (b - a) / m
            new_x = a + h * (torch.arange(m, dtype=torch.float64) + 0.5)
            new_vals = evaluate(problem, new_x)
            # Interleave old and new samples so vals stays ordered by node.
            merged = torch.empty(*vals.shape[:-1], 2 * m + 1, dtype=vals.dtype, device=vals.device)
            merged[..., ::2] = vals
            merged[..., 1::2] = new_vals
            xm = torch.empty(2 * m + 1, dtype=torch.float64)
            xm[::2], xm[1::2] = x, new_x
            x, vals = xm, merged
            row = [0.5 * prev_row[0] + 0.5 * h * new_vals.sum(-1)]
            for j in range(1, level + 1):
                row.append(row[j - 1] + (row[j - 1] - prev_row[j - 1]) / (4 ** j - 1))
            err = (row[-1] - prev_row[-1]).abs()
            prev_row = row
            if bool((err <= torch.clamp(rtol * row[-1].abs(), min=atol)).all()) and level >= 2:
                retcode = ReturnCode.SUCCESS
                break
        if retcode is not ReturnCode.SUCCESS and options.get("throw", False):
            raise SolverError(retcode, detail=f"Romberg error estimate {float(err.max()):.3g} after "
                                               f"{level} levels")
        w = romberg_weights(x)
        return IntegralSolution(prev_row[-1], None, x, w, retcode,
                                Stats(nfe=x.numel(), extra={"nodes": x.numel(), "levels": level}),
                                error_estimate=err)


def trapezoid(y: Any, x: Any = None, dx: float | None = None, dim: int = -1) -> Any:
    """Trapezoid rule on samples ``y`` along ``dim`` at nodes ``x`` (or spacing ``dx``; default 1)."""
    vals, _ = as_values(y)
    nodes = _nodes_for(vals.shape[dim], x, dx)
    return Trapezoid(n=2).integrate(y, nodes, dim=dim)


def simpson(y: Any, x: Any = None, dx: float | None = None, dim: int = -1) -> Any:
    """Composite Simpson rule on samples (odd or even count, at least 3)."""
    vals, _ = as_values(y)
    nodes = _nodes_for(vals.shape[dim], x, dx)
    return Simpson(n=3).integrate(y, nodes, dim=dim)


def romb(y: Any, x: Any = None, dx: float | None = None, dim: int = -1) -> Any:
    """Romberg's rule on ``2^k + 1`` equally spaced samples."""
    vals, _ = as_values(y)
    nodes = _nodes_for(vals.shape[dim], x, dx)
    return Romberg().integrate(y, nodes, dim=dim)


def gauss_legendre(f: Any, a: float, b: float, n: int = 5) -> Any:
    """``int_a^b f`` with the n-point Gauss-Legendre rule; ``f`` is vectorised over nodes (last dim)."""
    return GaussLegendre(n=n).solve(IntegralProblem(f, (a, b))).mean


def _nodes_for(n: int, x: Any, dx: float | None) -> Tensor:
    if x is not None and dx is not None:
        raise ValueError("give either x or dx, not both")
    if x is not None:
        return as_nodes(x)
    step = 1.0 if dx is None else float(dx)
    if not step > 0:
        raise ValueError(f"dx must be > 0, got {dx}")
    return torch.arange(n, dtype=torch.float64) * step
