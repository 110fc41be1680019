"""Stationary kernels with closed-form kernel means for the Lebesgue measure on [a, b].

For a kernel ``k(x, y) = kappa(|x - y|)`` write ``F(d) = int_0^d kappa(r) dr`` (odd-extended to
``d < 0``) and ``G(d) = int_0^d F``. Then, for the Lebesgue measure on ``[a, b]``,

    kernel mean     z(x) = int_a^b k(t, x) dt = F(b - x) - F(a - x),
    initial error   z0   = int_a^b int_a^b k(s, t) ds dt = 2 G(b - a).

Matern with half-integer ``nu = p + 1/2`` (Rasmussen & Williams 2006, eq. 4.16), ``u = sqrt(2 nu) r / l``:
``kappa(r) = exp(-u) * p!/(2p)! * sum_{i=0}^p (p+i)!/(i!(p-i)!) (2u)^{p-i}`` = ``exp(-u) q(u)``. With
``s = sqrt(2 nu)/l`` and ``Q1 = q + q' + q'' + ...``, ``Q2 = Q1 + Q1' + ...``:
``F(d) = (Q1(0) - Q1(sd) e^{-sd}) / s`` and ``G(d) = (Q1(0) d - (Q2(0) - Q2(sd) e^{-sd}) / s) / s``
(the antiderivative of ``p(u) e^{-u}`` is ``-(p + p' + p'' + ...) e^{-u}``).

RBF ``kappa(r) = exp(-r^2 / (2 l^2))``, ``c = sqrt(2) l``: ``F(d) = l sqrt(pi/2) erf(d / c)``,
``G(d) = l sqrt(pi/2) (d erf(d/c) + c/sqrt(pi) (exp(-d^2/c^2) - 1))``.

These match probnum's ``quad.kernel_embeddings`` and emukit's ``QuadratureProductMatern*`` closed forms;
every one is checked against ``scipy.integrate.quad`` in the tests. Each kernel evaluates in float64
(NumPy) and in arbitrary precision (mpmath), the latter for the ill-conditioned weight solves.
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
from scipy.special import erf


def _poly_derivative_sum(coeffs: list[Fraction]) -> list[Fraction]:
    """Coefficients of ``p + p' + p'' + ...`` for ``p = sum_k coeffs[k] u^k``."""
    out = [Fraction(0)] * len(coeffs)
    cur = list(coeffs)
    while cur:
        for k, c in enumerate(cur):
            out[k] += c
        cur = [k * cur[k] for k in range(1, len(cur))]
    return out


def _polyval(coeffs, u):
    acc = 0 * u
    for c in reversed(coeffs):
        acc = acc * u + c
    return acc


