"""Integral reinforcement learning (IntRL) for continuous-time control-affine systems.

System ``x' = f(x) + g(x) u``, utility ``l(x, u) = x^T Q x + u^T R u``, value
``V(x(t)) = int_t^inf l ds``. Policy iteration (Vrabie & Lewis 2009; Cao & Pan, ICLR 2024, Alg. 1):

* **policy evaluation** on the integral Bellman equation ``V(x(t)) - V(x(t + T)) = int_t^{t+T} l ds``
  with ``V ~ w^T phi(x)``: each interval k gives a regression row ``theta_k = phi(x(t_k)) -
  phi(x(t_k + T))`` and a target ``y_k`` = the quadrature of ``l`` from N samples in the interval; w
  solves the least squares problem over the rows of one iteration;
* **policy improvement** ``u(x) = -1/2 R^{-1} g(x)^T grad(phi)(x)^T w``.

Policy iteration is Newton's method on the HJB equation ``0 = grad V^T f + x^T Q x - 1/4 grad V^T g
R^{-1} g^T grad V`` (Kleinman 1968 for LQR); the quadrature error enters every Newton step as an extra
term bounded by a constant times the quadrature error (Cao & Pan, Thm 3.3), so the limit error is
``O(N^-2)`` for the trapezoid rule and ``O(N^-b)`` for Matern BQ with Sobolev order ``b = nu + 1/2``.

The plant is simulated with this project's ODE solvers (``solvers.solve``, Tsit5 by default). The
"exact" policy evaluation integrates the utility as an extra ODE state instead of using samples.
Several evaluation rules can run side by side in one batched simulation (``solve_many``), each
with its own trajectory and policy: that is how the benchmark compares rules at equal cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from solvers import ODEProblem, Tsit5
from solvers import solve as ode_solve
from solvers.algorithm import Algorithm
from solvers.checks import check_finite, check_floating, check_options, check_tolerance
from solvers.solution import RetcodeResult, ReturnCode, SolverError, Stats

from ._base import QuadratureRule, check_n
from .bayesian import BayesianQuadrature

# ----------------------------------------------------------------------------------------------------------
# Value-function basis


class QuadraticBasis:
    """Quadratic monomials ``phi(x) = [x_i x_j for i <= j]`` (``d (d + 1) / 2`` features).

    ``V = w^T phi(x) = x^T P x`` with ``P_ii = w_ii`` and ``P_ij = P_ji = w_ij / 2``.
    """

    def __init__(self, d: int):
        if not isinstance(d, int) or d < 1:
            raise ValueError(f"state dimension must be a positive int, got {d!r}")
        self.d = d
        self.pairs = [(i, j) for i in range(d) for j in range(i, d)]
        self.m = len(self.pairs)
        self._i = torch.tensor([p[0] for p in self.pairs])
        self._j = torch.tensor([p[1] for p in self.pairs])

    def __repr__(self) -> str:
        return f"QuadraticBasis(d={self.d})"

    def __call__(self, x: Tensor) -> Tensor:
        return x[..., self._i.to(x.device)] * x[..., self._j.to(x.device)]

    def jacobian(self, x: Tensor) -> Tensor:
        """``d phi_k / d x_l``, shape ``(..., m, d)``."""
        J = x.new_zeros(*x.shape[:-1], self.m, self.d)
        k = torch.arange(self.m, device=x.device)
        i, j = self._i.to(x.device), self._j.to(x.device)
        J[..., k, i] += x[..., j]
        J[..., k, j] += x[..., i]
        return J

    def to_matrix(self, w: Tensor) -> Tensor:
        w = torch.as_tensor(w)
        P = w.new_zeros(*w.shape[:-1], self.d, self.d)
        for k, (i, j) in enumerate(self.pairs):
            if i == j:
                P[..., i, i] = w[..., k]
            else:
                P[..., i, j] = P[..., j, i] = w[..., k] / 2
        return P

    def from_matrix(self, P: Tensor) -> Tensor:
        P = torch.as_tensor(P)
        return torch.stack([P[..., i, j] * (1 if i == j else 2) for i, j in self.pairs], -1)


# ----------------------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class ControlAffineProblem:
    """Optimal control of ``x' = f(x) + g(x) u`` with cost ``int x^T Q x + u^T R u``.

    Args:
        f: drift ``f(x) -> (..., d)`` for states ``x`` of shape ``(..., d)``.
        g: input matrix ``g(x) -> (..., d, m)``.
        Q: ``(d, d)`` symmetric positive semi-definite; R: ``(m, m)`` symmetric positive definite.
        x0: ``(d,)`` initial state of the learning trajectory.
        basis: value basis with ``basis(x) -> (..., p)`` and ``basis.jacobian(x) -> (..., p, d)``.
        w0: initial value weights (they define the initial policy); zeros by default (``u = 0``).
        w_star: optimal weights where known; u_star: optimal feedback ``u*(x) -> (..., m)`` where known.
        A, B: the matrices of a linear system (enables Riccati / Kleinman references and gains).
    """

    f: Callable[[Tensor], Tensor]
    g: Callable[[Tensor], Tensor]
    Q: Tensor
    R: Tensor
    x0: Tensor
    basis: Any
    w0: Tensor | None = None
    w_star: Tensor | None = None
    u_star: Callable[[Tensor], Tensor] | None = None
    A: Tensor | None = None
    B: Tensor | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not callable(self.f) or not callable(self.g):
            raise TypeError("f and g must be callables of the state")
        for nm in ("Q", "R", "x0"):
            v = getattr(self, nm)
            check_floating(nm, v)
            check_finite(nm, v)
        if self.x0.dim() != 1:
            raise ValueError(f"x0 must be 1-D (d,), got shape {tuple(self.x0.shape)}")
        d = self.x0.shape[0]
        if tuple(self.Q.shape) != (d, d):
            raise ValueError(f"Q must be ({d}, {d}) to match x0, got {tuple(self.Q.shape)}")
        if self.R.dim() != 2 or self.R.shape[0] != self.R.shape[1]:
            raise ValueError(f"R must be a square matrix, got shape {tuple(self.R.shape)}")
        Q64, R64 = self.Q.double(), self.R.double()
        if not torch.allclose(Q64, Q64.T) or float(torch.linalg.eigvalsh(Q64).min()) < -1e-12:
            raise ValueError("Q must be symmetric positive semi-definite")
        if not torch.allclose(R64, R64.T) or float(torch.linalg.eigvalsh(R64).min()) <= 0:
            raise ValueError("R must be symmetric positive definite")
        mu = self.R.shape[0]
        fx = self.f(self.x0)
        gx = self.g(self.x0)
        if tuple(fx.shape) != (d,):
            raise ValueError(f"f(x0) must have shape ({d},), got {tuple(fx.shape)}")
        if tuple(gx.shape) != (d, mu):
            raise ValueError(f"g(x0) must have shape ({d}, {mu}) (state dim x input dim of R), "
                             f"got {tuple(gx.shape)}")
        if not callable(self.basis) or not hasattr(self.basis, "jacobian"):
            raise TypeError("basis must be callable with a .jacobian(x) method (e.g. QuadraticBasis(d))")
        p = self.basis(self.x0).shape[-1]
        if tuple(self.basis.jacobian(self.x0).shape) != (p, d):
            raise ValueError(f"basis.jacobian(x0) must have shape ({p}, {d})")
        w0 = (torch.zeros(p, dtype=self.x0.dtype, device=self.x0.device) if self.w0 is None
              else torch.as_tensor(self.w0, dtype=self.x0.dtype, device=self.x0.device))
        if tuple(w0.shape) != (p,):
            raise ValueError(f"w0 must have shape ({p},) (one weight per basis function), "
                             f"got {tuple(w0.shape)}")
        object.__setattr__(self, "w0", w0)
        if self.w_star is not None and tuple(self.w_star.shape) != (p,):
            raise ValueError(f"w_star must have shape ({p},), got {tuple(self.w_star.shape)}")
        if (self.A is None) != (self.B is None):
            raise ValueError("give both A and B for a linear system, or neither")
        if self.A is not None and (tuple(self.A.shape) != (d, d) or tuple(self.B.shape) != (d, mu)):
            raise ValueError(f"A must be ({d}, {d}) and B ({d}, {mu}), got {tuple(self.A.shape)} and "
                             f"{tuple(self.B.shape)}")

    @property
    def d(self) -> int:
        return self.x0.shape[0]

    @property
    def m(self) -> int:
        return self.R.shape[0]

    @property
    def is_linear(self) -> bool:
        return self.A is not None

    @classmethod
    def linear(cls, A: Any, B: Any, Q: Any, R: Any, x0: Any, K0: Any = None, name: str = "",
               dtype: torch.dtype = torch.float64) -> ControlAffineProblem:
        """LQR problem ``x' = A x + B u`` with a quadratic basis, ``w*`` from the algebraic Riccati
        equation and initial policy ``u = -K0 x`` (``K0 = 0`` by default)."""
        A, B, Q, R, x0 = (torch.as_tensor(np.asarray(v, dtype=np.float64), dtype=dtype)
                          for v in (A, B, Q, R, x0))
        if B.dim() == 1:
            B = B[:, None]
        R = R.reshape(B.shape[1], B.shape[1]) if R.numel() == B.shape[1] ** 2 else R
        d = A.shape[0]
        basis = QuadraticBasis(d)
        if A.dim() != 2 or tuple(A.shape) != (d, d) or B.shape[0] != d:
            raise ValueError(f"A must be square and B must have {d} rows; got A {tuple(A.shape)}, "
                             f"B {tuple(B.shape)}")
        if tuple(Q.shape) != (d, d):
            raise ValueError(f"Q must be ({d}, {d}) to match A, got {tuple(Q.shape)}")
        if tuple(R.shape) != (B.shape[1], B.shape[1]):
            raise ValueError(f"R must be ({B.shape[1]}, {B.shape[1]}) to match B, got {tuple(R.shape)}")
        if not torch.allclose(R, R.T) or float(torch.linalg.eigvalsh(R).min()) <= 0:
            raise ValueError("R must be symmetric positive definite")
        P, K = lqr(A, B, Q, R)
        w0 = None
        if K0 is not None:
            K0 = torch.as_tensor(np.asarray(K0, dtype=np.float64), dtype=dtype).reshape(B.shape[1], d)
            # u = -1/2 R^{-1} B^T grad V = -R^{-1} B^T P0 x: choose P0 with R^{-1} B^T P0 = K0 (least norm).
            P0 = torch.linalg.lstsq(torch.linalg.solve(R, B.T), K0).solution
            P0 = 0.5 * (P0 + P0.T)
            w0 = basis.from_matrix(P0)
            if not torch.allclose(torch.linalg.solve(R, B.T) @ P0, K0, atol=1e-10):
                raise ValueError("K0 cannot be written as R^{-1} B^T P0 with symmetric P0; pass w0 via the "
                                 "constructor instead")
        Bt, At = B, A
        return cls(f=lambda x: x @ At.T, g=lambda x: Bt.expand(*x.shape[:-1], *Bt.shape), Q=Q, R=R, x0=x0,
                   basis=basis, w0=w0, w_star=basis.from_matrix(P), u_star=lambda x: -(x @ K.T), A=A, B=B,
                   name=name)

    # ---- pieces the algorithm uses -------------------------------------------------------------------
    def policy(self, w: Tensor, x: Tensor) -> Tensor:
        """``u = -1/2 R^{-1} g(x)^T grad(phi)(x)^T w`` for weights ``w`` of shape ``(..., p)``
        broadcasting against states ``x`` of shape ``(..., d)``."""
        J = self.basis.jacobian(x)  # (..., p, d)
        gradV = (J * w[..., :, None]).sum(-2)  # (..., d)
        g = self.g(x)  # (..., d, m)
        gt_grad = (g * gradV[..., :, None]).sum(-2)  # (..., m)
        return -0.5 * torch.linalg.solve(self.R.to(x), gt_grad.unsqueeze(-1)).squeeze(-1)

    def closed_loop(self, w: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        u = self.policy(w, x)
        return self.f(x) + (self.g(x) * u[..., None, :]).sum(-1), u

    def utility(self, x: Tensor, u: Tensor) -> Tensor:
        Q, R = self.Q.to(x), self.R.to(x)
        return ((x @ Q) * x).sum(-1) + ((u @ R) * u).sum(-1)

    def value(self, w: Tensor, x: Tensor) -> Tensor:
        return (self.basis(x) * w).sum(-1)

    def gain(self, w: Tensor) -> Tensor:
        """``K = R^{-1} B^T P(w)`` (linear systems with the quadratic basis): ``u = -K x``."""
        if not self.is_linear:
            raise ValueError("gain() needs a linear system (A, B)")
        P = self.basis.to_matrix(w)
        return torch.linalg.solve(self.R.to(P), self.B.to(P).T @ P)

    def check_initial_policy(self, w0: Tensor | None = None) -> None:
        """Raise ``ValueError`` unless the closed loop with ``w0`` is locally stable at the origin
        (all eigenvalues of its Jacobian at ``x = 0`` in the open left half-plane)."""
        w0 = self.w0 if w0 is None else w0
        zero = torch.zeros_like(self.x0)
        J = torch.autograd.functional.jacobian(lambda x: self.closed_loop(w0, x)[0], zero)
        eig = np.linalg.eigvals(J.detach().double().cpu().numpy())
        if float(eig.real.max()) >= 0:
            raise ValueError("the initial policy is not stabilising: the closed-loop Jacobian at the "
                             f"origin has an eigenvalue with real part {float(eig.real.max()):.4g} >= 0; "
                             "policy iteration needs a stabilising (admissible) initial policy")


def _np(x: Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy()


def lqr(A: Any, B: Any, Q: Any, R: Any) -> tuple[Tensor, Tensor]:
    """``P`` from ``A^T P + P A - P B R^{-1} B^T P + Q = 0`` (``scipy.linalg.solve_continuous_are``) and
    the optimal gain ``K = R^{-1} B^T P``."""
    A, B, Q, R = (np.asarray(_np(torch.as_tensor(v))) for v in (A, B, Q, R))
    P = scipy.linalg.solve_continuous_are(A, B, Q, R)
    K = np.linalg.solve(R, B.T @ P)
    return torch.from_numpy(P), torch.from_numpy(K)


def kleinman(A: Any, B: Any, Q: Any, R: Any, K0: Any = None, tol: float = 1e-12,
             max_iter: int = 50) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Kleinman's iteration (IEEE TAC 1968): ``(A - B K_k)^T P_k + P_k (A - B K_k) + Q + K_k^T R K_k = 0``,
    ``K_{k+1} = R^{-1} B^T P_k``; quadratic convergence to the Riccati solution from a stabilising K0.

    Returns the final P, K and the list of P_k."""
    A, B, Q, R = (np.asarray(_np(torch.as_tensor(v))) for v in (A, B, Q, R))
    K = np.zeros((B.shape[1], A.shape[0])) if K0 is None else np.asarray(_np(torch.as_tensor(K0))).reshape(
        B.shape[1], A.shape[0])
    if np.linalg.eigvals(A - B @ K).real.max() >= 0:
        raise ValueError("Kleinman's iteration needs a stabilising K0 (A - B K0 must be Hurwitz)")
    history = []
    P_prev = None
    for _ in range(max_iter):
        Ak = A - B @ K
        P = scipy.linalg.solve_continuous_lyapunov(Ak.T, -(Q + K.T @ R @ K))
        history.append(torch.from_numpy(P))
        K = np.linalg.solve(R, B.T @ P)
        if P_prev is not None and np.linalg.norm(P - P_prev) <= tol * max(1.0, np.linalg.norm(P)):
            break
        P_prev = P
    return torch.from_numpy(P), torch.from_numpy(K), history


