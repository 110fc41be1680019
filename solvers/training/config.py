"""``TrainConfig``: the settings of one ``Trainer`` run, checked when built.

The fields split in two. *Run controls* (``RUN_FIELDS``: how long this call trains, where it saves, whether
it shows progress) may change between a run and its resumption: raising ``epochs`` trains a finished run
further, ``max_epochs_this_call`` cuts a long run into pieces. Every other field defines the trajectory
(learning rate, batch size, seed, clipping, ...): it is hashed into the checkpoint, and resuming with a
different value is refused (``CheckpointMismatch`` naming the field and both values), because the result
would silently be neither run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..checks import check_real

__all__ = ["TrainConfig", "RUN_FIELDS", "OPTIMIZERS"]

#: Fields that do not define the trajectory (excluded from the config hash of a checkpoint).
RUN_FIELDS = ("epochs", "checkpoint", "checkpoint_every", "resume", "max_epochs_this_call", "time_limit",
              "progress")
#: The optimizers ``TrainConfig.optimizer`` names (pass ``Trainer(optimizer=...)`` for others).
OPTIMIZERS = ("adam", "adamw", "sgd")


def _int(name: str, value: Any, low: int, none: bool = False) -> int | None:
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int{' or None' if none else ''}, got {type(value).__name__} "
                        f"{value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}{' or None' if none else ''}, got {value}")
    return value


@dataclass
class TrainConfig:
    """Settings of ``Trainer``.

    Optimisation: ``optimizer`` (``"adam"``, ``"adamw"``, ``"sgd"``) with ``lr`` and ``weight_decay``;
    ``lr_final``: decay the learning rate geometrically from ``lr`` to ``lr_final`` over the run's
    ``epochs * steps_per_epoch`` steps (``ExponentialLR`` stepped after every optimizer step);
    ``grad_clip``: max gradient norm; ``check_grads``: a non-finite gradient is a divergence (checked
    before the step, so the parameters stay finite); ``reg_weight``: weight of the ``reg_loss`` that
    regularised modules (``nde`` regularisers) leave on the model, added to the loss (0: ignored).

    Data: ``batch_size`` samples per *global* batch (over all ranks; ``None``: the whole set);
    ``min_last_batch``: a last batch smaller than this joins the one before (2 for BatchNorm heads).

    Selection: ``monitor`` (an epoch metric, default ``"val_loss"``) and ``mode`` (``"min"``/``"max"``)
    choose the best epoch, whose parameters the model holds on return; ``patience``: epochs without
    improvement before stopping (``None``: never). ``on_nonfinite``: ``"raise"`` a
    ``FloatingPointError``, or ``"stop"`` training and mark the result ``diverged``.

    Run controls (``RUN_FIELDS``): ``epochs``, ``checkpoint`` (file written every ``checkpoint_every``
    epochs and at the end of each call, resumed from when it exists and ``resume``),
    ``max_epochs_this_call``, ``time_limit`` (seconds of this call), ``progress`` (tqdm on a TTY).

    ``seed``: the shuffling generator's seed and the base of every step's seed (``step_seed``).
    ``find_unused_parameters``: passed to ``DistributedDataParallel`` (needed only when some parameters
    get no gradient in a step).
    """

    epochs: int = 10
    batch_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    lr_final: float | None = None
    grad_clip: float | None = None
    check_grads: bool = False
    reg_weight: float = 1.0
    min_last_batch: int = 1
    monitor: str = "val_loss"
    mode: str = "min"
    patience: int | None = None
    on_nonfinite: str = "raise"
    seed: int = 0
    find_unused_parameters: bool = False
    checkpoint: str | None = None
    checkpoint_every: int = 1
    resume: bool = True
    max_epochs_this_call: int | None = None
    time_limit: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        _int("epochs", self.epochs, 0)
        _int("batch_size", self.batch_size, 1, none=True)
        _int("min_last_batch", self.min_last_batch, 1)
        _int("patience", self.patience, 1, none=True)
        _int("checkpoint_every", self.checkpoint_every, 1)
        _int("max_epochs_this_call", self.max_epochs_this_call, 1, none=True)
        _int("seed", self.seed, -(2**63))
        lr = check_real("lr", self.lr)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {self.lr!r}")
        wd = check_real("weight_decay", self.weight_decay)
        if not (math.isfinite(wd) and wd >= 0):
            raise ValueError(f"weight_decay must be finite and >= 0, got {self.weight_decay!r}")
        if self.lr_final is not None:
            f = check_real("lr_final", self.lr_final)
            if not (math.isfinite(f) and f > 0):
                raise ValueError(f"lr_final must be finite and > 0 or None, got {self.lr_final!r}")
        if self.grad_clip is not None:
            c = check_real("grad_clip", self.grad_clip)
            if not (math.isfinite(c) and c > 0):
                raise ValueError(f"grad_clip must be finite and > 0 or None, got {self.grad_clip!r}")
        rw = check_real("reg_weight", self.reg_weight)
        if not (math.isfinite(rw) and rw >= 0):
            raise ValueError(f"reg_weight must be finite and >= 0, got {self.reg_weight!r}")
        if self.time_limit is not None:
            t = check_real("time_limit", self.time_limit)
            if not t > 0:
                raise ValueError(f"time_limit must be > 0 seconds or None, got {self.time_limit!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r} "
                             "(pass Trainer(optimizer=factory) for another one)")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.on_nonfinite not in ("raise", "stop"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'stop', got {self.on_nonfinite!r}")
        if not isinstance(self.monitor, str) or not self.monitor:
            raise TypeError(f"monitor must be the name of an epoch metric, got {self.monitor!r}")

    def identity(self) -> dict[str, Any]:
        """The fields that define the trajectory (hashed into checkpoints): all but ``RUN_FIELDS``."""
        return {k: v for k, v in asdict(self).items() if k not in RUN_FIELDS}
