"""Explicit Runge-Kutta methods: one differentiable step, and the algorithm behind ``solve``.

A method is a subclass naming its tableau (see ``tsit5.py``). The step keeps every tensor on the
autograd graph (the next state, the scaled error estimate and the stiffness estimate); only the
step-size arithmetic is done in float64 Python floats, outside the graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..algorithm import Algorithm
from ..problem import ODEProblem
from ..stepping.controllers import Controller, IController, PIController
from ..stepping.times import time_tensor
from .tableau import ButcherTableau


@dataclass
class StepResult:
    """One Runge-Kutta step from ``(t, y)`` with step ``dt``.

    Attributes:
        y: the propagated solution ``y_{n+1}`` (shape, dtype and device of ``y``).
        error_estimate: scaled RMS error norm (0-d tensor; ``NaN`` for methods without an
            embedded pair); the step is acceptable when it is ``<= 1``.
        stiffness_estimate: Hairer's eigenvalue estimate divided by the stability size (0-d).
        nfe: vector-field evaluations this step used.
        k: the stages, shape ``(s, y.numel())``.
    """

    y: Tensor
    error_estimate: Tensor
    stiffness_estimate: Tensor
    nfe: int
    k: Tensor


class _Coefficients:
    """A tableau's coefficients as tensors of one dtype on one device (cached per method)."""

    def __init__(self, tab: ButcherTableau, dtype: torch.dtype, device: torch.device):
        def as_t(x: Any) -> Tensor:
            return torch.as_tensor(x, dtype=dtype, device=device)

        s = tab.stages
        a = torch.as_tensor(tab.a, dtype=torch.float64)
        self.a_rows = [as_t(a[i, :i]) for i in range(s)]
        self.b = as_t(tab.b)
        self.e = as_t(tab.e) if tab.e is not None else None
        self.dense = as_t(tab.dense_poly)
        self.c = [float(ci) for ci in tab.c]


