"""Controlled paths: reproduce observations, NaN handling, exact on lines, gradients, bad input."""

import pytest
import torch

from nde.paths import ControlPath, fill_missing, hermite_path, linear_path

KINDS = ["linear", "hermite"]


def _irregular_times(L: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cumsum(0.05 + torch.rand(L, generator=g, dtype=torch.float64), 0)


@pytest.mark.parametrize("kind", KINDS)
def test_reproduces_observations_with_nans(kind):
    t = _irregular_times(30)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 30, 3, generator=g, dtype=torch.float64)
    drop = torch.rand(4, 30, 3, generator=g) < 0.5
    drop[:, 0, 0] = False                      # keep at least one observation per series
    x = x.masked_fill(drop, float("nan"))
    x[0, :7, 1] = float("nan")                 # leading NaNs
    x[1, -6:, 2] = float("nan")                # trailing NaNs
    x[2, :, 1] = float("nan")
    x[2, 11, 1] = 0.7                          # a single observation
    path = ControlPath(t, x, kind)
    vals = path.evaluate(t)                    # (B, L, C)
    obs = ~torch.isnan(x)
    assert torch.allclose(vals[obs], x[obs], atol=1e-12)
    # Leading NaNs take the first observation, trailing ones the last: a constant extension.
    first = x[0, 7, 1]
    assert torch.allclose(vals[0, :7, 1], first.expand(7), atol=1e-12)
    last = x[1, -7, 2] if not torch.isnan(x[1, -7, 2]) else None
    if last is not None:
        assert torch.allclose(vals[1, -6:, 2], last.expand(6), atol=1e-12)
    assert torch.allclose(vals[2, :, 1], torch.full((30,), 0.7, dtype=torch.float64), atol=1e-12)
    assert torch.isfinite(path.evaluate(torch.linspace(float(t[0]), float(t[-1]), 500))).all()


def test_fill_is_linear_interpolation_in_time():
    t = torch.tensor([0.0, 1.0, 3.0, 4.0], dtype=torch.float64)
    x = torch.tensor([[[1.0], [float("nan")], [float("nan")], [5.0]]], dtype=torch.float64)
    # 1 + (5 - 1) * (t - 0) / 4 at t = 1, 3
    expected = torch.tensor([1.0, 2.0, 4.0, 5.0], dtype=torch.float64)
    assert torch.allclose(fill_missing(t, x)[0, :, 0], expected)


@pytest.mark.parametrize("kind", KINDS)
def test_exact_on_linear_data_and_derivative(kind):
    t = _irregular_times(12, seed=3)
    x = (2.0 * t - 1.0).view(1, -1, 1)
    path = ControlPath(t, x, kind)
    q = torch.linspace(float(t[0]), float(t[-1]), 97, dtype=torch.float64)
    assert torch.allclose(path.evaluate(q)[0, :, 0], 2 * q - 1, atol=1e-12)
    assert torch.allclose(path.derivative(q)[0, :, 0], torch.full_like(q, 2.0), atol=1e-10)


def test_hermite_is_c1_and_uses_backward_differences():
    t = _irregular_times(10, seed=4)
    x = torch.sin(3 * t).view(1, -1, 1)
    path = hermite_path(t, x)
    inner = t[1:-1]
    eps = 1e-7
    left = path.derivative(inner - eps)[0, :, 0]
    right = path.derivative(inner)[0, :, 0]
    assert torch.allclose(left, right, atol=1e-5)        # C^1 at the knots
    back = (x[0, 1:-1, 0] - x[0, :-2, 0]) / (t[1:-1] - t[:-2])
    assert torch.allclose(right, back, atol=1e-10)       # slope at knot k = backward difference
    # The linear path is not C^1 in general: the two kinds really differ.
    lin = linear_path(t, x)
    assert not torch.allclose(lin.derivative(inner - eps)[0, :, 0], lin.derivative(inner)[0, :, 0], atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_differentiable_in_t_matches_derivative(kind):
    t = _irregular_times(8, seed=5)
    x = torch.randn(2, 8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    path = ControlPath(t, x, kind)
    s = torch.tensor(float(t[3] + 0.3 * (t[4] - t[3])), dtype=torch.float64, requires_grad=True)
    v = path.evaluate(s)
    assert v.shape == (2, 2)
    (gs,) = torch.autograd.grad(v[1, 0], s)
    assert torch.allclose(gs, path.derivative(s.detach())[1, 0], atol=1e-10)
    # gradcheck with respect to time and to the observations
    torch.autograd.gradcheck(lambda tt: path.evaluate(tt), (s,))
    xo = x.clone().requires_grad_(True)
    torch.autograd.gradcheck(lambda xx: ControlPath(t, xx, kind).evaluate(s.detach()), (xo,))


def test_batched_times():
    t = torch.stack([_irregular_times(6, 0), _irregular_times(6, 1)])
    x = torch.randn(2, 6, 1, dtype=torch.float64)
    path = ControlPath(t, x, "hermite")
    for b in range(2):
        v = path.evaluate(t[b])[b]
        assert torch.allclose(v, x[b], atol=1e-12)


def test_bad_input_raises():
    t = torch.linspace(0, 1, 5)
    x = torch.randn(2, 5, 2)
    x_allnan = x.clone()
    x_allnan[1, :, 0] = float("nan")
    with pytest.raises(ValueError, match="all NaN"):
        ControlPath(t, x_allnan)
    with pytest.raises(ValueError, match="length"):
        ControlPath(torch.linspace(0, 1, 4), x)
    with pytest.raises(ValueError, match="strictly increasing"):
        ControlPath(torch.tensor([0.0, 0.5, 0.5, 0.7, 1.0]), x)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ControlPath(torch.tensor([0.0, float("nan"), 0.5, 0.7, 1.0]), x)
    with pytest.raises(ValueError, match="Inf"):
        x_inf = x.clone()
        x_inf[0, 2, 0] = float("inf")
        ControlPath(t, x_inf)
    with pytest.raises(ValueError, match="kind"):
        ControlPath(t, x, "spline")
    with pytest.raises(ValueError, match="shape"):
        ControlPath(t, torch.randn(5))
