"""Stage 05: the classic transferability estimators, run over the zoo and the target tasks.

For each model and task: the features ``[N, D]`` of the task's training split (pooled penultimate
layer, as in the ground-truth probe) and, where the model has a source head, its logits ``[N, C_s]``
come from the feature store of stage 01 (``ptmrec.features``: the model ran once on every image);
then every scorer of ``ptmrec.transferability`` runs on them. Each row of the tidy table records
the score and the seconds of the scorer call, beside the forward seconds the store charges to the
split (``features.forward`` is that pass, also on images outside the store: ``ptmrec recommend --probe``).

A scorer that cannot score a pair (no source head for LEEP/NCE, degenerate features) gives a
row in ``skipped.csv`` with the reason, never a NaN in ``scores.csv``. Work is saved one CSV
per model in a parts folder, so a killed run resumes, and SLURM array tasks can fill it shard
by shard (``ptmrec shard <params> 05_baselines``).

One trivial reference is scored here too: ``random`` (a seeded uniform draw per pair). The
other two, ``popularity`` (mean accuracy on the training tasks) and ``source_similarity``
(dataset tokens of a model's source task against the target's), depend on which tasks are
for training and on stage 04, so they are scored per fold in ``ptmrec.evaluate``.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from . import transferability as T
from .paths import resume, write_csv

COLUMNS = ["model_id", "task_id", "scorer", "score", "seconds", "forward_seconds", "n", "dim", "classes", "error"]


def score_pair(feats: np.ndarray, labels: np.ndarray, logits: np.ndarray | None,
               scorers: list[str]) -> list[dict]:
    """Every scorer on one (model, task) pair: dicts with scorer, score, seconds, error ('' when scored)."""
    rows = []
    for name in scorers:
        if T.get_scorer(name).needs_logits and logits is None:
            rows.append(dict(scorer=name, score=np.nan, seconds=0.0, error="model has no source head (logits)"))
            continue
        try:
            value, secs = T.score(name, feats, labels, logits)
            rows.append(dict(scorer=name, score=value, seconds=secs, error=""))
        except (ValueError, np.linalg.LinAlgError) as e:
            rows.append(dict(scorer=name, score=np.nan, seconds=0.0, error=f"{type(e).__name__}: {e}"))
    return rows


def random_scores(model_ids: Iterable[str], task_ids: Iterable[str], seed: int) -> pd.DataFrame:
    """The ``random`` reference: a uniform draw per (model, task), seeded, so reruns agree."""
    rows = [dict(model_id=m, task_id=t, scorer="random",
                 score=float(np.random.default_rng([seed, zlib.crc32(f"{m}|{t}".encode())]).random()))
            for m in model_ids for t in task_ids]
    return pd.DataFrame(rows)


def score_model(model_id: str, store: Path, pools: dict, tasks: list, scorers: list[str]) -> pd.DataFrame:
    """All scorers of one model on every task: one row per (task, scorer), columns ``COLUMNS``.

    Features and logits of each task's training split come from the feature store in ``store``
    (stage 01 ran the model once); ``forward_seconds`` is what the store charges for them.
    """
    from .data import task_labels
    from .features import load_store

    fs = load_store(store, model_id)
    rows = []
    for task in tasks:
        feats, logits = fs.features(task, "train"), fs.logits(task, "train")  # float32 [N, D], [N, C_s] | None
        y = task_labels(pools[task.dataset], task, "train")  # int [N]
        pair = dict(model_id=model_id, task_id=task.task_id, forward_seconds=fs.seconds(task, "train"), n=len(y),
                    dim=feats.shape[1], classes=len(np.unique(y)))  # what every scorer's row shares
        rows += [dict(**pair, **r) for r in score_pair(feats, y, logits, scorers)]
    return pd.DataFrame(rows, columns=COLUMNS)


def run_baselines(zoo_index: pd.DataFrame, store: Path, pools: dict, tasks: list, scorers: list[str], parts: Path,
                  progress: Callable[[Iterable], Iterable] = iter) -> pd.DataFrame:
    """Score every model of ``zoo_index`` on every task from the feature store; resumes from ``parts/<model_id>.csv``.

    A SLURM array task passes its shard of the index (``pipeline.shard_rows``) into the same folder.
    """
    unknown = [s for s in scorers if s not in T.SCORERS]
    if unknown:
        raise ValueError(f"baselines.scorers has unknown {unknown}; registered: {', '.join(T.list_scorers())}")
    frames = [resume(parts / f"{row.model_id}.csv", lambda: score_model(row.model_id, store, pools, tasks, scorers),
                     lambda p: pd.read_csv(p, dtype={"error": str}).fillna({"error": ""}), write_csv)
              for row in progress(list(zoo_index.itertuples()))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def split_rows(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores: finite rows without error, skipped: the rest with their reason)."""
    err = raw.error.fillna("").astype(str)
    ok = (err == "") & np.isfinite(raw.score.astype(float))
    skipped = raw[~ok].assign(error=err[~ok].replace("", "non-finite score"))
    return raw[ok].drop(columns="error").reset_index(drop=True), skipped.reset_index(drop=True)


def timing_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per scorer: median and mean seconds per (model, task), and the median ratio to the forward pass."""
    g = scores.assign(ratio=scores.seconds / scores.forward_seconds).groupby("scorer")
    out = g.agg(median_seconds=("seconds", "median"), mean_seconds=("seconds", "mean"),
                median_ratio_to_forward=("ratio", "median"))
    fwd = scores.drop_duplicates(["model_id", "task_id"]).forward_seconds
    out.loc["(forward pass)"] = [fwd.median(), fwd.mean(), 1.0]
    return out.sort_values("median_seconds")


def saturation(scores: pd.DataFrame) -> pd.DataFrame:
    """Per stage-05 scorer: how often it sits in a degenerate regime, where its ranking says little.

    ``d_over_n``: share of (model, task) pairs with more feature dimensions than training images (H-score,
    SFDA and the other covariance-based scorers degenerate there); ``tied``: share of pairs whose score ties
    another model's on the same task (relative 1e-6); ``constant_tasks``: share of tasks on which every
    model gets the same score.
    """
    rows = []
    for name, g in scores.groupby("scorer"):
        tied, constant = 0, 0
        for _, t in g.groupby("task_id"):
            v = np.sort(t.score.to_numpy(float))
            close = np.isclose(v[1:], v[:-1], rtol=1e-6, atol=1e-12)  # [n-1] neighbours equal
            tied += int(np.sum(np.r_[close, False] | np.r_[False, close]))
            constant += int(close.all()) if len(v) > 1 else 0
        rows.append(dict(scorer=name, pairs=len(g), d_over_n=float((g.dim > g.n).mean()) if "dim" in g else np.nan,
                         tied=tied / len(g), constant_tasks=constant / g.task_id.nunique()))
    return pd.DataFrame(rows).set_index("scorer")
