"""``Trainer``: the one training loop of the project (``nde``, ``pinn``, DCDM and the benchmarks all use it).

**The loop.** For each epoch: the model in training mode, the epoch's global batches, and for each batch
one optimizer step: ``loss_fn(model, batch, ctx)`` (a mean over the batch, optionally with a dict of
named terms), plus ``reg_weight`` times the ``reg_loss`` that regularised modules left on the model
(``nde.regularization``: ``model(..., regularizer=reg)`` sets ``reg_loss``, cleared by the trainer
before every step so a stale one is never added), a finiteness check, backward, optional gradient check
and clipping, the step, the learning-rate schedule. After the epoch: ``validate(model, epoch)``, the
epoch's metrics row (``epoch``, ``train_loss``, the validation metrics), the selection of the best epoch
(``monitor``/``mode`` or a ``select`` callback), patience, the checkpoint. On return the model holds the
best epoch's parameters (when there is validation), and ``FitResult`` holds the history.

Batches come from one of three sources: ``data=N`` (index batches: a permutation of ``range(N)`` drawn
from the run's ``torch.Generator`` every epoch, cut into ``batch_size`` pieces), ``batches(epoch,
generator)`` (any iterable the caller builds, e.g. right-hand sides sampled from the generator), or
neither (one full-batch step per epoch, ``batch=None``, as PINNs train).

**Seeds.** ``ctx.seed`` is ``step_seed(seed, epoch, step, rank)``: the seed for the step's Brownian paths,
collocation points or regulariser draws. The shuffling generator is the only random state carried from
step to step; it is saved with the checkpoint, so resuming replays the same batches.

**Exact resume.** The checkpoint (``solvers.training.checkpoint``, written atomically, read with
``weights_only=True``) holds the model, optimizer, scheduler, the shuffling generator, the trainer's state
(epoch, step, best epoch and its parameters, patience counter, history, time) and, on one process, the
global torch RNG state (for dropout and other draws from the global generator). Training ``N`` epochs in
one call and ``k`` + ``N - k`` epochs over two calls (or two processes) give bit-identical parameters on
the same device and thread count (tests/test_trainer.py).

**DistributedDataParallel.** In a process group of ``K > 1`` ranks (``torchrun``, or ``spawn``), the
trainer wraps a small module whose ``forward(batch, ctx)`` *is* the loss function (model, loss and
regulariser term) in ``DistributedDataParallel``. Whatever the loss function calls (``forward``, or
another method such as ``Forecaster.forecast``, or a closure over the model, as PINN losses are), it runs
inside DDP's forward, so DDP's reducer is armed for every backward. Gradients reach it through the
parameters' gradient accumulators, also from custom ``autograd.Function``s (``BacksolveAdjoint``,
``CheckpointAdjoint``), which return parameter gradients from their ``backward`` like any other node: the
parameters are those of the one model (no replicas, the cause of the torchdiffeq ``DataParallel``
zero-gradient bug).

Every rank draws the same global batch and takes its contiguous shard (``distributed.shard``); the local
mean loss is scaled by ``K n_local / n_global`` so that DDP's average of the ranks' gradients is the
gradient of the global mean even for unequal shards. Metrics are all-reduced (float64 sums), validation
metrics and stop decisions are broadcast from rank 0, and only rank 0 writes checkpoints and shows
progress. The checkpoint holds no rank-dependent state, so one written with ``K`` ranks resumes on 1 and
vice versa.

Agreement with one process is to floating-point tolerance, not bit for bit: DDP sums the ranks'
gradients bucket by bucket (buckets filled in reverse parameter order, each all-reduced by gloo's or
NCCL's fixed-order algorithm), which associates the sum over samples differently from one process's
backward over the whole batch. For a given world size and thread count the order is fixed, so repeated
runs agree bit for bit. BatchNorm statistics are per rank (DDP broadcasts rank 0's buffers at each
forward), and regularisers' penalties are averaged over the ranks' shards: both agree with one process
in distribution only.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sized
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import DistContext, all_reduce_sum, barrier, broadcast_object, init_distributed, shard
from .seeds import step_seed

__all__ = ["Trainer", "StepContext", "StepInfo", "FitResult", "LBFGSResult", "LossFn"]


@dataclass(frozen=True)
class StepContext:
    """What ``loss_fn`` knows about its step: position in the run, the step's seed and the world."""

    epoch: int
    step: int
    global_step: int
    seed: int
    rank: int = 0
    world_size: int = 1

    def shard(self, x: Tensor) -> Tensor:
        """This rank's contiguous chunk of ``x`` along dim 0 (``x`` itself on one process)."""
        return shard(x, self.rank, self.world_size)


