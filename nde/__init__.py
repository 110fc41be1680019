"""Neural differential equations: modules and the solver-heuristic regularisers.

>>> import torch
>>> from torch import nn
>>> from nde import NeuralODE, LocalRegularizer
>>> class F(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.lin = nn.Linear(2, 2)
...     def forward(self, t, y):
...         return torch.tanh(self.lin(y))
>>> model = NeuralODE(F(), rtol=1e-4, atol=1e-6)
>>> ys = model(torch.ones(3, 2), regularizer=LocalRegularizer("error", seed=0))
>>> tuple(ys.shape), model.reg_loss.dim(), model.nfe_forward > 0
((2, 3, 2), 0, True)
"""

from .models import NeuralODE, NeuralSDE
from .paths import ControlPath, hermite_path, linear_path
from .regularization import (
    RNODE,
    STEER,
    Constant,
    ExponentialDecay,
    GlobalCombined,
    GlobalError,
    GlobalStiffness,
    LocalRegularizer,
    Regularizer,
    Schedule,
    TayNODE,
    global_combined,
    global_error,
    global_stiffness,
)
from .stable_sde import (
    GeometricSDE,
    GRUdt,
    LangevinSDE,
    LinearNoiseSDE,
    NeuralCDE,
    NeuralSDEClassifier,
    build_model,
)
from .training import TrainConfig, evaluate, fit

__all__ = ["NeuralODE", "NeuralSDE", "Regularizer", "GlobalError", "GlobalStiffness", "GlobalCombined",
           "LocalRegularizer", "STEER", "RNODE", "TayNODE", "Schedule", "Constant", "ExponentialDecay",
           "global_error", "global_stiffness", "global_combined",
           "ControlPath", "linear_path", "hermite_path",
           "LangevinSDE", "LinearNoiseSDE", "GeometricSDE", "NeuralSDEClassifier", "NeuralCDE", "GRUdt",
           "build_model", "TrainConfig", "fit", "evaluate"]
