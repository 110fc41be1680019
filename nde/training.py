"""A small training loop shared by the ``nde`` sequence classifiers.

Minibatches from a seeded ``torch.Generator``, Adam, cross-entropy, early stopping on validation
accuracy (ties broken by the validation loss), tqdm progress, and checkpoints from which a run resumes
*exactly*: the checkpoint holds the model, the optimiser, the shuffling generator's state, the
early-stopping state and the history, and the Brownian seed of every training step is a function of
``(seed, epoch, step)``, so a run stopped after any epoch and resumed gives bit-identical parameters
to an uninterrupted one (on the same device and thread count).

Evaluation solves with a fixed Brownian seed (``eval_seed``), so validation and test numbers of an SDE
model are repeatable.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


class SeriesData(Protocol):
    """Anything with ``times (L,)``, ``x (N, L, C)``, ``y (N,)`` (``nde.datasets.TimeSeriesDataset``)."""

    times: Tensor
    x: Tensor
    y: Tensor


@dataclass
class TrainConfig:
    """Settings of ``fit``. ``patience``: epochs in which neither the validation accuracy nor the
    validation loss beat its best so far, before stopping (``None``: never stop early); the kept
    parameters are those of the best validation accuracy (ties: lower loss). Counting the loss too
    keeps a model whose validation loss still falls while its accuracy lags behind epoch 0's from
    being stopped before it learns (seen on BasicMotions). ``checkpoint``: file written after every
    epoch (and read back when it exists and ``resume`` is true)."""

    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int | None = 10
    seed: int = 0
    eval_seed: int = 12345
    eval_batch_size: int = 256
    progress: bool = True
    checkpoint: str | None = None
    resume: bool = True
    max_epochs_this_call: int | None = None   # stop after this many epochs (to test / split long runs)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")


@dataclass
class TrainResult:
    """History (one dict per epoch), the best epoch and its validation scores, and the wall time."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_acc: float = -1.0
    best_val_loss: float = float("inf")
    min_val_loss: float = float("inf")
    train_time: float = 0.0
    stopped_early: bool = False
    finished: bool = False


def step_seed(seed: int, epoch: int, step: int) -> int:
    """The Brownian seed of one training step (a fixed function, so resumed runs replay it)."""
    return (seed * 1_000_003 + epoch * 10_007 + step) % (2**62)


