"""Controlled paths for irregularly sampled series with missing values.

Observations ``x[b, k, c]`` of sample ``b``, channel ``c`` at times ``t_k`` (``NaN`` where channel ``c``
was not observed) become a continuous path ``X(t)`` that can be evaluated, and differentiated, at any
``t``: the input of neural controlled / stochastic differential equations.

Missing values are first filled per sample and channel by linear interpolation in time between the
neighbouring observations of that channel; leading NaNs take the first observed value, trailing NaNs the
last one (a constant extension, the choice of torchcde). A channel with no observation at all is an
error. On the filled grid two interpolants are built, one cubic polynomial per interval
``[t_k, t_{k+1}]``, ``X(t) = a_k + b_k s + c_k s^2 + d_k s^3`` with ``s = t - t_k``:

* **linear**: ``b_k = (x_{k+1} - x_k) / h_k``, ``c_k = d_k = 0`` (``h_k = t_{k+1} - t_k``);
* **Hermite cubic with backward differences** (Morrill, Kidger, Yang, Lyons, "Neural controlled
  differential equations for online prediction tasks", 2021, section 3): the cubic Hermite interpolant
  whose slope at each knot is the backward difference ``m_k = (x_k - x_{k-1}) / h_{k-1}`` (``m_0`` the
  first forward difference). On ``[t_k, t_{k+1}]`` the slopes are ``m_k`` and ``m_{k+1}``, so the path
  up to ``t_{k+1}`` only uses observations up to ``t_{k+1}`` (causal), is C^1 and passes through every
  observation. With ``D_k = (x_{k+1} - x_k) / h_k``: ``c_k = (3 D_k - 2 m_k - m_{k+1}) / h_k``,
  ``d_k = (m_k + m_{k+1} - 2 D_k) / h_k^2``.

Both reproduce the observed values at the knots exactly (up to rounding) and are differentiable in ``t``
(and in the observations) by autograd.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Interpolation = Literal["linear", "hermite"]
_KINDS = ("linear", "hermite")


def check_times(t: Tensor | object, length: int | None = None) -> Tensor:
    """Validate observation times: 1-d or ``(batch, L)``, finite, strictly increasing along the last axis.

    Returns them as a floating tensor (float64 unless already floating). Raises ``ValueError``.
    """
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.dim() not in (1, 2):
        raise ValueError(f"times must have shape (L,) or (batch, L), got {tuple(t.shape)}")
    if t.shape[-1] < 2:
        raise ValueError(f"need at least two observation times, got {t.shape[-1]}")
    if length is not None and t.shape[-1] != length:
        raise ValueError(f"times have length {t.shape[-1]} but the values have {length} time points")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("times contain NaN or Inf")
    if not bool((t[..., 1:] > t[..., :-1]).all()):
        raise ValueError("times must be strictly increasing")
    return t


def fill_missing(t: Tensor, x: Tensor) -> Tensor:
    """Fill NaNs of ``x (batch, L, C)`` by linear interpolation in ``t`` per sample and channel.

    Leading / trailing NaNs take the first / last observed value. ``t`` is ``(L,)`` or ``(batch, L)``.
    Differentiable with respect to the observed values. Raises ``ValueError`` if some sample has a
    channel without any observation.
    """
    B, L, C = x.shape
    obs = ~torch.isnan(x)
    none = ~obs.any(dim=1)
    if bool(none.any()):
        b, c = (int(v) for v in none.nonzero()[0])
        raise ValueError(f"sample {b}, channel {c} has no observed value (all NaN): cannot build a path "
                         f"({int(none.sum())} such sample-channel pairs)")
    if bool(obs.all()):
        return x
    tt = t.to(x.dtype)
    tt = tt.expand(B, L) if tt.dim() == 1 else tt
    tt = tt.unsqueeze(-1).expand(B, L, C)
    idx = torch.arange(L, device=x.device).view(1, L, 1).expand(B, L, C)
    prev = torch.where(obs, idx, torch.full_like(idx, -1)).cummax(dim=1).values
    nxt = torch.where(obs, idx, torch.full_like(idx, L)).flip(1).cummin(dim=1).values.flip(1)
    # Leading NaNs: no previous observation -> use the next one; trailing: the previous one.
    prev_ok, next_ok = prev >= 0, nxt < L
    prev = torch.where(prev_ok, prev, nxt)
    nxt = torch.where(next_ok, nxt, prev)
    x0 = torch.where(obs, x, torch.zeros_like(x))  # NaN-free, so gradients of the gather stay finite
    xp, xn = x0.gather(1, prev), x0.gather(1, nxt)
    tp, tn = tt.gather(1, prev), tt.gather(1, nxt)
    span = tn - tp
    safe = torch.where(span > 0, span, torch.ones_like(span))
    w = torch.where(span > 0, (tt - tp) / safe, torch.zeros_like(span))
    return torch.where(obs, x0, xp + w * (xn - xp))


class ControlPath:
    """A batched piecewise-cubic path ``X(t)`` through observations with NaNs.

    Args:
        t: observation times, ``(L,)`` shared by the batch or ``(batch, L)``; strictly increasing.
        x: observations ``(batch, L, C)`` (or ``(L, C)`` for one sample), ``NaN`` where missing.
        kind: ``"hermite"`` (cubic Hermite with backward differences) or ``"linear"``.

    ``path.evaluate(t)`` returns ``X(t)`` of shape ``(batch, C)`` for a scalar ``t`` (a float or a 0-d
    tensor, possibly requiring grad) or ``(batch, n, C)`` for a 1-d tensor of ``n`` times;
    ``path.derivative(t)`` returns ``dX/dt`` in the same shapes. Outside ``[t_0, t_{L-1}]`` the end
    polynomials are extended.
    """

    def __init__(self, t: Tensor, x: Tensor, kind: Interpolation = "hermite"):
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            raise TypeError(f"values must be a floating tensor, got {x.dtype}")
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if x.dim() != 3:
            raise ValueError(f"values must have shape (batch, L, channels), got {tuple(x.shape)}")
        if bool(torch.isinf(x).any()):
            raise ValueError("values contain Inf (use NaN for missing observations)")
        t = check_times(t, x.shape[1])
        if t.dim() == 2 and t.shape[0] != x.shape[0]:
            raise ValueError(f"times have batch size {t.shape[0]} but the values have {x.shape[0]}")
        self.kind = kind
        self.times = t.to(x.device)
        self.observed = ~torch.isnan(x)
        self.values = fill_missing(self.times, x)
        self.batch, self.length, self.channels = x.shape
        self._build()

    def _build(self) -> None:
        x = self.values
        t = self.times.to(x.dtype)
        h = (t[..., 1:] - t[..., :-1]).unsqueeze(-1)            # (L-1, 1) or (B, L-1, 1)
        D = (x[:, 1:] - x[:, :-1]) / h                            # (B, L-1, C)
        a = x[:, :-1]
        if self.kind == "linear":
            z = torch.zeros_like(D)
            self.coeffs = (a, D, z, z)
            return
        m = torch.cat([D[:, :1], D], dim=1)                       # backward differences at the knots
        m0, m1 = m[:, :-1], m[:, 1:]
        c = (3 * D - 2 * m0 - m1) / h
        d = (m0 + m1 - 2 * D) / (h * h)
        self.coeffs = (a, m0, c, d)

    # ------------------------------------------------------------------------------------------
    def _locate(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Interval index ``(batch, n)`` and offset ``s = t - t_k`` ``(batch, n)`` for times ``t (n,)``."""
        knots = self.times
        n = t.shape[0]
        if knots.dim() == 1:
            idx = torch.searchsorted(knots, t.detach().to(knots.dtype), right=True) - 1
            idx = idx.clamp(0, self.length - 2)
            s = t - knots[idx].to(t.dtype)
            return idx.unsqueeze(0).expand(self.batch, n), s.unsqueeze(0).expand(self.batch, n)
        q = t.detach().to(knots.dtype).unsqueeze(0).expand(self.batch, n).contiguous()
        idx = (torch.searchsorted(knots.contiguous(), q, right=True) - 1).clamp(0, self.length - 2)
        s = t.unsqueeze(0) - knots.gather(1, idx).to(t.dtype)
        return idx, s

    def _prep(self, t: Tensor | float) -> tuple[Tensor, bool]:
        t = torch.as_tensor(t, device=self.values.device)
        if not t.is_floating_point():
            t = t.to(torch.float64)
        if t.dim() > 1:
            raise ValueError(f"evaluate at a scalar or a 1-d tensor of times, got shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t.detach()).all()):
            raise ValueError("evaluation time is NaN or Inf")
        return t.reshape(-1), t.dim() == 0

    def _gather(self, idx: Tensor) -> list[Tensor]:
        C = self.channels
        gi = idx.unsqueeze(-1).expand(*idx.shape, C)
        return [k.gather(1, gi) for k in self.coeffs]

    def evaluate(self, t: Tensor | float) -> Tensor:
        """``X(t)``: ``(batch, C)`` for scalar ``t``, ``(batch, n, C)`` for ``n`` times."""
        tv, scalar = self._prep(t)
        idx, s = self._locate(tv)
        a, b, c, d = self._gather(idx)
        s = s.to(a.dtype).unsqueeze(-1)
        out = a + s * (b + s * (c + s * d))
        return out[:, 0] if scalar else out

    def derivative(self, t: Tensor | float) -> Tensor:
        """``dX/dt(t)`` (right derivative at the knots): same shapes as ``evaluate``."""
        tv, scalar = self._prep(t)
        idx, s = self._locate(tv)
        _, b, c, d = self._gather(idx)
        s = s.to(b.dtype).unsqueeze(-1)
        out = b + s * (2 * c + 3 * s * d)
        return out[:, 0] if scalar else out

    def __call__(self, t: Tensor | float) -> Tensor:
        return self.evaluate(t)

    @property
    def t0(self) -> float:
        return float(self.times[..., 0].min())

    @property
    def t1(self) -> float:
        return float(self.times[..., -1].max())

    def __repr__(self) -> str:
        return (f"ControlPath(kind={self.kind!r}, batch={self.batch}, length={self.length}, "
                f"channels={self.channels}, missing={1 - self.observed.float().mean().item():.2f})")


def linear_path(t: Tensor, x: Tensor) -> ControlPath:
    """Piecewise-linear ``ControlPath`` through the observations (NaN-aware)."""
    return ControlPath(t, x, "linear")


def hermite_path(t: Tensor, x: Tensor) -> ControlPath:
    """Hermite cubic ``ControlPath`` with backward differences (NaN-aware)."""
    return ControlPath(t, x, "hermite")
