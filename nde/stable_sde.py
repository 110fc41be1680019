"""Stable neural SDEs for irregular time series, and the baselines they are compared with.

Oh, Lim, Kim, "Stable Neural Stochastic Differential Equations in Analyzing Irregular Time Series
Data", ICLR 2024 (arXiv 2402.14989), section 3. The observations become a controlled path ``X(t)``
(``nde.paths``, time prepended as channel 0), the latent state starts at ``z(t_0) = zeta(X(t_0))``
(a linear map) and evolves by one of three SDE classes, with ``z~ = [z, E X(t)]`` (``E`` a linear
embedding of the path):

* Langevin-type (``LangevinSDE``, eq. 6):   ``dz = gamma(z~) dt + sigma(t) dW``
  (no explicit time in the drift; additive noise);
* linear noise (``LinearNoiseSDE``, eq. 7): ``dz = gamma(t, z~) dt + sigma(t) z dW``;
* geometric (``GeometricSDE``, eq. 8):      ``dz = gamma(t, z~) z dt + sigma(t) z dW``, whose
  exact solution ``z_0 exp(int (gamma - sigma^2/2) ds + int sigma dW)`` never changes sign; the
  Euler-Maruyama step ``z (1 + gamma h + sigma dW)`` keeps it while ``|gamma| h < 1`` and the noise term
  is small, so ``GeometricSDE`` offers ``log_space=True``: the exact log-Euler step
  ``z exp((gamma - sigma^2/2) h + sigma dW)`` (Euler-Maruyama on ``log |z|``), which keeps the sign
  for any step.

Bounded ("reference-code") parameterisation, the default (``bounded=True``), as in the authors' code:
``gamma = tanh(MLP(...))`` in ``(-1, 1)`` and ``sigma(t) = tanh(sigmoid(theta) * ReLU(MLP([sin t, cos t])))``
in ``[0, 1)``, one value per latent coordinate (diagonal noise). ``bounded=False`` drops the final
``tanh`` of ``gamma`` and uses ``sigma(t) = MLP([sin t, cos t])`` unconstrained. A classification head
reads ``z(t_end)``: ``Linear, BatchNorm1d, ReLU, Linear``, the authors' head without its dropout (the
batch normalisation matters: a bounded drift on ``[0, 1]`` moves ``z`` by less than one unit, and the
head must read small differences of ``z(t_end)`` between series).

Time scale: the SDE runs in ``s = c (t - t_0)``; ``time_scale=c`` (default 1: the data's own time)
or ``"interval"`` (one unit per mean observation interval, the time axis ``0..L-1`` of the authors'
code). Solved in data time, that is ``dz = c f dt + sqrt(c) g dW``.

Baselines: ``NeuralSDEClassifier`` (the naive neural SDE: unconstrained MLP drift of
``(t, z~)`` and MLP diffusion of ``(t, z)``), ``NeuralCDE`` (``dz = f(z) dX(t)``, Kidger, Morrill,
Foster, Lyons, NeurIPS 2020) and ``GRUdt`` (a GRU over the observations, the observed mask and
the time since each channel's last observation, Che et al., Sci. Rep. 2018, without the decay).

All models take ``forward(t, x, seed=None)`` with times ``t (L,)`` shared by the batch and values
``x (batch, L, C)`` with NaN where missing, and return logits ``(batch, num_classes)``. SDE solves go
through ``solvers.solve``: Euler-Maruyama with one step per observation interval by default
(``solver=``/``dt=``/``rtol``/``atol`` select others, e.g. adaptive ``LambaEM``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from solvers import ODEProblem, solve
from solvers.algorithm import Algorithm
from solvers.ode import RK4
from solvers.problem import SDEProblem
from solvers.sde import EulerMaruyama, SDEAlgorithm
from solvers.stepping import default_tolerances

from .paths import ControlPath, Interpolation, check_times

__all__ = ["PathClassifier", "LangevinSDE", "LinearNoiseSDE", "GeometricSDE", "NeuralSDEClassifier",
           "NeuralCDE", "GRUdt", "MODELS", "build_model", "observation_intensity"]


def mlp(n_in: int, width: int, n_out: int, layers: int,
        activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """``layers`` hidden layers of size ``width`` (``layers = 0``: one linear map)."""
    mods: list[nn.Module] = []
    d = n_in
    for _ in range(layers):
        mods += [nn.Linear(d, width), activation()]
        d = width
    mods.append(nn.Linear(d, n_out))
    return nn.Sequential(*mods)


def _time_features(t: Tensor, like: Tensor) -> Tensor:
    """``[sin t, cos t]`` broadcast to the batch of ``like`` (shape ``(batch, 2)``)."""
    tt = t.to(like.dtype)
    feat = torch.stack([torch.sin(tt), torch.cos(tt)])
    return feat.expand(like.shape[0], 2)


def observation_intensity(x: Tensor) -> Tensor:
    """``c_j(t_i) = #{k <= i: x_kj is observed} / L`` for ``x (batch, L, C)`` with NaN for missing values."""
    return (~torch.isnan(x)).to(x.dtype).cumsum(dim=1) / x.shape[1]


