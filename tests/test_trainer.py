"""The shared trainer (solvers.training, issue 15): its checkpoint format, exact resume, refusal of another
model or config, early stopping, the regulariser term, divergence handling. Tiny models; fast."""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from solvers.training import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    CheckpointMismatch,
    TrainConfig,
    Trainer,
    load_checkpoint,
    model_fingerprint,
    rank_seed,
    save_checkpoint,
    step_seed,
)

torch.set_num_threads(1)


class Noisy(nn.Module):
    """Input noise from the step's seed (as Brownian paths are drawn) and dropout from the global RNG."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.lin1, self.drop, self.lin2 = nn.Linear(3, width), nn.Dropout(0.25), nn.Linear(width, 1)

    def forward(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        x = x + 0.1 * torch.randn(x.shape, generator=g, dtype=x.dtype)
        return self.lin2(self.drop(torch.tanh(self.lin1(x))))[:, 0]


def _data(n: int = 30):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return x, torch.sin(x.sum(1))


X, Y = _data()


def _loss(m, idx, ctx):
    return ((m(X[idx], ctx.seed) - Y[idx]) ** 2).mean()


def _validate(m, epoch):
    with torch.no_grad():
        m.eval()
        v = float(((m(X, 123) - Y) ** 2).mean())
        m.train()
    return {"val_loss": v}


def _config(**kw):
    base = dict(epochs=5, batch_size=7, lr=2e-2, lr_final=2e-3, optimizer="adamw", weight_decay=1e-3,
                grad_clip=0.5, seed=4, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _new_model(init_seed: int = 0, width: int = 8) -> Noisy:
    torch.manual_seed(init_seed)
    return Noisy(width)


def _fit(model, cfg, **kw):
    return Trainer(model, _loss, cfg, data=len(Y), validate=_validate, **kw).fit()


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path):
    ck = str(tmp_path / "run.pt")
    model = _new_model()
    res = _fit(model, _config(epochs=2, checkpoint=ck))
    raw = torch.load(ck, weights_only=True)      # no pickled objects inside
    assert raw["format"] == FORMAT and raw["version"] == FORMAT_VERSION and raw["kind"] == "train"
    assert raw["fingerprint"] == model_fingerprint(model) and raw["model_class"] == "Noisy"
    assert raw["config"]["lr"] == 2e-2 and "epochs" not in raw["config"]          # run controls not hashed
    assert raw["trainer"]["epochs_done"] == 2 and raw["trainer"]["history"] == res.history
    assert raw["generator"].dtype == torch.uint8 and raw["rng"]["torch"].dtype == torch.uint8
    assert set(raw["optimizer"]) == {"state", "param_groups"} and raw["scheduler"]["last_epoch"] == 10
    assert [f for f in os.listdir(tmp_path) if f != "run.pt"] == []                # no temporary left
    # the trainer keeps the best epoch's parameters in the model and in the checkpoint
    best = raw["best_state"]
    assert all(torch.equal(best[k], v) for k, v in model.state_dict().items())


def test_save_refuses_pickled_objects_and_an_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    model = nn.Linear(2, 2)
    save_checkpoint(path, model, config={"a": 1}, history=[1.0, 2.0])
    with pytest.raises(TypeError, match=r"entry \['history'\]\[1\] is a numpy.float64"):
        save_checkpoint(path, model, history=[1.0, np.float64(2.0)])
    real_save = torch.save

    def dies_midway(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, config={"a": 2}, history=[3.0])
    monkeypatch.setattr(torch, "save", real_save)
    ck = load_checkpoint(path, model, {"a": 1})
    assert ck["history"] == [1.0, 2.0] and sorted(os.listdir(tmp_path)) == ["ck.pt"]


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    full = _new_model()
    r_full = _fit(full, _config())
    ck = str(tmp_path / "ck.pt")
    part = _new_model()
    r1 = _fit(part, _config(checkpoint=ck, max_epochs_this_call=2))
    assert len(r1.history) == 2 and not r1.finished
    torch.manual_seed(999)                    # a new process: another global RNG state, another init
    resumed = _new_model(init_seed=7)
    r2 = _fit(resumed, _config(checkpoint=ck))
    assert r2.finished and r2.history == r_full.history and r2.best_epoch == r_full.best_epoch
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # the dropout draws (global RNG) matter: the same run from another global RNG state differs, so the
    # resumed run is exact only because the checkpoint restores that state
    other = _new_model()
    torch.manual_seed(12345)
    _fit(other, _config())
    assert not torch.equal(other.lin1.weight, full.lin1.weight)
    # a finished run returns at once, with the best parameters
    again = _new_model(init_seed=3)
    r3 = _fit(again, _config(checkpoint=ck))
    assert r3.history == r_full.history
    assert all(torch.equal(a, b) for a, b in zip(full.parameters(), again.parameters()))
    # raising epochs trains a finished run further
    more = _new_model()
    r4 = _fit(more, _config(checkpoint=ck, epochs=6))
    assert len(r4.history) == 6 and r4.history[:5] == r_full.history


def test_resume_refuses_another_model_or_config_and_says_what_differs(tmp_path):
    ck = str(tmp_path / "ck.pt")
    _fit(_new_model(), _config(epochs=1, checkpoint=ck))
    with pytest.raises(CheckpointMismatch, match=r"lr: 0.02 in the checkpoint, 0.01 now"):
        _fit(_new_model(), _config(epochs=2, checkpoint=ck, lr=1e-2))
    with pytest.raises(CheckpointMismatch, match=r"lin1.weight \(8, 3\) in the checkpoint, \(6, 3\) here"):
        _fit(_new_model(width=6), _config(epochs=2, checkpoint=ck))
    with pytest.raises(CheckpointMismatch, match=r"model class: 'Noisy' in the checkpoint, 'Linear' here"):
        Trainer(nn.Linear(3, 1), lambda m, i, c: m(X[i]).mean(), _config(epochs=2, checkpoint=ck),
                data=len(Y)).fit()
    # a file of the format before the shared trainer is named as such
    old = tmp_path / "old.pt"
    torch.save({"model": nn.Linear(3, 1).state_dict(), "epoch": 3}, old)
    with pytest.raises(CheckpointError, match="is not a sciml-solvers.checkpoint file"):
        _fit(_new_model(), _config(checkpoint=str(old)))


def test_early_stopping_keeps_the_best_epoch():
    script = iter([5.0, 4.0, 4.5, 3.0, 3.5, 3.2, 3.1, 2.0])
    snapshots = []
    model = _new_model()
    tr = Trainer(model, _loss, _config(epochs=8, patience=3), data=len(Y),
                 validate=lambda m, e: {"val_loss": next(script)},
                 on_epoch=lambda row, res: snapshots.append(copy.deepcopy(model.state_dict())))
    res = tr.fit()
    # epochs 4, 5, 6 do not beat epoch 3's 3.0: stop after epoch 6 (2.0 at epoch 7 never seen)
    assert res.stopped_early and res.finished and len(res.history) == 7
    assert res.best_epoch == 3 and res.best["val_loss"] == 3.0
    assert all(torch.equal(snapshots[3][k], v) for k, v in model.state_dict().items())
    assert not all(torch.equal(snapshots[6][k], v) for k, v in model.state_dict().items())
    # mode="max" selects the largest value
    script2 = iter([0.1, 0.5, 0.3])
    res2 = Trainer(_new_model(), _loss, _config(epochs=3, monitor="acc", mode="max"), data=len(Y),
                   validate=lambda m, e: {"acc": next(script2)}).fit()
    assert res2.best_epoch == 1 and not res2.stopped_early
    with pytest.raises(ValueError, match="patience=2 needs the monitored metric 'val_loss'"):
        Trainer(_new_model(), _loss, _config(epochs=3, patience=2), data=len(Y)).fit()


class _Penalised(nn.Module):
    """Leaves a penalty in ``reg_loss`` as the nde regularisers do (on a submodule)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
        self.reg_loss = None

    def forward(self, x):
        self.reg_loss = (self.w ** 2).sum()
        return x @ self.w


