"""One training loop for every model of the project, with one checkpoint format and
``DistributedDataParallel`` (``docs/training.md``).

>>> import torch
>>> from torch import nn
>>> from solvers.training import Trainer, TrainConfig
>>> x = torch.linspace(-1, 1, 32).unsqueeze(-1)
>>> y = 3 * x
>>> model = nn.Linear(1, 1)
>>> loss = lambda m, idx, ctx: ((m(x[idx]) - y[idx]) ** 2).mean()
>>> res = Trainer(model, loss, TrainConfig(epochs=60, batch_size=8, lr=0.1, progress=False), data=32).fit()
>>> len(res.history), res.history[-1]["train_loss"] < 1e-3
(60, True)

Lives in ``solvers`` (which every package may depend on) and imports nothing from ``nde`` or ``pinn``:
the model-specific parts (losses, validation metrics, result types) stay in the thin entry points
``nde.training.fit``, ``nde.forecasting.fit_forecaster``, ``pinn.training.train`` and
``solvers.linear.training.train_dcdm``.
"""

from .checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    CheckpointMismatch,
    check_compatible,
    config_hash,
    load_checkpoint,
    model_fingerprint,
    read_checkpoint,
    save_checkpoint,
)
from .config import RUN_FIELDS, TrainConfig
from .distributed import (
    DistContext,
    all_reduce_sum,
    broadcast_object,
    current_context,
    distributed_available,
    free_port,
    init_distributed,
    local_device,
    shard,
    spawn,
)
from .seeds import rank_seed, step_seed
from .trainer import FitResult, LBFGSResult, StepContext, StepInfo, Trainer

__all__ = [
    "Trainer", "TrainConfig", "FitResult", "StepContext", "StepInfo", "LBFGSResult", "RUN_FIELDS",
    "save_checkpoint", "load_checkpoint", "read_checkpoint", "check_compatible", "model_fingerprint",
    "config_hash", "CheckpointError", "CheckpointMismatch", "FORMAT", "FORMAT_VERSION",
    "DistContext", "init_distributed", "current_context", "distributed_available", "local_device", "shard",
    "all_reduce_sum", "broadcast_object", "free_port", "spawn", "rank_seed", "step_seed",
]
