"""Stable neural SDEs vs baselines on UCR/UEA classification under missing data (Oh, Lim, Kim, ICLR 2024).

Grid: datasets x missing rates x models x seeds. Each run: the paper's protocol (``nde.datasets.prepare``:
per sample and channel ``int(L * rate)`` points dropped, stratified 70/15/15 split, train-set
standardisation, all with the run's seed), the model initialised with ``torch.manual_seed(seed)``,
trained by ``nde.training.fit`` (Adam, minibatches, early stopping on validation accuracy) and
evaluated on the test split with the best-validation parameters. Printed and saved per dataset: test
accuracy mean +- std per model and rate, the drop from the lowest to the highest rate, training time
(seconds and as a ratio to the naive Neural SDE of the same dataset, measured in the same run), and
the issue's goals checked on the numbers.

Every finished run is appended to ``runs.jsonl`` in ``--out``; a rerun with the same ``--out`` skips the
runs already there, so the full grid can be split over several sessions.

Examples::

    python benchmarks/stable_sde.py --quick        # GunPoint, 0% / 50%, GSDE / Neural SDE / GRU-dt, 1 seed
    python benchmarks/stable_sde.py --workers 2                 # the full grid (budget: about 2 h on 2 cores)
    python benchmarks/stable_sde.py --datasets GunPoint --rates 0 0.7 --models gsde neural_sde --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_log import append_run, load_runs, run_jobs  # noqa: E402

FULL = {
    "datasets": ["ArrowHead", "GunPoint", "BasicMotions", "ItalyPowerDemand"],
    "rates": [0.0, 0.3, 0.5, 0.7],
    "models": ["lsde", "lnsde", "gsde", "neural_sde", "neural_cde", "gru_dt"],
    "seeds": [0, 1, 2, 3, 4],
}
QUICK = {
    "datasets": ["GunPoint"],
    "rates": [0.0, 0.5],
    "models": ["gsde", "neural_sde", "gru_dt"],
    "seeds": [0],
}
LABELS = {
    "lsde": "LSDE",
    "lnsde": "LNSDE",
    "gsde": "GSDE",
    "neural_sde": "Neural SDE",
    "neural_cde": "Neural CDE",
    "gru_dt": "GRU-dt",
}
STABLE = ("lsde", "lnsde", "gsde")
# runs logged before a setting existed were made with these values (GSDE had the paper drift then)
LOGGED_DEFAULTS = {"intensity": False, "gsde_form": "paper"}


def run_one(job: dict) -> dict:
    """Train and test one (dataset, rate, model, seed) configuration in this process."""
    import torch

    torch.set_num_threads(1)
    from nde.datasets import load_ucr, prepare
    from nde.stable_sde import build_model, count_parameters
    from nde.training import TrainConfig, evaluate, fit

    data = load_ucr(job["dataset"])
    splits = prepare(data, job["rate"], seed=job["seed"])
    torch.manual_seed(job["seed"])
    model = build_model(
        job["model"], data.channels, data.num_classes, hidden_dim=job["hidden"], width=job["width"],
        intensity=job.get("intensity", False),
        **({"drift_form": job.get("gsde_form", "paper")} if job["model"] == "gsde" else {}),
    )
    cfg = TrainConfig(
        epochs=job["epochs"],
        batch_size=job["batch_size"],
        lr=job["lr"],
        patience=job["patience"],
        seed=job["seed"],
        progress=job["progress"],
    )
    t0 = time.perf_counter()
    c0 = time.process_time()
    res = fit(model, splits.train, splits.val, cfg, desc=f"{job['dataset']} {job['rate']} {job['model']}")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    test_loss, test_acc = evaluate(model, splits.test)
    return {
        **job,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "best_val_acc": res.best_val_acc,
        "best_epoch": res.best_epoch,
        "epochs_run": len(res.history),
        "train_time": res.train_time,
        "fit_wall": wall,
        "fit_cpu": cpu,
        "params": count_parameters(model),
        "n_train": len(splits.train.y),
        "n_test": len(splits.test.y),
    }


def _key(r: dict) -> tuple:
    return (r["dataset"], float(r["rate"]), r["model"], int(r["seed"]))


def _times(runs: list[dict]) -> dict:
    """Mean training seconds of ``runs``: wall, and CPU (steadier on a shared machine) total and per epoch."""
    return {"train_time": float(np.mean([x["train_time"] for x in runs])),
            "fit_cpu": float(np.mean([x["fit_cpu"] for x in runs])),
            "cpu_per_epoch": float(np.mean([x["fit_cpu"] / x["epochs_run"] for x in runs]))}


def summarise(runs: list[dict], datasets: list[str], rates: list[float], models: list[str]) -> dict:
    out: dict = {}
    for ds in datasets:
        table: dict = {}
        for m in models:
            row: dict = {}
            for r in rates:
                accs = [
                    x["test_acc"] for x in runs if x["dataset"] == ds and x["model"] == m and x["rate"] == r
                ]
                if accs:
                    row[str(r)] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "n": len(accs)}
            mine = [x for x in runs if x["dataset"] == ds and x["model"] == m]
            if row:
                table[m] = {"acc": row, **_times(mine)}
        out[ds] = table
    if len(datasets) > 1:
        out[AVERAGE] = _average_over_datasets(runs, datasets, rates, models)
    return out


AVERAGE = "mean of datasets"


def _average_over_datasets(runs: list[dict], datasets: list[str], rates: list[float],
                           models: list[str]) -> dict:
    """The paper's summary (its Table 2 averages over datasets): per seed, the mean test accuracy over
    the datasets; then mean +- std over the seeds that every dataset has."""
    table: dict = {}
    for m in models:
        row: dict = {}
        for r in rates:
            per = {ds: {x["seed"]: x["test_acc"] for x in runs
                        if x["dataset"] == ds and x["model"] == m and x["rate"] == r} for ds in datasets}
            seeds = set.intersection(*(set(v) for v in per.values()))
            if seeds:
                accs = [float(np.mean([per[ds][s] for ds in datasets])) for s in sorted(seeds)]
                row[str(r)] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "n": len(accs)}
        mine = [x for x in runs if x["dataset"] in datasets and x["model"] == m]
        if row:
            table[m] = {"acc": row, **_times(mine)}
    return table


def goals(summary: dict, rates: list[float]) -> list[str]:
    """The issue's three goals, checked on the measured means (per dataset)."""
    lines = []
    lo, hi = str(min(rates)), str(max(rates))
    for ds, table in summary.items():
        if "neural_sde" not in table:
            continue
        naive = table["neural_sde"]["acc"]
        for m in STABLE:
            if m not in table:
                continue
            acc = table[m]["acc"]
            beats = [r for r in acc if r in naive and acc[r]["mean"] > naive[r]["mean"]]
            lines.append(
                f"{ds}: {LABELS[m]} beats Neural SDE at {len(beats)}/{len(acc)} rates "
                f"({', '.join(f'{float(r):.0%}' for r in beats) or 'none'})"
            )
            if lo in acc and hi in acc and lo in naive and hi in naive and lo != hi:
                d_m = acc[lo]["mean"] - acc[hi]["mean"]
                d_n = naive[lo]["mean"] - naive[hi]["mean"]
                lines.append(
                    f"{ds}: drop {float(lo):.0%}->{float(hi):.0%}: {LABELS[m]} {d_m * 100:+.1f} pp vs "
                    f"Neural SDE {d_n * 100:+.1f} pp ({'less' if d_m < d_n else 'not less'})"
                )
        if "neural_cde" in table:
            cde = table["neural_cde"]["acc"]
            for r in ("0.5", "0.7"):
                best = max(
                    (table[m]["acc"][r]["mean"] for m in STABLE if m in table and r in table[m]["acc"]),
                    default=None,
                )
                if best is not None and r in cde:
                    ok = "matches/beats" if best >= cde[r]["mean"] else "below"
                    lines.append(
                        f"{ds}: best stable class at {float(r):.0%}: {best:.3f} vs Neural CDE "
                        f"{cde[r]['mean']:.3f} ({ok})"
                    )
    return lines


