"""Training the DCDM network (Kaneda et al., ICML 2023, Sec. 4.1-4.3).

The paper's loss (unsupervised, scale-invariant) is the residual left by one DCDM step from ``x_0 = 0``,

    L(theta) = mean_b || b - alpha A q ||^2,   q = f_theta(b),   alpha = (q, b) / (q, A q),

for unit-norm ``b``; it is invariant to the scale of ``q`` and vanishes iff ``q`` is parallel to
``A^{-1} b`` (``dcdm_loss``, ``TrainConfig(unroll=1)``). The default, ``unrolled_dcdm_loss``
with ``unroll = 4``, is the mean log residual reduction over four DCDM iterations; with the one-step loss
our network lowered the loss while tripling its iteration count (see that function).

Training vectors: Ritz vectors of ``A`` from ``m`` Lanczos steps with full reorthogonalisation, combined
with random Gaussian weights, the low end of the spectrum weighted up (``low_weight = 9`` on the lowest
half of the Ritz values, as in the paper's data generation), then normalised. The low modes are the
ones CG resolves slowly, so the network must treat them well. Samples are drawn on the fly from the
stored Ritz basis (the paper precomputes 20,000 vectors at 64^3, tens of GB).

The loop is the shared ``solvers.training.Trainer`` (one step per trainer epoch, so ``checkpoint_every``
counts steps) and its checkpoint format; ``load_dcdm`` also reads the files written before it (the
shipped weights among them).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import torch
from torch import Tensor

from ..training import CheckpointError, StepContext, Trainer, read_checkpoint, save_checkpoint
from ..training import TrainConfig as CoreConfig
from .network import DCDMNet
from .poisson import PoissonGrid

__all__ = ["lanczos_ritz", "RitzSampler", "dcdm_loss", "unrolled_dcdm_loss", "TrainConfig", "train_dcdm",
           "load_dcdm", "save_weights", "pretrained_path", "load_pretrained"]


def lanczos_ritz(A: sp.spmatrix, m: int, seed: int = 0, nullspace: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``m`` Ritz pairs of symmetric ``A`` from ``m`` Lanczos steps with full reorthogonalisation.

    Returns ``(theta, Y)``: Ritz values ascending and the ``(n, m)`` orthonormal Ritz vectors ``V S``, where
    ``T = S diag(theta) S^T`` is the Lanczos tridiagonal matrix (Golub & Van Loan, *Matrix Computations*,
    4th ed., Sec. 10.1). Vectors are kept orthogonal to ``nullspace`` when given.
    """
    n = A.shape[0]
    m = min(m, n)
    rng = np.random.default_rng(seed)
    V = np.zeros((n, m))
    alpha, beta = np.zeros(m), np.zeros(m)

    def proj(v):
        if nullspace is not None:
            v = v - nullspace @ (nullspace.T @ v)
        return v
    v = proj(rng.standard_normal(n))
    v /= np.linalg.norm(v)
    k_used = m
    for j in range(m):
        V[:, j] = v
        w = proj(A @ v)
        alpha[j] = v @ w
        # full reorthogonalisation, twice ("twice is enough", Parlett)
        for _ in range(2):
            w -= V[:, : j + 1] @ (V[:, : j + 1].T @ w)
        bj = np.linalg.norm(w)
        if j + 1 < m:
            if bj < 1e-10:
                k_used = j + 1
                break
            beta[j] = bj
            v = w / bj
    theta, S = sla.eigh_tridiagonal(alpha[:k_used], beta[: k_used - 1])
    return theta, V[:, :k_used] @ S


class RitzSampler:
    """Draws normalised training right-hand sides ``b = sum_i c_i w_i y_i / ||.||`` with ``c_i ~ N(0, 1)``,
    ``w_i = low_weight`` for the lowest ``low_fraction`` of Ritz values and 1 otherwise."""

    def __init__(self, ritz_vectors: np.ndarray, low_weight: float = 9.0, low_fraction: float = 0.5,
                 dtype: torch.dtype = torch.float32):
        self.Y = torch.as_tensor(ritz_vectors, dtype=dtype)
        m = self.Y.shape[1]
        w = torch.ones(m, dtype=dtype)
        w[: max(1, int(round(low_fraction * m)))] = low_weight
        self.w = w

    def sample(self, batch: int, generator: torch.Generator) -> Tensor:
        c = torch.randn(batch, self.Y.shape[1], generator=generator, dtype=self.Y.dtype) * self.w
        b = c @ self.Y.T
        return b / torch.linalg.vector_norm(b, dim=1, keepdim=True)


