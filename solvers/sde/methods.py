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
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..checks import check_finite
from ..problem import SDEProblem
from ..stepping.controllers import Controller, PIController, default_tolerances
from ..stepping.protocol import Stepper, StepResult, nan_scalar
from ..stepping.times import time_tensor
from .brownian import GridIncrements, IntervalPath, default_seed
from .solution import SDESolution


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




def _brownian_shape(problem: SDEProblem, g0: Tensor) -> tuple[int, ...]:
    y0 = problem.y0
    if problem.noise == "diagonal":
        if g0.shape != y0.shape:
            raise ValueError(f"diagonal noise: g(t0, y0) must have the shape of y0 {tuple(y0.shape)}, "
                             f"got {tuple(g0.shape)}")
        return tuple(y0.shape)
    if g0.dim() < 2 or g0.shape[-2] != y0.shape[-1]:
        raise ValueError(f"{problem.noise} noise: g(t0, y0) must have shape (*batch, d={y0.shape[-1]}, m), "
                         f"got {tuple(g0.shape)}")
    m = g0.shape[-1]
    if problem.noise == "scalar" and m != 1:
        raise ValueError(f"scalar noise: g(t0, y0) must end in a dimension of size 1, got {tuple(g0.shape)}")
    if problem.brownian_size is not None and m != problem.brownian_size:
        raise ValueError(f"g(t0, y0) has {m} noise columns but brownian_size = {problem.brownian_size}")
    return (*y0.shape[:-1], m)


class SDETerms:
    """What one SDE solve's steps need: drift, diffusion, noise type, calculus and the Brownian path."""

    def __init__(self, f, g, noise: str, sde_type: str, path, levy: bool, seed: int | None,
                 f0: Tensor, g0: Tensor, noise_start: Tensor | None):
        self.f, self.g, self.noise, self.sde_type = f, g, noise, sde_type
        self.path, self.levy, self.seed = path, levy, seed
        self.f0, self.g0 = f0, g0
        #: ``W(t0) - W(t0) = 0`` when the solve saves the noise (``save_noise=True``), else None.
        self.noise_start = noise_start