class Kernel:
    """A stationary kernel ``kappa(|x - y|)`` with lengthscale ``l``."""

    lengthscale: float

    def key(self) -> tuple:
        """Hashable identity (for weight caches)."""
        raise NotImplementedError

    def with_lengthscale(self, lengthscale: float) -> Kernel:
        raise NotImplementedError

    # float64 (NumPy) forms
    def kappa(self, r: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def F(self, d: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def G(self, d: float) -> float:
        raise NotImplementedError

    # arbitrary precision forms (mpmath scalars)
    def kappa_mp(self, r):
        raise NotImplementedError

    def F_mp(self, d):
        raise NotImplementedError

    def G_mp(self, d):
        raise NotImplementedError

    def __call__(self, x, y) -> np.ndarray:
        """Gram matrix ``k(x_i, y_j)`` in float64."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        return self.kappa(np.abs(x[:, None] - y[None, :]))

    def kernel_mean(self, x, a: float, b: float) -> np.ndarray:
        """``z(x) = int_a^b k(t, x) dt`` in float64."""
        x = np.asarray(x, dtype=np.float64)
        return self.F(b - x) - self.F(a - x)

    def initial_error(self, a: float, b: float) -> float:
        """``z0 = int_a^b int_a^b k(s, t) ds dt``."""
        return 2.0 * float(self.G(b - a))

    def kernel_mean_mp(self, x, a, b):
        return self.F_mp(b - x) - self.F_mp(a - x)

    def initial_error_mp(self, a, b):
        return 2 * self.G_mp(b - a)


class Matern(Kernel):
    """Matern kernel with half-integer smoothness ``nu`` in {1/2, 3/2, 5/2, 7/2} (any ``p + 1/2`` works).

    Sample paths are ``ceil(nu) - 1`` times differentiable; its RKHS is the Sobolev space of order
    ``nu + 1/2`` on an interval, so BQ converges as ``O(N^-(nu + 1/2))`` there (Kanagawa et al. 2020).
    """

    def __init__(self, nu: float = 2.5, lengthscale: float = 1.0):
        p = float(nu) - 0.5
        if not (p >= 0 and abs(p - round(p)) < 1e-12):
            raise ValueError(f"Matern nu must be a half-integer (1/2, 3/2, 5/2, 7/2, ...), got {nu!r}")
        lengthscale = float(lengthscale)
        if not (math.isfinite(lengthscale) and lengthscale > 0):
            raise ValueError(f"lengthscale must be finite and > 0, got {lengthscale!r}")
        self.p = int(round(p))
        self.nu = self.p + 0.5
        self.lengthscale = lengthscale
        p = self.p
        q = [Fraction(0)] * (p + 1)
        for i in range(p + 1):
            q[p - i] = Fraction(math.factorial(p), math.factorial(2 * p)) * Fraction(
                math.factorial(p + i), math.factorial(i) * math.factorial(p - i)) * 2 ** (p - i)
        self._q = q
        self._q1 = _poly_derivative_sum(q)
        self._q2 = _poly_derivative_sum(self._q1)
        self._qf = [float(c) for c in q]
        self._q1f = [float(c) for c in self._q1]
        self._q2f = [float(c) for c in self._q2]

    def __repr__(self) -> str:
        return f"Matern(nu={self.nu:g}, lengthscale={self.lengthscale:g})"

    def key(self) -> tuple:
        return ("matern", self.p, self.lengthscale)

    def with_lengthscale(self, lengthscale: float) -> Matern:
        return Matern(self.nu, lengthscale)

    @property
    def smoothness(self) -> float:
        """Sobolev order ``b = nu + 1/2`` of the RKHS: the BQ convergence rate ``N^-b``."""
        return self.nu + 0.5

    @property
    def s(self) -> float:
        return math.sqrt(2 * self.nu) / self.lengthscale

    def kappa(self, r):
        u = self.s * np.abs(np.asarray(r, dtype=np.float64))
        return _polyval(self._qf, u) * np.exp(-u)

    def F(self, d):
        d = np.asarray(d, dtype=np.float64)
        u = self.s * np.abs(d)
        return np.sign(d) * (self._q1f[0] - _polyval(self._q1f, u) * np.exp(-u)) / self.s

    def G(self, d):
        d = abs(float(d))
        s = self.s
        u = s * d
        return (self._q1f[0] * d - (self._q2f[0] - _polyval(self._q2f, u) * math.exp(-u)) / s) / s

    def _mp_coeffs(self, which):
        return [mpmath.mpf(c.numerator) / c.denominator for c in which]

    def _s_mp(self):
        return mpmath.sqrt(2 * self.p + 1) / mpmath.mpf(self.lengthscale)

    def kappa_mp(self, r):
        u = self._s_mp() * abs(r)
        return _polyval(self._mp_coeffs(self._q), u) * mpmath.exp(-u)

    def F_mp(self, d):
        s = self._s_mp()
        u = s * abs(d)
        q1 = self._mp_coeffs(self._q1)
        return mpmath.sign(d) * (q1[0] - _polyval(q1, u) * mpmath.exp(-u)) / s

    def G_mp(self, d):
        s = self._s_mp()
        d = abs(d)
        u = s * d
        q1, q2 = self._mp_coeffs(self._q1), self._mp_coeffs(self._q2)
        return (q1[0] * d - (q2[0] - _polyval(q2, u) * mpmath.exp(-u)) / s) / s


class RBF(Kernel):
    """Squared-exponential kernel ``exp(-r^2 / (2 l^2))`` (infinitely smooth sample paths)."""

    def __init__(self, lengthscale: float = 1.0):
        lengthscale = float(lengthscale)
        if not (math.isfinite(lengthscale) and lengthscale > 0):
            raise ValueError(f"lengthscale must be finite and > 0, got {lengthscale!r}")
        self.lengthscale = lengthscale

    def __repr__(self) -> str:
        return f"RBF(lengthscale={self.lengthscale:g})"

    def key(self) -> tuple:
        return ("rbf", self.lengthscale)

    def with_lengthscale(self, lengthscale: float) -> RBF:
        return RBF(lengthscale)

    smoothness = math.inf

    def kappa(self, r):
        r = np.asarray(r, dtype=np.float64)
        return np.exp(-0.5 * (r / self.lengthscale) ** 2)

    def F(self, d):
        ell = self.lengthscale
        return ell * math.sqrt(math.pi / 2) * erf(np.asarray(d, dtype=np.float64) / (math.sqrt(2) * ell))

    def G(self, d):
        ell, d = self.lengthscale, abs(float(d))
        c = math.sqrt(2) * ell
        return ell * math.sqrt(math.pi / 2) * (d * math.erf(d / c)
                                               + c / math.sqrt(math.pi) * math.expm1(-(d / c) ** 2))

    def kappa_mp(self, r):
        ell = mpmath.mpf(self.lengthscale)
        return mpmath.exp(-(r / ell) ** 2 / 2)

    def F_mp(self, d):
        ell = mpmath.mpf(self.lengthscale)
        return ell * mpmath.sqrt(mpmath.pi / 2) * mpmath.erf(d / (mpmath.sqrt(2) * ell))

    def G_mp(self, d):
        ell = mpmath.mpf(self.lengthscale)
        d = abs(d)
        c = mpmath.sqrt(2) * ell
        return ell * mpmath.sqrt(mpmath.pi / 2) * (d * mpmath.erf(d / c) + c / mpmath.sqrt(mpmath.pi)
                                                   * mpmath.expm1(-(d / c) ** 2))
