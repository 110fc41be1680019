"""The deep conjugate direction method (DCDM) of Kaneda et al., ICML 2023 (arXiv 2205.10763, Alg. 2).

A conjugate-direction iteration whose search direction comes from a network ``f`` applied to the
normalised residual, A-orthogonalised against the last ``s`` directions, with an exact line search::

    r_0 = b - A x_0
    for k = 1, 2, ...
        q = f(r_{k-1} / ||r_{k-1}||)
        q <- q - sum_{j = k-s}^{k-1} p_j (q, A p_j) / (p_j, A p_j)      # A-orthogonalise (s = 2)
        if (q, r_{k-1}) <= eps ||q|| ||r_{k-1}||:  q <- r_{k-1}, A-orthogonalised (safeguard)
        alpha = (q, r_{k-1}) / (q, A q)                                 # exact line search
        x_k = x_{k-1} + alpha q;   r_k = r_{k-1} - alpha A q   (r_k = b - A x_k every `refresh` steps)
        p_k = q

The line search makes the scale of ``f`` irrelevant; minimising the A-norm error along ``q`` it never
increases ``||x - x*||_A``. With ``f`` = identity and ``s >= 1`` the iterates are those of CG (the new
residual is already A-orthogonal to all older directions in exact arithmetic), which is a test.
Because ``f`` is nonlinear the usual PCG theory does not apply; A-orthogonality is enforced only against
the last ``s`` directions.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import torch
from torch import Tensor

from ..algorithm import Algorithm
from ..problem import LinearProblem
from ..solution import ReturnCode, Stats
from .krylov import _Projector, finish, parse_options, prepare
from .network import as_vector_model
from .solution import LinearSolution

__all__ = ["DCDM"]


class DCDM(Algorithm):
    """Deep conjugate direction method for symmetric positive (semi-)definite ``A x = b``.

    Args:
        model: a ``DCDMNet`` (the problem must carry its ``grid``, as the
            ones from ``poisson_problem`` do), any callable ``r -> q`` on vectors, or
            ``None`` for the identity (then DCDM is CG).
        s: number of previous directions to A-orthogonalise against (paper: 2).
        refresh: recompute the true residual ``b - A x`` every ``refresh`` iterations (0: never).
        safeguard: ``eps`` of the descent test ``(q, r) > eps ||q|| ||r||``.

    Options of ``solve`` as for ``PCG`` (``rtol``, ``atol``, ``maxiter`` (default
    1000), ``x0``, ``throw``, ``check_symmetry``, ``callback``). The stats add ``model_time`` (seconds spent
    in the network) and ``fallbacks`` (safeguard steps).
    """

    problem_types = (LinearProblem,)

    def __init__(self, model: object = None, s: int = 2, refresh: int = 50, safeguard: float = 1e-10):
        if not isinstance(s, int) or s < 0:
            raise ValueError(f"s must be an int >= 0, got {s!r}")
        if not isinstance(refresh, int) or refresh < 0:
            raise ValueError(f"refresh must be an int >= 0, got {refresh!r}")
        if not (0 <= safeguard < 1):
            raise ValueError(f"safeguard must be in [0, 1), got {safeguard!r}")
        if model is not None and not callable(model):
            raise TypeError(f"model must be a network, a callable r -> q or None, got {type(model).__name__}")
        self.model, self.s, self.refresh, self.safeguard = model, s, refresh, safeguard

    def solve(self, problem: LinearProblem, **options: Any) -> LinearSolution:
        if "maxiter" not in options:
            options = dict(options, maxiter=1000)
        opts = parse_options(problem, options, "DCDM")
        op = prepare(problem, opts)
        project = _Projector(problem.nullspace, problem.b)
        t0 = time.perf_counter()
        f = (lambda r: r) if self.model is None else as_vector_model(self.model, problem.grid)
        t1 = time.perf_counter()
        b = problem.b
        bnorm = float(torch.linalg.vector_norm(b))
        scale = bnorm if bnorm > 0 else 1.0
        tol = max(opts["rtol"] * bnorm, opts["atol"])
        x0 = opts.get("x0")
        x = torch.zeros_like(b) if x0 is None else x0.clone()
        r = project(b.clone() if x0 is None else b - op(x))
        rnorm = float(torch.linalg.vector_norm(r))
        hist = [rnorm / scale]
        dirs: deque[tuple[Tensor, Tensor, float]] = deque(maxlen=max(self.s, 1))
        code, detail, k, fallbacks, model_time = ReturnCode.NOT_CONVERGED, "", 0, 0, 0.0
        cb = opts.get("callback")
        if rnorm <= tol:
            code = ReturnCode.SUCCESS
        else:
            for k in range(1, opts["maxiter"] + 1):
                tm = time.perf_counter()
                q = f(r / rnorm)
                model_time += time.perf_counter() - tm
                q = self._orthogonalise(project(q), dirs)
                qr = float(torch.dot(q, r))
                qn = float(torch.linalg.vector_norm(q))
                if not (qr > self.safeguard * qn * rnorm):  # also catches NaN from the network
                    fallbacks += 1
                    q = self._orthogonalise(r.clone(), dirs)
                    qr = float(torch.dot(q, r))
                Aq = op(q)
                qAq = float(torch.dot(q, Aq))
                if not qAq > 0:
                    k -= 1
                    code = ReturnCode.BREAKDOWN if qAq != qAq else ReturnCode.INDEFINITE
                    detail = f"(q, A q) = {qAq:.3g}: A is not positive definite."
                    break
                alpha = qr / qAq
                x = x + alpha * q
                if self.refresh and k % self.refresh == 0:
                    r = project(b - op(x))
                else:
                    r = project(r - alpha * Aq)
                if self.s > 0:
                    dirs.append((q, Aq, qAq))
                rnorm = float(torch.linalg.vector_norm(r))
                hist.append(rnorm / scale)
                if cb is not None:
                    cb(k, x, r)
                if rnorm <= tol:
                    code = ReturnCode.SUCCESS
                    break
        t2 = time.perf_counter()
        stats = Stats(nfe=op.nmatvec, naccept=k, extra=dict(
            iterations=k, residuals=hist, setup_time=t1 - t0, solve_time=t2 - t1, matvecs=op.nmatvec,
            precond_applies=k, model_time=model_time, fallbacks=fallbacks))
        return finish(x, code, stats, problem, self, opts["throw"], detail)

    @staticmethod
    def _orthogonalise(q: Tensor, dirs) -> Tensor:
        for p, Ap, pAp in dirs:
            q = q - (float(torch.dot(q, Ap)) / pAp) * p
        return q

    def __repr__(self) -> str:
        m = "identity" if self.model is None else type(self.model).__name__
        return f"DCDM(model={m}, s={self.s})"
