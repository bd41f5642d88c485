"""Time a parameter set end to end from scratch, then a re-run with nothing changed; or read a finished run.

    .venv/bin/python benchmarks/pipeline_budget.py params/smoke.yaml
    .venv/bin/python benchmarks/pipeline_budget.py params/default.yaml      # cold, then a re-run
    .venv/bin/python benchmarks/pipeline_budget.py --run runs/default [--note TEXT]   # a finished run's figures

Writes benchmarks/results/<set>.json: wall seconds of the cold run and of the re-run (not with ``--run``),
the seconds each stage recorded, the world's size, and the feature store's throughput: images per
second of forward pass per model family (each model ran once on every image of its store, stage 01).
Budgets (issue 13): the default world cold <= 3600 s on a 2-core machine, a re-run seconds, smoke <= 180 s.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ptmrec.features import run_store

REPO = Path(__file__).resolve().parent.parent


def timed_run(params: str, env: dict) -> float:
    t0 = time.time()
    subprocess.run([str(REPO / "run_all.sh"), params], env=env, check=True, stdout=subprocess.DEVNULL)
    return round(time.time() - t0, 1)


def store_throughput(run: Path) -> dict:
    """Per model family: models, images each model ran on, forward seconds, images per second."""
    zoo = pd.read_csv(run / "00_zoo_and_tasks" / "zoo" / "index.csv").set_index("model_id")
    rows = []
    for f in sorted(run_store(run).glob("*.npz")):
        with np.load(f) as z:
            keys = [k[:-4] for k in z.files if k.endswith("|idx")]
            rows.append(dict(family=zoo.family.get(f.stem, "?"), images=sum(len(z[f"{k}|idx"]) for k in keys),
                             seconds=sum(float(z[f"{k}|seconds"]) for k in keys), mb=f.stat().st_size / 2**20))
    if not rows:
        return {}
    t = pd.DataFrame(rows).groupby("family").agg(models=("images", "size"), images_per_model=("images", "median"),
                                                 seconds=("seconds", "sum"), images=("images", "sum"), mb=("mb", "sum"))
    t["images_per_second"] = t.images / t.seconds
    return t.round(2).to_dict(orient="index")


def summary(run: Path) -> dict:
    """Stage seconds, world size and feature-store throughput of a finished (or partly finished) run."""
    marks = {p.parent.name: json.loads(p.read_text()) for p in sorted(run.glob("*/_stage.json"))}
    # wall_seconds: the driver's clock, shard processes included; seconds: the notebook's own
    stages = {name: m.get("wall_seconds", m["seconds"]) for name, m in marks.items()}
    world = json.loads((run / "00_zoo_and_tasks" / "metrics.json").read_text())
    return dict(stage_seconds=stages, jobs={name: m.get("jobs", 1) for name, m in marks.items()}, stages_total_seconds=round(sum(stages.values()), 1),
                world={k: world.get(k) for k in ("n_models", "n_tasks", "n_datasets", "n_sources", "n_families")},
                feature_store=store_throughput(run),
                machine=f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                date=time.strftime("%Y-%m-%d %H:%M"))


def main(params: str | None, run: Path | None = None, note: str = "") -> dict:
    if run is not None:  # how the run was made (shards beside the notebooks, overrides) goes in the note
        result = dict(run=str(run), note=note, **summary(run))
        name = run.name
    else:
        runs = Path(tempfile.mkdtemp(prefix="ptmrec-bench-"))
        env = {**os.environ, "PTMREC_RUNS": str(runs)}
        cold = timed_run(params, env)
        rerun = timed_run(params, env)
        name = Path(params).stem
        result = dict(params=params, cold_seconds=cold, rerun_seconds=rerun, runs=str(runs), **summary(runs / name))
    out = REPO / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--run"] and len(args) in (2, 4) and args[2:3] in ([], ["--note"]):
        print(json.dumps(main(None, Path(args[1]), " ".join(args[3:])), indent=2))
    else:
        print(json.dumps(main(args[0] if args else "params/smoke.yaml"), indent=2))
