"""The resumable run log and process pool shared by the grid benchmarks (``stable_sde*.py``).

Every finished run is one JSON line in ``runs.jsonl``; a rerun reads it back and skips what is done,
so a grid can be split over sessions or machines, and a call stopped at a time limit keeps every run
that finished before it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path


def load_runs(log: Path, key: Callable[[dict], Hashable]) -> dict:
    """The runs logged in ``log`` by ``key`` (a later line replaces an earlier one with the same key)."""
    done: dict = {}
    if log.exists():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            done[key(r)] = r
    return done


def append_run(log: Path, done: dict, key: Callable[[dict], Hashable], r: dict) -> None:
    """Add ``r`` to ``done`` and append it to ``log``."""
    done[key(r)] = r
    with log.open("a") as fh:
        fh.write(json.dumps(r) + "\n")


def run_jobs(run_one: Callable[[dict], dict], jobs: list[dict], workers: int,
             record: Callable[[dict], None]) -> None:
    """``record(run_one(job))`` for every job: in this process, or in ``workers`` spawned processes
    with one thread each, recorded as they finish (not in submission order)."""
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
            for fut in as_completed([ex.submit(run_one, j) for j in jobs]):
                record(fut.result())
    else:
        for job in jobs:
            record(run_one(job))
