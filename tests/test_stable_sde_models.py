"""Stable neural SDEs and baselines: shapes, finiteness, structure, seeds, torchsde cross-check, bad input."""

import inspect

import pytest
import torch
import torchsde

from nde.paths import ControlPath
from nde.stable_sde import (
    MODELS,
    GeometricSDE,
    LangevinSDE,
    LinearNoiseSDE,
    NeuralSDEClassifier,
    build_model,
)
from solvers import solve
from solvers.sde import EulerMaruyama, LambaEM

SDE_MODELS = ["lsde", "lnsde", "gsde", "neural_sde"]


def _data(B=5, L=20, C=2, rate=0.4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    t = torch.cumsum(0.02 + torch.rand(L, generator=g, dtype=torch.float64) / L, 0)   # irregular
    x = torch.randn(B, L, C, generator=g).to(dtype)
    x = x.masked_fill(torch.rand(B, L, C, generator=g) < rate, float("nan"))
    x[:, 0] = torch.randn(B, C, generator=g).to(dtype)   # observed start (not needed, but typical)
    x[0, :4, 0] = float("nan")                          # leading NaNs
    x[1, -3:, 1] = float("nan")                         # trailing NaNs
    return t, x


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_finite_and_gradients(name, dtype):
    torch.manual_seed(0)
    model = build_model(name, 2, 3, hidden_dim=8, width=8).to(dtype)
    t, x = _data(dtype=dtype)
    logits = model(t, x, seed=3)
    assert logits.shape == (5, 3) and logits.dtype == dtype
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0


@pytest.mark.parametrize("name", SDE_MODELS)
def test_seeded_runs_repeat_and_seeds_differ(name):
    torch.manual_seed(1)
    model = build_model(name, 2, 2, hidden_dim=8, width=8)
    t, x = _data()
    a, b, c = model(t, x, seed=7), model(t, x, seed=7), model(t, x, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)       # the noise really enters


def test_gsde_keeps_sign_of_z():
    torch.manual_seed(2)
    t, x = _data(B=16, L=30)
    for log_space, form in ((True, "reference"), (False, "reference"), (True, "paper"), (False, "paper")):
        model = GeometricSDE(2, 2, hidden_dim=8, width=8, log_space=log_space, drift_form=form)
        ts, zs = model.trajectory(t, x, seed=0)
        assert zs.shape == (30, 16, 8)
        assert torch.equal(torch.sign(zs), torch.sign(zs[0]).expand_as(zs))
    # Steps of length 5: Euler-Maruyama's factor 1 + gamma h + sigma dW goes negative for some
    # coordinates, the log-space step z exp((gamma - sigma^2/2) h + sigma dW) never changes the sign.
    t_long = torch.linspace(0, 50, 11, dtype=torch.float64)
    x_long = x[:, :11]
    em = GeometricSDE(2, 2, hidden_dim=8, width=8, drift_form="paper")
    logm = GeometricSDE(2, 2, hidden_dim=8, width=8, log_space=True, drift_form="paper")
    logm.load_state_dict(em.state_dict())
    with torch.no_grad():
        _, z_em = em.trajectory(t_long, x_long, seed=1)
        _, z_log = logm.trajectory(t_long, x_long, seed=1)
    assert not torch.equal(torch.sign(z_em), torch.sign(z_em[0]).expand_as(z_em))
    assert torch.equal(torch.sign(z_log), torch.sign(z_log[0]).expand_as(z_log))
    # Log-space and Euler-Maruyama agree to first order on a fine grid (same model, same Brownian path).
    fine = GeometricSDE(2, 2, hidden_dim=8, width=8, log_space=True, dt=1e-3)
    coarse = GeometricSDE(2, 2, hidden_dim=8, width=8, log_space=False, dt=1e-3)
    coarse.load_state_dict(fine.state_dict())
    with torch.no_grad():
        _, zf = fine.trajectory(t, x, seed=5, saveat=[float(t[-1])])
        _, zc = coarse.trajectory(t, x, seed=5, saveat=[float(t[-1])])
    rel = (zf - zc).abs().max() / zf.abs().max()
    assert rel < 0.05


def test_lsde_drift_has_no_time_input():
    torch.manual_seed(3)
    model = LangevinSDE(1, 2, hidden_dim=6, width=8)
    assert list(inspect.signature(model.drift).parameters) == ["z_tilde"]
    assert model.drift_net[0].in_features == 2 * 6            # [z, E X(t)] only
    # With a constant input path X(t) = (t, c) minus its time channel... the path has time as channel 0,
    # so freeze the embedding's time column: then the drift must not change with t at all.
    with torch.no_grad():
        model.embed.weight[:, 0] = 0.0
    t = torch.linspace(0, 1, 10, dtype=torch.float64)
    x = torch.full((3, 10, 1), 0.4)
    model._path = model.make_path(t, x)
    z = torch.randn(3, 6)
    f1 = model.f(torch.tensor(0.1, dtype=torch.float64), z)
    f2 = model.f(torch.tensor(0.8, dtype=torch.float64), z)
    assert torch.equal(f1, f2)
    # The same experiment with the linear-noise and geometric drifts, which take t explicitly, changes.
    for cls in (LinearNoiseSDE, GeometricSDE):
        m = cls(1, 2, hidden_dim=6, width=8)
        with torch.no_grad():
            m.embed.weight[:, 0] = 0.0
        m._path = m.make_path(t, x)
        assert m.drift_net[0].in_features == 2 * 6 + 1
        assert not torch.equal(m.f(torch.tensor(0.1, dtype=torch.float64), z),
                               m.f(torch.tensor(0.8, dtype=torch.float64), z))


def test_bounded_parameterisation():
    torch.manual_seed(4)
    t, x = _data()
    for cls in (LangevinSDE, LinearNoiseSDE, GeometricSDE):
        m = cls(2, 2, hidden_dim=8, width=8)
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(50.0)                                   # huge weights: bounds must still hold
        m._path = m.make_path(t, x)
        z = torch.randn(5, 8) * 10
        tt = torch.tensor(0.3, dtype=torch.float64)
        s = m.sigma(tt, z)
        assert (s >= 0).all() and (s <= 1).all()   # tanh of a non-negative number (1.0 at saturation)
        if cls is LangevinSDE:
            assert (m.f(tt, z).abs() <= 1).all()
        elif cls is LinearNoiseSDE:
            assert (m.f(tt, z).abs() <= 1).all()
            assert torch.allclose(m.g(tt, z), s * z)
        else:
            # paper form (default): f = gamma z with abs(gamma) < 1
            assert m.drift_form == "paper"
            assert (m.rate(tt, z).abs() <= 1).all()
            assert torch.allclose(m.f(tt, z), m.rate(tt, z) * z)
            # reference form tanh(m tanh z): bounded, zero at z = 0, and f = rate * z
            r = GeometricSDE(2, 2, hidden_dim=8, width=8, drift_form="reference")
            r.load_state_dict(m.state_dict())
            r._path = m._path
            assert (r.f(tt, z).abs() <= 1).all()
            assert torch.allclose(r.f(tt, z), r.rate(tt, z) * z)
            z0 = z.clone()
            z0[:, :3] = 0.0
            assert torch.equal(r.f(tt, z0)[:, :3], torch.zeros(5, 3))
            assert torch.isfinite(r.rate(tt, z0)).all()
    unb = LinearNoiseSDE(2, 2, hidden_dim=8, width=8, bounded=False)
    with torch.no_grad():
        for p in unb.parameters():
            p.mul_(50.0)
    unb._path = unb.make_path(t, x)
    assert unb.f(torch.tensor(0.3, dtype=torch.float64), torch.randn(5, 8) * 10).abs().max() > 1


@pytest.mark.parametrize("time_scale", [1.0, 4.0])
@pytest.mark.parametrize("cls", [LangevinSDE, LinearNoiseSDE, GeometricSDE, NeuralSDEClassifier])
def test_matches_torchsde_euler(cls, time_scale):
    """Our Euler-Maruyama solve equals torchsde.sdeint(method="euler") on the same Brownian path."""
    torch.manual_seed(5)
    model = cls(2, 2, hidden_dim=6, width=8, time_scale=time_scale).double()
    _, x = _data(dtype=torch.float64)
    # Dyadic times: torchsde's accumulated t + dt and our grid are then the same numbers bit for bit
    # (a Brownian bridge queried at times 1e-16 apart already differs by ~1e-8).
    t = torch.arange(20, dtype=torch.float64) / 16
    path = model.make_path(t, x)
    bm = torchsde.BrownianInterval(t0=path.t0, t1=path.t1, size=(5, 6), dtype=torch.float64, entropy=11)
    with torch.no_grad():
        prob = model.problem(path)
        ours = solve(prob, EulerMaruyama(), brownian=bm, **model.solve_options(path), saveat=path.times).ys
        ref = torchsde.sdeint(model.torchsde_sde(path), prob.y0, path.times, bm=bm, method="euler", dt=1 / 16)
    assert torch.allclose(ours, ref, atol=1e-12, rtol=0)


def test_adaptive_solver_runs_and_default_grid_is_observation_grid():
    torch.manual_seed(6)
    t, x = _data()
    m = GeometricSDE(2, 2, hidden_dim=6, width=8)
    m(t, x, seed=0)
    assert m.last_solution.stats.naccept == len(t) - 1     # one Euler-Maruyama step per interval
    ts, zs = m.trajectory(t, x, seed=0)
    assert torch.allclose(ts, t)        # states saved at every observation time
    a = GeometricSDE(2, 2, hidden_dim=6, width=8, solver=LambaEM(), rtol=1e-2, atol=1e-2)
    out = a(t, x, seed=0)
    assert torch.isfinite(out).all() and a.last_solution.stats.naccept > 0


def test_bad_input_raises():
    torch.manual_seed(7)
    t, x = _data()
    m = build_model("gsde", 2, 2, hidden_dim=4, width=4)
    with pytest.raises(ValueError, match="built for 2 channel"):
        m(t, x[..., :1])
    with pytest.raises(ValueError, match="length"):
        m(t[:-1], x)
    with pytest.raises(ValueError, match="strictly increasing"):
        m(t.flip(0), x)
    x_bad = x.clone()
    x_bad[2, :, 1] = float("nan")
    for name in sorted(MODELS):
        mm = build_model(name, 2, 2, hidden_dim=4, width=4)
        with pytest.raises(ValueError, match="all NaN"):
            mm(t, x_bad)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("transformer", 2, 2)
    with pytest.raises(ValueError, match="shape"):
        m(t, x[0])
    with pytest.raises(ValueError, match="drift_form"):
        GeometricSDE(2, 2, drift_form="logistic")
    with pytest.raises(ValueError, match="bounded=True"):
        GeometricSDE(2, 2, bounded=False, drift_form="reference")
    with pytest.raises(TypeError, match="solver"):
        GeometricSDE(2, 2, solver="euler")


def test_path_is_shared_with_models():
    t, x = _data()
    m = LangevinSDE(2, 2, hidden_dim=4, width=4)
    p = m.make_path(t, x)
    assert isinstance(p, ControlPath) and p.channels == 3
    assert torch.allclose(p.evaluate(t)[..., 0], t.float().expand(5, -1))   # time is channel 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_on_gpu(name):
    torch.manual_seed(8)
    t, x = _data()
    cpu = build_model(name, 2, 2, hidden_dim=8, width=8).double()
    gpu = build_model(name, 2, 2, hidden_dim=8, width=8).double().cuda()
    gpu.load_state_dict(cpu.state_dict())
    out = gpu(t, x.double().cuda(), seed=0)
    assert out.device.type == "cuda" and torch.isfinite(out).all()
    out.sum().backward()
    if name in ("neural_cde", "gru_dt"):       # deterministic models: same numbers as on the CPU
        assert torch.allclose(out.cpu(), cpu(t, x.double(), seed=0), atol=1e-8)



@pytest.mark.parametrize("cls", [LangevinSDE, LinearNoiseSDE, GeometricSDE, NeuralSDEClassifier])
def test_time_scale_is_a_time_change(cls):
    """time_scale=c solves dz = c f dt + sqrt(c) g dW_t, the law of dz = f ds + g dB_s in s = c t."""
    torch.manual_seed(3)
    m = cls(2, 2, hidden_dim=4, width=8, time_scale=4.0).double()
    _, x = _data(dtype=torch.float64)
    t = torch.arange(20, dtype=torch.float64) / 16
    path = m.make_path(t, x)
    with torch.no_grad():
        m.problem(path)
        assert m.scale_for(path) == 4.0
        z = torch.randn(5, 4, dtype=torch.float64)
        s = torch.tensor(0.3, dtype=torch.float64)
        assert torch.allclose(m.drift_term(s, z), 4.0 * m.f(s, z))
        assert torch.allclose(m.diffusion_term(s, z), 2.0 * m.g(s, z))
    m.time_scale = "interval"          # one unit of s per mean observation interval (authors' 0..L-1)
    assert m.scale_for(path) == pytest.approx(19 / float(t[-1] - t[0]))
    assert torch.isfinite(m(t, x, seed=0)).all()
    with pytest.raises(ValueError, match="time_scale"):
        cls(2, 2, time_scale=0.0)


def test_observation_intensity_counts_observed_values():
    from nde.stable_sde import observation_intensity
    t, x = _data(B=3, L=10, C=2, rate=0.5)
    c = observation_intensity(x)
    obs = ~torch.isnan(x)
    for b in range(3):
        for j in range(2):
            for i in range(10):
                assert float(c[b, i, j]) == pytest.approx(int(obs[b, : i + 1, j].sum()) / 10)
    assert torch.all(c[:, 1:] >= c[:, :-1])        # non-decreasing, so the path is well defined


@pytest.mark.parametrize("name", sorted(MODELS))
def test_intensity_channels_enter_every_model(name):
    torch.manual_seed(0)
    model = build_model(name, 2, 3, hidden_dim=8, width=8, intensity=True)
    assert model.path_channels == 5
    t, x = _data()
    logits = model(t, x, seed=3)
    assert logits.shape == (5, 3) and torch.isfinite(logits).all()
    # the intensity channels reach the output: their input weights get a non-zero gradient
    logits.logsumexp(-1).sum().backward()
    w = model.gru.weight_ih_l0 if name == "gru_dt" else model.initial.weight
    cols = slice(6, 8) if name == "gru_dt" else slice(3, 5)
    assert float(w.grad[:, cols].abs().sum()) > 0
    if name != "gru_dt":
        path = model.make_path(*model.check_input(t, x))
        from nde.stable_sde import observation_intensity
        assert torch.allclose(path.evaluate(t[6])[:, 3:], observation_intensity(x)[:, 6], atol=1e-6)
