"""Stage 07: every method on the same held-out lists, and the tables that judge them.

``run_protocol`` is what notebook 07 calls: the folds and fitted methods of ``ptmrec.protocol`` (the
ranker with several seeds and inner-validated hyperparameters, its ablations, leave-models-out with
refitted autoencoders, the static priors), beside the stage-05 estimators, ``random``,
``source_similarity``, the ``oracle`` and two noise ceilings (the second ground-truth run on the same
test split, and on a fresh one). Every method is scored by ``ptmrec.metrics`` on exactly the same
(task, candidate models) lists, with its wall time per recommendation beside it; ``paired_test`` gives a
Wilcoxon signed-rank test of the ranker against the best estimator over held-out tasks.
"""
from __future__ import annotations

import dataclasses
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from . import metrics
from .params import Params, RankerParams
from .protocol import (Fold, autoencoder_refits, dataset_folds, fold_results, fold_units, make_folds, restrict, start,
                       start_refits, stacking_predictions, static_priors, worker_pool)
from .ranker import RankingData, zscore
from .registry import Registry

ABLATIONS = Registry.of("ablation", {  # name -> RankerParams overrides
    # the ranker's own settings and tokens as every ablation runs (one seed, no inner choice, no dataset-neighbour
    # prior): the row each of the others differs from in one thing
    "no_neighbours": {},
    "no_model_tokens": dict(model_tokens="ids"),
    "no_dataset_tokens": dict(dataset_tokens=False),
    "raw_vectors": dict(model_tokens="vectors"),
    "behaviour_tokens": dict(model_tokens="behaviour"),  # what the model does on probe images, not its weights
    "weights_and_behaviour": dict(model_tokens="both"),
})
BEHAVIOUR_KINDS = ("behaviour", "both")  # token kinds compared on leave-models-out folds as well
PRIORS = ("popularity", "popularity_z", "most_params", "imagenet_first")  # static priors of ptmrec.protocol
REFERENCES = ("oracle", "noise_ceiling", "noise_ceiling_fresh")  # what the truth allows, not methods


def ranker_params(rp: RankerParams, ablation: str) -> RankerParams:
    if ablation not in ABLATIONS:
        raise ValueError(f"evaluate.ablations has '{ablation}'; valid: {', '.join(ABLATIONS)}")
    return dataclasses.replace(rp, **ABLATIONS[ablation])


# ----------------------------------------------------------------------------- fold-free methods


def baseline_predictions(scores: pd.DataFrame) -> pd.DataFrame:
    """Stage-05 scores as predictions; seconds per recommendation = forward passes + scorer calls over the zoo."""
    s = scores.assign(method=scores.scorer, fold="all")
    cost = s.seconds.fillna(0) + s.forward_seconds.fillna(0)
    per_task = cost.groupby([s.method, s.task_id]).transform("sum")  # one recommendation scores the whole zoo
    return s.assign(seconds=per_task)[["method", "fold", "task_id", "model_id", "score", "seconds"]]


def truth_predictions(data: RankingData, perf: pd.DataFrame, method: str, noise_seed: int) -> pd.DataFrame:
    """The ``oracle`` (truth as its own prediction) and the noise ceilings: the second ground-truth run
    (bootstrap training split) tested on the same test split (``noise_ceiling``) and on a fresh one
    (``noise_ceiling_fresh``)."""
    from .groundtruth import measured

    rows = [dict(method="oracle", fold="all", task_id=t, model_id=m, score=float(a), seconds=0.0)
            for t, accs in zip(data.task_ids, data.accuracy) for m, a in zip(data.model_ids, accs)]
    parts = [pd.DataFrame(rows)]
    for split, name in (("test", "noise_ceiling"), ("fresh", "noise_ceiling_fresh")):
        noise = measured(perf, method, noise_seed, split).rename(columns={"accuracy": "score"})
        parts.append(noise.assign(method=name, fold="all", seconds=np.nan)[
            ["method", "fold", "task_id", "model_id", "score", "seconds"]])
    return pd.concat(parts, ignore_index=True)


def _unit(x: np.ndarray) -> np.ndarray:
    """``x`` [D] scaled to length 1 (a zero vector stays zero)."""
    return x / max(float(np.linalg.norm(x)), 1e-12)