class _Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _Penalised()
        self.stale = _Penalised()       # never called: a reg_loss left here must not be added

    def forward(self, x):
        return self.inner(x)


def test_regulariser_term_is_added_with_its_weight():
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0], [2.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    model = _Outer()
    model.stale.reg_loss = torch.tensor(100.0, requires_grad=True)
    w0 = model.inner.w.detach().clone()
    seen = []
    cfg = TrainConfig(epochs=1, optimizer="sgd", lr=0.1, reg_weight=0.5, progress=False)
    Trainer(model, lambda m, b, ctx: ((m(x) - y) ** 2).mean(), cfg, on_step=seen.append).fit()
    w = w0.clone().requires_grad_(True)
    total = ((x @ w - y) ** 2).mean() + 0.5 * (w ** 2).sum()
    (g,) = torch.autograd.grad(total, w)
    assert torch.allclose(model.inner.w.detach(), w0 - 0.1 * g, rtol=1e-12, atol=0)
    assert seen[0].parts["reg"] == pytest.approx(0.5 * float((w0 ** 2).sum()), rel=1e-12)
    assert seen[0].loss == pytest.approx(float(((x @ w0 - y) ** 2).mean()), rel=1e-12)   # task loss alone
    # reg_weight=0 ignores the penalty: plain gradient descent on the task loss
    model0 = _Outer()
    Trainer(model0, lambda m, b, ctx: ((m(x) - y) ** 2).mean(),
            TrainConfig(epochs=1, optimizer="sgd", lr=0.1, reg_weight=0.0, progress=False)).fit()
    (g0,) = torch.autograd.grad(((x @ w - y) ** 2).mean(), w)
    assert torch.allclose(model0.inner.w.detach(), w0 - 0.1 * g0, rtol=1e-12, atol=0)


def test_nde_regulariser_reaches_the_loss():
    from nde import RNODE, NeuralODE
    from solvers import RK4

    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, t, y):
            return torch.tanh(self.lin(y))

    y0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    runs = {}
    for w in (1.0, 0.0):
        torch.manual_seed(0)
        model = NeuralODE(Field(), RK4(), dt=0.25)
        reg = RNODE(weight=1.0, seed=0)
        info = []
        Trainer(model, lambda m, b, ctx, reg=reg: (m(y0, regularizer=reg)[-1] ** 2).mean(),
                TrainConfig(epochs=3, lr=0.05, reg_weight=w, progress=False), on_step=info.append).fit()
        runs[w] = (info, [p.detach().clone() for p in model.parameters()])
    assert all(i.parts["reg"] > 0 for i in runs[1.0][0]) and "reg" not in runs[0.0][0][0].parts
    assert not torch.equal(runs[1.0][1][0], runs[0.0][1][0])


