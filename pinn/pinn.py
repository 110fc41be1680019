"""The Eulerian physics-informed neural network and the solution object shared by both PINNs.

A PINN (Raissi, Perdikaris, Karniadakis, J. Comput. Phys. 378, 2019) represents ``u(x, t)`` by a network
and minimises the mean square of the PDE residual ``u_t + f u_x - g u_xx - s`` at collocation points
(autograd derivatives), plus initial and boundary misfits unless these hold by construction:

* exact periodicity: the network sees ``(cos k x, sin k x, t)`` (``pinn.networks.SpaceTimeEmbedding``);
* hard initial condition: ``u = u0(x) + (t - t0) N(x, t)``;
* causal weighting (Wang, Sankaran, Perdikaris, "Respecting causality is all you need", CMAME 2024,
  eq. 2.11): the residual loss of time slab ``i`` is weighted by ``exp(-eps sum_{k<i} L_k)`` (no gradient
  through the weights), so later times are fitted only once earlier ones are.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from solvers.algorithm import Algorithm
from solvers.checks import check_options, check_tolerance
from solvers.solution import RetcodeResult, ReturnCode, Stats

from .networks import MLP, SpaceTimeEmbedding
from .problem import PDEProblem
from .training import TrainResult, train

SOLVE_OPTIONS = ("progress", "checkpoint", "checkpoint_every", "log_every", "monitor_every")

#: Default ``rel_l2_tol`` of ``PINN`` and ``pinn.LagrangianPINN``: a relative L2 error against
#: the reference above 10 % is a qualitatively wrong solution (Krishnapriyan et al.'s failure modes sit
#: at 0.5-1.0; the trained cases of the tests and examples at 1e-3-5e-2), so it is ``NOT_CONVERGED``.
REL_L2_TOL = 0.1


def _as_tensor(v: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    if isinstance(v, Tensor):
        return v.to(dtype=dtype, device=device)
    return torch.as_tensor(np.asarray(v, dtype=np.float64), dtype=dtype, device=device)


def collocation_points(problem: PDEProblem, n_x: int, n_t: int, kind: str = "grid", seed: int = 0,
                       dtype: torch.dtype = torch.float32,
                       device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """``n_x * n_t`` collocation points ``(x, t)`` (flat): a tensor grid, uniform random, or scrambled Sobol.

    The grid excludes ``x = b`` on periodic domains (it is ``x = a``) and includes both ends otherwise.
    """
    if int(n_x) < 2 or int(n_t) < 2:
        raise ValueError(f"need n_x >= 2 and n_t >= 2 collocation points, got {n_x}, {n_t}")
    (a, b), (t0, t1) = problem.domain, problem.tspan
    if kind == "grid":
        if problem.periodic:
            xs = a + (b - a) * torch.arange(n_x, dtype=torch.float64) / n_x
        else:
            xs = torch.linspace(a, b, n_x, dtype=torch.float64)
        ts = torch.linspace(t0, t1, n_t, dtype=torch.float64)
        tt, xx = torch.meshgrid(ts, xs, indexing="ij")
        x, t = xx.reshape(-1), tt.reshape(-1)
    elif kind == "random":
        gen = torch.Generator().manual_seed(int(seed))
        u = torch.rand(n_x * n_t, 2, generator=gen, dtype=torch.float64)
        x, t = a + (b - a) * u[:, 0], t0 + (t1 - t0) * u[:, 1]
    elif kind == "sobol":
        eng = torch.quasirandom.SobolEngine(2, scramble=True, seed=int(seed))
        u = eng.draw(n_x * n_t, dtype=torch.float64)
        x, t = a + (b - a) * u[:, 0], t0 + (t1 - t0) * u[:, 1]
    else:
        raise ValueError(f"collocation must be 'grid', 'random' or 'sobol', got {kind!r}")
    return x.to(dtype=dtype, device=device), t.to(dtype=dtype, device=device)


def relative_l2(u: Tensor, ref: Tensor) -> float:
    """``||u - ref||_F / ||ref||_F`` (float64)."""
    u, ref = u.to(torch.float64), ref.to(device=u.device, dtype=torch.float64)
    return float(torch.linalg.norm(u - ref) / torch.linalg.norm(ref))


class PINNSolution(RetcodeResult):
    """Result of a PINN solve: ``sol.u(x, t)`` (or ``sol(x, t)``), ``retcode``, ``stats``.

    ``stats`` holds ``history`` (dict of lists: iteration, phase, time, loss, loss terms, monitors),
    ``train_time`` (s), ``adam_iters``, ``lbfgs_iters``, ``final_loss``, ``rel_l2`` (against the
    problem's reference on the 256 x 100 grid, when there is one), ``threads`` and ``parameters``.

    A solution judges itself: ``retcode`` is ``NOT_CONVERGED`` when ``rel_l2`` exceeds the algorithm's
    ``rel_l2_tol`` or the final loss exceeds its ``loss_tol``; ``message`` then gives the measured
    value and the threshold.
    """

    def __init__(self, problem: PDEProblem, algorithm: Algorithm, model: nn.Module, retcode: ReturnCode,
                 stats: Stats, dtype: torch.dtype, device: torch.device):
        self.problem = problem
        self.algorithm = algorithm
        self.model = model
        self.retcode = retcode
        self.stats = stats
        self.dtype = dtype
        self.device = device
        self.detail = ""

    @property
    def message(self) -> str:
        return f"{self.retcode.message} {self.detail}".rstrip()

    def _evaluate(self, x: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.cat([self.model(xc, tc) for xc, tc in zip(x.split(65536), t.split(65536))])

    def u(self, x: Any, t: Any) -> Tensor:
        """The network's solution at points ``(x, t)`` (broadcast together); shape of the broadcast."""
        x = _as_tensor(x, self.dtype, self.device)
        t = _as_tensor(t, self.dtype, self.device)
        x, t = torch.broadcast_tensors(x, t)
        shape = x.shape
        return self._evaluate(x.reshape(-1), t.reshape(-1)).reshape(shape)

    __call__ = u

    def on_grid(self, nx: int = 256, nt: int = 100) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, t, u)`` on the problem's standard grid, each of shape ``(nt, nx)``."""
        x, t = self.problem.grid(nx, nt, self.dtype, self.device)
        return x, t, self.u(x, t)

    def relative_l2(self, nx: int = 256, nt: int = 100) -> float:
        """Relative L2 (Frobenius) error against the problem's reference on the ``nt x nx`` grid."""
        _, _, u = self.on_grid(nx, nt)
        return relative_l2(u, self.problem.reference_grid(nx, nt, device=self.device))

    def __repr__(self) -> str:
        err = self.stats.extra.get("rel_l2")
        err_s = f", rel_l2={err:.3e}" if err is not None else ""
        return (f"{type(self).__name__}(retcode={self.retcode.name}{err_s}, "
                f"train_time={self.stats.extra.get('train_time', float('nan')):.1f}s)")


