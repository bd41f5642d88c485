"""Stage 07: every method on the same held-out tasks, honest by construction.

Leave-datasets-out: one fold per source dataset of the target tasks; the ranker (and the
``popularity`` reference) learn from the tasks of the other datasets only, so sibling tasks cut
from one dataset never straddle training and test. Leave-models-out, separately: the zoo is
also split into ``model_folds``; the ranker trains without the held-out models (and without
the held-out datasets) and ranks those models from their weights alone. Every method is scored
by ``ptmrec.metrics`` on exactly the same (task, candidate models) lists.

Methods: the ranker and its ablations, each stage-05 scorer, ``random``, ``popularity`` (mean
accuracy on the training tasks), ``source_similarity`` (dataset tokens of the model's source
task against the target's), ``oracle`` (the truth itself) and ``noise_ceiling`` (the second
ground-truth run as a predictor: what agreement the measurement noise allows).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from .params import RankerParams, TrainParams
from .ranker import RankingData, fit_ranker, predict

ABLATIONS = {  # name -> RankerParams overrides
    "no_model_tokens": dict(model_tokens="ids"),
    "no_dataset_tokens": dict(dataset_tokens=False),
    "raw_vectors": dict(model_tokens="vectors"),
}


def dataset_folds(data: RankingData) -> list[tuple[str, list[str], list[str]]]:
    """(held-out dataset, training task ids, test task ids), one fold per dataset."""
    names = sorted({data.datasets[t] for t in data.task_ids})
    if len(names) < 2:
        raise ValueError(f"leave-datasets-out needs target tasks from at least 2 datasets, got {names}")
    return [(d, [t for t in data.task_ids if data.datasets[t] != d], [t for t in data.task_ids if data.datasets[t] == d])
            for d in names]


def model_folds(n_models: int, k: int, seed: int) -> list[np.ndarray]:
    """k disjoint held-out index sets covering all models (seeded)."""
    k = max(2, min(k, n_models))
    perm = np.random.default_rng(seed).permutation(n_models)
    return [np.sort(perm[i::k]) for i in range(k)]


def _tidy(pred: pd.DataFrame, method: str, fold: str) -> pd.DataFrame:
    return pred.assign(method=method, fold=fold)[["method", "fold", "task_id", "model_id", "score", "seconds"]]


def ranker_folds(data: RankingData, rp: RankerParams, tp: TrainParams, seed: int, method: str = "ranker",
                 model_k: int = 0, progress: Callable[[Iterable], Iterable] = iter) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Leave-datasets-out predictions of one ranker variant (x leave-models-out when ``model_k``).

    Returns (predictions: method, fold, task_id, model_id, score, seconds;
    training log: one row per trained ranker with epochs, best epoch, validation loss, seconds).
    """
    preds, log = [], []
    mfolds = model_folds(len(data.model_ids), model_k, seed) if model_k else [None]
    jobs = [(d, tr, te, m, held) for d, tr, te in dataset_folds(data) for m, held in enumerate(mfolds)]
    for d, train, test, m, held in progress(jobs):
        train_models = None if held is None else np.setdiff1d(np.arange(len(data.model_ids)), held)
        t0 = time.perf_counter()
        model, trainer = fit_ranker(data, train, rp, tp, models=train_models, seed=seed)
        fold = d if held is None else f"{d}/m{m}"
        log.append(dict(method=method, fold=fold, epochs=len(trainer.history), best_epoch=trainer.best_epoch,
                        val_loss=trainer.best_loss, seconds=time.perf_counter() - t0))
        preds.append(_tidy(predict(model, data, test, held, rp.max_dataset_tokens), method, fold))
    return pd.concat(preds, ignore_index=True), pd.DataFrame(log)


def popularity(data: RankingData, folds: list[tuple[str, list[str], list[str]]]) -> pd.DataFrame:
    """Mean accuracy of each model over the fold's training tasks, as the score on its test tasks."""
    rows = []
    for d, train, test in folds:
        t0 = time.perf_counter()
        mean = np.nanmean(data.accuracy[[data.task_ids.index(t) for t in train]], axis=0)  # [N]
        secs = time.perf_counter() - t0
        rows += [dict(method="popularity", fold=d, task_id=t, model_id=m, score=float(s), seconds=secs)
                 for t in test for m, s in zip(data.model_ids, mean)]
    return pd.DataFrame(rows)


def ranking_agreement(data: RankingData, folds: list[tuple[str, list[str], list[str]]]) -> pd.DataFrame:
    """How much a held-out task's true ranking agrees with rankings measured on other tasks.

    Per test task of each fold (weighted tau between true accuracy vectors [N_models]):
    ``mean_training`` over the fold's training tasks, ``best_training`` the best of them chosen
    in hindsight (a ceiling for any method that copies one seen ranking), ``mean_sibling`` over
    the other tasks cut from the same held-out dataset (what within-dataset learning could reach).
    """
    from .metrics import weighted_tau

    rows = []
    for d, train, test in folds:
        for t in test:
            truth = data.accuracy_of(t)
            taus = [weighted_tau(truth, data.accuracy_of(u)) for u in train]
            sib = [weighted_tau(truth, data.accuracy_of(u)) for u in test if u != t]
            rows.append(dict(dataset=d, task_id=t, mean_training=float(np.mean(taus)), best_training=float(np.max(taus)),
                             mean_sibling=float(np.mean(sib)) if sib else np.nan))
    return pd.DataFrame(rows)


