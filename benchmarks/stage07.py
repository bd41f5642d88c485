"""Where a finished run's stage 07 spent its time, from what the stage recorded (nothing is re-run).

    .venv/bin/python benchmarks/stage07.py --run runs/default --label after [--note TEXT]

Reads ``07_evaluate/_stage.json`` (the stage's seconds), ``training.csv`` (every trained ranker: its
seconds and the inner choice's), ``autoencoders/m*/history.json`` (the leave-models-out refits: epochs and
seconds) and the executed notebook's cell times (papermill), and stores them under ``--label`` in
benchmarks/results/stage07.json beside the entries already there (so two commits measured on the same
day sit side by side). Budget (issue 14): stage 07 of the default world at most 900 s on a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent


def cell_seconds(notebook: Path) -> list[dict]:
    """Wall seconds of every code cell of an executed notebook (papermill's start and end times)."""
    cells = json.loads(notebook.read_text())["cells"]
    out = []
    for c in cells:
        meta = c.get("metadata", {}).get("papermill", {})
        if c["cell_type"] == "code" and meta.get("start_time") and meta.get("end_time"):
            start, end = (datetime.fromisoformat(meta[k].rstrip("Z")) for k in ("start_time", "end_time"))
            out.append(dict(first_line="".join(c["source"]).split("\n")[0][:80], seconds=round((end - start).total_seconds(), 1)))
    return out


def stage07_figures(run: Path) -> dict:
    """The stage's seconds and their parts, from the files stage 07 wrote into ``run``."""
    stage = run / "07_evaluate"
    marker = json.loads((stage / "_stage.json").read_text())
    log = pd.read_csv(stage / "training.csv")
    by_method = log.groupby(["method", "kind"]).agg(trainings=("seconds", "size"), epochs=("epochs", "sum"),
                                                    seconds=("seconds", "sum"), choice_seconds=("choice_seconds", "sum"))
    refits = {}
    for h in sorted(stage.glob("autoencoders/m*/history.json")):
        epochs = json.loads(h.read_text())["epochs"]
        refits[h.parent.name] = dict(epochs=len(epochs), seconds=round(sum(e["seconds"] for e in epochs), 1))
    cells = cell_seconds(run / "notebooks" / "07_evaluate.ipynb")
    return dict(run=str(run), finished=marker.get("finished"), jobs=marker.get("jobs"),
                stage_seconds=marker["seconds"], wall_seconds=marker.get("wall_seconds"),
                ranker_training_seconds=round(float(log.seconds.sum()), 1),
                inner_choice_seconds=round(float(log.choice_seconds.sum()), 1),
                autoencoder_refits=refits,
                autoencoder_refit_seconds=round(sum(r["seconds"] for r in refits.values()), 1),
                longest_cell=max(cells, key=lambda c: c["seconds"]) if cells else None,
                by_method=[dict(method=m, kind=k, **{c: round(float(v), 1) if c.endswith("seconds") else int(v)
                                                     for c, v in row.items()})
                           for (m, k), row in by_method.iterrows()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished run folder, e.g. runs/default")
    ap.add_argument("--label", required=True, help="the entry's name, e.g. the commit measured")
    ap.add_argument("--note", default="")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "stage07.json")
    a = ap.parse_args()
    fig = stage07_figures(a.run.resolve())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    fig.update(note=a.note, measured_with=commit, load_now=os.getloadavg()[0], date=time.strftime("%Y-%m-%d %H:%M"))
    results = json.loads(a.json.read_text()) if a.json.is_file() else {}
    results[a.label] = fig
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(fig, indent=2))


if __name__ == "__main__":
    main()
