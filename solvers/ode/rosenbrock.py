"""Linearly implicit Rosenbrock (Rosenbrock-Wanner) methods for stiff ODEs: Rosenbrock23, Rodas4, Rodas5P.

A Rosenbrock method replaces the Newton iteration of an implicit Runge-Kutta method by one linear
solve per stage with the same matrix ``W = I - gamma h J``, ``J = df/dy(t0, y0)``: one Jacobian and
one LU per step attempt, ``s`` triangular solves, no iteration to converge (Hairer & Wanner II,
IV.7). In the transformed variables ``u_i = sum_{j<=i} gamma_ij k_j`` (HW II (7.25); Hairer's RODAS
code, OrdinaryDiffEq.jl's ``RosenbrockCache``) each stage is

    W u_i = gamma h [ f(t0 + c_i h, y0 + sum_{j<i} a_ij u_j) + sum_{j<i} (C_ij / h) u_j + d_i h f_t ],
    y1 = y0 + sum_j m_j u_j,        err = sum_j e_j u_j,

with ``f_t = df/dt(t0, y0)`` for non-autonomous ``f`` (one evaluation and two reverse passes; skipped when
``f`` does not depend on ``t``, see below) and the coefficients of a ``RosenbrockTableau``
(``solvers.ode.rosenbrock_tableaux``, which documents and checks them).

=============  =====  ======  ==========  =============  ===================================================
method         order  stages  error est.  dense output   notes
=============  =====  ======  ==========  =============  ===================================================
Rosenbrock23   2      3       order 3     order 2        Shampine & Reichelt 1997 (``ode23s``); W-method:
                                                         order 2 with any Jacobian approximation; L-stable;
                                                         FSAL (the third stage is ``f(t1, y1)``)
Rodas4         4      6       order 3     order 3        Hairer & Wanner II VI.4 (``rodas.f``); stiffly
                                                         accurate, L-stable
Rodas5P        5      8       order 4     order 4        Steinebach, BIT 63:27 (2023); stiffly accurate,
                                                         L-stable; OrdinaryDiffEq.jl's default stiff method
=============  =====  ======  ==========  =============  ===================================================

The step
--------
* **Error estimate**: ``RMS(err / (atol + rtol max(|y0|, |y1|)))``, as the explicit methods. The
  controller exponent is ``min(order, embedded order) + 1`` (3 for Rosenbrock23, whose estimate
  is the difference to its order-3 companion; 4 for Rodas4; 5 for Rodas5P).
* **Stiffness estimate**: ``||J||_inf`` (max over samples with ``per_sample``); matrix-free:
  ``||J dy|| / ||dy||`` along the step ``dy = y1 - y0`` (one extra Jacobian-vector product, only
  when a trace or a switch asks for it). Units 1/time, ``stability_size = 1``.
* **Jacobian reuse**: ``J`` and ``f_t`` are cached in ``terms.cache`` by ``(t, y)`` (the very
  tensor and its version counter), so an attempt rejected and retried at a smaller step from the
  same point reuses them: ``njac`` counts distinct step starts, ``nfact`` and ``nsolve`` attempts
  (``nsolve = stages x attempts``; Rosenbrock23 takes 2 stages on fixed steps without a trace,
  its third one only feeds the error estimate).
* **Time dependence**: once per solve (at the first attempt) ``f`` is evaluated with ``t`` requiring
  a gradient; if no gradient reaches ``t``, ``f`` does not depend on ``t`` (structurally) and
  ``f_t`` is never computed. That probe is counted in ``ntgrad`` (so ``ntgrad`` is 1 for an
  autonomous problem, ``1 + njac`` otherwise). A field whose dependence on ``t`` switches on later
  in the solve through Python control flow on ``float(t)`` would be missed; write it with tensor
  operations (``torch.where``) instead.
* **Dense output**: the tableau's continuous extension, stored per accepted step as the piece
  ``dense_weights @ U / h`` (2 rows for Rosenbrock23, 3 for Rodas4, 4 for Rodas5P).
* **Gradients**: every tensor stays on the autograd graph (``J`` included, through second
  derivatives of ``f``), so gradients of a solve are those of the discrete method, exactly.
* **Linear algebra**: ``solvers.ode.implicit.IterationMatrix``: dense LU (batched per sample with
  ``per_sample=True``) or matrix-free GMRES (``linsolve="gmres"``). A singular ``W`` ends the solve
  with ``ReturnCode.SINGULAR``.

Time is a float64 Python float; the state keeps its dtype (float32 or float64) and device.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..stepping.controllers import Controller, IController
from ..stepping.protocol import StepResult
from ..stepping.times import time_tensor
from .implicit import (
    ImplicitStepper,
    ImplicitTerms,
    IterationMatrix,
    jacobian,
    jacobian_norm,
    jvp,
    time_derivative,
)
from .rosenbrock_tableaux import RODAS4, RODAS5P, ROSENBROCK23, RosenbrockTableau

__all__ = ["Rosenbrock", "Rosenbrock23", "Rodas4", "Rodas5P"]


class _RosenbrockCoefficients:
    """A tableau's coefficients as tensors of one dtype on one device (cached per method)."""

    def __init__(self, tab: RosenbrockTableau, dtype: torch.dtype, device: torch.device):
        def as_t(x: Any) -> Tensor:
            return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype, device=device)

        s = tab.stages
        A = np.asarray(tab.A, dtype=np.float64)
        C = np.asarray(tab.C, dtype=np.float64)
        self.stages = s
        self.gamma = float(tab.gamma)
        self.c = [float(x) for x in tab.c]
        self.d = [float(x) for x in tab.d]
        self.a_rows = [as_t(A[i, :i]) for i in range(s)]
        self.c_rows = [as_t(C[i, :i]) for i in range(s)]
        self.m = as_t(tab.b)
        self.e = as_t(tab.btilde)
        self.dense_weights = as_t(tab.dense_weights)
        self.fsal = tab.fsal
        # Stages the solution and the dense output need; the rest feed only the error estimate.
        self.solution_stages = tab.last_solution_stage + 1


