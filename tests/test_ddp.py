"""DistributedDataParallel through the shared trainer (issue 15): two gloo processes on localhost.

* a NeuralODE classifier and a PINN trained on 2 ranks follow the single-process loss curve (same global
  batch) to float tolerance, and end on the same parameters;
* adjoint gradients (``BacksolveAdjoint``, ``CheckpointAdjoint``: custom autograd Functions) reach every
  parameter on every rank: non-zero, equal across ranks, equal to the single-process gradient;
* a checkpoint written with 2 ranks resumes on 1 and one written with 1 resumes on 2.

Float64 and fixed steps (RK4, ``dt``): an adaptive solver's steps depend on the batch it solves (the error
norm is over the batch), so shards of a batch would take other steps than the whole batch and agree only
to the solver's tolerance; with fixed steps the only difference is the order of the sums over samples
(DDP averages per-rank gradients), a few ulps, so the tolerances below (1e-9 relative) are far from
both rounding and from any real error (a wrong weighting of unequal shards is off by ~1e-2).

Processes start with ``fork`` where the platform has it (Linux): a spawned interpreter imports torch
anew, seconds per rank on a busy two-core machine; each multi-process run is bounded by ``spawn``'s
timeout.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time

import pytest
import torch
from torch import nn

from solvers.training import TrainConfig, Trainer, current_context, distributed_available, shard, spawn

torch.set_num_threads(1)

_OK, _WHY = distributed_available()
pytestmark = pytest.mark.skipif(not _OK, reason=f"torch.distributed with gloo unavailable: {_WHY}")

METHOD = "fork" if sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods() else "spawn"
TIMEOUT = 90.0 if METHOD == "fork" else 240.0


# -- a tiny NeuralODE classifier --------------------------------------------------------------------------
class _Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, t, y):
        return torch.tanh(self.lin(y))


class _Classifier(nn.Module):
    def __init__(self, adjoint: str = "backprop"):
        super().__init__()
        from nde import NeuralODE
        from solvers import RK4, Backprop, BacksolveAdjoint, CheckpointAdjoint

        adj = {"backprop": Backprop(), "backsolve": BacksolveAdjoint(), "checkpoint": CheckpointAdjoint(3)}
        self.embed = nn.Linear(3, 4)
        self.ode = NeuralODE(_Field(), RK4(), dt=0.25, adjoint=adj[adjoint])
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.ode(self.embed(x))[-1])


N = 21   # batches of 7 = shards of 4 and 3: unequal, so the per-rank weighting matters


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, generator=g, dtype=torch.float64)
    return x, (x[:, 0] * x[:, 1] > 0).long()


def _model(adjoint: str = "backprop") -> _Classifier:
    torch.manual_seed(0)
    return _Classifier(adjoint).double()


def _train_classifier(epochs: int, checkpoint: str | None = None, max_epochs: int | None = None):
    x, y = _data()
    model = _model()

    def loss(m, idx, ctx):
        return nn.functional.cross_entropy(m(x[idx]), y[idx])

    def validate(m, epoch):
        with torch.no_grad():
            return {"val_loss": float(nn.functional.cross_entropy(m(x), y))}

    cfg = TrainConfig(epochs=epochs, batch_size=7, lr=3e-2, seed=3, checkpoint=checkpoint,
                      max_epochs_this_call=max_epochs, progress=False)
    res = Trainer(model, loss, cfg, data=N, validate=validate).fit()
    return {"train": [h["train_loss"] for h in res.history], "val": [h["val_loss"] for h in res.history],
            "params": [p.detach().clone() for p in model.parameters()], "best": res.best_epoch}


def _classifier_job(ck_from_one: str, ck_two: str) -> dict:
    return {"world": current_context().world_size, "full": _train_classifier(4),
            "resumed": _train_classifier(4, ck_from_one),            # 2 epochs written by one process
            "first": _train_classifier(4, ck_two, max_epochs=2)}     # 2 epochs, resumed on one below


def _close(a: list, b: list, rtol: float = 1e-9) -> bool:
    return all(torch.allclose(torch.as_tensor(u), torch.as_tensor(v), rtol=rtol, atol=1e-12)
               for u, v in zip(a, b))


def _same(a: dict, b: dict) -> bool:
    return a["train"] == b["train"] and a["val"] == b["val"] and all(
        torch.equal(u, v) for u, v in zip(a["params"], b["params"]))


def test_ddp_classifier_matches_one_process_and_checkpoints_move_between_world_sizes(tmp_path):
    one = _train_classifier(4)
    ck1, ck2 = str(tmp_path / "one_rank.pt"), str(tmp_path / "two_ranks.pt")
    _train_classifier(4, ck1, max_epochs=2)
    r0, r1 = spawn(_classifier_job, 2, (ck1, ck2), timeout=TIMEOUT, threads=1, start_method=METHOD)
    assert r0["world"] == r1["world"] == 2
    for key in ("full", "resumed", "first"):
        assert _same(r0[key], r1[key]), key                     # the ranks hold one model
    two = r0["full"]
    assert len(two["train"]) == 4 and two["best"] == one["best"]
    assert _close(two["train"], one["train"]) and _close(two["val"], one["val"])
    assert _close(two["params"], one["params"])
    assert two["train"][-1] < two["train"][0] - 0.01           # it trains (the curve is not flat)
    # 1 -> 2 ranks: the first two epochs come from the one-process checkpoint, the rest agree
    res = r0["resumed"]
    assert res["train"][:2] == one["train"][:2] and _close(res["train"], one["train"])
    assert _close(res["params"], one["params"])
    # 2 -> 1 rank
    back = _train_classifier(4, ck2)
    assert back["train"][:2] == two["train"][:2] and _close(back["train"], one["train"])
    assert _close(back["params"], one["params"])


# -- adjoint gradients under DDP ----------------------------------------------------------------------------
def _one_step_gradients(adjoint: str) -> list[torch.Tensor]:
    x, y = _data()
    model = _model(adjoint)
    grads: list[torch.Tensor] = []

    def keep(info):     # after the optimizer step; gradients are cleared only at the next step
        grads.extend(p.grad.detach().clone() for p in model.parameters())

    # one full-batch step: 21 samples -> shards of 11 and 10
    Trainer(model, lambda m, idx, ctx: nn.functional.cross_entropy(m(x[idx]), y[idx]),
            TrainConfig(epochs=1, lr=1e-2, progress=False), data=N, on_step=keep).fit()
    return grads


def _gradient_job() -> dict:
    return {adj: _one_step_gradients(adj) for adj in ("backsolve", "checkpoint")}


def test_adjoint_gradients_reach_every_parameter_on_every_rank():
    r0, r1 = spawn(_gradient_job, 2, timeout=TIMEOUT, threads=1, start_method=METHOD)
    names = [n for n, _ in _model().named_parameters()]
    for adj in ("backsolve", "checkpoint"):
        one = _one_step_gradients(adj)
        for name, g0, g1, g in zip(names, r0[adj], r1[adj], one):
            assert float(g0.abs().max()) > 1e-6, (adj, name)           # not silently zero
            assert torch.equal(g0, g1), (adj, name)                   # all-reduced: one gradient
            assert torch.allclose(g0, g, rtol=1e-9, atol=1e-14), (adj, name)   # the full batch's gradient
    # the ODE's own parameters, the ones the custom Functions differentiate, are among them
    assert any(n.startswith("ode.") for n in names)


# -- a PINN under DDP -----------------------------------------------------------------------------------
def _train_pinn() -> dict:
    from pinn import PINN, collocation_points, convection
    from pinn.training import train

    p = convection(2.0)
    alg = PINN(hidden=(8,), n_x=8, n_t=4, dtype=torch.float64, seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = alg.build(p).to(torch.float64)
    x, t = collocation_points(p, 8, 4, "grid", 0, torch.float64)
    ctx = current_context()
    # each rank's share of the global collocation points (16 of 32 on two ranks)
    loss_fn = alg.make_loss(p, model, shard(x, ctx.rank, ctx.world_size), shard(t, ctx.rank, ctx.world_size))
    res = train(model, loss_fn, adam_iters=20, lr=1e-2, lbfgs_iters=8, lbfgs_chunk=4, log_every=5,
                progress=False)
    return {"loss": res.history["loss"], "phase": res.history["phase"], "lbfgs": res.lbfgs_iters,
            "params": [q.detach().clone() for q in model.parameters()]}


def test_ddp_pinn_matches_one_process():
    one = _train_pinn()
    r0, r1 = spawn(_train_pinn, 2, timeout=TIMEOUT, threads=1, start_method=METHOD)
    assert r0["loss"] == r1["loss"] and all(torch.equal(a, b) for a, b in zip(r0["params"], r1["params"]))
    assert r0["phase"] == one["phase"] and "lbfgs" in one["phase"] and r0["lbfgs"] == one["lbfgs"]
    assert _close(r0["loss"], one["loss"], rtol=1e-8)
    assert _close(r0["params"], one["params"], rtol=1e-7)
    assert one["loss"][-1] < 0.5 * one["loss"][0]


# -- a failure on one rank ends the run on every rank (none is left waiting in a collective) --------------
def _one_rank_fails() -> dict:
    rank = current_context().rank
    x, y = _data()
    out = {}
    for kind in ("nan", "raise"):
        def loss(m, idx, ctx, kind=kind):
            value = nn.functional.cross_entropy(m(x[idx]), y[idx])
            if ctx.rank == 1 and ctx.global_step == 2:
                if kind == "raise":
                    raise FloatingPointError(f"solve failed on rank 1 at epoch {ctx.epoch}, step {ctx.step}")
                return value * float("nan")
            return value

        cfg = TrainConfig(epochs=3, batch_size=7, on_nonfinite="stop", progress=False)
        res = Trainer(_model(), loss, cfg, data=N).fit()
        out[kind] = (res.diverged, res.epochs_done, res.message)
    return {"rank": rank, **out}


def test_a_failure_on_one_rank_stops_every_rank():
    r0, r1 = spawn(_one_rank_fails, 2, timeout=TIMEOUT, threads=1, start_method=METHOD)
    for r in (r0, r1):
        assert r["nan"] == (True, 0, "non-finite training loss at epoch 0, step 2")
        assert r["raise"][:2] == (True, 0)
    assert r1["raise"][2] == "solve failed on rank 1 at epoch 0, step 2"
    assert r0["raise"][2] == "training failed on another rank at epoch 0, step 2"


# -- the spawn helper --------------------------------------------------------------------------------------
def _fails_on_rank_one() -> int:
    if current_context().rank == 1:
        raise ValueError("boom on rank one")
    return 0


def _sleeps() -> None:
    time.sleep(60)


def test_spawn_reports_a_failing_rank_and_a_timeout():
    with pytest.raises(RuntimeError, match=r"rank 1 of 2 failed: ValueError: boom on rank one"):
        spawn(_fails_on_rank_one, 2, timeout=TIMEOUT, threads=1, start_method=METHOD)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="within timeout = 3"):
        spawn(_sleeps, 2, timeout=3.0 if METHOD == "fork" else 30.0, threads=1, start_method=METHOD)
    assert time.monotonic() - t0 < 40
