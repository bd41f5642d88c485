"""Ranking metrics: one function per metric over one task's zoo.

Every function takes ``truth`` [N] (measured transfer accuracy of the N models on one task)
and ``pred`` [N] (a method's scores, higher = predicted better) and returns a float.

- ``weighted_tau``: ``scipy.stats.weightedtau(truth, pred)``, the symmetric variant (the
  average of the two lexicographic rankings), as LogME, SFDA and EMMS report it.
- ``weighted_tau_gt``: ``weightedtau(truth, pred, rank=None)``: weights follow the ground-truth
  order only (hyperbolic weight 1 / (r + 1) on the rank r by truth), as Model Spider reports it.
  Vigna, "A Weighted Correlation Index for Rankings with Ties", WWW 2015.
- ``kendall`` (tau-b), ``spearman``, ``pearson``: the plain correlations, written in numpy for the zoo-sized
  lists they score (scipy's per-call overhead was 80% of stage 07's scoring); checked against scipy in the tests.
- ``top1_regret``: accuracy lost by taking the top-1 recommendation instead of the best model;
  when several models tie for the top score, the mean loss over them (a random tie-break's expectation).
- ``topk_hit``: 1 if the truly best model is among the k highest scored.
- ``ndcg_at_k``: normalised discounted cumulative gain at k, gains = accuracy minus the task's
  worst accuracy (so a zoo of equal models has no gain to find); Jarvelin & Kekalainen, TOIS 2002.

Ties in ``pred`` (a constant predictor) give NaN correlations in scipy; we return 0 for them
(no information), so a constant method is neither rewarded nor dropped from a mean.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def _finite(x: float) -> float:
    return float(x) if np.isfinite(x) else 0.0


def _constant(*arrays: np.ndarray) -> bool:
    return any(np.ptp(np.asarray(a, float)) == 0 for a in arrays)


# scipy's weightedtau without its generic axis/NaN-policy wrapper, which cost 80% of a call on a zoo-sized list
# (it adds nothing for two 1-d arrays: the function ranks NaNs itself; the tests compare both)
_weightedtau = getattr(stats.weightedtau, "__wrapped__", stats.weightedtau)


def weighted_tau(truth: np.ndarray, pred: np.ndarray) -> float:
    """Symmetric weighted Kendall tau (scipy's default, rank=True)."""
    return _finite(_weightedtau(truth, pred).statistic)


def weighted_tau_gt(truth: np.ndarray, pred: np.ndarray) -> float:
    """Weighted Kendall tau weighted by the ground-truth order (rank=None)."""
    return _finite(_weightedtau(truth, pred, rank=None).statistic)


def _usable(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Both as float arrays, or None where a plain correlation is undefined (a NaN, or a constant input)."""
    x, y = np.asarray(truth, float), np.asarray(pred, float)
    if np.isnan(x).any() or np.isnan(y).any() or _constant(x, y):
        return None
    return x, y


def _signs(x: np.ndarray) -> np.ndarray:
    """[N, N] sign(x_i - x_j) from comparisons (infinities compare; no inf - inf)."""
    return (x[:, None] > x[None, :]).astype(float) - (x[:, None] < x[None, :])


def kendall(truth: np.ndarray, pred: np.ndarray) -> float:
    """Kendall tau-b: sum of sign products over sqrt(untied pairs of each), every pair counted twice."""
    xy = _usable(truth, pred)
    if xy is None:
        return 0.0
    sx, sy = _signs(xy[0]), _signs(xy[1])
    return _finite(np.clip((sx * sy).sum() / np.sqrt(np.abs(sx).sum() * np.abs(sy).sum()), -1.0, 1.0))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N of ``x`` [N], ties sharing their mean rank (scipy's rankdata 'average')."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    return _finite(np.clip(x @ y / np.sqrt((x @ x) * (y @ y)), -1.0, 1.0))


def spearman(truth: np.ndarray, pred: np.ndarray) -> float:
    """Pearson correlation of the average ranks."""
    xy = _usable(truth, pred)
    return 0.0 if xy is None else _correlation(average_ranks(xy[0]), average_ranks(xy[1]))


def pearson(truth: np.ndarray, pred: np.ndarray) -> float:
    xy = _usable(truth, pred)
    if xy is None or not (np.isfinite(xy[0]).all() and np.isfinite(xy[1]).all()):
        return 0.0
    return _correlation(*xy)


def top1_regret(truth: np.ndarray, pred: np.ndarray) -> float:
    """max(truth) - mean(truth[i] for the models i tied at max(pred)).

    With a tie for the top score the method has not chosen among the tied models; its regret is the
    expected regret of a uniformly random tie-break (so a constant predictor gets the zoo's mean
    regret, whatever the order of the models), not the regret of whichever model happens to come first.
    """
    truth, pred = np.asarray(truth, float), np.asarray(pred, float)
    top = pred == np.max(pred)
    if not top.any():  # NaN scores: nothing is chosen
        return float("nan")
    return float(np.max(truth) - truth[top].mean())


def topk_hit(truth: np.ndarray, pred: np.ndarray, k: int = 3) -> float:
    """1.0 if a truly best model (any of a tie) is among the k highest-scored, else 0.0."""
    top = np.argsort(-np.asarray(pred), kind="stable")[:k]
    return float(np.max(truth[top]) >= np.max(truth))


def ndcg_at_k(truth: np.ndarray, pred: np.ndarray, k: int = 3) -> float:
    """DCG@k of the predicted order over the ideal DCG@k; gains = truth - min(truth)."""
    gain = np.asarray(truth, float) - np.min(truth)
    disc = 1.0 / np.log2(np.arange(2, k + 2))[: len(gain)]
    ideal = np.sort(gain)[::-1][:k] @ disc[: min(k, len(gain))]
    if ideal == 0:
        return 1.0  # every model equal: any order is ideal
    got = gain[np.argsort(-np.asarray(pred), kind="stable")[:k]] @ disc[: min(k, len(gain))]
    return float(got / ideal)


METRICS = {"weighted_tau": weighted_tau, "weighted_tau_gt": weighted_tau_gt, "kendall": kendall,
           "spearman": spearman, "pearson": pearson, "top1_regret": top1_regret}


def task_metrics(truth: np.ndarray, pred: np.ndarray, k: int = 3) -> dict[str, float]:
    """Every metric for one task: truth [N], pred [N]."""
    out = {name: fn(truth, pred) for name, fn in METRICS.items()}
    out[f"top{k}_hit"] = topk_hit(truth, pred, k)
    out[f"ndcg@{k}"] = ndcg_at_k(truth, pred, k)
    return out


def score_table(pred: pd.DataFrame, truth: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    """Per (method, task) metrics of a tidy prediction table.

    pred: columns method, task_id, model_id, score; truth: task_id, model_id, accuracy.
    Only models present in both count; a method must score every such model of a task.
    """
    merged = pred.merge(truth[["task_id", "model_id", "accuracy"]], on=["task_id", "model_id"])
    if merged.empty:
        return pd.DataFrame()
    # the (method, task) lists in order of first appearance, each in row order (what groupby(sort=False) gives),
    # sliced from numpy arrays: pandas' per-group overhead was a third of judging 40,000 lists
    method, methods = pd.factorize(merged.method)
    task, tasks = pd.factorize(merged.task_id)
    group, _ = pd.factorize(method * len(tasks) + task)  # [R] list index, numbered by first appearance
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(group[order]) != 0])  # [G] first row of each list in ``order``
    acc, score = merged.accuracy.to_numpy()[order], merged.score.to_numpy()[order]
    rows = []
    for a, b in zip(starts, np.r_[starts[1:], len(order)]):
        first = order[a]
        rows.append(dict(method=methods[method[first]], task_id=tasks[task[first]], n_models=int(b - a),
                         **task_metrics(acc[a:b], score[a:b], k)))
    return pd.DataFrame(rows)
