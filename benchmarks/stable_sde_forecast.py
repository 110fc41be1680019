"""Forecasting irregular series with missing inputs: stable neural SDEs vs baselines (nde.forecasting).

Grid: datasets x missing rates x models x seeds. Each run: ``nde.forecasting.forecast_task`` (the last
``H`` points of every series are the targets, complete; the first ``L - H`` the input window, with
``int(L_in * rate)`` points per sample and channel dropped; stratified 70/15/15 split; train-input
standardisation; all with the run's seed), a ``Forecaster`` initialised with ``torch.manual_seed(seed)``,
trained by ``fit_forecaster`` (Adam, one-sample MSE, early stopping on the validation MSE) and tested
with 16 sample paths: MSE and MAE of the mean forecast, CRPS (unbiased ensemble form) and the coverage
of the central 90% interval, all in standardised units. The two learning-free baselines (last observed
value, train mean) are scored on the same test split. Printed and saved: mean +- std over seeds per
(dataset, rate, model), training time, and the best model per (dataset, rate).

Every finished run is appended to ``runs.jsonl`` in ``--out``; a rerun with the same ``--out`` skips the
runs already there (same settings), so the grid can be split over sessions.

Examples::

    python benchmarks/stable_sde_forecast.py --quick          # ItalyPowerDemand, 3 models, 1 seed (~40 s)
    OMP_NUM_THREADS=1 python benchmarks/stable_sde_forecast.py --workers 1   # full grid: ~30 min, 1 core
    python benchmarks/stable_sde_forecast.py --loss crps --out out/benchmarks/stable_sde_forecast_crps
    python benchmarks/stable_sde_forecast.py --datasets GunPoint --rates 0 0.7 --models gsde gru_dt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_log import append_run, load_runs, run_jobs  # noqa: E402

#: Horizon H per dataset (the last H of L points are forecast).
HORIZONS = {"ItalyPowerDemand": 6, "BasicMotions": 20, "GunPoint": 30, "ArrowHead": 50}
FULL = {
    "datasets": ["ItalyPowerDemand", "BasicMotions", "GunPoint"],
    "rates": [0.0, 0.5],
    "models": ["lsde", "lnsde", "gsde", "neural_sde", "neural_cde", "gru_dt"],
    "seeds": [0, 1, 2],
}
QUICK = {"datasets": ["ItalyPowerDemand"], "rates": [0.0, 0.5], "models": ["lsde", "gsde", "gru_dt"],
         "seeds": [0]}
BASELINES = ("last_value", "train_mean")
LABELS = {"lsde": "LSDE", "lnsde": "LNSDE", "gsde": "GSDE", "neural_sde": "Neural SDE",
          "neural_cde": "Neural CDE", "gru_dt": "GRU-dt", "last_value": "last value (baseline)",
          "train_mean": "train mean (baseline)"}
METRICS = ("mse", "mae", "crps", "coverage")
SDE = ("lsde", "lnsde", "gsde", "neural_sde")
# Runs logged before an option existed count as what they ran with: the first grid's GSDE used the
# authors' drift tanh(m tanh z), nde.stable_sde's default between commits 266552f and 603eb7a.
LOGGED_DEFAULTS = {"loss": "mse", "gsde_form": "reference", "select": "mse"}


def run_one(job: dict) -> dict:
    """Train and test one (dataset, rate, model, seed), or score a baseline, in this process."""
    import torch

    torch.set_num_threads(1)
    from nde.datasets import load_ucr
    from nde.forecasting import (
        ForecastConfig,
        Forecaster,
        baseline_metrics,
        evaluate_forecaster,
        fit_forecaster,
        forecast_task,
    )
    from nde.stable_sde import count_parameters

    data = load_ucr(job["dataset"])
    s = forecast_task(data, job["horizon"], job["rate"], seed=job["seed"])
    base = {"n_train": len(s.train), "n_test": len(s.test), "L": data.x.shape[1], "channels": data.channels}
    if job["model"] in BASELINES:
        m = baseline_metrics(s.test)[job["model"]]
        return {**job, **base, **{f"test_{k}": v for k, v in m.items()}, "train_time": 0.0, "fit_cpu": 0.0,
                "epochs_run": 0, "best_epoch": -1, "best_val_mse": float("nan"), "params": 0}
    torch.manual_seed(job["seed"])
    kw = {"time_scale": job["time_scale"]} if job["model"] in SDE else {}
    if job["model"] == "gsde":
        kw["drift_form"] = job.get("gsde_form", "paper")
    # job.get: runs logged before an option existed count as its default
    model = Forecaster(job["model"], data.channels, hidden_dim=job["hidden"], width=job["width"], **kw)
    cfg = ForecastConfig(epochs=job["epochs"], batch_size=job["batch_size"], lr=job["lr"],
                         patience=job["patience"], seed=job["seed"], val_samples=job["val_samples"],
                         progress=job["progress"], on_nonfinite="stop", loss=job.get("loss", "mse"),
                         select=job.get("select", "mse"))
    t0, c0 = time.perf_counter(), time.process_time()
    res = fit_forecaster(model, s.train, s.val, cfg, desc=f"{job['dataset']} {job['rate']} {job['model']}")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = evaluate_forecaster(model, s.test, samples=job["samples"])
    return {**job, **base, **{f"test_{k}": v for k, v in m.items()}, "train_time": res.train_time,
            "fit_wall": wall, "fit_cpu": cpu, "epochs_run": len(res.history), "best_epoch": res.best_epoch,
            "best_val_mse": res.best_val_mse, "best_val_crps": res.best_val_crps,
            "params": count_parameters(model), "diverged": res.diverged,
            "message": res.message}


def _key(r: dict) -> tuple:
    return (r["dataset"], float(r["rate"]), r["model"], int(r["seed"]))


def summarise(runs: list[dict], datasets: list[str], rates: list[float], models: list[str]) -> dict:
    """``summary[dataset][rate][model] = {metric: {mean, std}, train_cpu, n}``."""
    out: dict = {}
    for ds in datasets:
        out[ds] = {}
        for r in rates:
            row = {}
            for m in models:
                mine = [x for x in runs if x["dataset"] == ds and x["model"] == m and x["rate"] == r]
                if not mine:
                    continue
                row[m] = {k: {"mean": float(np.mean([x[f"test_{k}"] for x in mine])),
                              "std": float(np.std([x[f"test_{k}"] for x in mine]))} for k in METRICS}
                row[m]["train_cpu"] = float(np.mean([x["fit_cpu"] for x in mine]))
                row[m]["epochs"] = float(np.mean([x["epochs_run"] for x in mine]))
                row[m]["n"] = len(mine)
                row[m]["diverged"] = sum(bool(x.get("diverged")) for x in mine)
            out[ds][str(r)] = row
    return out


def verdicts(summary: dict) -> list[str]:
    """Per (dataset, rate): the best mean MSE and CRPS, and whether the lead exceeds the seed spread."""
    lines = []
    for ds, by_rate in summary.items():
        for r, row in by_rate.items():
            if not row:
                continue
            for k in ("mse", "crps"):
                order = sorted(row, key=lambda m: row[m][k]["mean"])
                best = order[0]
                b = row[best][k]
                text = (f"{ds}, {float(r):.0%} missing: best {k.upper()} {LABELS.get(best, best)} "
                        f"{b['mean']:.3f}")
                if len(order) > 1:
                    nxt = order[1]
                    gap = row[nxt][k]["mean"] - b["mean"]
                    spread = max(b["std"], row[nxt][k]["std"])
                    if min(row[best]["n"], row[nxt]["n"]) < 2:
                        clear = "one seed: no spread to judge by"
                    else:
                        clear = "lead > one std over seeds" if gap > spread else "within one std over seeds"
                    text += f"; next {LABELS.get(nxt, nxt)} {row[nxt][k]['mean']:.3f} ({clear})"
                lv = row.get("last_value", {}).get(k, {}).get("mean")
                if lv is not None and best != "last_value":
                    text += f"; {lv / b['mean']:.2f}x better than the last value"
                lines.append(text)
    return lines


def table_markdown(ds: str, by_rate: dict, n_seeds: int, horizon: int, length: int | None) -> str:
    head = f"**{ds}**" + (f" (L = {length}, H = {horizon})" if length else f" (H = {horizon})")
    lines = [head, "", "| missing | model | MSE | MAE | CRPS | 90% coverage | train CPU s | epochs |",
             "|---|---|---|---|---|---|---|---|"]
    for r, row in by_rate.items():
        best = min(row, key=lambda m: row[m]["mse"]["mean"]) if row else None
        for m, c in row.items():
            note = "" if c["n"] == n_seeds else f" (n={c['n']})"
            note += f" ({c['diverged']} diverged)" if c.get("diverged") else ""
            mse = f"{c['mse']['mean']:.3f} ± {c['mse']['std']:.3f}"
            mse = f"**{mse}**" if m == best else mse
            tr = f"{c['train_cpu']:.1f}" if m not in BASELINES else "-"
            ep = f"{c['epochs']:.0f}" if m not in BASELINES else "-"
            lines.append(f"| {float(r):.0%} | {LABELS.get(m, m)}{note} | {mse} | {c['mae']['mean']:.3f} | "
                         f"{c['crps']['mean']:.3f} | {c['coverage']['mean']:.2f} | {tr} | {ep} |")
    return "\n".join(lines)


def plot(summary: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for ds, by_rate in summary.items():
        rates = [r for r in by_rate if by_rate[r]]
        if not rates:
            continue
        models = [m for m in LABELS if any(m in by_rate[r] for r in rates)]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        w = 0.8 / max(1, len(rates))
        for ax, k in zip(axes, ("mse", "crps")):
            for j, r in enumerate(rates):
                mu = [by_rate[r].get(m, {}).get(k, {}).get("mean", np.nan) for m in models]
                sd = [by_rate[r].get(m, {}).get(k, {}).get("std", 0.0) for m in models]
                ax.bar(np.arange(len(models)) + (j - (len(rates) - 1) / 2) * w, mu, w, yerr=sd, capsize=2,
                       label=f"{float(r):.0%} missing")
            ax.set_xticks(np.arange(len(models)))
            ax.set_xticklabels([LABELS[m].replace(" (baseline)", "*") for m in models], rotation=30,
                               ha="right", fontsize=8)
            ax.set_yscale("log")      # baselines 3-10x worse: a linear axis hides the models' differences
            ax.set_ylabel(f"test {k.upper()} (standardised, log scale)")
            ax.grid(alpha=0.3, axis="y")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{ds}: forecast of the last {HORIZONS.get(ds, '?')} points (* = baseline)")
        fig.tight_layout()
        f = out / f"forecast_{ds}.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    return files


def code_version() -> dict:
    """Commit and content hashes of the modules the numbers depend on (others edit them concurrently)."""
    info = {}
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                        capture_output=True, text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "nde"], cwd=ROOT, capture_output=True,
                               text=True, check=False).stdout.split("\n")
        info["nde_modified"] = sorted(line[3:] for line in dirty if line.strip())
    except OSError:
        pass
    for f in ("nde/stable_sde.py", "nde/forecasting.py", "nde/paths.py"):
        info[f] = hashlib.sha1((ROOT / f).read_bytes()).hexdigest()[:12]
    return info


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="ItalyPowerDemand, 0%% and 50%%, LSDE/GSDE/GRU-dt, 1 seed")
    ap.add_argument("--datasets", nargs="+")
    ap.add_argument("--rates", nargs="+", type=float)
    ap.add_argument("--models", nargs="+", help=f"any of {FULL['models']} (baselines are always added)")
    ap.add_argument("--seeds", nargs="+", type=int)
    ap.add_argument("--horizon", type=int, default=None, help="H for every dataset (default: per dataset)")
    ap.add_argument("--epochs", type=int, default=None, help="max epochs (default 30, --quick 10)")
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--time-scale", default="1", help="SDE encoders' time_scale: a number or 'interval'")
    ap.add_argument("--val-samples", type=int, default=4)
    ap.add_argument("--gsde-form", choices=["paper", "reference"], default="paper",
                    help="GSDE drift: the paper's gamma z (nde's default) or the authors' tanh(m tanh z)")
    ap.add_argument("--loss", choices=["mse", "crps"], default="mse",
                    help="training loss (use another --out for crps: runs are keyed without it)")
    ap.add_argument("--select", choices=["mse", "crps"], default=None,
                    help="validation score of early stopping (default: the loss's metric)")
    ap.add_argument("--samples", type=int, default=16, help="test sample paths")
    ap.add_argument("--workers", type=int, default=1, help="processes (one thread each)")
    ap.add_argument("--progress", action="store_true", help="tqdm bar per run (with --workers 1)")
    ap.add_argument("--out", default="out/benchmarks/stable_sde_forecast")
    ap.add_argument("--summary-only", action="store_true", help="train nothing: tabulate the runs in --out")
    a = ap.parse_args(argv)
    base = QUICK if a.quick else FULL
    datasets = a.datasets or base["datasets"]
    rates = a.rates or base["rates"]
    models = list(a.models or base["models"]) + [b for b in BASELINES if b not in (a.models or [])]
    seeds = a.seeds if a.seeds is not None else base["seeds"]
    epochs = a.epochs or (10 if a.quick else 30)
    time_scale = a.time_scale if a.time_scale == "interval" else float(a.time_scale)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    done = load_runs(log, _key)
    common = {"epochs": epochs, "patience": a.patience, "lr": a.lr, "batch_size": a.batch_size,
              "hidden": a.hidden, "width": a.width, "time_scale": time_scale, "val_samples": a.val_samples,
              "samples": a.samples, "loss": a.loss, "select": a.select or a.loss,
              "progress": a.progress and a.workers == 1}
    horizons = {ds: a.horizon or HORIZONS.get(ds) for ds in datasets}
    if any(h is None for h in horizons.values()):
        ap.error(f"no default horizon for {[d for d, h in horizons.items() if h is None]}: pass --horizon")
    jobs = []
    for ds in datasets:
        for r in rates:
            for s in seeds:
                for m in models:
                    job = {"dataset": ds, "rate": float(r), "model": m, "seed": s, "horizon": horizons[ds],
                           **common, **({"gsde_form": a.gsde_form} if m == "gsde" else {})}
                    prev = done.get(_key(job))
                    if prev is None or any(prev.get(k, LOGGED_DEFAULTS.get(k)) != v
                                           for k, v in job.items() if k != "progress"):
                        jobs.append(job)
    if a.summary_only:
        print(f"summary only: {len(jobs)} runs of this grid (missing, or logged with other settings) not run")
        jobs = []
    print(f"{len(jobs)} runs to do ({len(done)} already in {log}); epochs <= {epochs}, "
          f"patience {a.patience}, lr {a.lr}, hidden {a.hidden}, width {a.width}, time_scale {time_scale}, "
          f"workers {a.workers}",
          flush=True)
    t_all = time.perf_counter()
    version = code_version()       # at the start: the code the runs of this call import (logged per run)

    def record(r: dict) -> None:
        r["code"] = version
        append_run(log, done, _key, r)
        print(f"  {r['dataset']:>16} {r['rate']:.0%} {LABELS[r['model']]:>22} seed {r['seed']}: MSE "
              f"{r['test_mse']:.3f} MAE {r['test_mae']:.3f} CRPS {r['test_crps']:.3f} cov "
              f"{r['test_coverage']:.2f} ({r['epochs_run']} epochs, {r['fit_cpu']:.1f} CPU s)"
              + (f" DIVERGED: {r['message']}" if r.get("diverged") else ""), flush=True)

    run_jobs(run_one, jobs, a.workers, record)
    runs = [done[k] for k in done if k[0] in datasets and k[1] in rates and k[2] in models and k[3] in seeds]
    summary = summarise(runs, datasets, rates, models)
    wall = time.perf_counter() - t_all
    print(f"\nwall time of this call: {wall:.0f} s")
    lengths = {ds: next((x["L"] for x in runs if x["dataset"] == ds), None) for ds in datasets}
    cpu_total = sum(x["fit_cpu"] for x in runs)
    md = [f"settings: epochs <= {epochs}, patience {a.patience}, lr {a.lr}, batch {a.batch_size}, hidden "
          f"{a.hidden}, width {a.width}, SDE time_scale {time_scale}, GSDE drift {a.gsde_form}, loss "
          f"{a.loss}, {a.samples} test samples, seeds {seeds}; "
          f"test metrics in standardised units, mean ± std over seeds (MSE) and means (others); "
          f"total training CPU {cpu_total:.0f} s", ""]
    for ds in datasets:
        md += [table_markdown(ds, summary[ds], len(seeds), horizons[ds], lengths[ds]), ""]
    v = verdicts(summary)
    md += ["best per (dataset, rate):", *[f"- {line}" for line in v]]
    text = "\n".join(md)
    print(text)
    (out / "table.md").write_text(text + "\n")
    (out / "stable_sde_forecast.json").write_text(json.dumps(
        {"summary": summary, "verdicts": v, "runs": runs, "horizons": horizons,
         "settings": {**common, "seeds": seeds}, "code_of_this_call": version, "wall_s_this_call": wall},
        indent=1))
    files = plot(summary, out)
    print(f"saved {out / 'stable_sde_forecast.json'}, {out / 'table.md'}, " + ", ".join(map(str, files)))
    return summary


if __name__ == "__main__":
    main()
