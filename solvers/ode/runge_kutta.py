"""Explicit Runge-Kutta methods: one differentiable step, and the algorithm behind ``solve``.

A method is a subclass naming its tableau (see ``tsit5.py``). The step keeps every tensor on the
autograd graph (the next state, the scaled error estimate and the stiffness estimate); only the
step-size arithmetic is done in float64 Python floats, outside the graph.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..checks import check_field_value
from ..problem import ODEProblem
from ..solution import Solution
from ..stepping.controllers import Controller, IController, default_tolerances
from ..stepping.device_loop import solve_sync_free, strip_device_options, wants_device_loop
from ..stepping.protocol import Stepper, StepResult
from ..stepping.times import time_tensor
from .dense import DenseOutput
from .tableau import ButcherTableau


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


class ODETerms:
    """What one ODE solve's steps need: the vector field and the tableau's coefficients as tensors."""

    __slots__ = ("f", "co")

    def __init__(self, f, co: _Coefficients):
        self.f = f
        self.co = co


class ExplicitRungeKutta(Stepper):
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
    * ``controller``: an ``controllers`` instance (default: ``IController()``;
      a ``PIController()`` without betas takes the method's recommended ones).
    * ``max_steps`` (100000), ``dtmin`` (0: the floating-point resolution of t), ``dtmax`` (inf).
    * ``throw`` (True): raise ``SolverError`` on failure; ``False`` returns
      the partial solution with its ``retcode``.
    * ``progress`` (False): a tqdm bar over the time span, drawn only when stderr is a terminal.
    * ``events``: an ``Event`` or a sequence of them, located on the dense
      output; a terminal one ends the solve (``ReturnCode.EVENT``), all hits are in ``sol.events``.

    On the sync-free loop (``solvers.stepping.device_loop``, ``docs/speed.md``), without events:

    * ``sync_free`` (False): every step decision a tensor operation on the state's device.
    * ``compile`` (False): ``True``, ``"step"`` or ``"solve"``: the attempt, or the whole loop (no
      gradients), as one ``torch.compile``d graph, reused by later solves of the same shapes.
    * ``batch_mode`` (``"shared"``): ``"per_sample"`` gives each row of a batched state its own step
      size, error norm and accept/reject (``saveat`` required).
    * ``sync_every`` (1 on the CPU, 16 on accelerators): attempts between termination checks.
    """

    tableau: ClassVar[ButcherTableau]
    problem_types = (ODEProblem,)
    kind = "ode"
    interpolates = True
    extra_options = ("dense",)
    stiffness_hint = True

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

    @property
    def error_exponent(self) -> int:
        return (self.error_order or self.order) + 1

    @property
    def initial_step_order(self) -> int:
        return self.error_order or self.order

    def default_controller(self) -> Controller:
        """The I controller (as diffrax and torchdiffeq): on smooth non-stiff problems it reaches a
        given error with the fewest evaluations; pass ``controller=PIController()`` (the method's
        recommended betas) when steps are limited by stability."""
        return IController()

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
            # Autograd: stack the stages afresh for each combination (no in-place writes). The matrix
            # is the same transposed layout as the graph-free branch's ``K[:i].T``, so BLAS sums in the
            # same order and a solve with and without a graph takes bit-identical steps (the adjoints'
            # graph-free forward replays Backprop's steps exactly; no measurable cost in backward).
            ks = [k1]
            for i in range(1, tab.stages):
                yi = torch.addmv(y_flat, torch.stack(ks).T, co.a_rows[i], alpha=dt)
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

    # -- the stepper protocol (one code path for the loop and for ``step``) ----------------------
    def attempt(self, terms: ODETerms, t: float, y: Tensor, dt: float, f0: Tensor | None, g0: Tensor | None,
                rtol: float, atol: float, need_error: bool = True, need_stiffness: bool = True,
                t_new: float | None = None) -> StepResult:
        """One step from ``(t, y)``; ``f0`` is ``f(t, y)`` flattened (``None``: evaluate it)."""
        nfe = self.stages - 1
        if f0 is None:
            f0 = terms.f(time_tensor(t, y.device), y).reshape(-1)
            nfe += 1
        y_flat = y.reshape(-1)
        co = terms.co
        y1, K, g = self.stages_from(terms.f, t, y_flat, dt, f0, y.shape, co)
        err = self.error_norm(y_flat, y1, K, dt, rtol, atol, co) if need_error else None
        stiff = self.stiffness(K, g) if need_stiffness else None
        return StepResult(y1.view(y.shape), err, stiff, nfe, k=K, f0=f0, f1=K[-1] if self.fsal else None)

    def prepare(self, problem: ODEProblem, options: dict[str, Any], grid: list[float] | None) -> ODETerms:
        y0 = problem.y0
        return ODETerms(problem.f, self.coefficients(y0.dtype, y0.device))

    def first_evaluations(self, terms: ODETerms, t0: float, y0: Tensor) -> tuple[Tensor, None, int, int]:
        f0 = terms.f(time_tensor(t0, y0.device), y0)
        check_field_value("f(t0, y0)", f0, y0)
        return f0.reshape(-1), None, 1, 0

    def dense_piece(self, terms: ODETerms, t_new: float, res: StepResult,
                    need: bool) -> tuple[Tensor | None, int]:
        """The stages dense output needs; a non-FSAL method evaluates ``f(t_new, y1)`` for its Hermite
        interpolant (then reused as the next step's first stage)."""
        if self.fsal:
            return res.k, 0
        if not need:
            return None, 0
        f1 = terms.f(time_tensor(t_new, res.y.device), res.y).reshape(-1)
        res.f1 = f1
        return torch.cat([res.k, f1[None]]), 1

    def interpolate(self, terms: ODETerms, y_flat: Tensor, piece: Tensor, dt: float,
                    thetas: list[float]) -> Tensor:
        return DenseOutput.evaluate_step(terms.co.dense, y_flat, piece, dt, thetas)

    def dense_output(self, terms: ODETerms, shape: torch.Size, direction: float) -> DenseOutput:
        return DenseOutput(terms.co.dense, shape, direction)

    def make_solution(self, **fields: Any) -> Solution:
        extras = fields.pop("extras")
        return Solution(**fields, events=extras["events"])

    # -- solving: the default loop, or the sync-free / compiled one ---------------------------------
    def solve(self, problem: Any, **options: Any):
        """``sync_free=True``, ``compile=True`` or ``batch_mode="per_sample"`` run the sync-free loop
        (``solvers.stepping.device_loop``); otherwise the default loop."""
        if wants_device_loop(options):
            return solve_sync_free(problem, self, **options)
        return super().solve(problem, **strip_device_options(options))

    def init(self, problem: Any, **options: Any):
        if wants_device_loop(options):
            raise ValueError("the sync-free loop (sync_free, compile, batch_mode='per_sample') runs a solve "
                             "to its end on the device; step by hand with the default loop")
        return super().init(problem, **strip_device_options(options))

    # -- one step by hand ---------------------------------------------------------------------------
    def step(self, f, t: float | Tensor, y: Tensor, dt: float | Tensor, *, f0: Tensor | None = None,
             rtol: float | None = None, atol: float | None = None) -> StepResult:
        """One differentiable step of ``dy/dt = f(t, y)`` from ``(t, y)`` with step ``dt``.

        ``f0 = f(t, y)`` may be passed to save an evaluation (FSAL). Returns a
        ``StepResult`` with the next state, the scaled error
        estimate (tolerances ``rtol``/``atol``, default ``DEFAULT_TOLERANCES`` ``["ode"]``), the
        stiffness estimate, the NFE and the stages; all tensors stay on the graph. This is the very
        step ``solve`` takes (``attempt``).
        """
        if not isinstance(y, Tensor) or not y.is_floating_point():
            raise TypeError("y must be a floating-point tensor")
        terms = ODETerms(f, self.coefficients(y.dtype, y.device))
        return self.attempt(terms, float(t), y, float(dt), None if f0 is None else f0.reshape(-1), None,
                            *default_tolerances("ode", rtol, atol))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
