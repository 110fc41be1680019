"""The training loop shared by the PINNs: Adam, then L-BFGS with a strong-Wolfe line search.

Adam (Kingma and Ba 2015) moves the network out of its initial basin; L-BFGS (Liu and Nocedal 1989)
with the strong-Wolfe line search (Nocedal and Wright, Alg. 3.5) then converges fast on the smooth,
deterministic loss of fixed collocation points, the usual PINN recipe (Raissi et al. 2019). The loop
records a history (loss and its terms, optional monitors such as the error against the reference),
shows a tqdm bar, survives a non-finite L-BFGS step by restoring the last good parameters, and can
checkpoint to a file and resume from it.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

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


def _evaluate(loss_fn: LossFn) -> tuple[Tensor, dict[str, Tensor]]:
    # The residuals need autograd (derivatives of the network), so no torch.no_grad() here.
    loss, parts = loss_fn()
    return loss.detach(), {k: v.detach() for k, v in parts.items()}


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
    stored in the history; its cost is excluded from ``train_time``.
    """
    for name, v in (("adam_iters", adam_iters), ("lbfgs_iters", lbfgs_iters)):
        if int(v) < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    params = [p for p in module.parameters() if p.requires_grad]
    res = TrainResult(history={"iteration": [], "phase": [], "time": [], "loss": []})
    adam = torch.optim.Adam(params, lr=lr)
    gamma = lr_decay ** (1.0 / max(adam_iters, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(adam, gamma=gamma)
    start_it, elapsed = 0, 0.0
    if checkpoint is not None and os.path.exists(checkpoint):
        state = torch.load(checkpoint, weights_only=False)
        module.load_state_dict(state["module"])
        adam.load_state_dict(state["adam"])
        res.history, start_it, elapsed = state["history"], state["iteration"], state["time"]
        # Restart the schedule at the saved iteration (of this run's schedule, not the saved one's).
        sched.last_epoch = min(start_it, adam_iters)
        for group in adam.param_groups:
            group["lr"] = lr * gamma ** min(start_it, adam_iters)

    def save(it: int) -> None:
        if checkpoint is None:
            return
        tmp = f"{checkpoint}.tmp"
        torch.save({"module": module.state_dict(), "adam": adam.state_dict(), "history": res.history,
                    "iteration": it, "time": elapsed}, tmp)
        os.replace(tmp, checkpoint)

    def log(it: int, phase: str, loss: Tensor, parts: dict[str, Tensor], with_monitor: bool) -> None:
        row: dict[str, Any] = {"iteration": it, "phase": phase, "time": elapsed, "loss": float(loss)}
        # loss terms are logged as loss_<name>; diagnostics a loss function reports (min_jacobian) as is
        row.update({(k if k.startswith("min_") else f"loss_{k}"): float(v) for k, v in parts.items()})
        if with_monitor and monitor is not None:
            row.update(monitor())
        _record(res.history, row)

    bar = tqdm(total=adam_iters + lbfgs_iters, initial=min(start_it, adam_iters + lbfgs_iters), desc=desc,
               disable=None if progress else True, leave=False, dynamic_ncols=True)
    # --- Adam ---------------------------------------------------------------------------------
    it = start_it
    loss, parts = None, {}
    while it < adam_iters:
        t_start = time.perf_counter()
        adam.zero_grad(set_to_none=True)
        loss, parts = loss_fn()
        if not torch.isfinite(loss.detach()):
            res.nonfinite = True
            break
        loss.backward()
        loss = loss.detach()
        adam.step()
        sched.step()
        it += 1
        elapsed += time.perf_counter() - t_start
        bar.update(1)
        last = it == adam_iters
        if it % log_every == 0 or last:
            mon = last or (monitor_every > 0 and it % monitor_every == 0)
            log(it, "adam", loss.detach(), {k: v.detach() for k, v in parts.items()}, mon)
            bar.set_postfix(loss=f"{float(loss):.3e}")
        if checkpoint is not None and (it % checkpoint_every == 0 or last):
            save(it)
    res.adam_iters = min(it, adam_iters)
    # --- L-BFGS -------------------------------------------------------------------------------
    done = max(it - adam_iters, 0)
    if lbfgs_iters > 0 and not res.nonfinite and done < lbfgs_iters:
        lbfgs = torch.optim.LBFGS(params, lr=1.0, max_iter=lbfgs_chunk, max_eval=lbfgs_chunk * 5 // 4 + 1,
                                  history_size=history_size, tolerance_grad=1e-12, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")
        cache: dict[str, Any] = {}

        def closure() -> Tensor:
            lbfgs.zero_grad(set_to_none=True)
            loss, parts = loss_fn()
            loss.backward()
            cache["loss"], cache["parts"] = loss.detach(), {k: v.detach() for k, v in parts.items()}
            return loss

        n_prev = 0
        while done < lbfgs_iters:
            t_start = time.perf_counter()
            snapshot = copy.deepcopy(module.state_dict())
            lbfgs.param_groups[0]["max_iter"] = min(lbfgs_chunk, lbfgs_iters - done)
            lbfgs.step(closure)
            elapsed += time.perf_counter() - t_start
            state = lbfgs.state[lbfgs._params[0]]
            n_iter = int(state.get("n_iter", 0))
            step = n_iter - n_prev
            n_prev = n_iter
            loss, parts = _evaluate(loss_fn)
            if not torch.isfinite(loss):
                module.load_state_dict(snapshot)
                res.lbfgs_stop = "non-finite loss: restored the parameters of the previous chunk"
                loss, parts = _evaluate(loss_fn)
                break
            done += step
            bar.update(step)
            bar.set_postfix(loss=f"{float(loss):.3e}")
            mon = monitor_every > 0 and (done // monitor_every) != ((done - step) // monitor_every)
            log(adam_iters + done, "lbfgs", loss, parts, mon)
            if checkpoint is not None:
                save(adam_iters + done)
            if step < lbfgs.param_groups[0]["max_iter"]:
                res.lbfgs_stop = "converged (no further progress within the tolerances)"
                break
        res.lbfgs_iters = done
        if monitor is not None and res.history["phase"] and res.history["phase"][-1] == "lbfgs":
            n = len(res.history["iteration"])
            for k, v in monitor().items():
                res.history.setdefault(k, [None] * n)
                res.history[k][-1] = v
    bar.close()
    res.train_time = elapsed
    if loss is None:
        loss, _ = _evaluate(loss_fn)
    if not math.isfinite(float(loss)):
        res.nonfinite = True
    return res
