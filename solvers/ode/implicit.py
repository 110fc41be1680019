"""Jacobians, iteration matrices and linear solves shared by the implicit methods.

Every implicit method here (Rosenbrock / W methods, ESDIRK) needs, per step, solutions of linear
systems with the *iteration matrix*

    W = I - gamma * dt * J,        J = df/dy (t, y)

(Hairer & Wanner II, IV.7 (7.4) for Rosenbrock methods; IV.8 (8.15) for the simplified Newton
iteration of SDIRK methods). This module provides, for a state ``y`` of any shape:

* ``jacobian``: ``J`` dense, either of the flattened state, shape ``(n, n)``, or per sample,
  shape ``(B, d, d)``, when the caller declares ``per_sample=True`` (a state ``(*batch, d)`` whose
  rows evolve independently: an ensemble of problems, a neural ODE on a batch). Computed with
  ``torch.func`` (one ``vjp``, ``vmap``-ed over the ``d`` or ``n`` cotangent basis vectors: reverse
  mode, so any ``f`` differentiable by autograd works; sample-dependent parameters such as a
  per-row ``mu`` of shape ``(B, 1)`` are fine since the whole batch is evaluated at once), or taken
  from a user-supplied ``jac(t, y)``. Under autograd the Jacobian stays on the graph (second
  derivatives of ``f``), so gradients of a solve are those of the discrete method, exactly.
* ``time_derivative``: ``df/dt`` (one evaluation and a double vjp in ``t``) for non-autonomous problems.
* ``jvp``: ``J v`` without forming ``J`` (forward mode), for the matrix-free path.
* ``IterationMatrix``: ``W`` factored once (batched LU, ``torch.linalg.lu_factor_ex``) and reused
  for every stage solve with the same ``gamma * dt``; or, with ``linsolve="gmres"``, applied
  matrix-free (``v - gamma dt J v`` by ``jvp``) and solved with restarted GMRES
  (``solvers.linear.gmres``) with an optional preconditioner hook.

A singular (or non-finite) ``W`` raises ``StepFailure(ReturnCode.SINGULAR)``: the loop ends the
solve with that return code and the time reached (a singular ``W`` at one step size is not cured by a
smaller one often enough to be worth hiding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..checks import check_field_value
from ..problem import ODEProblem
from ..solution import ReturnCode, Solution
from ..stepping.controllers import Controller, PIController, default_tolerances
from ..stepping.protocol import StepFailure, Stepper, StepRejected, StepResult
from ..stepping.times import time_tensor
from .dense import DenseOutput

LINSOLVES = ("dense", "gmres")


@dataclass(frozen=True)
class ImplicitOptions:
    """How an implicit method gets its Jacobian and solves its linear systems.

    Args:
        jac: ``jac(t, y) -> J``, the exact Jacobian ``df/dy``: shape ``(n, n)`` for the flattened
            state (``y.shape + y.shape`` is accepted too), or ``(*batch, d, d)`` with
            ``per_sample=True``. ``None``: automatic differentiation (``torch.func``).
        per_sample: the state is ``(*batch, d)`` and its rows are independent problems: the
            Jacobian is block diagonal, stored and factored per sample (``(B, d, d)``, batched LU:
            ``O(B d^3)`` instead of ``O((B d)^3)``). Wrong answers follow if the rows are coupled.
        linsolve: ``"dense"`` (LU of ``W``) or ``"gmres"`` (matrix-free: Jacobian-vector products
            and restarted GMRES; for large ``d``, e.g. method-of-lines PDEs, where ``J`` would not fit).
        preconditioner: for ``"gmres"``: ``precond(t, y, gamma_dt) -> (v -> M^{-1} v)`` built once per
            step (right preconditioning); ``None``: none.
        krylov_rtol: GMRES relative residual tolerance per stage solve.
        krylov_restart, krylov_maxiter: GMRES restart length and total iteration cap.
    """

    jac: Callable[[Tensor, Tensor], Tensor] | None = None
    per_sample: bool = False
    linsolve: str = "dense"
    preconditioner: Callable[..., Callable[[Tensor], Tensor]] | None = None
    krylov_rtol: float = 1e-6
    krylov_restart: int = 30
    krylov_maxiter: int = 300

    def __post_init__(self) -> None:
        if self.jac is not None and not callable(self.jac):
            raise TypeError(f"jac must be callable as jac(t, y) or None, got {type(self.jac).__name__}")
        if self.linsolve not in LINSOLVES:
            raise ValueError(f"linsolve must be one of {LINSOLVES}, got {self.linsolve!r}")
        if self.preconditioner is not None and self.linsolve != "gmres":
            raise ValueError("preconditioner applies to linsolve='gmres' only")
        if self.linsolve == "gmres" and self.jac is not None:
            raise ValueError("linsolve='gmres' is matrix-free: it uses Jacobian-vector products, not jac")
        if not (0 < self.krylov_rtol < 1):
            raise ValueError(f"krylov_rtol must be in (0, 1), got {self.krylov_rtol}")
        for name in ("krylov_restart", "krylov_maxiter"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")


class JacobianCounters:
    """Work counters of one solve (reported in ``sol.stats``)."""

    __slots__ = ("njac", "nfact", "nsolve", "nkrylov", "ntgrad")

    def __init__(self) -> None:
        self.njac = self.nfact = self.nsolve = self.nkrylov = self.ntgrad = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class ImplicitTerms:
    """What one implicit solve's steps need: the vector field, the options, the shapes, counters,
    and the method's coefficients (``co``, set by the method)."""

    def __init__(self, f: Callable, y0: Tensor, opts: ImplicitOptions, co: Any = None):
        self.f = f
        self.opts = opts
        self.co = co
        self.shape = y0.shape
        self.dtype, self.device = y0.dtype, y0.device
        self.n = y0.numel()
        if opts.per_sample:
            if y0.dim() < 2:
                raise ValueError(f"per_sample=True needs a state of shape (*batch, d), got {tuple(y0.shape)}")
            self.d = y0.shape[-1]
            self.batch = self.n // self.d
        else:
            self.d, self.batch = self.n, 1
        self.counters = JacobianCounters()
        self._checked_jac = False
        # The last factored iteration matrix, reused while (J, gamma dt) are unchanged.
        self.cache: dict[str, Any] = {}


