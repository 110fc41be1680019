"""Train the DCDM network shipped in ``solvers/linear/weights/`` (Kaneda et al., ICML 2023, Sec. 4).

Reproduces the shipped file with the defaults::

    python benchmarks/train_dcdm.py                       # 32^3, 4 random smoke domains, <= 60 min
    python benchmarks/train_dcdm.py --steps 50 --n 16     # a quick check

Training vectors: Ritz vectors of each training matrix (Lanczos, full reorthogonalisation), low end
weighted 9x, combined on the fly. Loss: the mean log residual reduction per iteration over `--unroll` DCDM
iterations (default 4; `--unroll 1` is the paper's scale-invariant one-step residual). Progress with tqdm;
a checkpoint is written every ``--checkpoint-every`` steps and the run resumes from it when restarted.
Writes the weights, ``train_history.json`` and ``train_loss.png`` (under ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from solvers.linear.training import TrainConfig, pretrained_path, save_weights, train_dcdm  # noqa: E402


def main() -> None:
    d = TrainConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=d.n)
    ap.add_argument("--dim", type=int, default=d.dim)
    ap.add_argument("--geometries", type=int, default=d.geometries)
    ap.add_argument("--obstacles", type=int, default=d.obstacles)
    ap.add_argument("--ritz", type=int, default=d.ritz)
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--lr-final", type=float, default=d.lr_final)
    ap.add_argument("--channels", type=int, default=d.channels)
    ap.add_argument("--nu", type=int, default=d.nu)
    ap.add_argument("--unroll", type=int, default=d.unroll,
                    help="DCDM iterations in the loss (1: the paper's one-step loss)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--minutes", type=float, default=d.minutes, help="wall-clock budget")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the shipped file used 1)")
    ap.add_argument("--checkpoint", default="out/train_dcdm/checkpoint.pt")
    ap.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    ap.add_argument("--weights", default=str(pretrained_path()), help="where to write the trained weights")
    ap.add_argument("--out", default="out/train_dcdm")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(n=args.n, dim=args.dim, geometries=args.geometries, obstacles=args.obstacles,
                      ritz=args.ritz, batch=args.batch, steps=args.steps, lr=args.lr, lr_final=args.lr_final,
                      channels=args.channels, nu=args.nu, unroll=args.unroll, seed=args.seed,
                      checkpoint_every=args.checkpoint_every,
                      minutes=args.minutes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    net, hist = train_dcdm(cfg, checkpoint=args.checkpoint)
    wall = time.perf_counter() - t0
    Path(args.weights).parent.mkdir(parents=True, exist_ok=True)
    save_weights(net, cfg, args.weights, steps_done=len(hist), final_loss=float(np.mean(hist[-50:])),
                 wall_seconds_this_run=wall)
    print(f"steps {len(hist)} / {cfg.steps}, loss first 50: {np.mean(hist[:50]):.4f}, "
          f"last 50: {np.mean(hist[-50:]):.4f}, wall {wall / 60:.1f} min -> {args.weights}")
    (out / "train_history.json").write_text(json.dumps(dict(config=asdict(cfg), loss=hist,
                                                            wall_seconds=wall), indent=1))
    fig, ax = plt.subplots(figsize=(6, 4))
    k = max(1, len(hist) // 200)
    sm = np.convolve(hist, np.ones(k) / k, mode="valid")
    plot = ax.semilogy if cfg.unroll == 1 else ax.plot  # the unrolled loss is already a log
    plot(hist, alpha=0.3, label="loss")
    plot(np.arange(len(sm)) + k - 1, sm, label=f"moving mean ({k})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss" if cfg.unroll == 1 else f"mean log ||r_{cfg.unroll}||^2 / {cfg.unroll}")
    ax.set_title(f"DCDM training, {cfg.n}^{cfg.dim}, {cfg.geometries} domains")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "train_loss.png", dpi=120)


if __name__ == "__main__":
    main()
