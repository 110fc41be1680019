"""The Lagrangian PINN (Mojgani, Balajewicz, Hassanzadeh, "Lagrangian PINNs: A causality-conforming
solution to failure modes of physics-informed neural networks", CMAME 404, 2023; arXiv 2205.02902).

For ``w_t + f(x, t, w) w_x = g(x, t, w) w_xx + s`` the characteristics ``x(x0, t)`` obey ``x_t = f`` and,
along them, ``Dw/Dt = g w_xx + s``. Two networks (branches) of ``(x0, t)`` represent the state
``u(x0, t)`` on the characteristic that starts at ``x0`` and the characteristic ``x(x0, t)`` itself:

    u(x0, t) = u0(x0) + (t - t0) N_u(x0, t)
    x(x0, t) = x0 + (t - t0) (f(x0, t0, u0(x0)) + (t - t0) N_x(x0, t))

so ``u(x0, t0) = u0(x0)``, ``x(x0, t0) = x0`` and ``x_t(x0, t0) = f`` hold by construction, and with the
periodic features ``(cos k x0, sin k x0, t)`` the map ``x - x0`` is exactly periodic in ``x0``. The losses
are the mean squares of

    r_x = x_t - f(x, t, u),
    r_u = u_t - g u_xx - s        with u_xx in the Lagrangian frame.

**The Lagrangian u_xx.** With ``J = dx/dx0``, ``u_x = u_x0 / J`` and
``u_xx = d/dx0(u_x0 / J) / J = (J u_x0x0 - J_x0 u_x0) / J^3``. The authors' code differentiates with
respect to ``x0`` directly, exact only when ``J = 1`` (constant-speed convection). ``form="division_free"``
(default) multiplies ``r_u`` by ``J^3``: ``J^3 (u_t - s) - g (J u_x0x0 - J_x0 u_x0)``, which stays bounded
when ``J`` is small; ``form="chain_rule"`` divides.

**Crossing characteristics.** The map ``x0 -> x`` must stay monotone (``J > 0``); otherwise the
Lagrangian solution is multivalued in ``x``. After training ``J`` is evaluated on a fine grid of
``x0`` at every time of the evaluation grid; if ``min J <= jacobian_tol`` the solve warns and returns
``ReturnCode.CHARACTERISTICS_CROSSED``.

**Back to the Eulerian grid.** At each time the points ``(x(x0_j, t), u(x0_j, t))`` on a fine uniform
``x0`` grid are sorted and interpolated linearly (periodically: ``x`` modulo the period), so
``sol.u(x, t)`` answers at arbitrary points.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from solvers.solution import ReturnCode

from .networks import MLP, SpaceTimeEmbedding
from .pinn import PINNSolution, _as_tensor, _PINNBase
from .problem import PDEProblem


def lagrangian_derivatives(x: Tensor, u: Tensor, x0: Tensor, create_graph: bool = True
                           ) -> tuple[Tensor, Tensor, Tensor]:
    """``(J, u_x, u_xx)`` of ``u(x0)`` seen as a function of ``x = x(x0)`` (chain rule, by autograd).

    ``x`` and ``u`` must be computed from ``x0`` (which requires grad) pointwise (each ``x[i]``, ``u[i]``
    depends only on ``x0[i]``). ``J = x_x0``, ``u_x = u_x0 / J``, ``u_xx = (J u_x0x0 - J_x0 u_x0) / J^3``.
    """
    (j,) = torch.autograd.grad(x.sum(), x0, create_graph=True)
    (u_x0,) = torch.autograd.grad(u.sum(), x0, create_graph=True)
    (j_x0,) = torch.autograd.grad(j.sum(), x0, create_graph=create_graph)
    (u_x0x0,) = torch.autograd.grad(u_x0.sum(), x0, create_graph=create_graph)
    return j, u_x0 / j, (j * u_x0x0 - j_x0 * u_x0) / j**3


def lagrangian_residuals(problem: PDEProblem, model: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
                         x0: Tensor, t: Tensor, form: str = "division_free") -> dict[str, Tensor]:
    """Residuals ``r_x = x_t - f`` and ``r_u`` (see the module docstring) and ``J`` at ``(x0, t)``.

    ``model(x0, t)`` returns ``(x, u)``. Graph kept for training.
    """
    if form not in ("division_free", "chain_rule"):
        raise ValueError(f"form must be 'division_free' or 'chain_rule', got {form!r}")
    x0 = x0.detach().requires_grad_(True)
    t = t.detach().requires_grad_(True)
    x, u = model(x0, t)
    j, x_t = torch.autograd.grad(x.sum(), (x0, t), create_graph=True)
    u_x0, u_t = torch.autograd.grad(u.sum(), (x0, t), create_graph=True)
    r_x = x_t - problem.f(x, t, u)
    s = problem.s(x, t, u)
    if problem.has_diffusion:
        (j_x0,) = torch.autograd.grad(j.sum(), x0, create_graph=True)
        (u_x0x0,) = torch.autograd.grad(u_x0.sum(), x0, create_graph=True)
        g = problem.g(x, t, u)
        curv = j * u_x0x0 - j_x0 * u_x0  # = J^3 u_xx
        if form == "division_free":
            r_u = j**3 * (u_t - s) - g * curv
        else:
            r_u = u_t - s - g * curv / j**3
    else:
        r_u = u_t - s
    return {"x": r_x, "u": r_u, "jacobian": j}


class LagrangianNet(nn.Module):
    """The two branches ``N_u``, ``N_x`` with hard initial conditions; ``forward(x0, t) -> (x, u)``."""

    def __init__(self, problem: PDEProblem, hidden: Sequence[int], act: str):
        super().__init__()
        self.problem = problem
        self.embed = SpaceTimeEmbedding(problem.domain, problem.tspan, problem.periodic)
        self.net_u = MLP(self.embed.features, hidden, 1, act)
        self.net_x = MLP(self.embed.features, hidden, 1, act)

    def forward(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        z = self.embed(x0, t)
        t0 = self.problem.tspan[0]
        s = t - t0
        u0 = self.problem.u0(x0)
        f0 = self.problem.f(x0, torch.full_like(x0, t0), u0)
        u = u0 + s * self.net_u(z)[..., 0]
        x = x0 + s * (f0 + s * self.net_x(z)[..., 0])
        return x, u


class LagrangianSolution(PINNSolution):
    """Solution of a ``LagrangianPINN``: ``u(x, t)`` by interpolation from the characteristics.

    Extra: ``characteristics(x0, t) -> (x, u)`` (the two branches), ``jacobian(x0, t)``; ``stats``
    also holds ``min_jacobian`` (over ``n_lagrangian`` x0 points and the evaluation times).
    """

    def characteristics(self, x0: Any, t: Any) -> tuple[Tensor, Tensor]:
        x0 = _as_tensor(x0, self.dtype, self.device)
        t = _as_tensor(t, self.dtype, self.device)
        x0, t = torch.broadcast_tensors(x0, t)
        with torch.no_grad():
            x, u = self.model(x0.reshape(-1), t.reshape(-1))
        return x.reshape(x0.shape), u.reshape(x0.shape)

    def jacobian(self, x0: Any, t: Any) -> Tensor:
        """``J = dx/dx0`` at ``(x0, t)`` (autograd)."""
        x0 = _as_tensor(x0, self.dtype, self.device)
        t = _as_tensor(t, self.dtype, self.device)
        x0, t = torch.broadcast_tensors(x0, t)
        shape = x0.shape
        x0 = x0.reshape(-1).clone().requires_grad_(True)
        with torch.enable_grad():
            x, _ = self.model(x0, t.reshape(-1))
            (j,) = torch.autograd.grad(x.sum(), x0)
        return j.reshape(shape)

    def _x0_grid(self) -> Tensor:
        a, b = self.problem.domain
        n = self.algorithm.n_lagrangian
        if self.problem.periodic:
            return a + (b - a) * torch.arange(n, dtype=self.dtype, device=self.device) / n
        return torch.linspace(a, b, n, dtype=self.dtype, device=self.device)

    def _evaluate(self, x: Tensor, t: Tensor) -> Tensor:
        # Group the queries by time; per distinct time, sample the characteristics on the x0 grid.
        ts, inv = torch.unique(t, return_inverse=True)
        x0 = self._x0_grid()
        n0 = x0.numel()
        rows_x, rows_u = [], []
        with torch.no_grad():
            for tc in ts.split(max(1, 262144 // n0)):
                xx0 = x0.expand(tc.numel(), n0)
                xc, uc = self.model(xx0.reshape(-1), tc.unsqueeze(1).expand(-1, n0).reshape(-1))
                rows_x.append(xc.reshape(-1, n0))
                rows_u.append(uc.reshape(-1, n0))
        # float64 for the interpolation: rows are stacked with large offsets below.
        X = torch.cat(rows_x).to(torch.float64)
        U = torch.cat(rows_u).to(torch.float64)
        X, order = torch.sort(X, dim=1)  # a no-op while characteristics do not cross
        U = torch.gather(U, 1, order)
        q = x.to(torch.float64)
        if self.problem.periodic:
            L = self.problem.length
            X = torch.cat([X, X[:, :1] + L], dim=1)
            U = torch.cat([U, U[:, :1]], dim=1)
            start = X[inv, 0]
            q = start + torch.remainder(q - start, L)
        else:
            q = torch.minimum(torch.maximum(q, X[inv, 0]), X[inv, -1])
        # One searchsorted for all rows: shift row i by i * (span + 1) so the rows stay separate.
        base = X[:, :1]
        rel = X - base
        span = float(rel[:, -1].max()) + 1.0
        offs = torch.arange(X.shape[0], dtype=torch.float64, device=X.device).unsqueeze(1) * span
        flat = (rel + offs).reshape(-1)
        qf = q - base[inv, 0] + offs[inv, 0]
        m = X.shape[1]
        k = torch.searchsorted(flat, qf).clamp(1, flat.numel() - 1)
        k = torch.minimum(torch.maximum(k, inv * m + 1), inv * m + m - 1)  # stay inside the row
        x_lo, x_hi = flat[k - 1], flat[k]
        u_flat = U.reshape(-1)
        den = x_hi - x_lo
        w = torch.where(den > 0, (qf - x_lo) / torch.where(den > 0, den, torch.ones_like(den)),
                        torch.zeros_like(den)).clamp(0, 1)
        return ((1 - w) * u_flat[k - 1] + w * u_flat[k]).to(self.dtype)


class LagrangianPINN(_PINNBase):
    """Two-branch Lagrangian PINN (Mojgani et al. 2023). Same settings as ``pinn.PINN``, plus:

    Args:
        form: ``"division_free"`` (default) or ``"chain_rule"`` for the Lagrangian ``u_xx`` residual.
        n_lagrangian: ``x0`` points per time used to interpolate back to Eulerian ``x`` (default 1024).
        jacobian_tol: characteristics count as crossed when ``min J <= jacobian_tol`` (default 0).
        weights: loss weights ``x`` (characteristics), ``u`` (state), ``bc`` (Dirichlet ends).
        rel_l2_tol, loss_tol: as for ``pinn.PINN`` (``NOT_CONVERGED`` above them); crossed
            characteristics (``CHARACTERISTICS_CROSSED``) are reported in preference.

    Dirichlet problems are accepted only where the characteristic speed vanishes at both ends
    (``f(a, t, left(t)) = f(b, t, right(t)) = 0``, e.g. Raissi's Burgers): the ends are then
    characteristics themselves, ``x(a, t) = a`` and ``x(b, t) = b``, imposed by the ``bc`` loss. Inflow
    boundaries (where new characteristics enter) are not supported.
    """

    solution_type = LagrangianSolution

    def __init__(self, *, form: str = "division_free", n_lagrangian: int = 1024, jacobian_tol: float = 0.0,
                 **kwargs: Any):
        super().__init__(**kwargs)
        if form not in ("division_free", "chain_rule"):
            raise ValueError(f"form must be 'division_free' or 'chain_rule', got {form!r}")
        if int(n_lagrangian) < 4:
            raise ValueError(f"n_lagrangian must be >= 4, got {n_lagrangian}")
        self.form = form
        self.n_lagrangian = int(n_lagrangian)
        self.jacobian_tol = float(jacobian_tol)

    @staticmethod
    def default_weights() -> dict[str, float]:
        return {"x": 1.0, "u": 1.0, "bc": 1.0}

    def check_problem(self, problem: PDEProblem) -> None:
        if problem.periodic:
            return
        t = torch.linspace(*problem.tspan, 16, dtype=torch.float64)
        (a, b), (left, right) = problem.domain, problem.boundary_values
        fa = problem.f(torch.full_like(t, a), t, left(t))
        fb = problem.f(torch.full_like(t, b), t, right(t))
        if float(fa.abs().max()) > 1e-12 or float(fb.abs().max()) > 1e-12:
            raise ValueError("LagrangianPINN handles Dirichlet boundaries only where the characteristic "
                             "speed vanishes at both ends (no inflow); use PINN for this problem")

    def build(self, problem: PDEProblem) -> nn.Module:
        return LagrangianNet(problem, self.hidden, self.activation)

    def make_loss(self, problem: PDEProblem, model: nn.Module, x0: Tensor, t: Tensor
                  ) -> Callable[[], tuple[Tensor, dict[str, Tensor]]]:
        w = self.weights
        (a, b) = problem.domain
        t_bc = torch.linspace(*problem.tspan, self.n_t, dtype=self.dtype, device=self.device)
        bc = None
        if not problem.periodic:
            left, right = problem.boundary_values
            bc = (left(t_bc).detach(), right(t_bc).detach())

        def loss_fn() -> tuple[Tensor, dict[str, Tensor]]:
            r = lagrangian_residuals(problem, model, x0, t, self.form)
            l_x, l_u = r["x"].square().mean(), r["u"].square().mean()
            # min J over the collocation points: recorded in the history (characteristics must not cross)
            parts = {"x": l_x, "u": l_u, "min_jacobian": r["jacobian"].detach().min()}
            total = w["x"] * l_x + w["u"] * l_u
            if bc is not None:
                xl, ul = model(torch.full_like(t_bc, a), t_bc)
                xr, ur = model(torch.full_like(t_bc, b), t_bc)
                l_bc = ((xl - a).square().mean() + (xr - b).square().mean()
                        + (ul - bc[0]).square().mean() + (ur - bc[1]).square().mean())
                parts["bc"] = l_bc
                total = total + w["bc"] * l_bc
            return total, parts

        return loss_fn

    def finish(self, problem: PDEProblem, sol: PINNSolution) -> None:
        assert isinstance(sol, LagrangianSolution)
        x0 = sol._x0_grid()
        ts = torch.linspace(*problem.tspan, 100, dtype=self.dtype, device=self.device)
        jmin = min(float(sol.jacobian(x0, tc.reshape(1)).min()) for tc in ts.split(1))
        sol.stats.extra["min_jacobian"] = jmin
        if jmin <= self.jacobian_tol and sol.retcode.success:
            sol.retcode = ReturnCode.CHARACTERISTICS_CROSSED
            warnings.warn(f"LagrangianPINN on {problem.name!r}: characteristics crossed (min dx/dx0 = "
                          f"{jmin:.3g} <= {self.jacobian_tol:g}); the Lagrangian solution is not "
                          f"single-valued in x there", RuntimeWarning, stacklevel=3)