def _basis(terms: ImplicitTerms, like: Tensor) -> Tensor:
    """Cotangent basis for ``vjp``: per sample, ``d`` vectors of the state's shape (``e_i`` in every
    row); otherwise the ``n`` unit vectors of the flattened state."""
    if terms.opts.per_sample:
        eye = torch.eye(terms.d, dtype=like.dtype, device=like.device)
        return eye.view(terms.d, *([1] * (like.dim() - 1)), terms.d).expand(terms.d, *like.shape)
    return torch.eye(terms.n, dtype=like.dtype, device=like.device).view(terms.n, *like.shape)


def _check_user_jac(terms: ImplicitTerms, J: Any, y: Tensor) -> Tensor:
    if not isinstance(J, Tensor):
        raise TypeError(f"jac(t, y) must return a tensor, got {type(J).__name__}")
    if terms.opts.per_sample:
        want = (*y.shape[:-1], terms.d, terms.d)
        if tuple(J.shape) != want:
            raise ValueError(f"jac(t, y) must return shape {want} (per_sample: (*batch, d, d)), "
                             f"got {tuple(J.shape)}")
    elif tuple(J.shape) not in ((terms.n, terms.n), (*y.shape, *y.shape)):
        raise ValueError(f"jac(t, y) must return shape {(terms.n, terms.n)} (or {(*y.shape, *y.shape)}) "
                         f"for a state of shape {tuple(y.shape)}, got {tuple(J.shape)}")
    if J.dtype != y.dtype:
        raise ValueError(f"jac(t, y) returned dtype {J.dtype}, but the state has dtype {y.dtype}")
    if not bool(torch.isfinite(J.detach()).all()):
        raise ValueError("jac(t, y) returned NaN or Inf")
    return J


