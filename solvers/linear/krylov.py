"""Conjugate gradients: CG, preconditioned CG and flexible CG behind ``solve(LinearProblem(A, b), ...)``.

Preconditioned CG (Hestenes & Stiefel 1952; Saad, *Iterative Methods for Sparse Linear Systems*, 2nd ed.,
Alg. 9.1), for symmetric positive (semi-)definite ``A`` and SPD ``M``::

    r_0 = b - A x_0,  z_0 = M^{-1} r_0,  p_0 = z_0
    alpha_k = (r_k, z_k) / (p_k, A p_k)
    x_{k+1} = x_k + alpha_k p_k,  r_{k+1} = r_k - alpha_k A p_k,  z_{k+1} = M^{-1} r_{k+1}
    beta_k = (r_{k+1}, z_{k+1}) / (r_k, z_k)             (Fletcher-Reeves form, fixed M)
    beta_k = (r_{k+1} - r_k, z_{k+1}) / (r_k, z_k)       (Polak-Ribiere form: flexible CG,
                                                          Notay 2000, for M that changes between steps)
    p_{k+1} = z_{k+1} + beta_k p_k

Stops when ``||r_k|| <= max(rtol ||b||, atol)``. In exact arithmetic CG terminates in at most ``n`` steps
(at most the number of distinct eigenvalues). A step with ``(p, A p) <= 0`` proves ``A`` is not positive
definite on the Krylov space: the solve stops with ``ReturnCode.INDEFINITE``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..algorithm import Algorithm
from ..checks import check_options, check_tolerance
from ..problem import LinearProblem
from ..solution import ReturnCode, SolverError, Stats
from .operators import LinearOperator, as_operator, check_symmetric
from .preconditioners import Preconditioner, make_preconditioner
from .solution import LinearSolution

__all__ = ["CG", "PCG", "FlexibleCG", "LINEAR_OPTIONS"]

LINEAR_OPTIONS = ("rtol", "atol", "maxiter", "x0", "throw", "check_symmetry", "callback")


class _Projector:
    """``v -> v - N (N^T v)`` onto the complement of the null space (identity when there is none)."""

    def __init__(self, nullspace: Tensor | None, like: Tensor):
        self.Q = None
        if nullspace is not None:
            Q, _ = torch.linalg.qr(nullspace.to(device=like.device, dtype=like.dtype))
            self.Q = Q

    def __call__(self, v: Tensor) -> Tensor:
        if self.Q is None:
            return v
        return v - self.Q @ (self.Q.T @ v)


def parse_options(problem: LinearProblem, options: dict[str, Any], where: str,
                  extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check and default the options shared by the linear solvers."""
    check_options(options, LINEAR_OPTIONS + extra, where)
    out = dict(options)
    out["rtol"] = check_tolerance("rtol", options.get("rtol", 1e-6))
    out["atol"] = check_tolerance("atol", options.get("atol", 0.0))
    if out["rtol"] == 0 and out["atol"] == 0:
        raise ValueError("rtol and atol are both 0: the iteration could never stop on the residual")
    n = problem.n
    maxiter = options.get("maxiter", 10 * n)
    if not isinstance(maxiter, int) or isinstance(maxiter, bool) or maxiter < 1:
        raise ValueError(f"maxiter must be a positive int, got {maxiter!r}")
    out["maxiter"] = maxiter
    x0 = options.get("x0")
    if x0 is not None:
        if not isinstance(x0, Tensor) or x0.shape != problem.b.shape:
            raise ValueError(f"x0 must be a tensor shaped like b {tuple(problem.b.shape)}")
        if not bool(torch.isfinite(x0).all()):
            raise ValueError("x0 contains NaN or Inf values")
    out["throw"] = bool(options.get("throw", True))
    out["check_symmetry"] = bool(options.get("check_symmetry", True))
    cb = options.get("callback")
    if cb is not None and not callable(cb):
        raise TypeError("callback must be callable or None")
    return out


def prepare(problem: LinearProblem, opts: dict[str, Any]) -> LinearOperator:
    """The operator, after the cheap structural checks (symmetry, sign of the diagonal)."""
    op = as_operator(problem)
    d = op.diagonal()
    if d is not None and bool((d < 0).any()):
        i = int(torch.nonzero(d < 0)[0])
        raise ValueError(f"A is not positive semi-definite: diagonal entry A[{i},{i}] = "
                         f"{float(d[i]):.3g} < 0")
    if opts["check_symmetry"]:
        check_symmetric(op)
        op.nmatvec = 0
    return op


def finish(x: Tensor, code: ReturnCode, stats: Stats, problem: LinearProblem, alg: Algorithm,
           throw: bool, detail: str = "") -> LinearSolution:
    sol = LinearSolution(x=x, retcode=code, stats=stats, problem=problem, algorithm=alg)
    if throw and code is not ReturnCode.SUCCESS:
        raise SolverError(code, detail=detail + f" After {stats.extra['iterations']} iterations, "
                          f"||r||/||b|| = {stats.extra['residuals'][-1]:.3g}.")
    return sol


