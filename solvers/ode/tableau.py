"""Butcher tableaux as data, checked for consistency when built.

An explicit Runge-Kutta method with ``s`` stages advances ``y_n`` by

    k_i     = f(t_n + c_i h, y_n + h * sum_{j<i} a_ij k_j)
    y_{n+1} = y_n + h * sum_i b_i k_i
    err     = h * sum_i e_i k_i,       e = b - b_hat  (the embedded lower-order solution)

(Hairer, Norsett, Wanner, *Solving ODEs I*, section II.1). Building a ``ButcherTableau`` checks
that ``a`` is strictly lower triangular, that its row sums equal ``c``, that ``b`` sums to one and
``e`` to zero, and that ``b`` (and ``b_hat``) satisfy the order conditions up to the claimed order
(all rooted trees up to order 4; beyond that the convergence tests are the check). It also derives
the real stability-interval length used to normalise the stiffness estimate, and the coefficients
of the dense-output polynomial.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_TOL = 1e-10


def _order_conditions(b: np.ndarray, a: np.ndarray, c: np.ndarray, order: int) -> list[tuple[str, float]]:
    """Residuals of the rooted-tree order conditions up to ``min(order, 4)``."""
    e = np.ones_like(c)
    conds: list[tuple[str, float, float]] = [("sum b = 1", b @ e, 1.0)]
    if order >= 2:
        conds.append(("b.c = 1/2", b @ c, 1 / 2))
    if order >= 3:
        conds += [("b.c^2 = 1/3", b @ c**2, 1 / 3), ("b.Ac = 1/6", b @ a @ c, 1 / 6)]
    if order >= 4:
        conds += [("b.c^3 = 1/4", b @ c**3, 1 / 4), ("b.(c*Ac) = 1/8", b @ (c * (a @ c)), 1 / 8),
                  ("b.Ac^2 = 1/12", b @ a @ c**2, 1 / 12), ("b.AAc = 1/24", b @ a @ a @ c, 1 / 24)]
    return [(name, float(value - target)) for name, value, target in conds]


def stability_polynomial(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Coefficients (ascending) of R(z) = 1 + sum_k z^k b^T A^{k-1} 1 for an explicit method."""
    s = len(b)
    coeffs = [1.0]
    v = np.ones(s)
    for _ in range(s):
        coeffs.append(float(b @ v))
        v = a @ v
    return np.trim_zeros(np.array(coeffs), "b")