def jacobian(terms: ImplicitTerms, t: float, y: Tensor) -> Tensor:
    """``df/dy`` at ``(t, y)``: ``(n, n)``, or ``(B, d, d)`` with ``per_sample``."""
    terms.counters.njac += 1
    tt = time_tensor(t, y.device)
    user = terms.opts.jac
    if user is not None:
        J = user(tt, y)
        if not terms._checked_jac:
            J = _check_user_jac(terms, J, y)
            terms._checked_jac = True
    else:
        f = terms.f
        _, pullback = torch.func.vjp(lambda yy: f(tt, yy), y)
        rows = torch.func.vmap(pullback)(_basis(terms, y))[0]  # rows[i] = e_i^T J (per sample)
        if terms.opts.per_sample:
            # rows: (d, *batch, d) with rows[i, b, :] = d f_{b,i} / d y_b
            J = rows.reshape(terms.d, terms.batch, terms.d).transpose(0, 1)
        else:
            J = rows.reshape(terms.n, terms.n)
    if terms.opts.per_sample:
        return J.reshape(terms.batch, terms.d, terms.d)
    return J.reshape(terms.n, terms.n)


def time_derivative(terms: ImplicitTerms, t: float, y: Tensor, create_graph: bool | None = None) -> Tensor:
    """``df/dt`` at ``(t, y)``, flattened: one evaluation of ``f`` and two reverse passes.

    The product ``(df/dt) * 1`` is formed by the double-vjp identity ``df/dt = d/du [u^T df/dt]``
    (``u`` a dummy cotangent), in plain reverse-mode autograd: forward-mode ``torch.func.jvp`` in
    ``t`` costs 5-10x more here, since the forward derivatives of ``mul``/``add`` with a 0-d time
    tensor run through Python reference decompositions (about 1 ms per operation on the CPU).

    ``create_graph``: keep the result on the autograd graph (``d/dy`` and parameter derivatives of
    ``df/dt``); ``None``: whenever gradients are enabled. Pass ``False`` when nothing upstream requires
    gradients, to spare the graph.
    """
    terms.counters.ntgrad += 1
    f = terms.f
    if torch.is_inference_mode_enabled():
        # Inference tensors take no part in reverse-mode autograd (the graph below would be empty and
        # df/dt silently zero); forward mode through torch.func works there.
        tt = time_tensor(t, y.device)
        _, dfdt = torch.func.jvp(lambda s: f(s, y), (tt,), (torch.ones_like(tt),))
        return dfdt.reshape(-1)
    if create_graph is None:
        create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        tt = time_tensor(t, y.device).requires_grad_(True)
        out = f(tt, y)
        if not out.requires_grad:  # depends on nothing differentiable: constant in t
            return torch.zeros(out.numel(), dtype=out.dtype, device=out.device)
        u = torch.zeros_like(out, requires_grad=True)
        (g,) = torch.autograd.grad(out, tt, grad_outputs=u, create_graph=True, allow_unused=True)
        dfdt = None  # g is None: f does not depend on t
        if g is not None:
            (dfdt,) = torch.autograd.grad(g, u, create_graph=create_graph, allow_unused=True)
    if dfdt is None:
        return torch.zeros(out.numel(), dtype=out.dtype, device=out.device)
    return dfdt.reshape(-1)


def jvp(terms: ImplicitTerms, t: float, y: Tensor, v_flat: Tensor) -> Tensor:
    """``J v`` (flattened) without forming ``J``. Under autograd: one forward-mode evaluation of
    ``f`` on the graph; otherwise the reverse-mode linearisation (forward-mode duals do not
    propagate inside a custom ``autograd.Function``, where ``CheckpointAdjoint`` runs solves)."""
    tt = time_tensor(t, y.device)
    f = terms.f
    if not torch.is_grad_enabled():
        return _linearization(f, tt, y)(v_flat)
    _, out = torch.func.jvp(lambda yy: f(tt, yy), (y,), (v_flat.view(y.shape),))
    return out.reshape(-1)


