"""Problem definitions: what to solve, independent of how.

Problems are frozen dataclasses validated when built: a bad problem raises ``ValueError`` or
``TypeError`` before any solver sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from .checks import check_finite, check_floating, check_signature, check_span


class _TimeSpan:
    """``t0`` and ``t1`` of a problem with a ``tspan``."""

    tspan: tuple[float, float]

    @property
    def t0(self) -> float:
        return self.tspan[0]

    @property
    def t1(self) -> float:
        return self.tspan[1]


def check_initial_state(y0: Tensor) -> None:
    """An initial state: a finite, non-empty floating tensor of shape ``(*batch, d)``."""
    check_floating("y0", y0)
    if y0.dim() == 0:
        raise ValueError("y0 must have at least one dimension (shape (*batch, d)); got a 0-d tensor")
    if y0.numel() == 0:
        raise ValueError(f"y0 is empty (shape {tuple(y0.shape)})")
    check_finite("y0", y0)


@dataclass(frozen=True)
class ODEProblem(_TimeSpan):
    """The initial value problem ``dy/dt = f(t, y)``, ``y(t0) = y0`` on ``tspan = (t0, t1)``.

    Args:
        f: vector field ``f(t, y) -> dy/dt``; ``t`` is a 0-d float64 tensor, ``y`` has the shape,
            dtype and device of ``y0`` (torchdiffeq's convention). Batched states ``(*batch, d)``
            share one step size.
        y0: initial state, a floating tensor with at least one dimension.
        tspan: ``(t0, t1)``; ``t1 < t0`` integrates backwards in time.
        analytic: exact solution ``analytic(t) -> y(t)`` where known (reference problems).
        name: optional label used in tables and plots.
    """

    f: Callable[[Tensor, Tensor], Tensor]
    y0: Tensor
    tspan: tuple[float, float]
    analytic: Callable[[Tensor], Tensor] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not callable(self.f):
            raise TypeError(f"f must be callable, got {type(self.f).__name__}")
        check_signature("f", self.f, "f(t, y)")
        check_initial_state(self.y0)
        object.__setattr__(self, "tspan", check_span(self.tspan))
        if self.analytic is not None and not callable(self.analytic):
            raise TypeError("analytic must be callable or None")
        if self.analytic is not None:
            check_signature("analytic", self.analytic, "analytic(t)")

    def replace(self, **changes) -> ODEProblem:
        """A copy with some fields changed (e.g. another ``y0`` or ``tspan``)."""
        fields = dict(f=self.f, y0=self.y0, tspan=self.tspan, analytic=self.analytic, name=self.name)
        fields.update(changes)
        return ODEProblem(**fields)


@dataclass(frozen=True)
class IntegralProblem:
    """The definite integral ``I = int_a^b f(x) dmu(x)`` over ``domain = (a, b)``.

    Args:
        f: integrand, vectorised over nodes: ``f(x)`` receives a 1-D float64 tensor of nodes and returns
            values with the nodes along the last dimension, shape ``(*batch, len(x))`` (a batch of
            integrands integrated at once). Returning a NumPy array is accepted.
        domain: ``(a, b)`` with ``a < b``, finite.
        measure: the integration measure; ``"lebesgue"`` (``dmu = dx``) is the one supported.
        name: optional label used in tables and plots.
    """

    f: Callable[[Tensor], Tensor]
    domain: tuple[float, float]
    measure: str = "lebesgue"
    name: str = ""

    def __post_init__(self) -> None:
        if not callable(self.f):
            raise TypeError(f"f must be callable, got {type(self.f).__name__}")
        check_signature("f", self.f, "f(x)")
        try:
            a, b = check_span(self.domain, allow_reversed=False)
        except ValueError as err:
            raise ValueError(f"invalid integration domain {self.domain!r}: {err}") from err
        object.__setattr__(self, "domain", (a, b))
        if not isinstance(self.measure, str) or self.measure.lower() != "lebesgue":
            raise ValueError(f"measure must be 'lebesgue' (the only one supported), got {self.measure!r}")
        object.__setattr__(self, "measure", "lebesgue")

    @property
    def a(self) -> float:
        return self.domain[0]

    @property
    def b(self) -> float:
        return self.domain[1]


@dataclass(frozen=True)
class LinearProblem:
    """The linear system ``A x = b`` for symmetric positive (semi-)definite solvers (CG, PCG, DCDM).

    Args:
        A: the operator: a dense or sparse (COO/CSR) 2-D torch tensor, a scipy sparse matrix or
            array, or a callable ``matvec(x) -> A x`` on tensors shaped like ``b``.
        b: right-hand side, a 1-D floating tensor of length ``n`` (the size of ``A``).
        nullspace: for a singular (semi-definite) ``A``, an ``(n, k)`` tensor whose columns span
            its null space (e.g. the constants of a pure-Neumann Poisson system); solvers keep the
            iterates orthogonal to it. ``b`` must then be consistent (orthogonal to it).
        grid: optional structure of the unknowns (e.g. a ``solvers.linear.PoissonGrid``),
            used by solvers that read the geometry (the DCDM network).
        name: optional label used in tables and plots.
    """

    A: object
    b: Tensor
    nullspace: Tensor | None = None
    grid: object = None
    name: str = ""

    def __post_init__(self) -> None:
        import torch  # local: this block was appended to a module that imports only Tensor

        check_floating("b", self.b)
        if self.b.dim() != 1 or self.b.numel() == 0:
            raise ValueError(f"b must be a non-empty 1-D tensor, got shape {tuple(self.b.shape)}")
        check_finite("b", self.b)
        n = self.b.numel()
        A = self.A
        if isinstance(A, Tensor):
            check_floating("A", A)
            if A.dim() != 2:
                raise ValueError(f"A must be 2-D, got shape {tuple(A.shape)}")
            if A.shape[0] != A.shape[1]:
                raise ValueError(f"A must be square, got shape {tuple(A.shape)}")
            # values() of an uncoalesced COO tensor raises: coalesce first.
            if A.layout == torch.sparse_coo:
                values = A.coalesce().values()
            else:
                values = A.values() if A.layout == torch.sparse_csr else A
            check_finite("A", values)
        elif _is_scipy_sparse(A):
            if len(A.shape) != 2 or A.shape[0] != A.shape[1]:
                raise ValueError(f"A must be square, got shape {tuple(A.shape)}")
            if A.dtype.kind not in "fc":
                raise TypeError(f"A must have a floating dtype, got {A.dtype}")
            import numpy as np

            if not bool(np.isfinite(A.data).all()):
                raise ValueError("A contains NaN or Inf values")
        elif callable(A):
            pass
        else:
            raise TypeError("A must be a torch tensor, a scipy sparse matrix or a matvec callable, "
                            f"got {type(A).__name__}")
        if not callable(A) and A.shape[0] != n:
            raise ValueError(f"A is {A.shape[0]}x{A.shape[1]} but b has length {n}")
        if self.nullspace is not None:
            check_floating("nullspace", self.nullspace)
            ns = self.nullspace if self.nullspace.dim() == 2 else self.nullspace.reshape(-1, 1)
            if ns.shape[0] != n:
                raise ValueError(f"nullspace must have {n} rows, got shape {tuple(self.nullspace.shape)}")
            check_finite("nullspace", ns)
            object.__setattr__(self, "nullspace", ns)

    @property
    def n(self) -> int:
        """Number of unknowns."""
        return self.b.numel()


def _is_scipy_sparse(A: object) -> bool:
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - scipy is a dependency
        return False
    return sp.issparse(A)


_SDE_NOISE_TYPES = ("diagonal", "additive", "scalar", "general")
_SDE_TYPES = ("ito", "stratonovich")


@dataclass(frozen=True)
class SDEProblem(_TimeSpan):
    """The stochastic initial value problem ``dy = f(t, y) dt + g(t, y) dW``, ``y(t0) = y0``.

    Shapes follow torchsde's conventions so the same functions run under both libraries:

    * ``noise="diagonal"``: ``g(t, y)`` has the shape of ``y`` (``(*batch, d)``) and multiplies a
      ``d``-dimensional Brownian motion elementwise; ``g_i`` may depend on ``y_i`` only.
    * ``noise="additive"``: ``g(t, y) -> (*batch, d, m)`` does not depend on ``y``.
    * ``noise="scalar"``: ``g(t, y) -> (*batch, d, 1)``, one Brownian motion for all components.
    * ``noise="general"``: ``g(t, y) -> (*batch, d, m)``, any dependence on ``y``.

    Args:
        f: drift ``f(t, y) -> (*batch, d)``; ``t`` is a 0-d float64 tensor.
        g: diffusion (shape as above).
        y0: initial state, floating tensor ``(*batch, d)``.
        tspan: ``(t0, t1)`` with ``t0 < t1`` (SDEs are integrated forwards).
        noise: one of ``"diagonal"``, ``"additive"``, ``"scalar"``, ``"general"``.
        sde_type: ``"ito"`` or ``"stratonovich"``; for additive noise the two coincide.
        brownian_size: ``m``, the dimension of the Brownian motion (inferred from ``g(t0, y0)``
            when ``None``; it is ``d`` for diagonal noise and 1 for scalar noise).
        analytic: exact solution ``analytic(t, W) -> y(t)`` as a function of the time and of the
            Brownian value ``W(t) - W(t0)`` (shape ``(*batch, m)``), where one exists.
        name: optional label.
    """

    f: Callable[[Tensor, Tensor], Tensor]
    g: Callable[[Tensor, Tensor], Tensor]
    y0: Tensor
    tspan: tuple[float, float]
    noise: str = "diagonal"
    sde_type: str = "ito"
    brownian_size: int | None = None
    analytic: Callable[[Tensor, Tensor], Tensor] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not callable(self.f):
            raise TypeError(f"f (drift) must be callable, got {type(self.f).__name__}")
        if not callable(self.g):
            raise TypeError(f"g (diffusion) must be callable, got {type(self.g).__name__}")
        check_signature("f (drift)", self.f, "f(t, y)")
        check_signature("g (diffusion)", self.g, "g(t, y)")
        check_initial_state(self.y0)
        object.__setattr__(self, "tspan", check_span(self.tspan, allow_reversed=False))
        if self.noise not in _SDE_NOISE_TYPES:
            raise ValueError(f"noise must be one of {', '.join(_SDE_NOISE_TYPES)}; got {self.noise!r}")
        if self.sde_type not in _SDE_TYPES:
            raise ValueError(f"sde_type must be 'ito' or 'stratonovich'; got {self.sde_type!r}")
        m = self.brownian_size
        if m is not None:
            if int(m) != m or m < 1:
                raise ValueError(f"brownian_size must be a positive integer, got {m!r}")
            if self.noise == "scalar" and m != 1:
                raise ValueError(f"scalar noise has brownian_size 1, got {m}")
            if self.noise == "diagonal" and m != self.y0.shape[-1]:
                raise ValueError(f"diagonal noise needs brownian_size = d = {self.y0.shape[-1]}, got {m}")
        if self.analytic is not None and not callable(self.analytic):
            raise TypeError("analytic must be callable or None")
        if self.analytic is not None:
            check_signature("analytic", self.analytic, "analytic(t, W)")

    def replace(self, **changes) -> SDEProblem:
        """A copy with some fields changed (e.g. another ``y0`` or ``tspan``)."""
        fields = dict(f=self.f, g=self.g, y0=self.y0, tspan=self.tspan, noise=self.noise,
                      sde_type=self.sde_type, brownian_size=self.brownian_size, analytic=self.analytic,
                      name=self.name)
        fields.update(changes)
        return SDEProblem(**fields)