def _version(y: Tensor) -> int:
    """``y``'s in-place version counter (inference tensors have none: -1)."""
    return -1 if y.is_inference() else y._version


def _depends_on_time(f: Any, t: float, y: Tensor) -> bool:
    """Whether ``f(t, y)`` depends on ``t`` at all: one evaluation with ``t`` requiring a gradient and
    one reverse pass (no path from ``t`` to the output: independent). Reverse mode rather than a
    forward-mode dual: forward duals do not propagate inside a custom ``autograd.Function``'s
    forward (where ``CheckpointAdjoint`` runs the solve), which would wrongly report every field as
    autonomous. Errors, and inference mode (no autograd at all), count as dependent, so the time
    derivative is then attempted as usual."""
    if torch.is_inference_mode_enabled():
        return True
    try:
        with torch.enable_grad():
            tt = time_tensor(t, y.device).requires_grad_(True)
            out = f(tt, y.detach())
            if not out.requires_grad:
                return False
            (g,) = torch.autograd.grad(out, tt, torch.ones_like(out), allow_unused=True)
        return g is not None
    except Exception:
        return True


class Rosenbrock(ImplicitStepper):
    """Base class of the Rosenbrock methods; a method names its ``tableau`` (see ``Rodas5P``).

    ``Method(jac=None, per_sample=False, linsolve="dense", preconditioner=None, krylov_rtol=1e-6,
    krylov_restart=30, krylov_maxiter=300)`` (``solvers.ode.implicit.ImplicitOptions``);
    ``solve(problem, Method(), ...)`` takes the loop's options (``rtol``, ``atol``, ``dt`` for fixed
    steps, ``dt0``, ``saveat``, ``dense``, ``trace``, ``controller`` (default ``IController()``),
    ``max_steps``, ``dtmin``, ``dtmax``, ``throw``, ``progress``, ``events``). ``sol.stats`` adds
    ``njac``, ``nfact``, ``nsolve``, ``nkrylov`` and ``ntgrad`` to ``nfe``.
    """

    tableau: ClassVar[RosenbrockTableau]
    order: ClassVar[int]
    embedded_order: ClassVar[int]
    dense_order: ClassVar[int]
    stages: ClassVar[int]
    dense_poly: ClassVar[np.ndarray]

    def default_controller(self) -> Controller:
        """The I controller: measured on VdP (mu = 1e3), Robertson, HIRES and OREGO at rtol 1e-4 ... 1e-8
        it needs 5-35% fewer evaluations than the PI controller with Rosenbrock steps (which are
        never limited by stability, the case PI control damps); ``benchmarks/stiff.py``."""
        return IController()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        tab = cls.__dict__.get("tableau")
        if tab is not None:
            # Plain class attributes (not properties): readable from the class and the instances.
            cls.order = tab.order
            cls.embedded_order = tab.embedded_order
            cls.dense_order = tab.dense_order
            cls.stages = tab.stages
            cls.dense_poly = np.asarray(tab.dense_poly, dtype=np.float64)

    # -- facts --------------------------------------------------------------------------------------
    @property
    def error_exponent(self) -> float:
        """The error estimate is ``O(h^(p+1))`` with ``p`` the lower of the two orders (Rosenbrock23
        propagates the order-2 solution and estimates with its order-3 companion)."""
        return min(self.order, self.embedded_order) + 1

    @property
    def initial_step_order(self) -> int:
        return min(self.order, self.embedded_order)

    def coefficients(self, dtype: torch.dtype, device: torch.device) -> _RosenbrockCoefficients:
        return _RosenbrockCoefficients(self.tableau, dtype, device)

    # -- the linearisation at (t, y), shared by the attempts from one point ------------------------------
    def linearisation(self, terms: ImplicitTerms, t: float, y: Tensor,
                      f0: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """``(J, f_t)`` at ``(t, y)``: ``J`` dense (``None`` when matrix-free), ``f_t`` flattened
        (``None`` for an autonomous ``f``). Cached for the attempts that retry from the same point.
        ``f0 = f(t, y)`` tells whether ``f`` depends on anything that requires gradients (``y`` or a
        parameter), i.e. whether ``f_t`` must stay on the graph."""
        cache = terms.cache
        hit = cache.get("rosenbrock_linearisation")
        if hit is not None and hit[0] == t and hit[1] is y and hit[2] == _version(y):
            return hit[3], hit[4]
        if "autonomous" not in cache:
            terms.counters.ntgrad += 1  # the probe is one evaluation and one reverse pass
            cache["autonomous"] = not _depends_on_time(terms.f, t, y)
        J = None if terms.opts.linsolve == "gmres" else jacobian(terms, t, y)
        dT = None
        if not cache["autonomous"]:
            graph = torch.is_grad_enabled() and (y.requires_grad or f0 is None or f0.requires_grad)
            dT = time_derivative(terms, t, y, create_graph=graph)
        # The tensor itself is kept (not its id, which a freed tensor's successor may reuse).
        cache["rosenbrock_linearisation"] = (t, y, _version(y), J, dT)
        return J, dT

    # -- one step -----------------------------------------------------------------------------------------
    def attempt(self, terms: ImplicitTerms, t: float, y: Tensor, dt: float, f0: Tensor | None,
                g0: Tensor | None, rtol: float, atol: float, need_error: bool = True,
                need_stiffness: bool = True, t_new: float | None = None) -> StepResult:
        """One step from ``(t, y)`` to ``t_new`` (``t + dt``); ``f0 = f(t, y)`` flattened or ``None``."""
        co: _RosenbrockCoefficients = terms.co
        f = terms.f
        if t_new is None:
            t_new = t + dt
        shape, device = y.shape, y.device
        y_flat = y.reshape(-1)
        nfe = 0
        if f0 is None:
            f0 = f(time_tensor(t, device), y).reshape(-1)
            nfe += 1
        J, dT = self.linearisation(terms, t, y, f0)
        gdt = co.gamma * dt
        W = IterationMatrix(terms, t, y, gdt, J)  # raises StepFailure(SINGULAR)
        s = co.stages if need_error else co.solution_stages
        inv_dt = 1.0 / dt
        track = torch.is_grad_enabled() and (
            y.requires_grad or f0.requires_grad or (J is not None and J.requires_grad)
            or (dT is not None and dT.requires_grad))
        # With a graph to keep the stages are a list stacked afresh (no in-place writes into a tensor
        # autograd has saved); without one they are rows of one buffer.
        us: list[Tensor] = []
        U = None if track else torch.empty((s, y_flat.numel()), dtype=y_flat.dtype, device=device)
        fi, yi = f0, y_flat
        for i in range(s):
            if i == 0:
                rhs = f0
            else:
                prev = torch.stack(us) if track else U[:i]
                yi = torch.addmv(y_flat, prev.T, co.a_rows[i])
                # c_i = 1 stages are evaluated at the loop's exact end time (FSAL: f(t_new, y1)).
                ti = t_new if co.c[i] == 1.0 else t + co.c[i] * dt
                fi = f(time_tensor(ti, device), yi.view(shape)).reshape(-1)
                nfe += 1
                rhs = torch.addmv(fi, prev.T, co.c_rows[i], alpha=inv_dt)
            if dT is not None and co.d[i] != 0.0:
                rhs = rhs + (co.d[i] * dt) * dT
            ui = W.solve(rhs) * gdt
            if track:
                us.append(ui)
            else:
                U[i] = ui
        U = torch.stack(us) if track else U
        f1 = None
        if co.fsal and s == co.stages:
            # The last stage's argument is y1 itself (same coefficients): f there is f(t_new, y1).
            y1, f1 = yi, fi
        else:
            y1 = torch.addmv(y_flat, U.T, co.m[:s])
        err = None
        if need_error:
            e = torch.mv(U.T, co.e)
            scale = torch.maximum(y_flat.abs(), y1.abs()).mul(rtol).add(atol)
            err = torch.linalg.vector_norm(e / scale) / math.sqrt(e.numel())
        stiff = self._stiffness(terms, t, y, y1, J) if need_stiffness else None
        piece = torch.mm(co.dense_weights[:, :s], U) * inv_dt
        return StepResult(y1.view(shape), err, stiff, nfe, k=piece, f0=f0, f1=f1)

    def _stiffness(self, terms: ImplicitTerms, t: float, y: Tensor, y1: Tensor, J: Tensor | None) -> Tensor:
        if J is not None:
            return jacobian_norm(terms, J)
        # Matrix-free: the Rayleigh-like quotient ||J dy|| / ||dy|| along the step.
        with torch.no_grad():
            dy = (y1 - y.reshape(-1)).detach()
            nd = torch.linalg.vector_norm(dy)
            moved = nd > 0  # dy = 0 (a fixed point) carries no information: report 0, without a sync
            Jdy = jvp(terms, t, y.detach(), dy)
            q = torch.linalg.vector_norm(Jdy) / torch.where(moved, nd, torch.ones_like(nd))
            return torch.where(moved, q, torch.zeros_like(q))


class Rosenbrock23(Rosenbrock):
    """Shampine & Reichelt's ``ode23s`` pair: an L-stable order-2 W-method (order 2 with any Jacobian
    approximation) with an order-3 error estimate and its order-2 continuous extension; 3 stages,
    the third is ``f(t1, y1)`` (FSAL; on fixed steps without a trace it is skipped, as it feeds only
    the error estimate). Cheap and robust at loose tolerances (rtol >~ 1e-3). Its error estimate is
    pessimistic on very stiff non-autonomous problems (on ``y' = A (y - p(t)) + p'(t)`` with
    eigenvalues -1, -1e6 it takes 10x the steps of the non-stiff case for a 50x smaller actual
    error); prefer Rodas5P at tighter tolerances."""

    tableau = ROSENBROCK23


class Rodas4(Rosenbrock):
    """Hairer & Wanner's RODAS: order 4(3), 6 stages, stiffly accurate, L-stable, dense output of
    order 3. It does not meet the Prothero-Robinson conditions: on a stiff forced linear problem
    (eigenvalue -1e6, h |lambda| > 1e4) its fixed-step order drops to about 1.2 (Rodas5P keeps 5)."""

    tableau = RODAS4


class Rodas5P(Rosenbrock):
    """Steinebach's Rodas5P: order 5(4), 8 stages, stiffly accurate, L-stable, dense output of order
    4. The default stiff method (medium to tight tolerances)."""

    tableau = RODAS5P