# ----------------------------------------------------------------------------------------------------------
# The canonical tasks


def linear_third_order() -> ControlAffineProblem:
    """Cao & Pan (2024) task 1: ``A = [[0,1,0],[0,0,1],[-0.1,-0.5,-0.7]]``, ``B = e3``, ``Q = I``, ``R = 1``,
    ``x0 = [2, -2, 3]``, ``K0 = 0`` (A is Hurwitz)."""
    A = [[0, 1, 0], [0, 0, 1], [-0.1, -0.5, -0.7]]
    return ControlAffineProblem.linear(A, [[0], [0], [1]], np.eye(3), [[1.0]], [2.0, -2.0, 3.0],
                                       name="linear third-order")


def nonlinear_2d() -> ControlAffineProblem:
    """Cao & Pan (2024) task 2 (Vamvoudakis & Lewis 2010):
    ``f = [-x1 + x2; -0.5 (x1 + x2) + 0.5 x2 sin^2 x1]``,
    ``g = [0; sin x1]``, ``Q = I``, ``R = 1``. Optimum ``V* = 0.5 x1^2 + x2^2`` (``w* = [0.5, 0, 1]``),
    ``u* = -x2 sin x1``; ``w0 = [-1, 3, 1.5]``, ``x0 = [1, 1]``."""

    def f(x: Tensor) -> Tensor:
        x1, x2 = x[..., 0], x[..., 1]
        return torch.stack([-x1 + x2, -0.5 * (x1 + x2) + 0.5 * x2 * torch.sin(x1) ** 2], -1)

    def g(x: Tensor) -> Tensor:
        return torch.stack([torch.zeros_like(x[..., 0]), torch.sin(x[..., 0])], -1)[..., None]

    def u_star(x: Tensor) -> Tensor:
        return (-x[..., 1] * torch.sin(x[..., 0]))[..., None]

    dt = torch.float64
    return ControlAffineProblem(f=f, g=g, Q=torch.eye(2, dtype=dt), R=torch.ones(1, 1, dtype=dt),
                                x0=torch.tensor([1.0, 1.0], dtype=dt), basis=QuadraticBasis(2),
                                w0=torch.tensor([-1.0, 3.0, 1.5], dtype=dt),
                                w_star=torch.tensor([0.5, 0.0, 1.0], dtype=dt), u_star=u_star,
                                name="nonlinear 2-D")


