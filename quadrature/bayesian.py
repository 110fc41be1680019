"""Bayesian quadrature (BQ) on an interval, with weights computed in extended precision.

Model: ``f ~ GP(m, s^2 k)``. With nodes ``x_1..x_N``, Gram matrix ``K_ij = k(x_i, x_j)``, kernel mean
``z_i = int_a^b k(t, x_i) dt`` and initial error ``z0 = int int k`` (closed forms in
``quadrature.kernels``), the integral ``I = int_a^b f`` is Gaussian a posteriori with

    mean      E[I] = w^T y,        w = K^{-1} z,
    variance  V[I] = s^2 (z0 - z^T K^{-1} z)

(O'Hagan 1991, "Bayes-Hermite quadrature"; Briol et al. 2019, Statist. Sci. 34, eq. 2.3). The scale is
the maximum-likelihood value ``s^2 = y^T K^{-1} y / N``.

Bayes-Sard quadrature (Karvonen, Oates & Sarkka, NeurIPS 2018, Thm 2.7): a flat prior on the
coefficients of a polynomial mean of degree ``q`` gives the weights from the saddle-point system
``[K P; P^T 0] [w; a] = [z; c]`` (``P_ij = p_j(x_i)``, ``c_j = int p_j``) and the variance
``s^2 (z0 - w^T z - c^T a)``. The rule is then exact on polynomials of degree ``<= q``.

Numerics: with lengthscale ``l`` much larger than the node spacing the Gram matrix is nearly singular
(``cond ~ 1e10`` at ``N = 9``, ``l = 0.3``, ``T = 0.1`` for Matern 7/2; far worse for RBF), so a
float64 solve needs jitter, and jitter of ``1e-8`` flattens the convergence rate. Here the weights are
data-independent and shift-invariant: the nodes are shifted to ``[0, T]``, ``K``, ``z`` and ``z0`` are
built in mpmath and factorised by Cholesky at a working precision that is raised until the weights stop
changing (to ``1e-20`` relative), and the result is cached per (kernel, shifted nodes, T, degree). No
jitter is ever added.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import mpmath
import numpy as np
import torch
from torch import Tensor

from solvers.checks import check_options
from solvers.problem import IntegralProblem
from solvers.solution import ReturnCode, Stats

from ._base import IntegralSolution, QuadratureRule, as_nodes, as_values, check_domain, check_n, evaluate
from .kernels import Kernel, Matern
from .rules import gauss_legendre_rule


@dataclass
class BQWeights:
    """Cached, data-independent part of a BQ rule on nodes shifted to ``[0, T]``.

    ``weights`` (float64) give the posterior mean ``w^T y``; ``variance_factor`` is the unit-scale
    posterior variance. ``chol``, ``LP``, ``M`` (mpmath, at ``dps`` digits) serve the scale estimate and
    the marginal likelihood: ``K = L L^T``, ``LP = L^{-1} P``, ``M = P^T K^{-1} P``.
    """

    weights: np.ndarray
    variance_factor: float
    dps: int
    chol: Any
    LP: Any
    M: Any
    logdet: float
    degree: int | None

    @property
    def n(self) -> int:
        return len(self.weights)


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 1024


def _lower_solve(L, b):
    n = L.rows
    x = [mpmath.mpf(0)] * n
    for i in range(n):
        acc = b[i]
        for j in range(i):
            acc -= L[i, j] * x[j]
        x[i] = acc / L[i, i]
    return x


def _upper_solve_t(L, b):
    """Solve ``L^T x = b``."""
    n = L.rows
    x = [mpmath.mpf(0)] * n
    for i in reversed(range(n)):
        acc = b[i]
        for j in range(i + 1, n):
            acc -= L[j, i] * x[j]
        x[i] = acc / L[i, i]
    return x


def _solve_at(kernel: Kernel, offsets: tuple, T: float, degree: int | None, dps: int):
    """BQ weights and unit variance at ``dps`` decimal digits; None if K is not PD at this precision."""
    with mpmath.workdps(dps):
        xs = [mpmath.mpf(v) for v in offsets]
        Tm = mpmath.mpf(T)
        n = len(xs)
        K = mpmath.matrix(n, n)
        for i in range(n):
            K[i, i] = kernel.kappa_mp(mpmath.mpf(0))
            for j in range(i):
                K[i, j] = K[j, i] = kernel.kappa_mp(xs[i] - xs[j])
        z = [kernel.kernel_mean_mp(x, mpmath.mpf(0), Tm) for x in xs]
        z0 = kernel.initial_error_mp(mpmath.mpf(0), Tm)
        try:
            L = mpmath.cholesky(K)
        except (ValueError, ZeroDivisionError):
            return None
        if any(L[i, i] <= 0 for i in range(n)):
            return None
        Lz = _lower_solve(L, z)
        logdet = 2 * mpmath.fsum(mpmath.log(L[i, i]) for i in range(n))
        if degree is None:
            w = _upper_solve_t(L, Lz)
            var = z0 - mpmath.fsum(a * b for a, b in zip(Lz, Lz))
            return w, var, L, None, None, logdet
        m = degree + 1
        cols = [[(x / Tm) ** j for x in xs] for j in range(m)]
        LP = [_lower_solve(L, c) for c in cols]  # L^{-1} P, column by column
        M = mpmath.matrix(m, m)
        for i in range(m):
            for j in range(m):
                M[i, j] = mpmath.fsum(a * b for a, b in zip(LP[i], LP[j]))
        c = [Tm / (j + 1) for j in range(m)]
        rhs = [mpmath.fsum(a * b for a, b in zip(LP[j], Lz)) - c[j] for j in range(m)]
        a = mpmath.lu_solve(M, mpmath.matrix(rhs))
        # w = K^{-1} (z - P a)
        r = [Lz[i] - mpmath.fsum(LP[j][i] * a[j] for j in range(m)) for i in range(n)]
        w = _upper_solve_t(L, r)
        var = z0 - mpmath.fsum(wi * zi for wi, zi in zip(w, z)) - mpmath.fsum(c[j] * a[j] for j in range(m))
        return w, var, L, LP, M, logdet


def bq_weights(kernel: Kernel, nodes: Any, domain: tuple[float, float],
               degree: int | None = None) -> BQWeights:
    """The (cached) BQ rule of ``kernel`` on ``nodes`` for the Lebesgue measure on ``domain``.

    ``degree``: polynomial prior mean degree for Bayes-Sard quadrature (``None``: zero mean).
    """
    x = as_nodes(nodes)
    a, b = check_domain(domain)
    T = b - a
    if float(x[0]) < a - 1e-12 * T or float(x[-1]) > b + 1e-12 * T:
        raise ValueError(f"BQ nodes must lie inside the domain ({a}, {b})")
    if degree is not None:
        if not isinstance(degree, int) or degree < 0:
            raise ValueError(f"prior_degree must be a non-negative int or None, got {degree!r}")
        if x.numel() < degree + 1:
            raise ValueError(f"Bayes-Sard of degree {degree} needs at least {degree + 1} nodes, "
                             f"got {x.numel()}")
    # Shift to [0, T]: the rule is translation invariant. Rounding the key keeps repeated calls on
    # shifted copies of one grid on the same cache entry.
    T = float(f"{T:.12g}")
    offsets = tuple(float(v) for v in np.round((x.numpy() - a) / T, 12) * T)
    key = (kernel.key(), offsets, T, degree)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    prev = None
    dps = 40
    result = None
    while dps <= 1280:
        out = _solve_at(kernel, offsets, T, degree, dps)
        if out is not None:
            w = np.array([float(v) for v in out[0]])
            if prev is not None and np.max(np.abs(w - prev)) <= 1e-20 * max(np.max(np.abs(w)), 1e-300):
                result = out
                break
            prev = w
        dps *= 2
    if result is None:
        raise ArithmeticError(f"BQ weights did not settle up to 1280 digits for {kernel!r} with "
                              f"{len(offsets)} nodes (the Gram matrix is numerically singular)")
    w, var, L, LP, M, logdet = result
    entry = BQWeights(weights=np.array([float(v) for v in w]), variance_factor=max(float(var), 0.0),
                      dps=dps, chol=L, LP=LP, M=M, logdet=float(logdet), degree=degree)
    _CACHE[key] = entry
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return entry


def _quadratic_forms(entry: BQWeights, y: np.ndarray) -> tuple[float, float]:
    """``y^T K^{-1} y`` less the polynomial part (Bayes-Sard), and ``log det(P^T K^{-1} P)``."""
    with mpmath.workdps(entry.dps):
        v = _lower_solve(entry.chol, [mpmath.mpf(float(t)) for t in y])
        q = mpmath.fsum(t * t for t in v)
        logdet_m = mpmath.mpf(0)
        if entry.degree is not None:
            m = entry.degree + 1
            bvec = mpmath.matrix([mpmath.fsum(a * c for a, c in zip(entry.LP[j], v)) for j in range(m)])
            q -= (bvec.T * mpmath.lu_solve(entry.M, bvec))[0]
            logdet_m = mpmath.log(mpmath.det(entry.M))
        return max(float(q), 0.0), float(logdet_m)


def scale_mle(entry: BQWeights, values: np.ndarray) -> np.ndarray:
    """Maximum-likelihood ``s^2`` per integrand: ``y^T K^{-1} y / N``.

    Bayes-Sard: the generalised-least-squares residual form divided by ``N - q - 1``."""
    vals = np.atleast_2d(values)
    dof = entry.n - (0 if entry.degree is None else entry.degree + 1)
    if dof <= 0:
        raise ValueError("the scale cannot be estimated: no more nodes than polynomial coefficients")
    return np.array([_quadratic_forms(entry, row)[0] / dof for row in vals]).reshape(np.shape(values)[:-1])


def log_marginal_likelihood(entry: BQWeights, values: np.ndarray) -> float:
    """Profile log likelihood of the data (scale at its MLE), summed over the batch of integrands."""
    vals = np.atleast_2d(values)
    dof = entry.n - (0 if entry.degree is None else entry.degree + 1)
    total = 0.0
    for row in vals:
        q, logdet_m = _quadratic_forms(entry, row)
        s2 = max(q / dof, 1e-300)
        total += -0.5 * dof * (math.log(s2) + 1 + math.log(2 * math.pi)) - 0.5 * entry.logdet - 0.5 * logdet_m
    return total


def fit_lengthscale(kernel: Kernel, nodes: Any, domain: tuple[float, float], values: np.ndarray,
                    degree: int | None = None, bounds: tuple[float, float] | None = None) -> Kernel:
    """The kernel with the lengthscale that maximises the marginal likelihood (grid, then golden section
    in ``log l``). Default bounds: ``[h / 4, 10 (b - a)]`` with ``h`` the smallest node spacing."""
    x = as_nodes(nodes)
    a, b = check_domain(domain)
    if bounds is None:
        h = float((x[1:] - x[:-1]).min())
        bounds = (h / 4, 10 * (b - a))
    lo, hi = math.log(bounds[0]), math.log(bounds[1])

    def score(logl: float) -> float:
        k = kernel.with_lengthscale(math.exp(logl))
        try:
            return log_marginal_likelihood(bq_weights(k, x, (a, b), degree), values)
        except ArithmeticError:
            return -math.inf

    grid = np.linspace(lo, hi, 17)
    scores = [score(g) for g in grid]
    i = int(np.argmax(scores))
    left, right = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    c, d = right - g * (right - left), left + g * (right - left)
    fc, fd = score(c), score(d)
    for _ in range(12):
        if fc > fd:
            right, d, fd = d, c, fc
            c = right - g * (right - left)
            fc = score(c)
        else:
            left, c, fc = c, d, fd
            d = left + g * (right - left)
            fd = score(d)
    best = max([(scores[i], grid[i]), (fc, c), (fd, d)])
    return kernel.with_lengthscale(math.exp(best[1]))


class BayesianQuadrature(QuadratureRule):
    """Bayesian quadrature: ``solve(IntegralProblem(f, (a, b)), BayesianQuadrature(kernel=Matern(nu=2.5)))``.

    Args:
        kernel: a ``Matern`` or ``RBF`` (its
            lengthscale is in the units of the integration variable).
        n: default number of nodes.
        nodes: ``"uniform"`` (equally spaced, both ends included) or ``"gauss"`` (Gauss-Legendre points).
        lengthscale: ``"fixed"`` (use the kernel's) or ``"ml"`` (maximise the marginal likelihood of the
            data; the weights then depend on the data).
        scale: ``"mle"`` (maximum likelihood from the data) or a fixed positive ``s^2``.
        prior_degree: ``None`` for a zero prior mean, or ``q`` for Bayes-Sard quadrature with a flat prior
            on a degree-``q`` polynomial mean (exact on polynomials of degree ``<= q``).
    """

    min_nodes = 2

    def __init__(self, kernel: Kernel | None = None, n: int = 9, nodes: str = "uniform",
                 lengthscale: str = "fixed", scale: str | float = "mle", prior_degree: int | None = None):
        super().__init__(n)
        self.kernel = Matern(2.5, 1.0) if kernel is None else kernel
        if not isinstance(self.kernel, Kernel):
            raise TypeError(f"kernel must be a quadrature.kernels.Kernel, got {type(self.kernel).__name__}")
        if nodes not in ("uniform", "gauss"):
            raise ValueError(f"nodes must be 'uniform' or 'gauss', got {nodes!r}")
        if lengthscale not in ("fixed", "ml"):
            raise ValueError(f"lengthscale must be 'fixed' or 'ml', got {lengthscale!r}")
        if not (scale == "mle" or (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0)):
            raise ValueError(f"scale must be 'mle' or a positive number, got {scale!r}")
        if prior_degree is not None and (not isinstance(prior_degree, int) or prior_degree < 0):
            raise ValueError(f"prior_degree must be a non-negative int or None, got {prior_degree!r}")
        self.node_kind = nodes
        self.lengthscale_mode = lengthscale
        self.scale = scale
        self.prior_degree = prior_degree

    def __repr__(self) -> str:
        extra = "" if self.prior_degree is None else f", prior_degree={self.prior_degree}"
        return f"BayesianQuadrature(kernel={self.kernel!r}, n={self.n}{extra})"

    @property
    def name(self) -> str:
        k = self.kernel
        base = f"BQ Matern {k.nu:g}" if isinstance(k, Matern) else "BQ RBF"
        return base + ("" if self.prior_degree is None else f" + deg {self.prior_degree}")

    @property
    def data_independent(self) -> bool:
        return self.lengthscale_mode == "fixed"

    def nodes(self, n: int, a: float, b: float) -> Tensor:
        n = check_n(n, 2)
        if self.node_kind == "gauss":
            return gauss_legendre_rule(n, a, b)[0]
        a, b = check_domain((a, b))
        return torch.linspace(a, b, n, dtype=torch.float64)

    def _entry(self, x: Tensor, domain: tuple[float, float], values: np.ndarray | None = None) -> BQWeights:
        kernel = self.kernel
        if self.lengthscale_mode == "ml":
            if values is None:
                raise ValueError("with lengthscale='ml' the weights depend on the data: "
                                 "use posterior() or solve()")
            kernel = fit_lengthscale(kernel, x, domain, values, self.prior_degree)
        return bq_weights(kernel, x, domain, self.prior_degree)

    def weights(self, nodes: Any, domain: tuple[float, float] | None = None) -> Tensor:
        x = as_nodes(nodes)
        if domain is None:
            domain = (float(x[0]), float(x[-1]))
        return torch.from_numpy(self._entry(x, domain).weights.copy())

    def posterior(self, values: Any, nodes: Any = None, domain: tuple[float, float] | None = None,
                  dim: int = -1) -> tuple[Any, Any]:
        """Posterior mean and variance of the integral from samples ``values`` (nodes along ``dim``)."""
        vals, is_numpy = as_values(values)
        n = vals.shape[dim]
        if nodes is None:
            if domain is None:
                raise ValueError("give the nodes or the domain of the samples")
            x = self.nodes(n, *domain)
        else:
            x = as_nodes(nodes)
        if domain is None:
            domain = (float(x[0]), float(x[-1]))
        mean, var, _ = self._posterior(vals.movedim(dim, -1), x, domain)
        if is_numpy:
            return mean.cpu().numpy(), var.cpu().numpy()
        return mean, var

    def _posterior(self, vals: Tensor, x: Tensor, domain: tuple[float, float]):
        y64 = vals.detach().to(torch.float64).cpu().numpy()
        entry = self._entry(x, domain, y64 if self.lengthscale_mode == "ml" else None)
        w = torch.from_numpy(entry.weights.copy())
        mean = vals @ w.to(dtype=vals.dtype, device=vals.device)
        if self.scale == "mle":
            s2 = scale_mle(entry, y64)
        else:
            s2 = np.full(y64.shape[:-1], float(self.scale))
        var = torch.as_tensor(s2 * entry.variance_factor, dtype=vals.dtype, device=vals.device)
        return mean, var, entry

    def integrate(self, values: Any, nodes: Any = None, domain: tuple[float, float] | None = None,
                  dim: int = -1) -> Any:
        return self.posterior(values, nodes, domain, dim)[0]

    def solve(self, problem: IntegralProblem, **options: Any) -> IntegralSolution:
        check_options(options, ("n", "nodes"), "BayesianQuadrature.solve")
        if options.get("nodes") is not None:
            x = as_nodes(options["nodes"])
        else:
            x = self.nodes(check_n(options.get("n", self.n), 2), *problem.domain)
        vals = evaluate(problem, x)
        mean, var, entry = self._posterior(vals, x, problem.domain)
        return IntegralSolution(mean=mean, variance=var, nodes=x,
                                weights=torch.from_numpy(entry.weights.copy()),
                                retcode=ReturnCode.SUCCESS,
                                stats=Stats(nfe=x.numel(), extra={"nodes": x.numel(), "dps": entry.dps,
                                                                 "variance_factor": entry.variance_factor}))
