"""How much each fix of the evaluation protocol (issue 14) moves the ranker's numbers, on a finished run.

    .venv/bin/python benchmarks/protocol_fixes.py --run runs/default [--jobs 2]

Stage 07 reports today's protocol; this replays the old choices one at a time, with one ranker seed each
(stage 07 trains three), on the run's own data. The ranker is trained as stage 07 trains it (with the evidence
channel and random probe masks) and scored at k = 0, from its tokens only:

- leave-models-out (stage 07's folds: ``evaluate.model_folds`` model folds x ``evaluate.model_dataset_groups``
  groups of held-out datasets):
  (a) ``leaky tokens, random folds``: the stage-03 tokens, whose autoencoder and standardiser were fitted on
      every model, and model folds drawn at random (siblings straddle): the old protocol;
  (b) ``leaky tokens, lineage folds``: the same tokens, folds grouped by lineage;
  (c) ``refitted tokens, lineage folds``: an autoencoder refitted per model fold on its training models (today);
- leave-datasets-out: the ranker at the parameter set's settings, against settings chosen per fold by inner
  validation on its training datasets (``evaluate.inner_grid``; today).

Writes benchmarks/results/protocol_fixes.json: mean weighted tau (both variants) and top-1 regret over the
held-out lists of each variant, the lists, and the seconds it took.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent


def summarize(pred: pd.DataFrame, data) -> dict:
    """Mean weighted tau (both variants) and top-1 regret over the (fold, task) lists of ``pred``."""
    from ptmrec.metrics import top1_regret, weighted_tau, weighted_tau_gt

    rows = []
    for (_, t), g in pred.groupby(["fold", "task_id"]):
        truth = data.accuracy_of(t)[[data.model_ids.index(m) for m in g.model_id]]
        s = g.score.to_numpy()
        rows.append((weighted_tau(truth, s), weighted_tau_gt(truth, s), top1_regret(truth, s)))
    a = np.array(rows)
    return dict(weighted_tau=round(float(a[:, 0].mean()), 4), weighted_tau_gt=round(float(a[:, 1].mean()), 4),
                top1_regret=round(float(a[:, 2].mean()), 4), lists=len(a))


def main() -> None:
    from ptmrec import params, protocol, ranker
    from ptmrec.extract import load_vectors
    from ptmrec.paths import jobs

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "protocol_fixes.json")
    ap.add_argument("--jobs", type=int, default=jobs(), help="worker processes for the rankers' folds")
    a = ap.parse_args()
    run = a.run.resolve()
    P = params.load(run / "07_evaluate" / "params.resolved.yaml")
    E, rp, tp, seed = P.evaluate, P.ranker, P.train_ranker, P.run.seed
    data = ranker.load_ranking_data(run, P.groundtruth.target_method, seed, "autoencoder")
    if rp.evidence:
        from ptmrec.probing import attach_evidence

        data = attach_evidence(data, pd.read_csv(run / "05_baselines" / "scores.csv"), rp.evidence)
    ids, V = load_vectors(run / "02_model_vectors")
    vectors = V[[list(ids).index(m) for m in data.model_ids]]
    zoo = pd.read_csv(run / "00_zoo_and_tasks" / "zoo" / "index.csv")
    out, t00 = {}, time.time()

    def measure(name: str, folds, **kw) -> None:
        t0 = time.time()
        with protocol.worker_pool(a.jobs) as pool:
            pred, _ = protocol.ranker_predictions(data, folds, rp, tp, [seed], pool=pool, **kw)
        out[name] = dict(summarize(pred, data), seconds=round(time.time() - t0, 1))
        print(name, out[name], flush=True)

    # stage 07's leave-models-out folds: its held-out dataset groups x lineage-grouped model folds
    lineage = protocol.make_folds(data, zoo, E.model_folds, seed, E.model_dataset_groups)
    own = pd.Series(data.model_ids, index=data.model_ids)  # every model its own group: the old random folds
    every = np.arange(len(data.model_ids))
    random_folds = [protocol.Fold(f"{d}/m{m}", d, tr, te, np.setdiff1d(every, held), held)
                    for d, tr, te in protocol.dataset_groups(data, E.model_dataset_groups)
                    for m, held in enumerate(protocol.model_folds(own, E.model_folds, seed))]
    measure("lmo: leaky tokens, random folds (old)", random_folds)
    measure("lmo: leaky tokens, lineage folds", lineage)
    cache: dict[str, np.ndarray] = {}

    def refit(fold):
        key = fold.name.split("/")[-1]
        if key not in cache:
            cache[key] = protocol.refit_tokens(vectors, data, fold.train_models, P.autoencoder, P.train_autoencoder,
                                               seed, run.parent / "_protocol_fixes" / key)
        return cache[key]

    measure("lmo: refitted tokens, lineage folds (today)", lineage, tokens_of=refit)
    ldo = protocol.make_folds(data)
    measure("ldo: parameter-set settings (old)", ldo)
    measure("ldo: settings by inner validation (today)", ldo, grid=E.inner_grid, inner_k=E.inner_folds)
    result = dict(run=str(run), n_models=len(data.model_ids), n_tasks=len(data.task_ids), seed=seed,
                  variants=out, seconds=round(time.time() - t00, 1), date=time.strftime("%Y-%m-%d %H:%M"))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
