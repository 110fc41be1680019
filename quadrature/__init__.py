"""Quadrature: classical rules, Bayesian quadrature and integral reinforcement learning.

>>> import torch
>>> from solvers import solve
>>> from solvers.problem import IntegralProblem
>>> from quadrature import BayesianQuadrature, Matern, Simpson
>>> prob = IntegralProblem(torch.exp, (0.0, 1.0))
>>> abs(float(solve(prob, Simpson(n=9)).mean) - (torch.e - 1)) < 1e-5
True
>>> sol = solve(prob, BayesianQuadrature(kernel=Matern(nu=2.5, lengthscale=0.5), n=9))
>>> bool(sol.variance > 0)
True
"""

from solvers.problem import IntegralProblem

from ._base import IntegralSolution, QuadratureRule
from .bayesian import (
    BayesianQuadrature,
    BQWeights,
    bq_weights,
    fit_lengthscale,
    log_marginal_likelihood,
    scale_mle,
)
from .intrl import (
    ControlAffineProblem,
    IntegralPolicyIteration,
    PolicyIterationSolution,
    QuadraticBasis,
    f16_short_period,
    kleinman,
    linear_third_order,
    lqr,
    nonlinear_2d,
    power_system,
    simulate_closed_loop,
    solve_many,
)
from .kernels import RBF, Kernel, Matern
from .rules import (
    GaussLegendre,
    Romberg,
    Simpson,
    Trapezoid,
    gauss_legendre,
    gauss_legendre_rule,
    romb,
    romberg_weights,
    simpson,
    simpson_weights,
    trapezoid,
    trapezoid_weights,
)

__all__ = [
    "IntegralProblem", "IntegralSolution", "QuadratureRule", "Trapezoid", "Simpson", "GaussLegendre",
    "Romberg", "trapezoid", "simpson", "romb", "gauss_legendre", "gauss_legendre_rule", "trapezoid_weights",
    "simpson_weights", "romberg_weights", "Kernel", "Matern", "RBF", "BayesianQuadrature", "BQWeights",
    "bq_weights", "scale_mle", "log_marginal_likelihood", "fit_lengthscale", "ControlAffineProblem",
    "QuadraticBasis", "IntegralPolicyIteration", "PolicyIterationSolution", "solve_many", "lqr", "kleinman",
    "linear_third_order", "nonlinear_2d", "power_system", "f16_short_period", "simulate_closed_loop",
]
