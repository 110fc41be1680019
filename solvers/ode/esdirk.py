"""ESDIRK methods for stiff ODEs: Kvaerno3 (order 3(2)) and Kvaerno5 (order 5(4)).

An ESDIRK method (*explicit first stage, singly diagonally implicit Runge-Kutta*) with ``s``
stages and diagonal ``gamma`` advances ``y_n`` by

    k_1 = f(t_n, y_n)                                            (explicit: a_11 = 0)
    z_i = psi_i + gamma dt f(t_n + c_i dt, z_i),   psi_i = y_n + dt sum_{j<i} a_ij k_j,   i = 2..s
    k_i = (z_i - psi_i) / (gamma dt)
    y_{n+1} = z_s                                                (stiffly accurate: b = row s of A)
    err = dt sum_i (b_i - bhat_i) k_i                            (bhat = row s-1 of A, also c = 1)

(Hairer & Wanner, *Solving ODEs II*, Sect. IV.6 for SDIRK methods, IV.8 for their implementation).
Each implicit stage is solved by the simplified Newton iteration with one iteration matrix
``W = I - gamma dt J`` for all stages (``solvers.ode.newton``: convergence test, divergence
detection, reuse of ``J`` and ``W`` across steps, implicit-function-theorem gradients). Being
stiffly accurate, the last stage is ``f(t_{n+1}, y_{n+1})`` to within the Newton tolerance and is
the next step's first stage (FSAL), so a step costs ``s - 1`` implicit stages.

Both methods are from A. Kvaerno, "Singly diagonally implicit Runge-Kutta methods with an explicit
first stage", BIT 44(3):489-502, 2004. Both are stiffly accurate and L-stable (checked when built:
``|R(iy)| <= 1`` on the imaginary axis, ``R(-inf) = 0``), have stage order 2 (an explicit first
stage allows no more), and their embedded method is the stage ``s - 1`` (``c_{s-1} = 1``), itself
stiffly accurate. The coefficients are those of diffrax (``diffrax/_solver/kvaerno3.py`` and
``kvaerno5.py``, P. Kidger, commit 5ea5fcb), which carry Kvaerno's tables:

* Kvaerno3: 4 stages, order 3, embedded 2. The entries are the paper's closed forms in ``gamma``;
  the order conditions hold for every ``gamma``, and ``R(-inf) = 0`` (L-stability) fixes ``gamma``
  as the root ``0.43586652150845899...`` of ``6 g^3 - 18 g^2 + 9 g - 1 = 0`` (diffrax and
  OrdinaryDiffEq use the 11-digit ``0.43586652150``; we take the root to full precision, which
  makes ``|R(-inf)|`` about ``1e-16`` instead of ``5e-11``).
* Kvaerno5: 7 stages, order 5, embedded 4, ``gamma = 0.26``, 17-digit entries. Note ``c_3 = 1.23``:
  the third stage evaluates ``f`` past ``t_{n+1}`` (and past ``t1`` on the last step).

Stage predictors ``z_i^(0) = psi_i + gamma dt sum_{j<i} alpha_ij k_j`` (``sum_j alpha_ij = 1``:
``f`` at stage ``i`` is predicted as a combination of the known stages): diffrax's choice (its
``devdocs/predictor_dirk.md``): linear extrapolation in ``t`` for stage 3 of Kvaerno3 and
``alpha_{s,j} = a_{s-1,j}`` for the last stage; for Kvaerno5 OrdinaryDiffEq's polynomial
extrapolation, with ``alpha_21 = 1`` (OrdinaryDiffEq has ``0`` there, a mistake diffrax corrects).

The tableau is checked when built (``ESDIRKTableau``): explicit first stage, constant diagonal,
row sums equal to ``c``, every rooted-tree order condition up to the claimed order for ``b``
(17 trees for order 5) and for ``bhat``, stiff accuracy, L-stability, and predictor rows summing
to one; a perturbed coefficient is refused.

Error estimate and step control. The embedded difference is filtered with the iteration matrix
(``smooth_est=True``, as OrdinaryDiffEq's Kvaerno methods do by default): ``err = W^(-1) dt
sum_i e_i k_i``. For stiff components ``W^(-1)`` damps by ``1 / (gamma dt |lambda|)`` the part of
the estimate that measures the embedded method's stiff error, which is not an error of the
propagated solution (the same reason as the ``(I - h gamma_0 J)^(-1)`` filter of RADAU5's error
estimate, Hairer & Wanner II, IV.8); for non-stiff components ``W ~ I``. The scaled RMS norm and
PI control are those of every method here; ``error_exponent = embedded_order + 1``.

Measured (fixed steps, ``tests/test_esdirk.py``): on ``y' = A y + g(t)`` with eigenvalues ``-1`` and
``-1000`` (``dt |lambda| = 25..200``) and the forcing in the slow mode, Kvaerno3 shows order
2.85-2.96 and Kvaerno5 4.95-4.99; on the logistic equation 3.03-3.12 and 5.18-5.27. When the smooth
solution has a component along the stiff eigenvector (Prothero-Robinson type), Kvaerno5 drops to
order 2.1-2.3 in that regime (order reduction: its stage order is 2), Kvaerno3 stays near 2.9.

Dense output: the cubic Hermite interpolant through ``y_n, y_{n+1}, f_n = k_1, f_{n+1} = k_s``
(order 3, continuous with continuous derivative across steps; ``f_{n+1}`` is free because the
method is stiffly accurate). Kvaerno gives no continuous extension; diffrax uses the same Hermite
interpolant.

Stiffness estimate: ``||J||_inf`` of the Jacobian in use (``stability_size = 1``): units 1/time,
``dt * estimate`` is the step's stiffness.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from ..stepping.protocol import StepRejected, StepResult, nan_scalar
from ..stepping.times import time_tensor
from .implicit import ImplicitStepper, ImplicitTerms, jacobian_norm, jvp
from .newton import (
    IterationMatrices,
    NewtonOptions,
    NewtonOutcome,
    attach_root,
    scaled_rms,
    simplified_newton,
)

__all__ = ["ESDIRKTableau", "ESDIRK", "Kvaerno3", "Kvaerno5", "rooted_trees", "KVAERNO3", "KVAERNO5"]

_TOL = 1e-12


# -- rooted trees and order conditions ------------------------------------------------------------
Tree = tuple  # a rooted tree: the sorted tuple of its children's trees; () is the single node


def _graft(t: Tree):
    """Every tree made by adding one leaf to ``t`` (canonical: children sorted)."""
    yield tuple(sorted((*t, ())))
    for i, child in enumerate(t):
        for g in _graft(child):
            yield tuple(sorted((*t[:i], g, *t[i + 1:])))


def rooted_trees(max_order: int) -> dict[int, list[Tree]]:
    """All rooted trees of each order ``1..max_order`` (1, 1, 2, 4, 9, 20, ... of them)."""
    trees: dict[int, list[Tree]] = {1: [()]}
    for n in range(2, max_order + 1):
        trees[n] = sorted({g for t in trees[n - 1] for g in _graft(t)})
    return trees


def _weights(t: Tree, a: np.ndarray) -> np.ndarray:
    """Stage weights ``Phi(t)``: ones for the single node, ``prod_children (A Phi(child))`` else."""
    out = np.ones(a.shape[0])
    for child in t:
        out = out * (a @ _weights(child, a))
    return out


def _density(t: Tree) -> int:
    """``gamma(t) = |t| prod gamma(child)`` (Butcher's density; the condition is ``b.Phi = 1/gamma``)."""
    return _size(t) * math.prod(_density(ch) for ch in t)


def _size(t: Tree) -> int:
    return 1 + sum(_size(ch) for ch in t)


def order_residuals(b: np.ndarray, a: np.ndarray, order: int) -> list[tuple[Tree, float]]:
    """``b . Phi(t) - 1/gamma(t)`` for every rooted tree ``t`` of order ``<= order`` (Butcher;
    Hairer, Norsett & Wanner I, Sect. II.2, Theorem 2.13): zero iff the method has that order."""
    return [(t, float(b @ _weights(t, a) - 1.0 / _density(t)))
            for n, ts in rooted_trees(order).items() for t in ts]


def stability_function(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``R(z) = P(z) / Q(z)`` with ``P(z) = det(I - z (A - 1 b^T))``, ``Q(z) = det(I - z A)``
    (Hairer & Wanner II, IV.3, (3.3)): ascending coefficients of ``P`` and ``Q``."""
    s = len(b)
    # det(I - z M) = sum_k c_k z^k with c the characteristic-polynomial coefficients of M (np.poly).
    p = np.real(np.poly(a - np.outer(np.ones(s), b)))
    q = np.real(np.poly(a))
    return p, q


# -- the tableau ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ESDIRKTableau:
    """An ESDIRK tableau, checked when built (see the module docstring).

    Args:
        a: the ``s x s`` lower-triangular stage matrix, diagonal included (row 0 all zero,
            ``a_ii = gamma`` for ``i >= 1``).
        b: solution weights; ``bhat``: embedded weights.
        c: nodes (``c_0 = 0``).
        order, embedded_order: orders of ``b`` and ``bhat``.
        predictor: rows ``alpha_i`` (``i = 1..s-1``, length ``i``) of the stage predictors.
        stiffly_accurate, l_stable: claimed, and verified.
        name: label.
    """

    a: tuple
    b: tuple
    c: tuple
    bhat: tuple
    order: int
    embedded_order: int
    predictor: tuple
    stiffly_accurate: bool = True
    l_stable: bool = True
    name: str = ""
    gamma: float = field(init=False)
    stage_order: int = field(init=False)
    dense_poly: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        a = np.asarray(self.a, dtype=np.float64)
        b = np.asarray(self.b, dtype=np.float64)
        bh = np.asarray(self.bhat, dtype=np.float64)
        c = np.asarray(self.c, dtype=np.float64)
        s = len(b)
        label = self.name or "ESDIRK tableau"
        if a.shape != (s, s) or c.shape != (s,) or bh.shape != (s,):
            raise ValueError(f"{label}: a must be {s}x{s}, c and bhat of length {s}")
        if np.any(np.triu(a, 1) != 0):
            raise ValueError(f"{label}: a must be lower triangular (diagonally implicit)")
        if np.any(a[0] != 0) or c[0] != 0:
            raise ValueError(f"{label}: the first stage must be explicit (a[0] = 0, c[0] = 0)")
        gamma = float(a[1, 1])
        if not gamma > 0 or np.any(np.diag(a)[1:] != gamma):
            raise ValueError(f"{label}: the diagonal a[i, i] (i >= 1) must be one positive gamma, got "
                             f"{np.diag(a)[1:].tolist()}")
        rows = a.sum(axis=1)
        if np.max(np.abs(rows - c)) > _TOL:
            i = int(np.argmax(np.abs(rows - c)))
            raise ValueError(f"{label}: row {i} of a sums to {rows[i]!r}, but c[{i}] = {c[i]!r}")
        for weights, k, which in ((b, self.order, "b"), (bh, self.embedded_order, "bhat")):
            for tree, res in order_residuals(weights, a, k):
                if abs(res) > _TOL:
                    raise ValueError(f"{label}: the order condition of the tree {tree} (order {_size(tree)}) "
                                     f"fails for {which} (residual {res:.3e})")
        if self.stiffly_accurate and (np.max(np.abs(a[-1] - b)) > _TOL or c[-1] != 1):
            raise ValueError(f"{label}: claimed stiffly accurate, but b is not the last row of a "
                             f"(or c[-1] != 1)")
        if self.l_stable:
            p, q = stability_function(a, b)
            # Q(z) = (1 - gamma z)^(s-1): its poles lie at 1/gamma > 0, so R is analytic in the left
            # half-plane and A-stability is |R(iy)| <= 1 on the imaginary axis (maximum principle);
            # checked on a log grid out to |y| = 1e8 (a check, not a proof).
            ys = np.concatenate([[0.0], np.logspace(-4, 8, 4001)])
            r = np.abs(np.polyval(p[::-1], 1j * ys) / np.polyval(q[::-1], 1j * ys))
            if r.max() > 1 + 1e-12:
                y_bad = ys[int(np.argmax(r))]
                raise ValueError(f"{label}: claimed L-stable, but |R(iy)| = {r.max():.6g} > 1 "
                                 f"at y = {y_bad:.4g}")
            # R(-inf) = p_s / q_s, or p_{s-1} / q_{s-1} when both vanish (a singular A: ESDIRK).
            k = s if abs(q[s]) > 1e-14 else s - 1
            if abs(p[s]) > 1e-12 and k == s - 1:
                raise ValueError(f"{label}: claimed L-stable, but R(z) is unbounded as z -> -inf")
            r_inf = p[k] / q[k]
            if abs(r_inf) > 1e-10:
                raise ValueError(f"{label}: claimed L-stable, but R(-inf) = {r_inf:.3e}")
        if len(self.predictor) != s - 1 or any(len(row) != i + 1 for i, row in enumerate(self.predictor)):
            raise ValueError(f"{label}: predictor must have rows of lengths 1..{s - 1}")
        for i, row in enumerate(self.predictor):
            if abs(sum(row) - 1) > _TOL:
                raise ValueError(f"{label}: predictor row for stage {i + 2} sums to {sum(row)!r}, not 1")
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "stage_order", _stage_order(a, c))
        object.__setattr__(self, "dense_poly", _hermite_poly(b))

    @property
    def stages(self) -> int:
        return len(self.b)

    @property
    def e(self) -> np.ndarray:
        """Error weights ``b - bhat``."""
        return np.asarray(self.b) - np.asarray(self.bhat)


def _stage_order(a: np.ndarray, c: np.ndarray) -> int:
    """The largest ``q`` with ``A c^(k-1) = c^k / k`` for ``k = 1..q`` (every stage)."""
    q = 0
    while q < 10 and np.max(np.abs(a @ c**q - c ** (q + 1) / (q + 1))) <= _TOL:
        q += 1
    return q


def _hermite_poly(b: np.ndarray) -> np.ndarray:
    """Rows ``w_i(theta)`` (ascending powers) of the cubic Hermite interpolant in the stage basis:
    ``y(t + theta dt) = y + dt sum_i w_i(theta) k_i`` with ``f_n = k_1``, ``f_{n+1} = k_s`` and
    ``y_{n+1} - y_n = dt b.k``."""
    s = len(b)
    h01 = np.array([0, 0, 3, -2.0])   # the weight of y1 - y0
    h10 = np.array([0, 1, -2, 1.0])   # of dt f0
    h11 = np.array([0, 0, -1, 1.0])   # of dt f1
    e0, e1 = np.zeros(s), np.zeros(s)
    e0[0], e1[-1] = 1.0, 1.0
    return np.outer(b, h01) + np.outer(e0, h10) + np.outer(e1, h11)


def _lower(rows: Sequence[Sequence[float]]) -> tuple:
    s = len(rows)
    return tuple(tuple(list(r) + [0.0] * (s - len(r))) for r in rows)


# -- Kvaerno3 -----------------------------------------------------------------------------------------
def _kvaerno3() -> ESDIRKTableau:
    # gamma: the root in (0.4, 0.5) of 6 g^3 - 18 g^2 + 9 g - 1 = 0 (R(-inf) = 0), by Newton in float64.
    g = 0.4358665215
    for _ in range(5):
        g -= (6 * g**3 - 18 * g**2 + 9 * g - 1) / (18 * g**2 - 36 * g + 9)
    a31 = (-4 * g**2 + 6 * g - 1) / (4 * g)
    a32 = (-2 * g + 1) / (4 * g)
    a41 = (6 * g - 1) / (12 * g)
    a42 = -1 / ((24 * g - 12) * g)
    a43 = (-6 * g**2 + 6 * g - 1) / (6 * g - 3)
    a = _lower([[], [g, g], [a31, a32, g], [a41, a42, a43, g]])
    theta = 1 / (2 * g)  # stage 3 (c = 1) predicted by the line through k_1 (c = 0) and k_2 (c = 2 gamma)
    return ESDIRKTableau(
        a=a, b=a[3], bhat=a[2], c=(0.0, 2 * g, 1.0, 1.0), order=3, embedded_order=2,
        predictor=((1.0,), (1 - theta, theta), (a31, a32, g)), name="Kvaerno3")


# -- Kvaerno5 -----------------------------------------------------------------------------------------
def _kvaerno5() -> ESDIRKTableau:
    g = 0.26
    rows = [
        [],
        [g, g],
        [0.13, 0.84033320996790809, g],
        [0.22371961478320505, 0.47675532319799699, -0.06470895363112615, g],
        [0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998, g],
        [0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676, g],
        [0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046, 0.62993304899016403,
         0.06962479448202728, g],
    ]
    a = _lower(rows)
    c = (0.0, 0.52, 1.230333209967908, 0.8957659843500759, 0.43639360985864756, 1.0, 1.0)
    predictor = (
        (1.0,),
        (-1.366025403784441, 2.3660254037844357),
        (-0.19650552613122207, 0.8113579546496623, 0.38514757148155954),
        (0.10375304369958693, 0.937994698066431, -0.04174774176601781, 0.0),
        (-0.17281112873898072, 0.6235784481025847, 0.5492326806363959, 0.0, 0.0),
        tuple(rows[5][:6]),
    )
    return ESDIRKTableau(a=a, b=a[6], bhat=a[5], c=c, order=5, embedded_order=4, predictor=predictor,
                         name="Kvaerno5")


KVAERNO3 = _kvaerno3()
KVAERNO5 = _kvaerno5()


# -- the method -------------------------------------------------------------------------------------------
class _Coefficients:
    """A tableau's rows as tensors of one dtype on one device."""

    def __init__(self, tab: ESDIRKTableau, dtype: torch.dtype, device: torch.device):
        a = np.asarray(tab.a, dtype=np.float64)
        s = tab.stages
        self.a_rows = [torch.as_tensor(a[i, :i], dtype=dtype, device=device) for i in range(s)]
        self.pred_rows = [None] + [torch.as_tensor(r, dtype=dtype, device=device) for r in tab.predictor]
        self.e = torch.as_tensor(tab.e, dtype=dtype, device=device)
        self.c = [float(x) for x in tab.c]
        self.gamma = tab.gamma


class ESDIRK(ImplicitStepper):
    """Base class of the ESDIRK methods (subclasses set ``tableau``).

    Keyword options, beyond ``ImplicitStepper``'s ``jac``, ``per_sample``, ``linsolve``,
    ``preconditioner``, ``krylov_rtol``, ``krylov_restart``, ``krylov_maxiter``:

    * ``kappa`` (1e-2), ``max_newton_iters`` (10): the Newton stopping test and iteration cap;
    * ``jac_theta`` (1e-3): keep ``J`` for the next step while the accepted step's Newton rates stayed
      below it; ``w_rtol`` (0.2): refactor ``W`` when ``gamma dt`` moved by more than this fraction;
    * ``smooth_est`` (True): filter the error estimate through ``W^(-1)``;
    * ``gradient`` (``"ift"``): gradients of the stage roots by the implicit function theorem;
      ``"unrolled"`` differentiates through the Newton iterations (dense ``linsolve``; for checks).

    The Newton tolerance follows the solve's ``rtol`` / ``atol`` (fixed steps included): pass a tight
    ``rtol`` for fixed-step convergence studies and gradient checks. ``sol.stats`` adds ``njac``,
    ``nfact``, ``nsolve``, ``nkrylov``, ``nnewton`` (Newton iterations) and ``nconvfail`` (attempts
    rejected because Newton failed).

    ``step(f, t, y, dt)`` takes one step with a fresh Jacobian; when its Newton iteration fails the
    result has ``reason`` set and ``y`` is the input state (no step was taken).
    """

    tableau: ClassVar[ESDIRKTableau]

    def __init__(self, *, jac: Callable[[Tensor, Tensor], Tensor] | None = None, per_sample: bool = False,
                 linsolve: str = "dense", preconditioner: Callable | None = None, krylov_rtol: float = 1e-6,
                 krylov_restart: int = 30, krylov_maxiter: int = 300, kappa: float = 1e-2,
                 max_newton_iters: int = 10, jac_theta: float = 1e-3, w_rtol: float = 0.2,
                 smooth_est: bool = True, gradient: str = "ift") -> None:
        super().__init__(jac=jac, per_sample=per_sample, linsolve=linsolve, preconditioner=preconditioner,
                         krylov_rtol=krylov_rtol, krylov_restart=krylov_restart,
                         krylov_maxiter=krylov_maxiter)
        self.newton = NewtonOptions(kappa=kappa, max_iters=max_newton_iters, jac_theta=jac_theta,
                                    w_rtol=w_rtol, gradient=gradient)
        if gradient == "unrolled" and linsolve != "dense":
            raise ValueError("gradient='unrolled' needs linsolve='dense' (GMRES is not differentiated)")
        self.smooth_est = bool(smooth_est)

    # -- facts --------------------------------------------------------------------------------------
    @property
    def order(self) -> int:  # type: ignore[override]
        return self.tableau.order

    @property
    def embedded_order(self) -> int:  # type: ignore[override]
        return self.tableau.embedded_order

    @property
    def stages(self) -> int:
        return self.tableau.stages

    @property
    def dense_poly(self) -> np.ndarray:
        return self.tableau.dense_poly

    def coefficients(self, dtype: torch.dtype, device: torch.device) -> _Coefficients:
        return _Coefficients(self.tableau, dtype, device)

    def prepare(self, problem: Any, options: dict[str, Any], grid: list[float] | None) -> ImplicitTerms:
        terms = super().prepare(problem, options, grid)
        # The loop hands a grid only to fixed-step solves; a fixed step that Newton cannot take
        # must end the solve (StepRejected), since the loop accepts every fixed step it gets back.
        terms.cache["fixed"] = grid is not None
        return terms

    def extra_stats(self, terms: ImplicitTerms) -> dict[str, Any]:
        stats = terms.counters.as_dict()
        stats["nnewton"] = terms.cache.get("nnewton", 0)
        stats["nconvfail"] = terms.cache.get("nconvfail", 0)
        return stats

    # -- one step -----------------------------------------------------------------------------------
    def attempt(self, terms: ImplicitTerms, t: float, y: Tensor, dt: float, f0: Tensor | None,
                g0: Tensor | None, rtol: float, atol: float, need_error: bool = True,
                need_stiffness: bool = True, t_new: float | None = None) -> StepResult:
        tab, co, opts, cache = self.tableau, terms.co, self.newton, terms.cache
        f, shape, device = terms.f, y.shape, y.device
        if t_new is None:
            t_new = t + dt
        nfe = 0
        if f0 is None:
            f0 = f(time_tensor(t, device), y).reshape(-1)
            nfe += 1
        y_flat = y.reshape(-1)
        gdt = co.gamma * dt
        mats = IterationMatrices(terms, opts)
        W, J, fresh = mats.matrices(t, y, gdt)

        # The Newton norm: RMS(v / (atol + rtol |y_n|)); its tolerance kappa, floored at rounding.
        yd = y_flat.detach()
        inv_scale = 1.0 / (yd.abs() * rtol + atol)
        tol = max(opts.kappa, 10 * torch.finfo(y.dtype).eps * scaled_rms(yd, inv_scale))
        while True:
            out = self._stages(terms, t, y_flat, dt, t_new, f0, W, inv_scale, tol)
            nfe += out[-1]
            if not isinstance(out[0], NewtonOutcome):
                break
            failure, stage = out[0], out[1]
            cache["nconvfail"] = cache.get("nconvfail", 0) + 1
            cache["eta"] = 1.0
            mats.failed()
            if not fresh:
                # J from an earlier step, or W factored for another dt: retry this step at once
                # with fresh matrices before giving up on dt.
                W, J, fresh = mats.matrices(t, y, gdt, force=True)
                continue
            reason = f"{failure.reason} at stage {stage + 1} of {tab.stages}"
            if cache.get("fixed"):
                raise StepRejected(reason, failure.dt_factor)
            nan = nan_scalar(y)
            return StepResult(y, nan, nan, nfe, f0=f0, reason=reason, dt_factor=failure.dt_factor)
        ks, psi, w, theta_max = out[:4]
        mats.converged(theta_max)

        y1 = psi + w  # stiffly accurate: y_{n+1} = z_s
        K = torch.stack(ks)
        err = stiff = None
        if need_error:
            est = torch.mv(K.T, co.e) * dt
            if self.smooth_est:
                est = W.solve(est)
            scale = torch.maximum(y_flat.abs(), y1.abs()).mul(rtol).add(atol)
            err = torch.linalg.vector_norm(est / scale) / math.sqrt(est.numel())
        if need_stiffness:
            stiff = self._stiffness(terms, J, y, y1)
        return StepResult(y1.view(shape), err, stiff, nfe, k=K, f0=f0, f1=K[-1])

    def _stages(self, terms: ImplicitTerms, t: float, y_flat: Tensor, dt: float, t_new: float, f0: Tensor,
                W: Any, inv_scale: Tensor, tol: float) -> tuple:
        """The implicit stages of one try: ``(ks, psi_s, w_s, theta_max, nfe)``, or
        ``(NewtonOutcome, stage, nfe)`` when a stage's iteration failed."""
        tab, co, opts, cache = self.tableau, terms.co, self.newton, terms.cache
        f, shape, device = terms.f, terms.shape, y_flat.device
        gdt = co.gamma * dt
        eta = cache.get("eta", 1.0)
        unrolled = opts.gradient == "unrolled"
        grad = torch.is_grad_enabled()
        ks: list[Tensor] = [f0]
        theta_max, nfe = 0.0, 0
        psi = w = y_flat
        for i in range(1, tab.stages):
            ci = co.c[i]
            ti = t_new if ci == 1.0 else t + ci * dt
            tt = time_tensor(ti, device)
            K = torch.stack(ks)
            psi = torch.addmv(y_flat, K.T, co.a_rows[i], alpha=dt)
            psi_n, K_n = (psi, K) if unrolled else (psi.detach(), K.detach())

            def residual(v: Tensor, psi_n: Tensor = psi_n, tt: Tensor = tt) -> Tensor:
                return gdt * f(tt, (psi_n + v).view(shape)).reshape(-1) - v

            with torch.set_grad_enabled(grad and unrolled):
                w0 = torch.mv(K_n.T, co.pred_rows[i]) * gdt
                out = simplified_newton(residual, w0, W, inv_scale, tol, opts.max_iters, eta)
            nfe += out.iters
            cache["nnewton"] = cache.get("nnewton", 0) + out.iters
            if not out.ok:
                return out, i, nfe
            eta = out.eta
            theta_max = max(theta_max, out.theta)
            w = out.w
            if grad and not unrolled:
                w, extra = self._attach(terms, ti, tt, w, psi, gdt, shape)
                nfe += extra
            ks.append(w / gdt)
        cache["eta"] = eta
        return ks, psi, w, theta_max, nfe

    def _attach(self, terms: ImplicitTerms, ti: float, tt: Tensor, w: Tensor, psi: Tensor, gdt: float,
                shape: torch.Size) -> tuple[Tensor, int]:
        """Attach the implicit-function-theorem gradient to the stage root when anything needs one.
        Returns the root and the evaluations of ``f`` spent."""
        cache = terms.cache
        if not psi.requires_grad:
            # Only parameters of f could carry a gradient: whether they do is probed once per solve
            # (one evaluation), then remembered.
            if cache.get("f_grad") is False:
                return w, 0
            fz = terms.f(tt, (psi + w).view(shape)).reshape(-1)
            cache["f_grad"] = bool(fz.requires_grad)
            if not fz.requires_grad:
                return w, 1
        else:
            fz = terms.f(tt, (psi + w).view(shape)).reshape(-1)
        return attach_root(terms, ti, w, psi, gdt, fz), 1

    def _stiffness(self, terms: ImplicitTerms, J: Tensor | None, y: Tensor, y1: Tensor) -> Tensor:
        if J is not None:
            return jacobian_norm(terms, J)
        # Matrix-free: ||J v|| / ||v|| along the step's increment (J at the linearisation point).
        c = terms.cache
        with torch.no_grad():
            v = (y1 - y.reshape(-1)).detach()
            nv = torch.linalg.vector_norm(v)
            if float(nv) == 0.0:
                return torch.zeros((), dtype=y.dtype, device=y.device)
            return torch.linalg.vector_norm(jvp(terms, c["jac_t"], c["jac_yd"], v)) / nv


class Kvaerno3(ESDIRK):
    """Kvaerno's ESDIRK 3(2): 4 stages (3 implicit), L-stable, stiffly accurate, stage order 2,
    ``gamma = 0.4358665215...``; cubic Hermite dense output. Kvaerno, BIT 44 (2004)."""

    tableau = KVAERNO3


class Kvaerno5(ESDIRK):
    """Kvaerno's ESDIRK 5(4): 7 stages (6 implicit), L-stable, stiffly accurate, stage order 2,
    ``gamma = 0.26``; cubic Hermite dense output. Kvaerno, BIT 44 (2004)."""

    tableau = KVAERNO5