#: ``loss_fn(model, batch, ctx) -> loss`` or ``(loss, {name: term})``: the mean over the batch.
LossFn = Callable[[nn.Module, Any, StepContext], "Tensor | tuple[Tensor, Mapping[str, Tensor]]"]


@dataclass
class StepInfo:
    """One optimizer step, as ``on_step`` sees it (losses averaged over the global batch)."""

    epoch: int
    step: int
    global_step: int
    loss: float
    parts: dict[str, float]
    samples: int
    train_time: float
    lr: float


@dataclass
class FitResult:
    """History (one dict per epoch), best epoch and its metrics, counters and flags of a run."""

    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_done: int = 0
    global_step: int = 0
    best_epoch: int = -1
    best: dict[str, float] = field(default_factory=dict)
    bad_epochs: int = 0
    train_time: float = 0.0
    stopped_early: bool = False
    finished: bool = False
    diverged: bool = False
    message: str = ""


@dataclass
class LBFGSResult:
    """What ``Trainer.minimize_lbfgs`` did: iterations (cumulative), why it stopped, the final loss."""

    iterations: int
    stop: str
    loss: float
    parts: dict[str, float]
    seconds: float


def _split(out: Any) -> tuple[Tensor, Mapping[str, Tensor]]:
    if isinstance(out, tuple):
        if len(out) != 2 or not isinstance(out[1], Mapping):
            raise TypeError("loss_fn must return a loss tensor or a pair (loss, {name: term})")
        return out[0], out[1]
    if not isinstance(out, Tensor):
        raise TypeError(f"loss_fn must return a loss tensor, got {type(out).__name__}")
    return out, {}


def _as_float(v: Any) -> float:
    return float(v.detach()) if isinstance(v, Tensor) else float(v)


def _reg_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "reg_loss")]


