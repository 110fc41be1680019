"""Training of the ``nde`` sequence classifiers: a thin use of the shared ``solvers.training.Trainer``.

Minibatches from the run's seeded ``torch.Generator``, Adam, cross-entropy, early stopping on validation
accuracy (ties broken by the validation loss), tqdm progress, and checkpoints from which a run resumes
*exactly*: the trainer's checkpoint (``solvers.training.checkpoint``: atomic, ``weights_only=True``)
holds the model, the optimiser, the shuffling generator's state, the early-stopping state and the
history, and the Brownian seed of every training step is a function of ``(seed, epoch, step)``
(``step_seed``), so a run stopped after any epoch and resumed gives bit-identical parameters to an
uninterrupted one (on the same device and thread count). Under ``torchrun`` the same call trains with
``DistributedDataParallel`` (``docs/training.md``).

Evaluation solves with a fixed Brownian seed (``eval_seed``), so validation and test numbers of an SDE
model are repeatable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from solvers.training import FitResult, Trainer
from solvers.training import TrainConfig as CoreConfig
from solvers.training import step_seed as _core_step_seed

__all__ = ["SeriesData", "TrainConfig", "TrainResult", "step_seed", "evaluate", "fit"]


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
    """The Brownian seed of one training step (a fixed function, so resumed runs replay it); the
    single-process case of ``solvers.training.step_seed``."""
    return _core_step_seed(seed, epoch, step)


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


#: Fields of ``TrainConfig`` that may change when a run resumes (the run's length and bookkeeping); every
#: other field is part of the checkpoint's config hash.
RUN_FIELDS = ("epochs", "progress", "checkpoint", "resume", "max_epochs_this_call")


def _select_by_accuracy(row: dict[str, Any], res: FitResult) -> str:
    """Best: higher validation accuracy, ties broken by lower loss; progress (patience reset without a
    new best): a validation loss below every earlier one."""
    va, vl = row["val_acc"], row["val_loss"]
    best_acc, best_loss = res.best.get("val_acc", -1.0), res.best.get("val_loss", math.inf)
    if va > best_acc or (va == best_acc and vl < best_loss):
        return "best"
    if vl < min((h["val_loss"] for h in res.history), default=math.inf):
        return "progress"
    return "none"


def fit(model: nn.Module, train: SeriesData, val: SeriesData, config: TrainConfig | None = None,
        desc: str = "train") -> TrainResult:
    """Train ``model`` (``model(times, x, seed=...) -> logits``) with Adam and early stopping.

    On return the model holds the parameters of the best validation epoch. With ``config.checkpoint``
    a checkpoint is written after every epoch; an existing one is resumed from (``config.resume``); one
    of another model or other settings (anything but ``RUN_FIELDS``) is refused with a message naming
    the difference.
    """
    cfg = config or TrainConfig()
    if len(train.y) == 0 or len(val.y) == 0:
        raise ValueError("train and validation sets must not be empty")
    num_classes = getattr(model, "num_classes", None)
    for name, data in (("train", train), ("val", val)):
        _check_labels(name, data, num_classes)
    dev = next(model.parameters()).device

    def loss_fn(m: nn.Module, idx: Tensor, ctx: Any) -> Tensor:
        xb, yb = train.x[idx].to(dev), train.y[idx].to(dev)
        return nn.functional.cross_entropy(m(train.times, xb, seed=ctx.seed), yb)

    def validate(m: nn.Module, epoch: int) -> dict[str, float]:
        vl, va = evaluate(m, val, cfg.eval_batch_size, cfg.eval_seed)
        return {"val_loss": vl, "val_acc": va}

    # a last batch of one sample joins the one before (BatchNorm needs two in training)
    core = CoreConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                      patience=cfg.patience, seed=cfg.seed, min_last_batch=2, progress=cfg.progress,
                      checkpoint=cfg.checkpoint, resume=cfg.resume,
                      max_epochs_this_call=cfg.max_epochs_this_call)
    identity = {k: v for k, v in asdict(cfg).items() if k not in RUN_FIELDS}
    r = Trainer(model, loss_fn, core, data=len(train.y), validate=validate, select=_select_by_accuracy,
                identity=identity, desc=desc).fit()
    return TrainResult(history=r.history, best_epoch=r.best_epoch, best_val_acc=r.best.get("val_acc", -1.0),
                       best_val_loss=r.best.get("val_loss", math.inf),
                       min_val_loss=min((h["val_loss"] for h in r.history), default=math.inf),
                       train_time=r.train_time, stopped_early=r.stopped_early, finished=r.finished)