def source_similarity(data: RankingData, zoo: pd.DataFrame, source_tokens: dict[str, np.ndarray]) -> pd.DataFrame:
    """Cosine similarity of the target's mean dataset token and the mean token of each model's source task.

    A model whose source task has no tokens scores the lowest similarity seen (it is not dropped:
    every method ranks the same lists).
    """
    unit = lambda v: v / max(np.linalg.norm(v), 1e-12)  # noqa: E731
    src = {s: unit(np.asarray(v, float).mean(0)) for s, v in source_tokens.items()}
    source_of = dict(zip(zoo.model_id, zoo.source_task))
    rows = []
    for t in data.task_ids:
        t0 = time.perf_counter()
        q = unit(data.dataset_tokens[t].astype(float).mean(0))
        sims = np.array([q @ src[source_of[m]] if source_of.get(m) in src else np.nan for m in data.model_ids])
        sims = np.where(np.isnan(sims), np.nanmin(sims) if np.isfinite(sims).any() else 0.0, sims)
        secs = time.perf_counter() - t0
        rows += [dict(task_id=t, model_id=m, score=float(s), seconds=secs) for m, s in zip(data.model_ids, sims)]
    return _tidy(pd.DataFrame(rows), "source_similarity", "all")


def encoding_seconds(stage04: Path) -> dict[str, float]:
    """Per task: seconds the encoder takes for its token sample, from stage 04's measured throughput.

    (images in the task's sample, ``tokens_index.csv``) / (whole-extraction images per second,
    ``metrics.json`` speed); this is the part of a ranker recommendation that grows with the data.
    """
    from .paths import read_json

    ips = read_json(Path(stage04) / "metrics.json")["speed"]["extraction_images_per_s"]
    index = pd.read_csv(Path(stage04) / "tokens_index.csv")
    return dict(zip(index.task_id, index.n_images / ips))


def baseline_predictions(scores: pd.DataFrame) -> pd.DataFrame:
    """Stage-05 scores as predictions; seconds per recommendation = forward passes + scorer calls over the zoo."""
    s = scores.assign(method=scores.scorer, fold="all")
    cost = s.seconds.fillna(0) + s.forward_seconds.fillna(0)
    per_task = cost.groupby([s.method, s.task_id]).transform("sum")  # one recommendation scores the whole zoo
    return s.assign(seconds=per_task)[["method", "fold", "task_id", "model_id", "score", "seconds"]]


def truth_predictions(data: RankingData, perf: pd.DataFrame, method: str, noise_seed: int) -> pd.DataFrame:
    """The ``oracle`` (truth as its own prediction) and the ``noise_ceiling`` (a second ground-truth seed)."""
    rows = [dict(method="oracle", fold="all", task_id=t, model_id=m, score=float(a), seconds=0.0)
            for t, accs in zip(data.task_ids, data.accuracy) for m, a in zip(data.model_ids, accs)]
    noise = perf[(perf.method == method) & (perf.seed == noise_seed)]
    noise = noise.rename(columns={"accuracy": "score"}).assign(method="noise_ceiling", fold="all", seconds=np.nan)
    return pd.concat([pd.DataFrame(rows), noise[["method", "fold", "task_id", "model_id", "score", "seconds"]]],
                     ignore_index=True)


def restrict(pred: pd.DataFrame, lists: pd.DataFrame) -> pd.DataFrame:
    """Predictions limited to the (task, model, list) candidate lists of leave-models-out.

    ``lists``: columns task_id, model_id, fold (the model fold that held the model out); the
    result's fold column names the list, so metrics are computed per list.
    """
    return pred.drop(columns="fold").merge(lists, on=["task_id", "model_id"])


def summarize(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """Mean of every metric per method, plus the number of lists scored; best weighted tau first."""
    cols = [c for c in table.columns if c not in ("method", "task_id", "fold", "n_models")]
    out = table.groupby("method")[cols].mean()
    out.insert(0, "lists", table.groupby("method").size())
    return out.sort_values("weighted_tau", ascending=False)


def ranker_params(rp: RankerParams, ablation: str) -> RankerParams:
    if ablation not in ABLATIONS:
        raise ValueError(f"evaluate.ablations has '{ablation}'; valid: {', '.join(ABLATIONS)}")
    return dataclasses.replace(rp, **ABLATIONS[ablation])


def write_latex_table(summary: pd.DataFrame, path: Path) -> None:
    """The headline columns of ``summary`` (methods x metrics) as a booktabs tabular for the thesis."""
    from .paths import write_text
    from .report import latex_table

    cols = [c for c in ("weighted_tau", "weighted_tau_gt", "kendall", "spearman", "top1_regret") if c in summary]
    cols += [c for c in summary.columns if c.startswith(("top", "ndcg")) and c not in cols]
    cols += [c for c in ("seconds",) if c in summary]
    write_text(path, latex_table(summary[cols].reset_index().rename(columns={"index": "method"})))
