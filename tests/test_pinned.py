"""The smoke run's figures, pinned: a refactor that says "behaviour unchanged" must leave them unchanged.

``tests/smoke_figures.json`` holds checksums of what stages 00-07 compute on params/smoke.yaml (one torch
thread, so a run repeats bit for bit on one machine; timings and stage 08 are left out), and the machine they
were computed on. Training the smoke zoo from scratch is chaotic: the least change of its data or of float
rounding trains other models, and every figure downstream of stage 00 moves. (CI once saw the summed source
accuracy go 1.069 -> 1.088 and popularity's tau 0.27 -> 0.09; the cause was not the CPU but the order of the
font files, which depended on where the virtual environment lived: ptmrec.offline now lists matplotlib's
fonts first wherever it is installed.) So on the pinning machine every figure must match; on any other,
whose kernels may round differently, only those that no trained zoo model touches. A change that moves
them on purpose re-pins them, and its commit says why:

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
ZOO_FREE = ("00.models", "04.tokens", "05.random")  # the zoo's size, the dataset tokens, the random scorer


def machine() -> str:
    """The CPU (model, family, flags), torch version and torch's kernel width: what decides the zoo's rounding."""
    import hashlib
    import platform

    import torch

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    field = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines) if v}
    cpu = " ".join(field.get(k, "?") for k in ("model name", "cpu family", "model", "stepping"))
    flags = hashlib.sha256(field.get("flags", "").encode()).hexdigest()[:8]
    return f"{platform.machine()} {cpu} flags {flags} | torch {torch.__version__} {torch.backends.cpu.get_cpu_capability()}"


def test_smoke_figures_are_the_pinned_ones(smoke_runs):
    got, pinned = smoke_figures(smoke_runs / "smoke"), json.loads(PINNED.read_text())
    want = pinned["figures"]
    assert sorted(got) == sorted(want), "the set of pinned figures changed: re-pin (see the module docstring)"
    same_machine = pinned["machine"] == machine()
    moved = {k: (want[k], got[k]) for k in want if (same_machine or k in ZOO_FREE)
             and not np.isclose(got[k], want[k], rtol=5e-3 if k.startswith(TRAINED) else 1e-4, atol=1e-8)}
    assert not moved, f"figures moved (pinned, now): {moved}; if on purpose, re-pin (see the module docstring)"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: test_pinned.py runs/smoke > tests/smoke_figures.json")
    print(json.dumps({"machine": machine(), "figures": smoke_figures(Path(sys.argv[1]))}, indent=1, sort_keys=True))