def table_markdown(ds: str, table: dict, rates: list[float], n_seeds: int) -> str:
    rs = [str(r) for r in rates]
    head = (
        "| model | "
        + " | ".join(f"{float(r):.0%} missing" for r in rs)
        + " | drop | train CPU s | CPU s / epoch | per epoch vs Neural SDE |"
    )
    lines = [f"**{ds}**", "", head, "|" + "---|" * (len(rs) + 5)]
    base = table.get("neural_sde", {}).get("cpu_per_epoch")
    for m, row in table.items():
        cells = []
        for r in rs:
            c = row["acc"].get(r)
            note = "" if not c or c["n"] == n_seeds else f" (n={c['n']})"
            cells.append(f"{c['mean'] * 100:.1f} ± {c['std'] * 100:.1f}{note}" if c else "-")
        a = row["acc"]
        drop = (
            f"{(a[rs[0]]['mean'] - a[rs[-1]]['mean']) * 100:+.1f} pp"
            if rs[0] in a and rs[-1] in a and len(rs) > 1
            else "-"
        )
        ratio = f"{row['cpu_per_epoch'] / base:.2f}x" if base else "-"
        lines.append(
            f"| {LABELS.get(m, m)} | "
            + " | ".join(cells)
            + f" | {drop} | {row['fit_cpu']:.1f} | {row['cpu_per_epoch']:.2f} | {ratio} |"
        )
    return "\n".join(lines)