def test_divergence_raises_or_stops_before_the_step():
    calls = {"n": 0}

    def flaky(m, idx, ctx):
        calls["n"] += 1
        loss = _loss(m, idx, ctx)
        return loss * float("nan") if calls["n"] == 7 else loss    # 5 steps/epoch: epoch 1, step 1

    params = {}

    def remember(info):
        params["last"] = [p.detach().clone() for p in model.parameters()]

    model = _new_model()
    with pytest.raises(FloatingPointError, match="non-finite training loss at epoch 1, step 1"):
        Trainer(model, flaky, _config(), data=len(Y), on_step=remember).fit()
    assert all(torch.equal(a, b) for a, b in zip(params["last"], model.parameters()))
    calls["n"] = 0
    model = _new_model()
    res = Trainer(model, flaky, _config(on_nonfinite="stop"), data=len(Y), validate=_validate).fit()
    assert res.diverged and res.finished and len(res.history) == 1 and "epoch 1, step 1" in res.message
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_batches_shards_and_seeds():
    tr = Trainer(_new_model(), _loss, _config(batch_size=8, min_last_batch=3), data=25)
    sizes = [len(b) for b in tr._global_batches(0)]
    assert sizes == [8, 8, 9]                 # a last batch of 1 < 3 joins the one before
    assert sorted(torch.cat(list(tr._global_batches(1))).tolist()) == list(range(25))
    # rank 0 keeps the single-process seeds; other ranks get their own
    assert rank_seed(5, 0) == 5 and step_seed(5, 2, 3) == (5 * 1_000_003 + 2 * 10_007 + 3) % 2**62
    seeds = {step_seed(5, e, b, r) for e in range(3) for b in range(4) for r in range(4)}
    assert len(seeds) == 48
    with pytest.raises(ValueError, match="lr must be finite and > 0"):
        TrainConfig(lr=0.0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="lion")
    with pytest.raises(TypeError, match="batch_size must be an int"):
        TrainConfig(batch_size=2.5)


def test_lbfgs_phase_converges_on_a_quadratic():
    a = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -1.0], dtype=torch.float64)
    model = nn.Linear(2, 1, bias=False).double()

    def loss(m, batch, ctx):
        w = m.weight[0]
        return 0.5 * w @ a @ w - b @ w

    tr = Trainer(model, loss, TrainConfig(epochs=0, progress=False))
    lb = tr.minimize_lbfgs(30, chunk=10)
    assert "converged" in lb.stop and lb.iterations < 30
    # the loss pins the minimiser down to ~sqrt(eps) only (a quadratic is flat there)
    assert torch.allclose(model.weight[0].detach(), torch.linalg.solve(a, b), rtol=0, atol=1e-7)
    assert math.isclose(lb.loss, float(-0.5 * b @ torch.linalg.solve(a, b)), rel_tol=1e-12)


def test_dcdm_weights_round_trip_in_the_new_format(tmp_path):
    from solvers.linear.network import DCDMNet
    from solvers.linear.training import TrainConfig as DCDMConfig
    from solvers.linear.training import load_dcdm, save_weights

    torch.manual_seed(0)
    net = DCDMNet(2, channels=2)
    path = tmp_path / "w.pt"
    save_weights(net, DCDMConfig(dim=2, channels=2), path, steps_done=3, final_loss=-1.5)
    raw = torch.load(path, weights_only=True)
    assert raw["kind"] == "weights" and raw["info"] == {"steps_done": 3, "final_loss": -1.5}
    back = load_dcdm(path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), back.state_dict().values()))