class PathClassifier(nn.Module):
    """Base: input checks, the controlled path (with time as channel 0) and the classification head.

    Args:
        input_channels: channels ``C`` of the observations (time not included).
        num_classes: number of classes of the head.
        hidden_dim: latent size ``dz``.
        width, layers: width and number of hidden layers of the vector-field MLPs.
        interpolation: ``"hermite"`` (cubic, backward differences) or ``"linear"``.
        intensity: append, per channel, the observation intensity ``c_j(t_i) = #{k <= i: x_kj observed} / L``
            to the path (Kidger et al., NeurIPS 2020, Sec. 3.5, "observational intensity"): the model then
            also sees *when* values were observed, which is informative when missingness is (as in the
            Sepsis task of Oh et al. 2024).
    """

    def __init__(self, input_channels: int, num_classes: int, hidden_dim: int = 32, width: int = 32,
                 layers: int = 1, interpolation: Interpolation = "hermite", intensity: bool = False):
        super().__init__()
        if input_channels < 1 or num_classes < 2 or hidden_dim < 1:
            raise ValueError(f"need input_channels >= 1, num_classes >= 2, hidden_dim >= 1; got "
                             f"{input_channels}, {num_classes}, {hidden_dim}")
        if interpolation not in ("hermite", "linear"):
            raise ValueError(f"interpolation must be 'hermite' or 'linear', got {interpolation!r}")
        self.input_channels = input_channels
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.interpolation = interpolation
        self.intensity = bool(intensity)
        #: channels of the controlled path: time, the values and (with ``intensity``) their counts
        self.path_channels = 1 + input_channels * (2 if self.intensity else 1)
        # The authors' head (Linear, BatchNorm1d, ReLU, Dropout, Linear) without the dropout.
        self.head = nn.Sequential(nn.Linear(hidden_dim, width), nn.BatchNorm1d(width), nn.ReLU(),
                                  nn.Linear(width, num_classes))

    def check_input(self, t: Any, x: Tensor) -> tuple[Tensor, Tensor]:
        """Validate ``t (L,)`` and ``x (batch, L, C)``; returns them as tensors on the model's device."""
        p = next(self.parameters())
        if not isinstance(x, Tensor):
            x = torch.as_tensor(x)
        if x.dim() != 3:
            raise ValueError(f"values must have shape (batch, L, channels), got {tuple(x.shape)}")
        if x.shape[-1] != self.input_channels:
            raise ValueError(f"{type(self).__name__} was built for {self.input_channels} channel(s), "
                             f"got values with {x.shape[-1]}")
        t = check_times(t, x.shape[1])
        if t.dim() != 1:
            raise ValueError("the models need times (L,) shared by the batch (mark missing values as NaN)")
        return t.to(p.device), x.to(device=p.device, dtype=p.dtype)

    def make_path(self, t: Tensor, x: Tensor) -> ControlPath:
        """The path of ``[t, x_1..x_C]`` (and the intensities ``c_1..c_C``) through the observations."""
        tc = t.to(x.dtype).view(1, -1, 1).expand(x.shape[0], -1, 1)
        channels = [tc, x]
        if self.intensity:
            channels.append(observation_intensity(x))
        return ControlPath(t, torch.cat(channels, dim=-1), self.interpolation)

    def features(self, path: ControlPath, seed: int | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, t: Any, x: Tensor, seed: int | None = None) -> Tensor:
        """Logits ``(batch, num_classes)`` of ``x (batch, L, C)`` (NaN: missing) observed at ``t (L,)``."""
        t, x = self.check_input(t, x)
        return self.head(self.features(self.make_path(t, x), seed=seed))


