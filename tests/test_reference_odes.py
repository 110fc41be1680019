"""Every reference problem's exact solution satisfies its ODE (checked again numerically by autograd)."""

import pytest
import sympy as sp
import torch

from solvers.reference import PROBLEMS, ReferenceError, ode_from_sympy, problem


@pytest.mark.parametrize("name", PROBLEMS)
def test_analytic_solves_the_ode(name):
    p = problem(name)
    ts = torch.linspace(p.t0, p.t1, 17, dtype=torch.float64, requires_grad=True)
    y = p.analytic(ts)
    dy = torch.stack([torch.autograd.grad(y[:, i].sum(), ts, retain_graph=True)[0]
                      for i in range(y.shape[1])], -1)
    f = torch.stack([p.f(t.detach(), yi.detach()) for t, yi in zip(ts, y)])
    torch.testing.assert_close(dy, f, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(p.analytic(torch.tensor(p.t0, dtype=torch.float64)), p.y0)


def test_at_least_ten_references():
    assert len(PROBLEMS) >= 10


def test_wrong_closed_form_is_rejected():
    t = sp.Symbol("t")
    y = sp.Function("y")
    with pytest.raises(ReferenceError, match="checkodesol"):
        ode_from_sympy([-y(t)], [y], t, [1], (0.0, 1.0), solution=[sp.exp(-2 * t)])
    with pytest.raises(ReferenceError, match="y\\(0\\)"):
        ode_from_sympy([-y(t)], [y], t, [1], (0.0, 1.0), solution=[2 * sp.exp(-t)])


def test_float32_reference():
    p = problem("harmonic", torch.float32)
    assert p.y0.dtype == torch.float32 and p.analytic(torch.tensor(1.0)).dtype == torch.float32


def test_unknown_name():
    with pytest.raises(KeyError, match="available"):
        problem("nope")