class _PINNBase(Algorithm):
    """Settings shared by ``PINN`` and ``pinn.LagrangianPINN``."""

    problem_types: ClassVar[tuple[type, ...]] = (PDEProblem,)
    solution_type: ClassVar[type] = PINNSolution

    def __init__(self, hidden: Sequence[int] = (32, 32, 32), activation: str = "tanh", n_x: int = 64,
                 n_t: int = 32, collocation: str = "grid", adam_iters: int = 5000, lr: float = 1e-3,
                 lr_decay: float = 0.1, lbfgs_iters: int = 500, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, seed: int = 0,
                 weights: Mapping[str, float] | None = None, rel_l2_tol: float | None = REL_L2_TOL,
                 loss_tol: float | None = None):
        if collocation not in ("grid", "random", "sobol"):
            raise ValueError(f"collocation must be 'grid', 'random' or 'sobol', got {collocation!r}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        for name, v in (("adam_iters", adam_iters), ("lbfgs_iters", lbfgs_iters)):
            if int(v) < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.n_x, self.n_t = int(n_x), int(n_t)
        self.collocation = collocation
        self.adam_iters, self.lbfgs_iters = int(adam_iters), int(lbfgs_iters)
        self.lr, self.lr_decay = float(lr), float(lr_decay)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.seed = int(seed)
        self.weights = dict(self.default_weights())
        for k, v in (weights or {}).items():
            if k not in self.weights:
                raise ValueError(f"unknown loss weight {k!r}; known: {sorted(self.weights)}")
            if not (math.isfinite(float(v)) and float(v) >= 0):
                raise ValueError(f"loss weight {k!r} must be finite and >= 0, got {v}")
            self.weights[k] = float(v)
        self.rel_l2_tol = None if rel_l2_tol is None else check_tolerance("rel_l2_tol", rel_l2_tol)
        self.loss_tol = None if loss_tol is None else check_tolerance("loss_tol", loss_tol)

    @staticmethod
    def default_weights() -> dict[str, float]:
        return {}

    def judge(self, sol: PINNSolution) -> None:
        """``NOT_CONVERGED`` (with the measured value and the threshold in ``sol.message``) when the
        final loss is above ``loss_tol`` or the relative L2 error against the problem's reference is
        above ``rel_l2_tol``; a solution that already failed keeps its own retcode."""
        if not sol.retcode.success:
            return
        extra = sol.stats.extra
        why = []
        if self.loss_tol is not None and not extra["final_loss"] <= self.loss_tol:
            why.append(f"final loss {extra['final_loss']:.3e} > loss_tol {self.loss_tol:.3g}")
        err = extra.get("rel_l2")
        if self.rel_l2_tol is not None and err is not None and not err <= self.rel_l2_tol:
            why.append(f"relative L2 error against the reference {err:.3e} > "
                       f"rel_l2_tol {self.rel_l2_tol:.3g}")
        if why:
            sol.retcode = ReturnCode.NOT_CONVERGED
            sol.detail = "; ".join(why) + "."

    # subclass hooks ------------------------------------------------------------------------------
    def build(self, problem: PDEProblem) -> nn.Module:
        raise NotImplementedError

    def make_loss(self, problem: PDEProblem, model: nn.Module, x: Tensor, t: Tensor
                  ) -> Callable[[], tuple[Tensor, dict[str, Tensor]]]:
        raise NotImplementedError

    def finish(self, problem: PDEProblem, sol: PINNSolution) -> None:
        """Post-training checks (the Lagrangian PINN checks that characteristics did not cross)."""

    # ------------------------------------------------------------------------------------------
    def solve(self, problem: PDEProblem, **options: Any) -> PINNSolution:
        """Train on ``problem``; options: ``progress`` (tqdm, default True), ``checkpoint`` (a file to save
        to every ``checkpoint_every`` iterations and resume from), ``log_every`` (history rows, default
        100 Adam iterations), ``monitor_every`` (record the error against the reference every so many
        iterations; 0: at the end of each phase only)."""
        check_options(options, SOLVE_OPTIONS, type(self).__name__)
        self.check_problem(problem)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = self.build(problem).to(dtype=self.dtype, device=self.device)
        x, t = collocation_points(problem, self.n_x, self.n_t, self.collocation, self.seed, self.dtype,
                                  self.device)
        loss_fn = self.make_loss(problem, model, x, t)
        sol = self.solution_type(problem, self, model, ReturnCode.SUCCESS, Stats(), self.dtype, self.device)
        monitor = None
        if problem.reference is not None:
            def monitor() -> dict[str, float]:
                return {"error": sol.relative_l2()}
        checkpoint = options.get("checkpoint")
        res: TrainResult = train(
            model, loss_fn, adam_iters=self.adam_iters, lr=self.lr, lr_decay=self.lr_decay,
            lbfgs_iters=self.lbfgs_iters, log_every=int(options.get("log_every", 100)), monitor=monitor,
            monitor_every=int(options.get("monitor_every", 0)), progress=bool(options.get("progress", True)),
            desc=f"{type(self).__name__} {problem.name}",
            checkpoint=os.fspath(checkpoint) if checkpoint is not None else None,
            checkpoint_every=int(options.get("checkpoint_every", 1000)))
        final_loss, parts = loss_fn()
        final_loss, parts = final_loss.detach(), {k: v.detach() for k, v in parts.items()}
        extra: dict[str, Any] = {
            "history": res.history, "train_time": res.train_time, "adam_iters": res.adam_iters,
            "lbfgs_iters": res.lbfgs_iters, "iterations": res.adam_iters + res.lbfgs_iters,
            "final_loss": float(final_loss),
            "final_loss_terms": {k: float(v) for k, v in parts.items() if not k.startswith("min_")},
            "lbfgs_stop": res.lbfgs_stop, "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in model.parameters()), "n_collocation": int(x.numel()),
        }
        sol.stats = Stats(extra=extra)
        if res.nonfinite or not math.isfinite(float(final_loss)):
            sol.retcode = ReturnCode.UNSTABLE
        if problem.reference is not None and sol.retcode is not ReturnCode.UNSTABLE:
            extra["rel_l2"] = sol.relative_l2()
        self.finish(problem, sol)
        self.judge(sol)
        return sol

    def check_problem(self, problem: PDEProblem) -> None:
        """Reject problems the method cannot handle (before any work)."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(hidden={self.hidden}, n_x={self.n_x}, n_t={self.n_t}, "
                f"adam_iters={self.adam_iters}, lbfgs_iters={self.lbfgs_iters}, seed={self.seed})")


class EulerianNet(nn.Module):
    """``u(x, t) = u0(x) + (t - t0) N(x, t)`` (hard initial condition) or ``N(x, t)``."""

    def __init__(self, problem: PDEProblem, hidden: Sequence[int], act: str, periodic_embedding: bool,
                 hard_ic: bool):
        super().__init__()
        self.problem = problem
        periodic = problem.periodic and periodic_embedding
        self.embed = SpaceTimeEmbedding(problem.domain, problem.tspan, periodic)
        self.net = MLP(self.embed.features, hidden, 1, act)
        self.hard_ic = hard_ic

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        n = self.net(self.embed(x, t))[..., 0]
        if self.hard_ic:
            return self.problem.u0(x) + (t - self.problem.tspan[0]) * n
        return n


def causal_residual_loss(r2: Tensor, t: Tensor, tspan: tuple[float, float], chunks: int,
                         eps: float) -> Tensor:
    """Wang et al.'s causal loss ``(1/M) sum_i w_i L_i``, ``w_i = exp(-eps sum_{k<i} L_k)`` (w detached).

    ``L_i`` is the mean squared residual over the points whose time falls in slab ``i`` of ``M = chunks``.
    """
    t0, t1 = tspan
    idx = ((t.detach() - t0) / (t1 - t0) * chunks).long().clamp_(0, chunks - 1)
    sums = torch.zeros(chunks, dtype=r2.dtype, device=r2.device).index_add(0, idx, r2)
    counts = torch.zeros(chunks, dtype=r2.dtype, device=r2.device).index_add(0, idx, torch.ones_like(r2))
    present = counts > 0
    slab = sums[present] / counts[present]
    before = torch.cumsum(slab.detach(), 0) - slab.detach()
    w = torch.exp(-eps * before)
    return (w * slab).mean()


class PINN(_PINNBase):
    """Eulerian PINN: a network ``u(x, t)`` trained on the residual ``u_t + f u_x - g u_xx - s``.

    Args:
        hidden: widths of the hidden layers (default 3 x 32, tanh).
        n_x, n_t, collocation: collocation points (``grid``: ``n_x x n_t`` tensor grid; ``random``,
            ``sobol``: ``n_x * n_t`` points).
        adam_iters, lr, lr_decay, lbfgs_iters: the optimiser schedule (Adam, then L-BFGS).
        dtype, device, seed: float32/float64, where to train, initialisation seed.
        periodic_embedding: exact periodicity through ``(cos, sin)`` features (periodic problems).
        hard_ic: impose ``u(x, t0) = u0(x)`` by construction; otherwise a loss term ``ic``.
        causal_eps: ``eps`` of the causal weighting (``None``: off); ``causal_chunks`` time slabs
            (default ``n_t``).
        weights: loss weights ``residual``, ``ic``, ``bc`` (default 1).
        rel_l2_tol: where the problem has a reference, a relative L2 error above this ends as
            ``NOT_CONVERGED`` (default ``REL_L2_TOL`` = 0.1; ``None``: not judged).
        loss_tol: a final loss above this ends as ``NOT_CONVERGED`` (default ``None``: not judged).
    """

    def __init__(self, *, periodic_embedding: bool = True, hard_ic: bool = True,
                 causal_eps: float | None = None, causal_chunks: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.periodic_embedding = bool(periodic_embedding)
        self.hard_ic = bool(hard_ic)
        if causal_eps is not None and not (math.isfinite(causal_eps) and causal_eps >= 0):
            raise ValueError(f"causal_eps must be finite and >= 0, got {causal_eps}")
        self.causal_eps = causal_eps
        self.causal_chunks = int(causal_chunks) if causal_chunks is not None else self.n_t

    @staticmethod
    def default_weights() -> dict[str, float]:
        return {"residual": 1.0, "ic": 1.0, "bc": 1.0}

    def build(self, problem: PDEProblem) -> nn.Module:
        return EulerianNet(problem, self.hidden, self.activation, self.periodic_embedding, self.hard_ic)

    def make_loss(self, problem: PDEProblem, model: nn.Module, x: Tensor, t: Tensor
                  ) -> Callable[[], tuple[Tensor, dict[str, Tensor]]]:
        (a, b), (t0, _) = problem.domain, problem.tspan
        w = self.weights
        x_ic = x[t == t0] if self.collocation == "grid" else collocation_points(
            problem, self.n_x, 2, "grid", dtype=self.dtype, device=self.device)[0][: self.n_x]
        u0_ic = problem.u0(x_ic).detach()
        t_bc = torch.linspace(*problem.tspan, self.n_t, dtype=self.dtype, device=self.device)
        bc = None
        if not problem.periodic:
            left, right = problem.boundary_values
            bc = (left(t_bc).detach(), right(t_bc).detach())
        causal = self.causal_eps

        def loss_fn() -> tuple[Tensor, dict[str, Tensor]]:
            r = problem.residual(model, x, t)
            r2 = r.square()
            if causal is not None:
                l_res = causal_residual_loss(r2, t, problem.tspan, self.causal_chunks, causal)
            else:
                l_res = r2.mean()
            parts = {"residual": l_res}
            total = w["residual"] * l_res
            if not self.hard_ic:
                l_ic = (model(x_ic, torch.full_like(x_ic, t0)) - u0_ic).square().mean()
                parts["ic"] = l_ic
                total = total + w["ic"] * l_ic
            if bc is not None:
                ul = model(torch.full_like(t_bc, a), t_bc)
                ur = model(torch.full_like(t_bc, b), t_bc)
                l_bc = (ul - bc[0]).square().mean() + (ur - bc[1]).square().mean()
                parts["bc"] = l_bc
                total = total + w["bc"] * l_bc
            return total, parts

        return loss_fn
