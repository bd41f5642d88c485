"""Evidence from a few forward passes: which models to probe, and what a probed ranking costs.

A recommendation ranks with the prior first (k = 0: tokens only), runs ``k`` chosen models on the
target's images, and ranks again with their estimator scores as evidence (``ranker.standardize_evidence``).
Two rules choose the ``k`` models (``POLICIES``):

- ``top``: the k best of the prior ranking (check the favourites);
- ``uncertain``: the k with the highest upper confidence bound, mean + standard deviation of the prior's
  score over ``DROPOUT_PASSES`` passes with dropout on (spend forward passes where the prior is unsure
  among plausible models).

``attach_evidence`` puts stage-05 scores into a RankingData; ``estimator_at_k`` is the matching reference
for a single estimator (the probed models ordered by the estimator, above the rest in prior order), and
``fit_stacking`` / ``stack_scores`` a ridge regression over standardised estimator scores, fitted on
training tasks only: the strongest simple reference at k = all.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import audit
from .ranker import RankingData, build_combined_similarity_loader, evidence_ridge, model_inputs, zscore
from .registry import Registry

POLICIES = Registry("probe policy")  # name -> fn(prior [N], spread [N] or None) -> the key: the k highest are run
DROPOUT_PASSES = 8


@POLICIES.register("top")
def _top(prior: np.ndarray, spread: np.ndarray | None) -> np.ndarray:
    return prior


@POLICIES.register("uncertain")
def _uncertain(prior: np.ndarray, spread: np.ndarray | None) -> np.ndarray:
    return prior + (np.zeros(len(prior)) if spread is None else spread)  # an upper confidence bound


def attach_evidence(data: RankingData, scores: pd.DataFrame, names: list[str]) -> RankingData:
    """``data`` with ``evidence`` [T, N, F] (stage-05 ``scores`` of the estimators ``names``; NaN where a
    pair was skipped) and ``probe_seconds`` [T, N] (the forward pass plus those estimators' seconds)."""
    missing = sorted(set(names) - set(scores.scorer))
    if missing:
        raise ValueError(f"ranker.evidence names {missing}, which stage 05 did not score; scored: "
                         f"{', '.join(sorted(set(scores.scorer)))}")
    s = scores[scores.scorer.isin(names)]
    shape = (len(data.task_ids), len(data.model_ids), len(names))
    ev, scorer_secs = np.full(shape, np.nan, np.float32), np.zeros(shape)
    forward = np.zeros(shape[:2])
    ti = {t: i for i, t in enumerate(data.task_ids)}
    mi = {m: j for j, m in enumerate(data.model_ids)}
    fi = {n: f for f, n in enumerate(names)}
    for r in s.itertuples():
        if r.task_id in ti and r.model_id in mi:
            i, j = ti[r.task_id], mi[r.model_id]
            ev[i, j, fi[r.scorer]], scorer_secs[i, j, fi[r.scorer]], forward[i, j] = r.score, r.seconds, r.forward_seconds
    return dataclasses.replace(data, evidence=ev, evidence_names=list(names), forward_seconds=forward,
                               evidence_seconds=scorer_secs, probe_seconds=forward + scorer_secs.sum(2))


@torch.no_grad()
def prior_scores(model: nn.Module, data: RankingData, task: str, models: np.ndarray, max_tokens: int,
                 passes: int = 0) -> np.ndarray:
    """The prior's scores of ``models`` on ``task``: [N] (eval mode) or [passes, N] with dropout on."""
    batch = next(iter(build_combined_similarity_loader(data, [task], models, split="test", batch_size=1,
                                                       max_tokens=max_tokens)))
    inputs = model_inputs(batch)
    if not passes:
        return model.eval()(*inputs)[0].numpy()
    # the task repeated ``passes`` times in one batch: every row draws its own dropout masks, as separate passes
    # would, in one forward
    inputs = tuple(None if x is None else x.expand(passes, *x.shape[1:]) for x in inputs)
    model.train()  # dropout on: a cheap spread of plausible priors
    try:
        return model(*inputs).numpy()  # [passes, N]
    finally:
        model.eval()


def choose_probes(policy: str, k: int, prior: np.ndarray, spread: np.ndarray | None = None) -> np.ndarray:
    """bool [N]: the ``k`` models to run, by ``policy``, from the prior's scores [N] (and their std [N])."""
    if policy not in POLICIES:
        raise ValueError(f"probe policy '{policy}'; valid: {', '.join(POLICIES)}")
    n, key = len(prior), POLICIES.get(policy)(prior, spread)
    mask = np.zeros(n, bool)
    mask[np.argsort(-key, kind="stable")[:min(k, n)]] = True
    return mask


def estimator_at_k(estimator: np.ndarray, prior: np.ndarray, probed: np.ndarray) -> np.ndarray:
    """A single estimator restricted to the probed models: they come first, ordered by the estimator's
    score [N], the unprobed ones after them in the prior's order. Returns scores [N] (higher is better).
    Ties stay ties (average ranks): a saturated estimator (H-score at C - 1) is not ordered by model index."""
    from scipy.stats import rankdata

    out = rankdata(prior).astype(float)  # 1..N, ties averaged
    if probed.any():
        est = estimator[probed]
        est = np.where(np.isfinite(est), est, np.nanmin(est) if np.isfinite(est).any() else 0.0)
        out[probed] = len(prior) + rankdata(est)
    return out


def fit_stacking(data: RankingData, tasks: list[str], models: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Ridge weights [F + 1] (bias last) predicting a model's accuracy z-scored within its task from its
    estimator scores z-scored within the task, fitted on ``tasks`` x ``models`` (training data only)."""
    audit.seen("stacking", tasks, [data.model_ids[i] for i in models])
    return evidence_ridge(data, tasks, models, alpha)


def stack_scores(weights: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """Scores [N] of the stacking reference for one task's evidence [N, F]."""
    return np.column_stack([zscore(evidence), np.ones(len(evidence))]) @ weights
