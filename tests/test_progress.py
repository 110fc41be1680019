"""Progress bars draw only on a terminal (issue 16, item 7).

Every tqdm bar in the project is built with ``disable=None`` when progress is asked for: tqdm then
disables itself when its stream (stderr) is not a TTY, so a log file or CI output gets no redraws, while
a terminal or a notebook still shows the bar. Under ``capsys`` stderr is not a TTY.
"""

import sys

import torch
from torch import nn

from pinn.training import train
from solvers import ODEProblem, SDEProblem, Tsit5, solve
from solvers.sde import EulerMaruyama


def test_ode_solve_with_progress_writes_nothing_to_non_tty_stderr(capsys):
    assert not sys.stderr.isatty()
    prob = ODEProblem(lambda t, y: -y, torch.ones(2, dtype=torch.float64), (0.0, 1.0))
    sol = solve(prob, Tsit5(), progress=True)
    assert sol.success
    assert capsys.readouterr().err == ""


def test_sde_solve_with_progress_writes_nothing_to_non_tty_stderr(capsys):
    prob = SDEProblem(lambda t, y: -y, lambda t, y: 0.1 * torch.ones_like(y),
                      torch.ones(2, dtype=torch.float64), (0.0, 1.0))
    sol = solve(prob, EulerMaruyama(), dt=0.1, progress=True, seed=0)
    assert sol.success
    assert capsys.readouterr().err == ""


def test_pinn_training_with_progress_writes_nothing_to_non_tty_stderr(capsys):
    net = nn.Linear(1, 1)
    x = torch.linspace(0, 1, 8).unsqueeze(-1)
    def loss():
        value = ((net(x) - x) ** 2).mean()
        return value, {"mse": value}

    train(net, loss, adam_iters=3, lbfgs_iters=0, progress=True)
    assert capsys.readouterr().err == ""