class ExplicitRungeKutta(Algorithm):
    """Base class of the explicit Runge-Kutta methods; subclasses set ``tableau``.

    ``solve(problem, Method(), ...)`` options:

    * ``rtol``, ``atol`` (1e-6, 1e-9): tolerances of the scaled error estimate.
    * ``dt``: fixed step size (every step accepted; the last one shortened to land on ``t1``).
    * ``dt0``: first step of an adaptive solve (default: Hairer's two-evaluation heuristic).
    * ``saveat``: times at which to save (a sequence or 1-D tensor inside the span; values come
      from the dense output). Default: every accepted step.
    * ``dense`` (True): keep the stages so that ``sol(t)`` works anywhere in the span.
    * ``trace`` (False): record every attempted step in ``sol.trace``; with gradients enabled the
      error and stiffness estimates stay on the autograd graph.
    * ``controller``: an :mod:`~solvers.ode.controllers` instance (default: ``IController()``;
      a ``PIController()`` without betas takes the method's recommended ones).
    * ``max_steps`` (100000), ``dtmin`` (0: the floating-point resolution of t), ``dtmax`` (inf).
    * ``throw`` (True): raise :class:`~solvers.solution.SolverError` on failure; ``False`` returns
      the partial solution with its ``retcode``.
    * ``progress`` (False): a tqdm bar over the time span.
    """

    tableau: ClassVar[ButcherTableau]
    problem_types = (ODEProblem,)
    #: Recommended PI coefficients (beta1, beta2); ``None`` means (0.7/k, 0.4/k).
    pi_coefficients: ClassVar[tuple[float, float] | None] = None

    def __init__(self) -> None:
        self._coeff_cache: dict[tuple[torch.dtype, torch.device], _Coefficients] = {}

    # -- facts about the method -------------------------------------------------------------
    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def error_order(self) -> int | None:
        """Order of the embedded solution (``None`` without an error estimator)."""
        return self.tableau.embedded_order

    @property
    def adaptive(self) -> bool:
        return self.tableau.adaptive

    @property
    def fsal(self) -> bool:
        return self.tableau.fsal

    @property
    def stages(self) -> int:
        return self.tableau.stages

    @property
    def stability_size(self) -> float:
        return self.tableau.stability_size

    def default_controller(self) -> Controller:
        """The I controller (as diffrax and torchdiffeq): on smooth non-stiff problems it reaches a
        given error with the fewest evaluations; pass ``controller=PIController()`` (the method's
        recommended betas) when steps are limited by stability."""
        return IController()

    def pi_controller(self, ctrl: PIController) -> PIController:
        """``ctrl`` with unset betas filled from the method's recommendation (0.7/k, 0.4/k)."""
        k = (self.error_order or self.order) + 1
        beta1, beta2 = self.pi_coefficients or (0.7 / k, 0.4 / k)
        return ctrl.with_defaults(beta1, beta2)

    def coefficients(self, dtype: torch.dtype, device: torch.device) -> _Coefficients:
        key = (dtype, device)
        co = self._coeff_cache.get(key)
        if co is None:
            co = self._coeff_cache[key] = _Coefficients(self.tableau, dtype, device)
        return co

    # -- one step -----------------------------------------------------------------------------
    def stages_from(self, f, t: float, y_flat: Tensor, dt: float, k1: Tensor, shape: torch.Size,
                    co: _Coefficients) -> tuple[Tensor, Tensor, list[Tensor]]:
        """All stages of one step. Returns ``(y1_flat, K, g)`` with ``K`` of shape ``(s, n)`` and
        ``g`` the stage inputs of the stiffness pair."""
        tab = self.tableau
        gi, gj = tab.stiffness_pair
        g: list[Tensor] = [y_flat, y_flat]
        device = y_flat.device
        if torch.is_grad_enabled() and (y_flat.requires_grad or k1.requires_grad):
            # Autograd: stack the stages afresh for each combination (no in-place writes); stacking
            # along dim 1 gives addmv a contiguous matrix, whose backward is cheaper than a transpose's.
            ks = [k1]
            for i in range(1, tab.stages):
                yi = torch.addmv(y_flat, torch.stack(ks, 1), co.a_rows[i], alpha=dt)
                if i == gi:
                    g[0] = yi
                elif i == gj:
                    g[1] = yi
                ks.append(f(time_tensor(t + co.c[i] * dt, device), yi.view(shape)).reshape(-1))
            K = torch.stack(ks)
        else:
            # No graph to keep: write the stages into one buffer (one copy each, no re-stacking).
            K = torch.empty((tab.stages, y_flat.numel()), dtype=y_flat.dtype, device=device)
            K[0] = k1
            for i in range(1, tab.stages):
                yi = torch.addmv(y_flat, K[:i].T, co.a_rows[i], alpha=dt)
                if i == gi:
                    g[0] = yi
                elif i == gj:
                    g[1] = yi
                K[i] = f(time_tensor(t + co.c[i] * dt, device), yi.view(shape)).reshape(-1)
        if tab.fsal:
            y1 = g[1] if gj == tab.stages - 1 else torch.addmv(y_flat, K[:-1].T, co.b[:-1], alpha=dt)
        else:
            y1 = torch.addmv(y_flat, K.T, co.b, alpha=dt)
        return y1, K, g

    def error_norm(self, y_flat: Tensor, y1: Tensor, K: Tensor, dt: float, rtol: float, atol: float,
                   co: _Coefficients) -> Tensor:
        """``RMS(h sum_i e_i k_i / (atol + rtol max(|y_n|, |y_{n+1}|)))`` as a 0-d tensor."""
        if co.e is None:
            return torch.full((), float("nan"), dtype=y1.dtype, device=y1.device)
        err = torch.mv(K.T, co.e)
        scale = torch.maximum(y_flat.abs(), y1.abs()).mul(rtol).add(atol)
        return torch.linalg.vector_norm(err / scale) * (abs(dt) / math.sqrt(err.numel()))

    def stiffness(self, K: Tensor, g: list[Tensor]) -> Tensor:
        """Hairer's ``||k_j - k_i|| / ||g_j - g_i||`` over the stability size (0-d tensor)."""
        gi, gj = self.tableau.stiffness_pair
        if gi < 0:
            return torch.full((), float("nan"), dtype=K.dtype, device=K.device)
        num = torch.linalg.vector_norm(K[gj] - K[gi])
        den = torch.linalg.vector_norm(g[1] - g[0])
        # 0/0 (a constant field, or y at a fixed point) means no stiffness information: report 0.
        return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                           torch.zeros_like(den)) / self.stability_size

    def step(self, f, t: float | Tensor, y: Tensor, dt: float | Tensor, *, f0: Tensor | None = None,
             rtol: float = 1e-6, atol: float = 1e-9) -> StepResult:
        """One differentiable step of ``dy/dt = f(t, y)`` from ``(t, y)`` with step ``dt``.

        ``f0 = f(t, y)`` may be passed to save an evaluation (FSAL). Returns a
        :class:`StepResult` with the next state, the scaled error estimate (tolerances
        ``rtol``/``atol``), the stiffness estimate and the NFE; all tensors stay on the graph.
        """
        t = float(t)
        dt = float(dt)
        if not isinstance(y, Tensor) or not y.is_floating_point():
            raise TypeError("y must be a floating-point tensor")
        co = self.coefficients(y.dtype, y.device)
        nfe = self.stages
        if f0 is None:
            f0 = f(time_tensor(t, y.device), y)
        else:
            nfe -= 1
        y_flat = y.reshape(-1)
        y1, K, g = self.stages_from(f, t, y_flat, dt, f0.reshape(-1), y.shape, co)
        err = self.error_norm(y_flat, y1, K, dt, rtol, atol, co)
        return StepResult(y=y1.view(y.shape), error_estimate=err, stiffness_estimate=self.stiffness(K, g),
                          nfe=nfe, k=K)

    # -- solving ------------------------------------------------------------------------------
    def init(self, problem: ODEProblem, **options: Any):
        from .integrator import ODEIntegrator

        return ODEIntegrator(problem, self, **options)

    def solve(self, problem: ODEProblem, **options: Any):
        return self.init(problem, **options).run()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
