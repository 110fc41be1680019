"""Train a neural-ODE classifier with and without local error regularisation, and compare.

The classifier (scikit-learn's 8x8 digits: linear embedding -> ODE block solved adaptively by Tsit5 ->
linear head) is trained twice from the same initialisation: plainly, and with
``LocalRegularizer("error")`` (Pal, Edelman & Rackauckas, ICML 2023): at one random time per batch the
solver's own error estimate of one extra step is added to the loss. The regularised model learns
dynamics the solver integrates in fewer steps. Figures: NFE over training, test NFE vs accuracy,
and the learned hidden-state trajectories (projected on their two principal directions).

    python examples/neural_ode_regularization.py --quick      # well under 2 minutes on one core
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nde import ExponentialDecay, LocalRegularizer, NeuralODE  # noqa: E402
from solvers import Tsit5  # noqa: E402


class Field(nn.Module):
    def __init__(self, d: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, d))

    def forward(self, t, y):
        return self.net(y)


class Classifier(nn.Module):
    def __init__(self, hidden: int = 16, width: int = 64, tol: float = 1e-6):
        super().__init__()
        self.embed = nn.Linear(64, hidden)
        self.ode = NeuralODE(Field(hidden, width), Tsit5(), rtol=tol, atol=tol)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x, regularizer=None, ts=None):
        h = self.ode(self.embed(x), ts, regularizer=regularizer)
        return self.head(h[-1]), h


def load():
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return X, y, perm[:1437], perm[1437:]


def train(regularize: bool, X, y, tr, epochs: int, seed: int):
    torch.manual_seed(seed)
    model = Classifier()
    iters = epochs * ((len(tr) + 127) // 128)
    reg = None
    if regularize:
        reg = LocalRegularizer("error", weight=ExponentialDecay(30.0, 3.0, iters), seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    nfe = []
    t0 = time.perf_counter()
    for ep in range(epochs):
        g = torch.Generator().manual_seed(ep)
        p = tr[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(p), 128):
            idx = p[i:i + 128]
            opt.zero_grad()
            logits, _ = model(X[idx], reg)
            loss = nn.functional.cross_entropy(logits, y[idx])
            (loss + (model.ode.reg_loss if reg is not None else 0.0)).backward()
            opt.step()
            nfe.append(model.ode.nfe_forward + model.ode.nfe_regularizer)
    return model, nfe, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 epochs instead of 15")
    ap.add_argument("--out", default="out/examples/neural_ode_regularization")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    X, y, tr, te = load()
    epochs = 6 if args.quick else 15
    results, models = {}, {}
    for name, regularize in (("vanilla", False), ("local error", True)):
        model, nfe, secs = train(regularize, X, y, tr, epochs, args.seed)
        model.eval()
        with torch.no_grad():
            logits, _ = model(X[te])
        acc = float((logits.argmax(-1) == y[te]).float().mean())
        results[name] = {"test_accuracy": acc, "test_nfe": model.ode.nfe_forward, "train_time_s": secs,
                         "train_nfe": nfe}
        models[name] = model
        print(f"{name:<12} test accuracy {100 * acc:.2f}%  test NFE {model.ode.nfe_forward}  "
              f"train {secs:.1f}s")
    v, r = results["vanilla"], results["local error"]
    print(f"NFE ratio local/vanilla = {r['test_nfe'] / v['test_nfe']:.3f}, "
          f"accuracy difference {100 * (r['test_accuracy'] - v['test_accuracy']):+.2f} pp")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for i, (name, res) in enumerate(results.items()):
        axes[0].plot(res["train_nfe"], label=name, color=f"C{i}")
        axes[1].scatter(res["test_nfe"], 100 * res["test_accuracy"], s=60, color=f"C{i}", label=name)
    axes[0].set(xlabel="training iteration", ylabel="forward NFE", title="NFE over training")
    axes[1].set(xlabel="test NFE", ylabel="test accuracy (%)", title="cost vs accuracy")
    axes[0].legend()
    axes[1].legend()
    ts = torch.linspace(0, 1, 30)
    for ax, (name, model) in zip(axes[2:], models.items()):
        with torch.no_grad():
            _, h = model(X[te[:60]], ts=ts)
        flat = h.reshape(-1, h.shape[-1])
        _, _, V = torch.pca_lowrank(flat - flat.mean(0), q=2)
        proj = (h - flat.mean(0)) @ V[:, :2]
        for j in range(proj.shape[1]):
            ax.plot(proj[:, j, 0], proj[:, j, 1], color=plt.cm.tab10(int(y[te[j]])), lw=0.8)
            ax.scatter(proj[-1, j, 0], proj[-1, j, 1], color=plt.cm.tab10(int(y[te[j]])), s=8)
        ax.set(title=f"{name}: hidden trajectories (PCA)", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(out / "neural_ode_regularization.png", dpi=120)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'neural_ode_regularization.png'} and {out / 'results.json'}")


if __name__ == "__main__":
    main()