def real_stability_size(a: np.ndarray, b: np.ndarray) -> float:
    """Length of the interval [-x, 0] of the real axis on which |R(z)| <= 1."""
    poly = np.polynomial.Polynomial(stability_polynomial(a, b))
    grid = np.linspace(0.0, 20.0, 200_001)
    bad = np.abs(poly(-grid)) > 1.0 + 1e-12
    if not bad.any():
        return float(grid[-1])
    hi = grid[np.argmax(bad)]
    lo = hi - (grid[1] - grid[0])
    for _ in range(60):  # bisection to machine precision on the first crossing
        mid = 0.5 * (lo + hi)
        if abs(poly(-mid)) > 1.0 + 1e-12:
            hi = mid
        else:
            lo = mid
    return float(lo)


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta tableau.

    Args:
        a: strictly lower-triangular ``s x s`` stage matrix (nested sequences).
        b: solution weights (length ``s``).
        c: nodes (length ``s``).
        order: order of the propagated solution ``b``.
        e: error weights ``b - b_hat`` of the embedded method, or ``None`` (no error estimate).
        embedded_order: order of ``b_hat``.
        fsal: first-same-as-last: the last stage is ``f(t_{n+1}, y_{n+1})`` and is reused as the
            next step's first stage.
        dense: the dense-output rule: ``"hermite"`` (cubic Hermite from y0, y1, f0, f1, order 3),
            ``"hermite_mid"`` (quartic through y0, y1, f0, f1 and ``y(1/2) = y0 + h sum mid_i k_i``,
            order 4; Shampine 1986) or ``"free"`` (``b_i(theta)`` polynomials given in ``interp``).
        mid: weights for the midpoint value (``dense="hermite_mid"``).
        interp: ``s x m`` ascending polynomial coefficients of ``b_i(theta)`` (``dense="free"``).
        name: label.
    """

    a: tuple
    b: tuple
    c: tuple
    order: int
    e: tuple | None = None
    embedded_order: int | None = None
    fsal: bool = False
    dense: str = "hermite"
    mid: tuple | None = None
    interp: tuple | None = None
    name: str = ""
    # Derived at construction.
    stability_size: float = field(init=False)
    stiffness_pair: tuple[int, int] = field(init=False)
    dense_poly: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        a = np.asarray(self.a, dtype=np.float64)
        b = np.asarray(self.b, dtype=np.float64)
        c = np.asarray(self.c, dtype=np.float64)
        s = len(b)
        label = self.name or "tableau"
        if a.shape != (s, s) or c.shape != (s,):
            raise ValueError(f"{label}: a must be {s}x{s} and c of length {s}; got {a.shape}, {c.shape}")
        if np.any(np.triu(a) != 0):
            raise ValueError(f"{label}: a must be strictly lower triangular for an explicit method")
        rows = a.sum(axis=1)
        if np.max(np.abs(rows - c)) > _TOL:
            i = int(np.argmax(np.abs(rows - c)))
            raise ValueError(f"{label}: row {i} of a sums to {rows[i]!r}, but c[{i}] = {c[i]!r}")
        for name, res in _order_conditions(b, a, c, self.order):
            if abs(res) > _TOL:
                raise ValueError(f"{label}: order condition {name} fails for b (residual {res:.3e})")
        if self.e is not None:
            e = np.asarray(self.e, dtype=np.float64)
            if e.shape != (s,):
                raise ValueError(f"{label}: error weights must have length {s}")
            if abs(e.sum()) > _TOL:
                raise ValueError(f"{label}: error weights sum to {e.sum()!r}, not 0")
            if self.embedded_order is None:
                raise ValueError(f"{label}: embedded_order is required with error weights")
            for name, res in _order_conditions(b - e, a, c, self.embedded_order):
                if abs(res) > _TOL:
                    raise ValueError(f"{label}: order condition {name} fails for b_hat (residual {res:.3e})")
        if self.fsal and (np.max(np.abs(a[-1, :-1] - b[:-1])) > _TOL or b[-1] != 0 or c[-1] != 1):
            raise ValueError(f"{label}: FSAL needs a[-1] = b, b[-1] = 0 and c[-1] = 1")
        object.__setattr__(self, "stability_size", real_stability_size(a, b))
        object.__setattr__(self, "stiffness_pair", _stiffness_pair(c))
        object.__setattr__(self, "dense_poly", self._dense_poly(b, a))

    @property
    def stages(self) -> int:
        return len(self.b)

    @property
    def adaptive(self) -> bool:
        return self.e is not None

    @property
    def dense_stages(self) -> int:
        """Stages the dense output needs: ``s``, plus ``f(t1, y1)`` for non-FSAL Hermite rules."""
        return self.dense_poly.shape[0]

    @property
    def dense_order(self) -> int:
        return {"hermite": 3, "hermite_mid": 4, "free": 4}[self.dense]

    def _dense_poly(self, b: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Matrix P with ``y(t0 + theta h) = y0 + h sum_i (sum_j P_ij theta^j) k_i``.

        The Hermite rules are written in the stage basis: ``f0 = k_1``, ``f1 = k_s`` (FSAL) or an
        extra stage ``k_{s+1} = f(t1, y1)`` (otherwise), ``y1 - y0 = h b.k``, ``y_mid - y0 = h mid.k``.
        """
        s = len(b)
        if self.dense == "free":
            if self.interp is None:
                raise ValueError(f"{self.name}: dense='free' needs interp coefficients")
            p = np.asarray(self.interp, dtype=np.float64)
            if p.shape[0] != s:
                raise ValueError(f"{self.name}: interp must have one row per stage")
            return p
        n = s if self.fsal else s + 1
        i1 = s - 1 if self.fsal else s  # where f(t1, y1) lives
        bb = np.zeros(n)
        bb[:s] = b
        e0 = np.zeros(n)
        e0[0] = 1.0
        e1 = np.zeros(n)
        e1[i1] = 1.0
        if self.dense == "hermite":
            # p(theta) = y0 + h01 (y1 - y0) + h [h10 f0 + h11 f1], monomial coefficients, ascending.
            h01 = np.array([0, 0, 3, -2.0])
            h10 = np.array([0, 1, -2, 1.0])
            h11 = np.array([0, 0, -1, 1.0])
            return np.outer(bb, h01) + np.outer(e0, h10) + np.outer(e1, h11)
        if self.dense == "hermite_mid":
            if self.mid is None:
                raise ValueError(f"{self.name}: dense='hermite_mid' needs mid weights")
            mid = np.zeros(n)
            mid[:s] = self.mid
            # Quartic q(theta) = sum_j q_j theta^j for q(0)=0, q(1)=d1, q'(0)=g0, q'(1)=g1, q(1/2)=dm
            # (all relative to y0 and divided by h); solve for the basis of each datum.
            m = np.array([[1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0], [0, 1, 2, 3, 4],
                          [1, 0.5, 0.25, 0.125, 0.0625]], dtype=np.float64)
            minv = np.linalg.inv(m)  # columns: response to each datum
            return (np.outer(bb, minv[:, 1]) + np.outer(e0, minv[:, 2]) + np.outer(e1, minv[:, 3])
                    + np.outer(mid, minv[:, 4]))
        raise ValueError(f"{self.name}: unknown dense rule {self.dense!r}")


def _stiffness_pair(c: np.ndarray) -> tuple[int, int]:
    """Stages (i, j), j > i, whose difference gives Hairer's eigenvalue estimate.

    The last pair evaluated at the same time node (Tsit5/DP5: stages 6 and 7, both at t + h) so the
    difference of the f's is a Jacobian-times-vector without a time-derivative term; otherwise the
    last two stages. ``(-1, -1)`` for one-stage methods (no estimate).
    """
    s = len(c)
    if s < 2:
        return (-1, -1)
    for j in range(s - 1, 0, -1):
        for i in range(j - 1, -1, -1):
            if c[i] == c[j] and j > 0:
                return (i, j)
    return (s - 2, s - 1)


def polynomial_from_roots(scale: float, roots: list[float], power_of_theta: int) -> np.ndarray:
    """Ascending coefficients of ``scale * theta^power * prod(theta - r)``."""
    p = np.polynomial.Polynomial([scale])
    for r in roots:
        p = p * np.polynomial.Polynomial([-r, 1.0])
    p = p * np.polynomial.Polynomial([0.0] * power_of_theta + [1.0])
    return p.coef