def source_similarity(data: RankingData, zoo: pd.DataFrame, source_tokens: dict[str, np.ndarray]) -> pd.DataFrame:
    """Cosine similarity of the target's mean dataset token and the mean token of each model's source task.

    A model whose source task has no tokens scores the lowest similarity seen (it is not dropped:
    every method ranks the same lists).
    """
    src = {s: _unit(np.asarray(v, float).mean(0)) for s, v in source_tokens.items()}
    source_of = dict(zip(zoo.model_id, zoo.source_task))
    rows = []
    for t in data.task_ids:
        t0 = time.perf_counter()
        q = _unit(data.dataset_tokens[t].astype(float).mean(0))
        sims = np.array([q @ src[source_of[m]] if source_of.get(m) in src else np.nan for m in data.model_ids])
        sims = np.where(np.isnan(sims), np.nanmin(sims) if np.isfinite(sims).any() else 0.0, sims)
        secs = time.perf_counter() - t0
        rows += [dict(method="source_similarity", fold="all", task_id=t, model_id=m, score=float(s), seconds=secs)
                 for m, s in zip(data.model_ids, sims)]
    return pd.DataFrame(rows)


def encoding_seconds(stage04: Path) -> dict[str, float]:
    """Per task: seconds the encoder takes for its token sample, from stage 04's measured throughput.

    (images in the task's sample, ``tokens_index.csv``) / (whole-extraction images per second,
    ``metrics.json`` speed); this is the part of a ranker recommendation that grows with the data.
    """
    from .paths import read_json

    ips = read_json(Path(stage04) / "metrics.json")["speed"]["extraction_images_per_s"]
    index = pd.read_csv(Path(stage04) / "tokens_index.csv")
    return dict(zip(index.task_id, index.n_images / ips))


def ranking_agreement(data: RankingData) -> pd.DataFrame:
    """How much a held-out task's true ranking agrees with rankings measured on other tasks.

    Per test task of each leave-datasets-out fold (weighted tau between true accuracy vectors [N]):
    ``mean_training`` over the fold's training tasks, ``best_training`` the best of them chosen in
    hindsight (a ceiling for any method that copies one seen ranking), ``mean_sibling`` over the other
    tasks cut from the same held-out dataset (what within-dataset learning could reach). Per training
    dataset, its ranking is the mean of its tasks' accuracies z-scored within each task:
    ``best_training_dataset`` is the best one in hindsight (a choice among datasets, not tasks, so less of
    it is luck), ``nearest_training_dataset`` the one whose mean dataset token is nearest to the
    task's (cosine, both centred on the fold's training tasks; no accuracy read): which dataset the tokens
    would copy, and what it gives.
    """
    rows = []
    for d, train, test in dataset_folds(data):
        names = sorted({data.datasets[u] for u in train})
        means = {u: data.dataset_tokens[u].mean(0).astype(np.float64) for u in train + test}  # [D_d] each
        centre = np.mean([means[u] for u in train], 0)
        by = {n: [u for u in train if data.datasets[u] == n] for n in names}
        ranking = {n: np.mean([zscore(data.accuracy_of(u)) for u in us], 0) for n, us in by.items()}  # [N]
        key = {n: _unit(np.mean([means[u] for u in us], 0) - centre) for n, us in by.items()}  # [D_d]
        for t in test:
            truth = data.accuracy_of(t)
            taus = [metrics.weighted_tau(truth, data.accuracy_of(u)) for u in train]
            sib = [metrics.weighted_tau(truth, data.accuracy_of(u)) for u in test if u != t]
            per_dataset = {n: metrics.weighted_tau(truth, r) for n, r in ranking.items()}
            query = _unit(means[t] - centre)  # [D_d]
            nearest = max(names, key=lambda n: float(query @ key[n]))
            rows.append(dict(dataset=d, task_id=t, mean_training=float(np.mean(taus)), best_training=float(np.max(taus)),
                             mean_sibling=float(np.mean(sib)) if sib else np.nan,
                             best_training_dataset=max(per_dataset.values()),
                             nearest_training_dataset=per_dataset[nearest], nearest_dataset=nearest))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- tables


