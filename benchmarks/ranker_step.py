"""Seconds per epoch of the default ranker, with torch's nn.Dropout and with ptmrec's FastDropout.

    .venv/bin/python benchmarks/ranker_step.py --run runs/default [--epochs 8 --rounds 3]

Trains the ranker of ``params/default.yaml`` on the first leave-datasets-out fold of a finished run (stages
00-05) for a fixed number of epochs (no early stopping, one torch thread, as in stage 07's workers), once per
dropout kind per round, rounds interleaved so that a slow stretch of the machine hits both alike (the paired
speedup is the median of the rounds' ratios: this machine's speed drifts by a third within minutes); also times
one read of a training item. Writes the medians to benchmarks/results/ranker_step.json. Run it on a quiet
machine: stage 07 trains some 250 rankers, so a second per training is minutes of the stage.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from ptmrec import params, protocol, ranker
from ptmrec.probing import attach_evidence

REPO = Path(__file__).resolve().parent.parent


def torch_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """The ranker as torch builds it: every FastDropout back to an nn.Dropout of the same p."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ranker.FastDropout):
                setattr(parent, name, torch.nn.Dropout(child.p))
    return model


def seconds_per_epoch(data: ranker.RankingData, fold: protocol.Fold, P: params.Params, kind: str) -> float:
    """Train ``P.ranker`` on ``fold`` for ``P.train_ranker.epochs`` epochs with dropout ``kind``."""
    build = ranker.build_ranker
    if kind == "torch":
        ranker.build_ranker = lambda cfg: torch_dropout(build(cfg))
    try:
        t0 = time.perf_counter()
        _, trainer = ranker.fit_ranker(data, fold.train_tasks, P.ranker, P.train_ranker, models=fold.train_models)
        return (time.perf_counter() - t0) / len(trainer.history)
    finally:
        ranker.build_ranker = build


def item_microseconds(data: ranker.RankingData, fold: protocol.Fold, P: params.Params, reads: int = 5) -> float:
    ds = ranker.CombinedSimilarityDataset(data, fold.train_tasks, fold.train_models, max_tokens=P.ranker.max_dataset_tokens,
                                          sample=True)
    t0 = time.perf_counter()
    for _ in range(reads):
        for i in range(len(ds)):
            ds[i]
    return (time.perf_counter() - t0) / (reads * len(ds)) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=str(REPO / "runs" / "default"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args()
    torch.set_num_threads(1)
    P = params.load(REPO / "params" / "default.yaml")
    P = dataclasses.replace(P, train_ranker=dataclasses.replace(P.train_ranker, epochs=a.epochs, early_stopping_patience=0))
    run = Path(a.run)
    data = ranker.load_ranking_data(run, P.groundtruth.target_method, P.run.seed, P.ranker.model_tokens)
    data = attach_evidence(data, pd.read_csv(run / "05_baselines" / "scores.csv"), P.ranker.evidence)
    fold = protocol.make_folds(data)[0]
    times: dict[str, list[float]] = {"torch": [], "fast": []}
    for _ in range(a.rounds):
        for kind in times:
            times[kind].append(seconds_per_epoch(data, fold, P, kind))
    med = {k: statistics.median(v) for k, v in times.items()}
    out = dict(run=str(run), fold=fold.name, train_tasks=len(fold.train_tasks), models=len(fold.train_models),
               epochs=a.epochs, rounds=a.rounds, seconds_per_epoch={k: [round(x, 4) for x in v] for k, v in times.items()},
               median_torch_dropout=round(med["torch"], 4), median_fast_dropout=round(med["fast"], 4),
               speedup=round(med["torch"] / med["fast"], 3),
               paired_speedup_median=round(statistics.median(t / f for t, f in zip(times["torch"], times["fast"])), 3),
               item_microseconds=round(item_microseconds(data, fold, P), 1),
               date=time.strftime("%Y-%m-%d %H:%M"))
    dest = REPO / "benchmarks" / "results" / "ranker_step.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
