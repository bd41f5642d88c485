"""Images per second of dataset-token extraction against the bare forward pass of its encoder (issue 4).

    .venv/bin/python benchmarks/dataset_tokens.py                                  # the default world's tasks
    .venv/bin/python benchmarks/dataset_tokens.py params/smoke.yaml --threads 1 2
    .venv/bin/python benchmarks/dataset_tokens.py --tasks runs/default/00_zoo_and_tasks/tasks

Needs the tasks of stage 00 (``<runs>/<set>/00_zoo_and_tasks/tasks`` unless ``--tasks`` names a folder);
builds or reuses the set's encoder in the runs cache. For each thread count, ``tokens.token_speed``:
the whole extraction (domain, sampling, preprocessing, forward, normalisation, writing shards) and the
encoder's forward pass alone over the same preprocessed batches, interleaved ``--repeats`` times, medians.
Target: extraction / forward >= 0.8. The machine's load average is recorded beside: the figures are only
comparable on an otherwise idle machine.

Writes benchmarks/results/dataset_tokens.json (default set) or dataset_tokens-<set>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("params", nargs="?", default="params/default.yaml")
    ap.add_argument("--tasks", help="a stage-00 tasks folder (default: the set's own run)")
    ap.add_argument("--threads", type=int, nargs="*", default=[], help="torch thread counts to measure (default: torch's)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", help="result file (default benchmarks/results/dataset_tokens[-<set>].json)")
    args = ap.parse_args(argv)

    import torch

    from ptmrec import encoders, params, tokens
    from ptmrec.data import load_tasks
    from ptmrec.paths import run_dir

    P = params.load(args.params)
    tasks_dir = Path(args.tasks) if args.tasks else run_dir(P.name) / "00_zoo_and_tasks" / "tasks"
    pools, tasks = load_tasks(tasks_dir)
    t0 = time.time()
    encoder = encoders.encoder_for(P)
    ready = round(time.time() - t0, 1)
    runs = []
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        load = os.getloadavg()
        speed = tokens.token_speed(pools, tasks, encoder, P.tokens, P.run.seed, repeats=args.repeats)
        runs.append({**speed, "loadavg_before": [round(x, 2) for x in load],
                     "loadavg_after": [round(x, 2) for x in os.getloadavg()]})
        print(f"{threads} thread(s): extraction {speed['extraction_images_per_s']} img/s, forward "
              f"{speed['forward_images_per_s']} img/s, ratio {speed['ratio']}", flush=True)
    report = encoder.info.get("report", {})
    result = dict(params=args.params, tasks=str(tasks_dir), n_tasks=len(tasks), tokens=vars(P.tokens),
                  encoder=repr(encoder), encoder_ready_seconds=ready, encoder_build_seconds=report.get("seconds", {}),
                  runs=runs, torch=torch.__version__, machine=f"{platform.node()} "
                  f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                  date=time.strftime("%Y-%m-%d %H:%M"))
    name = Path(args.params).stem
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / (
        "dataset_tokens.json" if name == "default" else f"dataset_tokens-{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
