"""SDE methods: one differentiable step each, and the algorithms behind ``solve``.

Every method implements ``step(f, g, t, y, dt, dW, U=None, ...)``: one step of
``dy = f(t, y) dt + g(t, y) dW`` with a given Brownian increment ``dW`` (and, for SRA1, the
space-time integral ``U = int (W_s - W_t) ds``). All tensors stay on the autograd graph, the error
estimate included, so an SDE step can be penalised exactly like an ODE step (local regularisation).

Methods (strong order for the noise they are meant for):

========================  ============  ====================  ==========  ========
method                    strong order  noise                 calculus    adaptive
========================  ============  ====================  ==========  ========
EulerMaruyama             0.5 (1.0 add) any                   Ito         no
Milstein                  1.0           diagonal              both        no
EulerHeun                 0.5 (1.0 add) any                   Stratonovich no
SRA1                      1.5           additive              both        yes
LambaEM                   0.5 (1.0 add) any                   Ito         yes
========================  ============  ====================  ==========  ========

Sources: Kloeden & Platen, *Numerical Solution of SDEs* (1992), sections 10.2 (Euler-Maruyama), 10.3
and 11.1 (Milstein, derivative-free form eq. 11.1.5); Rossler, "Runge-Kutta methods for the strong
approximation of solutions of stochastic differential equations", SIAM J. Numer. Anal. 48(3)
(2010), SRA1 tableau; Lamba, "An adaptive timestepping algorithm for stochastic differential
equations", J. Comput. Appl. Math. 161 (2003), for the embedded drift/diffusion error estimate; the
``delta``-weighted combination of the two parts is Rackauckas & Nie, "Adaptive methods for
stochastic differential equations via natural embeddings and rejection sampling with memory",
DCDS-B 22(7) (2017).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..algorithm import Algorithm
from ..problem import SDEProblem
from ..stepping.controllers import Controller, PIController
from ..stepping.times import time_tensor


def g_prod(gv: Tensor, dW: Tensor, noise: str) -> Tensor:
    """``g dW``: elementwise for diagonal noise, a matrix-vector product otherwise."""
    if noise == "diagonal":
        return gv * dW
    return torch.matmul(gv, dW.unsqueeze(-1)).squeeze(-1)


def scaled_rms(err: Tensor, y: Tensor, y1: Tensor, rtol: float, atol: float) -> Tensor:
    """``RMS(err / (atol + rtol max(|y|, |y1|)))`` as a 0-d tensor (the ODE core's norm)."""
    scale = torch.maximum(y.abs(), y1.abs()).mul(rtol).add(atol)
    return torch.linalg.vector_norm(err / scale) / math.sqrt(err.numel())


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0/0 read as 0 (no stiffness information at a fixed point)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


@dataclass
class SDEStepResult:
    """One SDE step from ``(t, y)`` with step ``dt``.

    Attributes:
        y: the next state.
        error_estimate: scaled error norm (accept when ``<= 1``); ``NaN`` for methods without one.
        stiffness_estimate: drift eigenvalue estimate ``||f(b) - f(a)|| / ||b - a||`` over the
            stability size of the drift part (``NaN`` where not computed).
        nfe, nge: drift and diffusion evaluations this step used.
        f0, g0: drift and diffusion at ``(t, y)`` (reused when a step is retried).
        f1, g1: drift / diffusion at ``(t + dt, y1)`` when the method computed them (FSAL), else None.
    """

    y: Tensor
    error_estimate: Tensor
    stiffness_estimate: Tensor
    nfe: int
    nge: int
    f0: Tensor | None = None
    g0: Tensor | None = None
    f1: Tensor | None = None
    g1: Tensor | None = None


def _nan(y: Tensor) -> Tensor:
    return torch.full((), float("nan"), dtype=y.dtype, device=y.device)


class SDEAlgorithm(Algorithm):
    """Base class of the SDE methods.

    ``solve(SDEProblem(...), Method(), ...)`` options:

    * ``dt``: fixed step (increments drawn up front, no Brownian tree), or
    * ``rtol``, ``atol`` (1e-3, 1e-6), ``dt0``, ``controller``, ``dtmin``, ``dtmax`` for adaptive
      methods (Brownian path from ``torchsde.BrownianInterval``, so rejected steps stay on the path).
    * ``brownian``: a path to use instead (anything callable as ``bm(ta, tb)``, and
      ``bm(ta, tb, return_U=True)`` for SRA1: a ``torchsde.BrownianInterval``, an
      :class:`~solvers.sde.brownian.IntervalPath`); ``seed`` seeds the path the solver makes.
    * ``saveat`` (default: every step; adaptive steps are clipped to land on these times),
      ``save_noise`` (also return ``W`` at the saved times in ``sol.ws``), ``trace``,
      ``max_steps``, ``throw``, ``progress``.
    """

    problem_types = (SDEProblem,)
    strong_order: ClassVar[float] = 0.5
    weak_order: ClassVar[float] = 1.0
    noise_types: ClassVar[tuple[str, ...]] = ("diagonal", "additive", "scalar", "general")
    sde_types: ClassVar[tuple[str, ...]] = ("ito",)
    adaptive: ClassVar[bool] = False
    needs_levy_area: ClassVar[bool] = False
    #: Length of the real stability interval of the drift part (explicit Euler: 2).
    stability_size: ClassVar[float] = 2.0
    #: ``k`` handed to the controller (the error estimate behaves like ``dt^k``, damped).
    error_exponent: ClassVar[float] = 2.0

    def default_controller(self) -> Controller:
        k = self.error_exponent
        return PIController(beta1=0.7 / k, beta2=0.4 / k)

    def check_problem(self, problem: SDEProblem) -> None:
        name = type(self).__name__
        if problem.noise not in self.noise_types:
            raise ValueError(f"{name} supports noise {', '.join(self.noise_types)}; got {problem.noise!r}")
        if problem.sde_type not in self.sde_types and problem.noise != "additive":
            kinds = " / ".join(k.capitalize() for k in self.sde_types)
            raise ValueError(f"{name} solves {kinds} SDEs; the problem is "
                             f"{problem.sde_type!r} (for additive noise the two coincide)")

    def step(self, f, g, t: float | Tensor, y: Tensor, dt: float | Tensor, dW: Tensor,
             U: Tensor | None = None, *, noise: str = "diagonal", sde_type: str = "ito",
             f0: Tensor | None = None,
             g0: Tensor | None = None, rtol: float = 1e-3, atol: float = 1e-6) -> SDEStepResult:
        """One differentiable step with increment ``dW`` (``U`` for SRA1). ``f0``/``g0`` may be passed
        to reuse ``f(t, y)``/``g(t, y)``."""
        raise NotImplementedError

    def solve(self, problem: SDEProblem, **options: Any):
        from .integrator import SDEIntegrator

        return SDEIntegrator(problem, self, **options).run()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EulerMaruyama(SDEAlgorithm):
    """``y1 = y + f(t, y) h + g(t, y) dW`` (Ito). Strong order 0.5, 1.0 for additive noise; weak 1."""

    strong_order = 0.5

    def step(self, f, g, t, y, dt, dW, U=None, *, noise="diagonal", sde_type="ito", f0=None, g0=None,
             rtol=1e-3, atol=1e-6):
        t, h = float(t), float(dt)
        tt = time_tensor(t, y.device)
        nfe = nge = 0
        if f0 is None:
            f0, nfe = f(tt, y), 1
        if g0 is None:
            g0, nge = g(tt, y), 1
        y1 = torch.add(y, f0, alpha=h) + g_prod(g0, dW, noise)
        return SDEStepResult(y1, _nan(y), _nan(y), nfe, nge, f0, g0)


class EulerHeun(SDEAlgorithm):
    """Stratonovich Euler-Heun: ``y1 = y + f h + (g(t, y) + g(t + h, y + g dW)) dW / 2``.

    Strong order 0.5 (1.0 for additive or commutative-scalar noise); Kloeden & Platen section 11.1.
    """

    sde_types = ("stratonovich",)

    def step(self, f, g, t, y, dt, dW, U=None, *, noise="diagonal", sde_type="stratonovich", f0=None,
             g0=None, rtol=1e-3, atol=1e-6):
        t, h = float(t), float(dt)
        tt = time_tensor(t, y.device)
        nfe, nge = 0, 1
        if f0 is None:
            f0, nfe = f(tt, y), 1
        if g0 is None:
            g0, nge = g(tt, y), 2
        gdw0 = g_prod(g0, dW, noise)
        g1 = g(time_tensor(t + h, y.device), y + gdw0)
        y1 = torch.add(y, f0, alpha=h) + 0.5 * (gdw0 + g_prod(g1, dW, noise))
        return SDEStepResult(y1, _nan(y), _nan(y), nfe, nge, f0, g0)


class Milstein(SDEAlgorithm):
    """Milstein for diagonal noise, strong order 1.0.

    Ito: ``y1 = y + f h + g dW + (1/2) g g' (dW^2 - h)``; Stratonovich: the same with ``dW^2``
    (Kloeden & Platen eq. 10.3.3). ``g g'`` (``g_i dg_i/dy_i``) is computed derivative-free,
    ``(g(t, y + f h + g sqrt(h)) - g(t, y)) / sqrt(h)`` (K&P eq. 11.1.5), or exactly by a
    Jacobian-vector product with ``derivative="jvp"`` (``torch.func.jvp``).
    """

    strong_order = 1.0
    noise_types = ("diagonal",)
    sde_types = ("ito", "stratonovich")

    def __init__(self, derivative: str = "finite-difference"):
        if derivative not in ("finite-difference", "jvp"):
            raise ValueError(f"derivative must be 'finite-difference' or 'jvp', got {derivative!r}")
        self.derivative = derivative

    def __repr__(self) -> str:
        return f"Milstein(derivative={self.derivative!r})"

    def step(self, f, g, t, y, dt, dW, U=None, *, noise="diagonal", sde_type="ito", f0=None, g0=None,
             rtol=1e-3, atol=1e-6):
        if noise != "diagonal":
            raise ValueError("Milstein is implemented for diagonal noise")
        t, h = float(t), float(dt)
        tt = time_tensor(t, y.device)
        nfe, nge = 0, 1
        if f0 is None:
            f0, nfe = f(tt, y), 1
        if g0 is None:
            g0, nge = g(tt, y), 2
        if self.derivative == "jvp":
            gg = torch.func.jvp(lambda z: g(tt, z), (y,), (g0,))[1]
        elif sde_type == "ito":
            sq = math.sqrt(h)
            gg = (g(tt, y + f0 * h + g0 * sq) - g0) / sq
        else:
            # Stratonovich multiplies g g' by dW^2, whose mean is h: a one-sided difference's O(sqrt h)
            # error would then accumulate to O(sqrt h) globally. The central difference is O(h).
            sq = math.sqrt(h)
            gg = (g(tt, y + g0 * sq) - g(tt, y - g0 * sq)) / (2 * sq)
            nge += 1
        corr = dW * dW - h if sde_type == "ito" else dW * dW
        y1 = torch.add(y, f0, alpha=h) + g0 * dW + 0.5 * gg * corr
        return SDEStepResult(y1, _nan(y), _nan(y), nfe, nge, f0, g0)


class SRA1(SDEAlgorithm):
    """Rossler's SRA1 for additive noise: strong order 1.5, weak order 2, embedded error estimate.

    With ``chi = U / h = I_(1,0) / h``::

        k1 = f(t, y),  H2 = y + (3/4) h k1 + (3/2) g(t + h) chi,  k2 = f(t + 3h/4, H2)
        y1 = y + h (k1 / 3 + 2 k2 / 3) + g(t + h) (dW - chi) + g(t) chi

    (Rossler 2010, Table 5.2: c0 = (0, 3/4), c1 = (1, 0), A0_21 = 3/4, B0_21 = 3/2,
    alpha = (1/3, 2/3), beta1 = (1, 0), beta2 = (-1, 1)). Error estimate: the drift part
    ``E_d = (2/3) h (k2 - k1)`` (SRA1 against Euler's quadrature) and the noise part
    ``E_n = (g(t) - g(t + h)) chi``, combined as ``RMS((delta |E_d| + |E_n|) / scale)`` with
    ``delta = 1/6``. For additive noise Ito and Stratonovich coincide.
    """

    strong_order = 1.5
    weak_order = 2.0
    noise_types = ("additive",)
    sde_types = ("ito", "stratonovich")
    adaptive = True
    needs_levy_area = True
    error_exponent = 2.0

    def __init__(self, delta: float = 1 / 6):
        self.delta = float(delta)

    def step(self, f, g, t, y, dt, dW, U=None, *, noise="additive", sde_type="ito", f0=None, g0=None,
             rtol=1e-3, atol=1e-6):
        if U is None:
            raise ValueError("SRA1 needs U = int (W_s - W_t) ds (a path with levy_area=True)")
        t, h = float(t), float(dt)
        dev = y.device
        tt = time_tensor(t, dev)
        nfe, nge = 1, 1
        if f0 is None:
            f0, nfe = f(tt, y), 2
        if g0 is None:
            g0, nge = g(tt, y), 2
        gh = g(time_tensor(t + h, dev), y)
        chi = U / h
        H2 = torch.add(y, f0, alpha=0.75 * h) + 1.5 * g_prod(gh, chi, noise)
        k2 = f(time_tensor(t + 0.75 * h, dev), H2)
        En = g_prod(g0 - gh, chi, noise)
        y1 = y + h * (f0 / 3 + 2 * k2 / 3) + g_prod(gh, dW, noise) + En
        Ed = (2 * h / 3) * (k2 - f0)
        err = scaled_rms(self.delta * Ed.abs() + En.abs(), y, y1, rtol, atol)
        stiff = _ratio(torch.linalg.vector_norm(k2 - f0), torch.linalg.vector_norm(H2 - y))
        stiff = stiff / self.stability_size
        return SDEStepResult(y1, err, stiff, nfe, nge, f0, g0, None, gh)


class LambaEM(SDEAlgorithm):
    """Euler-Maruyama with Lamba's embedded error estimate (Ito, any noise), adaptive.

    ``y1 = y + f0 h + g0 dW``; with ``f1 = f(t + h, y1)``, ``g1 = g(t + h, y1)`` the drift error
    ``E_d = h (f1 - f0) / 2`` (Euler against the trapezoidal rule) and the diffusion error
    ``E_n = (g1 - g0) dW / 2`` give ``EEst = RMS((delta |E_d| + |E_n|) / scale)``, ``delta = 1/6``.
    ``f1``, ``g1`` are reused by the next step (FSAL), so an accepted step costs one drift and one
    diffusion evaluation, as plain Euler-Maruyama does. The estimate is differentiable.
    """

    adaptive = True
    error_exponent = 2.0

    def __init__(self, delta: float = 1 / 6):
        self.delta = float(delta)

    def step(self, f, g, t, y, dt, dW, U=None, *, noise="diagonal", sde_type="ito", f0=None, g0=None,
             rtol=1e-3, atol=1e-6):
        t, h = float(t), float(dt)
        dev = y.device
        tt = time_tensor(t, dev)
        nfe, nge = 1, 1
        if f0 is None:
            f0, nfe = f(tt, y), 2
        if g0 is None:
            g0, nge = g(tt, y), 2
        y1 = torch.add(y, f0, alpha=h) + g_prod(g0, dW, noise)
        t1 = time_tensor(t + h, dev)
        f1, g1 = f(t1, y1), g(t1, y1)
        Ed = (0.5 * h) * (f1 - f0)
        En = 0.5 * g_prod(g1 - g0, dW, noise)
        err = scaled_rms(self.delta * Ed.abs() + En.abs(), y, y1, rtol, atol)
        stiff = _ratio(torch.linalg.vector_norm(f1 - f0), torch.linalg.vector_norm(y1 - y))
        stiff = stiff / self.stability_size
        return SDEStepResult(y1, err, stiff, nfe, nge, f0, g0, f1, g1)


EM = EulerMaruyama