class SDEAlgorithm(Stepper):
    """Base class of the SDE methods.

    ``solve(SDEProblem(...), Method(), ...)`` options:

    * ``dt``: fixed step (increments drawn up front, no Brownian tree), or
    * ``rtol``, ``atol`` (1e-3, 1e-6), ``dt0``, ``controller``, ``dtmin``, ``dtmax`` for adaptive
      methods (Brownian path from ``torchsde.BrownianInterval``, so rejected steps stay on the path).
    * ``brownian``: a path to use instead (anything callable as ``bm(ta, tb)``, and
      ``bm(ta, tb, return_U=True)`` for SRA1: a ``torchsde.BrownianInterval``, an
      ``IntervalPath``); ``seed`` seeds the path the solver makes.
    * ``saveat`` (default: every step; adaptive steps are clipped to land on these times),
      ``save_noise`` (also return ``W`` at the saved times in ``sol.ws``), ``trace``,
      ``max_steps``, ``throw``, ``progress``.
    """

    problem_types = (SDEProblem,)
    kind = "sde"
    interpolates = False
    extra_options = ("brownian", "seed", "save_noise")
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

    # -- the stepper protocol ---------------------------------------------------------------------
    def prepare(self, problem: SDEProblem, options: dict[str, Any], grid: list[float] | None) -> SDETerms:
        """The first drift and diffusion evaluations (validating shapes and finiteness), then the
        Brownian path: increments drawn up front on a fixed grid, a ``BrownianInterval`` otherwise."""
        y0 = problem.y0
        t0, t1 = problem.tspan
        tt = time_tensor(t0, y0.device)
        f0 = problem.f(tt, y0)
        if not isinstance(f0, Tensor) or f0.shape != y0.shape:
            got = tuple(f0.shape) if isinstance(f0, Tensor) else type(f0).__name__
            raise ValueError(f"f(t0, y0) must return a tensor of shape {tuple(y0.shape)}, got {got}")
        g0 = problem.g(tt, y0)
        if not isinstance(g0, Tensor):
            raise ValueError(f"g(t0, y0) must return a tensor, got {type(g0).__name__}")
        check_finite("f(t0, y0)", f0.detach())
        check_finite("g(t0, y0)", g0.detach())
        bshape = _brownian_shape(problem, g0)
        levy = self.needs_levy_area
        brownian = options.get("brownian")
        if brownian is not None and not callable(brownian):
            raise TypeError("brownian must be callable as bm(ta, tb) (e.g. a torchsde.BrownianInterval)")
        seed = None if brownian is not None else default_seed(options.get("seed"))
        if brownian is None:
            if grid is not None:
                path = GridIncrements(grid, bshape, y0.dtype, y0.device, seed=seed, levy_area=levy)
            else:
                path = IntervalPath(t0, t1, bshape, y0.dtype, y0.device, seed=seed, levy_area=levy)
        else:
            path = brownian
            if levy and isinstance(path, GridIncrements) and path.U is None:
                raise ValueError(f"{type(self).__name__} needs increments drawn with levy_area=True")
        start = torch.zeros(bshape, dtype=y0.dtype, device=y0.device) if options.get("save_noise") else None
        return SDETerms(problem.f, problem.g, problem.noise, problem.sde_type, path, levy, seed, f0, g0,
                        start)

    def first_evaluations(self, terms: SDETerms, t0: float, y0: Tensor) -> tuple[Tensor, Tensor, int, int]:
        return terms.f0, terms.g0, 1, 1

    def attempt(self, terms: SDETerms, t: float, y: Tensor, dt: float, f0: Tensor | None, g0: Tensor | None,
                rtol: float, atol: float, need_error: bool = True, need_stiffness: bool = True,
                t_new: float | None = None) -> StepResult:
        """One step on the solve's Brownian path over ``[t, t_new]`` (``t_new`` defaults to ``t + dt``)."""
        tb = t + dt if t_new is None else t_new
        if terms.levy:
            dW, U = terms.path(t, tb, return_U=True)
        else:
            dW, U = terms.path(t, tb), None
        res = self.step(terms.f, terms.g, t, y, dt, dW, U, noise=terms.noise, sde_type=terms.sde_type,
                        f0=f0, g0=g0, rtol=rtol, atol=atol)
        res.dW = dW
        return res

    def make_solution(self, **fields: Any) -> SDESolution:
        extras = fields.pop("extras")
        fields.pop("interpolant", None)
        terms = extras["terms"]
        return SDESolution(**fields, ws=extras["ws"], brownian=terms.path, seed=terms.seed)

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
             g0: Tensor | None = None, rtol: float | None = None, atol: float | None = None) -> StepResult:
        """One differentiable step with increment ``dW`` (``U`` for SRA1). ``f0``/``g0`` may be passed
        to reuse ``f(t, y)``/``g(t, y)``. ``rtol``/``atol`` (adaptive methods' error estimate) default to
        ``DEFAULT_TOLERANCES`` ``["sde"]``. The loop's ``attempt``
        calls this very method."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EulerMaruyama(SDEAlgorithm):
    """``y1 = y + f(t, y) h + g(t, y) dW`` (Ito). Strong order 0.5, 1.0 for additive noise; weak 1."""

    strong_order = 0.5

    def step(self, f, g, t, y, dt, dW, U=None, *, noise="diagonal", sde_type="ito", f0=None, g0=None,
             rtol=None, atol=None):
        return _euler_maruyama(f, g, float(t), y, float(dt), dW, noise, f0, g0)

    def attempt(self, terms, t, y, dt, f0, g0, rtol, atol, need_error=True, need_stiffness=True, t_new=None):
        # The hot loop of neural-SDE training: the same step as ``step``, without its keyword layer.
        dW = terms.path(t, t + dt if t_new is None else t_new)
        res = _euler_maruyama(terms.f, terms.g, t, y, dt, dW, terms.noise, f0, g0)
        res.dW = dW
        return res


def _euler_maruyama(f, g, t: float, y: Tensor, h: float, dW: Tensor, noise: str, f0: Tensor | None,
                    g0: Tensor | None) -> StepResult:
    nfe = nge = 0
    if f0 is None or g0 is None:
        tt = time_tensor(t, y.device)
        if f0 is None:
            f0, nfe = f(tt, y), 1
        if g0 is None:
            g0, nge = g(tt, y), 1
    y1 = torch.add(y, f0, alpha=h) + (g0 * dW if noise == "diagonal" else g_prod(g0, dW, noise))
    nan = nan_scalar(y)
    return StepResult(y1, nan, nan, nfe, nge, f0=f0, g0=g0)


class EulerHeun(SDEAlgorithm):
    """Stratonovich Euler-Heun: ``y1 = y + f h + (g(t, y) + g(t + h, y + g dW)) dW / 2``.

    Strong order 0.5 (1.0 for additive or commutative-scalar noise); Kloeden & Platen section 11.1.
    """

    sde_types = ("stratonovich",)

    def step(self, f, g, t, y, dt, dW, U=None, *, noise="diagonal", sde_type="stratonovich", f0=None,
             g0=None, rtol=None, atol=None):
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
        return StepResult(y1, nan_scalar(y), nan_scalar(y), nfe, nge, f0=f0, g0=g0)


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
             rtol=None, atol=None):
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
        return StepResult(y1, nan_scalar(y), nan_scalar(y), nfe, nge, f0=f0, g0=g0)


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
             rtol=None, atol=None):
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
        err = scaled_rms(self.delta * Ed.abs() + En.abs(), y, y1, *default_tolerances("sde", rtol, atol))
        stiff = _ratio(torch.linalg.vector_norm(k2 - f0), torch.linalg.vector_norm(H2 - y))
        stiff = stiff / self.stability_size
        return StepResult(y1, err, stiff, nfe, nge, f0=f0, g0=g0, g1=gh)


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
             rtol=None, atol=None):
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
        err = scaled_rms(self.delta * Ed.abs() + En.abs(), y, y1, *default_tolerances("sde", rtol, atol))
        stiff = _ratio(torch.linalg.vector_norm(f1 - f0), torch.linalg.vector_norm(y1 - y))
        stiff = stiff / self.stability_size
        return StepResult(y1, err, stiff, nfe, nge, f0=f0, g0=g0, f1=f1, g1=g1)


EM = EulerMaruyama