def score_lists(pred: pd.DataFrame, truth: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per (method, fold, task) metrics and seconds per recommendation: one list per task and fold (a fold's
    candidates are its list)."""
    table = pd.concat([metrics.score_table(g, truth, k).assign(fold=f) for f, g in pred.groupby("fold", sort=False)],
                      ignore_index=True)
    seconds = pred.groupby(["method", "fold", "task_id"], sort=False).seconds.first().reset_index()
    return table.merge(seconds, on=["method", "fold", "task_id"], how="left")


def collapse_seeds(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Average the per-list metrics of ``<method>#s<seed>`` rows over seeds into ``<method>``.

    Returns (the table with one row per method and list, the spread: per method and seed the mean of
    every metric over lists, so its standard deviation across seeds is the seed spread).
    """
    base = table.method.str.split("#s").str[0]
    seeded = table.method.str.contains("#s", regex=False)
    cols = [c for c in table.columns if c not in ("method", "task_id", "fold", "n_models")]
    merged = table[seeded].assign(method=base[seeded]).groupby(["method", "fold", "task_id"], sort=False)
    collapsed = merged.agg({**{c: "mean" for c in cols}, "n_models": "first"}).reset_index()
    spread = table[seeded].assign(base=base[seeded]).groupby(["base", "method"])[cols].mean().reset_index()
    return pd.concat([table[~seeded], collapsed], ignore_index=True), spread


def summarize(table: pd.DataFrame, spread: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean of every metric per method, the number of lists, and for seeded methods the standard deviation
    of the mean weighted taus across seeds (``*_sd``); best weighted tau first."""
    cols = [c for c in table.columns if c not in ("method", "task_id", "fold", "n_models")]
    out = table.groupby("method")[cols].mean()
    out.insert(0, "lists", table.groupby("method").size())
    if spread is not None and len(spread):
        sd = spread.groupby("base")[["weighted_tau", "weighted_tau_gt", "top1_regret"]].std(ddof=1)
        out = out.join(sd.add_suffix("_sd")).join(spread.groupby("base").size().rename("seeds"))
    return out.sort_values("weighted_tau", ascending=False)


def against(pred: pd.DataFrame, folds: list[Fold], truth: pd.DataFrame, k: int) -> pd.DataFrame:
    """Every method's summary on the lists of ``folds`` judged by another ground truth ``truth`` (task_id,
    model_id, accuracy: fine-tuning, say); only the tasks it measured count (``lists`` says how many)."""
    table, spread = collapse_seeds(score_lists(pred[pred.fold.isin({f.name for f in folds})], truth, k))
    return summarize(table, spread)


def frontier(summary: pd.DataFrame, n_models: int, estimators: Iterable[str], method: str = "ranker") -> pd.DataFrame:
    """The cost-quality frontier: one row per (method, k) with forward passes, seconds per recommendation, both
    weighted taus, top-1 regret and tasks. The ranker at k = 0 (tokens only) and with k probed models per
    policy; each estimator on all N forward passes and restricted to the ranker's top-k probes; stacking; and
    ``oracle`` at each k, the measured accuracy on those probes (the ceiling of the restricted estimators)."""
    rows = []
    for name, r in summary.iterrows():
        base, _, k = str(name).partition("@")
        if k == "k*":  # the inner-validated k differs per fold: a choice, not a point of the sweep
            continue
        if name == method:
            kind, k_ = method, 0
        elif base.startswith(f"{method}+") and k:
            kind, k_ = base, n_models if k == "all" else int(k)
        elif base in estimators and k != "all":  # "<estimator>@all" repeats the estimator itself
            kind, k_ = base, n_models if not k else int(k)
        elif base == "oracle" and k:  # the ceiling of every "<estimator>@k": a perfect one on the same probes
            kind, k_ = "oracle", n_models if k == "all" else int(k)
        elif name == "stacking":
            kind, k_ = "stacking", n_models
        else:
            continue
        rows.append(dict(method=kind, k=k_, forward_passes=k_, seconds=r.seconds, weighted_tau=r.weighted_tau,
                         weighted_tau_gt=r.weighted_tau_gt, top1_regret=r.top1_regret, n_tasks=int(r.lists)))
    return pd.DataFrame(rows).drop_duplicates(["method", "k"]).sort_values(["method", "k"]).reset_index(drop=True)


def best_estimator(summary: pd.DataFrame, estimators: Iterable[str]) -> str:
    """The stage-05 estimator with the highest mean weighted tau in ``summary`` (``random`` excluded)."""
    names = [m for m in estimators if m in summary.index and m != "random"]
    return str(summary.loc[names, "weighted_tau"].idxmax())


def paired_test(table: pd.DataFrame, a: str, b: str, metric: str = "weighted_tau") -> dict[str, Any]:
    """Wilcoxon signed-rank test (two-sided) of ``a`` against ``b`` on ``metric`` over the lists both scored.

    Returns n, the mean of a, of b and of the paired difference, the statistic and the p-value.
    """
    from scipy.stats import wilcoxon

    wide = table[table.method.isin([a, b])].pivot_table(index=["fold", "task_id"], columns="method", values=metric)
    wide = wide.dropna()
    diff = wide[a] - wide[b]
    stat, p = (wilcoxon(wide[a], wide[b]) if (diff != 0).any() else (np.nan, 1.0))
    return dict(a=a, b=b, metric=metric, n=int(len(wide)), mean_a=float(wide[a].mean()),
                mean_b=float(wide[b].mean()), mean_diff=float(diff.mean()), statistic=float(stat), p_value=float(p))


# ----------------------------------------------------------------------------- the protocol


@dataclass
class Evaluation:
    """Everything notebook 07 shows and writes; ``ldo`` / ``lmo`` are per-method summaries."""

    predictions: pd.DataFrame  # method, fold, task_id, model_id, score, seconds (every list of both kinds)
    per_task: pd.DataFrame  # leave-datasets-out: per method and held-out task, every metric (seeds averaged)
    ldo: pd.DataFrame
    lmo_per_list: pd.DataFrame
    lmo: pd.DataFrame
    training: pd.DataFrame  # one row per trained ranker
    seeds: pd.DataFrame  # per seeded method and seed: mean metrics
    tests: dict[str, Any] = field(default_factory=dict)  # paired tests and the best estimator
    folds: dict[str, list[Fold]] = field(default_factory=dict)


def learned_predictions(data: RankingData, P: Params, variants: dict[str, RankingData], zoo: pd.DataFrame,
                        vectors: np.ndarray | None, out_dir: Path,
                        progress: Callable[[Iterable], Iterable] = iter,
                        pool: Executor | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The ranker (seeds x inner-validated hyperparameters), each ablation (first seed, no choice) on the
    leave-datasets-out folds, and the ranker on the leave-models-out folds with refitted tokens; the folds in
    the worker processes of ``pool`` (``protocol.worker_pool``) when given."""
    E, seeds = P.evaluate, [P.run.seed + i for i in range(P.evaluate.seeds)]
    ldo = make_folds(data)
    lmo = (make_folds(data, zoo, E.model_folds, P.run.seed, E.model_dataset_groups)
           if E.model_folds and vectors is not None else [])
    # one queue of workers: the leave-models-out autoencoder refits first (memory-bound minutes; only the
    # leave-models-out folds wait for them), then every variant's folds, so none waits for a variant's last fold:
    # the main ranker's (inner choice, every seed), the single-training ablation folds, leave-models-out last
    refits = start_refits(vectors, data, lmo, P.autoencoder, P.train_autoencoder, P.run.seed, out_dir / "autoencoders",
                          pool) if lmo else {}
    pending = start(fold_units(data, ldo, P.ranker, P.train_ranker, seeds, grid=E.inner_grid, inner_k=E.inner_folds,
                               ks=E.probe_ks, neighbours=True), pool)
    for ab in E.ablations:
        rp = ranker_params(P.ranker, ab)
        pending += start(fold_units(variants[rp.model_tokens], ldo, rp, P.train_ranker, seeds[:1],
                                    method=f"ranker:{ab}"), pool)
    folds = {"leave_datasets_out": ldo}
    if lmo:
        def lmo_tokens(kind: str, d: RankingData) -> Callable[[Fold], np.ndarray] | None:
            """A fold's model tokens: autoencoder codes refitted on its training models (one autoencoder per model
            fold, shared by its dataset folds), beside the behaviour tokens for "both"; None where nothing is
            fitted (behaviour tokens and raw vectors: the ranker's own LayerNorm is fitted with it)."""
            if kind not in ("autoencoder", "both"):
                return None
            if d.model_ids != data.model_ids:
                raise ValueError("leave-models-out: the token variants must cover the same models")

            def tokens_of(fold: Fold) -> np.ndarray:
                codes = refits[fold.name.split("/")[-1]]()  # [N, code_dim]
                return codes if kind == "autoencoder" else np.hstack([codes, d.model_tokens[:, P.autoencoder.code_dim:]])
            return tokens_of

        autoencoder_refits(refits, progress)  # in the workers, beside the first folds: a line while it waits
        kind = P.ranker.model_tokens
        pending += start(fold_units(data, lmo, P.ranker, P.train_ranker, seeds, tokens_of=lmo_tokens(kind, data),
                                    ks=E.probe_ks), pool)
        for ab in E.ablations:  # the token comparison: behaviour tokens on unseen models too (first seed)
            rp = ranker_params(P.ranker, ab)
            if rp.model_tokens in BEHAVIOUR_KINDS and rp.model_tokens != kind:
                d = variants[rp.model_tokens]
                pending += start(fold_units(d, lmo, rp, P.train_ranker, seeds[:1], method=f"ranker:{ab}",
                                            tokens_of=lmo_tokens(rp.model_tokens, d)), pool)
        folds["leave_models_out"] = lmo
    # the stacking reference on unseen models too: its weights are the same function of training models' scores
    stacking = [stacking_predictions(data, ldo + lmo)] if data.evidence is not None else []
    pred, log = fold_results(pending, progress)
    return pd.concat([pred, *stacking], ignore_index=True), log, folds


def judge(pred: pd.DataFrame, folds: dict[str, list[Fold]], model_ids: list[str], truth: pd.DataFrame,
          estimators: list[str], k: int) -> dict[str, Any]:
    """Score every method on the lists of both fold kinds; summaries, seed spread and paired tests.

    ``pred``: every prediction, already cut to the folds' lists (its ``fold`` names the list's fold).
    """
    out: dict[str, Any] = {}
    for kind, fs in folds.items():
        table = score_lists(pred[pred.fold.isin({f.name for f in fs})], truth, k)
        table, spread = collapse_seeds(table)
        out[kind] = (table, summarize(table, spread), spread)
    table, summary, spread = out["leave_datasets_out"]
    best = best_estimator(summary, estimators)
    tests = {"best_estimator": best, "ranker_vs_best_estimator": paired_test(table, "ranker", best),
             "ranker_vs_best_estimator_gt": paired_test(table, "ranker", best, "weighted_tau_gt")}
    every, methods = "ranker+top@all", set(table.method)  # every model probed, against the same forward passes
    for b in ("popularity", "neighbours"):  # k = 0: the best static prior, and the ranker's own neighbour prior alone
        if b in methods:
            tests[f"ranker_vs_{b}"] = paired_test(table, "ranker", b)
    for name, b in (("best_estimator", best), ("stacking", "stacking")):
        if {every, b} <= methods:
            for metric, tail in (("weighted_tau", ""), ("weighted_tau_gt", "_gt")):
                tests[f"ranker_all_vs_{name}{tail}"] = paired_test(table, every, b, metric)
    if "leave_models_out" in out and "logme" in set(out["leave_models_out"][0].method):
        lmo = out["leave_models_out"][0]
        tests["lmo_ranker_vs_logme"] = paired_test(lmo, "ranker", "logme")
        if every in set(lmo.method):
            tests["lmo_ranker_all_vs_logme"] = paired_test(lmo, every, "logme")
        if {every, "stacking"} <= set(lmo.method):
            tests["lmo_ranker_all_vs_stacking"] = paired_test(lmo, every, "stacking")
    return dict(out=out, tests=tests)


def run_protocol(data: RankingData, P: Params, zoo: pd.DataFrame, scores05: pd.DataFrame, perf: pd.DataFrame,
                 fixed: pd.DataFrame, variants: dict[str, RankingData], vectors: np.ndarray | None, out_dir: Path,
                 encode_seconds: dict[str, float] | None = None,
                 progress: Callable[[Iterable], Iterable] = iter, jobs: int = 1) -> Evaluation:
    """Stage 07 end to end (see the module docstring).

    ``fixed``: fold-free predictions besides the estimators (``source_similarity``, ``random`` and the truth
    references), scored on every task x model; ``variants``: RankingData per model-token kind the ablations
    need; ``vectors`` [N, input_dim]: stage-02 vectors in ``data.model_ids`` order (None: no leave-models-out);
    ``jobs``: worker processes for the rankers' folds (``protocol.ranker_predictions``).
    """
    from .groundtruth import measured

    with worker_pool(jobs) as pool:
        pred, training, folds = learned_predictions(data, P, variants, zoo, vectors, out_dir, progress, pool)
    pred = pred.assign(seconds=pred.seconds + pred.task_id.map(encode_seconds or {}).fillna(0.0))
    every_fold = [f for fs in folds.values() for f in fs]
    others = pd.concat([baseline_predictions(scores05), fixed], ignore_index=True)
    every = pd.concat([pred, static_priors(data, zoo, every_fold), restrict(others, every_fold, data.model_ids)],
                      ignore_index=True).astype({"score": float})
    truth = measured(perf, P.groundtruth.target_method, P.run.seed)
    j = judge(every, folds, data.model_ids, truth, sorted(set(scores05.scorer) - {"random"}), P.evaluate.top_k)
    ldo_table, ldo, spread = j["out"]["leave_datasets_out"]
    lmo_table, lmo, _ = j["out"].get("leave_models_out", (pd.DataFrame(), pd.DataFrame(), None))
    return Evaluation(every, ldo_table, ldo, lmo_table, lmo, training, spread, j["tests"], folds)
