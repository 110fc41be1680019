"""Forecast irregular series with missing values: a Langevin-type neural SDE continued past the data.

Builds the forecasting task of :mod:`nde.forecasting` (the last ``H`` points of every series are the
targets, complete; the input window before them loses ``--missing`` of its points per channel), trains a
:class:`nde.forecasting.Forecaster` around a stable neural SDE (default LSDE) with
:func:`nde.forecasting.fit_forecaster`, and compares it on the test split with the two learning-free
baselines (last observed value, train mean). The figure shows, for a few test series and one channel:
the observed input points, the true series, the forecast mean and the 5-95% band of 32 sample paths,
and the last-value baseline.

Data: ``--dataset sines`` (default; generated irregular noisy sines, random phase and amplitude per
channel, two channels: runs without any optional package) or the name of a UCR/UEA dataset shipped with
sktime (e.g. ``ItalyPowerDemand``, with ``--horizon 6``).

    python examples/irregular_forecasting.py --quick      # about 20 s on one core
    python examples/irregular_forecasting.py --dataset ItalyPowerDemand --horizon 6 --model gsde
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nde.datasets import load_ucr, sktime_available  # noqa: E402
from nde.forecasting import (  # noqa: E402
    ENCODERS,
    ForecastConfig,
    Forecaster,
    baseline_metrics,
    evaluate_forecaster,
    fit_forecaster,
    forecast_task,
    last_value_forecast,
    noisy_sines,
)


def load(name: str, quick: bool):
    if name == "sines":
        # one frequency (a cycle per unit time), random phase and amplitude per channel: see the docs'
        # caveats for random frequencies
        return noisy_sines(150 if quick else 400, 30, 2, seed=0, freq=(1.0, 1.0))
    if not sktime_available():
        print(f"sktime is not installed: using generated sines instead of {name} (pip install sktime)")
        return noisy_sines(150 if quick else 400, 30, 2, seed=0, freq=(1.0, 1.0))
    return load_ucr(name)


def plot(model, s, metrics, out: Path, series: int = 4, seed: int = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = s.test
    n = min(series, len(test))
    with torch.no_grad():
        smp = model.forecast(test.t_in, test.x_in[:n], test.t_out, samples=32, seed=seed)   # (K, n, H, C)
    mean = smp.mean(0)
    lo, hi = torch.quantile(smp, torch.tensor([0.05, 0.95], dtype=smp.dtype), dim=0)
    last = last_value_forecast(test.x_in[:n], test.horizon)
    t_in, t_out = test.t_in.numpy(), test.t_out.numpy()
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    for i, ax in enumerate(axes[0]):
        c = 0
        x = test.x_in[i, :, c].numpy()
        ax.plot(t_out, test.y[i, :, c].numpy(), "k-", lw=1.2, label="truth (targets)")
        ax.plot(t_in, x, "o", ms=3, color="tab:gray", label="observed input")
        ax.axvline(float(t_in[-1]), color="k", lw=0.6, ls=":")
        ax.fill_between(t_out, lo[i, :, c].numpy(), hi[i, :, c].numpy(), color="tab:blue", alpha=0.25,
                        label="5-95% of 32 samples")
        ax.plot(t_out, mean[i, :, c].numpy(), "-", color="tab:blue", lw=1.6, label="forecast mean")
        ax.plot(t_out, last[i, :, c].numpy(), "--", color="tab:red", lw=1, label="last value")
        ax.set_title(f"test series {i}, channel {c}", fontsize=9)
        ax.set_xlabel("t")
    axes[0][0].set_ylabel("standardised value")
    axes[0][0].legend(fontsize=7, loc="best")
    m = metrics
    fig.suptitle(f"{s.train.name}: {model.name.upper()} forecast of the last {test.horizon} points, "
                 f"{s.missing_rate:.0%} of the inputs missing; test MSE {m['model']['mse']:.3f} "
                 f"(last value {m['last_value']['mse']:.3f}, train mean {m['train_mean']['mse']:.3f})",
                 fontsize=9)
    fig.tight_layout()
    f = out / "irregular_forecasting.png"
    fig.savefig(f, dpi=120)
    plt.close(fig)
    return f


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer series and epochs (about 20 s on one core)")
    ap.add_argument("--dataset", default="sines")
    ap.add_argument("--horizon", type=int, default=6)
    ap.add_argument("--missing", type=float, default=0.5)
    ap.add_argument("--model", default="lsde", choices=list(ENCODERS))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--loss", choices=["crps", "mse"], default="crps",
                    help="training loss: crps (default here: rewards a calibrated spread) or mse")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/examples/irregular_forecasting")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    epochs = a.epochs or (30 if a.quick else 60)

    data = load(a.dataset, a.quick)
    s = forecast_task(data, a.horizon, missing_rate=a.missing, seed=a.seed)
    print(f"{data.name}: {len(data)} series, L = {data.x.shape[1]} (input {s.train.x_in.shape[1]}, horizon "
          f"{s.horizon}), {data.channels} channel(s), {a.missing:.0%} of the inputs missing; train/val/test "
          f"{len(s.train)}/{len(s.val)}/{len(s.test)}")
    torch.manual_seed(a.seed)
    model = Forecaster(a.model, data.channels, hidden_dim=16, width=16)
    t0 = time.perf_counter()
    res = fit_forecaster(model, s.train, s.val,
                         ForecastConfig(epochs=epochs, batch_size=16, patience=10, seed=a.seed, loss=a.loss,
                                                        progress=sys.stderr.isatty()), desc=a.model)
    train_s = time.perf_counter() - t0
    metrics = {"model": evaluate_forecaster(model, s.test, samples=16), **baseline_metrics(s.test)}
    print(f"trained {len(res.history)} epochs in {train_s:.1f} s (best epoch {res.best_epoch}: validation "
          f"MSE {res.best_val_mse:.3f}, CRPS {res.best_val_crps:.3f})")
    print("test (standardised units)        MSE     MAE    CRPS  90% coverage")
    for k, m in metrics.items():
        label = a.model.upper() if k == "model" else k.replace("_", " ")
        print(f"  {label:<28} {m['mse']:.3f}   {m['mae']:.3f}   {m['crps']:.3f}   {m['coverage']:.2f}")
    fig = plot(model, s, metrics, out, seed=a.seed)
    summary = {"dataset": data.name, "model": a.model, "missing": a.missing, "horizon": s.horizon,
               "epochs_run": len(res.history), "best_epoch": res.best_epoch, "train_s": train_s,
               "test": metrics}
    (out / "irregular_forecasting.json").write_text(json.dumps(summary, indent=1))
    print(f"saved {fig} and {out / 'irregular_forecasting.json'}")
    return summary


if __name__ == "__main__":
    main()