# ----------------------------------------------------------------------------------------------
class _SDEClassifier(PathClassifier):
    """Shared machinery of the neural-SDE classifiers: z0, path embedding, solve through ``solvers``."""

    noise = "diagonal"

    def __init__(self, input_channels: int, num_classes: int, hidden_dim: int = 32, width: int = 32,
                 layers: int = 1, interpolation: Interpolation = "hermite",
                 solver: SDEAlgorithm | None = None,
                 dt: float | None = None, rtol: float | None = None, atol: float | None = None,
                 time_scale: float | str = 1.0, intensity: bool = False):
        super().__init__(input_channels, num_classes, hidden_dim, width, layers, interpolation, intensity)
        if not (time_scale == "interval" or (isinstance(time_scale, (int, float)) and time_scale > 0)):
            raise ValueError(f"time_scale must be 'interval' or a number > 0, got {time_scale!r}")
        self.time_scale = time_scale
        self._c = 1.0
        solver = EulerMaruyama() if solver is None else solver
        if not isinstance(solver, SDEAlgorithm):
            raise TypeError(f"solver must be a solvers.sde method, got {type(solver).__name__}")
        self.rtol, self.atol = default_tolerances("stable_sde", rtol, atol)
        self.solver, self.dt = solver, dt
        cin = self.path_channels
        self.initial = nn.Linear(cin, hidden_dim)       # z(t0) = zeta(X(t0))
        self.embed = nn.Linear(cin, hidden_dim)         # embedding of X(t) inside z~
        self.last_solution = None
        self._path: ControlPath | None = None

    # z~ = [z, E X(t)]
    def z_tilde(self, t: Tensor, z: Tensor) -> Tensor:
        return torch.cat([z, self.embed(self._path.evaluate(t))], dim=-1)

    def f(self, t: Tensor, z: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def g(self, t: Tensor, z: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def scale_for(self, path: ControlPath) -> float:
        """The time scale ``c``: the SDE runs in ``s = c (t - t_0)`` (see ``problem``)."""
        if self.time_scale == "interval":
            n = len(path.times) - 1
            return n / (path.t1 - path.t0) if n > 0 else 1.0
        return float(self.time_scale)

    def drift_term(self, t: Tensor, z: Tensor) -> Tensor:
        """``c f(t, z)``: the drift of the solved SDE (data time ``t``, time-changed by ``c``)."""
        return self._c * self.f(t, z)

    def diffusion_term(self, t: Tensor, z: Tensor) -> Tensor:
        """``sqrt(c) g(t, z)``: the diffusion of the solved SDE."""
        return self._c ** 0.5 * self.g(t, z)

    def problem(self, path: ControlPath) -> SDEProblem:
        """The SDE on ``[t_0, t_end]`` for this path (sets the path the vector fields read).

        ``f`` and ``g`` are the vector fields in the time ``s = c (t - t_0)``, ``c = time_scale``
        (default ``"interval"``: one unit of ``s`` per mean observation interval, the time axis
        ``0, 1, ..., L - 1`` of the authors' code). Solved in the data time ``t``, that is the SDE
        ``dz = c f(t, z) dt + sqrt(c) g(t, z) dW_t`` (the same law as ``dz = f ds + g dW_s``): the grid,
        ``saveat`` and the solution times stay the observation times.
        """
        self._path = path
        self._c = self.scale_for(path)
        z0 = self.initial(path.evaluate(path.times[0]))
        return SDEProblem(self.drift_term, self.diffusion_term, z0, (path.t0, path.t1), noise=self.noise)

    def solve_options(self, path: ControlPath) -> dict[str, Any]:
        if self.dt is not None:
            return {"dt": self.dt}
        if self.solver.adaptive:
            return {"rtol": self.rtol, "atol": self.atol}
        # One step per observation interval: a nominal step of the whole span with every observation
        # time as a stop (saveat) makes the grid exactly the observation times.
        return {"dt": path.t1 - path.t0}

    def trajectory(self, t: Any, x: Tensor, seed: int | None = None,
                   saveat: Any = None) -> tuple[Tensor, Tensor]:
        """Latent path ``z`` at the observation times (or ``saveat``): ``(ts, zs (n, batch, dz))``."""
        t, x = self.check_input(t, x)
        path = self.make_path(t, x)
        sol = self._solve(path, seed, saveat=t if saveat is None else saveat)
        return sol.ts, sol.ys

    def _solve(self, path: ControlPath, seed: int | None, **extra: Any):
        prob = self.problem(path)
        opts = self.solve_options(path)
        if "saveat" not in extra:
            extra["saveat"] = path.times
        sol = solve(prob, self.solver, seed=seed, **opts, **extra)
        self.last_solution = sol
        return sol

    def features(self, path: ControlPath, seed: int | None = None) -> Tensor:
        return self._solve(path, seed).ys[-1]

    def torchsde_sde(self, path: ControlPath) -> nn.Module:
        """The same SDE as a torchsde module (``f``, ``g``, Ito, diagonal noise) for cross-checks."""
        self.problem(path)
        outer = self

        class _TorchSDE(nn.Module):
            noise_type, sde_type = "diagonal", "ito"

            def __init__(self) -> None:
                super().__init__()
                self.model = outer

            def f(self, t: Tensor, z: Tensor) -> Tensor:
                return outer.drift_term(t.to(torch.float64), z)

            def g(self, t: Tensor, z: Tensor) -> Tensor:
                return outer.diffusion_term(t.to(torch.float64), z)

        return _TorchSDE()


class _BoundedDiffusion(nn.Module):
    """``sigma(t) = tanh(sigmoid(theta) ReLU(MLP([sin t, cos t])))`` (bounded), else ``MLP(...)``."""

    def __init__(self, dim: int, width: int, layers: int, bounded: bool):
        super().__init__()
        self.bounded = bounded
        self.net = mlp(2, width, dim, layers)
        self.theta = nn.Parameter(torch.zeros(dim)) if bounded else None

    def forward(self, t: Tensor, like: Tensor) -> Tensor:
        s = self.net(_time_features(t, like))
        if self.bounded:
            s = torch.tanh(torch.sigmoid(self.theta) * torch.relu(s))
        return s


class _StableSDE(_SDEClassifier):
    time_in_drift = True

    def __init__(self, input_channels: int, num_classes: int, hidden_dim: int = 32, width: int = 32,
                 layers: int = 1, interpolation: Interpolation = "hermite",
                 solver: SDEAlgorithm | None = None,
                 dt: float | None = None, rtol: float | None = None, atol: float | None = None,
                 bounded: bool = True,
                 time_scale: float | str = 1.0, intensity: bool = False):
        super().__init__(input_channels, num_classes, hidden_dim, width, layers, interpolation, solver, dt,
                         rtol, atol, time_scale, intensity)
        self.bounded = bounded
        self.drift_net = mlp(2 * hidden_dim + (1 if self.time_in_drift else 0), width, hidden_dim, layers)
        self.sigma = _BoundedDiffusion(hidden_dim, width, layers, bounded)

    def gamma(self, *args: Tensor) -> Tensor:
        out = self.drift_net(torch.cat(args, dim=-1))
        return torch.tanh(out) if self.bounded else out

    def _t_col(self, t: Tensor, z: Tensor) -> Tensor:
        return t.to(z.dtype).expand(z.shape[0], 1)


class LangevinSDE(_StableSDE):
    """Langevin-type SDE ``dz = gamma(z~) dt + sigma(t) dW`` (Oh et al. 2024, eq. 6).

    The drift network takes ``z~ = [z, E X(t)]`` only: time enters through the path, never explicitly.
    """

    time_in_drift = False

    def drift(self, z_tilde: Tensor) -> Tensor:
        """``gamma(z~)``: no time argument by construction."""
        return self.gamma(z_tilde)

    def f(self, t: Tensor, z: Tensor) -> Tensor:
        return self.drift(self.z_tilde(t, z))

    def g(self, t: Tensor, z: Tensor) -> Tensor:
        return self.sigma(t, z).expand_as(z)


class LinearNoiseSDE(_StableSDE):
    """Linear noise SDE ``dz = gamma(t, z~) dt + sigma(t) z dW`` (Oh et al. 2024, eq. 7)."""

    def f(self, t: Tensor, z: Tensor) -> Tensor:
        return self.gamma(self._t_col(t, z), self.z_tilde(t, z))

    def g(self, t: Tensor, z: Tensor) -> Tensor:
        return self.sigma(t, z) * z


class GeometricSDE(_StableSDE):
    """Geometric SDE ``dz = gamma(t, z~) z dt + sigma(t) z dW`` (Oh et al. 2024, eq. 8).

    Two forms of the drift (``drift_form``):

    * ``"paper"`` (default): ``f = gamma z`` with ``gamma = tanh(m(t, z~))`` (``bounded=True``) or
      ``gamma = m`` (``bounded=False``), ``m`` the drift MLP: eq. 8 as written. Its solution
      ``z_0 exp(int (gamma - sigma^2/2) ds + int sigma dW)`` keeps the sign of every coordinate.
    * ``"reference"`` (``bounded=True`` only): ``f = tanh(m(t, z~) * tanh(z))``, the drift of the
      authors' code (``input_option`` 5/6 of their ``Diffusion_model.f``). It equals ``gamma_eff z``
      with ``gamma_eff = tanh(m tanh z) / z``: zero at ``z = 0`` (the sign is kept), ``~ m z`` near 0,
      and ``abs(f) < 1`` far from 0, so it cannot blow up on a long time axis
      (``time_scale="interval"``), where the paper form can.

    On the 5-seed grid of ``docs/stable_sde.md`` the two forms are within noise of each other; the
    paper form had the higher mean validation accuracy (84.6% vs 83.0% over 80 runs), hence the
    default.

    ``log_space=True`` integrates with the log-Euler step ``z exp((gamma - sigma^2/2) h + sigma dW)``
    (Euler-Maruyama for ``log|z|`` by Ito's formula, on the same Brownian increments), which preserves
    the sign of every coordinate of ``z`` exactly; the default is Euler-Maruyama through ``solvers``.
    """

    def __init__(self, *args: Any, log_space: bool = False, drift_form: str = "paper", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.log_space = log_space
        if drift_form not in ("reference", "paper"):
            raise ValueError(f"drift_form must be 'reference' or 'paper', got {drift_form!r}")
        if drift_form == "reference" and not self.bounded:
            raise ValueError("drift_form='reference' is the bounded form tanh(m tanh z); use bounded=True")
        self.drift_form = drift_form

    def _m(self, t: Tensor, z: Tensor) -> Tensor:
        return self.drift_net(torch.cat([self._t_col(t, z), self.z_tilde(t, z)], dim=-1))

    def rate(self, t: Tensor, z: Tensor) -> Tensor:
        """``gamma(t, z~)``, the drift per unit of ``z`` (``f / z``; its limit ``m`` at ``z = 0``)."""
        if self.drift_form == "paper":
            return self.gamma(self._t_col(t, z), self.z_tilde(t, z))
        m = self._m(t, z)
        small = z.abs() < 1e-8
        z_safe = torch.where(small, torch.ones_like(z), z)      # keeps the unused branch's gradient finite
        return torch.where(small, m, torch.tanh(m * torch.tanh(z_safe)) / z_safe)

    def f(self, t: Tensor, z: Tensor) -> Tensor:
        if self.drift_form == "paper":
            return self.rate(t, z) * z
        return torch.tanh(self._m(t, z) * torch.tanh(z))

    def g(self, t: Tensor, z: Tensor) -> Tensor:
        return self.sigma(t, z) * z

    def _solve(self, path: ControlPath, seed: int | None, **extra: Any):
        if not self.log_space:
            return super()._solve(path, seed, **extra)
        # log|z|: d log|z| = (gamma - sigma^2/2) dt + sigma dW. Solved as an SDE in u = log|z| with the
        # sign carried along, so the path and the solver machinery (grid, seeds, saveat) are shared.
        prob = self.problem(path)
        sign = torch.sign(prob.y0)
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        u0 = torch.log(prob.y0.abs().clamp_min(torch.finfo(prob.y0.dtype).tiny))

        c = self._c

        def fu(t: Tensor, u: Tensor) -> Tensor:
            z = sign * torch.exp(u)
            s = self.sigma(t, z)
            return c * (self.rate(t, z) - 0.5 * s * s)

        def gu(t: Tensor, u: Tensor) -> Tensor:
            return c ** 0.5 * self.sigma(t, u).expand_as(u)

        opts = self.solve_options(path)
        extra.setdefault("saveat", path.times)
        sol = solve(SDEProblem(fu, gu, u0, prob.tspan, noise="diagonal"), self.solver, seed=seed, **opts,
                    **extra)
        sol.ys = sign * torch.exp(sol.ys)
        self.last_solution = sol
        return sol


class NeuralSDEClassifier(_SDEClassifier):
    """Naive neural SDE: ``dz = f(t, z~) dt + g(t, z) dW`` with unconstrained MLPs (Oh et al. 2024's
    "Neural SDE" baseline; diagonal noise, ReLU hidden layers, no bounds, no structure in ``z``)."""

    def __init__(self, input_channels: int, num_classes: int, hidden_dim: int = 32, width: int = 32,
                 layers: int = 1, interpolation: Interpolation = "hermite",
                 solver: SDEAlgorithm | None = None,
                 dt: float | None = None, rtol: float | None = None, atol: float | None = None,
                 time_scale: float | str = 1.0, intensity: bool = False):
        super().__init__(input_channels, num_classes, hidden_dim, width, layers, interpolation, solver, dt,
                         rtol, atol, time_scale, intensity)
        self.drift_net = mlp(2 * hidden_dim + 1, width, hidden_dim, layers)
        self.diffusion_net = mlp(hidden_dim + 1, width, hidden_dim, layers)

    def f(self, t: Tensor, z: Tensor) -> Tensor:
        return self.drift_net(torch.cat([t.to(z.dtype).expand(z.shape[0], 1), self.z_tilde(t, z)], -1))

    def g(self, t: Tensor, z: Tensor) -> Tensor:
        # Each g_i sees the whole state (as in the authors' baseline), so this is diagonal noise only
        # in shape; Euler-Maruyama (the default) uses g(t_n, z_n) alone and is unaffected, but Milstein's
        # diagonal correction would not apply.
        return self.diffusion_net(torch.cat([t.to(z.dtype).expand(z.shape[0], 1), z], -1))


class NeuralCDE(PathClassifier):
    """Neural CDE ``dz = f_theta(z) dX(t)`` (Kidger et al., NeurIPS 2020, eq. 4), ``z(t_0) = zeta(X(t_0))``.

    Solved as the ODE ``dz/dt = f_theta(z) dX/dt`` with ``solver`` (default RK4, one step per
    observation interval), ``f_theta = tanh(MLP(z))`` reshaped to ``(dz, C + 1)``.
    """

    def __init__(self, input_channels: int, num_classes: int, hidden_dim: int = 32, width: int = 32,
                 layers: int = 1, interpolation: Interpolation = "hermite", solver: Algorithm | None = None,
                 dt: float | None = None, intensity: bool = False):
        super().__init__(input_channels, num_classes, hidden_dim, width, layers, interpolation, intensity)
        self.solver = RK4() if solver is None else solver
        self.dt = dt
        cin = self.path_channels
        self.cin = cin
        self.initial = nn.Linear(cin, hidden_dim)
        self.field = mlp(hidden_dim, width, hidden_dim * cin, layers)
        self.last_solution = None

    def features(self, path: ControlPath, seed: int | None = None) -> Tensor:
        z0 = self.initial(path.evaluate(path.times[0]))

        def rhs(t: Tensor, z: Tensor) -> Tensor:
            F = torch.tanh(self.field(z)).view(z.shape[0], self.hidden_dim, self.cin)
            return (F @ path.derivative(t).unsqueeze(-1)).squeeze(-1)

        dt = self.dt if self.dt is not None else float((path.times[1:] - path.times[:-1]).min())
        sol = solve(ODEProblem(rhs, z0, (path.t0, path.t1)), self.solver, dt=dt)
        self.last_solution = sol
        return sol.ys[-1]


class GRUdt(PathClassifier):
    """GRU over the observation sequence with input ``[x_filled, mask, delta]``.

    ``x_filled`` carries the last observation forward (the first one backward), ``mask`` marks observed
    entries and ``delta`` is the time since each channel was last observed (GRU-D's inputs, Che et al.
    2018, without the learned decay): the standard discrete baseline for irregular series.
    """

    def __init__(self, input_channels: int, num_classes: int, hidden_dim: int = 32, width: int = 32,
                 layers: int = 1, interpolation: Interpolation = "hermite", intensity: bool = False):
        super().__init__(input_channels, num_classes, hidden_dim, width, layers, interpolation, intensity)
        k = 4 if self.intensity else 3
        self.gru = nn.GRU(k * input_channels, hidden_dim, num_layers=1, batch_first=True)

    @staticmethod
    def inputs(t: Tensor, x: Tensor) -> Tensor:
        """``[x_filled, mask, delta]`` of shape ``(batch, L, 3C)``."""
        B, L, C = x.shape
        obs = ~torch.isnan(x)
        none = ~obs.any(dim=1)
        if bool(none.any()):
            b, c = (int(v) for v in none.nonzero()[0])
            raise ValueError(f"sample {b}, channel {c} has no observed value (all NaN)")
        idx = torch.arange(L, device=x.device).view(1, L, 1).expand(B, L, C)
        last = torch.where(obs, idx, torch.full_like(idx, -1)).cummax(dim=1).values
        first = torch.where(obs, idx, torch.full_like(idx, L)).min(dim=1, keepdim=True).values
        src = torch.where(last >= 0, last, first.expand_as(last))
        x0 = torch.where(obs, x, torch.zeros_like(x))
        filled = x0.gather(1, src)
        tt = t.to(x.dtype).view(1, L, 1).expand(B, L, C)
        t_last = torch.where(last >= 0, tt.gather(1, last.clamp_min(0)), tt[:, :1].expand(B, L, C))
        delta = tt - t_last
        return torch.cat([filled, obs.to(x.dtype), delta], dim=-1)

    def forward(self, t: Any, x: Tensor, seed: int | None = None) -> Tensor:
        t, x = self.check_input(t, x)
        u = self.inputs(t, x)
        if self.intensity:
            u = torch.cat([u, observation_intensity(x)], dim=-1)
        _, h = self.gru(u)
        return self.head(h[-1])


#: Name -> class, as used by the benchmark and the example.
MODELS: dict[str, type[PathClassifier]] = {
    "lsde": LangevinSDE, "lnsde": LinearNoiseSDE, "gsde": GeometricSDE, "neural_sde": NeuralSDEClassifier,
    "neural_cde": NeuralCDE, "gru_dt": GRUdt,
}


def build_model(name: str, input_channels: int, num_classes: int, **kwargs: Any) -> PathClassifier:
    """``MODELS[name](input_channels, num_classes, **kwargs)`` with a clear error for unknown names."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](input_channels, num_classes, **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

