"""Probabilistic forecasting of irregularly sampled series with missing values by (stable) neural SDEs.

The classifiers of ``nde.stable_sde`` (Oh, Lim, Kim, "Stable Neural Stochastic Differential
Equations in Analyzing Irregular Time Series Data", ICLR 2024) read a latent state ``z(t)`` driven by a
controlled path ``X(t)`` of the observations. Here the same latent dynamics forecast:

**Task.** A series observed at times ``t_1 < ... < t_L`` with values ``x (L, C)`` is cut at
``L_in = L - H``. The *input window* is the first ``L_in`` points with the paper's missingness applied
(per sample and channel ``int(L_in * rate)`` points set to NaN, ``nde.datasets.drop_points``);
the *targets* are the last ``H`` values, complete. Inputs and targets are standardised per channel
with the mean and standard deviation of the observed training inputs (``forecast_task``).

**Model** (``Forecaster``). An encoder built by ``nde.stable_sde.build_model`` runs its own
dynamics over the input window to the latent state at ``T_in = t_{L_in}``. Then

* the four SDE encoders (``lsde``, ``lnsde``, ``gsde``, ``neural_sde``) continue the *same* SDE (same
  drift and diffusion networks) from ``T_in`` through the target times with the control path frozen at
  its last value, ``X(t) = X(T_in)`` for ``t >= T_in`` (``FrozenPath``): no information arrives
  after ``T_in``, and the spline is not extrapolated. The class structure therefore holds over the
  horizon: the LSDE drift ``gamma(z, E X(T_in))`` becomes autonomous, the LNSDE noise stays linear in
  ``z``, and the GSDE solution ``z(T_in) exp(int (gamma - sigma^2/2) ds + int sigma dW)`` keeps the sign
  of every coordinate. One solve covers input and horizon, through ``solvers.solve`` with the
  encoder's own solver (Euler-Maruyama, one step per observation or target interval, by default);
* the Neural CDE ``dz = f(z) dX`` sees ``dX/dt = 0`` after ``T_in``, so its latent stays at ``z(T_in)``;
  GRU-dt receives no new input, so its hidden state stays at its last value.

Every model is decoded the same way, ``x_hat(t) = D([z(t), phi(tau)])`` with ``tau = t - T_in``,
``phi(tau) = [s, sqrt(s)]``, ``s = tau / (T_in - t_1)`` and ``D`` a small MLP: the models differ only in
their latent dynamics.

**Training** (``fit_forecaster``, a thin use of ``solvers.training.Trainer``): the mean squared error of a
one-sample forecast (a fresh Brownian path per step, seeded by ``nde.training.step_seed``) on the
standardised targets, Adam, early stopping on the validation MSE of the mean forecast, checkpoints with
exact resume. ``loss="crps"`` trains on the two-sample CRPS instead (a proper scoring rule, which rewards
a calibrated spread rather than shrinking it).

**Metrics** (``forecast_metrics``), averaged over every target point: MSE and MAE of the mean of
``K`` sample paths, the ensemble CRPS in its unbiased ("fair") form (Ferro 2014; Zamo & Naveau 2018)

    CRPS = 1/K sum_i |X_i - y| - 1/(2 K (K - 1)) sum_{i != j} |X_i - X_j|,

an unbiased estimator of ``E|X - y| - E|X - X'|/2`` (Gneiting & Raftery 2007, eq. 21), and the coverage
of the central interval between the empirical ``(1 - level)/2`` and ``(1 + level)/2`` quantiles.
A deterministic forecast (``K = 1`` or all samples equal) has ``CRPS = MAE``.

**Baselines without learning**: the last observed input value per channel
(``last_value_forecast``) and the training mean (zero after standardisation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from solvers import SolverError
from solvers.training import StepContext, Trainer
from solvers.training import TrainConfig as CoreConfig

from .datasets import TimeSeriesDataset, drop_points, stratified_split
from .paths import ControlPath, check_times
from .stable_sde import build_model, mlp
from .training import RUN_FIELDS, TrainConfig

__all__ = ["FrozenPath", "Forecaster", "ForecastData", "ForecastSplits", "ForecastConfig", "ForecastResult",
           "forecast_task", "noisy_sines", "fit_forecaster", "evaluate_forecaster", "forecast_metrics",
           "crps_ensemble", "interval_coverage", "last_value_forecast", "mean_forecast", "baseline_metrics",
           "forecast_loss", "check_horizon_times", "check_targets", "horizon_features",
           "SDE_ENCODERS", "ENCODERS"]

#: Encoders whose latent state is an SDE (forecasts differ between Brownian samples).
SDE_ENCODERS = ("lsde", "lnsde", "gsde", "neural_sde")
#: Every encoder ``Forecaster`` accepts.
ENCODERS = (*SDE_ENCODERS, "neural_cde", "gru_dt")


# ----------------------------------------------------------------------------------------------
# Input checks (all raise ValueError before any work)
def check_horizon_times(t_out: Any, t_in: Tensor) -> Tensor:
    """Target times ``t_out (H,)``: finite, ``H >= 1``, strictly increasing, all after ``T_in = t_in[-1]``."""
    t_out = torch.as_tensor(t_out)
    if not t_out.is_floating_point():
        t_out = t_out.to(torch.float64)
    if t_out.dim() != 1:
        raise ValueError(f"target times must have shape (H,), got {tuple(t_out.shape)}")
    if t_out.numel() < 1:
        raise ValueError("the horizon H must be >= 1 (got no target times)")
    if not bool(torch.isfinite(t_out).all()):
        raise ValueError("target times contain NaN or Inf")
    if not bool((t_out[1:] > t_out[:-1]).all()):
        raise ValueError("target times must be strictly increasing")
    t_end = float(t_in[-1])
    if not float(t_out[0]) > t_end:
        raise ValueError(f"target times must lie strictly after the last input time T_in = {t_end}; "
                         f"the first is {float(t_out[0])}")
    return t_out.to(device=t_in.device, dtype=t_in.dtype)


def check_targets(y: Tensor, n: int | None = None, horizon: int | None = None,
                  channels: int | None = None) -> Tensor:
    """Targets ``y (N, H, C)``: finite (no NaN: the horizon is complete) and of the expected shape."""
    y = torch.as_tensor(y)
    if y.dim() != 3:
        raise ValueError(f"targets must have shape (N, H, C), got {tuple(y.shape)}")
    want = (n, horizon, channels)
    for k, (got, exp) in enumerate(zip(y.shape, want)):
        if exp is not None and got != exp:
            raise ValueError(f"targets have shape {tuple(y.shape)}; expected {exp} along axis {k} "
                             f"(N, H, C) = {want}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("targets contain NaN or Inf: forecast targets must be complete")
    return y


def _check_samples(samples: int) -> int:
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    return int(samples)


# ----------------------------------------------------------------------------------------------
class FrozenPath:
    """A ``ControlPath`` held at its last value after ``T_in``.

    ``X_frozen(t) = X(min(t, T_in))`` and ``dX_frozen/dt = 0`` for ``t >= T_in`` (the right derivative,
    ControlPath's convention at knots). Its ``times`` are the input times followed by the target times,
    so a solve on it saves (and, with the default one step per interval, steps) at all of them. Every
    other attribute (``values``, ``observed``, ``batch``, ...) is the input path's.

    Why frozen: after ``T_in`` nothing new is observed; extrapolating the cubic pieces would invent a
    trend, while the frozen path makes the latent SDE's own drift and diffusion carry the forecast.
    """

    def __init__(self, path: ControlPath, t_out: Tensor):
        self.inner = path
        self.t_in_end = path.times[..., -1].max()
        t_out = torch.as_tensor(t_out, device=path.times.device, dtype=path.times.dtype)
        self.times = torch.cat([path.times, t_out])
        self.t_out = t_out

    def __getattr__(self, name: str) -> Any:      # only called for attributes not set here
        return getattr(self.inner, name)

    def _clamp(self, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, device=self.times.device)
        if not t.is_floating_point():
            t = t.to(torch.float64)
        return torch.minimum(t, self.t_in_end.to(t.dtype))

    def evaluate(self, t: Tensor | float) -> Tensor:
        """``X(min(t, T_in))``: ``(batch, C)`` for a scalar ``t``, ``(batch, n, C)`` for ``n`` times."""
        return self.inner.evaluate(self._clamp(t))

    def derivative(self, t: Tensor | float) -> Tensor:
        """``dX/dt`` before ``T_in``, zero from ``T_in`` on."""
        t = torch.as_tensor(t, device=self.times.device)
        d = self.inner.derivative(self._clamp(t))
        after = (t.detach() >= self.t_in_end.to(t.dtype)).to(d.device)
        after = after.view(1, -1, 1) if t.dim() == 1 else after
        return torch.where(after, torch.zeros_like(d), d)

    def __call__(self, t: Tensor | float) -> Tensor:
        return self.evaluate(t)

    @property
    def t0(self) -> float:
        return float(self.times[..., 0].min())

    @property
    def t1(self) -> float:
        return float(self.times[-1])

    def __repr__(self) -> str:
        return f"FrozenPath({self.inner!r}, frozen after T_in={float(self.t_in_end)}, H={len(self.t_out)})"


# ----------------------------------------------------------------------------------------------
def horizon_features(t_out: Tensor, t_in: Tensor, like: Tensor) -> Tensor:
    """``phi(tau) = [s, sqrt(s)]``, ``s = (t - T_in) / (T_in - t_1)``: ``(H, 2)`` in ``like``'s dtype.

    Normalising by the input span makes the features independent of the time unit; ``sqrt(s)`` lets
    the decoder model a spread that grows like a diffusion's (``~ sqrt(tau)``) without a deep net.
    """
    span = (t_in[-1] - t_in[0]).clamp_min(torch.finfo(t_in.dtype).tiny)
    s = ((t_out - t_in[-1]) / span).to(device=like.device, dtype=like.dtype)
    return torch.stack([s, s.sqrt()], dim=-1)


class Forecaster(nn.Module):
    """Latent-dynamics forecaster: encoder ``build_model(name, ...)``, continuation, shared decoder.

    Args:
        name: one of ``ENCODERS`` (``lsde``, ``lnsde``, ``gsde``, ``neural_sde``, ``neural_cde``,
            ``gru_dt``).
        input_channels: channels ``C`` of the series (time not included).
        hidden_dim, width, layers: the encoder's latent size and vector-field MLPs.
        decoder_width, decoder_layers: the decoder MLP ``D`` (default width = ``width``, 2 hidden layers).
        **encoder_kwargs: passed to the encoder (``interpolation``, ``solver``, ``dt``, ``time_scale``,
            ``intensity``, ``bounded``, GSDE's ``log_space`` ...).

    The encoder's classification head is replaced by the identity (it is not used). With
    ``time_scale="interval"`` the time scale is the mean interval of input and target times together.

    ``forecast(t_in, x_in, t_out, samples=K, seed=s)`` returns ``(K, N, H, C)`` sample paths;
    ``predict`` their mean; ``forward(t_in, x_in, t_out, seed)`` one sample ``(N, H, C)`` (training).
    """

    def __init__(self, name: str, input_channels: int, hidden_dim: int = 16, width: int = 16, layers: int = 1,
                 decoder_width: int | None = None, decoder_layers: int = 2, **encoder_kwargs: Any):
        super().__init__()
        if name not in ENCODERS:
            raise ValueError(f"unknown encoder {name!r}; choose from {list(ENCODERS)}")
        self.name = name
        self.input_channels = input_channels
        # num_classes=2 only satisfies the classifier's constructor; the head is dropped right after.
        self.encoder = build_model(name, input_channels, 2, hidden_dim=hidden_dim, width=width, layers=layers,
                                   **encoder_kwargs)
        self.encoder.head = nn.Identity()
        self.hidden_dim = hidden_dim
        self.decoder = mlp(hidden_dim + 2, decoder_width or width, input_channels, decoder_layers)

    @property
    def stochastic(self) -> bool:
        """Whether forecasts differ between Brownian samples (the SDE encoders)."""
        return self.name in SDE_ENCODERS

    # ------------------------------------------------------------------------------------------
    def check_input(self, t_in: Any, x_in: Tensor, t_out: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Validate inputs (``ValueError`` before any work); returns tensors on the model's device.

        The input window gets the encoder's own checks (shape ``(N, L_in, C)``, channel count, times
        ``(L_in,)`` shared by the batch); a forecaster also refuses Inf and checks the target times.
        """
        t_in, x_in = self.encoder.check_input(t_in, x_in)
        if bool(torch.isinf(x_in).any()):
            raise ValueError("input values contain Inf (use NaN for missing observations)")
        return t_in, x_in, check_horizon_times(t_out, t_in)

    def control_path(self, t_in: Tensor, x_in: Tensor, t_out: Tensor) -> FrozenPath:
        """The encoder's path through the inputs, frozen at ``X(T_in)`` over the target times."""
        return FrozenPath(self.encoder.make_path(t_in, x_in), t_out)

    def _latent(self, t_in: Tensor, x_in: Tensor, t_out: Tensor, seed: int | None) -> Tensor:
        """``z`` at ``[T_in, t_out...]``: ``(H + 1, batch, dz)`` (inputs already checked)."""
        enc = self.encoder
        H = t_out.shape[0]
        if not self.stochastic:
            # Neural CDE: dX/dt = 0 after T_in, so dz = f(z) dX = 0; GRU-dt: no new input. Either way the
            # latent stays at its value at T_in (forward() of the headless encoder).
            z = enc(t_in, x_in)
            return z.unsqueeze(0).expand(H + 1, *z.shape)
        # One solve over input and horizon with the encoder's own machinery (its solver, step rule,
        # seeds, GSDE's log-space option), on the frozen path: saves at every input and target time.
        path = self.control_path(t_in, x_in, t_out)
        sol = enc._solve(path, seed)
        zs = sol.ys
        n_in = t_in.shape[0]
        if zs.shape[0] != n_in + H:  # pragma: no cover - a guard against a changed solver contract
            raise RuntimeError(f"expected the latent at {n_in + H} times, got {zs.shape[0]}")
        return zs[n_in - 1:]

    def latent(self, t_in: Any, x_in: Tensor, t_out: Any, samples: int = 1,
               seed: int | None = None) -> Tensor:
        """Latent paths ``(K, N, H + 1, dz)`` at ``T_in`` and the target times (``K = samples``)."""
        K = _check_samples(samples)
        t_in, x_in, t_out = self.check_input(t_in, x_in, t_out)
        N = x_in.shape[0]
        if not self.stochastic:
            z = self._latent(t_in, x_in, t_out, seed)              # (H+1, N, dz)
            return z.transpose(0, 1).unsqueeze(0).expand(K, *z.transpose(0, 1).shape)
        # K samples as one batch of K*N series (sample-major): one solve, independent Brownian paths.
        xr = x_in.repeat(K, 1, 1) if K > 1 else x_in
        z = self._latent(t_in, xr, t_out, seed)                   # (H+1, K*N, dz)
        return z.transpose(0, 1).reshape(K, N, *z.shape[:1], z.shape[-1])

    def decode(self, z: Tensor, t_in: Tensor, t_out: Tensor) -> Tensor:
        """``D([z(t), phi(t - T_in)])`` for latents ``(..., H, dz)`` at the target times: ``(..., H, C)``."""
        phi = horizon_features(t_out, t_in, z)
        phi = phi.expand(*z.shape[:-1], 2)
        return self.decoder(torch.cat([z, phi], dim=-1))

    def forecast(self, t_in: Any, x_in: Tensor, t_out: Any, samples: int = 16,
                 seed: int | None = None) -> Tensor:
        """``K = samples`` forecast paths ``(K, N, H, C)`` (standardised units if the inputs are).

        SDE encoders: ``K`` independent Brownian paths over input and horizon (``seed`` fixes them);
        deterministic encoders: the same path repeated ``K`` times.
        """
        t_in_c, _, t_out_c = self.check_input(t_in, x_in, t_out)
        z = self.latent(t_in, x_in, t_out, samples=samples, seed=seed)
        return self.decode(z[:, :, 1:], t_in_c, t_out_c)

    def predict(self, t_in: Any, x_in: Tensor, t_out: Any, samples: int = 16,
                seed: int | None = None) -> Tensor:
        """The mean forecast ``(N, H, C)`` over ``samples`` sample paths."""
        return self.forecast(t_in, x_in, t_out, samples=samples, seed=seed).mean(0)

    def forward(self, t_in: Any, x_in: Tensor, t_out: Any, seed: int | None = None) -> Tensor:
        """One forecast sample ``(N, H, C)`` (the training objective's input)."""
        return self.forecast(t_in, x_in, t_out, samples=1, seed=seed)[0]


# ----------------------------------------------------------------------------------------------
# Metrics
def crps_ensemble(samples: Tensor, y: Tensor) -> Tensor:
    """Unbiased ensemble CRPS per point: ``samples (K, *shape)``, ``y (*shape)`` -> ``(*shape)``.

    ``1/K sum_i |X_i - y| - 1/(2K(K-1)) sum_{i != j} |X_i - X_j|`` (the "fair" CRPS, Ferro 2014), whose
    expectation is exactly the CRPS ``E|X - y| - E|X - X'|/2`` of the distribution the members are drawn
    from (Gneiting & Raftery 2007, eq. 21). The pair sum uses the sorted members ``X_(1) <= ... <= X_(K)``:
    ``sum_{i<j} (X_(j) - X_(i)) = sum_k (2k - K - 1) X_(k)``, ``O(K log K)``. ``K = 1``: the absolute error.
    """
    K = samples.shape[0]
    if samples.shape[1:] != y.shape:
        raise ValueError(f"samples {tuple(samples.shape)} must be (K, *y.shape) with y {tuple(y.shape)}")
    mae = (samples - y).abs().mean(0)
    if K == 1:
        return mae
    xs = samples.sort(dim=0).values
    k = torch.arange(1, K + 1, device=samples.device, dtype=samples.dtype).view(K, *([1] * y.dim()))
    spread = ((2 * k - K - 1) * xs).sum(0) / (K * (K - 1))
    return mae - spread


def interval_coverage(samples: Tensor, y: Tensor, level: float = 0.9) -> Tensor:
    """Per point, whether ``y`` lies in the central ``level`` interval of the samples (float 0/1).

    The interval runs between the empirical ``(1 - level)/2`` and ``(1 + level)/2`` quantiles (linear
    interpolation between order statistics, ``torch.quantile``). For a perfectly calibrated ensemble of
    ``K`` members the expected coverage is below ``level`` (Gaussian members, ``level = 0.9``: about 0.72
    for ``K = 8``, 0.81 for ``K = 16``, 0.85 for ``K = 32``; see the docs); a point forecast covers
    (almost) nothing.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=samples.dtype, device=samples.device)
    lo, hi = torch.quantile(samples, q, dim=0)
    return ((y >= lo) & (y <= hi)).to(samples.dtype)


def forecast_metrics(samples: Tensor, y: Tensor, level: float = 0.9) -> dict[str, float]:
    """MSE and MAE of the sample mean, CRPS and central-interval coverage, averaged over all points.

    ``samples (K, N, H, C)``, ``y (N, H, C)``.
    """
    y = check_targets(y)
    if samples.dim() != 4 or samples.shape[1:] != y.shape:
        raise ValueError(f"samples must have shape (K, *y.shape) = (K, {', '.join(map(str, y.shape))}), "
                         f"got {tuple(samples.shape)}")
    y = y.to(samples)
    s = _metric_sums(samples, y, level)
    n = y.numel()
    return {k: v / n for k, v in s.items()}


def _metric_sums(samples: Tensor, y: Tensor, level: float) -> dict[str, float]:
    err = samples.mean(0) - y
    return {"mse": float((err * err).sum()), "mae": float(err.abs().sum()),
            "crps": float(crps_ensemble(samples, y).sum()),
            "coverage": float(interval_coverage(samples, y, level).sum())}


# ----------------------------------------------------------------------------------------------
# Baselines without learning
def last_value_forecast(x_in: Tensor, horizon: int) -> Tensor:
    """Per sample and channel the last non-NaN input value, repeated over the horizon: ``(N, H, C)``."""
    if horizon < 1:
        raise ValueError(f"the horizon H must be >= 1, got {horizon}")
    obs = ~torch.isnan(x_in)
    if not bool(obs.any(dim=1).all()):
        raise ValueError("some sample has a channel without any observed input value")
    L = x_in.shape[1]
    idx = torch.arange(L, device=x_in.device).view(1, L, 1).expand_as(x_in)
    last = torch.where(obs, idx, torch.full_like(idx, -1)).max(dim=1, keepdim=True).values
    val = x_in.gather(1, last)                                     # (N, 1, C)
    return val.expand(-1, horizon, -1)


def mean_forecast(x_in: Tensor, horizon: int, mean: Tensor | None = None) -> Tensor:
    """The training mean per channel (zero in standardised units unless ``mean`` is given): ``(N, H, C)``."""
    if horizon < 1:
        raise ValueError(f"the horizon H must be >= 1, got {horizon}")
    N, _, C = x_in.shape
    m = torch.zeros(C, dtype=x_in.dtype, device=x_in.device) if mean is None else mean.to(x_in)
    return m.view(1, 1, C).expand(N, horizon, C)


# ----------------------------------------------------------------------------------------------
# Data
@dataclass
class ForecastData:
    """Forecasting data: times ``(L,)`` (float64), inputs ``x_in (N, L_in, C)`` (NaN: missing), complete
    targets ``y (N, H, C)`` at ``times[L_in:]``, and class labels ``(N,)`` (for stratified splits)."""

    name: str
    times: Tensor
    x_in: Tensor
    y: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.x_in.dim() != 3:
            raise ValueError(f"x_in must have shape (N, L_in, C), got {tuple(self.x_in.shape)}")
        N, L_in, C = self.x_in.shape
        check_times(self.times)
        check_targets(self.y, N, None, C)
        if L_in + self.y.shape[1] != self.times.shape[0]:
            raise ValueError(f"L_in + H = {L_in} + {self.y.shape[1]} must equal the number of times "
                             f"{self.times.shape[0]}")
        if L_in < 2:
            raise ValueError(f"the input window needs at least two time points, got {L_in}")

    @property
    def t_in(self) -> Tensor:
        return self.times[:self.x_in.shape[1]]

    @property
    def t_out(self) -> Tensor:
        return self.times[self.x_in.shape[1]:]

    @property
    def horizon(self) -> int:
        return self.y.shape[1]

    @property
    def channels(self) -> int:
        return self.x_in.shape[-1]

    def __len__(self) -> int:
        return self.x_in.shape[0]

    def subset(self, idx: Tensor | np.ndarray) -> ForecastData:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ForecastData(self.name, self.times, self.x_in[idx], self.y[idx], self.labels[idx])


@dataclass
class ForecastSplits:
    """Train / validation / test forecasting data and the standardisation ``x_std = (x - mean) / std``."""

    train: ForecastData
    val: ForecastData
    test: ForecastData
    mean: Tensor
    std: Tensor
    missing_rate: float
    horizon: int


def forecast_task(data: TimeSeriesDataset, horizon: int, missing_rate: float = 0.0, seed: int = 0,
                  fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> ForecastSplits:
    """Cut every series at ``L_in = L - horizon``, drop inputs, split and standardise.

    1. inputs ``x[:, :L_in]`` lose ``int(L_in * missing_rate)`` points per sample and channel
       (``nde.datasets.drop_points``, seed ``seed``); targets ``x[:, L_in:]`` stay complete;
    2. stratified (on the labels; random for one class) 70/15/15 split with seed ``seed``;
    3. per channel, mean and standard deviation of the observed *training inputs*, applied to inputs and
       targets of every split (no test information enters).
    """
    L = data.x.shape[1]
    if not 1 <= horizon <= L - 2:
        raise ValueError(f"the horizon H must be in [1, L - 2] = [1, {L - 2}] (two input points), "
                         f"got {horizon}")
    if bool(torch.isnan(data.x[:, L - horizon:]).any()):
        raise ValueError("the series have NaN in the target window: forecast targets must be complete")
    L_in = L - horizon
    x_in = drop_points(data.x[:, :L_in], missing_rate, seed=seed)
    y = data.x[:, L_in:]
    i_tr, i_va, i_te = stratified_split(data.y, fractions, seed=seed)
    tr = torch.as_tensor(i_tr, dtype=torch.long)
    mean = torch.nanmean(x_in[tr], dim=(0, 1))
    std = torch.nanmean((x_in[tr] - mean) ** 2, dim=(0, 1)).sqrt().clamp_min(1e-8)
    xs, ys = (x_in - mean) / std, (y - mean) / std
    full = ForecastData(data.name, data.times.to(torch.float64), xs, ys, data.y)
    return ForecastSplits(full.subset(i_tr), full.subset(i_va), full.subset(i_te), mean, std,
                          float(missing_rate), horizon)


def noisy_sines(n: int = 200, length: int = 40, channels: int = 2, noise: float = 0.1, seed: int = 0,
                irregular: bool = True, freq: tuple[float, float] = (1.0, 3.0), level: float = 0.0,
                dtype: torch.dtype = torch.float32) -> TimeSeriesDataset:
    """Synthetic series ``x_c(t) = m_c + a_c sin(2 pi f (t + p_c)) + noise``, random phase and frequency.

    ``f ~ U(*freq)`` (cycles per unit time, default ``U(1, 3)``) per series (shared by its channels),
    phases ``p_c``, amplitudes ``a_c ~ U(0.5, 1.5)`` and levels ``m_c ~ N(0, level^2)`` per series and
    channel; times on ``[0, 1]``, jittered (``irregular=True``) but shared by the batch.
    Labels are all 0 (one class: the split is then random). Forecastable: the past determines the future
    up to the noise, so a model that learns the dynamics beats the last value by a wide margin.
    """
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0, 1, length, dtype=torch.float64)
    if irregular:
        jitter = (torch.rand(length, generator=g, dtype=torch.float64) - 0.5) * 0.8 / (length - 1)
        jitter[0] = jitter[-1] = 0.0
        base = base + jitter
    t = base
    f = freq[0] + (freq[1] - freq[0]) * torch.rand(n, 1, 1, generator=g, dtype=torch.float64)
    p = torch.rand(n, 1, channels, generator=g, dtype=torch.float64)
    a = 0.5 + torch.rand(n, 1, channels, generator=g, dtype=torch.float64)
    x = a * torch.sin(2 * math.pi * f * (t.view(1, -1, 1) + p))
    x = x + noise * torch.randn(n, length, channels, generator=g, dtype=torch.float64)
    if level:     # drawn last, so level = 0 leaves the other draws (and the data) unchanged
        x = x + level * torch.randn(n, 1, channels, generator=g, dtype=torch.float64)
    return TimeSeriesDataset("noisy_sines", x.to(dtype), torch.zeros(n, dtype=torch.long), t, ("sine",))


# ----------------------------------------------------------------------------------------------
# Training
@dataclass
class ForecastConfig(TrainConfig):
    """Settings of ``fit_forecaster`` (the fields of ``nde.training.TrainConfig``, plus):

    ``loss``: ``"mse"`` (one-sample squared error, the default) or ``"crps"`` (two-sample fair CRPS);
    ``val_samples``: sample paths of the validation forecasts used for early stopping;
    ``select``: the validation score of early stopping, ``"mse"`` (of the mean forecast) or ``"crps"``;
    ``None`` (default) follows ``loss``, so a CRPS-trained model is selected by its CRPS;
    ``grad_clip``: max gradient norm (``None``: no clipping);
    ``on_nonfinite``: what a non-finite loss or gradient, or a solve that blows up, does: ``"raise"``
    (``FloatingPointError``, as ``nde.training.fit``) or ``"stop"`` (end training there, keep the
    best-validation parameters so far, and mark the result ``diverged``; the benchmark's choice, so one
    diverging run does not end a grid and is reported as such).
    """

    epochs: int = 30
    lr: float = 1e-2
    val_samples: int = 4
    loss: str = "mse"
    select: str | None = None
    grad_clip: float | None = None
    on_nonfinite: str = "raise"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in ("mse", "crps"):
            raise ValueError(f"loss must be 'mse' or 'crps', got {self.loss!r}")
        if self.select not in (None, "mse", "crps"):
            raise ValueError(f"select must be 'mse', 'crps' or None, got {self.select!r}")
        if self.on_nonfinite not in ("raise", "stop"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'stop', got {self.on_nonfinite!r}")
        _check_samples(self.val_samples)


@dataclass
class ForecastResult:
    """History (one dict per epoch), the best epoch with its validation MSE and CRPS, seconds, flags.

    ``diverged``: training met a non-finite loss / gradient or a blown-up solve (``on_nonfinite="stop"``);
    ``message`` says where."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_mse: float = float("inf")
    best_val_crps: float = float("inf")
    train_time: float = 0.0
    stopped_early: bool = False
    finished: bool = False
    diverged: bool = False
    message: str = ""


def _validate(model: Forecaster, val: ForecastData, cfg: ForecastConfig, epoch: int) -> dict[str, float]:
    """Validation metrics; ``FloatingPointError`` if the solve blows up or the MSE is not finite."""
    try:
        vm = evaluate_forecaster(model, val, cfg.val_samples, cfg.eval_seed, cfg.eval_batch_size)
    except SolverError as err:
        raise FloatingPointError(f"validation solve failed after epoch {epoch}: {err}") from err
    if not math.isfinite(vm["mse"]):
        raise FloatingPointError(f"non-finite validation MSE after epoch {epoch}")
    return vm


def forecast_loss(model: Forecaster, data: ForecastData, idx: Tensor, seed: int, kind: str = "mse") -> Tensor:
    """Training loss on the series ``idx``: one-sample MSE, or the two-sample fair CRPS.

    With two samples ``X_1, X_2`` the fair CRPS is ``(|X_1 - y| + |X_2 - y|)/2 - |X_1 - X_2|/2``
    (an unbiased CRPS estimate; for a deterministic model both samples coincide and it is the MAE).
    """
    dev = next(model.parameters()).device
    x, y = data.x_in[idx].to(dev), data.y[idx].to(dev)
    if kind == "mse":
        pred = model(data.t_in, x, data.t_out, seed=seed)
        return ((pred - y.to(pred)) ** 2).mean()
    k = 2 if model.stochastic else 1
    samples = model.forecast(data.t_in, x, data.t_out, samples=k, seed=seed)
    return crps_ensemble(samples, y.to(samples)).mean()


@torch.no_grad()
def evaluate_forecaster(model: Forecaster, data: ForecastData, samples: int = 16, seed: int = 12345,
                        batch_size: int = 256, level: float = 0.9) -> dict[str, float]:
    """MSE / MAE of the mean of ``samples`` forecasts, CRPS and coverage on ``data`` (seeded, repeatable).

    Units are those of ``data`` (standardised for ``forecast_task``). Deterministic encoders are
    solved once (their ``samples`` copies are equal).
    """
    check_targets(data.y)
    was = model.training
    model.eval()
    K = samples if model.stochastic else 1
    sums = {"mse": 0.0, "mae": 0.0, "crps": 0.0, "coverage": 0.0}
    dev = next(model.parameters()).device
    n = len(data)
    for i, s in enumerate(range(0, n, batch_size)):
        xb = data.x_in[s:s + batch_size].to(dev)
        smp = model.forecast(data.t_in, xb, data.t_out, samples=K, seed=seed + i)
        for k, v in _metric_sums(smp, data.y[s:s + batch_size].to(smp), level).items():
            sums[k] += v
    model.train(was)
    return {k: v / data.y.numel() for k, v in sums.items()}


def baseline_metrics(data: ForecastData, level: float = 0.9) -> dict[str, dict[str, float]]:
    """Metrics of the last-value and train-mean baselines on ``data`` (standardised: the mean is 0)."""
    out = {}
    for name, fc in (("last_value", last_value_forecast), ("train_mean", mean_forecast)):
        pred = fc(data.x_in, data.horizon).to(data.y.dtype)
        out[name] = forecast_metrics(pred.unsqueeze(0), data.y, level)
    return out


def fit_forecaster(model: Forecaster, train: ForecastData, val: ForecastData,
                   config: ForecastConfig | None = None, desc: str = "forecast") -> ForecastResult:
    """Train ``model`` with Adam on the one-sample MSE (or CRPS); early stopping on the validation MSE
    (or CRPS: ``config.select``, by default the training loss's metric).

    The model returned holds the best-validation parameters. The Brownian seed of step ``b`` of epoch
    ``e`` is ``nde.training.step_seed`` ``(seed, e, b)`` and the shuffling generator is saved, so a run
    resumed from its checkpoint (written atomically after every epoch) ends bit-identical to an
    uninterrupted one (same device and thread count). A non-finite loss or gradient, or a solve that
    blows up, raises ``FloatingPointError`` before the parameters change (``on_nonfinite="stop"``: ends
    the run there, ``diverged``).
    """
    cfg = config or ForecastConfig()
    if len(train) == 0 or len(val) == 0:
        raise ValueError("train and validation sets must not be empty")
    for d in (train, val):
        check_targets(d.y, channels=model.input_channels)

    def loss_fn(m: Forecaster, idx: Tensor, ctx: StepContext) -> Tensor:
        try:
            return forecast_loss(m, train, idx, ctx.seed, cfg.loss)
        except SolverError as err:          # the latent SDE blew up (NaN/Inf state) during the solve
            raise FloatingPointError(f"solve failed at epoch {ctx.epoch}, step {ctx.step}: {err}") from err

    def validate(m: Forecaster, epoch: int) -> dict[str, float]:
        vm = _validate(m, val, cfg, epoch)
        return {"val_mse": vm["mse"], "val_crps": vm["crps"]}

    # check_grads: a non-finite gradient stops before the step, so the parameters stay finite (a NaN
    # would surface later as a confusing "y0 contains NaN" from the next solve)
    core = CoreConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                      grad_clip=cfg.grad_clip, check_grads=True, monitor=f"val_{cfg.select or cfg.loss}",
                      mode="min", patience=cfg.patience, on_nonfinite=cfg.on_nonfinite, seed=cfg.seed,
                      progress=cfg.progress, checkpoint=cfg.checkpoint, resume=cfg.resume,
                      max_epochs_this_call=cfg.max_epochs_this_call)
    identity = {k: v for k, v in asdict(cfg).items() if k not in RUN_FIELDS}
    r = Trainer(model, loss_fn, core, data=len(train), validate=validate, identity=identity, desc=desc).fit()
    return ForecastResult(history=r.history, best_epoch=r.best_epoch,
                          best_val_mse=r.best.get("val_mse", math.inf),
                          best_val_crps=r.best.get("val_crps", math.inf), train_time=r.train_time,
                          stopped_early=r.stopped_early, finished=r.finished, diverged=r.diverged,
                          message=r.message)
