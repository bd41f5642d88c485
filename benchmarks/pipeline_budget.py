"""Time a parameter set end to end from scratch, then a re-run with nothing changed.

    .venv/bin/python benchmarks/pipeline_budget.py params/smoke.yaml
    .venv/bin/python benchmarks/pipeline_budget.py params/default.yaml   # ~20 minutes

Writes benchmarks/results/<set>.json: wall seconds of the cold run and of the re-run, the
seconds each stage recorded, and the machine. Budgets (issue 2): smoke <= 180 s, default
stages 00+01 <= 1200 s, re-run: seconds.
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

REPO = Path(__file__).resolve().parent.parent


def timed_run(params: str, env: dict) -> float:
    t0 = time.time()
    subprocess.run([str(REPO / "run_all.sh"), params], env=env, check=True, stdout=subprocess.DEVNULL)
    return round(time.time() - t0, 1)


def main(params: str) -> dict:
    runs = Path(tempfile.mkdtemp(prefix="ptmrec-bench-"))
    env = {**os.environ, "PTMREC_RUNS": str(runs)}
    cold = timed_run(params, env)
    rerun = timed_run(params, env)
    name = Path(params).stem
    stages = {p.parent.name: json.loads(p.read_text())["seconds"] for p in sorted((runs / name).glob("*/_stage.json"))}
    result = dict(params=params, cold_seconds=cold, rerun_seconds=rerun, stage_seconds=stages,
                  runs=str(runs), machine=f"{platform.node()} {platform.processor() or platform.machine()}, "
                                             f"{os.cpu_count()} cores", date=time.strftime("%Y-%m-%d %H:%M"))
    out = REPO / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else "params/smoke.yaml"), indent=2))
