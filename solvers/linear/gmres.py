"""Restarted GMRES for non-symmetric ``A x = b``: a plain function ``gmres`` and ``GMRES`` behind ``solve``.

GMRES (Saad & Schultz, SIAM J. Sci. Stat. Comput. 7, 1986; Saad, *Iterative Methods for Sparse Linear
Systems*, 2nd ed., Alg. 6.9 and 6.11) with right preconditioning (Alg. 9.5), restarted every ``m`` steps::

    r_0 = b - A x_0,  beta = ||r_0||,  v_1 = r_0 / beta
    for j = 1..m:
        w = A M^{-1} v_j                                   (one product with A, one with M^{-1})
        h_{ij} = (w, v_i), w <- w - sum_i h_{ij} v_i       (i = 1..j, done twice: see below)
        h_{j+1,j} = ||w||,  v_{j+1} = w / h_{j+1,j}
        apply the rotations G_1..G_{j-1} to column j of H, then the new G_j that zeroes h_{j+1,j};
        g <- G_j g (g starts as beta e_1):  |g_{j+1}| = min_y ||beta e_1 - H_j y|| = ||b - A x_j||
        stop the cycle when |g_{j+1}| <= max(rtol ||b||, atol)
    y = argmin ||beta e_1 - H_m y||,  x_m = x_0 + M^{-1} V_m y
    r = b - A x_m (recomputed); converged if ||r|| <= tol, else restart with x_0 = x_m

Why these choices:

* **Right preconditioning** minimises the true residual ``||b - A x||`` over ``x_0 + M^{-1} K_m(A M^{-1},
  r_0)``, so the monitored residual and the stopping test are those of the unpreconditioned system (left
  preconditioning would monitor ``||M^{-1} r||``). ``M^{-1}`` is applied once more per cycle, to
  ``V_m y``, instead of storing the preconditioned vectors ``M^{-1} v_j`` (flexible GMRES would).
* **Classical Gram-Schmidt, twice (CGS2), on every step** instead of modified Gram-Schmidt with a
  conditional second pass. Two classical passes give a basis orthogonal to working precision, as MGS
  plus reorthogonalisation does (Giraud, Langou & Rozloznik, Numer. Math. 101, 2005: "twice is
  enough"), but each pass is two matrix-vector products with the basis (``V^T w``, ``V h``) instead of
  ``2 j`` dot products and updates: no Python loop over the basis, few kernel launches on a GPU. The
  second pass is always done because the usual test for it (``||w_after|| < 0.7 ||w_before||``,
  Daniel, Gragg, Kaufman & Stewart 1976) needs a host synchronisation per step, and the pass costs two
  products with the basis, usually less than one product with ``A``.
* **One host synchronisation per inner step.** Column ``j`` of ``H`` (``j + 1`` numbers plus two
  norms) is copied to the host once per step; the Givens rotations, the residual estimate ``|g_{j+1}|``
  and the stopping test are then Python float64 arithmetic (for every input dtype). ``||r||`` is read
  once more per cycle.
* **The residual is recomputed at the end of each cycle** (``r = b - A x``, one product): the reported
  ``residual_norm`` and the convergence decision are those of the true residual, not of the recurrence,
  which can drift below it by rounding. A cycle whose estimate met the tolerance but whose true residual
  did not is followed by another (this is iterative refinement).
* **Happy breakdown** (``h_{j+1,j} <= 10 eps a``, with ``a = max ||A M^{-1} v_i||`` over the unit
  vectors so far, a lower bound of ``||A M^{-1}||``: ``A M^{-1} v_j`` lies in the basis) ends the cycle;
  the least-squares solution is then exact in the Krylov space. If also the rotated diagonal of ``H``
  vanishes (``A M^{-1}`` singular on the Krylov space), the last column is dropped; if such a cycle
  made no progress the iteration stops with ``breakdown=True, converged=False``.

Dtypes: the basis, ``x`` and every product with ``A`` stay in ``b``'s dtype and device. The small
least-squares problem is solved in float64: on the host by back substitution when autograd is not
recording, or on ``b``'s device with ``torch.linalg.qr`` (float32 on MPS, which has no float64) when it
is. Memory: ``(restart + 1) n`` entries for the basis.

Autograd: ``gmres`` is written with out-of-place torch operations when autograd records (some input,
the output of ``matvec`` or of ``precond`` requires grad): gradients flow by unrolling the iterations
(the basis is then a list of vectors and the projections are vector operations). The derivative of a
tightly converged solve approximates that of ``A^{-1} b`` (it is exact when GMRES terminates in ``n``
steps without restart). The unrolled derivative exists only where the iteration did work: ``b = 0``
(or an ``x0`` that already meets the tolerance) returns a result with no dependence on ``b`` or ``A``.
A ``matvec`` or ``precond`` that leaves the graph (through numpy or scipy) while the input requires grad
would make the gradient silently wrong, so it is an error. Under ``torch.no_grad()`` the basis is one
preallocated matrix and the projections are matrix-vector products.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..algorithm import Algorithm
from ..checks import check_finite, check_floating, check_tolerance
from ..problem import LinearProblem
from ..solution import ReturnCode, Stats
from .krylov import finish, parse_options
from .operators import LinearOperator, as_operator
from .preconditioners import Jacobi, Preconditioner, make_preconditioner
from .solution import LinearSolution

__all__ = ["gmres", "GMRESInfo", "GMRES"]

Matvec = Callable[[Tensor], Tensor]

#: ``h_{j+1,j}`` (and the rotated diagonal of ``H``) below this many rounding units of
#: ``max_i ||A M^{-1} v_i||`` (a lower bound of ``||A M^{-1}||``) count as zero: rounding noise.
BREAKDOWN_EPS = 10.0


@dataclass
class GMRESInfo:
    """What a ``gmres`` run did.

    Attributes:
        iterations: inner (Arnoldi) steps, each one product with ``A`` and one with ``M^{-1}``.
        restarts: cycles started after the first.
        residual_norm: ``||b - A x||`` of the returned ``x``, recomputed (not the recurrence's estimate).
        converged: ``residual_norm <= max(rtol ||b||, atol)``.
        breakdown: a cycle ended because ``A M^{-1} v_j`` lay in the Krylov basis (happy breakdown; the
            solve is then usually ``converged``), or because ``A``, ``M^{-1}`` returned NaN/Inf or ``A`` is
            singular on the Krylov space (then not ``converged``; ``message`` says which).
        matvecs: products with ``A``: ``iterations``, plus one per cycle that updated ``x`` (its
            residual), plus one for ``r_0`` when ``x0`` is given.
        residuals: ``||r_k||`` for ``k = 0..iterations``: the Givens estimate inside a cycle, the
            recomputed residual at the start and at the end of each cycle.
        message: why the iteration stopped, when it did not converge.
    """

    iterations: int
    restarts: int
    residual_norm: float
    converged: bool
    breakdown: bool
    matvecs: int = 0
    residuals: list[float] = field(default_factory=list)
    message: str = ""


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_output(name: str, out: Any, like: Tensor) -> None:
    if not isinstance(out, Tensor):
        raise TypeError(f"{name} must return a torch.Tensor, got {type(out).__name__}")
    if out.shape != like.shape or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(f"{name} returned a tensor of shape {tuple(out.shape)}, {out.dtype} on "
                         f"{out.device}; expected b's: {tuple(like.shape)}, {like.dtype} on {like.device}")


def _check_graph(name: str, v: Tensor, out: Tensor) -> None:
    if v.requires_grad and not out.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"{name} cut the autograd graph (its output does not require grad although its "
                           f"input does: numpy/scipy inside?), so gmres's gradient would be wrong. Run it "
                           f"under torch.no_grad() or write {name} with torch operations")


class _Basis:
    """The Arnoldi vectors ``v_1..v_k``: rows of one preallocated matrix (autograd off) or a list of
    separate tensors (autograd on: in-place writes into a saved matrix would break the backward pass, and
    stacking the list every step would save ``O(m^2 n)`` copies)."""

    def __init__(self, v: Tensor, rows: int, track: bool, buffer: Tensor | None):
        self.track = track
        if track:
            self.vs = [v]
        else:
            self.V = buffer if buffer is not None else v.new_empty(rows, v.numel())
            self.V[0].copy_(v)
        self.k = 1

    def append(self, v: Tensor) -> None:
        if self.track:
            self.vs.append(v)
        else:
            self.V[self.k].copy_(v)
        self.k += 1

    def project(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """One classical Gram-Schmidt pass: ``h = V^T w``, ``w - V h``."""
        if self.track:
            h = torch.stack([torch.dot(v, w) for v in self.vs])
            for hi, v in zip(h.unbind(), self.vs):
                w = w - hi * v
            return h, w
        V = self.V[:self.k]
        h = V @ w
        return h, w - h @ V

    def combine(self, y: Tensor) -> Tensor:
        """``V_k y`` for the first ``len(y)`` vectors."""
        if self.track:
            out = y[0] * self.vs[0]
            for yi, v in zip(y[1:].unbind(), self.vs[1:]):
                out = out + yi * v
            return out
        return y @ self.V[:y.numel()]


def _ls_torch(cols: list[Tensor], beta: Tensor, dtype: torch.dtype) -> Tensor:
    """``argmin_y ||beta e_1 - H y||`` with ``H`` built from its columns (column ``i`` has ``i + 2``
    entries), by Householder QR: differentiable in ``H`` and ``beta``."""
    k = len(cols)
    H = torch.stack([torch.nn.functional.pad(c.to(dtype), (0, k + 1 - c.numel())) for c in cols], dim=1)
    Q, R = torch.linalg.qr(H)
    rhs = (beta.to(dtype) * Q[0]).unsqueeze(-1)
    return torch.linalg.solve_triangular(R, rhs, upper=True).squeeze(-1)


def _ls_host(Rcols: list[list[float]], g: list[float], k: int) -> list[float]:
    """Back substitution ``R_k y = g_{1..k}`` with the Givens-rotated columns (float64 on the host)."""
    y = [0.0] * k
    for i in range(k - 1, -1, -1):
        s = g[i]
        for t in range(i + 1, k):
            s -= Rcols[t][i] * y[t]
        y[i] = s / Rcols[i][i]
    return y


def gmres(matvec: Matvec, b: Tensor, *, x0: Tensor | None = None, rtol: float = 1e-8, atol: float = 0.0,
          restart: int = 30, maxiter: int | None = None, precond: Matvec | None = None,
          callback: Callable[[int, Tensor, Tensor], None] | None = None) -> tuple[Tensor, GMRESInfo]:
    """Solve ``A x = b`` for a square, possibly non-symmetric ``A`` given by ``matvec(v) = A v``.

    Args:
        matvec: ``v -> A v`` on 1-D tensors of ``b``'s shape, dtype and device (a Jacobian-vector
            product, a sparse or dense matrix product, ...).
        b: right-hand side, a real floating 1-D tensor (any float dtype, any device).
        x0: initial guess (zeros). Cast to ``b``'s dtype and device.
        rtol, atol: stop when ``||b - A x|| <= max(rtol ||b||, atol)``.
        restart: inner steps per cycle ``m`` (memory ``(m + 1) n``); capped at ``n``.
        maxiter: the most inner steps in all (``10 n``); the products with ``A`` are counted in
            ``GMRESInfo.matvecs``.
        precond: ``v -> M^{-1} v`` with ``M ~ A`` (right preconditioning: the monitored residual is the
            true one). Any non-singular ``M``; it must not change between calls (no flexible GMRES).
        callback: ``callback(iterations, x, r)`` at the end of each cycle, with the recomputed residual.

    Returns:
        ``(x, info)``: the last iterate and a ``GMRESInfo``. Not converging is not an error: read
        ``info.converged``.

    Raises ``TypeError``/``ValueError`` before any work for a non-callable ``matvec`` or ``precond``, a
    ``b`` that is not a non-empty real floating 1-D tensor, NaN/Inf in ``b`` or ``x0``, an ``x0`` of
    another shape, negative or non-finite tolerances (or both zero), ``restart < 1`` or ``maxiter < 1``;
    and at the first product if ``matvec`` or ``precond`` returns another shape, dtype or device.
    """
    if not callable(matvec):
        raise TypeError(f"matvec must be callable (v -> A v), got {type(matvec).__name__}")
    if precond is not None and not callable(precond):
        raise TypeError(f"precond must be callable (v -> M^-1 v) or None, got {type(precond).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable or None")
    check_floating("b", b)
    if b.is_complex():
        raise TypeError(f"gmres solves real systems; b has the complex dtype {b.dtype}")
    if b.dim() != 1 or b.numel() == 0:
        raise ValueError(f"b must be a non-empty 1-D tensor, got shape {tuple(b.shape)}")
    check_finite("b", b)
    if x0 is not None:
        check_floating("x0", x0)
        if x0.shape != b.shape:
            raise ValueError(f"x0 must have b's shape {tuple(b.shape)}, got {tuple(x0.shape)}")
        check_finite("x0", x0)
    rtol = check_tolerance("rtol", rtol)
    atol = check_tolerance("atol", atol)
    if rtol == 0 and atol == 0:
        raise ValueError("rtol and atol are both 0: the iteration could never stop on the residual")
    restart = _check_int("restart", restart)
    n = b.numel()
    maxiter = 10 * n if maxiter is None else _check_int("maxiter", maxiter)

    bnorm = float(torch.linalg.vector_norm(b.detach()))
    if bnorm == 0.0:
        zero = torch.zeros_like(b)
        return zero, GMRESInfo(0, 0, 0.0, True, False, 0, [0.0])
    tol = max(rtol * bnorm, atol)
    eps = float(torch.finfo(b.dtype).eps)
    ls_dtype = torch.float32 if b.device.type == "mps" else torch.float64
    m = min(restart, n, maxiter)

    nmv = 0
    checked = [False, precond is None]

    def A(v: Tensor) -> Tensor:
        nonlocal nmv
        nmv += 1
        out = matvec(v)
        if not checked[0]:
            _check_output("matvec", out, b)
            checked[0] = True
        _check_graph("matvec", v, out)
        return out

    def P(v: Tensor) -> Tensor:
        if precond is None:
            return v
        out = precond(v)
        if not checked[1]:
            _check_output("precond", out, b)
            checked[1] = True
        _check_graph("precond", v, out)
        return out

    if x0 is None:
        x = torch.zeros_like(b)
        r = b
    else:
        x = x0.to(device=b.device, dtype=b.dtype).clone()
        r = b - A(x)
    beta_t = torch.linalg.vector_norm(r)
    beta = float(beta_t.detach())
    hist = [beta]
    anorm = 0.0                                  # max ||A M^{-1} v|| over unit v seen: <= ||A M^{-1}||
    its = cycles = 0
    converged = beta <= tol
    breakdown = False
    message = ""
    buffer: Tensor | None = None

    while not converged and its < maxiter:
        cycles += 1
        v = r / beta_t
        basis: _Basis | None = None
        g = [beta]                               # rotated beta e_1 (host, float64)
        cs: list[float] = []
        sn: list[float] = []
        Rcols: list[list[float]] = []           # rotated columns of H (host)
        cols: list[Tensor] = []                 # columns of H (device; used when autograd records)
        k = 0
        singular = nonfinite = False
        for j in range(m):
            if its >= maxiter:
                break
            its += 1
            z = P(v)
            w = A(z)
            if basis is None:
                track = torch.is_grad_enabled() and (v.requires_grad or z.requires_grad or w.requires_grad)
                if not track and buffer is None:
                    buffer = b.new_empty(m, n)
                basis = _Basis(v, m, track, buffer)
            w0 = torch.linalg.vector_norm(w)
            h1, w = basis.project(w)
            h2, w = basis.project(w)
            h = h1 + h2
            hn = torch.linalg.vector_norm(w)
            vals = torch.cat([h.detach(), hn.detach().reshape(1), w0.detach().reshape(1)])
            hc = vals.to("cpu", torch.float64).tolist()   # the one host synchronisation of the step
            wnorm0 = hc.pop()
            if not all(math.isfinite(c) for c in hc):
                nonfinite = True
                hist.append(math.nan)
                break
            hnorm = hc[j + 1]
            for i in range(j):                   # the previous rotations on the new column
                t = cs[i] * hc[i] + sn[i] * hc[i + 1]
                hc[i + 1] = -sn[i] * hc[i] + cs[i] * hc[i + 1]
                hc[i] = t
            rho = math.hypot(hc[j], hc[j + 1])
            anorm = max(anorm, wnorm0)
            small = BREAKDOWN_EPS * eps * anorm
            if rho <= small:                     # H_j singular: the column adds nothing
                singular = breakdown = True
                hist.append(abs(g[j]))
                break
            c, s = hc[j] / rho, hc[j + 1] / rho
            hc[j], hc[j + 1] = rho, 0.0
            cs.append(c)
            sn.append(s)
            g.append(-s * g[j])
            g[j] = c * g[j]
            Rcols.append(hc)
            if basis.track:
                cols.append(torch.cat([h, hn.reshape(1)]))
            k = j + 1
            est = abs(g[j + 1])
            hist.append(est)
            if hnorm <= small:                   # happy breakdown: the Krylov space is invariant
                breakdown = True
                break
            if est <= tol or j + 1 == m:
                break
            v = w / hn
            basis.append(v)
        if k > 0:
            assert basis is not None
            if basis.track:
                y = _ls_torch(cols, beta_t, ls_dtype).to(b.dtype)
            else:
                y = torch.tensor(_ls_host(Rcols, g, k), dtype=b.dtype, device=b.device)
            x = x + P(basis.combine(y))
            r = b - A(x)
        beta_prev = beta
        beta_t = torch.linalg.vector_norm(r)
        beta = float(beta_t.detach())
        hist[-1] = beta
        converged = beta <= tol
        if callback is not None:
            callback(its, x, r)
        if nonfinite and not converged:
            breakdown = True
            message = f"A or M^-1 returned NaN/Inf at iteration {its}"
            break
        if singular and not converged and beta >= beta_prev:
            message = (f"A M^-1 is singular on the Krylov space (iteration {its}): the residual cannot be "
                       "reduced further")
            break
    if not converged and not message:
        message = f"maxiter = {maxiter} inner iterations reached"
    if converged:
        message = ""
    return x, GMRESInfo(its, max(cycles - 1, 0), beta, converged, breakdown, nmv, hist, message)


class GMRES(Algorithm):
    """Restarted, right-preconditioned GMRES for square (non-symmetric) ``A x = b``.

    Args:
        restart: inner steps per cycle (memory ``(restart + 1) n``).
        preconditioner: ``None``/``"none"``, ``"jacobi"`` (any non-zero diagonal), ``"ic0"``,
            ``"amg"`` (pyamg), a ``Preconditioner`` or a callable ``v -> M^{-1} v``. Any non-singular
            ``M`` works (no symmetry needed); it should approximate ``A`` (for example an incomplete LU
            from ``scipy.sparse.linalg.spilu`` wrapped as a callable).

    Options of ``solve``: ``rtol`` (1e-6) and ``atol`` (0): stop when ``||r|| <= max(rtol ||b||, atol)``;
    ``maxiter`` (10 n inner steps); ``x0`` (zeros); ``throw`` (True: raise ``SolverError`` when not
    converged; False: return the retcode ``MAX_ITERS``, or ``BREAKDOWN`` when ``A`` is singular on the
    Krylov space or a product returned NaN/Inf); ``callback(k, x, r)`` at the end of each cycle (``k``
    inner steps so far). No symmetry is needed or checked. The stats hold ``iterations``, ``restarts``,
    ``residuals`` (``||r_k|| / ||b||``, k = 0..iterations), ``breakdown``, ``setup_time``, ``solve_time``,
    ``precond_applies`` and ``nfe`` = ``matvecs`` (products with ``A``). ``sol.x`` is differentiable
    (by unrolling, see ``gmres``) for a torch ``A`` or matvec and a torch preconditioner (``None``,
    ``"jacobi"`` or a callable in torch operations); scipy matrices, IC(0) and AMG leave the graph, which
    is an error when ``b`` or ``A`` requires grad.
    """

    problem_types = (LinearProblem,)

    def __init__(self, restart: int = 30, preconditioner: object = None):
        self.restart = _check_int("restart", restart)
        self.preconditioner = make_preconditioner(preconditioner)

    def _setup(self, op: LinearOperator) -> Matvec:
        pre = self.preconditioner
        if type(pre) is Jacobi:  # PCG's Jacobi needs d > 0 (SPD M); GMRES only needs d != 0
            d = op.diagonal()
            if d is None:
                raise ValueError("Jacobi needs an explicit matrix (A is a matvec callable)")
            if not bool((d != 0).all()):
                i = int(torch.nonzero(d == 0)[0])
                raise ValueError(f"Jacobi needs a non-zero diagonal; A[{i},{i}] = 0")
            inv = 1.0 / d
            return lambda v: inv * v
        return pre.setup(op) if isinstance(pre, Preconditioner) else pre

    def solve(self, problem: LinearProblem, **options: Any) -> LinearSolution:
        if "check_symmetry" in options:
            raise TypeError("GMRES: unknown option 'check_symmetry' (GMRES does not need a symmetric A)")
        opts = parse_options(problem, options, type(self).__name__)
        if problem.nullspace is not None:
            raise ValueError("GMRES does not take a null space (singular A); for a symmetric "
                             "semi-definite A use CG/PCG, which keep the iterates orthogonal to it")
        op = as_operator(problem)
        t0 = time.perf_counter()
        apply = self._setup(op)
        napply = 0

        def counted(v: Tensor) -> Tensor:
            nonlocal napply
            napply += 1
            return apply(v)

        t1 = time.perf_counter()
        x, info = gmres(op, problem.b, x0=opts.get("x0"), rtol=opts["rtol"], atol=opts["atol"],
                        restart=self.restart, maxiter=opts["maxiter"], precond=counted,
                        callback=opts.get("callback"))
        t2 = time.perf_counter()
        bnorm = float(torch.linalg.vector_norm(problem.b.detach()))
        scale = bnorm if bnorm > 0 else 1.0
        if info.converged:
            code = ReturnCode.SUCCESS
        elif info.breakdown:
            code = ReturnCode.BREAKDOWN
        else:
            code = ReturnCode.MAX_ITERS
        stats = Stats(nfe=op.nmatvec, naccept=info.iterations,
                      extra=dict(iterations=info.iterations, restarts=info.restarts,
                                 residuals=[v / scale for v in info.residuals], breakdown=info.breakdown,
                                 precond_applies=napply, setup_time=t1 - t0, solve_time=t2 - t1,
                                 matvecs=op.nmatvec))
        detail = (info.message + ".") if info.message else ""
        return finish(x, code, stats, problem, self, opts["throw"], detail)

    def __repr__(self) -> str:
        return f"GMRES(restart={self.restart}, preconditioner={self.preconditioner!r})"
