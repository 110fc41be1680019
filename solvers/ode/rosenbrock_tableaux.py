"""Rosenbrock (linearly implicit Runge-Kutta) tableaux as data, checked when built.

The method
----------
An ``s``-stage Rosenbrock method (Hairer & Wanner II, IV.7, (7.4) with (7.4') for non-autonomous
problems) advances ``y' = f(t, y)`` with ``J = df/dy(t0, y0)``, ``f_t = df/dt(t0, y0)`` by

    (I - h gamma J) k_i = h f(t0 + alpha_i h, y0 + sum_{j<i} alpha_ij k_j)
                          + h J sum_{j<i} gamma_ij k_j + gamma_i h^2 f_t,
    y1 = y0 + sum_j b_j k_j,          y1_hat = y0 + sum_j b_hat_j k_j,

with ``alpha_i = sum_j alpha_ij`` and ``gamma_i = sum_{j<=i} gamma_ij`` (``Gamma`` lower triangular
with the constant diagonal ``gamma``: one LU of ``I - h gamma J`` per step). It is implemented, as in
Hairer's RODAS code and OrdinaryDiffEq.jl, in the transformed variables ``u_i = sum_{j<=i} gamma_ij
k_j`` (HW II (7.25)), which need no product with ``J``:

    (I - h gamma J) u_i = h gamma [ f(t0 + c_i h, y0 + sum_{j<i} a_ij u_j) + sum_{j<i} (C_ij / h) u_j
                                    + d_i h f_t ],
    y1 = y0 + sum_j m_j u_j,          err = sum_j e_j u_j,

    (a_ij) = (alpha_ij) Gamma^-1,  (C_ij) = diag(1/gamma) - Gamma^-1,  m = b Gamma^-1,
    e = (b - b_hat) Gamma^-1,  c_i = alpha_i,  d_i = gamma_i.

A ``RosenbrockTableau`` stores this transformed form (the form the sources print for Rodas4 and
Rodas5P), derives the classical one (``alpha = A Gamma``, ``Gamma = (I/gamma - C)^-1``, ``b = m
Gamma``) and checks, when built: shapes, strictly lower ``A`` and ``C``, ``c = alpha 1`` and ``d =
Gamma 1``, and the order conditions of ``b`` (and ``b_hat``) up to the stated orders.

Order conditions
----------------
With the exact Jacobian, expanding ``f(y0 + sum alpha_ij k_j)`` and ``J sum gamma_ij k_j`` about
``y0`` gives B-series whose elementary weights are those of a Runge-Kutta method in which an edge
out of a vertex with a single child carries ``B = alpha + Gamma`` (diagonal included: the ``f'``
terms of the expansion and of ``J`` combine) and the edges out of a vertex with two or more children
carry ``alpha`` (the ``f''``, ``f'''``, ... terms). The condition of a rooted tree ``t`` of order
``rho(t)`` is then ``b . Phi(t) = 1 / gamma(t)`` (the tree density), exactly as for Runge-Kutta
methods; written with the strictly lower part ``beta = B - gamma I`` it becomes HW II Table 7.1
(order 2: ``sum b_j beta_jk = 1/2 - gamma``; order 3: ``sum b_j alpha_jk alpha_jl = 1/3``, ``sum
b_j beta_jk beta_kl = 1/6 - gamma + gamma^2``; ...). All rooted trees up to the stated order are
checked (1, 2, 4, 8, 17 trees up to orders 1-5). The dense output ``y(t0 + theta h) = y0 + sum_j
b_j(theta) k_j`` is checked the same way, ``b(theta) . Phi(t) = theta^rho(t) / gamma(t)``, up to its
stated order for every ``theta`` (the residuals are polynomials in ``theta``, so enough points make
it an identity).

A W-method keeps its order with any matrix in place of ``J`` (and of ``f_t``); ``w_order`` states
the order so kept, checked up to 2: ``sum b_j alpha_j = 1/2`` and ``sum b_j gamma_j = 0`` (the
``h^2 f' f`` and ``h^2 J f`` terms separately).

Dense output
------------
The accepted step's dense piece is ``P = dense_weights @ U / h`` (``U`` the stages ``u_j`` as rows)
and ``y(t0 + theta h) = y0 + h sum_r w_r(theta) P_r`` with ``w = dense_poly @ theta^q`` (ascending
powers), the form ``solvers.ode.dense.DenseOutput`` evaluates.

Tableaux
--------
* ``ROSENBROCK23``: Shampine & Reichelt, "The MATLAB ODE Suite", SIAM J. Sci. Comput. 18(1):1-22
  (1997), section 2 (the formulas of ``ode23s``): ``d = 1/(2 + sqrt 2)``, ``e32 = 6 + sqrt 2``,
  W-method of order 2, L-stable, with an order-3 companion for the error estimate and the
  continuous extension ``y0 + h (theta (1-theta)/(1-2d) k1 + theta (theta-2d)/(1-2d) k2)`` (order 2).
* ``RODAS4``: Hairer & Wanner II, section VI.4 (RODAS), with the coefficients of Hairer's ``rodas.f``
  (``ROCOEF``, ``METH = 1``), as in OrdinaryDiffEq.jl's ``RODAS4A/C/c/d/H`` and Numerical Recipes
  3rd ed. ``StepperRoss``: order 4(3), 6 stages, stiffly accurate, dense output of order 3.
* ``RODAS5P``: G. Steinebach, "Construction of Rosenbrock-Wanner method Rodas5P and numerical
  benchmarks within the Julia Differential Equations package", BIT Numer. Math. 63:27 (2023); the
  coefficients as OrdinaryDiffEq.jl's ``lib/OrdinaryDiffEqRosenbrock/src/rosenbrock_tableaus.jl``
  (SciML/OrdinaryDiffEq.jl at b211787f7b18)
  (``RODAS5PA``, ``RODAS5PC``, ``RODAS5Pc``, ``RODAS5Pd``, ``RODAS5PH``; its ``b`` is the last row of
  ``A`` plus ``u_8``, its error the last stage ``u_8``): order 5(4), 8 stages, stiffly accurate,
  dense output of order 4. These 16-digit values meet the order-5 (and dense order-4) conditions
  to about 1e-14 (they fail order 6 by 1e-2), which is the check on the transcription.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

import numpy as np

_TOL = 1e-10

Tree = tuple  # a rooted tree: the sorted tuple of its children's trees (a leaf is ())


# -- rooted trees and elementary weights --------------------------------------------------------------
@cache
def rooted_trees(order: int) -> tuple[Tree, ...]:
    """All rooted trees with ``order`` vertices (1, 1, 2, 4, 9, 20, ... of them), each as the sorted
    tuple of its children's subtrees."""
    if order == 1:
        return ((),)

    def forests(n: int, max_key: tuple | None):
        # Multisets of trees with n vertices in all, as non-increasing sequences of (order, tree).
        if n == 0:
            yield ()
            return
        for k in range(n, 0, -1):
            for t in rooted_trees(k):
                key = (k, t)
                if max_key is not None and key > max_key:
                    continue
                for rest in forests(n - k, key):
                    yield (t, *rest)

    return tuple(sorted({tuple(sorted(f)) for f in forests(order - 1, None)}))


