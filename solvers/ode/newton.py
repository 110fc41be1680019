"""The simplified Newton iteration of diagonally implicit Runge-Kutta stages, the reuse of its
Jacobian and iteration matrix across steps, and the gradient of its root by the implicit function
theorem.

The stage equations
-------------------
Stage ``i`` of an (E)SDIRK method with diagonal ``gamma`` solves, for ``w = z_i - psi_i``,

    F(w) = w - gamma dt f(t_n + c_i dt, psi_i + w) = 0,      psi_i = y_n + dt sum_{j<i} a_ij k_j,

and then ``k_i = w / (gamma dt)`` (no extra evaluation of ``f``). Taking the increment ``w`` as the
unknown, instead of ``z_i`` itself, is Hairer & Wanner's advice for stiff problems (*Solving ODEs II*,
Sect. IV.8, "the differences ``z_i = Y_i - y_0`` as unknowns"): ``w`` is small, so it is computed to
full relative precision, and ``k_i`` is not ``f(z_i)``, which would multiply the iteration error by
the stiff Lipschitz constant.

The simplified Newton iteration (Hairer & Wanner II, IV.8, (8.15)) uses one matrix for all stages
and iterations, ``W = I - gamma dt J`` with ``J`` a Jacobian ``df/dy`` taken at some earlier point:

    W dw^(k) = gamma dt f(t_i, psi_i + w^(k)) - w^(k),      w^(k+1) = w^(k) + dw^(k).

Its convergence is monitored in the scaled RMS norm of the error estimate,
``||v|| = RMS(v / (atol + rtol |y_n|))``, with the rate and error bound (IV.8, (8.10)-(8.11))

    Theta_k = ||dw^(k)|| / ||dw^(k-1)||,     eta_k = Theta_k / (1 - Theta_k),
    ||w^(k+1) - w*|| <= eta_k ||dw^(k)||,

and stops when ``eta_k ||dw^(k)|| <= kappa`` (the tolerance is 1 in this norm). For the first
iteration, which has no rate yet, ``eta_0 = max(eta_old, uround)^0.8`` from the previous stage
(Hairer & Wanner's rule; RADAU5 does the same), so that a linear problem converges in one
iteration. ``kappa = 1e-2`` by default: Hairer & Wanner recommend ``kappa`` between ``1e-1`` and
``1e-2``; we take the safe end, as OrdinaryDiffEq's ``NLNewton`` (``kappa = 1/100``) and diffrax's
``VeryChord`` (``kappa = 1e-2``) do, because the stage error then stays two orders below the local
error the step controller sees. The tolerance is floored at ``10 uround ||y_n||`` (what rounding
of the iterate itself allows; RADAU5 floors ``fnewt`` at ``10 uround / rtol`` likewise), so a tight
``rtol`` does not ask for digits that do not exist.

The iteration gives up (the step is rejected, with the reason in the trace) when

* ``Theta_k >= 1`` or a non-finite iterate: divergence;
* ``Theta_k^(k_max - k) / (1 - Theta_k) ||dw^(k)|| > kappa``: it is predicted not to converge in the
  iterations left (IV.8, after the stopping criterion);
* ``k_max`` iterations (10) are spent.

Reuse of ``J`` and ``W`` (``IterationMatrices``)
------------------------------------------------
Following Hairer & Wanner II, IV.8 ("Some remarks on the implementation") and the strategy of
RADAU5 and OrdinaryDiffEq's ``NLNewton``:

* ``J`` is kept from step to step while the Newton iterations of the last accepted step converged
  fast: its largest rate ``Theta`` was ``<= jac_theta``. Otherwise the next step starts with a new
  ``J`` at its own ``(t_n, y_n)``. An attempt retried from the same state (after an error-test or a
  Newton rejection) gets a *current* ``J`` (taken at ``(t_n, y_n)``) if its ``J`` was older (RADAU5:
  "if not caljac, recompute"); a ``J`` that is already current is not recomputed.
* ``W`` is refactored only when ``J`` changed or ``gamma dt`` moved by more than ``w_rtol = 20 %``
  from the ``gamma dt`` it was factored with (OrdinaryDiffEq's ``new_W_gamma_dt_cutoff = 1/5``). In
  between the iteration runs with the slightly wrong ``W``: still a simplified Newton iteration for
  the exact stage equation, whose root is unchanged, only its rate is worse (for a stiff component
  ``Theta ~ |1 - gamma dt / gamma dt_W|``, up to 0.2). A retried attempt gets an exact ``W``.
  (RADAU5 instead holds ``dt`` fixed when the controller proposes a change within ``[1, 1.2]``;
  that needs the controller's proposal, which the stepper protocol does not hand to the method.)
* When the iteration fails with a ``J`` or ``W`` that is not fresh, the step is retried at once
  with a current ``J`` and an exact ``W`` (no rejection: ``nconvfail`` counts it); only a failure
  with fresh matrices rejects the step.

``jac_theta`` defaults to Hairer & Wanner's ``1e-3`` (RADAU5's ``thet``). With a stale ``J`` the
error of an iterate accepted by the test above is only as good as the rate estimate, and a stage
accepted after one iteration (on ``eta_0``) has no rate of its own; a ``J`` fresh enough to contract by
``1e-3`` overshoots the test by orders of magnitude instead. Measured (``tests/test_esdirk.py``
prints these): on Robertson to ``t = 1e5`` (rtol 1e-6, atol 1e-10) Kvaerno3 ends ``0.06 x`` the
tolerance from the reference with ``jac_theta = 1e-3`` (292 Jacobians in 778 steps) but ``25 x`` with
``0.03`` and ``15-26 x`` with OrdinaryDiffEq's ``fast_convergence_cutoff = 0.2`` (10-37 Jacobians),
the Newton errors adding up over the steps; fewer Jacobians also cost more Newton iterations
(Van der Pol ``mu = 100``: 16.4k iterations against 19.6k). Raise it when ``J`` is expensive.

Gradients: the implicit function theorem (``attach_root``)
----------------------------------------------------------
Newton runs without an autograd graph (on detached tensors). The converged root ``w*`` of
``F(w, psi, theta) = 0`` (``theta``: any parameter of ``f``) gets its gradient attached in one step:

    r = w* - gamma dt f(t_i, psi + w*; theta)     (w* detached; r is on the graph through psi, theta)
    w = w* + C(r),   C(r) = 0 in the forward pass,   dC/dr^T g = -(dF/dw)^(-T) g in the backward pass,

with the exact ``dF/dw = I - gamma dt J(t_i, psi + w*)`` (a fresh Jacobian at the root, LU-factored
in the backward pass only; per sample batched; matrix-free: GMRES on ``v - gamma dt J^T v`` by
vector-Jacobian products). Since ``dr/d(psi, theta) = dF/d(psi, theta)``, the chain rule gives
``dw*/d(psi, theta) = -(dF/dw)^(-1) dF/d(psi, theta)``: the implicit function theorem, whatever the
iterations did. The forward value is exactly ``w*``. One extra evaluation of ``f`` per stage with
the graph, only when something requires a gradient.

The theorem differentiates the *exact* root; the computed ``w*`` meets ``F(w*) = 0`` only to the
Newton tolerance (``kappa`` in the scaled norm), so the gradient is exact for a solution within that
distance of the one computed, and differs from the finite-difference gradient of the computed
solution by about ``kappa * tolerance / perturbation``: use a tight ``rtol`` when gradients must
agree with finite differences (``gradcheck``). ``gradient="unrolled"`` differentiates through the
iterations instead (dense ``linsolve`` only): it converges to the same gradient as the iteration
converges, and is there to check this one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..stepping.times import time_tensor
from .implicit import ImplicitTerms, IterationMatrix, jacobian

__all__ = ["NewtonOptions", "NewtonOutcome", "simplified_newton", "IterationMatrices", "attach_root",
           "scaled_rms", "GRADIENTS"]

#: How gradients pass through the stage equations.
GRADIENTS = ("ift", "unrolled")


@dataclass(frozen=True)
class NewtonOptions:
    """Settings of the simplified Newton iteration and of the reuse of ``J`` and ``W``.

    Args:
        kappa: the iteration stops when ``eta_k ||dw^(k)|| <= kappa`` (scaled norm, tolerance 1).
        max_iters: iterations per stage before the step is rejected.
        jac_theta: keep ``J`` for the next step while the largest Newton rate of the accepted step is
            at most this (``0``: a new ``J`` every step).
        w_rtol: refactor ``W = I - gamma dt J`` when ``gamma dt`` moved by more than this fraction
            (``0``: every change of ``dt``).
        gradient: ``"ift"`` (implicit function theorem, default) or ``"unrolled"`` (through the
            iterations; for checks).
    """

    kappa: float = 1e-2
    max_iters: int = 10
    jac_theta: float = 1e-3
    w_rtol: float = 0.2
    gradient: str = "ift"

    def __post_init__(self) -> None:
        if not (0 < self.kappa < 1):
            raise ValueError(f"kappa must be in (0, 1), got {self.kappa!r}")
        if not isinstance(self.max_iters, int) or isinstance(self.max_iters, bool) or self.max_iters < 1:
            raise ValueError(f"max_newton_iters must be a positive int, got {self.max_iters!r}")
        if not (0 <= self.jac_theta < 1):
            raise ValueError(f"jac_theta must be in [0, 1), got {self.jac_theta!r}")
        if not (0 <= self.w_rtol < 1):
            raise ValueError(f"w_rtol must be in [0, 1), got {self.w_rtol!r}")
        if self.gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}, got {self.gradient!r}")


def scaled_rms(v: Tensor, inv_scale: Tensor) -> float:
    """``RMS(v / scale)`` as a Python float (one host sync)."""
    return float(torch.linalg.vector_norm(v.detach() * inv_scale)) / math.sqrt(v.numel())


@dataclass
class NewtonOutcome:
    """What one stage's iteration did: the root (or the last iterate), the iterations, the largest
    rate seen, the ``eta`` to start the next stage with, and on failure why and by how much to
    shrink the step."""

    w: Tensor
    iters: int
    theta: float
    eta: float
    ok: bool
    reason: str = ""
    dt_factor: float = 0.5


def simplified_newton(residual: Callable[[Tensor], Tensor], w0: Tensor, W: IterationMatrix,
                      inv_scale: Tensor, tol: float, max_iters: int, eta_old: float) -> NewtonOutcome:
    """Solve ``residual(w) = gamma dt f(t_i, psi + w) - w = 0`` by ``W dw = residual(w)``.

    ``tol`` is ``kappa`` (floored at the rounding level); ``eta_old`` the last stage's ``eta``. Runs
    with whatever autograd mode the caller set (no graph for the IFT gradient; with it when
    unrolled). Never raises for a failed iteration: the outcome says so.
    """
    uround = torch.finfo(w0.dtype).eps
    eta = max(eta_old, uround) ** 0.8
    w = w0
    prev = math.inf
    theta_max = 0.0
    for k in range(1, max_iters + 1):
        dw = W.solve(residual(w))
        w = w + dw
        nrm = scaled_rms(dw, inv_scale)
        if not math.isfinite(nrm):
            return NewtonOutcome(w, k, math.inf, eta, False, "Newton iterate not finite", 0.25)
        if nrm == 0.0:
            return NewtonOutcome(w, k, theta_max, eta, True)
        if k == 1:
            if eta * nrm <= tol:
                return NewtonOutcome(w, k, theta_max, eta, True)
        else:
            theta = nrm / prev
            theta_max = max(theta_max, theta)
            if theta >= 1.0:
                return NewtonOutcome(w, k, theta_max, eta, False, f"Newton diverged (rate {theta:.3g})", 0.25)
            eta = theta / (1.0 - theta)
            if eta * nrm <= tol:
                return NewtonOutcome(w, k, theta_max, eta, True)
            predicted = theta ** (max_iters - k) / (1.0 - theta) * nrm
            if predicted > tol:
                # RADAU5's step reduction for slow convergence: 0.8 q^(-1/(4 + iterations left)),
                # q the predicted final correction over the tolerance (clipped to [1e-4, 20]).
                q = min(20.0, max(1e-4, predicted / tol))
                factor = 0.8 * q ** (-1.0 / (4 + max_iters - k))
                return NewtonOutcome(w, k, theta_max, eta, False,
                                     f"Newton converging too slowly (rate {theta:.3g}, predicted "
                                     f"{predicted / tol:.3g} x tolerance after {max_iters} iterations)",
                                     factor)
        prev = nrm
    return NewtonOutcome(w, max_iters, theta_max, eta, False,
                         f"Newton did not converge in {max_iters} iterations", 0.5)


class IterationMatrices:
    """``J`` and ``W = I - gamma dt J`` of one solve, kept in ``terms.cache`` and reused by the rules
    of the module docstring. ``matrices(t, y, gamma_dt)`` returns ``(W, J, fresh)`` for an attempt
    from ``(t, y)``; ``J`` is ``None`` for the matrix-free ``linsolve="gmres"`` (then the point it
    linearises at is kept instead); ``fresh``: ``J`` was taken at this ``(t, y)`` and ``W`` factored
    with this ``gamma dt``. ``force=True`` (and any retried attempt) makes them fresh."""

    def __init__(self, terms: ImplicitTerms, opts: NewtonOptions):
        self.terms, self.opts = terms, opts
        self.c = terms.cache

    def matrices(self, t: float, y: Tensor, gamma_dt: float,
                 force: bool = False) -> tuple[IterationMatrix, Tensor | None, bool]:
        c, terms = self.c, self.terms
        # Identity of the state tensor: the loop hands the very same object to a retried attempt.
        force = force or (c.get("last_y") is y and c.get("last_t") == t)
        current = c.get("jac_y") is y and c.get("jac_t") == t
        if "jac_t" not in c or (not current and (force or c.get("refresh", True))):
            yd = y.detach()
            with torch.no_grad():
                J = None if terms.opts.linsolve == "gmres" else jacobian(terms, t, yd).detach()
            c.update(J=J, jac_t=t, jac_y=y, jac_yd=yd, W=None, refresh=False)
            current = True
        W = c.get("W")
        if W is None or abs(gamma_dt / c["W_gdt"] - 1.0) > (0.0 if force else self.opts.w_rtol):
            with torch.no_grad():
                W = IterationMatrix(terms, c["jac_t"], c["jac_yd"], gamma_dt, c["J"])
            c["W"], c["W_gdt"] = W, gamma_dt
        c["last_y"], c["last_t"] = y, t
        return W, c["J"], current and c["W_gdt"] == gamma_dt

    def converged(self, theta_max: float) -> None:
        """After a step whose stages all converged: keep ``J`` for the next step if they did so fast."""
        self.c["refresh"] = theta_max > self.opts.jac_theta

    def failed(self) -> None:
        """After a Newton failure: the next attempt starts with a current ``J``."""
        self.c["refresh"] = True


# -- the implicit-function-theorem gradient --------------------------------------------------------
class _RootCorrection(torch.autograd.Function):
    """``C(r) = 0`` forward; backward ``-(dF/dw)^(-T) g`` (``solve_t`` solves the transposed system)."""

    @staticmethod
    def forward(ctx: Any, r: Tensor, solve_t: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.solve_t = solve_t
        return torch.zeros_like(r)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        return -ctx.solve_t(g), None


def _transposed_solver(terms: ImplicitTerms, t: float, z: Tensor,
                       gamma_dt: float) -> Callable[[Tensor], Tensor]:
    """``g -> (I - gamma_dt J(t, z))^(-T) g`` with a Jacobian taken at the root, when first called."""

    def solve_t(g: Tensor) -> Tensor:
        g = g.reshape(-1)
        if terms.opts.linsolve == "gmres":
            return _solve_t_krylov(terms, t, z, gamma_dt, g)
        with torch.no_grad():
            J = jacobian(terms, t, z).detach()
            terms.counters.njac -= 1  # the backward pass's Jacobians are not the solve's work
            eye = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device)
            LU, piv, info = torch.linalg.lu_factor_ex(eye - gamma_dt * J)
            if bool((info != 0).any()):
                raise RuntimeError(f"implicit-function-theorem gradient: I - {gamma_dt:.3g} J is singular "
                                   f"at the stage root (t = {t:.6g})")
            shape = (terms.batch, terms.d, 1) if terms.opts.per_sample else (-1, 1)
            return torch.linalg.lu_solve(LU, piv, g.view(shape).to(J.dtype), adjoint=True).reshape(-1)

    return solve_t


def _solve_t_krylov(terms: ImplicitTerms, t: float, z: Tensor, gamma_dt: float, g: Tensor) -> Tensor:
    from ..linear.gmres import gmres

    tt = time_tensor(t, z.device)
    f = terms.f
    _, pullback = torch.func.vjp(lambda yy: f(tt, yy), z)

    def matvec(v: Tensor) -> Tensor:
        return v - gamma_dt * pullback(v.view(z.shape))[0].reshape(-1)

    opts = terms.opts
    with torch.no_grad():
        x, info = gmres(matvec, g.detach(), rtol=opts.krylov_rtol, restart=opts.krylov_restart,
                        maxiter=opts.krylov_maxiter)
    if not info.converged:
        raise RuntimeError(f"implicit-function-theorem gradient: GMRES on the transposed stage system "
                           f"did not reach krylov_rtol = {opts.krylov_rtol:g} "
                           f"(residual {info.residual_norm:.3g})")
    return x


def attach_root(terms: ImplicitTerms, t: float, w_star: Tensor, psi: Tensor, gamma_dt: float,
                f_graph: Tensor) -> Tensor:
    """The root ``w*`` (detached) with the gradient of the implicit function theorem attached.

    ``f_graph`` is ``f(t, psi + w*)`` evaluated with the graph (``w*`` detached, ``psi`` and the
    parameters of ``f`` on it), flattened. The returned tensor equals ``w*`` exactly.
    """
    r = w_star - gamma_dt * f_graph
    z = (psi.detach() + w_star).view(terms.shape)
    return w_star + _RootCorrection.apply(r, _transposed_solver(terms, t, z, gamma_dt))