def power_system() -> ControlAffineProblem:
    """Load-frequency control of a power system (Vrabie, Pastravanu, Abu-Khalaf & Lewis, Automatica 2009,
    Sec. 5): 4 states, one input; ``Q = I``, ``R = 1``, ``K0 = 0`` (A is Hurwitz)."""
    A = [[-0.0665, 8, 0, 0], [0, -3.663, 3.663, 0], [-6.86, 0, -13.736, -13.736], [0.6, 0, 0, 0]]
    B = [[0], [0], [13.7355], [0]]
    return ControlAffineProblem.linear(A, B, np.eye(4), [[1.0]], [0.1, 0.2, -0.1, 0.3], name="power system")


def f16_short_period() -> ControlAffineProblem:
    """F-16 short-period dynamics (Vamvoudakis & Lewis, Automatica 2010, Sec. 5.1; Stevens & Lewis):
    3 states, one input; ``Q = I``, ``R = 1``, ``K0 = 0`` (A is Hurwitz)."""
    A = [[-1.01887, 0.90506, -0.00215], [0.82225, -1.07741, -0.17555], [0, 0, -1]]
    return ControlAffineProblem.linear(A, [[0], [0], [1]], np.eye(3), [[1.0]], [1.0, -1.0, 1.0],
                                       name="F-16 short period")


