"""The one SymPy -> torch conversion (solvers.symbolic): values, derivatives, broadcasting, its users."""

import math

import pytest
import sympy as sp
import torch

from solvers.symbolic import TORCH_FUNCTIONS, lambdify_torch, to_torch

x, t = sp.symbols("x t", real=True)
PTS = [0.15, 0.35, 0.62, 0.9]  # inside every function's domain (asin, acos, log, sqrt), away from kinks

# every elementary function the ODE, SDE and PDE references use, one expression each
ELEMENTARY = {
    "sin": sp.sin(3 * x), "cos": sp.cos(x ** 2), "tan": sp.tan(x), "asin": sp.asin(x), "acos": sp.acos(x),
    "atan": sp.atan(2 * x), "sinh": sp.sinh(x), "cosh": sp.cosh(x), "tanh": sp.tanh(x - 1),
    "exp": sp.exp(-x / 2), "log": sp.log(1 + x), "sqrt": sp.sqrt(1 + x ** 2), "erf": sp.erf(x),
    "Abs": sp.Abs(x - sp.Rational(1, 2)), "pi": sp.pi * x ** 2, "E": sp.E * x ** 3,
    "sqrt2": sp.sqrt(2) * x ** 2,
}


def test_every_mapped_function_is_tested():
    names = {k for k in TORCH_FUNCTIONS if callable(TORCH_FUNCTIONS[k])} | {"pi", "E"}
    assert names <= set(ELEMENTARY)


@pytest.mark.parametrize("name", ELEMENTARY)
def test_values_and_derivatives_match_sympy(name):
    expr = ELEMENTARY[name]
    xs = torch.tensor(PTS, dtype=torch.float64, requires_grad=True)
    u = to_torch(expr, (x,))(xs)
    exact = torch.tensor([float(expr.subs(x, p)) for p in PTS], dtype=torch.float64)
    torch.testing.assert_close(u, exact, rtol=1e-14, atol=1e-14)
    # autograd through the torch function = SymPy's derivative, first and second order
    (du,) = torch.autograd.grad(u.sum(), xs, create_graph=True)
    d1 = torch.tensor([float(sp.diff(expr, x).subs(x, p)) for p in PTS], dtype=torch.float64)
    torch.testing.assert_close(du, d1, rtol=1e-13, atol=1e-13)
    if name != "Abs":
        (d2u,) = torch.autograd.grad(du.sum(), xs)
        d2 = torch.tensor([float(sp.diff(expr, x, 2).subs(x, p)) for p in PTS], dtype=torch.float64)
        torch.testing.assert_close(d2u, d2, rtol=1e-12, atol=1e-12)


def test_partial_derivatives_of_a_two_variable_expression():
    # the kind of expression the PDE references are (travelling, decaying modes)
    expr = sp.exp(-t / 10) * sp.sin(x - 50 * t) + sp.sqrt(1 + t) * sp.cos(3 * x) / 2
    fn = to_torch(expr, (x, t))
    xs = torch.tensor(PTS, dtype=torch.float64, requires_grad=True)
    ts = torch.tensor(PTS[::-1], dtype=torch.float64, requires_grad=True)
    gx, gt = torch.autograd.grad(fn(xs, ts).sum(), (xs, ts))
    for sym, got in ((x, gx), (t, gt)):
        want = to_torch(sp.diff(expr, sym), (x, t))(xs.detach(), ts.detach())
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


def test_numbers_in_numbers_out_and_tensors_in_tensors_out():
    expr = sp.exp(x) * sp.sin(x) + sp.sqrt(2)
    raw = lambdify_torch([x], expr)
    assert isinstance(raw(0.3), float)
    assert raw(0.3) == pytest.approx(math.exp(0.3) * math.sin(0.3) + math.sqrt(2))
    assert isinstance(raw(torch.tensor(0.3)), torch.Tensor)
    assert lambdify_torch([x], sp.sqrt(2) + sp.pi)(0.0) == pytest.approx(math.sqrt(2) + math.pi)
    out = to_torch(expr, (x,))(0.3)  # no tensor argument: still a tensor
    assert isinstance(out, torch.Tensor) and out.ndim == 0 and float(out) == pytest.approx(raw(0.3))


def test_broadcast_shape_and_dtype():
    xs = torch.linspace(0, 1, 3, dtype=torch.float32)[:, None]
    ts = torch.linspace(0, 1, 4, dtype=torch.float32)
    assert to_torch(sp.sin(x) * t, (x, t))(xs, ts).shape == (3, 4)
    zero = to_torch(sp.Integer(0), (x, t))(xs, ts)  # constant: broadcast, first tensor's dtype
    assert zero.shape == (3, 4) and zero.dtype == torch.float32 and not zero.any()
    only_x = to_torch(sp.cos(x), (x, t))(xs, ts)  # independent of t: still the common shape
    assert only_x.shape == (3, 4) and torch.equal(only_x[:, 0], only_x[:, 3])
    assert to_torch(sp.exp(x), (x,))(xs).dtype == torch.float32
    fn = to_torch(sp.sin(x), (x,))
    assert fn.expr == sp.sin(x) and fn.symbols == (x,)


def test_mod_is_the_remainder_in_zero_to_b():
    xs = torch.tensor([-2.5, -0.1, 0.0, 1.2, 7.0], dtype=torch.float64)
    got = to_torch(sp.Mod(x, 2), (x,))(xs)
    torch.testing.assert_close(got, torch.tensor([1.5, 1.9, 0.0, 1.2, 1.0], dtype=torch.float64))


def test_every_user_converts_through_this_module():
    import pinn.problem
    import pinn.reference
    import solvers.reference
    import solvers.reference.builder
    import solvers.reference.sde

    for mod in (pinn.problem, pinn.reference, solvers.reference, solvers.reference.sde):
        assert mod.to_torch is to_torch
    assert solvers.reference.lambdify_torch is lambdify_torch
    assert solvers.reference.builder.TORCH_FUNCTIONS is TORCH_FUNCTIONS


def test_ode_reference_right_hand_side_in_t_alone_broadcasts_over_the_batch():
    from solvers.reference import ode_from_sympy

    y = sp.Function("y")
    p = ode_from_sympy([sp.cos(t)], [y], t, [0], (0.0, 1.0), name="quadrature", dtype=torch.float32)
    ys = torch.zeros(5, 1, dtype=torch.float32)
    out = p.f(torch.tensor(0.5, dtype=torch.float64), ys)
    assert out.shape == (5, 1) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full((5, 1), math.cos(0.5)))
    torch.testing.assert_close(p.analytic(torch.tensor([0.5])), torch.tensor([[math.sin(0.5)]]))


def test_sde_reference_keeps_the_state_dtype():
    from solvers.reference.sde import linear_additive, ornstein_uhlenbeck

    ref = linear_additive()
    x0 = ref.y0(3, dtype=torch.float32)
    tt = torch.tensor(0.25, dtype=torch.float64)
    assert ref.drift(tt, x0).dtype == torch.float32 and ref.drift(tt, x0).shape == (3, 2)
    assert ref.diffusion(tt, x0).shape == (3, 2, 2)  # additive: one Brownian motion per component
    ou = ornstein_uhlenbeck()
    assert ou.mean(0.0).tolist() == [1.5] and ou.variance(0.0).tolist() == [0.0]
