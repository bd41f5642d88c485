"""The smoke run's figures, pinned: a refactor that says "behaviour unchanged" must leave them unchanged.

``tests/smoke_figures.json`` holds checksums of what stages 00-07 compute on params/smoke.yaml (one torch
thread, so a run repeats bit for bit on one machine; figures of trained networks get a 0.5% tolerance for
another CPU's float rounding; timings and stage 08 are left out). A change
that moves them on purpose re-pins them, and its commit says why:

    .venv/bin/python tests/test_pinned.py runs/smoke > tests/smoke_figures.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

PINNED = Path(__file__).with_name("smoke_figures.json")


def _npz_sum(folder: Path, pattern: str, key: str) -> float:
    total = 0.0
    for f in sorted(folder.glob(pattern)):
        with np.load(f) as z:
            total += float(np.abs(z[key].astype(np.float64)).sum())
    return total


def smoke_figures(run: Path) -> dict[str, float]:
    """Checksums of one run's stages 00-07 (sums and means of what each stage writes; no timings)."""
    zoo = pd.read_csv(run / "00_zoo_and_tasks/zoo/index.csv")
    perf = pd.read_csv(run / "01_groundtruth/performance.csv")
    scores = pd.read_csv(run / "05_baselines/scores.csv")
    ranker = json.loads((run / "06_ranker/metrics.json").read_text())
    ldo = pd.read_csv(run / "07_evaluate/leave_datasets_out.csv", index_col=0)
    pred = pd.read_csv(run / "07_evaluate/predictions.csv")
    out = {"00.models": len(zoo), "00.source_accuracy": float(zoo.source_accuracy.sum()),
           "02.vectors": _npz_sum(run / "02_model_vectors", "vectors-*.npz", "vectors"),
           "03.tokens": _npz_sum(run / "03_autoencoder", "tokens.npz", "tokens"),
           "04.tokens": _npz_sum(run / "04_dataset_tokens", "tokens-*.npz", "tokens"),
           "06.best_val_loss": float(ranker["best_val_loss"]),
           "07.predictions": float(pred.score.abs().sum())}
    for (method, split), acc in perf.groupby(["method", "split"]).accuracy.sum().items():
        out[f"01.{method}.{split}"] = float(acc)
    for scorer, s in scores.groupby("scorer").score.sum().items():
        out[f"05.{scorer}"] = float(s)
    for method in ("ranker", "popularity", "logme", "noise_ceiling"):
        out[f"07.{method}.weighted_tau"] = float(ldo.loc[method, "weighted_tau"])
    return out


TRAINED = ("03.", "04.", "06.", "07.")  # figures of trained networks: float noise of another CPU may move them a little


def test_smoke_figures_are_the_pinned_ones(smoke_runs):
    got, want = smoke_figures(smoke_runs / "smoke"), json.loads(PINNED.read_text())
    assert sorted(got) == sorted(want), "the set of pinned figures changed: re-pin (see the module docstring)"
    moved = {k: (want[k], got[k]) for k in want
             if not np.isclose(got[k], want[k], rtol=5e-3 if k.startswith(TRAINED) else 1e-4, atol=1e-8)}
    assert not moved, f"figures moved (pinned, now): {moved}; if on purpose, re-pin (see the module docstring)"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: test_pinned.py runs/smoke > tests/smoke_figures.json")
    print(json.dumps(smoke_figures(Path(sys.argv[1])), indent=1, sort_keys=True))