def pcg_loop(op: LinearOperator, b: Tensor, precond: Callable[[Tensor], Tensor], opts: dict[str, Any],
             flexible: bool, project: _Projector) -> tuple[Tensor, ReturnCode, dict[str, Any], str]:
    """The (flexible) PCG iteration; returns x, the code, counters and a failure detail."""
    rtol, atol, maxiter, cb = opts["rtol"], opts["atol"], opts["maxiter"], opts.get("callback")
    bnorm = float(torch.linalg.vector_norm(b))
    scale = bnorm if bnorm > 0 else 1.0
    tol = max(rtol * bnorm, atol)
    x0 = opts.get("x0")
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - op(x)
    r = project(r)
    rnorm = float(torch.linalg.vector_norm(r))
    hist = [rnorm / scale]
    napply = 0
    if rnorm <= tol:
        return x, ReturnCode.SUCCESS, dict(iterations=0, residuals=hist, precond_applies=0), ""
    z = project(precond(r))
    napply += 1
    rz = float(torch.dot(r, z))
    if not rz > 0:
        return x, ReturnCode.INDEFINITE, dict(iterations=0, residuals=hist, precond_applies=napply), \
            f"the preconditioner is not positive definite: (r, M^-1 r) = {rz:.3g}."
    p = z
    code, detail, k = ReturnCode.NOT_CONVERGED, "", 0
    for k in range(1, maxiter + 1):
        Ap = op(p)
        pAp = float(torch.dot(p, Ap))
        if not pAp > 0:
            k -= 1
            if pAp != pAp:
                code, detail = ReturnCode.BREAKDOWN, "(p, A p) is NaN."
            else:
                code = ReturnCode.INDEFINITE
                detail = f"A is not positive definite: (p, A p) = {pAp:.3g} <= 0."
            break
        alpha = rz / pAp
        x = x + alpha * p
        r_new = project(r - alpha * Ap)
        rnorm = float(torch.linalg.vector_norm(r_new))
        hist.append(rnorm / scale)
        if cb is not None:
            cb(k, x, r_new)
        if rnorm <= tol:
            code = ReturnCode.SUCCESS
            break
        z = project(precond(r_new))
        napply += 1
        rz_new = float(torch.dot(r_new, z))
        if flexible:
            beta = (rz_new - float(torch.dot(r, z))) / rz
        else:
            beta = rz_new / rz
        if not rz_new > 0:
            code, detail = ReturnCode.INDEFINITE, f"the preconditioner is not positive definite: " \
                f"(r, M^-1 r) = {rz_new:.3g}."
            break
        r, rz = r_new, rz_new
        p = z + beta * p
    return x, code, dict(iterations=k, residuals=hist, precond_applies=napply), detail


class PCG(Algorithm):
    """Preconditioned conjugate gradients for symmetric positive (semi-)definite ``A x = b``.

    Args:
        preconditioner: ``"jacobi"``, ``"ic0"``, ``"amg"`` (pyamg), ``"none"``, a
            ``Preconditioner`` or a callable ``r -> M^{-1} r``
            (symmetric positive definite).

    Options of ``solve``: ``rtol`` (1e-6) and ``atol`` (0): stop when ``||r|| <= max(rtol ||b||, atol)``;
    ``maxiter`` (10 n); ``x0`` (zeros); ``throw`` (True: raise ``SolverError``
    when not converged or indefinite; False: return the retcode); ``check_symmetry`` (True);
    ``callback(k, x, r)``. The stats hold ``iterations``, ``residuals`` (``||r_k||/||b||``), ``setup_time``
    (preconditioner), ``solve_time`` and ``nfe`` (products with ``A``).
    """

    problem_types = (LinearProblem,)
    flexible = False

    def __init__(self, preconditioner: object = "jacobi"):
        self.preconditioner = make_preconditioner(preconditioner)

    def solve(self, problem: LinearProblem, **options: Any) -> LinearSolution:
        opts = parse_options(problem, options, type(self).__name__)
        op = prepare(problem, opts)
        project = _Projector(problem.nullspace, problem.b)
        t0 = time.perf_counter()
        pre = self.preconditioner
        apply = pre.setup(op) if isinstance(pre, Preconditioner) else pre
        t1 = time.perf_counter()
        x, code, counters, detail = pcg_loop(op, problem.b, apply, opts, self.flexible, project)
        t2 = time.perf_counter()
        stats = Stats(nfe=op.nmatvec, naccept=counters["iterations"],
                      extra=dict(counters, setup_time=t1 - t0, solve_time=t2 - t1, matvecs=op.nmatvec))
        return finish(x, code, stats, problem, self, opts["throw"], detail)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(preconditioner={self.preconditioner!r})"


class CG(PCG):
    """Plain conjugate gradients (``M = I``); see ``PCG`` for the options."""

    def __init__(self):
        super().__init__(preconditioner="none")

    def __repr__(self) -> str:
        return "CG()"


class FlexibleCG(PCG):
    """Flexible CG (Polak-Ribiere ``beta``; Notay, SIAM J. Sci. Comput. 22, 2000) for preconditioners that
    vary between iterations or are nonlinear (e.g. an inner iterative solve or a network). With a fixed SPD
    preconditioner it gives the same iterates as ``PCG`` in exact arithmetic."""

    flexible = True