# ----------------------------------------------------------------------------------------------------------
# Policy iteration


@dataclass
class PolicyIterationSolution(RetcodeResult):
    """Result of integral policy iteration.

    Attributes:
        w: final value weights (``V = w^T phi``); w_history: ``(iterations + 1, p)``, ``w_history[0] = w0``.
        delta_history: ``||w_i - w_{i-1}||`` per iteration.
        retcode: SUCCESS (converged to ``tol``), MAX_ITERS, BREAKDOWN (rank-deficient least squares) or
            UNSTABLE (the trajectory blew up).
        stats: ``iterations``, ``rows`` (regression rows used), ``nfe`` (plant vector-field evaluations of
            the batched simulation), ``samples_per_interval``.
        rule: the evaluation rule's name.
    """

    w: Tensor
    w_history: Tensor
    delta_history: Tensor
    retcode: ReturnCode
    stats: Stats
    problem: ControlAffineProblem
    rule: str
    detail: str = ""
    final_state: Tensor | None = None
    condition_history: list[float] = field(default_factory=list)

    @property
    def P(self) -> Tensor:
        return self.problem.basis.to_matrix(self.w)

    @property
    def K(self) -> Tensor:
        return self.problem.gain(self.w)

    def policy(self, x: Tensor) -> Tensor:
        return self.problem.policy(self.w.to(x), x)

    def value(self, x: Tensor) -> Tensor:
        return self.problem.value(self.w.to(x), x)

    @property
    def w_error(self) -> float:
        """``||w - w*||``."""
        if self.problem.w_star is None:
            raise ValueError("the problem has no known optimum w_star")
        return float(torch.linalg.norm(self.w - self.problem.w_star.to(self.w)))

    @property
    def w_error_history(self) -> Tensor:
        return torch.linalg.norm(self.w_history - self.problem.w_star.to(self.w_history), dim=-1)

    @property
    def K_error(self) -> float:
        """``||K - K*||_F`` (linear systems)."""
        _, K_star = lqr(self.problem.A, self.problem.B, self.problem.Q, self.problem.R)
        return float(torch.linalg.norm(self.K.double() - K_star))

    def u_error(self, states: Tensor) -> float:
        """``E|u - u*|`` over ``states`` (shape ``(S, d)``), using the problem's ``u_star``."""
        if self.problem.u_star is None:
            raise ValueError("the problem has no known optimal policy u_star")
        return float((self.policy(states) - self.problem.u_star(states)).abs().sum(-1).mean())