def plot(summary: dict, rates: list[float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(summary)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.6), squeeze=False)
    for ax, (ds, table) in zip(axes[0], summary.items()):
        for m, row in table.items():
            rs = [r for r in rates if str(r) in row["acc"]]
            mu = [row["acc"][str(r)]["mean"] for r in rs]
            sd = [row["acc"][str(r)]["std"] for r in rs]
            ax.errorbar(
                [100 * r for r in rs],
                mu,
                yerr=sd,
                marker="o",
                capsize=3,
                label=LABELS.get(m, m),
                ls="-" if m in STABLE else "--",
            )
        ax.set_title(ds)
        ax.set_xlabel("missing rate (%)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "stable_sde.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="GunPoint, 0%% and 50%%, GSDE / Neural SDE / GRU-dt, 1 seed"
    )
    ap.add_argument("--datasets", nargs="+")
    ap.add_argument("--rates", nargs="+", type=float)
    ap.add_argument("--models", nargs="+")
    ap.add_argument("--seeds", nargs="+", type=int)
    ap.add_argument("--epochs", type=int, default=None, help="max epochs (default 30, --quick 10)")
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--intensity", action="store_true",
                    help="append the observation intensity (cumulative counts) to every model's input")
    ap.add_argument("--gsde-form", choices=["reference", "paper"], default="paper",
                    help="GSDE drift: the paper's tanh(m) z (default) or the authors' tanh(m tanh z)")
    ap.add_argument("--workers", type=int, default=1, help="processes (one thread each)")
    ap.add_argument("--progress", action="store_true", help="tqdm bar per run (with --workers 1)")
    ap.add_argument("--out", default="out/benchmarks/stable_sde")
    ap.add_argument("--summary-only", action="store_true", help="train nothing: tabulate the runs in --out")
    a = ap.parse_args(argv)
    base = QUICK if a.quick else FULL
    datasets = a.datasets or base["datasets"]
    rates = a.rates or base["rates"]
    models = a.models or base["models"]
    seeds = a.seeds if a.seeds is not None else base["seeds"]
    epochs = a.epochs or (10 if a.quick else 30)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    done = load_runs(log, _key)
    common = {
        "epochs": epochs,
        "patience": a.patience,
        "lr": a.lr,
        "batch_size": a.batch_size,
        "hidden": a.hidden,
        "width": a.width,
        "intensity": a.intensity,
        "gsde_form": a.gsde_form,
        "progress": a.progress and a.workers == 1,
    }
    jobs = []
    for ds in datasets:
        for r in rates:
            for m in models:
                for s in seeds:
                    job = {"dataset": ds, "rate": float(r), "model": m, "seed": s, **common}
                    prev = done.get(_key(job))
                    # runs logged before a setting existed count as its default
                    # (the GSDE drift form matters to GSDE runs only)
                    if prev is None or any(prev.get(k, LOGGED_DEFAULTS.get(k)) != v
                                           for k, v in common.items()
                                           if k != "progress" and (k != "gsde_form" or m == "gsde")):
                        jobs.append(job)
    if a.summary_only:
        jobs = []
    print(
        f"{len(jobs)} runs to do ({len(done)} already in {log}); epochs <= {epochs}, patience {a.patience}, "
        f"lr {a.lr}, hidden {a.hidden}, width {a.width}, workers {a.workers}",
        flush=True,
    )
    t_all = time.perf_counter()

    def record(r: dict) -> None:
        append_run(log, done, _key, r)
        print(
            f"  {r['dataset']:>16} {r['rate']:.0%} {LABELS[r['model']]:>10} seed {r['seed']}: test acc "
            f"{r['test_acc']:.3f} (val {r['best_val_acc']:.3f} @ epoch {r['best_epoch']}, "
            f"{r['epochs_run']} epochs, {r['train_time']:.1f} s)",
            flush=True,
        )

    run_jobs(run_one, jobs, a.workers, record)
    runs = [done[k] for k in done if k[0] in datasets and k[1] in rates and k[2] in models and k[3] in seeds]
    summary = summarise(runs, datasets, rates, models)
    print(f"\nwall time of this call: {time.perf_counter() - t_all:.0f} s")
    md = [
        f"settings: epochs <= {epochs}, patience {a.patience}, lr {a.lr}, batch {a.batch_size}, hidden "
        f"{a.hidden}, width {a.width}, seeds {seeds}; test accuracy in % (mean ± std over seeds)",
        "",
    ]
    for ds in summary:
        md += [table_markdown(ds, summary[ds], rates, len(seeds)), ""]
    g = goals(summary, rates)
    md += ["goals:", *[f"- {line}" for line in g]]
    text = "\n".join(md)
    print(text)
    (out / "table.md").write_text(text + "\n")
    (out / "stable_sde.json").write_text(
        json.dumps(
            {"summary": summary, "goals": g, "runs": runs, "settings": {**common, "seeds": seeds}}, indent=1
        )
    )
    plot(summary, rates, out)
    print(f"saved {out / 'stable_sde.json'}, {out / 'table.md'}, {out / 'stable_sde.png'}")
    return summary


if __name__ == "__main__":
    main()
