"""Ensembles of solves (SciML's ``EnsembleProblem``), serial, batched or on ``torch.distributed``.

>>> import torch
>>> from solvers.problem import SDEProblem
>>> from solvers.sde import EulerMaruyama
>>> from solvers.ensemble import Batched, EnsembleProblem, MonteCarloStatistics, Serial, solve_ensemble
>>> y0 = torch.ones(1, dtype=torch.float64)
>>> gbm = SDEProblem(lambda t, y: 0.05 * y, lambda t, y: 0.2 * y, y0, (0.0, 1.0))
>>> ens = EnsembleProblem(gbm, output_func=lambda sol, i: sol.ys[-1], reduction=MonteCarloStatistics(),
...                       seed=7)
>>> a = solve_ensemble(ens, EulerMaruyama(), trajectories=300, backend=Serial(), dt=0.05)
>>> b = solve_ensemble(ens, EulerMaruyama(), trajectories=300, backend=Batched(chunk=128), dt=0.05)
>>> bool(torch.equal(a.mean, b.mean) and torch.equal(a.se_var, b.se_var))   # bit-identical
True

* ``EnsembleProblem(problem, prob_func, output_func, reduction, seed, batch_prob_func)``: trajectory
  ``i`` solves ``prob_func(problem, i, seed_i)`` with ``seed_i = trajectory_seed(seed, i)`` (SDEs: its
  own Brownian path from ``seed_i``) and keeps ``output_func(solution, i)``.
* ``solve_ensemble(ensemble, algorithm, trajectories=N, backend=..., **options)`` (also
  ``ensemble.solve(algorithm, ...)``) returns an ``EnsembleSolution``.
* Backends: ``Serial()``, ``Batched(chunk)``, ``Distributed(nprocs, backend, inner, root)``
  (``backends.py``, ``distributed.py``).
* ``MonteCarloStatistics(quantiles=...)``: streamed mean / variance with standard errors, exact
  quantiles (``statistics.py``, which gives the formulas and sources).

What is the same across backends: trajectory ``i``'s problem and noise depend on ``(seed, i)`` only;
fixed-step solves (ODE or SDE) give the same outputs with Serial, Batched and every world size of
Distributed (bit for bit with elementwise vector fields), and the reductions fold the same blocks in the
same order, so their statistics are bit-identical too. Adaptive Batched solves share step sizes across a
batch: each trajectory keeps its own Brownian path, but the results agree with Serial's to the
tolerance only. See docs/scaling.md.
"""

from .backends import Backend, Batched, Distributed, Serial
from .distributed import partition
from .noise import row_grid_increments, trajectory_seed
from .problem import EnsembleProblem
from .solution import EnsembleSolution
from .solve import solve_ensemble
from .statistics import Moments, MonteCarloResult, MonteCarloStatistics, Reduction, pairwise_sum

__all__ = ["EnsembleProblem", "EnsembleSolution", "solve_ensemble", "Backend", "Serial", "Batched",
           "Distributed", "Reduction", "MonteCarloStatistics", "MonteCarloResult", "Moments", "pairwise_sum",
           "trajectory_seed", "row_grid_increments", "partition"]