@torch.no_grad()
def evaluate(model: nn.Module, data: SeriesData, batch_size: int = 256,
             seed: int = 12345) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``data`` (Brownian seed ``seed`` per batch)."""
    was = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, len(data.y)
    dev = next(model.parameters()).device
    for i, s in enumerate(range(0, n, batch_size)):
        xb, yb = data.x[s:s + batch_size].to(dev), data.y[s:s + batch_size].to(dev)
        logits = model(data.times, xb, seed=seed + i)
        loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(-1) == yb).sum())
    model.train(was)
    return loss_sum / n, correct / n


def save_checkpoint(path: str, payload: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then an atomic rename: a run killed while saving leaves the
    previous checkpoint intact."""
    tmp = f"{path}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, seed: int, model: nn.Module, opt: torch.optim.Optimizer,
                    gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Restore ``model``, ``opt`` and the shuffling generator ``gen`` from a checkpoint written by a
    training loop of this package and return it (its ``best_state``, ``bad_epochs``, ``epoch`` and
    ``result`` are the loop's to restore). A checkpoint of another seed is refused."""
    ck = torch.load(path, map_location=device, weights_only=False)
    if ck["config"]["seed"] != seed:
        raise ValueError(f"checkpoint {path} was written with seed {ck['config']['seed']}, not {seed}")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    gen.set_state(ck["generator"])
    return ck


def _check_labels(name: str, data: SeriesData, num_classes: int | None) -> None:
    """Class labels ``y (N,)``: integers in ``[0, num_classes)``, one per series, checked before training
    (out of range, cross-entropy would fail inside the first batch with torch's IndexError)."""
    y = data.y
    if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.is_complex() or y.dtype == torch.bool:
        what = y.dtype if isinstance(y, Tensor) else type(y).__name__
        raise TypeError(f"{name}.y must be a tensor of integer class labels, got {what}")
    if y.dim() != 1 or len(y) != len(data.x):
        raise ValueError(f"{name}.y must have shape (N,) with N = len({name}.x) = {len(data.x)}, "
                         f"got {tuple(y.shape)}")
    lo, hi = int(y.min()), int(y.max())
    if num_classes is not None and (lo < 0 or hi >= num_classes):
        raise ValueError(f"{name}.y holds labels in [{lo}, {hi}]; the model has num_classes = {num_classes}, "
                         f"so labels must lie in [0, {num_classes - 1}]")
    if lo < 0:
        raise ValueError(f"{name}.y holds a negative label ({lo}); class labels start at 0")


def fit(model: nn.Module, train: SeriesData, val: SeriesData, config: TrainConfig | None = None,
        desc: str = "train") -> TrainResult:
    """Train ``model`` (``model(times, x, seed=...) -> logits``) with Adam and early stopping.

    On return the model holds the parameters of the best validation epoch. With ``config.checkpoint``
    a checkpoint is written after every epoch; an existing one is resumed from (``config.resume``).
    """
    cfg = config or TrainConfig()
    if len(train.y) == 0 or len(val.y) == 0:
        raise ValueError("train and validation sets must not be empty")
    num_classes = getattr(model, "num_classes", None)
    for name, data in (("train", train), ("val", val)):
        _check_labels(name, data, num_classes)
    dev = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    res = TrainResult()
    best_state = copy.deepcopy(model.state_dict())
    bad = 0
    start_epoch = 0
    if cfg.checkpoint and cfg.resume and Path(cfg.checkpoint).exists():
        ck = load_checkpoint(cfg.checkpoint, cfg.seed, model, opt, gen, dev)
        best_state, bad, start_epoch = ck["best_state"], ck["bad_epochs"], ck["epoch"] + 1
        res = TrainResult(**ck["result"])
    if res.finished:
        model.load_state_dict(best_state)
        return res
    n = len(train.y)
    n_batches = (n + cfg.batch_size - 1) // cfg.batch_size
    if n_batches > 1 and n % cfg.batch_size == 1:
        n_batches -= 1   # a last batch of one sample joins the one before (BatchNorm needs two in training)
    end_epoch = cfg.epochs
    if cfg.max_epochs_this_call is not None:
        end_epoch = min(cfg.epochs, start_epoch + cfg.max_epochs_this_call)
    bar = tqdm(range(start_epoch, end_epoch), desc=desc, disable=None if cfg.progress else True, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen)
        tot = 0.0
        for b in range(n_batches):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size if b < n_batches - 1 else n]
            xb, yb = train.x[idx].to(dev), train.y[idx].to(dev)
            logits = model(train.times, xb, seed=step_seed(cfg.seed, epoch, b))
            loss = nn.functional.cross_entropy(logits, yb)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch}, step {b}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
        res.train_time += time.perf_counter() - t0
        vl, va = evaluate(model, val, cfg.eval_batch_size, cfg.eval_seed)
        res.history.append({"epoch": epoch, "train_loss": tot / n, "val_loss": vl, "val_acc": va})
        if va > res.best_val_acc or (va == res.best_val_acc and vl < res.best_val_loss):
            res.best_val_acc, res.best_val_loss, res.best_epoch = va, vl, epoch
            best_state = copy.deepcopy(model.state_dict())
            bad = 0
        elif vl < res.min_val_loss:
            bad = 0
        else:
            bad += 1
        res.min_val_loss = min(res.min_val_loss, vl)
        bar.set_postfix(loss=f"{tot / n:.3f}", val_acc=f"{va:.3f}", best=f"{res.best_val_acc:.3f}")
        stop = cfg.patience is not None and bad >= cfg.patience
        res.stopped_early = stop
        res.finished = stop or epoch + 1 >= cfg.epochs
        if cfg.checkpoint:
            save_checkpoint(cfg.checkpoint, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "generator": gen.get_state(), "best_state": best_state, "bad_epochs": bad,
                                   "epoch": epoch, "result": asdict(res), "config": asdict(cfg)})
        if stop:
            break
    bar.close()
    model.load_state_dict(best_state)
    return res