def jacobian_norm(terms: ImplicitTerms, J: Tensor) -> Tensor:
    """``||J||_inf`` (the max over samples with ``per_sample``): an upper bound on the spectral
    radius, the eigenvalue estimate implicit methods report (as OrdinaryDiffEq's stiff methods do)."""
    return torch.linalg.matrix_norm(J.detach(), ord=float("inf")).max()


def _linearization(f: Callable, tt: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
    """``v -> J v`` (flattened) at ``(tt, y)`` by reverse mode only (see ``IterationMatrix``)."""
    with torch.enable_grad():
        yv = y.detach().requires_grad_(True)
        out = f(tt, yv)
        if not out.requires_grad:  # f does not depend on y
            return lambda v: torch.zeros_like(v)
        u = torch.zeros_like(out, requires_grad=True)
        (g,) = torch.autograd.grad(out, yv, u, create_graph=True, allow_unused=True)
    if g is None or not g.requires_grad:  # linear in nothing of u: J = 0
        return lambda v: torch.zeros_like(v)

    def lin(v: Tensor) -> Tensor:
        with torch.enable_grad():
            (jv,) = torch.autograd.grad(g, u, v.view(g.shape), retain_graph=True, allow_unused=True)
        return torch.zeros_like(v) if jv is None else jv.reshape(-1)

    return lin


class IterationMatrix:
    """``W = I - gamma_dt * J`` ready to solve with: ``W.solve(rhs_flat) -> x_flat``.

    Dense: LU-factored once (batched with ``per_sample``); ``solve`` is two triangular solves.
    Matrix-free (``linsolve="gmres"``): ``W v = v - gamma_dt J(t, y) v`` by ``jvp``, solved by GMRES.
    Under autograd the LU and the triangular solves are differentiable (``torch.linalg``).
    """

    def __init__(self, terms: ImplicitTerms, t: float, y: Tensor, gamma_dt: float, J: Tensor | None):
        self.terms = terms
        self.t, self.y, self.gamma_dt = t, y, gamma_dt
        self.matrix_free = terms.opts.linsolve == "gmres"
        if self.matrix_free:
            self.precond = None
            if terms.opts.preconditioner is not None:
                self.precond = terms.opts.preconditioner(time_tensor(t, y.device), y, gamma_dt)
            # Without a graph to keep, linearise f at (t, y) once: the double-vjp identity
            # J v = d/du [(J^T u) . v] needs one reverse graph of f, built here, and one backward
            # pass through it per product (~2 f-evaluations of work, no Python decompositions:
            # a fresh forward-mode jvp per product costs 5-10x more on the CPU, and
            # torch.func.linearize re-traces f at every step). Under autograd each product is a
            # jvp on the graph instead, so gradients through the Krylov solve stay exact.
            self._lin = None
            if not torch.is_grad_enabled():
                self._lin = _linearization(terms.f, time_tensor(t, y.device), y)
            return
        assert J is not None
        d = J.shape[-1]
        eye = torch.eye(d, dtype=J.dtype, device=J.device)
        W = eye - gamma_dt * J
        terms.counters.nfact += 1
        LU, pivots, info = torch.linalg.lu_factor_ex(W)
        # A zero pivot, or a non-finite W (J overflowed): no solve can follow.
        if bool((info != 0).any()) or not bool(torch.isfinite(LU.detach()).all()):
            raise StepFailure(ReturnCode.SINGULAR,
                              f"The iteration matrix I - {gamma_dt:.3g} J is singular or not finite at "
                              f"t = {t:.6g}.")
        self.LU, self.pivots = LU, pivots

    def solve(self, rhs: Tensor) -> Tensor:
        terms = self.terms
        terms.counters.nsolve += 1
        if self.matrix_free:
            return self._solve_krylov(rhs)
        if terms.opts.per_sample:
            x = torch.linalg.lu_solve(self.LU, self.pivots, rhs.view(terms.batch, terms.d, 1))
        else:
            x = torch.linalg.lu_solve(self.LU, self.pivots, rhs.view(-1, 1))
        return x.reshape(-1)

    def _solve_krylov(self, rhs: Tensor) -> Tensor:
        from ..linear.gmres import gmres

        terms, t, y, g = self.terms, self.t, self.y, self.gamma_dt
        opts = terms.opts

        lin = self._lin

        def matvec(v: Tensor) -> Tensor:
            if lin is not None:
                return v - g * lin(v)
            return v - g * jvp(terms, t, y, v)

        x, info = gmres(matvec, rhs, rtol=opts.krylov_rtol, restart=opts.krylov_restart,
                        maxiter=opts.krylov_maxiter, precond=self.precond)
        terms.counters.nkrylov += info.iterations
        if not info.converged:
            # A smaller step brings W closer to I, which GMRES solves in fewer iterations: reject
            # and retry rather than end the solve (the dt floor ends it if that never helps).
            raise StepRejected(f"GMRES did not reach krylov_rtol = {opts.krylov_rtol:g} in {info.iterations} "
                               f"iterations (residual {info.residual_norm:.3g})", dt_factor=0.5)
        return x


class ImplicitStepper(Stepper):
    """Base class of the implicit ODE methods (Rosenbrock / W, ESDIRK).

    Subclasses implement ``attempt`` (and ``coefficients`` for ``terms.co``) and set ``order``,
    ``embedded_order`` and ``dense_poly`` (the weight polynomials of their dense output: an
    accepted step's piece ``P`` of shape ``(m, n)`` gives ``y(t + theta dt) = y + dt * sum_i
    w_i(theta) P_i`` with ``w = dense_poly @ theta^j``, the form ``DenseOutput`` evaluates).

    Constructor options (keyword-only) are ``ImplicitOptions``: ``jac``, ``per_sample``,
    ``linsolve`` (``"dense"`` / ``"gmres"``), ``preconditioner``, ``krylov_rtol``,
    ``krylov_restart``, ``krylov_maxiter``.

    The stiffness estimate they report is ``||J||_inf`` (an upper bound on the spectral radius;
    matrix-free: ``||J v|| / ||v||`` along the step's increment) with ``stability_size = 1``: an
    A-stable method has no stability limit to divide by, so the trace carries ``|lambda|`` itself
    and ``dt * stiffness`` is the step's stiffness ``dt |lambda|``. ``AutoSwitch`` compares it with
    the explicit method's stability size to decide when to switch back.
    """

    problem_types = (ODEProblem,)
    kind = "ode"
    interpolates = True
    adaptive = True
    implicit: ClassVar[bool] = True
    extra_options = ("dense",)
    stability_size = 1.0
    order: ClassVar[int]
    embedded_order: ClassVar[int]

    def __init__(self, *, jac: Callable[[Tensor, Tensor], Tensor] | None = None, per_sample: bool = False,
                 linsolve: str = "dense", preconditioner: Callable | None = None, krylov_rtol: float = 1e-6,
                 krylov_restart: int = 30, krylov_maxiter: int = 300) -> None:
        self.options = ImplicitOptions(jac=jac, per_sample=per_sample, linsolve=linsolve,
                                       preconditioner=preconditioner, krylov_rtol=krylov_rtol,
                                       krylov_restart=krylov_restart, krylov_maxiter=krylov_maxiter)
        self._coeff_cache: dict[tuple[torch.dtype, torch.device], Any] = {}

    # -- facts ------------------------------------------------------------------------------------
    @property
    def error_exponent(self) -> float:
        return self.embedded_order + 1

    @property
    def initial_step_order(self) -> int:
        return self.embedded_order

    def default_controller(self) -> Controller:
        """The PI controller: steps of stiff solves are often limited by the Newton / linear-solve
        behaviour and the I controller's oscillation costs rejections (Hairer & Wanner II, IV.8)."""
        return PIController()

    def coefficients(self, dtype: torch.dtype, device: torch.device) -> Any:
        """The method's coefficients as tensors of ``dtype`` on ``device`` (cached); ``None`` if the
        method needs none beyond Python floats."""
        return None

    def _coefficients(self, dtype: torch.dtype, device: torch.device) -> Any:
        key = (dtype, device)
        if key not in self._coeff_cache:
            self._coeff_cache[key] = self.coefficients(dtype, device)
        return self._coeff_cache[key]

    def dense_poly_tensor(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        key = ("dense", dtype, device)
        if key not in self._coeff_cache:
            self._coeff_cache[key] = torch.as_tensor(self.dense_poly, dtype=dtype, device=device)
        return self._coeff_cache[key]

    # -- protocol ---------------------------------------------------------------------------------
    def prepare(self, problem: ODEProblem, options: dict[str, Any],
                grid: list[float] | None) -> ImplicitTerms:
        y0 = problem.y0
        return ImplicitTerms(problem.f, y0, self.options, self._coefficients(y0.dtype, y0.device))

    def terms_for(self, f: Callable, y: Tensor) -> ImplicitTerms:
        """Terms for stepping by hand (``step``)."""
        return ImplicitTerms(f, y, self.options, self._coefficients(y.dtype, y.device))

    def first_evaluations(self, terms: ImplicitTerms, t0: float, y0: Tensor) -> tuple[Tensor, None, int, int]:
        f0 = terms.f(time_tensor(t0, y0.device), y0)
        check_field_value("f(t0, y0)", f0, y0)
        if terms.opts.jac is not None:  # a wrong jac is refused before the first step
            jacobian(terms, t0, y0)
            terms.counters.njac -= 1
        return f0.reshape(-1), None, 1, 0

    def dense_piece(self, terms: ImplicitTerms, t_new: float, res: StepResult, need: bool) -> tuple[Any, int]:
        return res.k, 0

    def interpolate(self, terms: ImplicitTerms, y_flat: Tensor, piece: Tensor, dt: float,
                    thetas: list[float]) -> Tensor:
        poly = self.dense_poly_tensor(y_flat.dtype, y_flat.device)
        return DenseOutput.evaluate_step(poly, y_flat, piece, dt, thetas)

    def dense_output(self, terms: ImplicitTerms, shape: torch.Size, direction: float) -> DenseOutput:
        return DenseOutput(self.dense_poly_tensor(terms.dtype, terms.device), shape, direction)

    def make_solution(self, **fields: Any) -> Solution:
        extras = fields.pop("extras")
        return Solution(**fields, events=extras["events"])

    def extra_stats(self, terms: ImplicitTerms) -> dict[str, Any]:
        return terms.counters.as_dict()

    # -- one step by hand -------------------------------------------------------------------------
    def step(self, f: Callable, t: float | Tensor, y: Tensor, dt: float | Tensor, *,
             rtol: float | None = None, atol: float | None = None) -> StepResult:
        """One differentiable step of ``dy/dt = f(t, y)`` (the very step ``solve`` takes); the
        error estimate uses ``rtol`` / ``atol`` (default ``DEFAULT_TOLERANCES["ode"]``)."""
        if not isinstance(y, Tensor) or not y.is_floating_point():
            raise TypeError("y must be a floating-point tensor")
        terms = self.terms_for(f, y)
        t = float(t)
        dt = float(dt)
        return self.attempt(terms, t, y, dt, None, None, *default_tolerances("ode", rtol, atol), t_new=t + dt)

    def __repr__(self) -> str:
        o = self.options
        parts = [f"{k}={getattr(o, k)!r}" for k in ("per_sample", "linsolve")
                 if getattr(o, k) != ImplicitOptions.__dataclass_fields__[k].default]
        if o.jac is not None:
            parts.insert(0, "jac=...")
        return f"{type(self).__name__}({', '.join(parts)})"