class _LossModule(nn.Module):
    """``forward(batch, ctx)`` = the loss function on the model, plus the regulariser term: the module DDP
    wraps, so everything the loss touches happens inside DDP's forward."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, reg_weight: float):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.reg_weight = reg_weight
        self.reg_holders = _reg_modules(model)

    def forward(self, batch: Any, ctx: StepContext
                ) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor | None]:
        for m in self.reg_holders:
            m.reg_loss = None
        loss, parts = _split(self.loss_fn(self.model, batch, ctx))
        reg = None
        if self.reg_weight > 0:
            for m in self.reg_holders:
                r = m.reg_loss
                if isinstance(r, Tensor):
                    reg = r if reg is None else reg + r
        parts = dict(parts)
        total = loss
        if reg is not None:
            # loss + reg exactly as written by hand when the weight is 1 (no extra rounding)
            term = reg if self.reg_weight == 1.0 else self.reg_weight * reg
            total = loss + term
            parts["reg"] = term
        return loss, parts, total, reg


class Trainer:
    """Train ``model`` on ``loss_fn`` with ``config`` (see the module docs).

    Args:
        model: the module (on its device; under NCCL, on ``local_device()``).
        loss_fn: ``loss_fn(model, batch, ctx) -> loss | (loss, {name: term})``, a mean over the batch.
        config: ``TrainConfig``.
        data: the number of training samples (or a sized object): index batches.
        batches: ``batches(epoch, generator) -> iterable of batches`` instead of index batches.
        steps_per_epoch: batches per epoch of ``batches`` (for the progress bar and ``lr_final``).
        validate: ``validate(model, epoch) -> {metric: float}`` after each epoch (every rank calls it;
            rank 0's result is used on all). ``FloatingPointError`` there is a divergence.
        select: ``select(row, result) -> "best" | "progress" | "none"`` instead of ``monitor``/``mode``:
            a new best epoch, progress that resets patience without a new best, or neither.
        optimizer: ``optimizer(params) -> torch.optim.Optimizer`` instead of ``config.optimizer``.
        scheduler: ``scheduler(optimizer) -> LRScheduler`` (stepped after every optimizer step) instead
            of ``config.lr_final``.
        on_step: ``on_step(StepInfo)`` after every optimizer step (its time is not training time).
        on_epoch: ``on_epoch(row, result)`` after every epoch.
        on_resume: ``on_resume(trainer, checkpoint)`` after the state was restored from a checkpoint.
        state: a dict of the caller's own state, saved with every checkpoint and restored on resume
            (plain values only: tensors, numbers, strings, lists, dicts).
        identity: the settings hashed into the checkpoint (default ``config.identity()``).
        desc: the progress bar's label.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, config: TrainConfig | None = None, *,
                 data: int | Sized | None = None,
                 batches: Callable[[int, torch.Generator], Iterable[Any]] | None = None,
                 steps_per_epoch: int | None = None,
                 validate: Callable[[nn.Module, int], Mapping[str, float]] | None = None,
                 select: Callable[[dict[str, Any], FitResult], str] | None = None,
                 optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
                 scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
                 on_step: Callable[[StepInfo], None] | None = None,
                 on_epoch: Callable[[dict[str, Any], FitResult], None] | None = None,
                 on_resume: Callable[[Trainer, dict[str, Any]], None] | None = None,
                 state: dict[str, Any] | None = None, identity: Mapping[str, Any] | None = None,
                 desc: str = "train"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(model, batch, ctx)")
        if data is not None and batches is not None:
            raise ValueError("pass data= (index batches) or batches= (your own), not both")
        self.config = cfg = config or TrainConfig()
        self.model = model
        self.loss_fn = loss_fn
        self.n: int | None = None
        if data is not None:
            self.n = int(data) if isinstance(data, int) else len(data)
            if self.n < 1:
                raise ValueError("the training set is empty")
        self.batches_fn = batches
        self.validate, self.select = validate, select
        self.on_step, self.on_epoch, self.on_resume = on_step, on_epoch, on_resume
        self.state: dict[str, Any] = state if state is not None else {}
        self.identity = dict(identity) if identity is not None else cfg.identity()
        self.desc = desc
        self.dist: DistContext = init_distributed()
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no parameters that require grad")
        self.steps_per_epoch = self._steps_per_epoch(steps_per_epoch)
        self.optimizer = optimizer(self.params) if optimizer is not None else self._default_optimizer()
        self.scheduler = scheduler(self.optimizer) if scheduler is not None else self._default_scheduler()
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.result = FitResult()
        self.best_state: dict[str, Tensor] | None = None
        self._loss_module = _LossModule(model, loss_fn, float(cfg.reg_weight))
        self._ddp: nn.Module | None = None
        self._restored = False

    # -- construction helpers --------------------------------------------------------------------
    def _steps_per_epoch(self, given: int | None) -> int | None:
        if self.n is not None:
            bs = self.config.batch_size or self.n
            k = max(1, -(-self.n // bs))
            if k > 1 and self.n - (k - 1) * bs < self.config.min_last_batch:
                k -= 1
            return k
        if self.batches_fn is None:
            return 1
        return None if given is None else int(given)

    def _default_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "adam":
            return torch.optim.Adam(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _default_scheduler(self) -> Any:
        cfg = self.config
        if cfg.lr_final is None:
            return None
        if self.steps_per_epoch is None:
            raise ValueError("lr_final needs the number of steps: pass steps_per_epoch= with batches=")
        total = cfg.epochs * self.steps_per_epoch
        gamma = (cfg.lr_final / cfg.lr) ** (1.0 / max(total, 1))
        return torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma)

    def _module(self) -> nn.Module:
        """The loss module, wrapped in DDP on more than one rank (built once)."""
        if not self.dist.distributed:
            return self._loss_module
        if self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            # device_ids=None: inputs (index tensors, contexts) are not moved; the loss function
            # moves its data to the model's device itself, as on one process.
            self._ddp = DistributedDataParallel(self._loss_module, device_ids=None,
                                                find_unused_parameters=self.config.find_unused_parameters)
        return self._ddp

    # -- checkpoints -------------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Any]:
        if self.dist.distributed:
            return {}   # per-rank global RNG streams are not part of a world-size-independent state
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return rng

    def save(self) -> None:
        """Write the checkpoint now (rank 0; the others wait for it)."""
        cfg = self.config
        if not cfg.checkpoint:
            return
        if self.dist.is_main:
            save_checkpoint(cfg.checkpoint, self.model, config=self.identity, kind="train",
                            optimizer=self.optimizer.state_dict(),
                            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
                            generator=self.generator.get_state(), rng=self._rng_state(),
                            trainer=asdict(self.result), best_state=self.best_state, state=self.state,
                            world_size=self.dist.world_size)
        barrier(self.dist)

    def restore(self, path: str) -> dict[str, Any]:
        """Load the checkpoint at ``path`` into the model, optimizer, scheduler, generator and state."""
        ck = load_checkpoint(path, self.model, self.identity, map_location="cpu")
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scheduler is not None and ck.get("scheduler") is not None:
            self.scheduler.load_state_dict(ck["scheduler"])
        self.generator.set_state(ck["generator"])
        rng = ck.get("rng") or {}
        if not self.dist.distributed and "torch" in rng:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        self.result = FitResult(**ck["trainer"])
        self.best_state = ck.get("best_state")
        self.state.clear()
        self.state.update(ck.get("state") or {})
        self._restored = True
        if self.on_resume is not None:
            self.on_resume(self, ck)
        return ck

    # -- one step ----------------------------------------------------------------------------------
    def _global_batches(self, epoch: int) -> Iterable[Any]:
        if self.n is not None:
            perm = torch.randperm(self.n, generator=self.generator)
            bs = self.config.batch_size or self.n
            k = self.steps_per_epoch or 1
            return [perm[b * bs:(b + 1) * bs if b < k - 1 else self.n] for b in range(k)]
        if self.batches_fn is not None:
            return self.batches_fn(epoch, self.generator)
        return [None]

    def _check_shards(self) -> None:
        """Every rank's shard of every global batch holds at least ``min_last_batch`` samples (at least
        one): the global batches do not depend on the world size, so a batch too small to share is an
        error, not a silently different batch."""
        if self.n is None or not self.dist.distributed:
            return
        bs = min(self.config.batch_size or self.n, self.n)
        smallest = min(bs, self.n - ((self.steps_per_epoch or 1) - 1) * bs)
        w, need = self.dist.world_size, self.config.min_last_batch
        if smallest // w < need:
            raise ValueError(f"a global batch of {smallest} samples split over {w} ranks gives a shard of "
                             f"{smallest // w} < {need} sample(s) (min_last_batch): raise batch_size, or "
                             "train on fewer ranks")

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def step(self, epoch: int, step: int, batch: Any) -> StepInfo:
        """One optimizer step on ``batch`` (a global batch); ``FloatingPointError`` on divergence."""
        cfg, d = self.config, self.dist
        where = f"epoch {epoch}, step {step}"
        ctx = StepContext(epoch, step, self.result.global_step, step_seed(cfg.seed, epoch, step, d.rank),
                          d.rank, d.world_size)
        if self.n is not None:
            local = shard(batch, d.rank, d.world_size)
            n_local, n_global = len(local), len(batch)
        else:
            local, n_local, n_global = batch, 1, d.world_size
        self.optimizer.zero_grad(set_to_none=True)
        failure = ""
        loss = total = None
        parts: dict[str, Tensor] = {}
        try:
            loss, parts, total, _ = self._module()(local, ctx)
        except FloatingPointError as err:   # reported to every rank below, so none waits in a collective
            failure = str(err)
        names = sorted(parts)
        if not d.distributed:
            if failure:
                raise FloatingPointError(failure)
            g_loss = float(loss.detach())
            finite = bool(torch.isfinite(total.detach()).all())
            g_parts = {k: _as_float(parts[k]) for k in names}
            samples = n_local
        else:
            # [loss * n, n, non-finite ranks, failed ranks]: a fixed layout, whatever happened here
            vals = [0.0, 0.0, 0.0, 1.0]
            if not failure:
                w = float(n_local)
                bad = 0.0 if bool(torch.isfinite(total.detach()).all()) else 1.0
                vals = [float(loss.detach()) * w, w, bad, 0.0]
            sums = all_reduce_sum(vals, d)
            if sums[3] > 0:
                raise FloatingPointError(failure or f"training failed on another rank at {where}")
            g_loss = sums[0] / sums[1]
            finite = sums[2] == 0.0 and math.isfinite(g_loss)
            # every rank ran the same loss function, so the same terms: their weighted sums in a second
            # reduction (only reached when no rank failed)
            psum = all_reduce_sum([_as_float(parts[k]) * n_local for k in names], d) if names else []
            g_parts = {k: psum[i] / sums[1] for i, k in enumerate(names)}
            samples = n_global if self.n is not None else int(sums[1])
        if not finite:
            raise FloatingPointError(f"non-finite training loss at {where}")
        if d.distributed and self.n is not None and n_local * d.world_size != n_global:
            # DDP averages the ranks' gradients: weight each rank's mean by its share of the batch
            total = total * (n_local * d.world_size / n_global)
        total.backward()
        if cfg.check_grads and not all(bool(torch.isfinite(p.grad).all()) for p in self.params
                                       if p.grad is not None):
            raise FloatingPointError(f"non-finite gradient at {where}")
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        lr = self._lr()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.result.global_step += 1
        return StepInfo(epoch, step, self.result.global_step, g_loss, g_parts, samples,
                        self.result.train_time, lr)

    def evaluate_loss(self, batch: Any = None, ctx: StepContext | None = None
                      ) -> tuple[float, dict[str, float]]:
        """The loss (and its terms) on ``batch`` without a step, averaged over ranks (autograd stays
        on: losses with derivatives of the network, as PINN residuals, need it)."""
        d = self.dist
        ctx = ctx or StepContext(self.result.epochs_done, 0, self.result.global_step,
                                 step_seed(self.config.seed, self.result.epochs_done, 0, d.rank),
                                 d.rank, d.world_size)
        loss, parts, total, _ = self._loss_module(batch, ctx)
        names = sorted(parts)
        vals = [float(total.detach())] + [_as_float(parts[k]) for k in names]
        if d.distributed:
            vals = [v / d.world_size for v in all_reduce_sum(vals, d)]
        return vals[0], {k: vals[1 + i] for i, k in enumerate(names)}

    # -- selection ---------------------------------------------------------------------------------
    def _decide(self, row: dict[str, Any]) -> str | None:
        if self.select is not None:
            return self.select(row, self.result)
        key = self.config.monitor
        if key not in row:
            return None
        v = float(row[key])
        if not math.isfinite(v):
            return "none"
        best = self.result.best.get(key)
        if best is None or (v < best if self.config.mode == "min" else v > best):
            return "best"
        return "none"

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self, until: int | None = None) -> FitResult:
        """Train from the checkpoint (if any) to ``config.epochs`` (or ``until``, or
        ``max_epochs_this_call`` more epochs); returns the result, the model on its best epoch."""
        from tqdm.auto import tqdm

        cfg, d = self.config, self.dist
        if cfg.checkpoint and cfg.resume and not self._restored and os.path.exists(cfg.checkpoint):
            self.restore(cfg.checkpoint)
        res = self.result
        if self.validate is not None and self.best_state is None:
            # the parameters returned if no epoch ever improves (as the nde loops did)
            self.best_state = copy.deepcopy(self.model.state_dict())
        if res.finished and (res.stopped_early or res.diverged or res.epochs_done >= cfg.epochs):
            self._restore_best()
            return res
        res.finished = False
        self._check_shards()
        start = res.epochs_done
        end = cfg.epochs
        if cfg.max_epochs_this_call is not None:
            end = min(end, start + cfg.max_epochs_this_call)
        if until is not None:
            end = min(end, int(until))
        spe = self.steps_per_epoch
        bar = tqdm(total=cfg.epochs * spe if spe else None, initial=start * spe if spe else 0, desc=self.desc,
                   disable=None if (cfg.progress and d.is_main) else True, leave=False, dynamic_ncols=True)
        t_call = time.perf_counter()
        try:
            for epoch in range(start, end):
                t0, t_cb = time.perf_counter(), 0.0
                self.model.train()
                tot, cnt = 0.0, 0
                try:
                    for b, batch in enumerate(self._global_batches(epoch)):
                        info = self.step(epoch, b, batch)
                        tot += info.loss * info.samples
                        cnt += info.samples
                        bar.update(1)
                        if self.on_step is not None:
                            t1 = time.perf_counter()
                            info.train_time = res.train_time + (t1 - t0 - t_cb)
                            self.on_step(info)
                            t_cb += time.perf_counter() - t1
                    res.train_time += time.perf_counter() - t0 - t_cb
                    row: dict[str, Any] = {"epoch": epoch, "train_loss": tot / cnt if cnt else float("nan")}
                    verdict = self._epoch_end(t_call)
                    if verdict["error"]:
                        raise FloatingPointError(verdict["error"])
                    row.update(verdict["metrics"])
                except FloatingPointError as err:
                    if cfg.on_nonfinite == "raise":
                        raise
                    res.diverged = res.finished = True
                    res.message = str(err)
                    self.save()
                    break
                decision = self._decide(row)
                if decision is None and cfg.patience is not None:
                    raise ValueError(f"patience={cfg.patience} needs the monitored metric {cfg.monitor!r} "
                                     f"among the epoch metrics {sorted(row)}: pass validate= or another "
                                     "monitor=")
                if decision == "best":
                    self.best_state = copy.deepcopy(self.model.state_dict())
                    res.best = {k: float(v) for k, v in row.items() if k != "epoch"}
                    res.best_epoch = epoch
                    res.bad_epochs = 0
                elif decision == "progress":
                    res.bad_epochs = 0
                elif decision == "none":
                    res.bad_epochs += 1
                elif decision is not None:
                    raise ValueError(f"select must return 'best', 'progress' or 'none', got {decision!r}")
                res.history.append(row)
                stop = cfg.patience is not None and res.bad_epochs >= cfg.patience
                res.epochs_done = epoch + 1
                res.stopped_early = stop
                res.finished = stop or epoch + 1 >= cfg.epochs
                time_up = verdict["time_up"]
                if cfg.checkpoint and ((epoch + 1) % cfg.checkpoint_every == 0 or res.finished or time_up
                                       or epoch + 1 >= end):
                    self.save()
                if self.on_epoch is not None:
                    self.on_epoch(row, res)
                bar.set_postfix({k: f"{v:.4g}" for k, v in list(row.items())[1:4] if isinstance(v, float)})
                if stop or time_up:
                    break
        finally:
            bar.close()
        self._restore_best()
        return res

    def _epoch_end(self, t_call: float) -> dict[str, Any]:
        """Validation metrics, a validation error and the time-limit decision: rank 0's, on every rank."""
        cfg = self.config
        metrics: dict[str, float] = {}
        error = ""
        if self.validate is not None:
            try:
                metrics = {k: float(v) for k, v in self.validate(self.model, self.result.epochs_done).items()}
            except FloatingPointError as err:
                error = str(err)
        time_up = cfg.time_limit is not None and time.perf_counter() - t_call > cfg.time_limit
        verdict = {"metrics": metrics, "error": error, "time_up": time_up}
        if self.dist.distributed and (self.validate is not None or cfg.time_limit is not None):
            verdict = broadcast_object(verdict, self.dist)
        return verdict

    def _restore_best(self) -> None:
        if self.best_state is not None and self.validate is not None:
            self.model.load_state_dict(self.best_state)

    # -- full-batch L-BFGS ---------------------------------------------------------------------------
    def minimize_lbfgs(self, iterations: int, *, done: int = 0, chunk: int = 50, history_size: int = 50,
                       on_chunk: Callable[[int, int, float, dict[str, float]], None] | None = None,
                       progress: bool | None = None) -> LBFGSResult:
        """L-BFGS with the strong-Wolfe line search on the full-batch loss (``batch=None``), in chunks of
        ``chunk`` iterations (curvature pairs kept across chunks) until ``iterations`` in all (``done``
        already) or no progress. A chunk that ends on a non-finite loss is undone (the parameters of
        the chunk before are restored). ``on_chunk(done, step, loss, parts)`` after every good chunk.

        Under DDP the closure's loss is the mean over ranks and the gradients DDP's average, so every
        rank takes the same line-search decisions and the same number of closure calls."""
        from tqdm.auto import tqdm

        d = self.dist
        if iterations <= done:
            return LBFGSResult(done, "", *self.evaluate_loss(), 0.0)
        lbfgs = torch.optim.LBFGS(self.params, lr=1.0, max_iter=chunk, max_eval=chunk * 5 // 4 + 1,
                                  history_size=history_size, tolerance_grad=1e-12, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")
        module = self._module()
        e = self.result.epochs_done
        ctx = StepContext(e, 0, self.result.global_step, step_seed(self.config.seed, e, 0, d.rank), d.rank,
                          d.world_size)

        def closure() -> Tensor:
            lbfgs.zero_grad(set_to_none=True)
            _, _, total, _ = module(None, ctx)
            total.backward()
            value = float(total.detach())
            if d.distributed:
                value = all_reduce_sum([value], d)[0] / d.world_size
            return torch.tensor(value, dtype=torch.float64)

        show = self.config.progress if progress is None else progress
        bar = tqdm(total=iterations, initial=done, desc=f"{self.desc} (L-BFGS)", leave=False,
                   dynamic_ncols=True, disable=None if (show and d.is_main) else True)
        n_prev, stop, seconds = 0, "", 0.0
        loss, parts = float("nan"), {}
        try:
            while done < iterations:
                t0 = time.perf_counter()
                snapshot = copy.deepcopy(self.model.state_dict())
                lbfgs.param_groups[0]["max_iter"] = min(chunk, iterations - done)
                lbfgs.step(closure)
                dt = time.perf_counter() - t0
                seconds += dt
                self.result.train_time += dt   # so that on_chunk sees the time so far
                n_iter = int(lbfgs.state[lbfgs._params[0]].get("n_iter", 0))
                step, n_prev = n_iter - n_prev, n_iter
                loss, parts = self.evaluate_loss()
                if not math.isfinite(loss):
                    self.model.load_state_dict(snapshot)
                    stop = "non-finite loss: restored the parameters of the previous chunk"
                    loss, parts = self.evaluate_loss()
                    break
                done += step
                bar.update(step)
                bar.set_postfix(loss=f"{loss:.3e}")
                if on_chunk is not None:
                    on_chunk(done, step, loss, parts)
                if step < lbfgs.param_groups[0]["max_iter"]:
                    stop = "converged (no further progress within the tolerances)"
                    break
        finally:
            bar.close()
        return LBFGSResult(done, stop, loss, parts, seconds)