EXACT = "exact"


class IntegralPolicyIteration(Algorithm):
    """Integral-RL policy iteration with a pluggable policy-evaluation quadrature.

    Args:
        quadrature: a ``QuadratureRule`` with data-independent weights (Trapezoid,
            Simpson, GaussLegendre, Romberg, BayesianQuadrature with a fixed lengthscale), or ``"exact"``
            to integrate the utility as an extra ODE state.
        T: interval length (> 0). N: samples per interval (>= 2; the rule's nodes on ``[t_k, t_k + T]``).
        rows_per_iteration: intervals (least-squares rows) per iteration (>= number of basis functions).
        tol: stop when ``||w_i - w_{i-1}|| < tol``. max_iter: iteration cap (then ``MAX_ITERS``).
        protocol: ``"continuing"`` (the paper's: one trajectory continues across intervals and iterations)
            or ``"reset"`` (each iteration restarts the rows from the same fixed set of initial states,
            drawn once from ``reset_states`` or uniformly in ``[-r, r]^d`` with ``r = max|x0|``).
        ode_solver, rtol, atol: how the plant is simulated (``solvers.solve``; default Tsit5, 1e-10/1e-12;
            pass ``dt=...`` through ``ode_options`` for a fixed step, e.g. with RK4).
        throw: raise ``SolverError`` on BREAKDOWN/UNSTABLE (default) instead of returning the retcode.
    """

    problem_types = (ControlAffineProblem,)

    def __init__(self, quadrature: QuadratureRule | str = EXACT, T: float = 0.1, N: int = 5,
                 rows_per_iteration: int = 20, tol: float = 1e-3, max_iter: int = 100,
                 protocol: str = "continuing", ode_solver: Algorithm | None = None, rtol: float = 1e-10,
                 atol: float = 1e-12, ode_options: dict | None = None, reset_states: Tensor | None = None,
                 seed: int = 0, throw: bool = True, progress: bool = False):
        if isinstance(quadrature, str):
            if quadrature != EXACT:
                raise ValueError(f"quadrature must be a QuadratureRule or 'exact', got {quadrature!r}")
        elif not isinstance(quadrature, QuadratureRule):
            raise TypeError("quadrature must be a QuadratureRule or 'exact', "
                            f"got {type(quadrature).__name__}")
        if isinstance(quadrature, BayesianQuadrature) and not quadrature.data_independent:
            raise ValueError("IntRL needs data-independent weights: "
                             "give BayesianQuadrature a fixed lengthscale")
        T = float(T)
        if not (math.isfinite(T) and T > 0):
            raise ValueError(f"the interval length T must be finite and > 0, got {T}")
        N = check_n(N, 2)
        if isinstance(quadrature, QuadratureRule):
            quadrature.rule(N, 0.0, T)  # fail now if N does not suit the rule (Simpson N=2, Romberg N!=2^k+1)
        if not isinstance(rows_per_iteration, int) or rows_per_iteration < 1:
            raise ValueError(f"rows_per_iteration must be a positive int, got {rows_per_iteration!r}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
        if protocol not in ("continuing", "reset"):
            raise ValueError(f"protocol must be 'continuing' or 'reset', got {protocol!r}")
        self.quadrature = quadrature
        self.T, self.N = T, N
        self.rows_per_iteration = rows_per_iteration
        self.tol = check_tolerance("tol", tol)
        self.max_iter = max_iter
        self.protocol = protocol
        self.ode_solver = Tsit5() if ode_solver is None else ode_solver
        self.rtol, self.atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
        self.ode_options = dict(ode_options or {})
        self.reset_states = reset_states
        self.seed = seed
        self.throw = throw
        self.progress = progress

    @property
    def rule_name(self) -> str:
        return "exact" if self.quadrature == EXACT else self.quadrature.name

    def __repr__(self) -> str:
        return (f"IntegralPolicyIteration(quadrature={self.rule_name}, T={self.T}, N={self.N}, "
                f"rows_per_iteration={self.rows_per_iteration}, protocol={self.protocol!r})")

    def offsets_and_weights(self) -> tuple[Tensor | None, Tensor | None]:
        """Sample offsets in ``[0, T]`` and their weights (``None`` for exact evaluation)."""
        if self.quadrature == EXACT:
            return None, None
        return self.quadrature.rule(self.N, 0.0, self.T)

    def _shared(self) -> tuple:
        return (self.T, self.rows_per_iteration, self.tol, self.max_iter, self.protocol,
                type(self.ode_solver), self.rtol, self.atol, tuple(sorted(self.ode_options.items())),
                self.seed)

    def solve(self, problem: ControlAffineProblem, **options: Any) -> PolicyIterationSolution:
        check_options(options, (), "IntegralPolicyIteration.solve")
        return solve_many(problem, [self])[0]


def _reset_states(problem: ControlAffineProblem, alg: IntegralPolicyIteration) -> Tensor:
    if alg.reset_states is not None:
        s = torch.as_tensor(alg.reset_states, dtype=problem.x0.dtype, device=problem.x0.device)
        if s.dim() != 2 or s.shape[1] != problem.d:
            raise ValueError(f"reset_states must have shape (rows, {problem.d}), got {tuple(s.shape)}")
        return s
    gen = torch.Generator().manual_seed(alg.seed)
    r = float(problem.x0.abs().max())
    # Drawn on the CPU with a seeded generator so the states do not depend on the device.
    u = torch.rand(alg.rows_per_iteration, problem.d, generator=gen, dtype=torch.float64)
    return (2 * u - 1).to(dtype=problem.x0.dtype, device=problem.x0.device) * r


def solve_many(problem: ControlAffineProblem, algorithms: Sequence[IntegralPolicyIteration],
               progress: bool | None = None) -> list[PolicyIterationSolution]:
    """Run several policy iterations that differ only in their evaluation rule (and N) side by side.

    Every configuration has its own trajectory and policy; they share one batched ODE solve per interval,
    whose save times are the union of all configurations' sample times. Results equal separate runs up to
    the ODE tolerance (the step size is shared).
    """
    if not algorithms:
        raise ValueError("no algorithms given")
    if not isinstance(problem, ControlAffineProblem):
        raise TypeError(f"problem must be a ControlAffineProblem, got {type(problem).__name__}")
    alg0 = algorithms[0]
    for a in algorithms:
        if not isinstance(a, IntegralPolicyIteration):
            raise TypeError("solve_many takes IntegralPolicyIteration instances")
        if a._shared() != alg0._shared():
            raise ValueError("solve_many: the algorithms may differ only in quadrature and N")
    p = problem.basis(problem.x0).shape[-1]
    rows = alg0.rows_per_iteration
    if rows < p:
        raise ValueError(f"singular least squares: rows_per_iteration = {rows} is fewer than the {p} basis "
                         "functions; use at least as many rows as unknowns")
    problem.check_initial_policy()
    if progress is None:
        progress = alg0.progress
    T, d = alg0.T, problem.d
    dtype = problem.x0.dtype
    C = len(algorithms)

    # Union of all sample offsets (plus both ends), and each configuration's index map into it.
    rules = [a.offsets_and_weights() for a in algorithms]
    frac_keys: dict[float, float] = {0.0: 0.0, 1.0: T}
    for x, _ in rules:
        if x is not None:
            for v in x.tolist():
                frac_keys.setdefault(round(v / T, 12), v)
    keys = sorted(frac_keys)
    save = torch.tensor([frac_keys[k] for k in keys], dtype=torch.float64)
    save[0], save[-1] = 0.0, T
    pos = {k: i for i, k in enumerate(keys)}
    idx, wts = [], []
    for x, w in rules:
        if x is None:
            idx.append(None)
            wts.append(None)
        else:
            idx.append(torch.tensor([pos[round(v / T, 12)] for v in x.tolist()]))
            wts.append(w.to(dtype=dtype, device=problem.x0.device))
    exact = torch.tensor([x is None for x, _ in rules])

    W = problem.w0.to(dtype).expand(C, p).clone()  # current policy weights per configuration
    active = torch.ones(C, dtype=torch.bool)
    retcodes = [ReturnCode.MAX_ITERS] * C
    details = [""] * C
    histories: list[list[Tensor]] = [[W[c].clone()] for c in range(C)]
    deltas: list[list[float]] = [[] for _ in range(C)]
    conds: list[list[float]] = [[] for _ in range(C)]
    iters = [0] * C
    nfe = 0

    if alg0.protocol == "continuing":
        state = problem.x0.expand(C, 1, d).clone()
    else:
        starts = _reset_states(problem, alg0)
        if starts.shape[0] != rows:
            raise ValueError(f"reset_states has {starts.shape[0]} rows, rows_per_iteration is {rows}")

    def field_fn(Wc: Tensor):
        def rhs(t: Tensor, z: Tensor) -> Tensor:
            x = z[..., :d]
            dx, u = problem.closed_loop(Wc[:, None, :], x)
            return torch.cat([dx, problem.utility(x, u)[..., None]], -1)
        return rhs

    def simulate(z0: Tensor, Wc: Tensor) -> Tensor:
        nonlocal nfe
        opts = dict(saveat=save, dense=False)
        if "dt" not in alg0.ode_options:
            opts.update(rtol=alg0.rtol, atol=alg0.atol)
        opts.update(alg0.ode_options)
        sol = ode_solve(ODEProblem(field_fn(Wc), z0, (0.0, T)), alg0.ode_solver, **opts)
        nfe += sol.stats.nfe
        if not sol.success:
            raise SolverError(sol.retcode, detail="the plant simulation failed")
        return sol.ys  # (S, C, R, d + 1)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=alg0.max_iter, desc=f"IntRL {problem.name}", leave=False, disable=None)
    for it in range(alg0.max_iter):
        if not bool(active.any()):
            break
        Wc = W.clone()
        thetas, targets = [], []
        if alg0.protocol == "continuing":
            for _ in range(rows):
                z0 = torch.cat([state, state.new_zeros(C, 1, 1)], -1)
                ys = simulate(z0, Wc)
                thetas.append(problem.basis(ys[0, :, 0, :d]) - problem.basis(ys[-1, :, 0, :d]))
                targets.append(_targets(problem, ys[:, :, 0, :], Wc, idx, wts, exact, d))
                state = ys[-1, :, :, :d].clone()
            Theta = torch.stack(thetas, 1)  # (C, rows, p)
            Y = torch.stack(targets, 1)  # (C, rows)
        else:
            z0 = torch.cat([starts.expand(C, rows, d), starts.new_zeros(C, rows, 1)], -1)
            ys = simulate(z0, Wc)  # (S, C, rows, d + 1)
            Theta = problem.basis(ys[0, ..., :d]) - problem.basis(ys[-1, ..., :d])
            Y = torch.stack([_targets(problem, ys[:, :, r, :], Wc, idx, wts, exact, d)
                             for r in range(rows)], 1)
        for c in range(C):
            if not bool(active[c]):
                continue
            if not (bool(torch.isfinite(Theta[c]).all()) and bool(torch.isfinite(Y[c]).all())):
                retcodes[c], details[c] = ReturnCode.UNSTABLE, f"non-finite data at iteration {it + 1}"
                active[c] = False
                continue
            sv = torch.linalg.svdvals(Theta[c].double())
            cond = float(sv[0] / sv[-1]) if float(sv[-1]) > 0 else math.inf
            conds[c].append(cond)
            if not cond < 1e12:
                retcodes[c] = ReturnCode.BREAKDOWN
                details[c] = (f"singular least squares at iteration {it + 1}: the {rows} x {p} regression "
                              f"matrix has condition number {cond:.3g} (the trajectory does not excite all "
                              "basis functions, e.g. it starts at or has decayed to the equilibrium)")
                active[c] = False
                continue
            w_new = torch.linalg.lstsq(Theta[c].double(), Y[c].double()[:, None]).solution[:, 0].to(dtype)
            delta = float(torch.linalg.norm(w_new - W[c]))
            W[c] = w_new
            histories[c].append(w_new.clone())
            deltas[c].append(delta)
            iters[c] = it + 1
            if delta < alg0.tol:
                retcodes[c] = ReturnCode.SUCCESS
                active[c] = False
        if alg0.protocol == "continuing":
            big = state.abs().amax(dim=(-1, -2)) > 1e8 * max(1.0, float(problem.x0.abs().max()))
            for c in torch.nonzero(big & active).flatten().tolist():
                retcodes[c], details[c] = ReturnCode.UNSTABLE, "the closed-loop trajectory diverged"
                active[c] = False
        if bar is not None:
            bar.update(1)
            bar.set_postfix(active=int(active.sum()))
    if bar is not None:
        bar.close()

    out = []
    for c, alg in enumerate(algorithms):
        sol = PolicyIterationSolution(
            w=W[c].clone(), w_history=torch.stack(histories[c]), delta_history=torch.tensor(deltas[c]),
            retcode=retcodes[c], problem=problem, rule=alg.rule_name, detail=details[c],
            stats=Stats(nfe=nfe, extra={"iterations": iters[c], "rows": iters[c] * rows,
                                        "samples_per_interval": None if exact[c] else alg.N}),
            final_state=state[c, 0].clone() if alg0.protocol == "continuing" else None,
            condition_history=conds[c])
        if alg.throw and retcodes[c] in (ReturnCode.BREAKDOWN, ReturnCode.UNSTABLE):
            raise SolverError(retcodes[c], detail=f"[{alg.rule_name}, N={alg.N}] {details[c]}")
        out.append(sol)
    return out


def _targets(problem: ControlAffineProblem, ys: Tensor, Wc: Tensor, idx: list, wts: list, exact: Tensor,
             d: int) -> Tensor:
    """Regression targets for one interval per configuration: ``ys`` is ``(S, C, d + 1)``."""
    x = ys[..., :d]
    u = problem.policy(Wc[None], x)  # the policy being evaluated, at every saved sample
    ell = problem.utility(x, u)  # (S, C)
    out = []
    for c in range(ys.shape[1]):
        if bool(exact[c]):
            out.append(ys[-1, c, d] - ys[0, c, d])
        else:
            out.append(ell[idx[c], c] @ wts[c])
    return torch.stack(out)


def simulate_closed_loop(problem: ControlAffineProblem, policy: Callable[[Tensor], Tensor], x0: Tensor,
                         t1: float, saveat: Tensor | None = None, rtol: float = 1e-9, atol: float = 1e-11):
    """Simulate ``x' = f(x) + g(x) policy(x)`` from ``x0`` over ``[0, t1]`` with the accumulated cost as the
    last state component (``solvers.solve`` with Tsit5). Returns the ODE solution."""
    d = problem.d

    def rhs(t: Tensor, z: Tensor) -> Tensor:
        x = z[..., :d]
        u = policy(x)
        dx = problem.f(x) + (problem.g(x) * u[..., None, :]).sum(-1)
        return torch.cat([dx, problem.utility(x, u)[..., None]], -1)

    z0 = torch.cat([x0, x0.new_zeros(*x0.shape[:-1], 1)], -1)
    return ode_solve(ODEProblem(rhs, z0, (0.0, float(t1))), Tsit5(), rtol=rtol, atol=atol, saveat=saveat)
