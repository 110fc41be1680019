"""Adjoints: how ``solve(problem, algorithm, adjoint=...)`` computes gradients.

* ``Backprop``: autograd through our step loop (the default; exact; memory O(steps)).
* ``BacksolveAdjoint``: the continuous adjoint solved backwards with our methods (O(1) memory).
* ``CheckpointAdjoint``: recompute between checkpoints (exact; memory O(n_checkpoints)).
* ``TorchDiffEqAdjoint``, ``TorchSDEAdjoint``: torchdiffeq's/torchsde's adjoints.

See ``docs/adjoints.md`` ("Choosing an adjoint").
"""

from .backsolve import BacksolveAdjoint
from .base import Adjoint, Backprop
from .checkpoint import CheckpointAdjoint
from .torch_backends import TorchDiffEqAdjoint, TorchSDEAdjoint

__all__ = ["Adjoint", "Backprop", "BacksolveAdjoint", "CheckpointAdjoint", "TorchDiffEqAdjoint",
           "TorchSDEAdjoint"]
