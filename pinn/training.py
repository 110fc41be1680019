"""The training loop shared by the PINNs: Adam, then L-BFGS with a strong-Wolfe line search, both run by
the shared ``solvers.training.Trainer``.

Adam (Kingma and Ba 2015) moves the network out of its initial basin; L-BFGS (Liu and Nocedal 1989)
with the strong-Wolfe line search (Nocedal and Wright, Alg. 3.5) then converges fast on the smooth,
deterministic loss of fixed collocation points, the usual PINN recipe (Raissi et al. 2019). The loop
records a history (loss and its terms, optional monitors such as the error against the reference),
shows a tqdm bar, survives a non-finite L-BFGS step by restoring the last good parameters, and can
checkpoint to a file and resume from it (the trainer's format: atomic, ``weights_only=True``). One Adam
iteration is one trainer epoch of one full-batch step, so ``checkpoint_every`` counts iterations.

Under ``torchrun`` (or ``solvers.training.spawn``) the same call trains with
``DistributedDataParallel``: give each rank its share of the collocation points in ``loss_fn``
(``solvers.training.shard``); the loss the history records, and the one L-BFGS's line search sees,
is the mean over ranks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from solvers.training import StepInfo, Trainer
from solvers.training import TrainConfig as CoreConfig

# loss_fn() -> (total loss, {term name: value}); names starting with "min_" are diagnostics, not terms.
LossFn = Callable[[], tuple[Tensor, dict[str, Tensor]]]


@dataclass
class TrainResult:
    history: dict[str, list[Any]] = field(default_factory=dict)
    adam_iters: int = 0
    lbfgs_iters: int = 0
    train_time: float = 0.0
    nonfinite: bool = False
    lbfgs_stop: str = ""


def _record(history: dict[str, list[Any]], row: dict[str, Any]) -> None:
    for k in set(history) | set(row):
        history.setdefault(k, [None] * len(history.get("iteration", [])))
    for k in history:
        history[k].append(row.get(k))


def train(module: nn.Module, loss_fn: LossFn, *, adam_iters: int = 5000, lr: float = 1e-3,
          lr_decay: float = 0.1, lbfgs_iters: int = 500, lbfgs_chunk: int = 50, history_size: int = 50,
          log_every: int = 100, monitor: Callable[[], dict[str, float]] | None = None,
          monitor_every: int = 0, progress: bool = True, desc: str = "train",
          checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 1000) -> TrainResult:
    """Minimise ``loss_fn()`` over ``module``'s parameters: ``adam_iters`` Adam steps, then L-BFGS.

    ``lr`` decays geometrically to ``lr * lr_decay`` over the Adam phase. L-BFGS runs in chunks of
    ``lbfgs_chunk`` iterations (one ``LBFGS.step`` each, curvature pairs kept across chunks) until
    ``lbfgs_iters`` iterations or until it stops making progress. ``monitor()`` (no gradients) is
    called every ``monitor_every`` iterations (0: only at the end of each phase) and its values are
    stored in the history; its cost is excluded from ``train_time``. A checkpoint of another network or
    of another ``lr``, ``lr_decay``, ``lbfgs_chunk`` or ``history_size`` is refused; one of fewer
    iterations is trained further (the schedule restarts at the saved iteration of this run's schedule).
    """
    for name, v in (("adam_iters", adam_iters), ("lbfgs_iters", lbfgs_iters)):
        if int(v) < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    adam_iters, lbfgs_iters = int(adam_iters), int(lbfgs_iters)
    gamma = lr_decay ** (1.0 / max(adam_iters, 1))
    history: dict[str, list[Any]] = {"iteration": [], "phase": [], "time": [], "loss": []}
    state: dict[str, Any] = {"history": history, "lbfgs_done": 0}
    res = TrainResult(history=history)
    last_loss: list[float] = []

    def log(it: int, phase: str, loss: float, parts: dict[str, float], elapsed: float,
            with_monitor: bool) -> None:
        row: dict[str, Any] = {"iteration": it, "phase": phase, "time": elapsed, "loss": loss}
        # loss terms are logged as loss_<name>; diagnostics a loss function reports (min_jacobian) as is
        row.update({(k if k.startswith("min_") else f"loss_{k}"): v for k, v in parts.items()})
        if with_monitor and monitor is not None:
            row.update({k: float(v) for k, v in monitor().items()})
        _record(state["history"], row)

    def on_step(info: StepInfo) -> None:
        it = info.global_step
        last_loss[:] = [info.loss]
        if it % log_every == 0 or it == adam_iters:
            mon = it == adam_iters or (monitor_every > 0 and it % monitor_every == 0)
            log(it, "adam", info.loss, info.parts, info.train_time, mon)

    def on_resume(tr: Trainer, ck: dict[str, Any]) -> None:
        # Restart the schedule at the saved iteration (of this run's schedule, not the saved one's).
        k = min(tr.result.global_step, adam_iters)
        tr.scheduler.gamma = gamma
        tr.scheduler.last_epoch = k
        for group in tr.optimizer.param_groups:
            group["lr"] = lr * gamma ** k
        tr.scheduler._last_lr = [g["lr"] for g in tr.optimizer.param_groups]

    core = CoreConfig(epochs=adam_iters, lr=lr, on_nonfinite="stop", progress=progress,
                      checkpoint=os.fspath(checkpoint) if checkpoint is not None else None,
                      checkpoint_every=max(1, int(checkpoint_every)))
    identity = {"lr": float(lr), "lr_decay": float(lr_decay), "lbfgs_chunk": int(lbfgs_chunk),
                "history_size": int(history_size)}
    tr = Trainer(module, lambda m, batch, ctx: loss_fn(), core, on_step=on_step, on_resume=on_resume,
                 scheduler=lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma), state=state,
                 identity=identity, desc=desc)
    # --- Adam: one trainer epoch per iteration ---------------------------------------------------------
    fit = tr.fit()
    res.history = state["history"]
    res.adam_iters = min(tr.result.global_step, adam_iters)
    res.nonfinite = fit.diverged
    # --- L-BFGS -------------------------------------------------------------------------------------
    done = int(state.get("lbfgs_done", 0))
    final: float | None = last_loss[0] if last_loss else None
    if lbfgs_iters > 0 and not res.nonfinite and done < lbfgs_iters:
        def on_chunk(done: int, step: int, loss: float, parts: dict[str, float]) -> None:
            mon = monitor_every > 0 and (done // monitor_every) != ((done - step) // monitor_every)
            log(adam_iters + done, "lbfgs", loss, parts, tr.result.train_time, mon)
            state["lbfgs_done"] = done
            if checkpoint is not None:
                tr.save()

        lb = tr.minimize_lbfgs(lbfgs_iters, done=done, chunk=lbfgs_chunk, history_size=history_size,
                               on_chunk=on_chunk, progress=progress)
        res.lbfgs_iters, res.lbfgs_stop, final = lb.iterations, lb.stop, lb.loss
        hist = state["history"]
        if monitor is not None and hist["phase"] and hist["phase"][-1] == "lbfgs":
            n = len(hist["iteration"])
            for k, v in monitor().items():
                hist.setdefault(k, [None] * n)
                hist[k][-1] = float(v)
    else:
        res.lbfgs_iters = done
    res.history = state["history"]
    res.train_time = tr.result.train_time
    if final is None:
        final, _ = tr.evaluate_loss()
    if not math.isfinite(final):
        res.nonfinite = True
    return res