def tree_order(t: Tree) -> int:
    return 1 + sum(tree_order(u) for u in t)


def tree_density(t: Tree) -> int:
    """``gamma(t)``: the order times the densities of the subtrees."""
    return tree_order(t) * math.prod(tree_density(u) for u in t)


def tree_label(t: Tree) -> str:
    """Bracket notation: ``t`` a leaf, ``[t,t]`` a root with two leaves."""
    return "t" if not t else "[" + ",".join(tree_label(u) for u in t) + "]"


def _condition_text(t: Tree) -> str:
    """The elementary weight as a sum, e.g. ``sum b_j B_jk a_kl a_km`` (``B = alpha + Gamma``,
    ``a = alpha``): readable names for the error messages."""
    letters = iter("jklmnopqrsuvwxyz")
    terms: list[str] = []

    def walk(node: Tree, idx: str) -> None:
        coef = "B" if len(node) == 1 else "a"
        for child in node:
            nxt = next(letters)
            terms.append(f"{coef}_{idx}{nxt}")
            walk(child, nxt)

    root = next(letters)
    walk(t, root)
    return "sum b_" + root + "".join(" " + x for x in terms)


def elementary_weights(t: Tree, alpha: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``Phi(t)`` per stage: ``B @ Phi(u)`` for a single child ``u``; the product of ``alpha @
    Phi(u)`` over two or more children; ones for a leaf."""
    s = alpha.shape[0]
    if not t:
        return np.ones(s)
    if len(t) == 1:
        return B @ elementary_weights(t[0], alpha, B)
    out = np.ones(s)
    for u in t:
        out = out * (alpha @ elementary_weights(u, alpha, B))
    return out


def order_conditions(alpha: np.ndarray, Gamma: np.ndarray, b: np.ndarray,
                     order: int) -> list[tuple[str, float]]:
    """``(description, residual)`` of every rooted-tree condition up to ``order`` for weights ``b``
    of the Rosenbrock method ``(alpha, Gamma)`` (exact Jacobian)."""
    B = alpha + Gamma
    out = []
    for p in range(1, order + 1):
        for t in rooted_trees(p):
            res = float(b @ elementary_weights(t, alpha, B)) - 1.0 / tree_density(t)
            out.append((f"order-{p} condition for the tree {tree_label(t)}: {_condition_text(t)} = "
                        f"1/{tree_density(t)}", res))
    return out


def w_order_conditions(alpha: np.ndarray, Gamma: np.ndarray, b: np.ndarray,
                       order: int) -> list[tuple[str, float]]:
    """The conditions for order ``order <= 2`` with an arbitrary matrix in place of ``J``."""
    if order > 2:
        raise NotImplementedError("W-method order conditions are implemented up to order 2")
    out = [("W-method order-1 condition sum b_j = 1", float(b.sum()) - 1.0)]
    if order >= 2:
        out.append(("W-method order-2 condition sum b_j alpha_j = 1/2", float(b @ alpha.sum(axis=1)) - 0.5))
        out.append(("W-method order-2 condition sum b_j gamma_j = 0 (gamma_j = sum_k Gamma_jk)",
                    float(b @ Gamma.sum(axis=1))))
    return out


def _lower_inverse(L: np.ndarray) -> np.ndarray:
    """The inverse of a lower-triangular matrix by forward substitution: exactly lower triangular
    (a general inverse pivots and leaves rounding above the diagonal)."""
    s = L.shape[0]
    X = np.zeros_like(L)
    for j in range(s):
        X[j, j] = 1.0 / L[j, j]
        for i in range(j + 1, s):
            X[i, j] = -(L[i, j:i] @ X[j:i, j]) / L[i, i]
    return X


def _as_matrix(x, label: str, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{label}: {name} must be numeric (nested sequences): {err}") from err
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{label}: {name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{label}: {name} has NaN or Inf entries")
    return arr


@dataclass(frozen=True)
class RosenbrockTableau:
    """A Rosenbrock / W-method tableau in the transformed form it is implemented in (see the module
    docstring); checked when built.

    Args:
        A: ``a_ij``, strictly lower triangular ``s x s``: stage ``i`` evaluates ``f`` at
            ``y0 + sum_j a_ij u_j``.
        C: ``C_ij``, strictly lower triangular ``s x s``: the ``sum_j (C_ij / h) u_j`` term of stage ``i``.
        gamma: the diagonal of ``Gamma`` (``W = I - h gamma J``).
        b: ``m_j``, the weights of ``y1 = y0 + sum_j m_j u_j``.
        btilde: ``e_j``, the error estimate ``sum_j e_j u_j`` (``= y1 - y1_hat``).
        c: the nodes ``c_i`` (stage times ``t0 + c_i h``).
        d: the time-derivative coefficients ``d_i`` (``gamma_i`` of HW II (7.4')).
        order, embedded_order: orders of ``y1`` and of ``y1_hat``.
        dense_weights: ``r x s``; the dense piece is ``dense_weights @ U / h``.
        dense_poly: ``r x q`` ascending coefficients of the weight polynomials ``w_r(theta)``.
        dense_order: order of the dense output.
        w_order: the order kept with an arbitrary Jacobian approximation (a W-method), or ``None``.
        name: label.

    Derived: ``alpha``, ``Gamma``, ``b_classic``, ``b_hat`` (the classical form), ``stages``,
    ``fsal`` (the last stage evaluates ``f(t0 + h, y1)``), ``last_solution_stage`` (stages after it
    feed only the error estimate).
    """

    A: tuple
    C: tuple
    gamma: float
    b: tuple
    btilde: tuple
    c: tuple
    d: tuple
    order: int
    embedded_order: int
    dense_weights: tuple
    dense_poly: tuple
    dense_order: int
    w_order: int | None = None
    name: str = ""
    alpha: np.ndarray = field(init=False, repr=False, compare=False)
    Gamma: np.ndarray = field(init=False, repr=False, compare=False)
    b_classic: np.ndarray = field(init=False, repr=False, compare=False)
    b_hat: np.ndarray = field(init=False, repr=False, compare=False)
    fsal: bool = field(init=False, compare=False)
    last_solution_stage: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        label = self.name or "RosenbrockTableau"
        b = _as_matrix(self.b, label, "b")
        if b.ndim != 1 or b.size < 1:
            raise ValueError(f"{label}: b must be a non-empty 1-D sequence, got shape {b.shape}")
        s = b.size
        A = _as_matrix(self.A, label, "A", (s, s))
        C = _as_matrix(self.C, label, "C", (s, s))
        e = _as_matrix(self.btilde, label, "btilde", (s,))
        c = _as_matrix(self.c, label, "c", (s,))
        d = _as_matrix(self.d, label, "d", (s,))
        dw = _as_matrix(self.dense_weights, label, "dense_weights")
        dp = _as_matrix(self.dense_poly, label, "dense_poly")
        for name, m in (("A", A), ("C", C)):
            if np.any(np.triu(m) != 0):
                i, j = np.argwhere(np.triu(m) != 0)[0]
                raise ValueError(f"{label}: {name} must be strictly lower triangular; {name}[{i}, {j}] = "
                                 f"{m[i, j]!r}")
        g = float(self.gamma)
        if not (math.isfinite(g) and g > 0):
            raise ValueError(f"{label}: gamma must be finite and positive, got {self.gamma!r}")
        for name, p in (("order", self.order), ("embedded_order", self.embedded_order),
                        ("dense_order", self.dense_order)):
            if not isinstance(p, int) or isinstance(p, bool) or p < 1:
                raise ValueError(f"{label}: {name} must be a positive int, got {p!r}")
        if dw.ndim != 2 or dw.shape[1] != s or dp.ndim != 2 or dp.shape[0] != dw.shape[0]:
            raise ValueError(f"{label}: dense_weights must be r x {s} and dense_poly r x q with the same r; "
                             f"got {dw.shape} and {dp.shape}")

        # The classical form (HW II (7.25) read backwards).
        Gamma = _lower_inverse(np.eye(s) / g - C)
        alpha = A @ Gamma  # strictly lower triangular, as A is
        b_classic = b @ Gamma
        b_hat = (b - e) @ Gamma

        # Nodes and time-derivative coefficients: the autonomised system must give the same step.
        rows = alpha.sum(axis=1)
        if np.max(np.abs(rows - c)) > _TOL:
            i = int(np.argmax(np.abs(rows - c)))
            raise ValueError(f"{label}: c[{i}] = {c[i]!r} but row {i} of alpha = A Gamma sums to {rows[i]!r}")
        gsum = Gamma.sum(axis=1)
        if np.max(np.abs(gsum - d)) > _TOL:
            i = int(np.argmax(np.abs(gsum - d)))
            raise ValueError(f"{label}: d[{i}] = {d[i]!r} but row {i} of Gamma sums to {gsum[i]!r}")

        for name, res in order_conditions(alpha, Gamma, b_classic, self.order):
            if abs(res) > _TOL:
                raise ValueError(f"{label}: the {name} fails for b (residual {res:.3e})")
        for name, res in order_conditions(alpha, Gamma, b_hat, self.embedded_order):
            if abs(res) > _TOL:
                raise ValueError(f"{label}: the {name} fails for the embedded b_hat (residual {res:.3e})")
        if self.w_order is not None:
            for name, res in w_order_conditions(alpha, Gamma, b_classic, self.w_order):
                if abs(res) > _TOL:
                    raise ValueError(f"{label}: the {name} fails for b (residual {res:.3e})")
        self._check_dense(dw, dp, b, alpha, Gamma, label)

        fsal = bool(c[-1] == 1.0 and b[-1] == 0.0 and np.array_equal(A[-1, :-1], b[:-1]))
        used = np.flatnonzero((b != 0) | np.any(dw != 0, axis=0))
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "Gamma", Gamma)
        object.__setattr__(self, "b_classic", b_classic)
        object.__setattr__(self, "b_hat", b_hat)
        object.__setattr__(self, "fsal", fsal)
        object.__setattr__(self, "last_solution_stage", int(used.max()) if used.size else 0)

    def _check_dense(self, dw: np.ndarray, dp: np.ndarray, b: np.ndarray, alpha: np.ndarray,
                     Gamma: np.ndarray, label: str) -> None:
        q = dp.shape[1]
        if np.any(np.abs(dp[:, 0]) > 0):
            raise ValueError(f"{label}: the dense output must start at y0 (dense_poly[:, 0] = 0)")
        # At theta = 1 the dense output must be the step's own solution.
        at_one = dp.sum(axis=1) @ dw
        if np.max(np.abs(at_one - b)) > _TOL:
            raise ValueError(f"{label}: the dense output at theta = 1 is not y1 (weights {at_one} vs b {b})")
        # Weights in the classical basis: y(theta) - y0 = w(theta) . (dense_weights Gamma K).
        B = alpha + Gamma
        D = dw @ Gamma
        # Each residual is a polynomial in theta of degree <= max(q - 1, dense_order) vanishing at 0: zero
        # at that many further points makes it zero for every theta.
        npts = max(q - 1, self.dense_order)
        for theta in np.arange(1, npts + 1) / npts:
            w = dp @ theta ** np.arange(q)
            b_theta = w @ D
            for p in range(1, self.dense_order + 1):
                for t in rooted_trees(p):
                    res = float(b_theta @ elementary_weights(t, alpha, B)) - theta**p / tree_density(t)
                    if abs(res) > _TOL:
                        text = _condition_text(t).replace("b_", "b(theta)_", 1)
                        raise ValueError(
                            f"{label}: the dense output fails the order-{p} condition for the tree "
                            f"{tree_label(t)}: {text} = theta^{p}/{tree_density(t)} at theta = {theta:.3g} "
                            f"(residual {res:.3e})")

    # -- facts ----------------------------------------------------------------------------------
    @property
    def stages(self) -> int:
        return len(self.b)

    @property
    def stiffly_accurate(self) -> bool:
        """``b`` is the last row of ``alpha + Gamma`` (``y1`` is the last stage's implicit solution)."""
        return bool(np.allclose(self.b_classic, (self.alpha + self.Gamma)[-1], atol=1e-12, rtol=0))

    @classmethod
    def from_classical(cls, alpha, Gamma, b, b_hat, *, order: int, embedded_order: int,
                       dense_weights, dense_poly, dense_order: int, w_order: int | None = None,
                       name: str = "") -> RosenbrockTableau:
        """A tableau from the classical form ``(alpha, Gamma, b, b_hat)`` (HW II (7.4)). The dense
        output's ``dense_weights`` act on the classical stages ``k_j / h`` (the piece is
        ``dense_weights @ K / h``); they are transformed with the rest (``@ Gamma^-1``)."""
        label = name or "RosenbrockTableau"
        b_ = _as_matrix(b, label, "b")
        s = b_.size
        al = _as_matrix(alpha, label, "alpha", (s, s))
        G = _as_matrix(Gamma, label, "Gamma", (s, s))
        bh = _as_matrix(b_hat, label, "b_hat", (s,))
        if np.any(np.triu(al) != 0):
            raise ValueError(f"{label}: alpha must be strictly lower triangular")
        if np.any(np.triu(G, 1) != 0):
            raise ValueError(f"{label}: Gamma must be lower triangular")
        diag = np.diag(G)
        if np.any(diag != diag[0]):
            raise ValueError(f"{label}: Gamma must have a constant diagonal (one LU per step), got {diag}")
        g = float(diag[0])
        Gi = _lower_inverse(G)
        A = al @ Gi
        C = np.tril(np.eye(s) / g - Gi, -1)  # the diagonal cancels exactly
        m = b_ @ Gi
        e = (b_ - bh) @ Gi
        dw = _as_matrix(dense_weights, label, "dense_weights") @ Gi

        def tup(x: np.ndarray) -> tuple:
            return tuple(map(tuple, x.tolist())) if x.ndim == 2 else tuple(x.tolist())

        return cls(A=tup(A), C=tup(C), gamma=g, b=tup(m), btilde=tup(e), c=tup(al.sum(axis=1)),
                   d=tup(G.sum(axis=1)), order=order, embedded_order=embedded_order, dense_weights=tup(dw),
                   dense_poly=tup(np.asarray(dense_poly, dtype=np.float64)), dense_order=dense_order,
                   w_order=w_order, name=name)


# -- Rosenbrock23 (Shampine & Reichelt 1997, ode23s) ------------------------------------------------------
def _rosenbrock23() -> RosenbrockTableau:
    # SIAM J. Sci. Comput. 18(1), section 2: W = I - h d J,
    #   W k1 = F0 + h d T;   F1 = F(t + h/2, y + h k1 / 2);   W (k2 - k1) = F1 - k1;   y1 = y + h k2;
    #   F2 = F(t + h, y1);   W k3 = F2 - e32 (k2 - F1) - 2 (k1 - F0) + h d T;   err = h/6 (k1 - 2 k2 + k3).
    # Eliminating F0, F1 with the stage equations puts it in the form (7.4) (stages as slopes k_i / h):
    #   W k2 = F1 - h d J k1               -> gamma_21 = -d
    #   W k3 = F2 + h J [d (e32 - 2) k1 - d e32 k2] - h d T  -> gamma_31 = d (e32 - 2), gamma_32 = -d e32
    # (consistent with gamma_i = sum_j gamma_ij: d, 0, -d), b = (0, 1, 0) and the third-order
    # companion b_hat = b + (1, -2, 1)/6 = (1, 4, 1)/6 (err = y1_hat - y1 up to sign).
    r2 = math.sqrt(2.0)
    d = 1.0 / (2.0 + r2)
    e32 = 6.0 + r2
    alpha = ((0.0, 0.0, 0.0), (0.5, 0.0, 0.0), (0.0, 1.0, 0.0))
    Gamma = ((d, 0.0, 0.0), (-d, d, 0.0), (d * (e32 - 2.0), -d * e32, d))
    q = 1.0 / (1.0 - 2.0 * d)
    # y(t + theta h) = y + h (theta (1 - theta)/(1 - 2d) k1 + theta (theta - 2d)/(1 - 2d) k2)
    # (Shampine & Reichelt, after (11); OrdinaryDiffEq.jl's rosenbrock2332pre0).
    return RosenbrockTableau.from_classical(
        alpha, Gamma, (0.0, 1.0, 0.0), (1 / 6, 2 / 3, 1 / 6), order=2, embedded_order=3,
        dense_weights=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
        dense_poly=((0.0, q, -q), (0.0, -2.0 * d * q, q)), dense_order=2, w_order=2, name="Rosenbrock23")


ROSENBROCK23 = _rosenbrock23()


def _stiffly_accurate_b(A: tuple) -> tuple[tuple, tuple]:
    """``b`` and ``btilde`` of a Rodas method: ``y1 = (last stage's argument) + u_s`` and the error
    is ``u_s`` (the embedded solution is the last stage's argument)."""
    s = len(A)
    b = tuple(A[-1][:-1]) + (1.0,)
    e = (0.0,) * (s - 1) + (1.0,)
    return b, e


def _rodas_dense(b: tuple, H: tuple) -> tuple[tuple, tuple]:
    """The Rodas interpolant ``y(theta) = (1-theta) y0 + theta (y1 + (1-theta)(k1 + theta k2 + ...))``,
    ``k_r = sum_j H_rj u_j`` (Hairer's ``rodas.f`` CONTRO; OrdinaryDiffEq.jl ``rosenbrock_interpolants``),
    as ``dense_weights = [b; H]`` and the weight polynomials ``theta`` and ``theta^(r) (1 - theta)``
    ``(r = 1 ... len(H))``."""
    r = len(H)
    q = r + 2
    poly = np.zeros((r + 1, q))
    poly[0, 1] = 1.0
    for i in range(r):
        poly[i + 1, i + 1] = 1.0
        poly[i + 1, i + 2] = -1.0
    return (tuple(b), *map(tuple, H)), tuple(map(tuple, poly))


# -- Rodas4 (Hairer & Wanner II, VI.4; rodas.f ROCOEF METH = 1) -------------------------------------------
_RODAS4_A = (
    (0, 0, 0, 0, 0, 0),
    (1.544, 0, 0, 0, 0, 0),
    (0.9466785280815826, 0.2557011698983284, 0, 0, 0, 0),
    (3.314825187068521, 2.896124015972201, 0.9986419139977817, 0, 0, 0),
    (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950, 0, 0),
    (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950, 1, 0),
)
_RODAS4_C = (
    (0, 0, 0, 0, 0, 0),
    (-5.6688, 0, 0, 0, 0, 0),
    (-2.430093356833875, -0.2063599157091915, 0, 0, 0, 0),
    (-0.1073529058151375, -9.594562251023355, -20.47028614809616, 0, 0, 0),
    (7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160, 0, 0),
    (8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054, 0),
)
_RODAS4_H = (
    (10.12623508344586, -7.487995877610167, -34.80091861555747, -7.992771707568823, 1.025137723295662, 0),
    (-0.6762803392801253, 6.087714651680015, 16.43084320892478, 24.76722511418386, -6.594389125716872, 0),
)
_b4, _e4 = _stiffly_accurate_b(_RODAS4_A)
_dw4, _dp4 = _rodas_dense(_b4, _RODAS4_H)
RODAS4 = RosenbrockTableau(
    A=_RODAS4_A, C=_RODAS4_C, gamma=0.25, b=_b4, btilde=_e4,
    c=(0.0, 0.386, 0.21, 0.63, 1.0, 1.0),
    # d4 as printed in rodas.f (the row sum of Gamma to 16 digits; OrdinaryDiffEq rounds it to -0.0362).
    d=(0.25, -0.1043, 0.1035, -0.3620000000000023e-01, 0.0, 0.0),
    order=4, embedded_order=3, dense_weights=_dw4, dense_poly=_dp4, dense_order=3, name="Rodas4")


# -- Rodas5P (Steinebach 2023; OrdinaryDiffEq.jl RODAS5PA/C/c/d/H) ------------------------------------------
_RODAS5P_A = (
    (0, 0, 0, 0, 0, 0, 0, 0),
    (3.0, 0, 0, 0, 0, 0, 0, 0),
    (2.849394379747939, 0.45842242204463923, 0, 0, 0, 0, 0, 0),
    (-6.954028509809101, 2.489845061869568, -10.358996098473584, 0, 0, 0, 0, 0),
    (2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641, 0, 0, 0, 0),
    (-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256, 0.030198172008377946,
     0, 0, 0),
    (-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256, 0.030198172008377946,
     1, 0, 0),
    (-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256, 0.030198172008377946,
     1, 1, 0),
)
_RODAS5P_C = (
    (0, 0, 0, 0, 0, 0, 0, 0),
    (-14.155112264123755, 0, 0, 0, 0, 0, 0, 0),
    (-17.97296035885952, -2.859693295451294, 0, 0, 0, 0, 0, 0),
    (147.12150275711716, -1.41221402718213, 71.68940251302358, 0, 0, 0, 0, 0),
    (165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306, 0, 0, 0, 0),
    (24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125, -0.6610691825249471,
     0, 0, 0),
    (30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783, -19.097331116725623,
     -28.087943162872662, 0, 0),
    (37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047, -40.06618937091002,
     -54.66780262877968, -9.48861652309627, 0),
)
_RODAS5P_H = (
    (25.948786856663858, -2.5579724845846235, 10.433815404888879, -2.3679251022685204, 0.524948541321073,
     1.1241088310450404, 0.4272876194431874, -0.17202221070155493),
    (-9.91568850695171, -0.9689944594115154, 3.0438037242978453, -24.495224566215796, 20.176138334709044,
     15.98066361424651, -6.789040303419874, -6.710236069923372),
    (11.419903575922262, 2.8879645146136994, 72.92137995996029, 80.12511834622643, -52.072871366152654,
     -59.78993625266729, -0.15582684282751913, 4.883087185713722),
)
_b5, _e5 = _stiffly_accurate_b(_RODAS5P_A)
_dw5, _dp5 = _rodas_dense(_b5, _RODAS5P_H)
RODAS5P = RosenbrockTableau(
    A=_RODAS5P_A, C=_RODAS5P_C, gamma=0.21193756319429014, b=_b5, btilde=_e5,
    c=(0.0, 0.6358126895828704, 0.4095798393397535, 0.9769306725060716, 0.4288403609558664, 1.0, 1.0, 1.0),
    d=(0.21193756319429014, -0.42387512638858027, -0.3384627126235924, 1.8046452872882734, 2.325825639765069,
       0.0, 0.0, 0.0),
    order=5, embedded_order=4, dense_weights=_dw5, dense_poly=_dp5, dense_order=4, name="Rodas5P")

__all__ = ["RosenbrockTableau", "ROSENBROCK23", "RODAS4", "RODAS5P", "rooted_trees", "order_conditions",
           "w_order_conditions", "elementary_weights", "tree_density", "tree_label"]
