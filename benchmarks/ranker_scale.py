"""How ranking time grows with the number of candidate models: full vs induced candidate attention.

    .venv/bin/python benchmarks/ranker_scale.py            # writes benchmarks/results/ranker_scale.{json,png}
    .venv/bin/python benchmarks/ranker_scale.py --run runs/default   # also: quality of both on the run's zoo

Random model tokens (512-d) and 64 dataset tokens (256-d), the default ranker size (RankerParams: d_model 64,
2 layers, 4 heads), batch 1, eval mode, no gradient; median of ``REPEATS`` calls after one warm-up, torch's default
threads. Full self-attention is skipped past ``FULL_MAX`` candidates (its memory grows as N^2).
Goals (issue 15): 10,000 candidates in at most 1 s, 100,000 in at most 10 s, quality on the default zoo
unchanged: with ``--run``, both attentions rank the run's held-out datasets as stage 07's main ranker does
(leave-datasets-out, the first seed, the run's settings, evidence, inner choice and dataset-neighbour prior; k = 0
and every model probed) and the mean weighted taus are recorded.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ptmrec.ranker import RankerConfig, build_ranker

SIZES = [50, 500, 2_000, 5_000, 10_000, 30_000, 100_000]
FULL_MAX = 10_000
REPEATS = 3
OUT = Path(__file__).resolve().parent / "results"


def time_one(kind: str, n: int) -> float:
    torch.manual_seed(0)
    cfg = RankerConfig("cross_attention", model_dim=512, dataset_dim=256, n_models=n, candidate_attention=kind)
    model = build_ranker(cfg).eval()
    mt, dt = torch.randn(1, n, 512), torch.randn(1, 64, 256)
    with torch.inference_mode():
        model(mt, dt)
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            model(mt, dt)
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def quality(run: Path) -> dict:
    """Mean weighted tau, leave-datasets-out, of the run's ranker with full and with induced candidate attention."""
    import dataclasses

    import pandas as pd

    from ptmrec import params, protocol, ranker
    from ptmrec.metrics import weighted_tau
    from ptmrec.paths import jobs
    from ptmrec.probing import attach_evidence

    P = params.load(run / "07_evaluate" / "params.resolved.yaml")
    data = ranker.load_ranking_data(run, P.groundtruth.target_method, P.run.seed, P.ranker.model_tokens)
    if P.ranker.evidence:
        data = attach_evidence(data, pd.read_csv(run / "05_baselines" / "scores.csv"), P.ranker.evidence)
    out, E = {}, P.evaluate
    ks = [len(data.model_ids)] if data.evidence is not None else None
    for kind in ("full", "induced"):
        rp = dataclasses.replace(P.ranker, candidate_attention=kind)
        with protocol.worker_pool(jobs()) as pool:  # stage 07's main ranker: its inner choice, one seed
            pred, _ = protocol.ranker_predictions(data, protocol.make_folds(data), rp, P.train_ranker, [P.run.seed],
                                                  grid=E.inner_grid, inner_k=E.inner_folds, ks=ks, pool=pool,
                                                  neighbours=True)
        for method, g in pred.groupby("method"):
            taus = [weighted_tau(data.accuracy_of(t), h.set_index("model_id").score[data.model_ids].to_numpy())
                    for t, h in g.groupby("task_id")]
            out[f"{kind}:{method.split('#')[0]}"] = round(float(np.mean(taus)), 4)
    return out


def main(run: Path | None = None) -> dict:
    rows = [dict(candidate_attention=kind, n=n, seconds=round(time_one(kind, n), 4))
            for kind in ("full", "induced") for n in SIZES if kind == "induced" or n <= FULL_MAX]
    result = dict(rows=rows, quality=quality(run) if run else None, threads=torch.get_num_threads(), repeats=REPEATS,
                  machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                  load_average=os.getloadavg(), date=time.strftime("%Y-%m-%d %H:%M"))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ranker_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for kind in ("full", "induced"):
        r = [x for x in rows if x["candidate_attention"] == kind]
        ax.loglog([x["n"] for x in r], [x["seconds"] for x in r], marker="o", label=kind)
    ax.axhline(1, ls=":", c="grey", lw=0.7)
    ax.axhline(10, ls=":", c="grey", lw=0.7)
    ax.set(xlabel="candidate models", ylabel="seconds per ranking", title="ranker forward pass, batch 1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "ranker_scale.png", dpi=150)
    return result


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, help="a finished run: also compare the quality of both attentions on its zoo")
    print(json.dumps(main(ap.parse_args().run), indent=2))
