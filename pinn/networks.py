"""Networks and input embeddings for PINNs.

* ``MLP``: fully connected, ``tanh`` by default, Xavier-normal weights (Glorot and Bengio 2010),
  the usual PINN initialisation (Raissi et al. 2019).
* ``SpaceTimeEmbedding``: ``(x, t) -> (cos(k (x - a)), sin(k (x - a)), tau)`` with ``k = 2 pi / L``
  for periodic domains, so every function of the features is exactly ``L``-periodic in ``x`` (with all
  its derivatives); ``(2 (x - a) / L - 1, tau)`` otherwise. ``tau`` maps ``[t0, t1]`` onto ``[-1, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

_ACTIVATIONS = {"tanh": nn.Tanh, "sin": None, "gelu": nn.GELU, "silu": nn.SiLU, "softplus": nn.Softplus}


class _Sin(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


def activation(name: str) -> nn.Module:
    if name == "sin":
        return _Sin()
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]()


class MLP(nn.Module):
    """``in_features -> hidden... -> out_features`` with a smooth activation between layers."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int = 1, act: str = "tanh"):
        super().__init__()
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty list of positive widths, got {hidden!r}")
        layers: list[nn.Module] = []
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, int(h)), activation(act)]
            prev = int(h)
        layers.append(nn.Linear(prev, out_features))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class SpaceTimeEmbedding(nn.Module):
    """Features of ``(x, t)``: exactly periodic in ``x`` when ``periodic``; 3 or 2 features."""

    def __init__(self, domain: tuple[float, float], tspan: tuple[float, float], periodic: bool):
        super().__init__()
        self.a, self.b = domain
        self.t0, self.t1 = tspan
        self.periodic = periodic
        self.k = 2 * math.pi / (self.b - self.a)

    @property
    def features(self) -> int:
        return 3 if self.periodic else 2

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        tau = 2 * (t - self.t0) / (self.t1 - self.t0) - 1
        if self.periodic:
            theta = self.k * (x - self.a)
            return torch.stack([torch.cos(theta), torch.sin(theta), tau], dim=-1)
        return torch.stack([2 * (x - self.a) / (self.b - self.a) - 1, tau], dim=-1)