def dcdm_loss(q: Tensor, b: Tensor, Aq: Tensor) -> Tensor:
    """``mean || b - alpha A q ||^2`` with ``alpha = (q, b) / (q, A q)``; rows are samples."""
    alpha = (q * b).sum(1, keepdim=True) / (q * Aq).sum(1, keepdim=True).clamp_min(1e-30)
    return (b - alpha * Aq).square().sum(1).mean()


def unrolled_dcdm_loss(f, A, b: Tensor, steps: int, s: int = 2) -> Tensor:
    """The mean log residual reduction per iteration of ``steps`` DCDM iterations from ``x_0 = 0``:

        L = mean_b (1 / K) log ||r_K||^2,   ||r_0|| = ||b|| = 1,

    differentiated through every iteration (directions, A-orthogonalisation against the last ``s``,
    exact line searches), on grid fields ``(B, *shape)`` with ``f`` the network on unit-RMS residuals
    and ``A`` the stencil. With ``K = 1`` it is the log of the paper's one-step loss per sample. Why more
    than one step: the one-step loss rewards approximating ``A^{-1}`` on the training distribution,
    which our measurements showed can trade away the conditioning of the preconditioned operator (a
    lower one-step loss with 3x the iterations); the residual after ``K`` conjugate steps depends on the
    spectrum of the preconditioned operator, which is what the iteration count depends on.
    """
    dims = tuple(range(1, b.dim()))

    def dot(u: Tensor, v: Tensor) -> Tensor:
        return (u * v).sum(dims, keepdim=True)
    r, dirs = b, []
    rms = math.sqrt(math.prod(b.shape[1:]))
    for _ in range(steps):
        rn = torch.sqrt(dot(r, r)).clamp_min(1e-30)
        q = f(r * (rms / rn))
        for p, Ap, pAp in dirs[-s:] if s else []:
            q = q - (dot(q, Ap) / pAp) * p
        Aq = A(q)
        qAq = dot(q, Aq).clamp_min(1e-30)
        r = r - (dot(q, r) / qAq) * Aq
        dirs.append((q, Aq, qAq))
    return (torch.log(dot(r, r).clamp_min(1e-30)) / steps).mean()


@dataclass
class TrainConfig:
    """Settings of ``train_dcdm`` (saved with every checkpoint)."""

    n: int = 32
    dim: int = 3
    geometries: int = 4            # random training domains (geometry seeds 0..geometries-1)
    obstacles: int = 2
    ritz: int = 300                # Lanczos steps (Ritz vectors) per geometry
    low_weight: float = 9.0
    batch: int = 8
    steps: int = 600
    lr: float = 1e-2
    lr_final: float = 1e-3
    channels: int = 8              # hidden channels of the geometry gates
    nu: int = 2                    # Jacobi sweeps before and after each coarse correction
    min_size: int = 4              # coarsest level side
    unroll: int = 4                # DCDM iterations in the loss (1: the paper's one-step loss)
    seed: int = 0
    checkpoint_every: int = 100
    minutes: float = 60.0          # wall-clock budget; training stops (and saves) when it runs out
    extra: dict = field(default_factory=dict)


#: Fields of ``TrainConfig`` that may change when a run resumes (length, bookkeeping); the others are
#: part of the checkpoint's config hash.
RUN_FIELDS = ("steps", "checkpoint_every", "minutes")


def training_grids(cfg: TrainConfig) -> list[PoissonGrid]:
    """The training domains: smoke boxes (walls, open top) with random spheres/boxes, seeds 0.. ."""
    from .poisson import random_obstacles, smoke_domain
    return [smoke_domain(cfg.n, cfg.dim, random_obstacles(cfg.dim, cfg.obstacles, seed=g))
            for g in range(cfg.geometries)]


def train_dcdm(cfg: TrainConfig, checkpoint: str | os.PathLike | None = None, progress: bool = True,
               grids: Sequence[PoissonGrid] | None = None, until: int | None = None
               ) -> tuple[DCDMNet, list[float]]:
    """Train a ``DCDMNet`` on ``cfg``'s domains; resumes from ``checkpoint`` when it exists.

    Each step draws one domain (cycling) and ``cfg.batch`` Ritz-vector right-hand sides, and takes an Adam
    step on ``unrolled_dcdm_loss`` (``dcdm_loss`` when ``cfg.unroll == 1``; ``A q`` by the grid's
    torch stencil). The learning rate decays
    geometrically from ``lr`` to ``lr_final`` over ``cfg.steps``. ``until`` stops this call early at that
    step (with a checkpoint), as an interruption would. Returns the network and the loss history.
    A checkpoint of another network or of other settings (all but ``RUN_FIELDS``) is refused.
    """
    torch.manual_seed(cfg.seed)
    grids = list(grids) if grids is not None else training_grids(cfg)
    net = DCDMNet(cfg.dim, nu=cfg.nu, min_size=cfg.min_size, channels=cfg.channels)
    samplers, stencils, geoms, caches = [], [], [], []
    for gi, g in enumerate(grids):
        N = g.nullspace()
        _, Y = lanczos_ritz(g.matrix(), cfg.ritz, seed=cfg.seed + gi, nullspace=N)
        samplers.append(RitzSampler(Y, cfg.low_weight))
        stencils.append(g.stencil())
        geoms.append(g.geometry())
        caches.append({})  # the multigrid hierarchy of each domain, built once

    def batches(step: int, gen: torch.Generator) -> list[tuple[int, Tensor]]:
        gi = step % len(grids)
        return [(gi, samplers[gi].sample(cfg.batch, gen))]

    def loss_fn(model: DCDMNet, batch: tuple[int, Tensor], ctx: StepContext) -> Tensor:
        gi, b = batch
        g = grids[gi]
        if cfg.unroll == 1:
            bg = g.to_grid(b * math.sqrt(g.n))  # unit-RMS input, as the solver feeds it
            q = model(bg, geoms[gi], cache=caches[gi])
            Aq = g.from_grid(stencils[gi](q))
            return dcdm_loss(g.from_grid(q), b, Aq)
        return unrolled_dcdm_loss(partial(model, geom=geoms[gi], cache=caches[gi]), stencils[gi],
                                  g.to_grid(b), cfg.unroll)

    gamma = (cfg.lr_final / cfg.lr) ** (1.0 / max(cfg.steps, 1))
    core = CoreConfig(epochs=cfg.steps, lr=cfg.lr, seed=cfg.seed, progress=progress,
                      checkpoint=os.fspath(checkpoint) if checkpoint is not None else None,
                      checkpoint_every=cfg.checkpoint_every, time_limit=cfg.minutes * 60)
    identity = {k: v for k, v in asdict(cfg).items() if k not in RUN_FIELDS}
    res = Trainer(net, loss_fn, core, batches=batches, steps_per_epoch=1, identity=identity,
                  scheduler=lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma),
                  desc="DCDM training").fit(until=until)
    return net, [h["train_loss"] for h in res.history]


def load_dcdm(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> DCDMNet:
    """A ``DCDMNet`` from a weights file written by ``save_weights`` or a training checkpoint of
    ``train_dcdm`` (read with ``weights_only=True``), or from a file of the format before the shared
    trainer (``model`` and ``config`` entries: the shipped weights)."""
    try:
        state = read_checkpoint(path, map_location)
    except CheckpointError:
        # the format before the shared trainer: {"model", "config"[, "info" | optimizer state ...]}
        state = torch.load(path, map_location=map_location, weights_only=True)
        if not (isinstance(state, dict) and "model" in state):
            raise
    cfg = state.get("config", {})
    net = DCDMNet(cfg.get("dim", 3), nu=cfg.get("nu", 2), min_size=cfg.get("min_size", 4),
                  channels=cfg.get("channels", 8))
    net.load_state_dict(state["model"])
    net.eval()
    return net


def save_weights(net: DCDMNet, cfg: TrainConfig, path: str | os.PathLike, **info: Any) -> None:
    """The model and its config only (small; what the repository ships), in the trainer's checkpoint
    format (``kind="weights"``). ``info``: plain values (numbers, strings) stored alongside."""
    save_checkpoint(path, net, config=asdict(cfg), kind="weights", info=dict(info))


def pretrained_path() -> Path:
    """The shipped weights: trained at 32^3 by ``benchmarks/train_dcdm.py``."""
    return Path(__file__).with_name("weights") / "dcdm3d_n32.pt"


def load_pretrained(map_location: str | torch.device = "cpu") -> DCDMNet:
    """The shipped 3D network (see ``pretrained_path``)."""
    return load_dcdm(pretrained_path(), map_location)
